//! The holder side of the real data path on kernels without dm-clone: each incoming
//! volume's userspace clone (login to the source's export, the clone engine, its FUSE
//! file and loop device, hydration) runs in a holder process of its own that outlives
//! the agent, the pattern of containerd's shims (docs/holder-process.md). The agent
//! starts holders, talks to them over a unix socket each, and after its own restart
//! adopts the ones still running: the workload's device never goes away with the agent.
//! A holder that dies is restarted from its clone metadata; its device changes, so the
//! executor runs the start hook again ([`Relaunched`]).
//!
//! - [`protocol`]: spec and state files, the socket's requests and replies.
//! - [`holder`]: the holder process itself (`meshdrain clone hold`).
//! - [`launch`]: starting, finding and stopping holder processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshdrain_clone::exposure::{self, ExposeKind};
use meshdrain_clone::{Phase, Progress};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::executor::{CloneService, CloneSpec, Relaunched};
use super::remove_files;
use crate::decide::model::CloneProgress;
use launch::Live;
use protocol::{HolderFiles, HolderSpec, HolderState, Request, call, read_json};

pub mod holder;
pub mod launch;
pub mod protocol;
mod returning; // docs/return.md: write tracking and returns in the holder
mod supervise; // each holder followed for the agent's life, restarted when it dies
mod upgrade; // docs/holder-process.md, "Upgrades": holders moved onto a new binary
use supervise::{resume, supervise};

pub use launch::stop_all;

/// Tuning of the userspace engine (config `[dataplane]`).
#[derive(Debug, Clone)]
pub struct EngineTuning {
    /// Clone region size in bytes.
    pub region_size: u64,
    /// Background fetches in flight.
    pub parallelism: usize,
    /// Regions per background fetch.
    pub batch_regions: usize,
    /// Workload reads within missing regions go to the source for just their bytes.
    pub read_through: bool,
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self { region_size: 64 * 1024, parallelism: 4, batch_regions: 64, read_through: true }
    }
}

/// How long a finalize may take (the `--verify` digest may read regions it never saw).
const FINALIZE_WITHIN: Duration = Duration::from_secs(600);
/// How long a quick request (progress, rate, hydrate) may take.
const QUICK: Duration = Duration::from_secs(5);

/// Holder processes found dead and restarted by this agent process, all volumes together:
/// the `meshdrain_holder_restarts_total` metric (the metrics are built after the data
/// plane, so they read this rather than a handle).
static RESTARTS: AtomicU64 = AtomicU64::new(0);

/// Holder processes this agent process found dead and restarted (docs/holder-process.md).
pub fn holder_restarts() -> u64 {
    RESTARTS.load(Ordering::Relaxed)
}

/// Userspace clones in holder processes, one per incoming volume.
pub struct ProcessClones {
    shared: Arc<Shared>,
    tuning: EngineTuning,
    prepare_delay: Duration,
    /// `[dataplane] expose`, passed to every holder (it chooses at its start).
    expose: ExposeKind,
    clones: Mutex<BTreeMap<String, Arc<Tracked>>>,
    relaunches: Mutex<Option<mpsc::UnboundedReceiver<Relaunched>>>,
    /// Holders found dead when this agent started, and how (logged when their clone is
    /// prepared again).
    found_dead: Mutex<BTreeMap<String, String>>,
}

/// What every holder's supervisor needs.
struct Shared {
    dir: PathBuf,
    run_dir: PathBuf,
    exe: PathBuf,
    relaunched: mpsc::UnboundedSender<Relaunched>,
    /// Holder processes found dead and restarted since this agent started.
    restarts: AtomicU64,
}

/// One holder this agent supervises.
struct Tracked {
    files: HolderFiles,
    spec: Mutex<HolderSpec>,
    live: Mutex<Live>,
    /// Whether this agent process adopted the holder from an earlier one.
    adopted: bool,
    progress: watch::Sender<Progress>,
    has_progress: AtomicBool,
    /// Set when the agent stops or stops the holder: its end is not a death.
    quiet: AtomicBool,
    /// Set while the agent moves the holder onto its own binary (upgrade.rs): its end
    /// is expected, and its successor is no restart after a death.
    moving: AtomicBool,
    /// The open `watch` connection, shut down to end the supervisor's read.
    watch_conn: Mutex<Option<std::os::unix::net::UnixStream>>,
}

