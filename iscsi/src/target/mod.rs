//! The read-only target: one [`Target`] portal serves many exports (one LUN
//! each, keyed by IQN) on one listener. The agent opens an export for a
//! volume with an ACL naming the lease holder, fences an initiator when a
//! lease is revoked, and closes the export after hand-off.
//!
//! Nothing before admission costs memory, and nothing after it costs more than
//! [`Limits`] allows: a normal session needs an export the initiator is admitted
//! to (ACL, fences, CHAP); a discovery session needs at least one, and answers
//! only SendTargets (listing those), NOP-Out and Logout. Connection caps refuse
//! the excess login with status 0x0302 (out of resources) and a log line naming
//! the cap; per connection, the read buffer is bounded by the data segment
//! length we declare, parked out-of-order commands by [`Limits::held_bytes`],
//! unread replies by [`Limits::reply_bytes`]; an initiator reading below
//! [`Limits::slow_reader_floor`] is dropped. [`Target::stats`] shows the bytes
//! held. Defaults:
//!
//! | setting | default |
//! |---|---|
//! | [`Limits::max_connections`] (portal) | 256 |
//! | [`Limits::max_connections_per_export`] ([`TargetConfig::with_max_connections`] overrides) | 32 |
//! | [`Limits::max_discovery_sessions`] | 16 |
//! | [`Limits::max_pending_logins`] | 256 |
//! | [`Limits::login_timeout`] (whole login) | 10 s |
//! | [`Limits::max_recv_data_segment_length`] (discovery: 8 KiB) | 256 KiB |
//! | [`Limits::held_bytes`] | 256 KiB |
//! | [`Limits::reply_bytes`] | 512 KiB |
//! | [`Limits::slow_reader_floor`] over [`Limits::slow_reader_window`] | 256 KiB/s over 10 s |
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use meshdrain_iscsi::{Acl, Target, TargetConfig, serve};
//! let target = Target::new();
//! let export = target.open_export(TargetConfig::new("iqn.2026-11.dev.meshdrain:vol1", "/var/lib/v1".into())
//!     .with_acl(Acl::address("fd00::1".parse()?)))?;
//! let listener = tokio::net::TcpListener::bind("[::]:3260").await?;
//! tokio::spawn(serve(listener, Arc::clone(&target), std::future::pending::<()>()));
//! export.fence(meshdrain_iscsi::target::Initiator::Address("fd00::1".parse()?));
//! target.close_export("iqn.2026-11.dev.meshdrain:vol1");
//! # Ok(()) }
//! ```

mod conn;
pub mod limits;
pub mod window;
mod writer;

pub use limits::{Limits, TargetStats};

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::chap::ChapCredentials;
use crate::scsi::{Lun, MAX_TRANSFER_BLOCKS};
use crate::store::{BlockStore, FileStore};

/// Errors of the target layer, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The backing file or device could not be opened.
    #[error("cannot open {path} as a LUN: {source}; check the path exists and is readable")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backing store is smaller than one block.
    #[error("{path} is {size} bytes, smaller than one 512-byte block; nothing to export")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// An export with that IQN is already open.
    #[error("an export named {0} is already open; close it first or use another IQN")]
    Duplicate(String),
    /// The IQN is not a valid iSCSI name.
    #[error("{0:?} is not an iSCSI name (expected iqn.YYYY-MM.reverse.domain[:suffix] or eui./naa.)")]
    BadName(String),
}

/// Who may log in to an export. Empty lists mean "anyone" for that
/// dimension; a login must pass both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Allowed initiator source addresses (the lease holder's mesh address).
    pub addresses: Vec<IpAddr>,
    /// Allowed initiator IQNs.
    pub initiators: Vec<String>,
}

impl Acl {
    /// Only this address may connect (the usual lease ACL).
    pub fn address(a: IpAddr) -> Acl {
        Acl { addresses: vec![a], initiators: Vec::new() }
    }
    /// Whether a peer passes.
    pub fn allows(&self, addr: IpAddr, iqn: &str) -> bool {
        let addr_ok = self.addresses.is_empty() || self.addresses.iter().any(|a| same_ip(*a, addr));
        let iqn_ok = self.initiators.is_empty() || self.initiators.iter().any(|i| i == iqn);
        addr_ok && iqn_ok
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.to_canonical() == b.to_canonical()
}

/// An initiator to fence: by source address or by IQN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initiator {
    /// Every session from this address.
    Address(IpAddr),
    /// Every session of this initiator name.
    Name(String),
}

