//! What the agent and the CLI watch: hydrated/total regions, rate, ETA, phase.
use std::collections::VecDeque;
use std::time::Duration;

/// The phase of a clone. Order of life: `Hydrating` ⇄ `Paused` / `Stalled`, then `Complete`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Background hydration runs (or waits for its bandwidth budget).
    Hydrating,
    /// Hydration paused by the agent; workload reads still fetch on demand.
    Paused,
    /// Fetches failed for longer than the stall bound; retries go on and the
    /// phase returns to `Hydrating` by itself when the source answers again (or the dest
    /// takes writes again: a full dest stalls too, and `last_error` says which).
    Stalled,
    /// Handoff done: every region is on the dest, flushed, metadata marked complete;
    /// the source is no longer read.
    Complete,
}

/// A progress snapshot (published about every 100 ms).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Regions on the dest.
    pub hydrated: u64,
    /// All regions.
    pub total: u64,
    /// Bytes per region.
    pub region_size: u64,
    /// Recent hydration rate: bytes copied from the source per second (regions skipped as
    /// unallocated are not bytes moved).
    pub bytes_per_sec: f64,
    /// Time left at the recent rate (`None` when unknown or stopped).
    pub eta_secs: Option<f64>,
    /// Bytes of regions copied from the source since this run started.
    pub fetched_bytes: u64,
    /// Bytes of workload reads served straight from the source since this run started
    /// (not copies: their regions are copied by hydration).
    pub read_through_bytes: u64,
    /// Current phase.
    pub phase: Phase,
    /// The last source error, kept for diagnostics after recovery.
    pub last_error: Option<String>,
}

impl Progress {
    pub(crate) fn initial(hydrated: u64, total: u64, region_size: u64, complete: bool) -> Self {
        Self {
            hydrated,
            total,
            region_size,
            bytes_per_sec: 0.0,
            eta_secs: if complete { Some(0.0) } else { None },
            fetched_bytes: 0,
            read_through_bytes: 0,
            phase: if complete { Phase::Complete } else { Phase::Hydrating },
            last_error: None,
        }
    }

    /// Fraction hydrated, 0.0 to 1.0.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.hydrated as f64 / self.total as f64 }
    }
}

/// Rate over a sliding window of (time, hydrated bytes) samples.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Duration, u64)>,
}

impl RateMeter {
    /// Adds a sample and returns bytes/s over the last 3 s.
    pub fn sample(&mut self, now: Duration, bytes: u64) -> f64 {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|(t, _)| now.saturating_sub(*t) > Duration::from_secs(3))
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples.front().copied().unwrap_or((now, bytes));
        let dt = now.saturating_sub(t0).as_secs_f64();
        if dt <= 0.0 { 0.0 } else { bytes.saturating_sub(b0) as f64 / dt }
    }
}
