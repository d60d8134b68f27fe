//! The pure region state machine of the userspace engine (sans-IO, like boringtun's
//! `Tunn`): requests, fetch completions, commit completions and ticks go in with `now`,
//! and what the shell must do comes out. It never touches a file or a clock, so the
//! property tests can drive it through any interleaving.
use std::collections::VecDeque;
use std::time::Duration;

/// Index of one region (offset / region size).
pub type Region = u64;

/// The life of one region. Hydrated means `Present`, `Committing` or `Durable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    /// Not on the dest; its bytes live only on the source.
    /// May follow: `Fetching` (read or partial write), `Claimed` (whole write, discard).
    Missing,
    /// One fetch from the source is in flight; everybody else waits for it.
    /// May follow: `Present` (fetched and written to the dest), `Missing` (failed, or a
    /// workload read answered from the source without copying the region).
    Fetching,
    /// The workload overwrites or discards the whole region; no fetch needed.
    /// May follow: `Present` (its I/O is done), `Missing` (its I/O failed).
    Claimed,
    /// The region's bytes are on the dest (not yet synced); its bit is not durable.
    /// May follow: `Committing`.
    Present,
    /// In a commit batch (dest fdatasync, bitmap write, metadata sync).
    /// May follow: `Durable`, `Present` (the commit failed).
    Committing,
    /// Its bit is durable in the metadata. Final.
    Durable,
}

impl RegionState {
    /// Whether reads of this region are served from the dest.
    pub fn hydrated(self) -> bool {
        matches!(self, Self::Present | Self::Committing | Self::Durable)
    }
}

/// What a request wants from one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Read, or a write that does not cover the region (needs the old bytes).
    Read,
    /// A write or discard covering the whole region (old bytes not needed).
    Overwrite,
}

/// What the shell must do next for one region of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Serve the request from the dest now.
    Ready,
    /// The caller now owns the fetch: read the source, write the dest, then call
    /// [`Core::fetch_done`].
    Fetch,
    /// The caller owns the region: do the overwrite, then call [`Core::claim_done`].
    Claimed,
    /// Someone else's fetch or claim is in flight: wait for a completion, then ask again.
    Wait,
    /// The region is not here and the source was declared lost
    /// ([`Core::declare_source_lost`]): fail the request at once (EIO) instead of waiting.
    Lost,
}

/// Most regions remembered as wanted by passed-through reads (8 KiB of queue).
const MAX_WANTED: usize = 1024;

/// Batching and stall bounds of the core.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// Commit once this many regions are pending.
    pub commit_batch: usize,
    /// Commit pending regions at least this often.
    pub commit_interval: Duration,
    /// Report `stalled` after the source failed for this long without a success.
    pub stall_after: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self { commit_batch: 256, commit_interval: Duration::from_millis(200), stall_after: Duration::from_secs(10) }
    }
}

/// The region states plus commit batching and source health.
#[derive(Debug)]
pub struct Core {
    states: Vec<RegionState>,
    hydrated: u64,
    durable: u64,
    pending: VecDeque<Region>,
    oldest_pending: Option<Duration>,
    cursor: Region,
    /// Regions a workload read passed through to the source: hydrated before the cursor's.
    wanted: VecDeque<Region>,
    cfg: CoreConfig,
    failing_since: Option<Duration>,
    last_error: Option<String>,
    fetches: u64,
    /// The source is gone for good: missing regions are never fetched again.
    source_lost: bool,
}

impl Core {
    /// A core for `regions` regions, where `durable(r)` says whether the metadata
    /// already holds region `r`.
    pub fn new(regions: u64, cfg: CoreConfig, durable: impl Fn(Region) -> bool) -> Self {
        let states: Vec<RegionState> =
            (0..regions).map(|r| if durable(r) { RegionState::Durable } else { RegionState::Missing }).collect();
        let n = states.iter().filter(|s| **s == RegionState::Durable).count() as u64;
        Self {
            states,
            hydrated: n,
            durable: n,
            pending: VecDeque::new(),
            oldest_pending: None,
            cursor: 0,
            wanted: VecDeque::new(),
            cfg,
            failing_since: None,
            last_error: None,
            fetches: 0,
            source_lost: false,
        }
    }

