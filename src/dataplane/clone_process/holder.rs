//! The holder process (`meshdrain clone hold --spec <file>`): one userspace clone in a
//! process of its own, so the agent can restart without taking the workload's device
//! with it (docs/holder-process.md). It logs in to the source, opens or resumes the
//! engine from its metadata, exposes it (FUSE file + loop device), and serves the
//! agent's requests on a unix socket until told to stop. After hand-off it goes on
//! serving the device as a passthrough to the dest file, which is the volume then.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshdrain_clone::digest::VolumeDigest;
use meshdrain_clone::exposure::{self, Chosen, ExposeKind, ExposeOptions, Exposure};
use meshdrain_clone::{
    BlockSource, CloneError, Engine, EngineConfig, FileDest, FileMeta, ReconnectingSource, UserspaceClone,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{info, warn};

use super::protocol::{HolderFiles, HolderSpec, HolderState, MAX_REQUEST, PROTOCOL, Reply, Request, write_json};
use super::returning::OverKept;
use crate::dataplane::remove_files;

/// Connections served at once (the agent uses two or three).
const MAX_CONNECTIONS: usize = 16;
/// The log is rotated to `.log.1` past this size (so a holder's logs take at most twice it).
const LOG_CAP: u64 = 8 << 20;

/// One running clone.
struct Holder {
    spec: HolderSpec,
    files: HolderFiles,
    engine: Arc<Engine>,
    /// The source as read (`None`: handed off before this process started).
    source: Option<Arc<ReconnectingSource>>,
    exposed: Mutex<Option<Exposure>>,
    hydration: Mutex<Option<UserspaceClone>>,
    state: Mutex<HolderState>,
    /// The finalize answer once hand-off ran in this process (finalize is idempotent).
    finalized: Mutex<Option<Option<String>>>,
    stop: tokio::sync::Notify,
    /// Set by `exit_keeping_device`: exit leaving the device to the next holder.
    keep_device: std::sync::atomic::AtomicBool,
}

/// Runs the holder of the spec at `spec_path` until a `stop` request or SIGTERM/SIGINT.
/// Errors say why it could not start (also written to its state file for the agent).
pub async fn run(spec_path: &Path) -> Result<(), String> {
    // Our own session and process group: signals sent to the agent's group (a terminal's
    // ^C, a supervisor killing the group) do not reach us. Fails only for a group leader
    // (run by hand from a shell), which is then already on its own.
    let _ = nix::unistd::setsid();
    let spec: HolderSpec =
        super::protocol::read_json(spec_path).map_err(|e| format!("holder spec {}: {e}", spec_path.display()))?;
    let dir = spec_path.parent().unwrap_or(Path::new("."));
    let files = HolderFiles::new(dir, &spec.clone_spec.volume);
    tokio::spawn(rotate_log(files.log.clone()));
    let previous: HolderState = super::protocol::read_json(&files.state).unwrap_or_default();
    let handed_off = previous.handed_off && previous.epoch == spec.clone_spec.epoch;
    let mut state =
        HolderState { pid: std::process::id(), epoch: spec.clone_spec.epoch, handed_off, ..Default::default() };
    state.source_size = previous.source_size;
    // docs/exposures.md: the device a killed predecessor served is reconfigured, not replaced.
    if previous.epoch == spec.clone_spec.epoch {
        (state.exposure, state.nbd_index) = (previous.exposure, previous.nbd_index);
        state.return_full = previous.return_full; // docs/return.md: the full clone it resumes
    }
    let _ = write_json(&files.state, &state);
    let opened = {
        let (spec, state) = (spec.clone(), state.clone());
        tokio::task::spawn_blocking(move || open(&spec, state)).await.map_err(|e| e.to_string())?
    };
    let (engine, source, exposed, state) = match opened {
        Ok(o) => o,
        Err(e) => {
            state.error = Some(e.clone());
            let _ = write_json(&files.state, &state);
            return Err(e);
        }
    };
    let holder = Arc::new(Holder {
        spec,
        files,
        engine,
        source,
        exposed: Mutex::new(Some(exposed)),
        hydration: Mutex::new(None),
        state: Mutex::new(state),
        finalized: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
        keep_device: std::sync::atomic::AtomicBool::new(false),
    });
    let served = holder.serve().await;
    let h = holder.clone();
    let _ = tokio::task::spawn_blocking(move || h.teardown()).await;
    served
}

/// What [`open`] brings up: the engine, the source it reads (none once handed off), the
/// exposed device and the state to publish.
type Opened = (Arc<Engine>, Option<Arc<ReconnectingSource>>, Exposure, HolderState);

/// Logs in (unless handed off), opens the engine and exposes it. Blocking.
fn open(spec: &HolderSpec, mut state: HolderState) -> Result<Opened, String> {
    let cfg = EngineConfig {
        region_size: spec.region_size,
        epoch: spec.clone_spec.epoch,
        rate_limit: spec.clone_spec.rate_limit,
        parallelism: spec.parallelism,
        batch_regions: spec.batch_regions,
        read_through: spec.read_through,
        ..Default::default()
    };
    let (source, reading): (Arc<dyn BlockSource>, _) = if state.handed_off {
        // The dest is the volume: the source is never read again (it may be gone).
        let size = if state.source_size > 0 { state.source_size } else { spec.clone_spec.size };
        (Arc::new(HandedOff { identity: spec.clone_spec.export.iqn.clone(), size }), None)
    } else {
        let digest = spec.clone_spec.verify.then(|| VolumeDigest::new(spec.clone_spec.size, spec.region_size));
        let s = ReconnectingSource::connect(
            &spec.clone_spec.export.addr,
            &spec.clone_spec.export.iqn,
            &spec.clone_spec.initiator_iqn,
            digest,
        )
        .map_err(|e| e.to_string())?;
        if s.size() < spec.clone_spec.size {
            return Err(format!(
                "export {} is {} bytes, the lease says {}",
                spec.clone_spec.export.iqn,
                s.size(),
                spec.clone_spec.size
            ));
        }
        state.source_size = s.size();
        let s = Arc::new(s);
        (s.clone(), Some(s))
    };
    // A return over the copy kept here (docs/return.md), else the ordinary clone.
    let engine = match super::returning::open_over_kept(spec, &source, &cfg, reading.as_deref())? {
        OverKept::Opened(engine) => engine,
        OverKept::NotDelta => open_engine(spec, source, cfg)?,
        OverKept::Refused(why) => {
            state.return_full = Some(why); // the agent publishes it (docs/return.md)
            open_engine(spec, source, cfg)?
        }
    };
    std::thread::sleep(Duration::from_millis(spec.prepare_delay_ms));
    let chosen = choose_exposure(spec.expose, state.exposure)?;
    if chosen == Chosen::FuseLoop {
        clear_stale_mount(&spec.mountpoint);
    }
    let opts = ExposeOptions {
        mountpoint: spec.mountpoint.clone(),
        symlink: Some(spec.link.clone()),
        nbd_index: state.nbd_index.filter(|_| state.exposure == Some(Chosen::Nbd)),
        backend: meshdrain_clone::nbd::backend_of(&spec.clone_spec.dest),
    };
    let exposed = Exposure::start(chosen, engine.clone(), &opts).map_err(|e| e.to_string())?;
    state.device = exposed.device().to_owned();
    (state.exposure, state.nbd_index, state.reattached) = (Some(chosen), exposed.nbd_index(), exposed.reattached());
    Ok((engine, reading, exposed, state))
}

/// The exposure for `kind` on this kernel (docs/exposures.md): under `auto`, a holder
/// restarted after a kill keeps its predecessor's exposure while the kernel has it, so
/// it takes over the same device instead of choosing anew.
fn choose_exposure(kind: ExposeKind, before: Option<Chosen>) -> Result<Chosen, String> {
    let probe = exposure::probe();
    let available = |c: Chosen| match c {
        Chosen::Ublk => probe.ublk,
        Chosen::Nbd => probe.nbd,
        Chosen::FuseLoop => probe.fuse,
    };
    match before {
        Some(c) if kind == ExposeKind::Auto && available(c) => Ok(c),
        _ => exposure::choose(kind, probe).map_err(|e| e.to_string()),
    }
}

/// Creates the clone, or resumes it from its metadata; a partial clone of an older lease
/// is started over (it was revoked: its bytes may be behind).
fn open_engine(spec: &HolderSpec, source: Arc<dyn BlockSource>, cfg: EngineConfig) -> Result<Arc<Engine>, String> {
    for attempt in 0..2 {
        if let Some(dir) = spec.clone_spec.dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let dest = FileDest::open(&spec.clone_spec.dest, spec.clone_spec.size)
            .map_err(|e| format!("dest {}: {e}", spec.clone_spec.dest.display()))?;
        // No metadata yet: this lease's clone starts here, deliberately. Metadata that
        // exists is resumed or refused (never taken for a new clone: the workload may
        // have written to the dest), see meshdrain_clone::metadata.
        let created = !spec.clone_spec.metadata.exists();
        let opened = if !created {
            let meta = FileMeta::open(&spec.clone_spec.metadata)
                .map_err(|e| format!("metadata {}: {e}", spec.clone_spec.metadata.display()))?;
            Engine::open(source.clone(), Box::new(dest), Box::new(meta), cfg.clone())
        } else {
            let meta = FileMeta::create(&spec.clone_spec.metadata)
                .map_err(|e| format!("metadata {}: {e}", spec.clone_spec.metadata.display()))?;
            Engine::create(source.clone(), Box::new(dest), Box::new(meta), cfg.clone())
        };
        match opened {
            Ok(engine) => {
                super::returning::track(spec, &engine, created); // write tracking, docs/return.md
                return Ok(engine);
            }
            Err(CloneError::ForeignMetadata { found_epoch, .. }) if attempt == 0 => {
                info!(volume = %spec.clone_spec.volume, found_epoch, "clone metadata of another lease: starting over");
                remove_files(&spec.clone_spec.volume, &[&spec.clone_spec.dest, &spec.clone_spec.metadata]);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("cannot open a clone of {}", spec.clone_spec.volume))
}

/// Clears what a dead holder left at `mountpoint`: loop devices over its FUSE file and
/// the dead mount itself (lazily, so a workload still holding it does not block us).
pub(crate) fn clear_stale_mount(mountpoint: &Path) {
    for dev in meshdrain_clone::loopdev::backed_under(mountpoint) {
        let _ = meshdrain_clone::loopdev::detach(&dev);
        info!(dev = %dev.display(), "detached a loop device left by an earlier run");
    }
    let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
}

/// The source of a clone handed off before this process started: the engine opens
/// complete metadata without reading it; any read would be a bug, and fails.
struct HandedOff {
    identity: String,
    size: u64,
}

impl BlockSource for HandedOff {
    fn size(&self) -> u64 {
        self.size
    }
    fn identity(&self) -> String {
        self.identity.clone()
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("handed off: the source is no longer read"))
    }
}

impl Holder {
    /// Accepts the agent's connections until `stop` or a termination signal.
    async fn serve(self: &Arc<Self>) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let socket = &self.files.socket;
        let _ = std::fs::remove_file(socket);
        let listener =
            tokio::net::UnixListener::bind(socket).map_err(|e| format!("control socket {}: {e}", socket.display()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("control socket {}: {e}", socket.display()))?;
        let state = self.state.lock().expect("state lock").clone();
        write_json(&self.files.state, &state).map_err(|e| format!("{}: {e}", self.files.state.display()))?;
        let exposure = state.exposure.map(Chosen::as_str).unwrap_or("-"); // docs/exposures.md
        info!(volume = %self.spec.clone_spec.volume, epoch = self.spec.clone_spec.epoch, device = %state.device.display(), exposure, reattached = state.reattached, handed_off = state.handed_off, "holder serving");
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("SIGTERM handler: {e}"))?;
        loop {
            tokio::select! {
                _ = self.stop.notified() => {
                    info!(volume = %self.spec.clone_spec.volume, "stop requested");
                    break;
                }
                _ = term.recv() => {
                    warn!(volume = %self.spec.clone_spec.volume, "SIGTERM: tearing the clone device down (the agent restarts it from its metadata)");
                    break;
                }
                _ = tokio::signal::ctrl_c() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        warn!("too many connections to the holder socket; one refused");
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.connection(stream).await;
                        drop(permit);
                    });
                }
            }
        }
        let _ = std::fs::remove_file(socket);
        Ok(())
    }

    /// One connection: requests in, replies out, until it closes or a line is bad.
    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = tokio::io::BufReader::new(rd);
        loop {
            let mut line = Vec::new();
            match (&mut rd).take(MAX_REQUEST + 1).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() != Some(&b'\n') => {
                    let _ = send(&mut wr, &Reply::err(format!("request line over {MAX_REQUEST} bytes"))).await;
                    return;
                }
                Ok(_) => {}
            }
            let req: Request = match serde_json::from_slice(&line[..line.len() - 1]) {
                Ok(r) => r,
                Err(e) => {
                    if send(&mut wr, &Reply::err(format!("bad request: {e}"))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if req == Request::Watch {
                self.watch(&mut wr).await;
                return;
            }
            let me = self.clone();
            let ends = matches!(req, Request::Stop | Request::ExitKeepingDevice);
            let reply = tokio::task::spawn_blocking(move || me.handle(req))
                .await
                .unwrap_or_else(|e| Reply::err(format!("holder task failed: {e}")));
            let stop = ends && reply.ok;
            if send(&mut wr, &reply).await.is_err() {
                return;
            }
            if stop {
                self.stop.notify_one();
                return;
            }
        }
    }

    /// Streams progress until the agent hangs up (a write fails): every change, and a
    /// line at least every second so a gone reader is noticed.
    async fn watch(&self, wr: &mut tokio::net::unix::OwnedWriteHalf) {
        loop {
            let rx = self.hydration.lock().expect("hydration lock").as_ref().map(|h| h.subscribe());
            let Some(mut rx) = rx else {
                if send(wr, &Reply::ok()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            loop {
                let progress = rx.borrow_and_update().clone();
                if send(wr, &Reply { progress: Some(progress), ..Reply::ok() }).await.is_err() {
                    return;
                }
                // An ended hydration (its sender dropped): wait for the next one.
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await {
                    break;
                }
            }
        }
    }

    /// Carries out one request (blocking).
    fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Hello => {
                let state = self.state.lock().expect("state lock").clone();
                Reply { protocol: Some(PROTOCOL), state: Some(state), ..Reply::ok() }
            }
            Request::Progress => Reply { progress: self.progress(), ..Reply::ok() },
            Request::Hydrate => {
                let mut h = self.hydration.lock().expect("hydration lock");
                let h = h.get_or_insert_with(|| {
                    info!(volume = %self.spec.clone_spec.volume, "hydration started");
                    UserspaceClone::start(self.engine.clone())
                });
                Reply { progress: Some(h.progress()), ..Reply::ok() }
            }
            Request::Rate { rate } => {
                if let Some(h) = self.hydration.lock().expect("hydration lock").as_ref() {
                    h.set_rate_limit(rate);
                }
                Reply::ok()
            }
            Request::Finalize => match self.finalize() {
                Ok(digest) => Reply { digest, ..Reply::ok() },
                Err(e) => Reply::err(e),
            },
            // docs/failures.md: not persisted by the engine; the agent tells a
            // restarted holder again (clone_process::resume).
            Request::SourceLost => {
                let lost = self.engine.declare_source_lost();
                Reply { regions: Some((lost.missing_regions, lost.total_regions)), ..Reply::ok() }
            }
            Request::AcceptPartial => match self.engine.accept_partial() {
                Ok(_) => Reply::ok(),
                Err(e) => Reply::err(e.to_string()),
            },
            Request::Written => super::returning::reply(&self.spec, &self.engine), // docs/return.md
            Request::Stop => Reply::ok(),
            Request::ExitKeepingDevice => {
                let exposed = self.exposed.lock().expect("exposed lock");
                match exposed.as_ref() {
                    Some(x) if x.can_hand_over() => {
                        self.keep_device.store(true, std::sync::atomic::Ordering::Release);
                        Reply::ok()
                    }
                    Some(x) => Reply::err(format!(
                        "{} is exposed through FUSE + loop, whose device ends with this process: the next holder cannot take it over (move the volume instead)",
                        x.device().display()
                    )),
                    None => Reply::err("no device is exposed"),
                }
            }
            Request::Watch => Reply::err("watch is a stream"),
        }
    }

    fn progress(&self) -> Option<meshdrain_clone::Progress> {
        self.hydration.lock().expect("hydration lock").as_ref().map(|h| h.progress())
    }

    /// Commits, hands off, completes the digest, then logs out of the source: a planned
    /// close, so the source closing its export afterwards finds no session to drop.
    fn finalize(&self) -> Result<Option<String>, String> {
        if let Some(done) = self.finalized.lock().expect("finalize lock").clone() {
            return Ok(done);
        }
        let Some(source) = &self.source else {
            return Ok(None); // handed off before this process started
        };
        self.engine.commit(true).map_err(|e| e.to_string())?;
        if !self.engine.try_handoff().map_err(|e| e.to_string())? {
            return Err(format!("{} is not fully hydrated", self.spec.clone_spec.volume));
        }
        let digest = source.finish_digest().map_err(|e| e.to_string())?;
        source.log_out();
        let state = {
            let mut s = self.state.lock().expect("state lock");
            s.handed_off = true;
            s.clone()
        };
        if let Err(e) = write_json(&self.files.state, &state) {
            warn!(volume = %self.spec.clone_spec.volume, "cannot record the hand-off in {}: {e}", self.files.state.display());
        }
        *self.finalized.lock().expect("finalize lock") = Some(digest.clone());
        Ok(digest)
    }

    /// Final commit and device teardown on the way out; after `exit_keeping_device`,
    /// [`Holder::leave`] instead.
    fn teardown(&self) {
        if self.keep_device.load(std::sync::atomic::Ordering::Acquire) {
            self.leave();
        }
        if let Some(h) = self.hydration.lock().expect("hydration lock").take()
            && let Err(e) = h.stop()
        {
            warn!("final commit of a stopped clone: {e}");
        }
        if let Some(x) = self.exposed.lock().expect("exposed lock").take()
            && let Err(e) = x.stop()
        {
            warn!("tearing down a clone device: {e}");
        }
        info!(volume = %self.spec.clone_spec.volume, "holder stopped; clone device torn down");
    }

    /// Exits leaving the device to the next holder. The engine is never stopped: until
    /// this process ends, the workload's requests are answered (a stopped engine would
    /// fail them with EIO), and a flush still commits. A final commit first makes
    /// durable what is on the dest; hydration runs on until the exit, like a kill.
    fn leave(&self) -> ! {
        if let Err(e) = self.engine.commit(true) {
            warn!("final commit before leaving the device: {e}");
        }
        // Not stopped on drop: that would stop the engine under the workload.
        std::mem::forget(self.hydration.lock().expect("hydration lock").take());
        if let Some(x) = self.exposed.lock().expect("exposed lock").take() {
            let device = x.device().to_owned();
            if let Err(e) = x.leave() {
                warn!(device = %device.display(), "leaving the clone device: {e}");
            }
            info!(volume = %self.spec.clone_spec.volume, device = %device.display(), "holder exiting; its device is left for the next holder");
        }
        std::process::exit(0)
    }
}

async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    wr.write_all(&line).await
}

/// Keeps the holder's log (its stderr) under [`LOG_CAP`]: past it, the file moves to
/// `.log.1` (replacing the previous one) and stderr goes to a fresh file.
async fn rotate_log(log: std::path::PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) <= LOG_CAP {
            continue;
        }
        let _ = std::fs::rename(&log, log.with_extension("log.1"));
        let fresh = open_log(&log);
        match fresh {
            Ok(f) => {
                if let Err(e) = nix::unistd::dup2_stderr(&f) {
                    warn!("cannot rotate the holder log: {e}");
                }
            }
            Err(e) => warn!("cannot open a fresh holder log {}: {e}", log.display()),
        }
    }
}

/// Opens (appending, mode 0600) a holder's log file.
pub(crate) fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log)
}
