//! The userspace engine's thin shell: it owns the pure [`Core`] behind a mutex, does
//! the I/O the core asks for, and keeps the commit order (dest write, dest fdatasync,
//! bitmap write, metadata sync). Workload I/O comes from the exposures (reads:
//! [`crate::fetch`]; writes: [`crate::workload`]); background hydration from [`crate::hydrate`].
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::core::{Core, CoreConfig, Region};
use crate::error::{CloneError, Result};
use crate::io::{BlockSource, Dest, MetaStore};
use crate::metadata::{Header, Metadata};
use crate::progress::{Progress, RateMeter};
use crate::ratelimit::TokenBucket;

/// How a userspace clone runs. `Default` is what `meshdrain clone run` uses.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Bytes per region (multiple of 512; default 64 KiB).
    pub region_size: u64,
    /// The lease epoch; metadata of another epoch is refused.
    pub epoch: u64,
    /// Background hydration bandwidth in bytes/s (`None`: unlimited).
    pub rate_limit: Option<u64>,
    /// Background hydration threads; each keeps a whole batch of reads in flight.
    pub parallelism: usize,
    /// Regions per background batch (contiguous runs are split into reads of at most
    /// `max_read` bytes, all issued at once).
    pub batch_regions: usize,
    /// Largest single background source read in bytes (default 1 MiB).
    pub max_read: u64,
    /// Commit batching and the stall bound.
    pub core: CoreConfig,
    /// How long a workload read waits for an unreachable source before EIO.
    pub on_demand_timeout: Duration,
    /// Serve a workload read of regions not yet hydrated straight from the source
    /// (its own bytes only) and leave copying the regions to hydration, which takes
    /// them first (see [`Engine::read`]); off, such reads fetch whole regions. dm-clone
    /// does the former.
    pub read_through: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            region_size: 64 * 1024,
            epoch: 1,
            rate_limit: None,
            parallelism: 4,
            batch_regions: 64,
            max_read: 1 << 20,
            core: CoreConfig::default(),
            on_demand_timeout: Duration::from_secs(60),
            read_through: true,
        }
    }
}

/// One userspace clone: source + dest + metadata + region state.
pub struct Engine {
    pub(crate) source: RwLock<Option<Arc<dyn BlockSource>>>,
    pub(crate) identity: String,
    pub(crate) dest: Box<dyn Dest>,
    meta: Mutex<Metadata>,
    pub(crate) core: Mutex<Core>,
    pub(crate) cv: Condvar,
    pub(crate) cfg: EngineConfig,
    pub(crate) size: u64,
    start: Instant,
    pub(crate) bucket: Mutex<TokenBucket>,
    pub(crate) paused: AtomicBool,
    pub(crate) stopped: AtomicBool,
    pub(crate) workload_active: AtomicUsize,
    /// When workload I/O that needed the source last ended ([`Engine::now`] in µs):
    /// background hydration stays narrow for [`WORKLOAD_QUIET`] after it, since a
    /// workload's reads come in dependent bursts (a mount, a query) and each would
    /// otherwise queue behind a full window of bulk reads on the shared path. I/O served
    /// by the dest alone does not count: it never meets hydration on the path.
    workload_seen_us: AtomicU64,
    /// Whether the workload wrote or discarded since its last flush (see [`Engine::flush`]).
    pub(crate) workload_wrote: AtomicBool,
    /// Where the last workload read passed through to the source ended (`u64::MAX`:
    /// none yet): a read starting there is a stream, and fetches whole regions.
    pub(crate) last_through_end: AtomicU64,
    /// When a source read last failed ([`Engine::now`] in µs; 0: never): exposures stop
    /// answering on-demand reads on their dispatch thread for [`SOURCE_SUSPECT`] after it
    /// (see [`Engine::source_answers`]).
    pub(crate) source_failed_us: AtomicU64,
    pub(crate) fetched_bytes: AtomicU64,
    pub(crate) read_through_bytes: AtomicU64,
    pub(crate) meter: Mutex<RateMeter>,
    pub(crate) progress_tx: watch::Sender<Progress>,
    pub(crate) span: tracing::Span,
    /// Whether the source's deallocated ranges are known and claimed (or cannot be):
    /// background hydration starts only then, so it never fetches what the scan skips.
    scanned: AtomicBool,
    /// The regions the workload wrote since the clone was created, when tracked
    /// ([`crate::written`], docs/return.md); durable before a write is acknowledged.
    pub(crate) written: Mutex<Option<crate::written::Written>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("source", &self.identity).field("size", &self.size).finish_non_exhaustive()
    }
}