    /// The source was declared lost for good (docs/failures.md): reads and partial writes
    /// of regions not here get [`Step::Lost`] from now on, and hydration picks nothing.
    /// A fetch already in flight still completes (or fails) as usual. Returns (regions not
    /// hydrated, regions).
    pub fn declare_source_lost(&mut self) -> (u64, u64) {
        self.source_lost = true;
        self.wanted.clear();
        (self.regions() - self.hydrated, self.regions())
    }

    /// Whether the source was declared lost.
    pub fn source_lost(&self) -> bool {
        self.source_lost
    }

    /// Claims every missing region, for an operator who keeps a partial copy: the shell
    /// zeroes them on the dest and calls [`Core::claim_done`]. Only once the source is lost.
    pub fn claim_missing(&mut self) -> Vec<Region> {
        if !self.source_lost {
            return Vec::new();
        }
        self.claim_unallocated(0..self.regions())
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.states.len() as u64
    }

    /// State of one region.
    pub fn state(&self, r: Region) -> RegionState {
        self.states[r as usize]
    }

    /// Regions whose bytes are on the dest.
    pub fn hydrated(&self) -> u64 {
        self.hydrated
    }

    /// Regions whose bits are durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Fetches started so far (for statistics and the "fetched once" tests).
    pub fn fetches(&self) -> u64 {
        self.fetches
    }

    /// Whether every region is durable: the handoff may run.
    pub fn complete(&self) -> bool {
        self.durable == self.regions()
    }

    /// Ask for one region on behalf of a workload request.
    pub fn acquire(&mut self, r: Region, intent: Intent) -> Step {
        let s = &mut self.states[r as usize];
        match (*s, intent) {
            (RegionState::Present | RegionState::Committing | RegionState::Durable, _) => Step::Ready,
            (RegionState::Fetching | RegionState::Claimed, _) => Step::Wait,
            (RegionState::Missing, Intent::Read) if self.source_lost => Step::Lost,
            (RegionState::Missing, Intent::Read) => {
                *s = RegionState::Fetching;
                self.fetches += 1;
                Step::Fetch
            }
            (RegionState::Missing, Intent::Overwrite) => {
                *s = RegionState::Claimed;
                Step::Claimed
            }
        }
    }

    /// Claim regions the source reports deallocated: the shell zeroes them on the
    /// dest (never fetching them) and calls [`Core::claim_done`]. Returns the claimed ones.
    pub fn claim_unallocated(&mut self, regions: impl IntoIterator<Item = Region>) -> Vec<Region> {
        let mut out = Vec::new();
        for r in regions {
            if r < self.regions() && self.states[r as usize] == RegionState::Missing {
                self.states[r as usize] = RegionState::Claimed;
                out.push(r);
            }
        }
        out
    }

    /// A workload read of `r` (acquired as [`Step::Fetch`]) was answered straight from
    /// the source without copying the region, as dm-clone serves reads of regions not
    /// yet hydrated: `r` is missing again, no fetch is counted, and it is first in line
    /// for background hydration, since a workload that read it is likely to read it again.
    pub fn read_through(&mut self, r: Region) {
        debug_assert_eq!(self.states[r as usize], RegionState::Fetching);
        self.states[r as usize] = RegionState::Missing;
        self.fetches -= 1;
        self.failing_since = None; // the source answered
        // Bounded: past the cap the cursor reaches the region in its turn.
        if self.wanted.len() < MAX_WANTED {
            self.wanted.push_back(r);
        }
    }

    /// Whether a workload read passed through `r` and hydration has not taken it yet.
    pub fn wanted(&self, r: Region) -> bool {
        self.wanted.contains(&r)
    }