impl Tracked {
    fn new(files: HolderFiles, spec: HolderSpec, live: Live, adopted: bool) -> Arc<Self> {
        let empty = Progress {
            hydrated: 0,
            total: 0,
            region_size: spec.region_size,
            bytes_per_sec: 0.0,
            eta_secs: None,
            fetched_bytes: 0,
            read_through_bytes: 0,
            phase: Phase::Hydrating,
            last_error: None,
        };
        Arc::new(Self {
            files,
            spec: Mutex::new(spec),
            live: Mutex::new(live),
            adopted,
            progress: watch::channel(empty).0,
            has_progress: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            watch_conn: Mutex::new(None),
        })
    }

    fn volume(&self) -> String {
        self.spec.lock().expect("spec lock").clone_spec.volume.clone()
    }

    fn set_progress(&self, p: Progress) {
        self.progress.send_replace(p);
        self.has_progress.store(true, Ordering::Release);
    }

    /// Stops supervising: the holder's end from here on is not a death.
    fn hush(&self) {
        self.quiet.store(true, Ordering::Release);
        if let Some(c) = self.watch_conn.lock().expect("watch lock").take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn save_spec(&self) {
        let spec = self.spec.lock().expect("spec lock").clone();
        if let Err(e) = protocol::write_json(&self.files.spec, &spec) {
            warn!(volume = %spec.clone_spec.volume, "cannot record the holder spec {}: {e}", self.files.spec.display());
        }
    }
}

impl ProcessClones {
    /// Holders whose files live under `run_dir/clones`, started from this very binary.
    /// Adopts every holder an earlier agent process left running; a holder found dead
    /// after its hand-off is restarted at once (no lease command brings it back), the
    /// others when their clone is prepared again.
    pub fn new(run_dir: &Path, tuning: EngineTuning) -> std::io::Result<Self> {
        let dir = run_dir.join("clones");
        std::fs::create_dir_all(&dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dir,
            run_dir: run_dir.to_owned(),
            exe: std::env::current_exe()?,
            relaunched: tx,
            restarts: AtomicU64::new(0),
        });
        let me = Self {
            shared,
            tuning,
            prepare_delay: Duration::ZERO,
            expose: ExposeKind::Auto,
            clones: Mutex::new(BTreeMap::new()),
            relaunches: Mutex::new(Some(rx)),
            found_dead: Mutex::new(BTreeMap::new()),
        };
        me.adopt_all();
        Ok(me)
    }

    /// Fault injection for tests: preparing a clone takes this long after its files exist
    /// (a slow device setup), which leaves time to kill a holder between grant and cut-over.
    pub fn with_prepare_delay(mut self, delay: Duration) -> Self {
        self.prepare_delay = delay;
        self
    }

    /// How holders present clones (`[dataplane] expose`): checked against this kernel
    /// now, so an explicit choice the kernel lacks keeps the agent from starting (the error
    /// names what is missing and the fix). Holders choose again at their start.
    pub fn with_expose(mut self, kind: ExposeKind) -> Result<Self, String> {
        let chosen = exposure::choose(kind, exposure::probe()).map_err(|e| e.to_string())?;
        info!(expose = %kind, chosen = %chosen, "userspace clones are exposed via {chosen}");
        self.expose = kind;
        Ok(self)
    }

