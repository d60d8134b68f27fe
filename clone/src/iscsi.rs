//! [`BlockSource`] over our iSCSI initiator (meshdrain-iscsi's [`BlockReader`]):
//! the engine's threads are plain threads, so the adapter owns a small tokio runtime
//! and blocks on each batch, with a timeout so a vanished target turns into an error
//! the engine retries and reports as `stalled`.
//!
//! Three lanes: background batches go to the bulk session, where every read of a batch
//! is in flight at once (the session pipelines up to its queue depth) and the Data-In
//! segments go to the dest without a copy; on-demand reads go to a second session of
//! their own when there is one, so a workload read never waits behind megabytes of
//! hydration on the same connection.
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use meshdrain_iscsi::{BlockReader, InitiatorConfig, Session};

use crate::io::{BlockSource, Lane, RunSink};

/// Largest single READ issued (bytes).
const MAX_READ: u64 = 1 << 20;

/// A remote LUN as a clone source.
pub struct IscsiSource<R: BlockReader = Session> {
    /// The bulk session (`None` only inside [`IscsiSource::log_out`], which consumes the source).
    reader: Option<R>,
    foreground: Option<R>,
    rt: Option<tokio::runtime::Runtime>,
    /// The foreground session's own single-threaded runtime: the workload's thread
    /// drives it while it waits, so the command goes out and the answer comes in on
    /// that thread (no hand-off to a runtime worker and back, two wake-ups per read).
    fg_rt: Option<Arc<tokio::runtime::Runtime>>,
    /// Drives `fg_rt` between reads (NOP-In answers, reconnects); stops on drop.
    keeper: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    identity: String,
    timeout: Duration,
}

impl<R: BlockReader> std::fmt::Debug for IscsiSource<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiSource")
            .field("identity", &self.identity)
            .field("foreground_session", &self.foreground.is_some())
            .finish()
    }
}

impl IscsiSource<Session> {
    /// Logs in to `url` (`iscsi://host:port/<iqn>/<lun>`) on a runtime of its own, with
    /// a bulk session for hydration and a second for on-demand reads (if the target
    /// refuses the second, those reads share the first).
    /// Call from a plain thread (or `spawn_blocking`), not from inside a runtime.
    pub fn connect(url: &str, timeout: Duration) -> io::Result<Self> {
        let config =
            InitiatorConfig::from_url(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Self::connect_config(url, config, timeout)
    }

    /// Like [`IscsiSource::connect`] with an explicit initiator configuration (our IQN,
    /// digests, CHAP); `identity` is what the clone metadata records.
    pub fn connect_config(identity: &str, config: InitiatorConfig, timeout: Duration) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clone-iscsi")
            .enable_all()
            .build()?;
        let login = |config: InitiatorConfig| {
            rt.block_on(async { tokio::time::timeout(timeout, Session::connect(config)).await })
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("login to {identity} timed out")))?
                .map_err(|e| io::Error::other(e.to_string()))
        };
        let bulk = login(config.clone())?;
        let fg_rt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build()?);
        let foreground = match fg_rt
            .block_on(async { tokio::time::timeout(timeout, Session::connect(config)).await })
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("login to {identity} timed out")))
            .and_then(|r| r.map_err(|e| io::Error::other(e.to_string())))
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(source = identity, error = %e, "no session of its own for on-demand reads; they share the bulk session");
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (rt, stop) = (fg_rt.clone(), stop.clone());
            std::thread::Builder::new().name("clone-iscsi-fg".into()).spawn(move || {
                // Bounded by `stop`: one short turn of the runtime every 100 ms.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    rt.block_on(async { tokio::time::sleep(Duration::from_millis(2)).await });
                }
            })?
        };
        Ok(Self {
            reader: Some(bulk),
            foreground,
            rt: Some(rt),
            fg_rt: Some(fg_rt),
            keeper: Some((stop, keeper)),
            identity: identity.to_string(),
            timeout,
        })
    }
}

impl<R: BlockReader> IscsiSource<R> {
    /// Wraps any [`BlockReader`] (tests use in-memory ones); on-demand reads share it
    /// unless [`IscsiSource::with_foreground`] gives them their own.
    pub fn new(reader: R, identity: String, timeout: Duration) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { reader: Some(reader), foreground: None, rt: Some(rt), fg_rt: None, keeper: None, identity, timeout })
    }

    fn bulk(&self) -> &R {
        self.reader.as_ref().expect("the bulk session lives until log_out consumes the source")
    }

    /// A planned close: drops both sessions so each logs out of the target (its task sends
    /// a Logout once no handle is left), waiting up to `wait` for them to end, then stops
    /// the runtimes. Dropping the source instead cuts the connections without a logout.
    pub fn log_out(mut self, wait: Duration) {
        if let Some((stop, keeper)) = self.keeper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = keeper.join();
        }
        self.reader = None;
        self.foreground = None;
        let idle = |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                let end = tokio::time::Instant::now() + wait;
                while tokio::runtime::Handle::current().metrics().num_alive_tasks() > 0
                    && tokio::time::Instant::now() < end
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        if let Some(rt) = &self.fg_rt {
            idle(rt);
        }
        if let Some(rt) = &self.rt {
            idle(rt);
        }
    }

    /// Sends on-demand (foreground) reads to `reader`, a second session to the same LUN.
    pub fn with_foreground(mut self, reader: R) -> Self {
        self.foreground = Some(reader);
        self
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> io::Result<T> {
        let rt = self.rt.as_ref().ok_or_else(|| io::Error::other("runtime gone"))?;
        self.block_on_rt(rt, f)
    }

    fn block_on_rt<T>(&self, rt: &tokio::runtime::Runtime, f: impl Future<Output = T>) -> io::Result<T> {
        rt.block_on(async { tokio::time::timeout(self.timeout, f).await }).map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("iSCSI read timed out after {:?}", self.timeout))
        })
    }

    /// The session a read on `lane` goes to, and the runtime that drives that session's
    /// task. A session made on the foreground runtime only moves while some thread
    /// blocks on that runtime, so every read sent to it must block on that runtime,
    /// never on the bulk one.
    fn route(&self, lane: Lane) -> io::Result<(&R, &tokio::runtime::Runtime)> {
        let bulk = self.rt.as_ref().ok_or_else(|| io::Error::other("runtime gone"))?;
        let fg = match (&self.foreground, &self.fg_rt) {
            (Some(s), Some(rt)) => (s, &**rt),
            (Some(s), None) => (s, bulk),
            (None, _) => (self.bulk(), bulk),
        };
        Ok(match lane {
            Lane::Foreground => fg,
            Lane::Background => (self.bulk(), bulk),
        })
    }
}

