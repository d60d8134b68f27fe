//! The NBD transmission phase over one stream socket (docs/exposures.md): the kernel is
//! configured over netlink with our socket, so there is no handshake, only requests
//! (28 bytes, magic 0x25609513) and simple replies (16 bytes, magic 0x67446698).
//!
//! One reader thread parses requests and hands them to a small pool of workers (the
//! engine is thread-safe); replies go out in completion order, each written whole under
//! one lock. A lone request, with nothing queued behind it, none with the workers and a
//! source that answers, the reader answers itself (docs/exposures.md, "On-demand reads
//! on the dispatch thread"). The peer is the kernel, but every request is still checked before it sizes
//! anything: a length over [`MAX_REQUEST`] or a bad magic ends the connection, and the
//! bytes of requests in flight are bounded by [`IN_FLIGHT_BYTES`].
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use crate::engine::Engine;
use crate::error::CloneError;

/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const REPLY_MAGIC: u32 = 0x6744_6698;
/// Request header size.
pub const REQUEST_LEN: usize = 28;
/// Simple reply header size.
pub const REPLY_LEN: usize = 16;
/// Largest request served (the kernel's nbd sends at most 32 MiB: max_hw_sectors 65536).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Payload bytes of requests being served at once (reads' buffers and writes' data).
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;

/// NBD command types (the low 16 bits of the type field).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (payload follows the header).
    pub const WRITE: u16 = 1;
    /// Disconnect: no reply; the connection ends once requests in flight are answered.
    pub const DISC: u16 = 2;
    /// Flush: every completed write is durable before the reply.
    pub const FLUSH: u16 = 3;
    /// Trim (discard).
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
}
/// Command flag: forced unit access (durable before the reply).
pub const CMD_FLAG_FUA: u16 = 1;

/// NBD errors on the wire (the protocol's values, Linux's errno numbers).
mod wire_err {
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
}

/// One parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Command flags (high 16 bits of the type field).
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Echoed in the reply.
    pub handle: u64,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Header {
    /// Parses a header; a bad magic is a protocol error.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Result<Self, String> {
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(format!("bad request magic {magic:#010x} (want {REQUEST_MAGIC:#010x})"));
        }
        Ok(Self {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }

    /// The header's bytes (the test client uses it).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// A simple reply header.
pub fn reply_header(error: u32, handle: u64) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[0..4].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// The NBD error for an engine error ([`CloneError::errno`]: the protocol's error values are
/// Linux's errno numbers; the kernel's nbd turns every error into an I/O error, but ENOSPC
/// stays ENOSPC on the wire).
fn wire_error(e: &CloneError) -> u32 {
    e.errno().unsigned_abs()
}

/// A byte budget: a request waits for its payload's bytes before its buffer is made.
struct Budget {
    left: Mutex<u64>,
    cv: Condvar,
}

impl Budget {
    fn take(&self, n: u64) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        while *left < n {
            left = self.cv.wait(left).unwrap_or_else(|p| p.into_inner());
        }
        *left -= n;
    }
    fn give(&self, n: u64) {
        *self.left.lock().unwrap_or_else(|p| p.into_inner()) += n;
        self.cv.notify_all();
    }
}

/// Flushes are answered only once the engine's data and metadata are synced; a flush
/// with no write completed since the last durable point answers at once.
#[derive(Default)]
struct Durability {
    /// Writes and trims completed (a generation counter).
    written: AtomicU64,
    /// Every write counted up to this generation is durable.
    durable: Mutex<u64>,
}

impl Durability {
    fn flush(&self, engine: &Engine) -> Result<(), CloneError> {
        let upto = self.written.load(Ordering::Acquire);
        if *self.durable.lock().unwrap_or_else(|p| p.into_inner()) >= upto {
            return Ok(());
        }
        // commit(true) syncs the dest and persists every pending bit; commits are
        // serialized, so one started now covers every write counted in `upto`.
        engine.commit(true)?;
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        *d = (*d).max(upto);
        Ok(())
    }
}

/// What a worker does for one request.
struct Job {
    h: Header,
    /// A write's payload.
    data: Vec<u8>,
    /// Budget bytes to give back once answered.
    cost: u64,
}

struct Shared {
    engine: Arc<Engine>,
    /// Requests handed to the workers and not yet answered.
    with_workers: AtomicUsize,
    writer: Mutex<UnixStream>,
    budget: Budget,
    durability: Durability,
}