    fn adopt_all(&self) {
        let mut older = Vec::new();
        for entry in std::fs::read_dir(&self.shared.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(spec) = read_json::<HolderSpec>(&path) else { continue };
            let files = HolderFiles::new(&self.shared.dir, &spec.clone_spec.volume);
            let volume = spec.clone_spec.volume.clone();
            match launch::find(&files, spec.clone_spec.epoch) {
                Ok(Some(live)) => {
                    let exposure = live.exposure.map(|c| c.as_str()).unwrap_or("-");
                    info!(%volume, pid = live.pid, device = %live.device.display(), exposure, "adopted the running holder process (no new login, same device)");
                    if launch::runs_other_binary(live.pid) {
                        older.push((volume.clone(), live.pid, live.exposure));
                    }
                    let t = Tracked::new(files, spec, live, true);
                    // Its progress now, not at the supervisor's first `watch` line: the
                    // executor's reporter, started when the lease re-issues the workload's
                    // start, ends on a clone without progress (and with it the move).
                    if let Ok(Some(p)) = call(&t.files.socket, &Request::Progress, QUICK).map(|r| r.progress) {
                        t.set_progress(p);
                    }
                    self.track(t);
                }
                Ok(None) => {
                    let state: HolderState = read_json(&files.state).unwrap_or_default();
                    let how = "found dead when the agent started (its log says how it ended)".to_owned();
                    if state.handed_off && state.epoch == spec.clone_spec.epoch {
                        self.restart(&files, spec, &how);
                    } else {
                        self.found_dead.lock().expect("dead lock").insert(volume, how);
                    }
                }
                Err(why) => {
                    warn!(%volume, "holder process not adopted ({why}); stopping it, restarted from its metadata");
                    launch::stop(&volume, &files, None);
                    self.found_dead.lock().expect("dead lock").insert(volume, format!("not adopted: {why}"));
                }
            }
        }
        self.upgrade(older);
    }

    /// Restarts a dead holder from its metadata, tracks it and tells the executor.
    fn restart(&self, files: &HolderFiles, spec: HolderSpec, how: &str) {
        let volume = spec.clone_spec.volume.clone();
        warn!(%volume, log = %files.log.display(), "holder process {how}; restarting it from its clone metadata (with FUSE + loop the workload's device changes and its start hook runs again; with nbd or ublk the new holder takes the device over)");
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        RESTARTS.fetch_add(1, Ordering::Relaxed);
        match launch::launch(&self.shared.exe, files, &spec) {
            Ok(live) => {
                // The workload ran on the dead holder's device: the executor starts it
                // again on the new one.
                let started = Relaunched {
                    volume: volume.clone(),
                    device: live.device.clone(),
                    start_hook: (spec.workload_started && !live.reattached).then(|| spec.start_hook.clone()),
                };
                let t = Tracked::new(files.clone(), spec, live, false);
                resume(&t);
                self.track(t);
                let _ = self.shared.relaunched.send(started);
            }
            Err(e) => warn!(%volume, "cannot restart the holder process: {e}"),
        }
    }

    /// Adds a holder to the map and starts its supervisor.
    fn track(&self, t: Arc<Tracked>) {
        let volume = t.volume();
        self.clones.lock().expect("clones lock").insert(volume, t.clone());
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new().name("holder-watch".into()).spawn(move || supervise(&shared, &t));
        if let Err(e) = spawned {
            warn!("cannot supervise a holder process: {e}");
        }
    }

    fn get(&self, volume: &str) -> Option<Arc<Tracked>> {
        self.clones.lock().expect("clones lock").get(volume).cloned()
    }

    fn holder_spec(&self, spec: &CloneSpec) -> HolderSpec {
        let (tuning, prepare_delay) = (&self.tuning, self.prepare_delay);
        HolderSpec {
            clone_spec: spec.clone(),
            region_size: tuning.region_size,
            parallelism: tuning.parallelism,
            batch_regions: tuning.batch_regions,
            read_through: tuning.read_through,
            prepare_delay_ms: prepare_delay.as_millis() as u64,
            mountpoint: self.shared.run_dir.join("fuse").join(&spec.volume),
            link: self.shared.run_dir.join("dev").join(&spec.volume),
            hydrating: false,
            workload_started: false,
            start_hook: None,
            source_lost: false,
            expose: self.expose,
        }
    }

    fn stop_tracked(&self, volume: &str) {
        let t = self.clones.lock().expect("clones lock").remove(volume);
        match t {
            Some(t) => {
                t.hush();
                let mut live = t.live.lock().expect("live lock");
                launch::stop(volume, &t.files, Some(&mut live));
            }
            None => launch::stop(volume, &HolderFiles::new(&self.shared.dir, volume), None),
        }
    }
}

