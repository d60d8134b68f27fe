//! Moving bytes from the source to the dest: background hydration batches (many large
//! reads in flight, written to the dest as they arrive, all-zero pieces punched instead
//! of written) and on-demand reads for the workload (on the foreground lane, the
//! requested bytes first, answered before the rest of the region has arrived).
use std::ops::Range;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::core::{Core, Region, RegionState, Step};
use crate::engine::{Engine, runs_of_regions};
use crate::error::{CloneError, Result};
use crate::io::{DestWriteFailed, Lane};

/// Why a region's fetch failed: the source did not deliver, or the dest could not take
/// the bytes. The engine reports each as its own (the core keeps either as text).
#[derive(Clone, Debug)]
pub(crate) enum FetchError {
    /// The source read failed (or the source is gone).
    Source(String),
    /// The dest write failed; `no_space` when its filesystem is full.
    Dest { message: String, no_space: bool },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Source(message) => f.write_str(message),
            FetchError::Dest { message, .. } => write!(f, "dest unwritable: {message}"),
        }
    }
}

/// Whether `b` is all zeros (64-byte blocks, which the compiler vectorizes).
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let blocks = b.chunks_exact(64);
    let tail = blocks.remainder();
    blocks.into_iter().all(|c| c.iter().fold(0u8, |a, x| a | x) == 0) && tail.iter().all(|x| *x == 0)
}

/// When a workload request gives up on an unreachable source, and how long it waits
/// before the next try.
pub(crate) struct Retry {
    deadline: Duration,
    backoff: Duration,
}

/// Per-region outcome of a fetch.
pub(crate) type Fetched = Vec<(Region, std::result::Result<(), FetchError>)>;

impl Engine {
    /// Byte runs for `regions` (ascending): contiguous regions merge into one run of at
    /// most `max_read` bytes. Returns each run with the index range of its regions.
    fn runs_of(&self, regions: &[Region]) -> Vec<(Range<u64>, Range<usize>)> {
        let per_read = (self.cfg.max_read / self.cfg.region_size).max(1) as usize;
        let mut runs = Vec::new();
        let mut i = 0;
        for piece in runs_of_regions(regions).flat_map(|run| run.chunks(per_read)) {
            let bytes = self.region_range(piece[0]).start..self.region_range(piece[piece.len() - 1]).end;
            runs.push((bytes, i..i + piece.len()));
            i += piece.len();
        }
        runs
    }

