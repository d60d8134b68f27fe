//! What the target may spend, and on whom: connection caps, the per-connection
//! byte budgets, the login deadline and the slow-reader floor, plus the
//! accounting that lets tests and operators see the bytes connections hold.
//!
//! The rule (the target module docs): nothing before admission costs more than
//! a login's worth of memory, and an admitted connection holds at most
//! `max_recv_data_segment_length` (its read buffer) + `held_bytes` (commands
//! waiting for a CmdSN gap) + `reply_bytes` (replies the initiator has not
//! read yet), whatever the initiator sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Bounds on the target's resources; [`Limits::default`] is what the agent and
/// `meshdrain export serve` use unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections in full feature phase on the whole portal (normal and
    /// discovery). The login past it is refused with status 0x0302 (out of
    /// resources). Default 256.
    pub max_connections: usize,
    /// Connections in full feature phase per export, unless the export sets its
    /// own ([`super::TargetConfig::with_max_connections`]). Default 32: a lease
    /// holder uses one or two, `iscsi-perf` benches eight.
    pub max_connections_per_export: usize,
    /// Discovery sessions at once (they only list targets). Default 16.
    pub max_discovery_sessions: usize,
    /// Connections accepted and not yet logged in; past it new connections are
    /// closed at once. Default 256.
    pub max_pending_logins: usize,
    /// The whole login (every PDU of it) must finish within this. Default 10 s.
    pub login_timeout: Duration,
    /// MaxRecvDataSegmentLength we declare to normal sessions: the largest PDU
    /// an initiator may send us, so the read buffer's bound. Default 256 KiB.
    /// Discovery sessions get 8 KiB (the RFC default; SendTargets needs less).
    pub max_recv_data_segment_length: u32,
    /// Bytes of out-of-order commands (header and data) one connection may
    /// park until the CmdSN gap before them fills. SCSI commands are parked
    /// without their data (this target never takes write data); past the
    /// budget the connection is dropped. Default 256 KiB.
    pub held_bytes: usize,
    /// Bytes of replies (NOP-In echoes, text responses) queued and not yet
    /// read by the initiator; past it we stop reading its requests until it
    /// reads. Default 512 KiB.
    pub reply_bytes: usize,
    /// While our sends are blocked on a full socket, an initiator that reads
    /// less than this many bytes per second over `slow_reader_window` is
    /// dropped (it pins a connection and a sender thread). Default 256 KiB/s.
    pub slow_reader_floor: u64,
    /// Window over which the floor is measured. Default 10 s.
    pub slow_reader_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_connections_per_export: 32,
            max_discovery_sessions: 16,
            max_pending_logins: 256,
            login_timeout: Duration::from_secs(10),
            max_recv_data_segment_length: 256 * 1024,
            held_bytes: 256 * 1024,
            reply_bytes: 512 * 1024,
            slow_reader_floor: 256 * 1024,
            slow_reader_window: Duration::from_secs(10),
        }
    }
}

/// Counters one portal keeps; read with [`super::Target::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub pending: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub discovery: Arc<AtomicUsize>,
    pub held: AtomicUsize,
    pub refused_cap: AtomicU64,
    pub slow_dropped: AtomicU64,
}

/// A snapshot of what the portal holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetStats {
    /// Connections accepted and still logging in.
    pub pending_logins: usize,
    /// Connections in full feature phase (normal and discovery).
    pub connections: usize,
    /// Of those, discovery sessions.
    pub discovery_sessions: usize,
    /// Bytes connections hold now: read buffers, parked commands, unread replies.
    pub held_bytes: usize,
    /// Logins refused because a connection cap was reached.
    pub refused_over_cap: u64,
    /// Connections dropped for reading below the slow-reader floor.
    pub slow_readers_dropped: u64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> TargetStats {
        TargetStats {
            pending_logins: self.pending.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            discovery_sessions: self.discovery.load(Ordering::Relaxed),
            held_bytes: self.held.load(Ordering::Relaxed),
            refused_over_cap: self.refused_cap.load(Ordering::Relaxed),
            slow_readers_dropped: self.slow_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Takes one unit of `counter` if it is below `cap`; the guard gives it back.
pub(super) fn take(counter: &Arc<AtomicUsize>, cap: usize) -> Option<Taken> {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).ok()?;
    Some(Taken(Arc::clone(counter)))
}

/// One unit of a counter, returned on drop.
pub(super) struct Taken(Arc<AtomicUsize>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes one connection holds, mirrored into the portal's total; all of them
/// are given back on drop.
pub(super) struct Held {
    counters: Arc<Counters>,
    mine: usize,
}

impl Held {
    pub(super) fn new(counters: &Arc<Counters>) -> Held {
        Held { counters: Arc::clone(counters), mine: 0 }
    }
    /// Sets this connection's total to `n` bytes.
    pub(super) fn set(&mut self, n: usize) {
        if n > self.mine {
            self.counters.held.fetch_add(n - self.mine, Ordering::Relaxed);
        } else {
            self.counters.held.fetch_sub(self.mine - n, Ordering::Relaxed);
        }
        self.mine = n;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// A queued reply's share of the connection's `reply_bytes` budget, given back
/// (and taken off the portal's held bytes) once the writer has sent it.
pub(super) struct Charge {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _held: Held,
}

/// Waits for room for `n` bytes of replies (the initiator must read what we
/// sent before) and charges them, at most the whole budget `cap`; `None` once
/// the writer has gone (it closes the budget).
pub(super) async fn charge(
    budget: &Arc<tokio::sync::Semaphore>,
    cap: usize,
    counters: &Arc<Counters>,
    n: usize,
) -> Option<Charge> {
    let n = n.min(cap).min(u32::MAX as usize) as u32;
    let permit = Arc::clone(budget).acquire_many_owned(n).await.ok()?;
    let mut held = Held::new(counters);
    held.set(n as usize);
    Some(Charge { _permit: permit, _held: held })
}
