//! The dm-clone backend: the kernel's clone target does the copying; we create the
//! device through the devicemapper crate with a typed [`CloneTargetParams`] table,
//! poll its status, steer it with messages ([`DmController`], pure), report stalls
//! (the kernel retries source errors forever) and hand off by reloading the table
//! as `linear` on the dest.
pub mod control;
pub mod params;
pub mod sg;
pub mod skip;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devicemapper::{DM, DevId, Device, DmName, DmOptions, Sectors, TargetParams, devnode_to_devno};
use tokio::sync::watch;

pub use control::{DmAction, DmController, tuning};
pub use params::{CloneMessage, CloneStatus, CloneTargetParams, MetadataMode};
pub use skip::{SkipError, Skipped};

use crate::error::{CloneError, Result};
use crate::progress::{Phase, Progress, RateMeter};

/// How to create a dm-clone device.
#[derive(Clone, Debug)]
pub struct DmConfig {
    /// dm device name (`/dev/mapper/<name>`).
    pub name: String,
    /// Source block device.
    pub source: PathBuf,
    /// Dest block device.
    pub dest: PathBuf,
    /// Metadata block device.
    pub metadata: PathBuf,
    /// Region size in bytes (multiple of 4096 for dm-clone, power of two).
    pub region_size: u64,
    /// Bandwidth limit in bytes/s.
    pub rate_limit: Option<u64>,
    /// No progress for this long while hydrating reports `stalled`.
    pub stall_after: Duration,
    /// Status poll period.
    pub poll: Duration,
}

fn dm_err(name: &str, reason: impl std::fmt::Display) -> CloneError {
    CloneError::Dm { device: name.to_string(), reason: reason.to_string() }
}

fn device_of(name: &str, p: &Path) -> Result<Device> {
    match devnode_to_devno(p) {
        Ok(Some(d)) => Ok(Device::from(d)),
        Ok(None) => Err(dm_err(name, format!("{} is not a block device", p.display()))),
        Err(e) => Err(dm_err(name, format!("{}: {e}", p.display()))),
    }
}

fn size_sectors(name: &str, p: &Path) -> Result<u64> {
    let f = std::fs::File::open(p).map_err(|e| dm_err(name, format!("open {}: {e}", p.display())))?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), 0x8008_1272, &mut size) };
    if rc != 0 {
        return Err(dm_err(name, format!("size of {}: {}", p.display(), std::io::Error::last_os_error())));
    }
    Ok(size / 512)
}

struct Shared {
    dm: DM,
    name: String,
    controller: Mutex<DmController>,
    stop: AtomicBool,
    tx: watch::Sender<Progress>,
    /// Regions marked hydrated without copying (skipped as unallocated): not bytes read.
    skipped: AtomicU64,
    /// A skip pass runs: the poller leaves the counters alone until it ends.
    skipping: AtomicBool,
}

/// A running dm-clone device and its status poller.
pub struct DmClone {
    shared: Arc<Shared>,
    device: PathBuf,
    poller: Option<JoinHandle<()>>,
    source: PathBuf,
    region_size: u64,
    /// This process created the device (not adopted): no region can hold a write yet.
    created: bool,
}

impl std::fmt::Debug for DmClone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmClone").field("name", &self.shared.name).finish()
    }
}

impl DmClone {
    /// Creates `/dev/mapper/<name>` as a clone of `source` onto `dest` (hydration
    /// starts tuned on the first poll), or adopts an existing device of that name
    /// (resume after an agent restart: the kernel metadata holds the bitmap).
    pub fn start(cfg: DmConfig) -> Result<Self> {
        Self::start_with(cfg, false)
    }

    /// Like [`DmClone::start`] with background hydration held off until `resume` (the
    /// agent starts the workload on the clone first; on-demand reads work meanwhile).
    pub fn start_paused(cfg: DmConfig) -> Result<Self> {
        Self::start_with(cfg, true)
    }