impl Initiator {
    fn matches(&self, addr: IpAddr, iqn: &str) -> bool {
        match self {
            Initiator::Address(a) => same_ip(*a, addr),
            Initiator::Name(n) => n == iqn,
        }
    }
}

/// One export to open: IQN, backing path, ACL, optional CHAP, and the lease
/// epoch it serves (logged, and shown to operators).
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Target IQN initiators log in to.
    pub iqn: String,
    /// File or block device served read-only as LUN 1.
    pub path: PathBuf,
    /// Who may log in.
    pub acl: Acl,
    /// CHAP the initiator must pass, if any.
    pub chap: Option<ChapCredentials>,
    /// Lease epoch this export was opened for.
    pub epoch: u64,
    /// Connections in full feature phase this export takes; `None`: the
    /// portal's [`Limits::max_connections_per_export`].
    pub max_connections: Option<usize>,
}

impl TargetConfig {
    /// An export open to anyone, without CHAP, epoch 0.
    pub fn new(iqn: &str, path: PathBuf) -> TargetConfig {
        TargetConfig { iqn: iqn.to_string(), path, acl: Acl::default(), chap: None, epoch: 0, max_connections: None }
    }
    /// Sets the ACL.
    pub fn with_acl(mut self, acl: Acl) -> Self {
        self.acl = acl;
        self
    }
    /// Requires CHAP.
    pub fn with_chap(mut self, chap: ChapCredentials) -> Self {
        self.chap = Some(chap);
        self
    }
    /// Records the lease epoch.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }
    /// Caps this export's connections (the login past it gets status 0x0302).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }
}

/// Checks an iSCSI name's shape (RFC 7143 §4.2.7), so typos fail at open.
pub fn valid_iqn(name: &str) -> bool {
    let ok_chars = name.len() <= 223 && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    ok_chars && (name.starts_with("iqn.") && name.len() > 12 || name.starts_with("eui.") || name.starts_with("naa."))
}

struct SessionEntry {
    id: u64,
    addr: IpAddr,
    iqn: String,
    kill: watch::Sender<bool>,
}

/// One open export: its LUN, ACL, fences and live sessions. Handles to it
/// are what the agent keeps to fence and inspect.
pub struct Export {
    config: Mutex<TargetConfig>,
    iqn: String,
    lun: Arc<Lun>,
    fenced: Mutex<Vec<Initiator>>,
    sessions: Mutex<Vec<SessionEntry>>,
    closed: watch::Sender<bool>,
    connections: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").field("iqn", &self.iqn).field("lun", &self.lun).finish()
    }
}

impl Export {
    /// The export's IQN.
    pub fn iqn(&self) -> &str {
        &self.iqn
    }
    /// The lease epoch it was opened for.
    pub fn epoch(&self) -> u64 {
        self.config.lock().expect("export lock").epoch
    }
    /// Replaces the ACL (e.g. a new holder at a new epoch). Sessions not
    /// allowed by the new ACL are dropped.
    pub fn set_acl(&self, acl: Acl, epoch: u64) {
        {
            let mut c = self.config.lock().expect("export lock");
            c.acl = acl.clone();
            c.epoch = epoch;
        }
        for s in self.sessions.lock().expect("sessions lock").iter() {
            if !acl.allows(s.addr, &s.iqn) {
                let _ = s.kill.send(true);
            }
        }
    }
    /// Fences an initiator: its sessions are dropped now (in-flight commands
    /// get no answer, the next one fails) and it cannot log in again to this
    /// export. Returns how many sessions were dropped.
    pub fn fence(&self, who: Initiator) -> usize {
        let mut n = 0;
        for s in self.sessions.lock().expect("sessions lock").iter() {
            if who.matches(s.addr, &s.iqn) {
                let _ = s.kill.send(true);
                n += 1;
            }
        }
        tracing::info!(export = %self.iqn, initiator = %match &who { Initiator::Address(a) => a.to_string(), Initiator::Name(n) => n.clone() }, sessions = n, "fenced initiator");
        self.fenced.lock().expect("fence lock").push(who);
        n
    }
    /// Number of sessions logged in now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }
    /// Whether an initiator may log in now (ACL and fences).
    pub fn admits(&self, addr: IpAddr, iqn: &str) -> bool {
        !*self.closed.borrow()
            && self.config.lock().expect("export lock").acl.allows(addr, iqn)
            && !self.fenced.lock().expect("fence lock").iter().any(|f| f.matches(addr, iqn))
    }
    fn max_connections(&self) -> Option<usize> {
        self.config.lock().expect("export lock").max_connections
    }
    fn chap(&self) -> Option<ChapCredentials> {
        self.config.lock().expect("export lock").chap.clone()
    }
    fn register(&self, id: u64, addr: IpAddr, iqn: &str) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.sessions.lock().expect("sessions lock").push(SessionEntry { id, addr, iqn: iqn.to_string(), kill: tx });
        rx
    }
    fn unregister(&self, id: u64) {
        self.sessions.lock().expect("sessions lock").retain(|s| s.id != id);
    }
}

