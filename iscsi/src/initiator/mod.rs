//! Our initiator, for the userspace clone path: one session, many commands
//! in flight, optional digests and CHAP, reconnect with backoff after a
//! dropped connection (reads are replayed, so callers see only latency).
//!
//! The clone engine adapts [`BlockReader`] (implemented by [`Session`]).

mod framer;
mod login;
mod pool;
mod task;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::chap::ChapCredentials;
use crate::scsi::Sense;
use crate::url::{IscsiUrl, UrlError};

/// Errors the initiator reports, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    /// The URL did not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// TCP connect or I/O failed and reconnecting gave up.
    #[error("cannot reach iSCSI target {addr}: {source}; check the export is open and the address is reachable")]
    Connect {
        /// Where we tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The target refused the login.
    #[error(
        "target {target} refused login (status {class:#04x}/{detail:#04x}: {meaning}); check ACL, CHAP and the IQN"
    )]
    LoginRefused {
        /// The target IQN.
        target: String,
        /// Status class.
        class: u8,
        /// Status detail.
        detail: u8,
        /// Human meaning of the status.
        meaning: &'static str,
    },
    /// The target broke the protocol during login or full feature phase.
    #[error("protocol error talking to {target}: {why}")]
    Protocol {
        /// The target IQN.
        target: String,
        /// What went wrong.
        why: String,
    },
    /// The command ended with CHECK CONDITION.
    #[error("SCSI command {opcode:#04x} failed: sense key {:#04x} asc {:#04x} ascq {:#04x}", .sense.key, .sense.asc, .sense.ascq)]
    Check {
        /// CDB opcode.
        opcode: u8,
        /// Decoded sense.
        sense: Sense,
    },
    /// Another non-GOOD status.
    #[error("SCSI command {opcode:#04x} ended with status {status:#04x}")]
    Status {
        /// CDB opcode.
        opcode: u8,
        /// The status.
        status: u8,
    },
    /// The session gave up reconnecting or was closed.
    #[error("iSCSI session to {target} is closed: {why}")]
    Closed {
        /// The target IQN.
        target: String,
        /// Why.
        why: String,
    },
}

/// How to reach and log in to a target.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// `host:port`.
    pub address: String,
    /// Target IQN.
    pub target: String,
    /// LUN number.
    pub lun: u16,
    /// Our IQN (the export's ACL may name it).
    pub initiator_name: String,
    /// Ask for CRC32C header digests.
    pub header_digest: bool,
    /// Ask for CRC32C data digests.
    pub data_digest: bool,
    /// CHAP credentials, if the target requires them.
    pub chap: Option<ChapCredentials>,
    /// Give up reconnecting after this long without a working connection.
    pub reconnect_for: Duration,
    /// Most commands in flight on the session.
    pub queue_depth: usize,
}

impl InitiatorConfig {
    /// Config from an `iscsi://` URL with defaults (no digests, 60 s reconnect).
    pub fn from_url(url: &str) -> Result<InitiatorConfig, InitiatorError> {
        let u = IscsiUrl::parse(url)?;
        let chap = match (&u.user, &u.password) {
            (Some(user), Some(secret)) => Some(ChapCredentials { user: user.clone(), secret: secret.clone() }),
            _ => None,
        };
        Ok(InitiatorConfig {
            address: u.socket_addr(),
            target: u.target,
            lun: u.lun,
            initiator_name: "iqn.2026-11.dev.meshdrain:initiator".into(),
            header_digest: false,
            data_digest: false,
            chap,
            reconnect_for: Duration::from_secs(60),
            queue_depth: 32,
        })
    }
    /// Sets both digests.
    pub fn with_digests(mut self, on: bool) -> Self {
        self.header_digest = on;
        self.data_digest = on;
        self
    }
    /// Sets our IQN.
    pub fn with_initiator_name(mut self, iqn: &str) -> Self {
        self.initiator_name = iqn.to_string();
        self
    }
}

/// Size of the LUN as READ CAPACITY(16) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Bytes per block.
    pub block_size: u32,
}

/// Largest logical block size we accept from a target (SBC devices use 512 to 4096;
/// 64 KiB leaves room and keeps one block inside one read buffer).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;