    fn start_with(cfg: DmConfig, paused: bool) -> Result<Self> {
        let name = cfg.name.clone();
        let dm = DM::new().map_err(|e| dm_err(&name, format!("open /dev/mapper/control: {e} (is dm-mod loaded?)")))?;
        let dm_name = DmName::new(&name).map_err(|e| dm_err(&name, e))?;
        let sectors = size_sectors(&name, &cfg.source)?;
        let exists = devicemapper::device_exists(&dm, dm_name).map_err(|e| dm_err(&name, e))?;
        if !exists {
            let mut params = CloneTargetParams::new(
                device_of(&name, &cfg.metadata)?,
                device_of(&name, &cfg.dest)?,
                device_of(&name, &cfg.source)?,
                Sectors(cfg.region_size / 512),
            );
            params.no_hydration = true;
            let (t, b) = tuning(cfg.rate_limit, cfg.region_size);
            params.hydration_threshold = Some(t);
            params.hydration_batch_size = Some(b);
            dm.device_create(dm_name, None, DmOptions::default()).map_err(|e| dm_err(&name, format!("create: {e}")))?;
            let id = DevId::Name(dm_name);
            let table = vec![(0, sectors, "clone".to_string(), params.param_str())];
            if let Err(e) = dm
                .table_load(&id, &table, DmOptions::default())
                .and_then(|_| dm.device_suspend(&id, DmOptions::default()))
            {
                let _ = dm.device_remove(&id, DmOptions::default());
                return Err(dm_err(&name, format!("load table {params}: {e} (is dm-clone loaded?)")));
            }
            tracing::info!(device = %name, table = %params, "dm-clone created");
        }
        let mut controller = DmController::new(cfg.rate_limit, cfg.region_size, cfg.stall_after);
        controller.set_paused(paused);
        let regions = (sectors * 512).div_ceil(cfg.region_size);
        let (tx, _) = watch::channel(Progress::initial(0, regions, cfg.region_size, false));
        let shared = Arc::new(Shared {
            dm,
            name: name.clone(),
            controller: Mutex::new(controller),
            stop: AtomicBool::new(false),
            tx,
            skipped: AtomicU64::new(0),
            skipping: AtomicBool::new(false),
        });
        let s = shared.clone();
        let (dest, poll) = (cfg.dest.clone(), cfg.poll);
        let poller = std::thread::spawn(move || poll_loop(&s, &dest, sectors, poll));
        Ok(Self {
            shared,
            device: PathBuf::from(format!("/dev/mapper/{name}")),
            poller: Some(poller),
            source: cfg.source,
            region_size: cfg.region_size,
            created: !exists,
        })
    }

    /// Marks the regions the source does not hold as hydrated without copying them
    /// (GET LBA STATUS on the source disk, then a discard of the whole regions inside
    /// its deallocated ranges: docs/architecture.md, "dm-clone skips what the source
    /// does not hold"). Refused unless this process created the device and hydration
    /// never ran, so no region can hold a write; the caller vouches that the dest reads
    /// zeros where nothing was written (a freshly created sparse file). On any error the
    /// regions not marked are simply copied. `limit` bounds the source scan.
    pub fn skip_unallocated(&self, limit: Duration) -> std::result::Result<Skipped, SkipError> {
        let s = &self.shared;
        if !self.created {
            return Err(SkipError::Refused(format!(
                "{} was adopted, not created by this process: its regions may hold writes",
                s.name
            )));
        }
        if s.controller.lock().unwrap_or_else(|p| p.into_inner()).ever_enabled() {
            return Err(SkipError::Refused(format!("{}: hydration already ran", s.name)));
        }
        let st = status(s).map_err(|e| SkipError::Refused(e.to_string()))?;
        if st.hydrated != 0 {
            return Err(SkipError::Refused(format!("{}: {} regions already hydrated", s.name, st.hydrated)));
        }
        s.skipping.store(true, Ordering::SeqCst);
        let r = skip::discard_unallocated(&self.device, &self.source, self.region_size, limit);
        // Whatever got marked (also before an error) is what the kernel now counts.
        if let Ok(st) = status(s) {
            s.skipped.store(st.hydrated, Ordering::SeqCst);
        }
        s.controller.lock().unwrap_or_else(|p| p.into_inner()).restart_window();
        s.skipping.store(false, Ordering::SeqCst);
        r
    }

    /// Stops polling (the device stays; `remove` deletes it).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }

    /// Stops polling and removes the dm device.
    pub fn remove(mut self) -> Result<()> {
        self.halt();
        let n = DmName::new(&self.shared.name).map_err(|e| dm_err(&self.shared.name, e))?;
        self.shared
            .dm
            .device_remove(&DevId::Name(n), DmOptions::default())
            .map_err(|e| dm_err(&self.shared.name, format!("remove: {e}")))?;
        Ok(())
    }
}

impl Drop for DmClone {
    fn drop(&mut self) {
        self.halt();
    }
}

fn send(s: &Shared, msg: &str) -> Result<()> {
    let n = DmName::new(&s.name).map_err(|e| dm_err(&s.name, e))?;
    s.dm.target_msg(&DevId::Name(n), None, msg).map_err(|e| dm_err(&s.name, format!("message {msg}: {e}")))?;
    Ok(())
}