/// The portal: the exports one listener serves.
pub struct Target {
    exports: Mutex<HashMap<String, Arc<Export>>>,
    next_session: AtomicU64,
    next_tsih: AtomicU16,
    /// Idle time after which the target pings an initiator with NOP-In.
    pub nop_interval: Duration,
    /// Caps and budgets (see the module docs).
    pub limits: Limits,
    counters: Arc<limits::Counters>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.exports.lock().expect("exports lock").keys().cloned().collect();
        f.debug_struct("Target").field("exports", &names).finish()
    }
}

impl Target {
    /// A portal with no exports yet (pings idle initiators every 10 s).
    pub fn new() -> Arc<Target> {
        Target::with_nop_interval(Duration::from_secs(10))
    }

    /// A portal that pings an idle initiator after `nop_interval` and drops
    /// it after three unanswered intervals (dead peers free their sessions).
    pub fn with_nop_interval(nop_interval: Duration) -> Arc<Target> {
        Target::with_limits(nop_interval, Limits::default())
    }

    /// A portal with its own caps and budgets (the agent's config, `export
    /// serve --max-connections`, tests).
    pub fn with_limits(nop_interval: Duration, limits: Limits) -> Arc<Target> {
        Arc::new(Target {
            exports: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_tsih: AtomicU16::new(1),
            nop_interval,
            limits,
            counters: Arc::default(),
        })
    }

    /// Connections, bytes held and refusals now.
    pub fn stats(&self) -> TargetStats {
        self.counters.snapshot()
    }

    /// Opens a file or block device as an export (LUN 1, read-only).
    pub fn open_export(&self, config: TargetConfig) -> Result<Arc<Export>, TargetError> {
        let store =
            FileStore::open(&config.path).map_err(|source| TargetError::Open { path: config.path.clone(), source })?;
        self.open_store(config, Arc::new(store))
    }

