//! The sending side of one full-feature connection: a blocking thread that
//! owns the socket's write direction, stamps StatSN/ExpCmdSN/MaxCmdSN, runs
//! the SCSI commands in CmdSN order and streams their data.
//!
//! Why a thread and not a task: a READ's data goes page cache → socket with
//! sendfile(2) (no userspace copy, no buffer to allocate or zero), and on a
//! cold cache that call blocks on the disk, which must not stall a tokio
//! worker. Why one writer per connection: responses leave in the order the
//! commands arrived, one command at a time, so an initiator sees a steady
//! stream of completions instead of bursts of 32 (bursts starve a session's
//! completion clock and made iscsi-perf's own run timer miss its deadline).
//! Digests, or a store without a file, fall back to pread into one reused
//! buffer per connection.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::conn::LUN1;
use super::limits::{Charge, Counters};
use super::window::QUEUE_DEPTH;
use crate::negotiate::SessionParams;
use crate::pdu::codec::pad_len;
use crate::pdu::{Codec, Pdu, Residual};
use crate::scsi::{GOOD, Lun, ScsiError, ScsiResult, Sense};

/// How long the initiator may leave our sends blocked (its receive window
/// full) before the connection is declared dead.
pub(super) const WRITE_STALL: Duration = Duration::from_secs(30);
/// Poll slice while blocked, so a stop request is seen promptly.
const POLL_MS: libc::c_int = 200;
/// Largest Data-In segment we send, whatever the initiator declared it takes
/// (the reads of a store without a file, or with digests, go through a buffer
/// of this size: the connection's memory does not follow its MaxRecvDataSegmentLength).
pub(super) const MAX_SEGMENT: usize = 256 * 1024;

/// The slow-reader floor ([`super::Limits::slow_reader_floor`]): while our sends
/// are blocked, the initiator must read `bytes_per_sec` over each `window`.
pub(super) struct SlowFloor {
    /// Least bytes per second.
    pub bytes_per_sec: u64,
    /// Window it is measured over.
    pub window: Duration,
    /// Where drops are counted.
    pub counters: Arc<Counters>,
}

/// What the reader hands the writer, in the order it must go out.
pub(super) enum Out {
    /// A response PDU; `advance` if it consumes a StatSN.
    Pdu(Pdu, bool),
    /// A response with data (NOP-In echo, text), its bytes charged to the
    /// connection's reply budget until it is sent. Always advances StatSN.
    Reply(Pdu, Charge),
    /// An admitted SCSI command: the writer runs it and sends its data and status.
    Exec {
        /// Initiator task tag.
        itt: u32,
        /// LUN field of the command.
        lun: u64,
        /// Expected data transfer length.
        edtl: u32,
        /// The CDB.
        cdb: [u8; 16],
    },
    /// Flush, shut down the sending direction, stop (after a logout response).
    Close,
}

/// State the reader and the writer share.
pub(super) struct Shared {
    /// ExpCmdSN as the reader's window has it.
    pub exp_cmd_sn: AtomicU32,
    /// Commands admitted and not yet started by the writer.
    pub in_flight: AtomicU32,
    /// Their tags, for ABORT TASK.
    pub inflight: Mutex<HashSet<u32>>,
    /// Tags aborted before the writer reached them: never answered.
    pub aborted: Mutex<HashSet<u32>>,
    /// Set when the connection is going away (fence, shutdown): stop now.
    pub stop: AtomicBool,
}

impl Shared {
    pub(super) fn new(exp_cmd_sn: u32) -> Shared {
        Shared {
            exp_cmd_sn: AtomicU32::new(exp_cmd_sn),
            in_flight: AtomicU32::new(0),
            inflight: Mutex::new(HashSet::new()),
            aborted: Mutex::new(HashSet::new()),
            stop: AtomicBool::new(false),
        }
    }
    /// MaxCmdSN to advertise: the window shrinks with the commands queued.
    pub(super) fn max_cmd_sn(&self) -> u32 {
        let exp = self.exp_cmd_sn.load(Ordering::Acquire);
        exp.wrapping_add(QUEUE_DEPTH.saturating_sub(self.in_flight.load(Ordering::Acquire) + 1))
    }
}