    /// Reads `regions` (ascending, each claimed for fetching by the caller) from the
    /// source on `lane` and writes them to the dest. Background pieces that are all
    /// zeros are punched instead of written (the dest stays sparse). Does not touch the
    /// core: the caller reports each result with `fetch_done`.
    pub(crate) fn fetch_regions(&self, lane: Lane, regions: &[Region]) -> Fetched {
        let Some(src) = self.source_handle() else {
            return regions
                .iter()
                .map(|r| (*r, Err(FetchError::Source("source released after handoff".into()))))
                .collect();
        };
        let runs = self.runs_of(regions);
        let ranges: Vec<Range<u64>> = runs.iter().map(|(r, _)| r.clone()).collect();
        let mut sink = |offset: u64, pieces: &[&[u8]]| -> std::io::Result<()> {
            if lane == Lane::Background && pieces.iter().all(|p| is_zero(p)) {
                self.dest.punch(offset, pieces.iter().map(|p| p.len() as u64).sum())
            } else {
                self.dest.write_vectored_at(offset, pieces)
            }
            .map_err(|e| DestWriteFailed::wrap(offset, e))
        };
        let results = src.read_runs(lane, &ranges, &mut sink);
        let mut out = Vec::with_capacity(regions.len());
        for ((range, idx), res) in runs.into_iter().zip(results) {
            let res = match res {
                Ok(()) => {
                    self.fetched_bytes.fetch_add(range.end - range.start, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) if DestWriteFailed::is(&e) => Err(FetchError::Dest {
                    message: match self.dest.path() {
                        Some(path) => format!("{}: {e}", path.display()),
                        None => e.to_string(),
                    },
                    no_space: e.kind() == std::io::ErrorKind::StorageFull,
                }),
                Err(e) => Err(FetchError::Source(format!("read {}+{}: {e}", range.start, range.end - range.start))),
            };
            out.extend(regions[idx].iter().map(|r| (*r, res.clone())));
        }
        out
    }

    /// Reports each region's fetch result to the core (waking waiters); returns the core
    /// still locked and the first failure, if any.
    pub(crate) fn record_fetched(&self, results: Fetched) -> (MutexGuard<'_, Core>, Option<(Region, FetchError)>) {
        let now = self.now();
        let mut core = self.lock_core();
        let mut failed = None;
        for (r, res) in results {
            if let Err(e) = &res {
                if matches!(e, FetchError::Source(_)) {
                    self.note_source_failure();
                }
                failed.get_or_insert((r, e.clone()));
            }
            core.fetch_done(r, res.map_err(|e| e.to_string()), now);
        }
        self.cv.notify_all();
        (core, failed)
    }

    /// The retry state of one workload request: its deadline and current backoff.
    pub(crate) fn on_demand_retry(&self) -> Retry {
        Retry { deadline: self.now() + self.cfg.on_demand_timeout, backoff: Duration::from_millis(10) }
    }

    /// Fails a workload request once the engine is stopped.
    pub(crate) fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Relaxed) { Err(CloneError::Stopped) } else { Ok(()) }
    }

    /// After a failed on-demand fetch: a dest failure ends the request; past the
    /// request's deadline the workload gets the source error; before it, sleeps the
    /// backoff (doubling it, up to 1 s) with the core unlocked and locks it again for the
    /// next try.
    pub(crate) fn back_off_on_failure<'a>(
        &'a self,
        core: MutexGuard<'a, Core>,
        failed: Option<(Region, FetchError)>,
        retry: &mut Retry,
    ) -> Result<MutexGuard<'a, Core>> {
        let (r, message) = match failed {
            None => return Ok(core),
            // A dest that cannot take the region (full, failing) will not within a
            // workload request's patience: the workload hears at once (ENOSPC for a full one).
            Some((r, FetchError::Dest { message, no_space })) => {
                return Err(CloneError::Dest { offset: self.region_range(r).start, message, no_space });
            }
            Some((r, FetchError::Source(message))) => (r, message),
        };
        if self.now() >= retry.deadline {
            return Err(CloneError::Source {
                identity: self.identity.clone(),
                offset: self.region_range(r).start,
                message,
            });
        }
        drop(core);
        std::thread::sleep(retry.backoff);
        retry.backoff = (retry.backoff * 2).min(Duration::from_secs(1));
        Ok(self.lock_core())
    }

    /// One background step, once the deallocated-range scan has ended: fetch up to
    /// `batch_regions` missing regions (contiguous runs in reads of up to `max_read`, all
    /// in flight at once, paced by the rate limit). Commits are the ticker's: a worker
    /// waiting out an fdatasync would leave its share of the path idle. Returns how
    /// many regions were fetched, or the source error.
    pub fn hydrate_step(&self) -> std::result::Result<usize, String> {
        // Never fetch what the deallocated-range scan will skip.
        self.wait_scanned();
        // Pace before claiming: a region claimed for the background must not keep a
        // workload read waiting while this thread sleeps off the rate limit.
        let budget = self.cfg.batch_regions as u64 * self.cfg.region_size;
        let (mut rate, wait) = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            (bucket.rate(), bucket.take(budget, self.now()))
        };
        let mut until = std::time::Instant::now() + wait;
        // Bounded by `wait` (and by stop), in short slices: a stop is seen promptly and
        // a new rate limit restarts the wait from its fresh bucket.
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
            if self.stopped.load(Ordering::Relaxed) {
                return Ok(0);
            }
            self.sleep_bounded(left.min(std::time::Duration::from_millis(200)));
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            if bucket.rate() != rate {
                rate = bucket.rate();
                until = std::time::Instant::now() + bucket.take(budget, self.now());
            }
        }
        let picked = self.lock_core().next_hydration(self.cfg.batch_regions);
        if picked.is_empty() {
            return Ok(0);
        }
        let results = self.fetch_regions(Lane::Background, &picked);
        let done = results.iter().filter(|(_, res)| res.is_ok()).count();
        let (core, failed) = self.record_fetched(results);
        drop(core);
        match failed {
            Some((_, e)) if done == 0 => Err(e.to_string()),
            _ => Ok(done),
        }
    }

    /// Workload read. Hydrated regions come from the dest. When every region of the
    /// read is missing and the read covers only part of them, the requested bytes (at
    /// the source's grain) are read from the source and returned without copying the
    /// regions, which go first in line for hydration: dm-clone's semantics, and the
    /// workload waits for its own bytes only (a 64 KiB region cost it about twice a
    /// 4 KiB read). Otherwise, and when the read shows locality (its region was read
    /// through before, or it starts where the last passed-through read ended), the
    /// missing regions are fetched whole (each once), then the dest serves.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut busy = None;
        let span = self.regions_of(offset, buf.len() as u64);
        let mut retry = self.on_demand_retry();
        let mut core = self.lock_core();
        // After a failed pass-through this request waits and fetches the usual way, with
        // the usual backoff (a failure with no region of its own would retry at once).
        let mut pass = self.cfg.read_through;
        // Set when the dest could not take this read's regions (a full disk): the read is
        // then served from the source alone, which writes nothing.
        let mut dest_failed = false;
        let grain = self.source_handle().and_then(|s| s.read_granularity());
        loop {
            self.check_running()?;
            let mut mine = Vec::new();
            let (mut ready, mut in_flight, mut claimed) = (false, false, false);
            for r in span.clone() {
                match core.acquire(r, crate::core::Intent::Read) {
                    Step::Ready => ready = true,
                    Step::Fetch => mine.push(r),
                    Step::Wait if core.state(r) == RegionState::Fetching => in_flight = true,
                    Step::Wait | Step::Claimed => claimed = true,
                    Step::Lost => return Err(CloneError::SourceLost { offset: self.region_range(r).start }),
                }
            }
            if mine.is_empty() && !in_flight && !claimed {
                break;
            }
            busy.get_or_insert_with(|| self.workload_busy());
            // Passing through needs every byte of the read to be the source's: no region
            // on the dest (the workload may have written it) or claimed by a write.
            let through = match grain {
                Some(g) if (pass || dest_failed) && !ready && !claimed => {
                    let (asked, whole) = self.through_range(offset, buf.len() as u64, &span, g);
                    // Locality says the rest of the region will be read too (a mount, a
                    // scan): a region read through before and not hydrated yet, or a read
                    // continuing where the last passed-through one ended.
                    let local =
                        mine.iter().any(|r| core.wanted(*r)) || self.last_through_end.load(Ordering::Relaxed) == offset;
                    // A region some fetch already has in flight (a hydration batch of up
                    // to megabytes) is never waited for; otherwise a read asking for all
                    // of its regions, or showing locality, fetches them.
                    (dest_failed || in_flight || (asked != whole && !local)).then_some(asked)
                }
                _ => None,
            };
            if through.is_none() && mine.is_empty() {
                core = self
                    .cv
                    .wait_timeout(core, std::time::Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            drop(core);
            if let Some(asked) = through {
                match self.read_through(offset, buf, &mine, asked) {
                    Ok(()) => return Ok(()),
                    Err(failed) => {
                        pass = false;
                        let (guard, failed) = self.record_fetched(failed);
                        core = self.back_off_on_failure(guard, failed, &mut retry)?;
                        continue;
                    }
                }
            }
            let results = self.fetch_regions(Lane::Foreground, &mine);
            let (guard, failed) = self.record_fetched(results);
            if grain.is_some() && !dest_failed && matches!(failed, Some((_, FetchError::Dest { .. }))) {
                dest_failed = true;
                core = guard;
                continue;
            }
            core = self.back_off_on_failure(guard, failed, &mut retry)?;
        }
        drop(core);
        self.dest.read_at(offset, buf).map_err(Self::dest_err("read dest"))
    }

    /// The source range a passed-through read of `[offset, offset+len)` asks for (widened
    /// to `grain`), and all of the read's regions `span` as bytes: when the two are equal,
    /// fetching the regions costs the source nothing more and saves hydration a read.
    fn through_range(&self, offset: u64, len: u64, span: &Range<Region>, grain: u64) -> (Range<u64>, Range<u64>) {
        let whole = self.region_range(span.start).start..self.region_range(span.end - 1).end;
        let grain = grain.max(1);
        let asked = (offset / grain * grain).max(whole.start)
            ..(offset + len).div_ceil(grain).saturating_mul(grain).min(whole.end);
        (asked, whole)
    }

    /// Reads `asked` (which holds the workload's `[offset, offset+buf.len())`) from the
    /// source on the foreground lane into `buf` and hands `regions` (claimed by the
    /// caller, not copied) back to the core as wanted. On failure, the per-region
    /// errors for [`Engine::record_fetched`].
    fn read_through(
        &self,
        offset: u64,
        buf: &mut [u8],
        regions: &[Region],
        asked: Range<u64>,
    ) -> std::result::Result<(), Fetched> {
        let failed = |e: String| regions.iter().map(|r| (*r, Err(FetchError::Source(e.clone())))).collect::<Fetched>();
        let Some(src) = self.source_handle() else {
            return Err(failed("source released after handoff".to_string()));
        };
        let end = offset + buf.len() as u64;
        let mut sink = |first: u64, pieces: &[&[u8]]| -> std::io::Result<()> {
            let mut at = first;
            for bytes in pieces {
                let lo = at.max(offset);
                let hi = (at + bytes.len() as u64).min(end);
                if lo < hi {
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
                }
                at += bytes.len() as u64;
            }
            Ok(())
        };
        let results = src.read_runs(Lane::Foreground, std::slice::from_ref(&asked), &mut sink);
        if let Some(e) = results.into_iter().find_map(|r| r.err()) {
            return Err(failed(format!("read {}+{}: {e}", asked.start, asked.end - asked.start)));
        }
        self.last_through_end.store(end, Ordering::Relaxed);
        self.read_through_bytes.fetch_add(asked.end - asked.start, Ordering::Relaxed);
        {
            let mut core = self.lock_core();
            for r in regions {
                core.read_through(*r);
            }
        }
        self.cv.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 200]));
        assert!(is_zero(&[]));
        let mut b = vec![0u8; 200];
        b[199] = 1;
        assert!(!is_zero(&b));
        b[199] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }
}