    /// Opens an export over any [`BlockStore`] (tests, other backends).
    pub fn open_store(&self, config: TargetConfig, store: Arc<dyn BlockStore>) -> Result<Arc<Export>, TargetError> {
        if !valid_iqn(&config.iqn) {
            return Err(TargetError::BadName(config.iqn.clone()));
        }
        if store.size() < 512 {
            return Err(TargetError::TooSmall { path: config.path.clone(), size: store.size() });
        }
        let mut exports = self.exports.lock().expect("exports lock");
        if exports.contains_key(&config.iqn) {
            return Err(TargetError::Duplicate(config.iqn.clone()));
        }
        let digest = crc32c::crc32c(config.iqn.as_bytes());
        let digest2 = crc32c::crc32c_append(digest, config.path.as_os_str().as_encoded_bytes());
        let mut naa = [0u8; 16];
        naa[0..4].copy_from_slice(&digest.to_be_bytes());
        naa[4..8].copy_from_slice(&digest2.to_be_bytes());
        naa[8..16].copy_from_slice(&config.epoch.to_be_bytes());
        let lun =
            Lun { store, serial: format!("{digest:08x}{digest2:08x}"), naa, max_transfer_blocks: MAX_TRANSFER_BLOCKS };
        let (closed, _) = watch::channel(false);
        tracing::info!(iqn = %config.iqn, path = %config.path.display(), epoch = config.epoch, acl_addresses = %config.acl.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), acl_initiators = %config.acl.initiators.join(","), "export opened");
        let export = Arc::new(Export {
            iqn: config.iqn.clone(),
            config: Mutex::new(config),
            lun: Arc::new(lun),
            fenced: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            closed,
            connections: Arc::new(AtomicUsize::new(0)),
        });
        exports.insert(export.iqn.clone(), Arc::clone(&export));
        Ok(export)
    }

    /// Closes an export: no new logins, every session dropped. Returns
    /// whether it existed.
    pub fn close_export(&self, iqn: &str) -> bool {
        let Some(e) = self.exports.lock().expect("exports lock").remove(iqn) else { return false };
        let _ = e.closed.send(true);
        for s in e.sessions.lock().expect("sessions lock").iter() {
            let _ = s.kill.send(true);
        }
        tracing::info!(iqn, "export closed");
        true
    }

    /// The open export with this IQN.
    pub fn export(&self, iqn: &str) -> Option<Arc<Export>> {
        self.exports.lock().expect("exports lock").get(iqn).cloned()
    }

    /// Takes the full-feature slots a new connection needs (portal, discovery or
    /// export), or says which cap is full and how to raise it.
    fn take_slots(&self, export: Option<&Arc<Export>>, discovery: bool) -> Result<Vec<limits::Taken>, String> {
        let l = &self.limits;
        let full = |what: String| {
            self.counters.refused_cap.fetch_add(1, Ordering::Relaxed);
            what
        };
        let mut slots = Vec::with_capacity(2);
        slots.push(limits::take(&self.counters.connections, l.max_connections).ok_or_else(|| {
            full(format!("the portal has max_connections = {} connections in full feature phase", l.max_connections))
        })?);
        if discovery {
            slots.push(limits::take(&self.counters.discovery, l.max_discovery_sessions).ok_or_else(|| {
                full(format!("max_discovery_sessions = {} discovery sessions are open", l.max_discovery_sessions))
            })?);
        }
        if let Some(e) = export {
            let cap = e.max_connections().unwrap_or(l.max_connections_per_export);
            slots.push(
                limits::take(&e.connections, cap)
                    .ok_or_else(|| full(format!("export {} has its max_connections = {cap} connections", e.iqn)))?,
            );
        }
        Ok(slots)
    }

    /// Whether this peer is admitted to any export (may hold a discovery session).
    fn admits_any(&self, addr: IpAddr, iqn: &str) -> bool {
        self.exports.lock().expect("exports lock").values().any(|e| e.admits(addr, iqn))
    }

    /// IQNs this peer may see in SendTargets.
    fn visible_to(&self, addr: IpAddr, iqn: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .exports
            .lock()
            .expect("exports lock")
            .values()
            .filter(|e| e.admits(addr, iqn))
            .map(|e| e.iqn.clone())
            .collect();
        v.sort();
        v
    }
}

/// Accepts connections until `shutdown` resolves, one task per connection;
/// then drops every connection and returns. Tests start and stop it freely.
pub async fn serve(listener: TcpListener, target: Arc<Target>, shutdown: impl Future) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let local = listener.local_addr()?;
    tracing::info!(%local, max_connections = target.limits.max_connections, max_connections_per_export = target.limits.max_connections_per_export, "iSCSI target listening");
    tokio::pin!(shutdown);
    let (mut turned_away, mut warned_at) = (0u64, None::<std::time::Instant>);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => {
                let (sock, peer): (_, SocketAddr) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(pending) = limits::take(&target.counters.pending, target.limits.max_pending_logins) else {
                    // Closed before a byte is read: a flood of idle connections costs nothing.
                    drop(sock);
                    turned_away += 1;
                    if warned_at.is_none_or(|t: std::time::Instant| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(%peer, turned_away, cap = target.limits.max_pending_logins,
                            "connection closed unread: max_pending_logins connections are already logging in");
                        warned_at = Some(std::time::Instant::now());
                    }
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let t = Arc::clone(&target);
                let stop = stop_rx.clone();
                tasks.spawn(conn::run(sock, peer, local, t, stop, pending));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    tracing::info!(%local, "iSCSI target stopped");
    Ok(())
}