/// How long after workload I/O only one hydration worker runs: long enough to span the gaps
/// in a burst of dependent reads (a mount, a query), short enough that a workload writing
/// every few tens of ms leaves hydration mostly at full width (20 ms cost a third of it).
pub(crate) const WORKLOAD_QUIET: Duration = Duration::from_millis(5);

/// How long after a failed source read the source counts as unreliable for
/// [`Engine::source_answers`]: well past a reconnect's first backoffs.
pub(crate) const SOURCE_SUSPECT: Duration = Duration::from_secs(10);

/// What [`Engine::declare_source_lost`] found: regions that will never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLost {
    /// Regions not on the dest.
    pub missing_regions: u64,
    /// Regions of the volume.
    pub total_regions: u64,
}

/// Marks workload I/O waiting on the source (see [`Engine::workload_busy`]).
pub(crate) struct Busy<'a>(&'a Engine);
impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.workload_seen_us.store(self.0.now().as_micros() as u64, Ordering::Relaxed);
        self.0.workload_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    /// Resumes the clone of `source` onto `dest` recorded in `meta`. Refuses, without
    /// touching the dest, metadata it cannot trust: empty, zeroed, damaged, or of
    /// another source, epoch, geometry or dest (see [`crate::metadata`]); the only way
    /// past a refusal is [`Engine::create`]. Regions the source reports deallocated are
    /// zeroed on the dest and never fetched; that scan runs in the background (see
    /// [`Engine::wait_scanned`]), so the clone is usable on return.
    pub fn open(
        source: Arc<dyn BlockSource>,
        dest: Box<dyn Dest>,
        meta: Box<dyn MetaStore>,
        cfg: EngineConfig,
    ) -> Result<Arc<Self>> {
        let want = Self::check(&*source, &cfg)?;
        let meta = Metadata::open(meta, &want, &*dest)?;
        Self::check_dest_size(&*dest, want.size)?;
        Self::start(source, dest, meta, want, cfg)
    }

    /// Starts a fresh clone of `source` onto `dest`: a new clone id marks the dest and
    /// new metadata replaces whatever `meta` held, so every region is copied again.
    /// For a new clone (no metadata yet) or an explicit start-over
    /// (`meshdrain clone run --start-over`); never a fallback for refused metadata.
    pub fn create(
        source: Arc<dyn BlockSource>,
        dest: Box<dyn Dest>,
        meta: Box<dyn MetaStore>,
        cfg: EngineConfig,
    ) -> Result<Arc<Self>> {
        let want = Self::check(&*source, &cfg)?;
        Self::check_dest_size(&*dest, want.size)?;
        let id = Self::new_clone_id()?;
        let meta = Metadata::create(meta, &want, &*dest, id)?;
        Self::start(source, dest, meta, want, cfg)
    }

    /// A fresh random clone id: it binds the metadata (and the written set) to this clone.
    fn new_clone_id() -> Result<[u8; crate::identity::CLONE_ID_LEN]> {
        crate::identity::new_clone_id().map_err(|e| CloneError::Io {
            what: "draw a clone id",
            path: PathBuf::from("getrandom"),
            source: e,
        })
    }

    /// Starts a fresh clone onto a dest that already holds the volume except within
    /// `stale` (byte ranges): a return to the node the volume came from, whose retained
    /// copy differs from the source only where the workload wrote since (docs/return.md).
    /// The metadata's bits are set for every region outside `stale`, so only the regions
    /// `stale` touches are fetched. The caller vouches that the dest is that copy.
    pub fn create_over(
        source: Arc<dyn BlockSource>,
        dest: Box<dyn Dest>,
        meta: Box<dyn MetaStore>,
        cfg: EngineConfig,
        stale: &[Range<u64>],
    ) -> Result<Arc<Self>> {
        let want = Self::check(&*source, &cfg)?;
        Self::check_dest_size(&*dest, want.size)?;
        let id = Self::new_clone_id()?;
        let mut meta = Metadata::create(meta, &want, &*dest, id)?;
        let rs = cfg.region_size;
        meta.preset(|r| !stale.iter().any(|s| s.start < (r + 1) * rs && r * rs < s.end))?;
        Self::start(source, dest, meta, want, cfg)
    }

    /// The configuration checks and the header a clone of `source` must carry.
    fn check(source: &dyn BlockSource, cfg: &EngineConfig) -> Result<Header> {
        if cfg.parallelism == 0 || cfg.batch_regions == 0 {
            return Err(CloneError::Config("parallelism and batch size must be at least 1".into()));
        }
        if cfg.max_read < cfg.region_size {
            return Err(CloneError::Config(format!(
                "max read {} is below the region size {}",
                cfg.max_read, cfg.region_size
            )));
        }
        Ok(Header {
            region_size: cfg.region_size,
            size: source.size(),
            source: source.identity(),
            epoch: cfg.epoch,
            complete: false,
        })
    }

    fn check_dest_size(dest: &dyn Dest, size: u64) -> Result<()> {
        let path = dest.path().unwrap_or_else(|| PathBuf::from("dest"));
        let dest_size = dest.size().map_err(|e| CloneError::Io { what: "size dest", path: path.clone(), source: e })?;
        if dest_size < size {
            return Err(CloneError::DestTooSmall { path, dest_size, source_size: size });
        }
        Ok(())
    }

    fn start(
        source: Arc<dyn BlockSource>,
        dest: Box<dyn Dest>,
        meta: Metadata,
        want: Header,
        cfg: EngineConfig,
    ) -> Result<Arc<Self>> {
        let (size, identity) = (want.size, want.source.clone());
        let complete = meta.header().complete;
        let core = Core::new(want.regions(), cfg.core, |r| complete || meta.is_set(r));
        let span = tracing::info_span!("clone", source = %identity, epoch = cfg.epoch);
        let regions = core.regions();
        let hydrated = core.hydrated();
        let (progress_tx, _) = watch::channel(Progress::initial(hydrated, regions, cfg.region_size, complete));
        let engine = Arc::new(Self {
            source: RwLock::new(if complete { None } else { Some(source) }),
            identity,
            dest,
            meta: Mutex::new(meta),
            core: Mutex::new(core),
            cv: Condvar::new(),
            bucket: Mutex::new(TokenBucket::new(cfg.rate_limit, Duration::ZERO)),
            cfg,
            size,
            start: Instant::now(),
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            workload_active: AtomicUsize::new(0),
            workload_seen_us: AtomicU64::new(0),
            workload_wrote: AtomicBool::new(false),
            last_through_end: AtomicU64::new(u64::MAX),
            source_failed_us: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            read_through_bytes: AtomicU64::new(0),
            meter: Mutex::new(RateMeter::default()),
            progress_tx,
            span,
            scanned: AtomicBool::new(complete),
            written: Mutex::new(None),
        });
        tracing::info!(parent: &engine.span, hydrated, regions, complete, "clone opened");
        if !complete {
            engine.start_scan();
        }
        Ok(engine)
    }

    /// Asks the source for its deallocated ranges on a thread of its own, so the device
    /// can be exposed at once (the scan is a round trip per GET LBA STATUS on the
    /// drain's cut-over path). Until it ends, on-demand reads fetch as usual (a region
    /// the scan has not claimed yet may be fetched) and background hydration waits.
    fn start_scan(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let source = self.source_handle();
        let spawned = std::thread::Builder::new().name("clone-scan".into()).spawn(move || {
            let ranges = source.map(|s| s.deallocated());
            // The engine may be gone or stopped by now: then the scan's claims do not
            // matter (a resume scans again), and a stopped engine's dest is not touched.
            if let Some(engine) = weak.upgrade() {
                engine.skip_unallocated(ranges);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(parent: &self.span, error = %e, "no scan thread; scanning before the device is exposed");
            let ranges = self.source_handle().map(|s| s.deallocated());
            self.skip_unallocated(ranges);
        }
    }

    /// Waits until the deallocated-range scan has ended (or the engine stops).
    /// Background hydration calls it first; tests and benchmarks call it to measure.
    pub fn wait_scanned(&self) {
        let mut core = self.lock_core();
        // Bounded: the scan ends (its source calls time out) or the engine stops.
        while !self.scanned.load(Ordering::Acquire) && !self.stopped.load(Ordering::Relaxed) {
            core = self.cv.wait_timeout(core, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Monotonic time since the engine opened (the only clock the core sees).
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Workload I/O must wait for the source; hydration yields until shortly after the
    /// guard drops.
    pub(crate) fn workload_busy(&self) -> Busy<'_> {
        self.workload_active.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// Whether workload I/O waits on the source now or did less than [`WORKLOAD_QUIET`] ago.
    pub(crate) fn workload_recent(&self) -> bool {
        let seen = Duration::from_micros(self.workload_seen_us.load(Ordering::Relaxed));
        self.workload_active.load(Ordering::Relaxed) > 0
            || (seen > Duration::ZERO && self.now().saturating_sub(seen) < WORKLOAD_QUIET)
    }

    /// Whether the source has answered every read for [`SOURCE_SUSPECT`]. An exposure's
    /// dispatch thread (ublk's queue thread, NBD's reader) answers an on-demand read
    /// itself only then, and only when nothing else is pending: one hand-off to a worker
    /// and back saved, against a dead source holding that thread for a request's timeout
    /// (docs/exposures.md, "On-demand reads on the dispatch thread").
    pub fn source_answers(&self) -> bool {
        let failed = self.source_failed_us.load(Ordering::Relaxed);
        failed == 0 || self.now().saturating_sub(Duration::from_micros(failed)) >= SOURCE_SUSPECT
    }

    /// Records a failed source read for [`Engine::source_answers`].
    pub(crate) fn note_source_failure(&self) {
        self.source_failed_us.store((self.now().as_micros() as u64).max(1), Ordering::Relaxed);
    }

    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_meta(&self) -> MutexGuard<'_, Metadata> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        self.cfg.region_size
    }

    pub(crate) fn region_range(&self, r: Region) -> Range<u64> {
        let start = r * self.cfg.region_size;
        start..(start + self.cfg.region_size).min(self.size)
    }

    pub(crate) fn dest_err(what: &'static str) -> impl Fn(std::io::Error) -> CloneError {
        move |source| CloneError::Io { what, path: PathBuf::from("dest"), source }
    }

    /// Claims the regions inside `ranges` (the source's deallocated byte ranges) and
    /// zeroes them on the dest, one punch per contiguous run, so they are never fetched.
    /// Any failure leaves them to be fetched (always safe). Ends the scan.
    fn skip_unallocated(&self, ranges: Option<std::io::Result<Option<Vec<Range<u64>>>>>) {
        let ranges = match ranges {
            Some(Ok(Some(r))) => r,
            Some(Err(e)) => {
                tracing::warn!(parent: &self.span, error = %e, "source cannot report deallocated ranges; fetching all");
                Vec::new()
            }
            Some(Ok(None)) | None => Vec::new(),
        };
        let rs = self.cfg.region_size;
        let whole = ranges.iter().flat_map(|r| {
            let first = r.start.div_ceil(rs);
            let end = if r.end >= self.size { self.size.div_ceil(rs) } else { r.end / rs };
            first..end.max(first)
        });
        let claimed =
            if self.stopped.load(Ordering::Relaxed) { Vec::new() } else { self.lock_core().claim_unallocated(whole) };
        let mut skipped = 0usize;
        for run in runs_of_regions(&claimed) {
            let (lo, hi) = (self.region_range(run[0]).start, self.region_range(run[run.len() - 1]).end);
            let res = self.dest.punch(lo, hi - lo);
            if let Err(e) = &res {
                tracing::warn!(parent: &self.span, error = %e, offset = lo, len = hi - lo, "cannot zero deallocated range on the dest; fetching it");
            }
            let now = self.now();
            let mut core = self.lock_core();
            for r in run {
                core.claim_done(*r, res.is_ok(), now);
            }
            skipped += if res.is_ok() { run.len() } else { 0 };
        }
        tracing::info!(parent: &self.span, regions = skipped, "deallocated source regions skipped");
        self.scanned.store(true, Ordering::Release);
        let _core = self.lock_core();
        self.cv.notify_all();
    }

    pub(crate) fn source_handle(&self) -> Option<Arc<dyn BlockSource>> {
        self.source.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(CloneError::OutOfRange { offset, len, size: self.size });
        }
        Ok(())
    }

    pub(crate) fn regions_of(&self, offset: u64, len: u64) -> Range<Region> {
        offset / self.cfg.region_size..(offset + len).div_ceil(self.cfg.region_size)
    }

    /// The source was declared lost for good (docs/failures.md): stop waiting for it.
    /// Reads (and partial writes) of regions not here fail at once with EIO
    /// ([`CloneError::SourceLost`]), waiting requests wake up to that answer, hydration
    /// stops. What is here is still served. Not persisted: a restarted clone is told again.
    pub fn declare_source_lost(&self) -> SourceLost {
        let (missing_regions, total_regions) = self.lock_core().declare_source_lost();
        self.cv.notify_all();
        tracing::warn!(parent: &self.span, missing_regions, total_regions, "source lost: missing regions fail with EIO");
        SourceLost { missing_regions, total_regions }
    }

    /// The operator keeps the partial copy of a lost source: every missing region becomes
    /// zeros on the dest (one punch per run), so the clone is complete and hands off as
    /// usual. Returns how many regions were zeroed; an error leaves the failed ones missing.
    pub fn accept_partial(&self) -> Result<u64> {
        let claimed = self.lock_core().claim_missing();
        let mut zeroed = 0;
        let mut failed = None;
        for run in runs_of_regions(&claimed) {
            let (lo, hi) = (self.region_range(run[0]).start, self.region_range(run[run.len() - 1]).end);
            let res = self.dest.punch(lo, hi - lo);
            let now = self.now();
            let mut core = self.lock_core();
            for r in run {
                core.claim_done(*r, res.is_ok(), now);
            }
            match res {
                Ok(()) => zeroed += run.len() as u64,
                Err(e) => failed = Some(e),
            }
        }
        self.cv.notify_all();
        if let Some(e) = failed {
            return Err(Self::dest_err("zero missing regions")(e));
        }
        tracing::warn!(parent: &self.span, regions = zeroed, "partial copy accepted: missing regions are zeros");
        Ok(zeroed)
    }

    /// Commits a due batch (`force`: everything pending, and always syncs the dest):
    /// dest fdatasync, then bitmap write, then metadata sync. Commits are serialized.
    pub fn commit(&self, force: bool) -> Result<()> {
        let mut meta = self.lock_meta();
        let batch = self.lock_core().take_commit(self.now(), force);
        if batch.is_empty() {
            if force {
                self.dest.sync_data().map_err(Self::dest_err("sync dest"))?;
            }
            return Ok(());
        }
        let res = self.dest.sync_data().map_err(Self::dest_err("sync dest")).and_then(|()| meta.persist(&batch));
        self.lock_core().commit_done(&batch, res.is_ok(), self.now());
        if let Err(e) = &res {
            tracing::warn!(parent: &self.span, error = %e, regions = batch.len(), "commit failed; will retry");
        }
        res
    }

    /// If every region is durable and the handoff has not run: sync, mark the metadata
    /// complete, release the source. Returns whether the clone is complete.
    pub fn try_handoff(&self) -> Result<bool> {
        if !self.lock_core().complete() {
            return Ok(false);
        }
        let mut meta = self.lock_meta();
        if !meta.header().complete {
            self.dest.sync_data().map_err(Self::dest_err("sync dest"))?;
            meta.mark_complete()?;
            *self.source.write().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(parent: &self.span, "handoff complete: the dest is the volume");
        }
        Ok(true)
    }

    /// Sleeps up to `d`, waking early on stop or pause, in 50 ms slices.
    pub(crate) fn sleep_bounded(&self, d: Duration) {
        let end = Instant::now() + d.min(Duration::from_secs(5));
        while !self.stopped.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// Regions fetched from the source since open (the "fetched once" tests read it).
    pub fn fetches(&self) -> u64 {
        self.lock_core().fetches()
    }
}

/// Splits ascending `regions` into runs of consecutive regions.
pub(crate) fn runs_of_regions(regions: &[Region]) -> impl Iterator<Item = &[Region]> {
    regions.chunk_by(|a, b| *b == *a + 1)
}