/// Workers serving one connection.
pub const WORKERS: usize = 4;

/// Serves `sock` until the peer disconnects (DISC or end of stream; `Ok`) or breaks the
/// protocol (`Err` naming why; the connection is shut down). Blocks.
pub fn serve(engine: Arc<Engine>, sock: UnixStream, workers: usize) -> Result<(), String> {
    let shared = Arc::new(Shared {
        engine,
        with_workers: AtomicUsize::new(0),
        writer: Mutex::new(sock.try_clone().map_err(|e| format!("clone the NBD socket: {e}"))?),
        budget: Budget { left: Mutex::new(IN_FLIGHT_BYTES), cv: Condvar::new() },
        durability: Durability::default(),
    });
    let (tx, rx) = sync_channel::<Job>(workers.max(1) * 2);
    let rx = Arc::new(Mutex::new(rx));
    let pool: Vec<_> = (0..workers.max(1))
        .map(|i| {
            let (shared, rx) = (shared.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("nbd-worker-{i}"))
                .spawn(move || worker(&shared, &rx))
                .map_err(|e| format!("start an NBD worker: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let res = read_loop(&shared, sock.try_clone().map_err(|e| format!("clone the NBD socket: {e}"))?, &tx);
    drop(tx);
    for t in pool {
        let _ = t.join();
    }
    if res.is_err() {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    res
}

/// One request as the reader hands it on ([`read_request`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Under the cap and inside the volume: a worker serves it. `data` is a write's
    /// payload (empty for every other command); `cost` the budget bytes it holds.
    Serve {
        /// The request.
        header: Header,
        /// A write's payload, `header.len` bytes.
        data: Vec<u8>,
        /// Payload bytes taken from the in-flight budget (given back once answered).
        cost: u64,
    },
    /// Past the end of the volume: answered with `error` at once and the connection goes
    /// on (the NBD protocol's rule); a write's payload was read and dropped unbuffered.
    Refused {
        /// The request.
        header: Header,
        /// The wire error (`EINVAL`, `ENOSPC` for a write).
        error: u32,
    },
    /// `NBD_CMD_DISC`: the connection ends once the requests in flight are answered.
    Disconnect,
}

/// Reads one request from `r` for a volume of `size` bytes: `Ok(None)` at a clean end of
/// stream between requests, `Err` (naming why; the caller ends the connection) for a bad
/// magic, a length over [`MAX_REQUEST`] or a stream cut short. Every check runs on the
/// 28-byte header before anything is sized from it: only a request that will be served
/// calls `take(cost)` (the in-flight budget, which may block) and then sizes a write's
/// payload buffer. Public so the fuzz target (fuzz/fuzz_targets/nbd_request.rs) drives
/// the same code the server does.
pub fn read_request(r: &mut impl Read, size: u64, take: &mut dyn FnMut(u64)) -> Result<Option<Incoming>, String> {
    let mut b = [0u8; REQUEST_LEN];
    match read_full(r, &mut b) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err(format!("NBD socket read: {e}")),
    }
    let header = Header::parse(&b)?;
    if header.len > MAX_REQUEST {
        return Err(format!(
            "NBD request of {} bytes at {} is over the {MAX_REQUEST}-byte cap; connection closed",
            header.len, header.offset
        ));
    }
    if header.kind == cmd::DISC {
        return Ok(Some(Incoming::Disconnect));
    }
    let payload = header.kind == cmd::WRITE;
    if header.offset.checked_add(u64::from(header.len)).is_none_or(|end| end > size) {
        tracing::warn!(offset = header.offset, len = header.len, size, "NBD request past the end of the volume");
        if payload {
            // Dropped through io::copy's fixed stack buffer: nothing sized from `len`.
            let want = u64::from(header.len);
            let got = std::io::copy(&mut r.take(want), &mut std::io::sink())
                .map_err(|e| format!("NBD write payload of {want} bytes: {e}"))?;
            if got < want {
                return Err(format!("NBD write payload of {want} bytes cut short at {got}"));
            }
        }
        let error = if payload { wire_err::ENOSPC } else { wire_err::EINVAL };
        return Ok(Some(Incoming::Refused { header, error }));
    }
    let cost = if payload || header.kind == cmd::READ { u64::from(header.len) } else { 0 };
    take(cost);
    let mut data = Vec::new();
    if payload {
        data = vec![0u8; header.len as usize];
        r.read_exact(&mut data).map_err(|e| format!("NBD write payload of {} bytes cut short: {e}", header.len))?;
    }
    Ok(Some(Incoming::Serve { header, data, cost }))
}

fn read_loop(shared: &Shared, mut sock: UnixStream, tx: &SyncSender<Job>) -> Result<(), String> {
    let size = shared.engine.size();
    loop {
        let mut taken = 0;
        let next = read_request(&mut sock, size, &mut |n| {
            shared.budget.take(n);
            taken = n;
        });
        let next = match next {
            Ok(n) => n,
            Err(e) => {
                shared.budget.give(taken);
                return Err(e);
            }
        };
        match next {
            None | Some(Incoming::Disconnect) => return Ok(()),
            Some(Incoming::Refused { header, error }) => {
                send(shared, &reply_header(error, header.handle), &[]).map_err(|e| format!("NBD socket write: {e}"))?;
            }
            Some(Incoming::Serve { header, data, cost }) => {
                let job = Job { h: header, data, cost };
                if shared.with_workers.load(Ordering::Acquire) == 0
                    && queued_bytes(&sock) == 0
                    && shared.engine.source_answers()
                {
                    // The only request, nothing else in flight, a source that answers:
                    // answered here, without the hand-off to a worker (docs/exposures.md).
                    let res = answer(shared, job);
                    shared.budget.give(cost);
                    res.map_err(|e| format!("NBD socket write: {e}"))?;
                    continue;
                }
                shared.with_workers.fetch_add(1, Ordering::AcqRel);
                if tx.send(job).is_err() {
                    return Err("NBD workers ended".into());
                }
            }
        }
    }
}

/// Bytes the kernel has queued on `sock` that we have not read (FIONREAD): more requests
/// waiting. An error counts as "some", so the request goes to a worker.
fn queued_bytes(sock: &UnixStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 { 1 } else { n.max(0) as usize }
}

/// Reads exactly `buf`; `Ok(false)` on a clean end of stream before its first byte.
fn read_full(sock: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "request header cut short")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn worker(shared: &Shared, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let cost = job.cost;
        let res = answer(shared, job);
        shared.budget.give(cost);
        shared.with_workers.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = res {
            // The socket is gone: the reader notices on its next read.
            tracing::debug!(error = %e, "NBD reply not sent");
        }
    }
}

/// Carries out one request and sends its reply.
fn answer(shared: &Shared, job: Job) -> std::io::Result<()> {
    let Job { h, data, .. } = job;
    let engine = &shared.engine;
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let durable = |r: Result<(), CloneError>| {
        r.and_then(|()| {
            shared.durability.written.fetch_add(1, Ordering::AcqRel);
            if fua { shared.durability.flush(engine) } else { Ok(()) }
        })
    };
    let res = match h.kind {
        cmd::READ => {
            let mut buf = vec![0u8; h.len as usize];
            match engine.read(h.offset, &mut buf) {
                Ok(()) => return send(shared, &reply_header(0, h.handle), &buf),
                Err(e) => Err(e),
            }
        }
        cmd::WRITE => durable(engine.write(h.offset, &data)),
        cmd::TRIM => durable(engine.discard(h.offset, h.len as u64)),
        cmd::WRITE_ZEROES => durable(engine.write_zeroes(h.offset, h.len as u64)),
        cmd::FLUSH => shared.durability.flush(engine),
        other => {
            tracing::warn!(kind = other, "unknown NBD command");
            return send(shared, &reply_header(wire_err::EINVAL, h.handle), &[]);
        }
    };
    let err = match &res {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(parent: &engine.span, error = %e, kind = h.kind, offset = h.offset, len = h.len, "NBD request failed");
            wire_error(e)
        }
    };
    send(shared, &reply_header(err, h.handle), &[])
}

/// Writes one reply whole (header and data) under the writer lock.
fn send(shared: &Shared, header: &[u8; REPLY_LEN], data: &[u8]) -> std::io::Result<()> {
    let mut w = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
    if data.is_empty() {
        return w.write_all(header);
    }
    let mut bufs = [std::io::IoSlice::new(header), std::io::IoSlice::new(data)];
    let mut bufs: &mut [std::io::IoSlice] = &mut bufs;
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