/// A nonblocking socket driven with blocking semantics (poll on EAGAIN),
/// plus a small buffer that gathers headers and short PDUs into one send.
struct Sink {
    fd: OwnedFd,
    pending: Vec<u8>,
    shared: Arc<Shared>,
    floor: SlowFloor,
    /// Since when our sends have been blocked on the initiator, and the bytes it
    /// took since then (reset every floor window it keeps up; `None` when idle).
    backlog: Cell<Option<(Instant, u64)>>,
}

fn closing() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection is closing")
}

impl Sink {
    /// Checks the slow-reader floor while blocked: a window without the floor's
    /// worth of bytes read ends the connection.
    fn check_floor(&self) -> io::Result<()> {
        let now = Instant::now();
        let Some((start, moved)) = self.backlog.get() else {
            self.backlog.set(Some((now, 0)));
            return Ok(());
        };
        let elapsed = now.duration_since(start);
        if elapsed < self.floor.window {
            return Ok(());
        }
        let rate = (moved as f64 / elapsed.as_secs_f64()) as u64;
        if rate < self.floor.bytes_per_sec {
            self.floor.counters.slow_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                rate,
                floor = self.floor.bytes_per_sec,
                window_ms = self.floor.window.as_millis() as u64,
                "initiator reads slower than slow_reader_floor; dropping the connection"
            );
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "initiator read {rate} B/s over {elapsed:?}, below the slow-reader floor of {} B/s",
                    self.floor.bytes_per_sec
                ),
            ));
        }
        self.backlog.set(Some((now, 0)));
        Ok(())
    }

    fn wait_writable(&self, since: Instant) -> io::Result<()> {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(closing());
            }
            self.check_floor()?;
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            if r > 0 {
                return Ok(());
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if since.elapsed() > WRITE_STALL {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("initiator read nothing for {WRITE_STALL:?}"),
                ));
            }
        }
    }

    /// What a nonblocking send call's return value `r` means: `Some(bytes moved)`
    /// (restarting the stall clock `since`), or `None` after waiting for room in the
    /// socket or an interrupted call (call again); any other error ends the send.
    fn sent(&self, r: isize, since: &mut Instant) -> io::Result<Option<usize>> {
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => self.wait_writable(*since).map(|()| None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        *since = Instant::now();
        if let Some((start, moved)) = self.backlog.get() {
            self.backlog.set(Some((start, moved + r as u64)));
        }
        Ok(Some(r as usize))
    }

    /// Sends `pending` then `parts`; `more` tells TCP more follows at once.
    fn send(&mut self, parts: &[&[u8]], more: bool) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let r = self.send_all(&pending, parts, more);
        self.pending = pending;
        self.pending.clear();
        r
    }

    fn send_all(&self, pending: &[u8], parts: &[&[u8]], more: bool) -> io::Result<()> {
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        bufs.extend(std::iter::once(pending).chain(parts.iter().copied()).filter(|b| !b.is_empty()));
        let (mut idx, mut off) = (0usize, 0usize);
        let mut since = Instant::now();
        while idx < bufs.len() {
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len() - idx);
            for (k, b) in bufs[idx..].iter().take(64).enumerate() {
                let b = if k == 0 { &b[off..] } else { b };
                iov.push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
            }
            // SAFETY: a zeroed msghdr is valid; iov points at live slices.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            let last_call = idx + iov.len() == bufs.len();
            let flags = libc::MSG_NOSIGNAL | if more || !last_call { libc::MSG_MORE } else { 0 };
            // SAFETY: msg describes readable memory that outlives the call.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, flags) };
            let Some(mut n) = self.sent(r, &mut since)? else { continue };
            while n > 0 && idx < bufs.len() {
                let left = bufs[idx].len() - off;
                if n >= left {
                    n -= left;
                    idx += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Sends what is pending, then `len` bytes of `file` from `offset`
    /// straight from the page cache.
    fn sendfile(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<()> {
        self.send(&[], true)?;
        let mut off = offset as libc::off_t;
        let mut left = len;
        let mut since = Instant::now();
        while left > 0 {
            // SAFETY: both fds are open; `off` is a valid in/out offset.
            let r = unsafe { libc::sendfile(self.fd.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
            let Some(n) = self.sent(r, &mut since)? else { continue };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("backing store ended at byte {off} while sending a read"),
                ));
            }
            left -= n;
        }
        Ok(())
    }
}

/// Everything the writer owns.
pub(super) struct Writer {
    sink: Sink,
    codec: Codec,
    params: Arc<SessionParams>,
    lun: Option<Arc<Lun>>,
    stat_sn: u32,
    scratch: Vec<u8>,
}

impl Writer {
    /// A writer sending on `fd` (a duplicate of the connection's socket).
    pub(super) fn new(
        fd: OwnedFd,
        codec: Codec,
        params: Arc<SessionParams>,
        shared: Arc<Shared>,
        lun: Option<Arc<Lun>>,
        stat_sn: u32,
        floor: SlowFloor,
    ) -> Writer {
        Writer {
            sink: Sink { fd, pending: Vec::with_capacity(4096), shared, floor, backlog: Cell::new(None) },
            codec,
            params,
            lun,
            stat_sn,
            scratch: Vec::new(),
        }
    }

    /// Runs until the channel closes, a `Close`, a stop request or a send
    /// error; returns why it stopped if it was an error.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Out>) -> io::Result<()> {
        loop {
            let m = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    self.sink.send(&[], false)?;
                    // Everything asked for is with the kernel: the initiator is not behind.
                    self.sink.backlog.set(None);
                    match rx.blocking_recv() {
                        Some(m) => m,
                        None => return Ok(()),
                    }
                }
                Err(TryRecvError::Disconnected) => return self.sink.send(&[], false),
            };
            if self.sink.shared.stop.load(Ordering::Acquire) {
                return Err(closing());
            }
            match m {
                Out::Pdu(p, advance) => self.queue(p, advance)?,
                Out::Reply(p, charge) => {
                    self.queue(p, true)?;
                    drop(charge);
                }
                Out::Close => {
                    self.sink.send(&[], false)?;
                    // SAFETY: shutdown on our own open socket fd.
                    unsafe { libc::shutdown(self.sink.fd.as_raw_fd(), libc::SHUT_WR) };
                    return Ok(());
                }
                Out::Exec { itt, lun, edtl, cdb } => self.exec(itt, lun, edtl, &cdb)?,
            }
        }
    }

    fn stamp(&mut self, p: &mut Pdu, advance: bool) {
        let shared = &self.sink.shared;
        p.stamp(self.stat_sn, shared.exp_cmd_sn.load(Ordering::Acquire), shared.max_cmd_sn());
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
    }

    /// Appends a PDU to the pending bytes (sent with the next flush).
    fn queue(&mut self, mut p: Pdu, advance: bool) -> io::Result<()> {
        self.stamp(&mut p, advance);
        self.codec.encode_head_into(&p, p.data.len(), &mut self.sink.pending);
        if p.data.len() > 16 * 1024 {
            let mut tail = Vec::with_capacity(8);
            self.codec.encode_tail_into(&p.data, &mut tail);
            return self.sink.send(&[&p.data, &tail], true);
        }
        self.sink.pending.extend_from_slice(&p.data);
        self.codec.encode_tail_into(&p.data, &mut self.sink.pending);
        if self.sink.pending.len() > 64 * 1024 {
            self.sink.send(&[], true)?;
        }
        Ok(())
    }

    /// Starts one command: bookkeeping, then its data and status.
    fn exec(&mut self, itt: u32, lun: u64, edtl: u32, cdb: &[u8; 16]) -> io::Result<()> {
        {
            let shared = &self.sink.shared;
            shared.inflight.lock().expect("inflight").remove(&itt);
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            if shared.aborted.lock().expect("aborted").remove(&itt) {
                tracing::debug!(itt, "task aborted; its response is not sent");
                return Ok(());
            }
        }
        let Some(l) = self.lun.clone() else { return Ok(()) };
        let range = if lun == LUN1 { l.read_range(cdb) } else { Ok(None) };
        let result = match range {
            Ok(Some((off, len))) if len > 0 && edtl > 0 => return self.stream_read(&l, itt, lun, edtl, off, len),
            Ok(_) => execute_on_lun(&l, lun, cdb),
            Err(ScsiError(s)) => ScsiResult::check(s),
        };
        for (p, advance) in scsi_pdus(&self.params, itt, lun, edtl, result) {
            self.queue(p, advance)?;
        }
        Ok(())
    }

    /// Sends `len` bytes of the store from `off` as Data-In PDUs cut at
    /// MaxRecvDataSegmentLength and MaxBurstLength, status in the last.
    fn stream_read(&mut self, l: &Lun, itt: u32, lun: u64, edtl: u32, off: u64, len: u64) -> io::Result<()> {
        let residual = Residual::of(edtl, len);
        let total = len.min(edtl as u64) as usize;
        let file = if self.codec.data_digest { None } else { l.store.file_fd() };
        for Segment { off: o, len: n, sn, fin, last } in segments(&self.params, total) {
            if file.is_none() {
                // One segment at a time through a buffer of at most MAX_SEGMENT bytes.
                if self.scratch.len() < n {
                    self.scratch.resize(n, 0);
                }
                if let Err(e) = l.store.read_exact_at(&mut self.scratch[..n], off + o as u64) {
                    tracing::error!(offset = off + o as u64, len = n, error = %e, "read of the backing store failed");
                    let r = ScsiResult::check(Sense::READ_ERROR);
                    return self.queue(Pdu::scsi_response(itt, r.status, &r.sense, Residual::of(edtl, 0)), true);
                }
            }
            let mut p = Pdu::data_in(lun, itt, sn, o as u32, Bytes::new(), fin, last.then_some((GOOD, residual)));
            self.stamp(&mut p, last);
            self.codec.encode_head_into(&p, n, &mut self.sink.pending);
            match file {
                Some(fd) => {
                    self.sink.sendfile(fd, off + o as u64, n)?;
                    self.sink.pending.extend_from_slice(&[0u8; 3][..pad_len(n)]);
                }
                None => {
                    let data = &self.scratch[..n];
                    let mut tail = Vec::with_capacity(8);
                    self.codec.encode_tail_into(data, &mut tail);
                    self.sink.send(&[data, &tail], true)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs a non-streamed command; LUNs other than 1 exist only for INQUIRY
/// (peripheral qualifier 3) and REPORT LUNS.
fn execute_on_lun(l: &Lun, lun: u64, cdb: &[u8]) -> ScsiResult {
    if lun == LUN1 || cdb[0] == 0xa0 {
        return l.execute(cdb);
    }
    if cdb[0] == 0x12 && cdb[1] & 1 == 0 {
        // No LU here: peripheral qualifier 3, device type 0x1f.
        let mut d = vec![0u8; 36];
        d[0] = 0x7f;
        d[2] = 0x06;
        d[3] = 0x02;
        d[4] = 31;
        let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
        d.truncate(alloc);
        return ScsiResult { status: GOOD, sense: Vec::new(), data: Bytes::from(d) };
    }
    ScsiResult::check(Sense::LUN_NOT_SUPPORTED)
}

/// Turns a SCSI result into Data-In PDUs (status in the last) or a SCSI Response.
fn scsi_pdus(params: &SessionParams, itt: u32, lun: u64, edtl: u32, r: ScsiResult) -> Vec<(Pdu, bool)> {
    let produced = r.data.len() as u64;
    let residual = Residual::of(edtl, produced);
    let mut data = r.data;
    data.truncate(edtl as usize);
    if r.status != GOOD || data.is_empty() {
        return vec![(Pdu::scsi_response(itt, r.status, &r.sense, residual), true)];
    }
    segments(params, data.len())
        .map(|Segment { off, len, sn, fin, last }| {
            let status = last.then_some((GOOD, residual));
            (Pdu::data_in(lun, itt, sn, off as u32, data.slice(off..off + len), fin, status), last)
        })
        .collect()
}

/// One Data-In PDU's share of a read: byte offset, length, DataSN, the F bit (end of
/// a burst or of the data) and whether it is the last (it carries the status).
struct Segment {
    off: usize,
    len: usize,
    sn: u32,
    fin: bool,
    last: bool,
}

/// Splits `total` bytes into Data-In PDUs of at most MaxXmitDataSegmentLength each,
/// with the F bit at every MaxBurstLength boundary (RFC 7143 §11.7.1): the one
/// segmentation both the streamed and the buffered read paths use.
fn segments(params: &SessionParams, total: usize) -> impl Iterator<Item = Segment> + use<> {
    let seg = (params.max_xmit_data_segment_length.max(512) as usize).min(MAX_SEGMENT);
    let burst = params.max_burst_length.max(512) as usize;
    let (mut off, mut sn, mut burst_left) = (0usize, 0u32, burst);
    std::iter::from_fn(move || {
        if off >= total {
            return None;
        }
        let len = seg.min(total - off).min(burst_left);
        let last = off + len == total;
        burst_left -= len;
        let fin = last || burst_left == 0;
        if burst_left == 0 {
            burst_left = burst;
        }
        let s = Segment { off, len, sn, fin, last };
        off += len;
        sn += 1;
        Some(s)
    })
}
