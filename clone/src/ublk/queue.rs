//! One ublk queue: a thread that owns the queue's io_uring (the driver takes a queue's
//! commands only from the thread that fetched its tags) and a few workers that answer the
//! requests through the [`Engine`], which blocks (an on-demand read waits for the source).
//!
//! Each tag has one buffer of `buf_bytes` (the device's `max_io_buf_bytes`, which bounds
//! every request), handed to the driver with the tag: the driver copies a write's data
//! into it before giving us the request and a read's data out of it when we commit. A tag
//! (and its buffer) is ours from the driver's completion of its FETCH/COMMIT_AND_FETCH
//! until we commit it again; the workers only touch the buffer of a tag they were given.
//! Workers hand results back on a channel and wake the queue thread through an eventfd
//! read that sits in the same ring as the tags' commands. A read of hydrated regions only
//! is answered by the queue thread itself (no hand-off: the fast path once data is here),
//! and so is a lone request that may block while nothing else is in flight and the source
//! answers ([`inline_ok`]): at queue depth 1 an on-demand read then costs no hand-off.
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use super::ctrl::err;
use super::sys::{self, IoCmd, IoDesc};
use crate::engine::Engine;
use crate::error::{CloneError, Result};

/// user_data of the eventfd read (tags are below [`sys::MAX_QUEUE_DEPTH`]).
const WAKE: u64 = u64::MAX;

/// What a queue serves: the device, its tags and their buffer size.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Device id (N of /dev/ublkcN).
    pub dev_id: u32,
    /// Tags.
    pub depth: u16,
    /// Bytes per tag buffer.
    pub buf_bytes: u32,
    /// Worker threads answering requests.
    pub workers: usize,
}

