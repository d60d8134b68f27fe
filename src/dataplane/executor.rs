//! The executor: applies [`DataCommand`]s and reports [`DataEvent`]s. Hooks, the
//! read-only export on the source, the clone on the holder. It drives two services behind
//! narrow traits, an [`ExportService`] and a [`CloneService`], so one executor runs every
//! plane: the iSCSI target with our clone engine or dm-clone, and the local development
//! plane; tests inject faults through the same traits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::DataPlane;
use super::hooks::{HookKind, run_hook};
use super::paths;
use crate::decide::core::{DataCommand, DataEvent};
use crate::decide::model::{CloneProgress, ExportEndpoint, VolumeId, export_iqn, initiator_iqn};

/// One lease's export: who may read which volume, for which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportGrant {
    /// Volume id.
    pub volume: String,
    /// The local file or device served read-only.
    pub path: PathBuf,
    /// Target name the holder logs in to.
    pub iqn: String,
    /// The holder's address (its mesh address when a mesh runs): the only one let in.
    pub holder_addr: String,
    /// The holder's initiator name for this lease (it carries the epoch).
    pub initiator_iqn: String,
    /// Lease epoch.
    pub epoch: u64,
}

/// The source side: read-only exports of local volumes.
pub trait ExportService: Send + Sync + 'static {
    /// Opens (or re-opens, for a new holder or epoch) an export; sessions of anyone else
    /// are dropped and kept out (fencing).
    fn open(&self, grant: &ExportGrant) -> Result<(), String>;
    /// Closes the export to everyone and drops their sessions (fencing).
    fn close(&self, volume: &str);
}

/// What a holder's clone needs to start (also the first fields of a holder process's spec
/// file, docs/holder-process.md: serialized, so keep the names).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloneSpec {
    /// Volume id.
    pub volume: String,
    /// Where to read: the source's export.
    pub export: ExportEndpoint,
    /// The initiator name to log in with (carries the epoch; the source's ACL checks it).
    pub initiator_iqn: String,
    /// Lease epoch (the clone metadata records it and refuses another).
    pub epoch: u64,
    /// Volume size.
    pub size: u64,
    /// The file or device that becomes the volume here.
    pub dest: PathBuf,
    /// Clone metadata (region bitmap).
    pub metadata: PathBuf,
    /// Hydration bandwidth, bytes/s.
    pub rate_limit: Option<u64>,
    /// Digest what is read from the source (`drain --verify`).
    pub verify: bool,
    /// A return: clone over the copy kept here, fetching only the regions written since
    /// it was handed off (docs/return.md). Absent in specs of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::decide::returns::ReturnPlan>,
}

/// A clone whose holder process died and was restarted from its metadata on a new
/// device (docs/holder-process.md): the executor points the volume at the new device and,
/// when the workload had been started on the old one, runs the start hook again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relaunched {
    /// Volume id.
    pub volume: String,
    /// The new device.
    pub device: PathBuf,
    /// `Some(hook)` when the workload was started on the old device (with that hook).
    pub start_hook: Option<Option<String>>,
}