impl Capacity {
    /// The capacity a READ CAPACITY(16) answer describes, if it can be true: a hostile
    /// or broken target must not make a clone of zero-sized blocks, blocks that do not
    /// tile a page, or a size that wraps, look like a success.
    pub fn checked(last_lba: u64, block_size: u32) -> Result<Capacity, String> {
        if !(512..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(format!(
                "READ CAPACITY(16) reported a block size of {block_size} bytes; expected a power of two from 512 to \
                 {MAX_BLOCK_SIZE}: the target is broken or hostile"
            ));
        }
        let blocks = last_lba.checked_add(1).filter(|b| b.checked_mul(block_size as u64).is_some()).ok_or_else(|| {
            format!(
                "READ CAPACITY(16) reported last LBA {last_lba} with {block_size}-byte blocks, a size past 2^64 bytes: \
                 the target is broken or hostile"
            )
        })?;
        Ok(Capacity { blocks, block_size })
    }
}

/// A run of blocks with one provisioning status (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First block.
    pub lba: u64,
    /// Number of blocks.
    pub blocks: u64,
    /// False if deallocated (reads as zeros; a clone may skip it).
    pub allocated: bool,
}

/// What the clone engine needs from a remote disk. `Session` implements it;
/// tests may implement it over memory.
pub trait BlockReader: Send + Sync {
    /// Bytes per block.
    fn block_size(&self) -> u32;
    /// Number of blocks.
    fn blocks(&self) -> u64;
    /// Reads `blocks` blocks from `lba`.
    fn read_blocks(&self, lba: u64, blocks: u32) -> impl Future<Output = Result<Bytes, InitiatorError>> + Send;
    /// Reads `blocks` blocks from `lba` as the Data-In segments the target sent, in
    /// order, without joining them: a bulk copier writes each one out as it is, so the
    /// payload is never copied after it leaves the socket.
    fn read_segments(&self, lba: u64, blocks: u32) -> impl Future<Output = Result<Vec<Bytes>, InitiatorError>> + Send {
        let f = self.read_blocks(lba, blocks);
        async move { f.await.map(|b| vec![b]) }
    }
    /// Provisioning extents starting at `lba` (at least one, unless past the end).
    fn lba_status(&self, lba: u64) -> impl Future<Output = Result<Vec<Extent>, InitiatorError>> + Send;
}

pub(crate) struct Request {
    cdb: [u8; 16],
    edtl: u32,
    /// The Data-In segments in order (slices of the receive buffer, never copied).
    reply: oneshot::Sender<Result<Vec<Bytes>, InitiatorError>>,
}

/// Joins Data-In segments; one segment is passed on without a copy.
fn join(mut segments: Vec<Bytes>) -> Bytes {
    match segments.len() {
        0 => Bytes::new(),
        1 => segments.pop().expect("one"),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(segments.iter().map(Bytes::len).sum());
            for s in &segments {
                all.extend_from_slice(s);
            }
            all.freeze()
        }
    }
}

/// A logged-in session. Cheap to clone; all clones share one connection and
/// may issue commands concurrently.
#[derive(Clone)]
pub struct Session {
    tx: mpsc::Sender<Request>,
    capacity: Capacity,
    target: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("target", &self.target).field("capacity", &self.capacity).finish()
    }
}

impl Session {
    /// Connects, logs in and reads the capacity.
    pub async fn connect(config: InitiatorConfig) -> Result<Session, InitiatorError> {
        let target = config.target.clone();
        let tx = task::start(config).await?;
        let mut s = Session { tx, capacity: Capacity { blocks: 0, block_size: 512 }, target };
        s.capacity = s.read_capacity().await?;
        Ok(s)
    }

    /// Connects to an `iscsi://` URL with default settings.
    pub async fn connect_url(url: &str) -> Result<Session, InitiatorError> {
        Session::connect(InitiatorConfig::from_url(url)?).await
    }

    /// Capacity read at connect time.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Issues one CDB expecting up to `edtl` bytes back; retries UNIT ATTENTION.
    pub async fn command(&self, cdb: &[u8], edtl: u32) -> Result<Bytes, InitiatorError> {
        self.command_segments(cdb, edtl).await.map(join)
    }