    /// Pick up to `max` missing regions for background hydration (now `Fetching`):
    /// those workload reads passed through first, then onward from the cursor.
    pub fn next_hydration(&mut self, max: usize) -> Vec<Region> {
        let mut out = Vec::new();
        if self.source_lost {
            return out;
        }
        while out.len() < max
            && let Some(r) = self.wanted.pop_front()
        {
            if self.states[r as usize] == RegionState::Missing {
                self.states[r as usize] = RegionState::Fetching;
                self.fetches += 1;
                out.push(r);
            }
        }
        let n = self.regions();
        let mut scanned = 0;
        while out.len() < max && scanned < n && self.hydrated < n {
            let r = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            scanned += 1;
            if self.states[r as usize] == RegionState::Missing {
                self.states[r as usize] = RegionState::Fetching;
                self.fetches += 1;
                out.push(r);
            }
        }
        // Ascending: contiguous regions merge into one source read.
        out.sort_unstable();
        out
    }

    fn became_present(&mut self, r: Region, now: Duration) {
        self.states[r as usize] = RegionState::Present;
        self.hydrated += 1;
        if self.pending.is_empty() {
            self.oldest_pending = Some(now);
        }
        self.pending.push_back(r);
    }

    /// A fetch finished: `Ok` once the bytes are written to the dest.
    pub fn fetch_done(&mut self, r: Region, result: Result<(), String>, now: Duration) {
        debug_assert_eq!(self.states[r as usize], RegionState::Fetching);
        match result {
            Ok(()) => {
                self.failing_since = None;
                self.became_present(r, now);
            }
            Err(e) => {
                self.states[r as usize] = RegionState::Missing;
                self.failing_since.get_or_insert(now);
                self.last_error = Some(e);
            }
        }
    }

    /// A claim's overwrite finished (`ok` false: it failed and the region is missing again).
    pub fn claim_done(&mut self, r: Region, ok: bool, now: Duration) {
        debug_assert_eq!(self.states[r as usize], RegionState::Claimed);
        if ok {
            self.became_present(r, now);
        } else {
            self.states[r as usize] = RegionState::Missing;
        }
    }

    /// The regions to commit now (they become `Committing`), if a batch is due:
    /// `force` (a workload flush or the handoff), a full batch, or an old one.
    pub fn take_commit(&mut self, now: Duration, force: bool) -> Vec<Region> {
        let due = force
            || self.pending.len() >= self.cfg.commit_batch
            || self.oldest_pending.is_some_and(|t| now.saturating_sub(t) >= self.cfg.commit_interval);
        if !due || self.pending.is_empty() {
            return Vec::new();
        }
        self.oldest_pending = None;
        let batch: Vec<Region> = self.pending.drain(..).collect();
        for r in &batch {
            self.states[*r as usize] = RegionState::Committing;
        }
        batch
    }

    /// A commit finished: its regions are durable, or back to pending when it failed.
    pub fn commit_done(&mut self, batch: &[Region], ok: bool, now: Duration) {
        for r in batch {
            debug_assert_eq!(self.states[*r as usize], RegionState::Committing);
            if ok {
                self.states[*r as usize] = RegionState::Durable;
                self.durable += 1;
            } else {
                self.states[*r as usize] = RegionState::Present;
                if self.pending.is_empty() {
                    self.oldest_pending = Some(now);
                }
                self.pending.push_back(*r);
            }
        }
    }

    /// Whether the source has failed for longer than the stall bound, and its last error.
    pub fn stalled(&self, now: Duration) -> Option<&str> {
        match self.failing_since {
            Some(t) if now.saturating_sub(t) >= self.cfg.stall_after => {
                Some(self.last_error.as_deref().unwrap_or("source unreadable"))
            }
            _ => None,
        }
    }