impl CloneService for ProcessClones {
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String> {
        let pc = self;
        if let Some(t) = pc.get(&spec.volume) {
            if t.spec.lock().expect("spec lock").clone_spec.epoch == spec.epoch {
                return Ok(t.live.lock().expect("live lock").device.clone());
            }
            // Another lease's clone: stopped; the new holder starts over from scratch.
            pc.stop_tracked(&spec.volume);
        }
        let files = HolderFiles::new(&pc.shared.dir, &spec.volume);
        let hs = pc.holder_spec(spec);
        if let Some(how) = pc.found_dead.lock().expect("dead lock").remove(&spec.volume) {
            warn!(volume = %spec.volume, log = %files.log.display(), "holder process {how}; restarting it from its clone metadata (with FUSE + loop the workload's device changes and its start hook runs again; with nbd or ublk the new holder takes the device over)");
            pc.shared.restarts.fetch_add(1, Ordering::Relaxed);
            RESTARTS.fetch_add(1, Ordering::Relaxed);
        }
        // A holder that died while no agent ran: its spec says whether the workload runs.
        let before = read_json::<HolderSpec>(&files.spec).ok().filter(|b| b.clone_spec.epoch == spec.epoch);
        let live = launch::launch(&pc.shared.exe, &files, &hs)?;
        let device = live.device.clone();
        let mut hs = hs;
        // docs/exposures.md: the new holder took over the dead one's device, so a workload
        // started on it still runs there: counted as adopted, its start hook is not run
        // a second time.
        let kept = live.reattached && before.as_ref().is_some_and(|b| b.workload_started);
        if kept && let Some(b) = before {
            (hs.workload_started, hs.start_hook) = (true, b.start_hook);
            info!(volume = %spec.volume, device = %device.display(), "the restarted holder took over the same device: the workload kept running on it");
        }
        let t = Tracked::new(files, hs, live, kept);
        if kept {
            t.save_spec();
        }
        pc.track(t);
        Ok(device)
    }

    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        let t = self.get(volume).ok_or_else(|| format!("no clone of {volume} on this node"))?;
        t.spec.lock().expect("spec lock").hydrating = true;
        t.save_spec();
        let reply = call(&t.files.socket, &Request::Hydrate, QUICK)?;
        if let Some(p) = reply.progress {
            t.set_progress(p);
        }
        Ok(())
    }

    fn progress(&self, volume: &str) -> Option<CloneProgress> {
        let t = self.get(volume)?;
        if !t.has_progress.load(Ordering::Acquire) {
            return None;
        }
        let p = t.progress.borrow().clone();
        Some(CloneProgress { hydration: (&p).into(), stalled: p.phase == Phase::Stalled, error: p.last_error })
    }

    fn watch_progress(&self, volume: &str) -> Option<watch::Receiver<Progress>> {
        Some(self.get(volume)?.progress.subscribe())
    }

    fn set_rate_limit(&self, volume: &str, rate: Option<u64>) {
        let Some(t) = self.get(volume) else { return };
        t.spec.lock().expect("spec lock").clone_spec.rate_limit = rate;
        t.save_spec();
        if let Err(e) = call(&t.files.socket, &Request::Rate { rate }, QUICK) {
            warn!(%volume, "cannot change the hydration rate: {e}");
        }
    }

    fn finalize(&self, volume: &str) -> Result<Option<String>, String> {
        let pc = self;
        let t = match pc.get(volume) {
            Some(t) => t,
            None => {
                // Finishing when the agent stopped and its holder is gone: restarted
                // from its metadata to hand off; none at all: finalized before.
                let files = HolderFiles::new(&pc.shared.dir, volume);
                let Ok(spec) = read_json::<HolderSpec>(&files.spec) else { return Ok(None) };
                let how = pc.found_dead.lock().expect("dead lock").remove(volume).unwrap_or_default();
                pc.restart(&files, spec, &how);
                pc.get(volume).ok_or_else(|| format!("holder process of {volume} could not be restarted"))?
            }
        };
        let reply = call(&t.files.socket, &Request::Finalize, FINALIZE_WITHIN)?;
        Ok(reply.digest)
    }

    fn source_lost(&self, volume: &str) -> Result<(u64, u64), String> {
        let t = self.get(volume).ok_or_else(|| format!("no clone of {volume} on this node"))?;
        t.spec.lock().expect("spec lock").source_lost = true;
        t.save_spec();
        let reply = call(&t.files.socket, &Request::SourceLost, QUICK)?;
        reply.regions.ok_or_else(|| "the holder did not say which regions are missing".to_owned())
    }

    fn accept_partial(&self, volume: &str) -> Result<(), String> {
        let t = self.get(volume).ok_or_else(|| format!("no clone of {volume} on this node"))?;
        call(&t.files.socket, &Request::AcceptPartial, QUICK).map(|_| ())
    }

    fn tracks_writes(&self) -> bool {
        true // docs/return.md
    }

    fn delta_refused(&self, volume: &str) -> Option<String> {
        // The holder's word (it decided, src/dataplane/clone_process/returning.rs); its state
        // file if it does not answer.
        let t = self.get(volume)?;
        let state = call(&t.files.socket, &Request::Hello, QUICK).ok().and_then(|r| r.state);
        state.or_else(|| read_json::<HolderState>(&t.files.state).ok())?.return_full
    }

    fn written(&self, volume: &str) -> Result<crate::decide::returns::WrittenMap, String> {
        let t = self.get(volume).ok_or_else(|| format!("no clone of {volume} runs on this node"))?;
        let w = call(&t.files.socket, &Request::Written, QUICK)?.written.ok_or("the holder sent no written set")?;
        let ranges = w.ranges.iter().map(|[o, l]| *o..o.saturating_add(*l)).collect();
        Ok(crate::decide::returns::WrittenMap { clone: w.clone, epoch: w.epoch, ranges })
    }

    fn workload_running(&self, volume: &str) -> bool {
        self.get(volume).is_some_and(|t| t.adopted && t.spec.lock().expect("spec lock").workload_started)
    }

    fn workload_started(&self, volume: &str, hook: Option<&str>) {
        let Some(t) = self.get(volume) else { return };
        {
            let mut s = t.spec.lock().expect("spec lock");
            s.workload_started = true;
            s.start_hook = hook.map(str::to_owned);
        }
        t.save_spec();
    }

    fn relaunches(&self) -> Option<mpsc::UnboundedReceiver<Relaunched>> {
        self.relaunches.lock().expect("relaunch lock").take()
    }

    fn exposures(&self) -> Vec<crate::dataplane::ExposedClone> {
        let clones = self.clones.lock().expect("clones lock");
        clones
            .iter()
            .filter_map(|(volume, t)| {
                let live = t.live.lock().expect("live lock");
                Some(crate::dataplane::ExposedClone {
                    volume: volume.clone(),
                    exposure: live.exposure?.as_str().to_owned(),
                    device: live.device.clone(),
                })
            })
            .collect()
    }

    fn release(&self, volume: &str) {
        let files = HolderFiles::new(&self.shared.dir, volume);
        if self.get(volume).is_none() && !files.spec.exists() {
            return;
        }
        // A holder killed for good leaves its nbd device configured, waiting for a
        // successor that will not come now (docs/exposures.md).
        let nbd = read_json::<HolderState>(&files.state).ok().and_then(|s| s.nbd_index);
        let dest = read_json::<HolderSpec>(&files.spec).ok().map(|s| s.clone_spec.dest);
        self.stop_tracked(volume);
        if let (Some(index), Some(dest)) = (nbd, dest)
            && let Err(e) = meshdrain_clone::nbd::disconnect_orphan(index, &meshdrain_clone::nbd::backend_of(&dest))
        {
            warn!(%volume, "{e}");
        }
        holder::clear_stale_mount(&self.shared.run_dir.join("fuse").join(volume));
        let link = self.shared.run_dir.join("dev").join(volume);
        let all = files.all();
        let mut paths: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
        paths.push(&link);
        remove_files(volume, &paths);
        info!(%volume, "holder process stopped: the volume left this node");
    }

    fn shutdown(&self) {
        let clones = std::mem::take(&mut *self.clones.lock().expect("clones lock"));
        for (volume, t) in clones {
            t.hush();
            let live = t.live.lock().expect("live lock");
            info!(%volume, pid = live.pid, device = %live.device.display(), "agent stopping: the holder process keeps serving the workload's device (adopted on restart)");
        }
        let restarts = self.shared.restarts.load(Ordering::Relaxed);
        if restarts > 0 {
            info!(restarts, "holder processes restarted after dying during this agent's run");
        }
    }

    fn discard(&self, volume: &str, dest: &Path, metadata: &Path) {
        self.release(volume);
        remove_files(volume, &[dest, metadata]);
    }
}

#[cfg(test)]
mod tests;