    /// Like [`Session::command`], returning the Data-In segments unjoined.
    pub async fn command_segments(&self, cdb: &[u8], edtl: u32) -> Result<Vec<Bytes>, InitiatorError> {
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        let mut attempts = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            self.tx.send(Request { cdb: c, edtl, reply }).await.map_err(|_| self.closed("session task ended"))?;
            let r = rx.await.map_err(|_| self.closed("session task ended"))?;
            match r {
                Err(InitiatorError::Check { sense, .. }) if sense.key == 0x06 && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    fn closed(&self, why: &str) -> InitiatorError {
        InitiatorError::Closed { target: self.target.clone(), why: why.into() }
    }

    /// READ CAPACITY(16).
    pub async fn read_capacity(&self) -> Result<Capacity, InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let d = self.command(&cdb, 32).await?;
        if d.len() < 12 {
            return Err(InitiatorError::Protocol {
                target: self.target.clone(),
                why: "READ CAPACITY(16) returned under 12 bytes".into(),
            });
        }
        let last_lba = u64::from_be_bytes(d[0..8].try_into().expect("8"));
        let block_size = u32::from_be_bytes(d[8..12].try_into().expect("4"));
        Capacity::checked(last_lba, block_size)
            .map_err(|why| InitiatorError::Protocol { target: self.target.clone(), why })
    }

    /// READ(16) of `blocks` blocks at `lba`.
    pub async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, InitiatorError> {
        self.read_unjoined(lba, blocks).await.map(join)
    }

    /// READ(16) of `blocks` blocks at `lba`, as the Data-In segments in order.
    pub async fn read_unjoined(&self, lba: u64, blocks: u32) -> Result<Vec<Bytes>, InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.command_segments(&cdb, blocks * self.capacity.block_size).await
    }

    /// GET LBA STATUS from `lba`. Targets without it (ILLEGAL REQUEST) are
    /// reported as fully allocated, which is always safe for a clone.
    pub async fn get_lba_status(&self, lba: u64) -> Result<Vec<Extent>, InitiatorError> {
        // Room for 1024 descriptors: fewer round trips over a fragmented volume (targets
        // answer with as many as fit, SBC-3 §5.6).
        let alloc: u32 = 8 + 16 * 1024;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x12;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&alloc.to_be_bytes());
        let d = match self.command(&cdb, alloc).await {
            Ok(d) => d,
            Err(InitiatorError::Check { sense, .. }) if sense.key == 0x05 && sense.asc == 0x20 => {
                return Ok(vec![Extent { lba, blocks: self.capacity.blocks.saturating_sub(lba), allocated: true }]);
            }
            Err(e) => return Err(e),
        };
        let mut v = Vec::new();
        let n = if d.len() >= 4 {
            (u32::from_be_bytes(d[0..4].try_into().expect("4")) as usize + 4).min(d.len())
        } else {
            0
        };
        let mut o = 8;
        while o + 16 <= n {
            let lba = u64::from_be_bytes(d[o..o + 8].try_into().expect("8"));
            let blocks = u32::from_be_bytes(d[o + 8..o + 12].try_into().expect("4")) as u64;
            v.push(Extent { lba, blocks, allocated: d[o + 12] & 0x0f == 0 });
            o += 16;
        }
        Ok(v)
    }
}

impl BlockReader for Session {
    fn block_size(&self) -> u32 {
        self.capacity.block_size
    }
    fn blocks(&self) -> u64 {
        self.capacity.blocks
    }
    fn read_blocks(&self, lba: u64, blocks: u32) -> impl Future<Output = Result<Bytes, InitiatorError>> + Send {
        self.read(lba, blocks)
    }
    fn read_segments(&self, lba: u64, blocks: u32) -> impl Future<Output = Result<Vec<Bytes>, InitiatorError>> + Send {
        self.read_unjoined(lba, blocks)
    }
    fn lba_status(&self, lba: u64) -> impl Future<Output = Result<Vec<Extent>, InitiatorError>> + Send {
        self.get_lba_status(lba)
    }
}