/// An anonymous mapping: the tags' buffers, or the driver's descriptor page (read-only).
struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch which part is the tag ownership
// described in the module docs.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn anon(len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { base: p.cast(), len })
    }

    fn descs(file: &File, len: usize) -> std::io::Result<Self> {
        // SAFETY: the driver's shared, read-only descriptor area of queue 0 (offset 0).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { base: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are what mmap returned.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A request handed to a worker.
struct Job {
    tag: u16,
    desc: IoDesc,
}

/// The queue thread, once every tag is fetched.
#[derive(Debug)]
pub struct Queue {
    thread: Option<JoinHandle<()>>,
}

impl Queue {
    /// Opens `/dev/ublkcN`, maps its descriptors, fetches every tag and starts serving.
    /// Returns once the fetches are submitted (START_DEV or END_USER_RECOVERY may follow).
    pub fn spawn(engine: Arc<Engine>, g: Geometry) -> Result<Self> {
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name(format!("ublk{}-q0", g.dev_id))
            .spawn(move || run(engine, g, ready_tx))
            .map_err(|e| err(char_dev(g.dev_id), format!("spawn queue thread: {e}")))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self { thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(err(char_dev(g.dev_id), "queue thread did not fetch its tags within 10 s")),
        }
    }

    /// Waits for the queue thread: it ends once the driver aborted every tag (STOP_DEV).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `/dev/ublkcN`.
pub fn char_dev(dev_id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkc{dev_id}"))
}

/// The queue thread: setup (reported on `ready`), then the loop until every tag aborted.
fn run(engine: Arc<Engine>, g: Geometry, ready: SyncSender<Result<()>>) {
    let path = char_dev(g.dev_id);
    let setup = || -> Result<_> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err(&path, format!("open: {e} (another server still holds it?)")))?;
        let descs = Mapping::descs(&file, sys::desc_area_bytes(g.depth))
            .map_err(|e| err(&path, format!("mmap io descriptors: {e}")))?;
        let bufs = Mapping::anon(g.depth as usize * g.buf_bytes as usize)
            .map_err(|e| err(&path, format!("map {} tag buffers of {} bytes: {e}", g.depth, g.buf_bytes)))?;
        let ring = IoUring::new((g.depth as u32 + 2).next_power_of_two())
            .map_err(|e| err(&path, format!("io_uring_setup: {e}")))?;
        // SAFETY: eventfd returns a new descriptor we own (or -1).
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(err(&path, format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: efd is a fresh descriptor nobody else owns.
        let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        Ok((file, descs, Arc::new(bufs), ring, efd))
    };
    let (file, descs, bufs, mut ring, efd) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let fd = types::Fd(file.as_raw_fd());
    let buf_addr = |tag: u16| bufs.base as u64 + tag as u64 * g.buf_bytes as u64;
    let io_cmd = |op: u32, tag: u16, result: i32| {
        let cmd = IoCmd { q_id: 0, tag, result, addr: buf_addr(tag) };
        opcode::UringCmd16::new(fd, op).cmd(sys::bytes_of(&cmd)).build().user_data(tag as u64)
    };
    let mut wake_buf = Box::new([0u8; 8]);
    let wake_read =
        |b: &mut [u8; 8]| opcode::Read::new(types::Fd(efd.as_raw_fd()), b.as_mut_ptr(), 8).build().user_data(WAKE);
    for tag in 0..g.depth {
        // SAFETY: the command bytes are copied into the SQE; the buffer outlives the ring.
        let _ = unsafe { ring.submission().push(&io_cmd(sys::IO_FETCH_REQ, tag, 0)) };
    }
    // SAFETY: wake_buf lives until this function returns, after the ring is dropped.
    let _ = unsafe { ring.submission().push(&wake_read(&mut wake_buf)) };
    if let Err(e) = ring.submit() {
        let _ = ready.send(Err(err(&path, format!("submit FETCH_REQ: {e}"))));
        return;
    }
    let _ = ready.send(Ok(()));

    let (job_tx, job_rx) = sync_channel::<Job>(g.depth as usize);
    let (done_tx, done_rx) = channel::<(u16, i32)>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let workers: Vec<_> = (0..g.workers.max(1))
        .map(|i| {
            let (engine, bufs, efd, rx, tx) =
                (engine.clone(), bufs.clone(), efd.clone(), job_rx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("ublk{}-w{i}", g.dev_id))
                .spawn(move || worker(&engine, &bufs, g, &efd, &rx, &tx))
        })
        .filter_map(|r| r.map_err(|e| tracing::error!(error = %e, "spawn ublk worker")).ok())
        .collect();
    drop(done_tx);

    // Answers `tag` and hands its buffer back to the driver with the next fetch; a full
    // submission queue is flushed first.
    let commit = |ring: &mut IoUring, tag: u16, result: i32| {
        // SAFETY: as for the fetches: the command bytes are copied into the SQE.
        while unsafe { ring.submission().push(&io_cmd(sys::IO_COMMIT_AND_FETCH_REQ, tag, result)) }.is_err() {
            let _ = ring.submit();
        }
    };
    let mut aborted = 0usize;
    let mut cqes = Vec::with_capacity(g.depth as usize + 1);
    // Requests of this batch that may block (not a read of hydrated regions only).
    let mut blocking: Vec<(u16, IoDesc)> = Vec::with_capacity(g.depth as usize);
    // Requests with the workers, not yet committed.
    let mut with_workers = 0usize;
    let span = engine.span.clone();
    // At trace level each request's line carries CLOCK_MONOTONIC stamps (µs), so a reader
    // timing its reads on the same clock can split them (tests/vm/exposure_bench.sh).
    let stamps = tracing::enabled!(tracing::Level::TRACE);
    loop {
        if stamps && !ring.submission().is_empty() {
            tracing::trace!(parent: &span, submit_us = mono_us(), "ublk submit");
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                tracing::error!(parent: &span, error = %e, device = %path.display(), "ublk queue ring failed");
                break;
            }
        }
        let woke_us = if stamps { mono_us() } else { 0 };
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        let mut rearm = false;
        blocking.clear();
        for &(ud, res) in &cqes {
            if ud == WAKE {
                rearm = true;
                continue;
            }
            let tag = ud as u16;
            if res == sys::IO_RES_OK {
                // SAFETY: tag < depth; the driver wrote the descriptor before completing.
                let desc = unsafe { std::ptr::read_volatile((descs.base as *const IoDesc).add(tag as usize)) };
                if local(&engine, g, &desc) {
                    // Served here: no hand-off to a worker and back (two thread wake-ups).
                    let result = serve(&engine, &bufs, g, tag, &desc, woke_us);
                    commit(&mut ring, tag, result);
                } else {
                    blocking.push((tag, desc));
                }
            } else {
                if res != sys::IO_RES_ABORT {
                    tracing::error!(parent: &span, tag, res, device = %path.display(), "ublk tag command failed");
                }
                aborted += 1;
            }
        }
        if let [(tag, desc)] = blocking[..]
            && inline_ok(with_workers, &engine)
        {
            // The only request, nothing else in flight, a source that answers: the two
            // hand-offs would be most of what the exposure adds to an on-demand read.
            let result = serve(&engine, &bufs, g, tag, &desc, woke_us);
            commit(&mut ring, tag, result);
        } else {
            for &(tag, desc) in &blocking {
                with_workers += 1;
                let _ = job_tx.send(Job { tag, desc });
            }
        }
        while let Ok((tag, result)) = done_rx.try_recv() {
            with_workers = with_workers.saturating_sub(1);
            commit(&mut ring, tag, result);
        }
        if rearm {
            // SAFETY: as for the first eventfd read.
            let _ = unsafe { ring.submission().push(&wake_read(&mut wake_buf)) };
        }
        if aborted >= g.depth as usize {
            break;
        }
    }
    drop(job_tx);
    for w in workers {
        let _ = w.join();
    }
    drop(ring);
    drop(descs);
    drop(file);
    tracing::debug!(parent: &span, device = %path.display(), "ublk queue ended");
}

fn worker(
    engine: &Engine,
    bufs: &Mapping,
    g: Geometry,
    efd: &OwnedFd,
    rx: &Mutex<Receiver<Job>>,
    tx: &Sender<(u16, i32)>,
) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let res = serve(engine, bufs, g, job.tag, &job.desc, 0);
        if tx.send((job.tag, res)).is_err() {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(efd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// Whether a request is a read of hydrated regions only: served from the dest, it cannot
/// wait for the source, and the queue thread answers it itself. Anything else may block
/// (a fetch, a write meeting a commit, a sync) and goes to a worker. A region never stops
/// being hydrated, so the answer cannot turn wrong before the engine serves the read.
fn local(engine: &Engine, g: Geometry, d: &IoDesc) -> bool {
    let (offset, len) = (d.start_sector.saturating_mul(512), d.nr_sectors as u64 * 512);
    if (d.op_flags & 0xff) as u8 != sys::OP_READ
        || len == 0
        || len > g.buf_bytes as u64
        || engine.check_range(offset, len).is_err()
    {
        return false;
    }
    let core = engine.lock_core();
    engine.regions_of(offset, len).all(|r| core.state(r).hydrated())
}

/// Whether the queue thread answers a request that may block itself: only when no other
/// request is with the workers (it would wait behind this one's commit otherwise) and the
/// source has been answering ([`Engine::source_answers`]): a dead source would hold the
/// queue, hydrated reads included, for a request's timeout. The caller checks that the
/// request is its batch's only one that may block.
fn inline_ok(with_workers: usize, engine: &Engine) -> bool {
    with_workers == 0 && engine.source_answers()
}

/// The negative errno a ublk request completes with ([`CloneError::errno`], as every exposure).
fn errno(e: &CloneError) -> i32 {
    -e.errno()
}

/// CLOCK_MONOTONIC in µs: the clock a reader's `time.monotonic_ns()` reads too.
fn mono_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Answers one request: bytes done for reads and writes, 0 for the rest, or -errno.
/// A FUA write and a FLUSH answer only after the engine made the workload's writes durable.
/// `woke_us`: when the queue thread reaped it (trace stamps; 0 from a worker).
fn serve(engine: &Engine, bufs: &Mapping, g: Geometry, tag: u16, d: &IoDesc, woke_us: u64) -> i32 {
    let op = (d.op_flags & 0xff) as u8;
    let offset = d.start_sector.saturating_mul(512);
    let len = d.nr_sectors as u64 * 512;
    let t0 = std::time::Instant::now();
    let start_us = if woke_us > 0 { mono_us() } else { 0 };
    let res = match op {
        sys::OP_READ | sys::OP_WRITE if len > g.buf_bytes as u64 => {
            tracing::warn!(parent: &engine.span, tag, len, "ublk request larger than its tag buffer");
            return -libc::EINVAL;
        }
        sys::OP_READ | sys::OP_WRITE => {
            // SAFETY: the tag is ours until we commit it (module docs); len <= buf_bytes.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(bufs.base.add(tag as usize * g.buf_bytes as usize), len as usize)
            };
            if op == sys::OP_READ {
                engine.read(offset, buf)
            } else {
                engine
                    .write(offset, buf)
                    .and_then(|()| if d.op_flags & sys::IO_F_FUA != 0 { engine.flush() } else { Ok(()) })
            }
            .map(|()| len as i32)
        }
        sys::OP_FLUSH => engine.flush().map(|()| 0),
        sys::OP_DISCARD => engine.discard(offset, len).map(|()| 0),
        sys::OP_WRITE_ZEROES => engine.write_zeroes(offset, len).map(|()| 0),
        _ => return -libc::EOPNOTSUPP,
    };
    tracing::trace!(
        parent: &engine.span,
        op,
        offset,
        len,
        took = ?t0.elapsed(),
        woke_us,
        start_us,
        end_us = if woke_us > 0 { mono_us() } else { 0 },
        "ublk request"
    );
    res.unwrap_or_else(|e| {
        tracing::warn!(parent: &engine.span, error = %e, op, offset, len, "ublk request failed");
        errno(&e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineConfig, FileDest, FileMeta, FileSource};

    const BUF: u32 = 64 << 10;

    fn desc(op: u8, flags: u32, offset: u64, len: u32) -> IoDesc {
        IoDesc { op_flags: op as u32 | flags, nr_sectors: len / 512, start_sector: offset / 512, addr: 0 }
    }

    /// The requests the driver hands us, answered through an engine over files: bytes
    /// and results as the block layer expects them.
    #[test]
    fn requests_map_onto_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let source = Arc::new(FileSource::open(&dir.path().join("src")).unwrap());
        let dest = FileDest::open(&dir.path().join("dest"), data.len() as u64).unwrap();
        let meta = FileMeta::create(&dir.path().join("meta")).unwrap();
        let cfg = EngineConfig { rate_limit: Some(1024), ..Default::default() };
        let engine = Engine::create(source, Box::new(dest), Box::new(meta), cfg).unwrap();
        let bufs = Mapping::anon(2 * BUF as usize).unwrap();
        let g = Geometry { dev_id: 0, depth: 2, buf_bytes: BUF, workers: 1 };
        // SAFETY: the test owns both tags' buffers.
        let tag1 = unsafe { std::slice::from_raw_parts_mut(bufs.base.add(BUF as usize), BUF as usize) };

        // A read fills the tag's buffer with the source's bytes and answers its length.
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_READ, 0, 8192, 8192), 0), 8192);
        assert_eq!(&tag1[..8192], &data[8192..16384]);

        // A FUA write answers its length once durable; reading it back gives it.
        tag1[..4096].fill(0xab);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_WRITE, sys::IO_F_FUA, 4096, 4096), 0), 4096);
        tag1[..4096].fill(0);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_READ, 0, 4096, 4096), 0), 4096);
        assert!(tag1[..4096].iter().all(|&b| b == 0xab));

        // Write-zeroes writes zeros (a missing region is not fetched over them).
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_WRITE_ZEROES, 0, 128 << 10, 64 << 10), 0), 0);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_READ, 0, 128 << 10, 64 << 10), 0), 64 << 10);
        assert!(tag1.iter().all(|&b| b == 0));

        // Flush and discard answer 0.
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_FLUSH, 0, 0, 0), 0), 0);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_DISCARD, 0, 256 << 10, 64 << 10), 0), 0);

        // Bounds: larger than the tag's buffer, past the end, an op we do not offer.
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_READ, 0, 0, BUF + 512), 0), -libc::EINVAL);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(sys::OP_READ, 0, 1 << 20, 4096), 0), -libc::EINVAL);
        assert_eq!(serve(&engine, &bufs, g, 1, &desc(4, 0, 0, 4096), 0), -libc::EOPNOTSUPP);
        // Tag 0's buffer was never touched.
        // SAFETY: as above.
        let tag0 = unsafe { std::slice::from_raw_parts(bufs.base, BUF as usize) };
        assert!(tag0.iter().all(|&b| b == 0));
    }

    #[test]
    fn only_reads_of_hydrated_regions_are_served_by_the_queue_thread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("src"), vec![7u8; 1 << 20]).unwrap();
        let source = Arc::new(FileSource::open(&dir.path().join("src")).unwrap());
        let dest = FileDest::open(&dir.path().join("dest"), 1 << 20).unwrap();
        let meta = FileMeta::create(&dir.path().join("meta")).unwrap();
        let cfg = EngineConfig { rate_limit: Some(1024), ..Default::default() };
        let engine = Engine::create(source, Box::new(dest), Box::new(meta), cfg).unwrap();
        let g = Geometry { dev_id: 0, depth: 1, buf_bytes: BUF, workers: 1 };
        let r = engine.region_size() as u32;
        assert!(!local(&engine, g, &desc(sys::OP_READ, 0, 0, 4096)), "a missing region is not local");
        engine.write(0, &vec![1u8; r as usize]).unwrap(); // region 0 whole: hydrated without a fetch
        assert!(local(&engine, g, &desc(sys::OP_READ, 0, 0, 4096)));
        assert!(!local(&engine, g, &desc(sys::OP_READ, 0, r as u64 - 4096, 8192)), "spans a missing region");
        assert!(!local(&engine, g, &desc(sys::OP_WRITE, 0, 0, 4096)), "writes go to a worker");
        assert!(!local(&engine, g, &desc(sys::OP_FLUSH, 0, 0, 0)));
        assert!(!local(&engine, g, &desc(sys::OP_READ, 0, 1 << 20, 4096)), "past the end");
    }

    #[test]
    fn errors_keep_enospc_and_turn_the_rest_into_eio() {
        let full = CloneError::Dest { offset: 0, message: "full".into(), no_space: true };
        assert_eq!(errno(&full), -libc::ENOSPC);
        let io = CloneError::Io {
            what: "write dest",
            path: "d".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(errno(&io), -libc::ENOSPC);
        assert_eq!(errno(&CloneError::Stopped), -libc::EIO);
        assert_eq!(errno(&CloneError::SourceLost { offset: 0 }), -libc::EIO);
    }
}
