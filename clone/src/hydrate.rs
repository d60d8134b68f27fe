//! Background hydration and the agent-facing handle: worker threads fetch missing
//! regions (yielding to workload I/O, paced by the token bucket), one ticker thread
//! commits by time, publishes progress, detects stalls and runs the handoff.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::progress::{Phase, Progress};

/// A running userspace clone: the [`Engine`] plus its hydration threads.
/// Dropping it stops the threads (the clone resumes from its metadata next time).
#[derive(Debug)]
pub struct UserspaceClone {
    engine: Arc<Engine>,
    threads: Vec<JoinHandle<()>>,
}

impl UserspaceClone {
    /// Starts background hydration of an opened engine.
    pub fn start(engine: Arc<Engine>) -> Self {
        let mut threads = Vec::new();
        // Named so `top -H` and /proc/<pid>/task show which thread spends the time.
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f).expect("spawn a hydration thread")
        };
        for worker in 0..engine.cfg.parallelism {
            let e = engine.clone();
            threads.push(spawn(format!("clone-hydrate-{worker}"), Box::new(move || worker_loop(&e, worker))));
        }
        let e = engine.clone();
        threads.push(spawn("clone-ticker".into(), Box::new(move || ticker_loop(&e))));
        Self { engine, threads }
    }

    /// The engine, for workload I/O (the FUSE exposure) and tests.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The latest progress snapshot.
    pub fn progress(&self) -> Progress {
        self.engine.progress_tx.borrow().clone()
    }

    /// A receiver that sees every new progress snapshot, ending in `Phase::Complete`.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.engine.progress_tx.subscribe()
    }

    /// Changes the background bandwidth limit (bytes/s; `None`: unlimited) at once.
    pub fn set_rate_limit(&self, rate: Option<u64>) {
        let now = self.engine.now();
        self.engine.bucket.lock().unwrap_or_else(|p| p.into_inner()).set_rate(rate, now);
        tracing::info!(parent: &self.engine.span, bytes_per_s = rate.unwrap_or(0), unlimited = rate.is_none(), "rate limit changed");
    }

    /// Waits (bounded by `timeout`) until the handoff is complete; returns the last progress.
    pub fn wait_complete(&self, timeout: Duration) -> Progress {
        let end = std::time::Instant::now() + timeout;
        loop {
            let p = self.progress();
            if p.phase == Phase::Complete || std::time::Instant::now() >= end {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pauses background hydration (workload reads still fetch on demand).
    pub fn pause(&self) {
        self.engine.paused.store(true, Ordering::Relaxed);
    }

    /// Resumes background hydration.
    pub fn resume(&self) {
        self.engine.paused.store(false, Ordering::Relaxed);
    }

    /// Stops the threads after a final commit; the metadata keeps what is durable.
    pub fn stop(mut self) -> crate::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> crate::Result<()> {
        self.engine.stopped.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.engine.commit(true)
    }
}

impl Drop for UserspaceClone {
    fn drop(&mut self) {
        if !self.threads.is_empty()
            && let Err(e) = self.shutdown()
        {
            tracing::warn!(parent: &self.engine.span, error = %e, "final commit failed; the clone resumes from older metadata");
        }
    }
}

fn worker_loop(e: &Engine, worker: usize) {
    let _span = e.span.enter();
    let mut backoff = Duration::from_millis(50);
    while !e.stopped.load(Ordering::Relaxed) && e.progress_tx.borrow().phase != Phase::Complete {
        if e.paused.load(Ordering::Relaxed) || all_on_dest(e) {
            e.sleep_bounded(Duration::from_millis(50));
            continue;
        }
        // Yield to workload I/O: only worker 0 runs while the workload is busy or was a
        // moment ago.
        if worker > 0 && e.workload_recent() {
            e.sleep_bounded(Duration::from_millis(5));
            continue;
        }
        match e.hydrate_step() {
            Ok(0) => e.sleep_bounded(Duration::from_millis(10)),
            Ok(_) => {
                backoff = Duration::from_millis(50);
                if all_on_dest(e) {
                    finish_now(e);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "hydration fetch failed; retrying");
                e.sleep_bounded(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether every region has been written to the dest (committed or not).
fn all_on_dest(e: &Engine) -> bool {
    let core = e.lock_core();
    core.hydrated() == core.regions()
}

/// The last region is on the dest: commit, hand off and publish now, not at the
/// ticker's next pass (up to 100 ms on the critical path of every move's end). A failure
/// is left to the ticker, which retries.
fn finish_now(e: &Engine) {
    if let Err(err) = e.commit(true) {
        tracing::debug!(error = %err, "final commit deferred to the ticker");
        return;
    }
    let complete = e.try_handoff().unwrap_or(false);
    publish(e, complete);
}

/// Publishes one progress snapshot (also used by tests driving the engine by hand).
pub(crate) fn publish(e: &Engine, complete: bool) {
    let now = e.now();
    let (hydrated, total, stalled, last_error) = {
        let core = e.lock_core();
        (core.hydrated(), core.regions(), core.stalled(now).is_some(), core.last_error().map(str::to_owned))
    };
    // The rate counts bytes copied from the source, not regions marked on the dest: regions
    // the source reports unallocated are marked in bulk without a copy, and counting them
    // showed a resumed or sparse clone moving at TiB/s.
    let fetched_bytes = e.fetched_bytes.load(Ordering::Relaxed);
    let rate = e.meter.lock().unwrap_or_else(|p| p.into_inner()).sample(now, fetched_bytes);
    let phase = if complete {
        Phase::Complete
    } else if stalled {
        Phase::Stalled
    } else if e.paused.load(Ordering::Relaxed) {
        Phase::Paused
    } else {
        Phase::Hydrating
    };
    let left = (total - hydrated) * e.cfg.region_size;
    let eta_secs = if complete {
        Some(0.0)
    } else if rate > 0.0 {
        Some(left as f64 / rate)
    } else {
        None
    };
    let p = Progress {
        hydrated,
        total,
        region_size: e.cfg.region_size,
        bytes_per_sec: rate,
        eta_secs,
        fetched_bytes,
        read_through_bytes: e.read_through_bytes.load(Ordering::Relaxed),
        phase,
        last_error,
    };
    e.progress_tx.send_if_modified(|old| {
        let changed = *old != p;
        *old = p;
        changed
    });
}

fn ticker_loop(e: &Engine) {
    let _span = e.span.enter();
    let mut was_stalled = false;
    while !e.stopped.load(Ordering::Relaxed) {
        if let Err(err) = e.commit(false) {
            tracing::warn!(error = %err, "commit failed");
        }
        let complete = match e.try_handoff() {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "handoff failed; retrying");
                false
            }
        };
        publish(e, complete);
        let stalled = e.progress_tx.borrow().phase == Phase::Stalled;
        if stalled != was_stalled {
            let err = e.progress_tx.borrow().last_error.clone();
            if stalled {
                tracing::warn!(error = err.as_deref().unwrap_or("unknown"), "clone stalled: hydration cannot progress");
            } else {
                tracing::info!("hydration resumed");
            }
            was_stalled = stalled;
        }
        if complete {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
