//! The holder side of the real data path on kernels without dm-clone: log in to the
//! source's export with our initiator, open the userspace clone engine over it, expose the
//! clone as a loop device (FUSE file underneath) for the workload, hydrate in the
//! background. The initiator keeps reconnecting for as long as the lease lives
//! ([`ReconnectingSource`]), so a source that restarts or a healed partition only stalls
//! hydration.
//!
//! Limitation (documented in the README): the FUSE file lives in the agent's process, so
//! restarting the agent on a holder mid-move interrupts the workload's I/O until the
//! start hook runs again on the re-exposed device. dm-clone has no such gap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshdrain_clone::digest::VolumeDigest;
use meshdrain_clone::expose::Exposed;
use meshdrain_clone::{
    BlockSource, CloneError, Engine, EngineConfig, FileDest, FileMeta, Phase, ReconnectingSource, UserspaceClone,
};
use tracing::{info, warn};

use super::executor::{CloneService, CloneSpec};
use super::remove_files;
use crate::decide::model::CloneProgress;

/// Tuning of the userspace engine (config `[dataplane]`).
#[derive(Debug, Clone)]
pub struct EngineTuning {
    /// Clone region size in bytes.
    pub region_size: u64,
    /// Background fetches in flight.
    pub parallelism: usize,
    /// Regions per background fetch.
    pub batch_regions: usize,
    /// Workload reads within missing regions go to the source for just their bytes
    /// ([`EngineConfig::read_through`]).
    pub read_through: bool,
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self { region_size: 64 * 1024, parallelism: 4, batch_regions: 64, read_through: true }
    }
}

struct Running {
    epoch: u64,
    /// The source as the engine reads it (kept for the `--verify` digest's last reads).
    source: Arc<ReconnectingSource>,
    engine: Arc<Engine>,
    exposed: Option<Exposed>,
    hydration: Option<UserspaceClone>,
}

impl Running {
    fn shut(mut self) {
        if let Some(h) = self.hydration.take()
            && let Err(e) = h.stop()
        {
            warn!("final commit of a stopped clone: {e}");
        }
        if let Some(x) = self.exposed.take()
            && let Err(e) = x.stop()
        {
            warn!("tearing down a clone device: {e}");
        }
    }
}

/// Userspace clones of remote exports, one per incoming volume.
pub struct EngineClones {
    run_dir: PathBuf,
    tuning: EngineTuning,
    clones: Mutex<BTreeMap<String, Running>>,
    prepare_delay: Duration,
}

impl EngineClones {
    /// Clones whose FUSE mounts and device links live under `run_dir`. Mounts a killed
    /// earlier run left there are dead (their FUSE server was that process): cleared now.
    pub fn new(run_dir: &Path, tuning: EngineTuning) -> Self {
        if let Ok(entries) = std::fs::read_dir(run_dir.join("fuse")) {
            for e in entries.flatten() {
                clear_stale_mount(&e.path());
            }
        }
        Self { run_dir: run_dir.to_owned(), tuning, clones: Mutex::new(BTreeMap::new()), prepare_delay: Duration::ZERO }
    }

    /// Fault injection for tests: preparing a clone takes this long after its files exist
    /// (a slow device setup), which leaves time to kill a holder between grant and cut-over.
    pub fn with_prepare_delay(mut self, delay: Duration) -> Self {
        self.prepare_delay = delay;
        self
    }

    fn mountpoint(&self, volume: &str) -> PathBuf {
        self.run_dir.join("fuse").join(volume)
    }

    fn link(&self, volume: &str) -> PathBuf {
        self.run_dir.join("dev").join(volume)
    }