/// The holder side: clone devices.
pub trait CloneService: Send + Sync + 'static {
    /// Logs in and creates (or resumes, from existing metadata of the same epoch) the
    /// clone; returns the block device the workload will use. No hydration yet.
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String>;
    /// Starts background hydration.
    fn start_hydration(&self, volume: &str) -> Result<(), String>;
    /// Current progress (`None`: no such clone).
    fn progress(&self, volume: &str) -> Option<CloneProgress>;
    /// Progress as the engine publishes it, for a reporter that wants the last region
    /// the moment it lands rather than at its next poll (every poll interval at the
    /// end of a move is time the source keeps serving). Default: none, poll only.
    fn watch_progress(&self, _volume: &str) -> Option<tokio::sync::watch::Receiver<meshdrain_clone::Progress>> {
        None
    }
    /// Whether the workload already runs on this clone's device: a clone adopted from a
    /// holder process that outlived the agent, whose start hook ran before the restart
    /// (docs/holder-process.md). Default: never.
    fn workload_running(&self, _volume: &str) -> bool {
        false
    }
    /// Records that the workload was started on the clone's device with `hook`.
    fn workload_started(&self, _volume: &str, _hook: Option<&str>) {}
    /// Clones restarted on a new device after their holder died; taken once by the
    /// executor. Default: none (clones that live in the agent die with it).
    fn relaunches(&self) -> Option<mpsc::UnboundedReceiver<Relaunched>> {
        None
    }
    /// The volume left this node (its handed-off copy is deleted): stop serving it.
    fn release(&self, _volume: &str) {}
    /// Running clones and how each is exposed (docs/exposures.md). Default: none said.
    fn exposures(&self) -> Vec<super::ExposedClone> {
        Vec::new()
    }
    /// Changes the bandwidth of a running hydration.
    fn set_rate_limit(&self, volume: &str, rate: Option<u64>);
    /// Flushes, replaces the clone by the plain dest, logs out. Idempotent. Returns the
    /// digest of what was read from the source when the clone was prepared with `verify`
    /// and the engine can tell (`None` otherwise).
    fn finalize(&self, volume: &str) -> Result<Option<String>, String>;
    /// Removes a revoked partial clone: its dest and metadata, also when this process
    /// never prepared it (the holder restarted since).
    fn discard(&self, volume: &str, dest: &Path, metadata: &Path);
    /// The agent is stopping: tear down clone devices now (their metadata keeps what is
    /// durable; a restarted agent resumes). Default: nothing to tear down.
    fn shutdown(&self) {}
    /// The source was declared lost for good (docs/failures.md): stop waiting for it.
    /// Reads of regions not yet here fail at once with EIO, hydration stops. Returns
    /// (regions missing, regions). Default: a backend without the mode says so.
    fn source_lost(&self, _volume: &str) -> Result<(u64, u64), String> {
        Err("not supported by this clone backend".to_owned())
    }
    /// The operator keeps a partial copy (`meshdrain partial accept`): the missing regions
    /// become zeros on the dest, so hydration completes and finalize runs as usual.
    /// Default: a backend without the mode says so.
    fn accept_partial(&self, _volume: &str) -> Result<(), String> {
        Err("not supported by this clone backend".to_owned())
    }
    /// The workload's writes since the clone of `volume` here was created, as its engine
    /// tracked them (docs/return.md). Default: a backend that does not track them says so.
    fn written(&self, volume: &str) -> Result<crate::decide::returns::WrittenMap, String> {
        Err(format!("no userspace clone of {volume} here tracks its writes"))
    }
    /// Whether this backend's clones track their writes (docs/return.md): if not, a
    /// written set left by another backend is removed before it exposes the volume.
    fn tracks_writes(&self) -> bool {
        false
    }
    /// Why the clone of `volume` just prepared for a return planned as a delta copies
    /// everything after all (docs/return.md); `None`: it clones over the copy kept here.
    /// Default: a backend that cannot clone over a kept copy says so.
    fn delta_refused(&self, _volume: &str) -> Option<String> {
        Some(
            "this node's clone backend cannot clone over the copy kept here (only the userspace engine can)".to_owned(),
        )
    }
}

/// A command and the volume's local path when it was handed over.
type Work = (DataCommand, Option<PathBuf>);

/// The executor: one worker task per volume runs that volume's commands in order (a
/// restarted holder's "prepare, then start" must not race), volumes run in parallel.
pub struct Executor {
    inner: Arc<Inner>,
    workers: BTreeMap<String, mpsc::UnboundedSender<Work>>,
}

struct Inner {
    node: String,
    pool: PathBuf,
    exports: Arc<dyn ExportService>,
    clones: Arc<dyn CloneService>,
    devices: Mutex<BTreeMap<String, PathBuf>>,
    hook_timeout: Duration,
    poll: Duration,
}