    /// The last source error seen (kept after recovery for diagnostics).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(n: u64) -> Core {
        Core::new(n, CoreConfig { commit_batch: 2, ..Default::default() }, |_| false)
    }

    #[test]
    fn a_lost_source_fails_missing_reads_at_once_and_stops_hydration() {
        let mut c = core(4);
        assert_eq!(c.acquire(0, Intent::Read), Step::Fetch);
        c.fetch_done(0, Ok(()), Duration::ZERO);
        assert_eq!(c.acquire(1, Intent::Read), Step::Fetch); // in flight when the source goes
        assert_eq!(c.declare_source_lost(), (3, 4));
        assert_eq!(c.acquire(0, Intent::Read), Step::Ready, "what is here is still served");
        assert_eq!(c.acquire(2, Intent::Read), Step::Lost);
        assert_eq!(c.acquire(1, Intent::Read), Step::Wait, "the fetch in flight is waited for");
        c.fetch_done(1, Err("gone".into()), Duration::ZERO);
        assert_eq!(c.acquire(1, Intent::Read), Step::Lost);
        assert_eq!(c.acquire(3, Intent::Overwrite), Step::Claimed, "a whole-region write needs no source");
        assert!(c.next_hydration(8).is_empty());
        // Keeping the partial copy: every missing region is claimed once, none fetched.
        assert_eq!(c.claim_missing(), vec![1, 2]);
        for r in [1, 2, 3] {
            c.claim_done(r, true, Duration::ZERO);
        }
        assert_eq!(c.hydrated(), 4);
    }

    #[test]
    fn missing_regions_are_claimed_only_once_the_source_is_lost() {
        let mut c = core(2);
        assert!(c.claim_missing().is_empty());
        assert_eq!(c.acquire(0, Intent::Read), Step::Fetch);
    }

    #[test]
    fn one_fetch_per_region_and_waiters_wait() {
        let mut c = core(4);
        assert_eq!(c.acquire(1, Intent::Read), Step::Fetch);
        assert_eq!(c.acquire(1, Intent::Read), Step::Wait);
        assert_eq!(c.acquire(1, Intent::Overwrite), Step::Wait);
        assert!(c.next_hydration(10).iter().all(|r| *r != 1));
        c.fetch_done(1, Ok(()), Duration::ZERO);
        assert_eq!(c.acquire(1, Intent::Read), Step::Ready);
    }

    #[test]
    fn a_read_through_region_is_missing_again_and_hydrated_first() {
        let mut c = core(8);
        assert_eq!(c.acquire(6, Intent::Read), Step::Fetch);
        assert_eq!(c.acquire(6, Intent::Read), Step::Wait, "others wait while the read is out");
        c.read_through(6);
        assert_eq!(c.state(6), RegionState::Missing);
        assert_eq!(c.fetches(), 0, "a passed-through read is not a region copy");
        assert_eq!(c.hydrated(), 0);
        assert_eq!(c.acquire(6, Intent::Read), Step::Fetch, "the next reader asks the source again");
        c.read_through(6);
        assert!(c.wanted(6) && !c.wanted(3));
        assert_eq!(c.acquire(3, Intent::Read), Step::Fetch);
        c.read_through(3);
        assert_eq!(c.next_hydration(3), vec![0, 3, 6], "wanted regions first (ascending), then the cursor");
        assert!(!c.wanted(6), "taken by hydration");
        assert_eq!(c.next_hydration(8), vec![1, 2, 4, 5, 7], "each region picked once");
        assert_eq!(c.fetches(), 8);
    }

    #[test]
    fn overwrite_claims_without_fetch() {
        let mut c = core(2);
        assert_eq!(c.acquire(0, Intent::Overwrite), Step::Claimed);
        c.claim_done(0, true, Duration::ZERO);
        assert_eq!(c.fetches(), 0);
        assert_eq!(c.hydrated(), 1);
    }

    #[test]
    fn commit_batches_and_failures_return_to_pending() {
        let mut c = core(3);
        let t = Duration::ZERO;
        for r in c.next_hydration(3) {
            c.fetch_done(r, Ok(()), t);
        }
        let b = c.take_commit(t, false);
        assert_eq!(b.len(), 3);
        c.commit_done(&b, false, t);
        assert_eq!(c.durable(), 0);
        let b = c.take_commit(t, true);
        c.commit_done(&b, true, t);
        assert!(c.complete());
    }

    #[test]
    fn stall_after_bound_and_clears_on_success() {
        let mut c = core(2);
        let r = c.next_hydration(1)[0];
        c.fetch_done(r, Err("timeout".into()), Duration::from_secs(1));
        assert!(c.stalled(Duration::from_secs(5)).is_none());
        assert_eq!(c.stalled(Duration::from_secs(11)), Some("timeout"));
        let r = c.next_hydration(1)[0];
        c.fetch_done(r, Ok(()), Duration::from_secs(12));
        assert!(c.stalled(Duration::from_secs(30)).is_none());
    }
}