    fn open_engine(&self, spec: &CloneSpec) -> Result<(Arc<Engine>, Arc<ReconnectingSource>), String> {
        let digest = spec.verify.then(|| VolumeDigest::new(spec.size, self.tuning.region_size));
        let source = ReconnectingSource::connect(&spec.export.addr, &spec.export.iqn, &spec.initiator_iqn, digest)
            .map_err(|e| e.to_string())?;
        let source = Arc::new(source);
        if source.size() < spec.size {
            return Err(format!("export {} is {} bytes, the lease says {}", spec.export.iqn, source.size(), spec.size));
        }
        let cfg = EngineConfig {
            region_size: self.tuning.region_size,
            epoch: spec.epoch,
            rate_limit: spec.rate_limit,
            parallelism: self.tuning.parallelism,
            batch_regions: self.tuning.batch_regions,
            read_through: self.tuning.read_through,
            ..Default::default()
        };
        let reading = source.clone();
        let source: Arc<dyn BlockSource> = source;
        for attempt in 0..2 {
            if let Some(dir) = spec.dest.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let dest =
                FileDest::open(&spec.dest, spec.size).map_err(|e| format!("dest {}: {e}", spec.dest.display()))?;
            // No metadata yet: this lease's clone starts here, deliberately. Metadata that
            // exists is resumed or refused (never taken for a new clone: the workload may
            // have written to the dest), see meshdrain_clone::metadata.
            let opened = if spec.metadata.exists() {
                let meta =
                    FileMeta::open(&spec.metadata).map_err(|e| format!("metadata {}: {e}", spec.metadata.display()))?;
                Engine::open(source.clone(), Box::new(dest), Box::new(meta), cfg.clone())
            } else {
                let meta = FileMeta::create(&spec.metadata)
                    .map_err(|e| format!("metadata {}: {e}", spec.metadata.display()))?;
                Engine::create(source.clone(), Box::new(dest), Box::new(meta), cfg.clone())
            };
            match opened {
                Ok(engine) => return Ok((engine, reading)),
                Err(CloneError::ForeignMetadata { found_epoch, .. }) if attempt == 0 => {
                    // A partial clone of an older lease on this node: it was revoked, its
                    // bytes may be behind. Start over.
                    info!(volume = %spec.volume, found_epoch, "clone metadata of another lease: starting over");
                    remove_files(&spec.volume, &[&spec.dest, &spec.metadata]);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("cannot open a clone of {}", spec.volume))
    }
}

impl Drop for EngineClones {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Clears what a killed agent left at `mountpoint`: loop devices over its FUSE file and
/// the dead mount itself (lazily, so a workload still holding it does not block us).
fn clear_stale_mount(mountpoint: &Path) {
    for dev in meshdrain_clone::loopdev::backed_under(mountpoint) {
        let _ = meshdrain_clone::loopdev::detach(&dev);
        info!(dev = %dev.display(), "detached a loop device left by an earlier run");
    }
    let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
}

impl CloneService for EngineClones {
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String> {
        let old = {
            let mut clones = self.clones.lock().expect("clones lock");
            if let Some(c) = clones.get(&spec.volume)
                && c.epoch == spec.epoch
                && let Some(x) = &c.exposed
            {
                return Ok(x.device().to_owned());
            }
            clones.remove(&spec.volume)
        };
        // Outside the lock: tearing a device down waits for its FUSE server.
        if let Some(old) = old {
            old.shut();
        }
        let (engine, source) = self.open_engine(spec)?;
        std::thread::sleep(self.prepare_delay);
        let mountpoint = self.mountpoint(&spec.volume);
        clear_stale_mount(&mountpoint);
        let exposed =
            Exposed::start(engine.clone(), &mountpoint, Some(&self.link(&spec.volume))).map_err(|e| e.to_string())?;
        let device = exposed.device().to_owned();
        let running = Running { epoch: spec.epoch, source, engine, exposed: Some(exposed), hydration: None };
        self.clones.lock().expect("clones lock").insert(spec.volume.clone(), running);
        Ok(device)
    }

    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        let mut clones = self.clones.lock().expect("clones lock");
        let c = clones.get_mut(volume).ok_or_else(|| format!("no clone of {volume} on this node"))?;
        if c.hydration.is_none() {
            c.hydration = Some(UserspaceClone::start(c.engine.clone()));
        }
        Ok(())
    }

    fn progress(&self, volume: &str) -> Option<CloneProgress> {
        let clones = self.clones.lock().expect("clones lock");
        let p = clones.get(volume)?.hydration.as_ref()?.progress();
        Some(CloneProgress { hydration: (&p).into(), stalled: p.phase == Phase::Stalled, error: p.last_error })
    }

    fn watch_progress(&self, volume: &str) -> Option<tokio::sync::watch::Receiver<meshdrain_clone::Progress>> {
        Some(self.clones.lock().expect("clones lock").get(volume)?.hydration.as_ref()?.subscribe())
    }

    fn set_rate_limit(&self, volume: &str, rate: Option<u64>) {
        if let Some(h) = self.clones.lock().expect("clones lock").get(volume).and_then(|c| c.hydration.as_ref()) {
            h.set_rate_limit(rate);
        }
    }

    fn finalize(&self, volume: &str) -> Result<Option<String>, String> {
        let source = {
            let clones = self.clones.lock().expect("clones lock");
            let Some(c) = clones.get(volume) else {
                return Ok(None); // finalized before a restart
            };
            // The engine released the source at hand-off; from here the exposed device is
            // a passthrough to the dest file, which is the volume now.
            c.engine.commit(true).map_err(|e| e.to_string())?;
            if !c.engine.try_handoff().map_err(|e| e.to_string())? {
                return Err(format!("{volume} is not fully hydrated"));
            }
            c.source.clone()
        };
        // Outside the lock: it may read regions from the source again.
        source.finish_digest().map_err(|e| e.to_string())
    }

    fn shutdown(&self) {
        let clones = std::mem::take(&mut *self.clones.lock().expect("clones lock"));
        for (volume, c) in clones {
            info!(%volume, "agent stopping: clone device torn down (resumes from its metadata)");
            c.shut();
        }
    }

    fn discard(&self, volume: &str, dest: &Path, metadata: &Path) {
        if let Some(c) = self.clones.lock().expect("clones lock").remove(volume) {
            c.shut();
        }
        clear_stale_mount(&self.mountpoint(volume));
        remove_files(volume, &[dest, metadata, &self.link(volume)]);
    }
}