impl Executor {
    /// An executor for `node` with its pool directory and services.
    pub fn new(
        node: &str,
        pool: &Path,
        exports: Arc<dyn ExportService>,
        clones: Arc<dyn CloneService>,
        poll: Duration,
    ) -> Self {
        let inner = Inner {
            node: node.to_owned(),
            pool: pool.to_owned(),
            exports,
            clones,
            devices: Mutex::new(BTreeMap::new()),
            hook_timeout: Duration::from_secs(300),
            poll,
        };
        let inner = Arc::new(inner);
        // At once when built inside the runtime (the agent): a holder restarted while the
        // agent starts may need its start hook before any command comes.
        if tokio::runtime::Handle::try_current().is_ok() {
            inner.listen_relaunches();
        }
        Self { inner, workers: BTreeMap::new() }
    }
}

impl DataPlane for Executor {
    fn execute(&mut self, cmd: DataCommand, local: Option<PathBuf>, events: mpsc::UnboundedSender<DataEvent>) {
        self.inner.listen_relaunches();
        let volume = cmd.volume().to_string();
        let tx = self.workers.entry(volume).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
            let (inner, events) = (self.inner.clone(), events.clone());
            tokio::spawn(async move {
                while let Some((cmd, local)) = rx.recv().await {
                    inner.run(cmd, local, &events).await;
                }
            });
            tx
        });
        if let Err(mpsc::error::SendError((cmd, _))) = tx.send((cmd, local)) {
            warn!(command = format!("{cmd:?}").split([' ', '{', '(']).next().unwrap_or_default(), volume = %cmd.volume(), "volume worker is gone; command dropped");
        }
    }

    fn exposures(&self) -> Vec<super::ExposedClone> {
        self.inner.clones.exposures()
    }
}

impl Drop for Executor {
    /// Tears clone devices down while the agent stops, not whenever the runtime gets to
    /// dropping the last volume worker (a process killed after a grace period never would).
    fn drop(&mut self) {
        self.inner.clones.shutdown();
    }
}

impl Inner {
    async fn hook(&self, kind: HookKind, cmd: Option<String>, volume: &str, device: &Path) -> Result<(), String> {
        match cmd {
            Some(cmd) => run_hook(kind, &cmd, volume, device, &self.node, self.hook_timeout).await,
            None => Ok(()),
        }
    }

    /// Removes volume `id`'s written set (docs/return.md): a later return is a full move.
    fn forget_written(&self, id: &str) {
        let path = paths::clone_written(&self.pool, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                info!(volume = %id, path = %path.display(), "write tracking dropped: the volume is used outside its clone engine")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(volume = %id, path = %path.display(), "cannot drop write tracking: {e}"),
        }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.expect("data-plane task panicked")
    }