fn status(s: &Shared) -> Result<CloneStatus> {
    let n = DmName::new(&s.name).map_err(|e| dm_err(&s.name, e))?;
    let (_, lines) =
        s.dm.table_status(&DevId::Name(n), DmOptions::default())
            .map_err(|e| dm_err(&s.name, format!("status: {e}")))?;
    let line = lines.first().ok_or_else(|| dm_err(&s.name, "no status line"))?;
    if line.2 == "linear" {
        return Err(dm_err(&s.name, "already linear (handed off)"));
    }
    line.3.parse().map_err(|e| dm_err(&s.name, e))
}

fn handoff(s: &Shared, dest: &Path, sectors: u64) -> Result<()> {
    let n = DmName::new(&s.name).map_err(|e| dm_err(&s.name, e))?;
    let id = DevId::Name(n);
    let dest = device_of(&s.name, dest)?;
    let table = vec![(0, sectors, "linear".to_string(), format!("{dest} 0"))];
    s.dm.table_load(&id, &table, DmOptions::default()).map_err(|e| dm_err(&s.name, format!("load linear: {e}")))?;
    s.dm.device_suspend(&id, DmOptions::default().set_flags(devicemapper::DmFlags::DM_SUSPEND))
        .map_err(|e| dm_err(&s.name, format!("suspend: {e}")))?;
    s.dm.device_suspend(&id, DmOptions::default()).map_err(|e| dm_err(&s.name, format!("resume: {e}")))?;
    tracing::info!(device = %s.name, "handoff: table reloaded as linear on the dest");
    Ok(())
}

fn poll_loop(s: &Shared, dest: &Path, sectors: u64, period: Duration) {
    let start = Instant::now();
    let mut meter = RateMeter::default();
    while !s.stop.load(Ordering::Relaxed) {
        if s.skipping.load(Ordering::SeqCst) {
            std::thread::sleep(period.min(Duration::from_millis(50)));
            continue;
        }
        let now = start.elapsed();
        let mut last_error = None;
        let polled = status(s);
        if s.skipping.load(Ordering::SeqCst) {
            continue; // read while regions were being marked: neither copied nor final
        }
        match polled {
            Ok(st) => {
                let actions = s.controller.lock().unwrap_or_else(|p| p.into_inner()).poll(now, &st);
                let mut complete = false;
                for a in actions {
                    let r = match a {
                        DmAction::Send(m) => send(s, &m.to_string()),
                        DmAction::Handoff => handoff(s, dest, sectors).map(|()| complete = true),
                    };
                    if let Err(e) = r {
                        last_error = Some(e.to_string());
                    }
                }
                let stalled = s.controller.lock().unwrap_or_else(|p| p.into_inner()).stalled(now, &st);
                let rb = s.tx.borrow().region_size;
                let copied = st.hydrated.saturating_sub(s.skipped.load(Ordering::SeqCst));
                let rate = meter.sample(now, copied * rb);
                let left = (st.total - st.hydrated.min(st.total)) * rb;
                let phase = if complete {
                    Phase::Complete
                } else if stalled {
                    Phase::Stalled
                } else {
                    Phase::Hydrating
                };
                s.tx.send_modify(|p| {
                    p.hydrated = st.hydrated;
                    p.total = st.total;
                    p.fetched_bytes = copied * rb;
                    p.bytes_per_sec = rate;
                    p.eta_secs = if complete {
                        Some(0.0)
                    } else if rate > 0.0 {
                        Some(left as f64 / rate)
                    } else {
                        None
                    };
                    p.phase = phase;
                    if stalled && last_error.is_none() {
                        last_error =
                            Some("no hydration progress: source unreadable? (dm-clone retries forever)".into());
                    }
                    if last_error.is_some() {
                        p.last_error = last_error.clone();
                    }
                });
                if complete {
                    return;
                }
            }
            Err(e) => {
                if e.to_string().contains("already linear") {
                    s.tx.send_modify(|p| {
                        p.hydrated = p.total;
                        p.phase = Phase::Complete;
                    });
                    return;
                }
                s.tx.send_modify(|p| p.last_error = Some(e.to_string()));
            }
        }
        std::thread::sleep(period);
    }
}

impl crate::CloneBackend for DmClone {
    fn progress(&self) -> Progress {
        self.shared.tx.borrow().clone()
    }
    fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.tx.subscribe()
    }
    fn set_rate_limit(&self, rate: Option<u64>) -> Result<()> {
        self.shared.controller.lock().unwrap_or_else(|p| p.into_inner()).set_rate_limit(rate);
        Ok(())
    }
    fn pause(&self) -> Result<()> {
        self.shared.controller.lock().unwrap_or_else(|p| p.into_inner()).set_paused(true);
        Ok(())
    }
    fn resume(&self) -> Result<()> {
        self.shared.controller.lock().unwrap_or_else(|p| p.into_inner()).set_paused(false);
        Ok(())
    }
    fn device(&self) -> Option<PathBuf> {
        Some(self.device.clone())
    }
}