impl<R: BlockReader> Drop for IscsiSource<R> {
    fn drop(&mut self) {
        if let Some((stop, keeper)) = self.keeper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = keeper.join();
        }
        if let Some(rt) = self.fg_rt.take().and_then(|rt| Arc::try_unwrap(rt).ok()) {
            rt.shutdown_background();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl<R: BlockReader> BlockSource for IscsiSource<R> {
    fn size(&self) -> u64 {
        self.bulk().blocks() * self.bulk().block_size() as u64
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let base = offset;
        let range = offset..offset + buf.len() as u64;
        let mut sink = |at: u64, pieces: &[&[u8]]| -> io::Result<()> {
            let mut o = (at - base) as usize;
            for p in pieces {
                buf[o..o + p.len()].copy_from_slice(p);
                o += p.len();
            }
            Ok(())
        };
        self.read_runs(Lane::Foreground, std::slice::from_ref(&range), &mut sink).pop().unwrap_or(Ok(()))
    }

    fn read_granularity(&self) -> Option<u64> {
        Some(self.bulk().block_size() as u64)
    }

    fn read_runs(&self, lane: Lane, runs: &[Range<u64>], sink: &mut RunSink<'_>) -> Vec<io::Result<()>> {
        let bs = self.bulk().block_size() as u64;
        let (reader, rt) = match self.route(lane) {
            Ok(r) => r,
            Err(e) => return runs.iter().map(|_| Err(io::Error::new(e.kind(), e.to_string()))).collect(),
        };
        let mut errs: Vec<Option<io::Error>> = runs.iter().map(|_| None).collect();
        let mut left = vec![0usize; runs.len()];
        let all = async {
            let mut inflight = FuturesUnordered::new();
            for (i, run) in runs.iter().enumerate() {
                if !run.start.is_multiple_of(bs) || !run.end.is_multiple_of(bs) {
                    errs[i] = Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("read {}..{} not {bs}-byte aligned", run.start, run.end),
                    ));
                    continue;
                }
                let mut at = run.start;
                // Bounded: each turn moves `at` forward by up to MAX_READ.
                while at < run.end {
                    let n = (run.end - at).min(MAX_READ);
                    left[i] += 1;
                    let read = reader.read_segments(at / bs, (n / bs) as u32);
                    inflight.push(async move { (i, at, n, read.await) });
                    at += n;
                }
            }
            while let Some((i, at, n, res)) = inflight.next().await {
                left[i] -= 1;
                if errs[i].is_some() {
                    continue;
                }
                let segments = match res {
                    Ok(s) => s,
                    Err(e) => {
                        errs[i] = Some(io::Error::other(e.to_string()));
                        continue;
                    }
                };
                let got: u64 = segments.iter().map(|s| s.len() as u64).sum();
                if got != n {
                    errs[i] = Some(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short read at byte {at}: {got} of {n} bytes"),
                    ));
                    continue;
                }
                let pieces: Vec<&[u8]> = segments.iter().map(|s| &s[..]).collect();
                if let Err(e) = sink(at, &pieces) {
                    errs[i] = Some(e);
                }
            }
        };
        let timed_out = self.block_on_rt(rt, all).err();
        errs.into_iter()
            .zip(left)
            .map(|(e, left)| match (e, left, &timed_out) {
                (Some(e), _, _) => Err(e),
                (None, 0, _) => Ok(()),
                (None, _, Some(t)) => Err(io::Error::new(t.kind(), t.to_string())),
                (None, _, None) => Err(io::Error::other("read did not complete")),
            })
            .collect()
    }

    fn deallocated(&self) -> io::Result<Option<Vec<Range<u64>>>> {
        let bs = self.bulk().block_size() as u64;
        let blocks = self.bulk().blocks();
        let mut holes = Vec::new();
        let mut lba = 0;
        for _ in 0..1_000_000 {
            if lba >= blocks {
                return Ok(Some(holes));
            }
            let extents = self.block_on(self.bulk().lba_status(lba))?.map_err(|e| io::Error::other(e.to_string()))?;
            let Some(last) = extents.last() else { break };
            for e in &extents {
                if !e.allocated && e.blocks > 0 {
                    holes.push(e.lba * bs..(e.lba + e.blocks).min(blocks) * bs);
                }
            }
            let next = last.lba + last.blocks;
            if next <= lba {
                break;
            }
            lba = next;
        }
        // The target stopped answering sensibly: fetch everything (always safe).
        Ok(None)
    }
}