    async fn run(
        self: &Arc<Self>,
        cmd: DataCommand,
        local: Option<PathBuf>,
        events: &mpsc::UnboundedSender<DataEvent>,
    ) {
        let send = |ev| {
            let _ = events.send(ev);
        };
        match cmd {
            // The lease asks for the export only after `WorkloadStopped` of its epoch
            // (src/decide/lease/source.rs), so a failed hook never leads to an export.
            DataCommand::StopWorkload { volume, hook, epoch } => {
                let path = local.unwrap_or_default();
                match self.hook(HookKind::Stop, hook, &volume, &path).await {
                    Ok(()) => send(DataEvent::WorkloadStopped { volume, epoch }),
                    Err(reason) => {
                        warn!(%volume, "{reason}");
                        send(DataEvent::HookFailed { volume, reason });
                    }
                }
            }
            DataCommand::StartWorkload { volume, hook } => {
                // The hook uses the volume's file, not a clone engine: writes it is not told
                // of, so no written set may outlive this (docs/return.md).
                self.forget_written(&volume);
                let path = local.unwrap_or_default();
                if let Err(reason) = self.hook(HookKind::Start, hook, &volume, &path).await {
                    warn!(%volume, "{reason}");
                }
            }
            DataCommand::OpenExport { volume, holder, holder_addr, epoch } => {
                let Some(path) = local else {
                    let reason = format!("volume {volume} has no local path on {}", self.node);
                    return send(DataEvent::HookFailed { volume, reason });
                };
                // Before the export opens (the workload is stopped): what a return needs
                // (docs/return.md); the core publishes it with `exported: true`.
                let (clones, v) = (self.clones.clone(), volume.clone());
                let result = self.blocking(move || clones.written(&v)).await;
                send(DataEvent::Written { volume: volume.clone(), epoch, result });
                let grant = ExportGrant {
                    iqn: export_iqn(&self.node, &volume),
                    initiator_iqn: initiator_iqn(&holder, &volume, epoch),
                    volume: volume.to_string(),
                    path,
                    holder_addr,
                    epoch,
                };
                match self.exports.open(&grant) {
                    Ok(()) => {
                        info!(%volume, %holder, epoch, "export open");
                        send(DataEvent::ExportOpened { volume, epoch });
                    }
                    Err(reason) => {
                        warn!(%volume, "cannot open export: {reason}");
                        send(DataEvent::HookFailed { volume, reason: format!("export: {reason}") });
                    }
                }
            }
            DataCommand::CloseExport { volume } => self.exports.close(&volume),
            DataCommand::VerifyCopy { volume, epoch, digest } => {
                let result = match local {
                    Some(path) => {
                        let span = tracing::info_span!("verify", %volume, epoch);
                        self.blocking(move || span.in_scope(|| meshdrain_clone::digest::check_copy(&path, &digest)))
                            .await
                    }
                    None => Err(format!("volume {volume} has no local path on {} to verify against", self.node)),
                };
                if result.is_ok() {
                    info!(%volume, epoch, "verified: the holder read exactly the bytes held here");
                }
                send(DataEvent::Verified { volume, epoch, result });
            }
            DataCommand::DeleteData { volume } => {
                let (clones, v) = (self.clones.clone(), volume.clone());
                self.blocking(move || clones.release(&v)).await;
                let Some(path) = local else { return };
                if path.starts_with(&self.pool) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => info!(%volume, path = %path.display(), "handed-off copy deleted"),
                        Err(e) => warn!(%volume, path = %path.display(), "cannot delete handed-off copy: {e}"),
                    }
                } else {
                    info!(%volume, path = %path.display(), "handed off; a device outside the pool is left to the operator");
                }
            }
            DataCommand::PrepareClone { volume, export, epoch, size, rate_limit, verify, base, .. } => {
                let Some(export) = export else {
                    let reason = "the source published no export endpoint".to_owned();
                    return send(DataEvent::CloneFailed { volume, epoch, reason });
                };
                let spec = CloneSpec {
                    initiator_iqn: initiator_iqn(&self.node, &volume, epoch),
                    volume: volume.to_string(),
                    export,
                    epoch,
                    size,
                    dest: paths::volume_file(&self.pool, &volume),
                    metadata: paths::clone_metadata(&self.pool, &volume),
                    rate_limit,
                    verify,
                    base,
                };
                if !self.clones.tracks_writes() {
                    self.forget_written(&volume); // another backend's set: docs/return.md
                }
                let clones = self.clones.clone();
                let delta = matches!(spec.base, Some(crate::decide::returns::ReturnPlan::Delta { .. }));
                // docs/return.md: what is published is the mode the clone actually uses.
                let prepared = move || {
                    let device = clones.prepare(&spec)?;
                    Ok::<_, String>((device, delta.then(|| clones.delta_refused(&spec.volume)).flatten()))
                };
                match self.blocking(prepared).await {
                    Ok((device, refused)) => {
                        info!(%volume, device = %device.display(), "clone ready");
                        self.devices.lock().expect("device map lock").insert(volume.to_string(), device);
                        if let Some(reason) = refused {
                            send(DataEvent::ReturnFull { volume: volume.clone(), epoch, reason });
                        }
                        send(DataEvent::CloneReady { volume, epoch });
                    }
                    Err(reason) => send(DataEvent::CloneFailed { volume, epoch, reason }),
                }
            }
            DataCommand::StartHeldWorkload { volume, hook } => {
                let device = self.devices.lock().expect("device map lock").get(volume.as_str()).cloned();
                let Some(device) = device else {
                    warn!(%volume, "no clone device to start the workload on");
                    return;
                };
                let clones = self.clones.clone();
                let v = volume.clone();
                if let Err(e) = self.blocking(move || clones.start_hydration(&v)).await {
                    warn!(%volume, "cannot start hydration: {e}");
                }
                // The core re-issues StartHeldWorkload after every agent restart
                // (HolderVolume::on_restart). A clone adopted from a holder process that
                // kept serving across the restart still has the workload running on the
                // same device: starting it again would start a second instance
                // (docs/holder-process.md, "Adoption"). Hydration resumes either way.
                if self.clones.workload_running(&volume) {
                    info!(%volume, device = %device.display(), "workload already runs on the adopted clone device; start hook not run again");
                } else {
                    // Recorded only once it ran: a failed start is tried again after a restart.
                    match self.hook(HookKind::Start, hook.clone(), &volume, &device).await {
                        Ok(()) => self.clones.workload_started(&volume, hook.as_deref()),
                        Err(reason) => warn!(%volume, "{reason} (the move goes on: the data is safe on the clone)"),
                    }
                }
                let (inner, events) = (self.clone(), events.clone());
                tokio::spawn(async move { inner.report_progress(volume, events).await });
            }
            DataCommand::SetRateLimit { volume, rate_limit } => {
                let clones = self.clones.clone();
                self.blocking(move || clones.set_rate_limit(&volume, rate_limit)).await;
            }
            DataCommand::Finalize { volume, done_hook } => {
                let clones = self.clones.clone();
                let v = volume.clone();
                match self.blocking(move || clones.finalize(&v)).await {
                    Ok(digest) => {
                        self.devices.lock().expect("device map lock").remove(volume.as_str());
                        send(DataEvent::Finalized { volume: volume.clone(), digest });
                        let dest = paths::volume_file(&self.pool, &volume);
                        if let Err(reason) = self.hook(HookKind::Done, done_hook, &volume, &dest).await {
                            warn!(%volume, "{reason}");
                        }
                    }
                    Err(e) => warn!(%volume, "finalize failed (retried after a restart): {e}"),
                }
            }
            DataCommand::DeclareSourceLost { volume } => {
                let (clones, v) = (self.clones.clone(), volume.clone());
                let result = self.blocking(move || clones.source_lost(&v)).await;
                match &result {
                    Ok((missing, regions)) => {
                        warn!(%volume, missing, regions, "source lost: missing regions now fail with EIO")
                    }
                    Err(e) => warn!(%volume, "source lost, but the clone cannot stop waiting for it: {e}"),
                }
                send(DataEvent::SourceLost { volume, result });
            }
            DataCommand::AcceptPartial { volume } => {
                let (clones, v) = (self.clones.clone(), volume.clone());
                match self.blocking(move || clones.accept_partial(&v)).await {
                    Ok(()) => info!(%volume, "partial copy accepted: missing regions are zeros"),
                    Err(e) => warn!(%volume, "cannot accept the partial copy: {e}"),
                }
            }
            // docs/failures.md: a node declared lost that comes back keeps its copies aside.
            DataCommand::SetAside { volume, epoch, hook } => {
                let device = self.devices.lock().expect("device map lock").remove(volume.as_str());
                if let Some(device) = &device
                    && let Err(reason) = self.hook(HookKind::Stop, hook, &volume, device).await
                {
                    warn!(%volume, "{reason} (fenced: the copy is set aside anyway)");
                }
                // A holder process still serving this copy stops before it moves
                // (docs/holder-process.md).
                let (clones, v) = (self.clones.clone(), volume.clone());
                self.blocking(move || clones.release(&v)).await;
                let dest = local.unwrap_or_else(|| paths::volume_file(&self.pool, &volume));
                let aside = self.pool.join("aside");
                let moves = [(dest, "img"), (paths::clone_metadata(&self.pool, &volume), "clone-meta")];
                for (from, ext) in moves {
                    if !from.starts_with(&self.pool) || !from.exists() {
                        continue;
                    }
                    let to = aside.join(format!("{volume}.e{epoch}.{ext}"));
                    match std::fs::create_dir_all(&aside).and_then(|()| std::fs::rename(&from, &to)) {
                        Ok(()) => {
                            warn!(%volume, epoch, to = %to.display(), "fenced: copy set aside until `meshdrain gc`")
                        }
                        Err(e) => warn!(%volume, from = %from.display(), "cannot set the copy aside: {e}"),
                    }
                }
            }
            DataCommand::DeleteAside { volume, epoch } => {
                for ext in ["img", "clone-meta"] {
                    let path = self.pool.join("aside").join(format!("{volume}.e{epoch}.{ext}"));
                    match std::fs::remove_file(&path) {
                        Ok(()) => info!(%volume, epoch, path = %path.display(), "set-aside copy deleted (gc)"),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => warn!(%volume, path = %path.display(), "cannot delete the set-aside copy: {e}"),
                    }
                }
            }
            DataCommand::DiscardClone { volume } => {
                self.devices.lock().expect("device map lock").remove(volume.as_str());
                let (dest, metadata) =
                    (paths::volume_file(&self.pool, &volume), paths::clone_metadata(&self.pool, &volume));
                // Off the runtime thread: stopping a holder process waits for its teardown.
                let (clones, v) = (self.clones.clone(), volume.clone());
                self.blocking(move || clones.discard(&v, &dest, &metadata)).await;
                info!(%volume, "revoked partial clone discarded");
            }
        }
    }

    /// Follows the clone service's relaunches (once; later calls find them taken).
    fn listen_relaunches(self: &Arc<Self>) {
        if let Some(mut relaunched) = self.clones.relaunches() {
            let inner = self.clone();
            tokio::spawn(async move {
                while let Some(r) = relaunched.recv().await {
                    inner.relaunched(r).await;
                }
            });
        }
    }

    /// A holder process died and was restarted on a new device: the volume's commands
    /// use that one from now on, and a workload started on the old one is started again
    /// (the old device is gone with its holder).
    async fn relaunched(&self, r: Relaunched) {
        let Relaunched { volume, device, start_hook } = r;
        self.devices.lock().expect("device map lock").insert(volume.clone(), device.clone());
        let Some(hook) = start_hook else { return };
        warn!(%volume, device = %device.display(), "clone device replaced after its holder process died: running the start hook again");
        if let Err(reason) = self.hook(HookKind::Start, hook, &volume, &device).await {
            warn!(%volume, "{reason}");
        }
    }

    /// Reports hydration progress until every region is on the dest: every poll
    /// interval, and at once when the engine says the last region is in.
    async fn report_progress(&self, volume: VolumeId, events: mpsc::UnboundedSender<DataEvent>) {
        let mut watch = self.clones.watch_progress(&volume);
        loop {
            let Some(progress) = self.clones.progress(&volume) else { return };
            let done = progress.hydration.complete();
            let ev = DataEvent::Progress { volume: volume.clone(), progress };
            if events.send(ev).is_err() {
                return;
            }
            if done {
                let _ = events.send(DataEvent::Hydrated { volume });
                return;
            }
            match watch.as_mut() {
                Some(rx) => {
                    let all_in = rx.wait_for(|p| p.total > 0 && p.hydrated >= p.total);
                    let gone = matches!(tokio::time::timeout(self.poll, all_in).await, Ok(Err(_)));
                    if gone {
                        watch = None; // the engine is gone: polling finds out
                    }
                }
                None => tokio::time::sleep(self.poll).await,
            }
        }
    }
}

#[cfg(test)]
mod holder_tests;
#[cfg(test)]
mod tests;
