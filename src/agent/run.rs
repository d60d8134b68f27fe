//! Starting an agent: the shell around the owner loop. [`spawn`] is what tests call with
//! any chitchat transport; [`run_process`] is what `meshdrain agent` calls (UDP, control
//! socket, metrics, systemd notification, signals).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::transport::Transport;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::capacity::Capacity;
use super::metrics::Metrics;
use super::{Agent, AgentHandle, AgentSetup};
use crate::cluster::auth::{GossipKeys, Secret};
use crate::cluster::gossip::{ChitchatGossip, GossipGuard, GossipSettings, HealthHandle};
use crate::cluster::identity::{GossipMode, NameConflict};
use crate::cluster::transport::{GossipStats, GuardedTransport};
use crate::config::{AgentConfig, CloneEngineChoice, DataplaneBackend, OnShutdown, ResolvedAddrs};
use crate::dataplane::clone_process::{EngineTuning, ProcessClones};
use crate::dataplane::dm_clone::DmClones;
use crate::dataplane::executor::{CloneService, Executor};
use crate::dataplane::iscsi_export::IscsiExports;
use crate::dataplane::local_plane::{LocalClones, LocalExports};
use crate::dataplane::{DataPlane, NoDataPlane};
use crate::decide::core::CoreConfig;
use crate::decide::lease::Timing;
use crate::store::StateDir;

/// An agent running as tasks in this process.
pub struct RunningAgent {
    /// Talk to its owner loop.
    pub handle: AgentHandle,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its gossip trust state (mode, dropped datagrams, name conflicts).
    pub gossip: HealthHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningAgent {
    /// Stops it cleanly and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops it abruptly, as a crash would: no final writes, gossip just goes silent.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Starts gossip on `transport` and the owner loop, restoring state from `state_dir`.
pub async fn spawn(
    settings: &GossipSettings,
    setup: AgentSetup,
    state_dir: &Path,
    transport: &dyn Transport,
) -> anyhow::Result<RunningAgent> {
    spawn_guarded(settings, setup, state_dir, transport, GossipGuard::default()).await
}

/// [`spawn`] with a [`GossipGuard`] (mode and counters for `status`, the mesh name check).
pub async fn spawn_guarded(
    settings: &GossipSettings,
    setup: AgentSetup,
    state_dir: &Path,
    transport: &dyn Transport,
    guard: GossipGuard,
) -> anyhow::Result<RunningAgent> {
    let store = StateDir::open(state_dir)?;
    let gossip = ChitchatGossip::start_guarded(settings, transport, Vec::new(), guard).await?;
    let health = gossip.health_handle();
    let metrics = Arc::new(Metrics::new());
    let (agent, handle, commands) = Agent::new(setup, gossip, store, metrics.clone())?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(commands, async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    Ok(RunningAgent { handle, metrics, gossip: health, stop: Some(stop_tx), task })
}

/// Gossip settings from a validated config.
pub fn gossip_settings(config: &AgentConfig, addrs: &ResolvedAddrs) -> GossipSettings {
    GossipSettings {
        name: config.name.to_string(),
        generation: SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64),
        cluster_id: config.cluster_id.clone(),
        listen: addrs.gossip_listen,
        advertise: addrs.gossip_advertise,
        seeds: config.gossip.seeds.clone(),
        interval: config.gossip_interval(),
        phi_threshold: config.gossip.phi_threshold,
        dead_node_grace: Duration::from_secs(config.gossip.dead_node_grace_s),
    }
}

/// What bounds the room for incoming volumes: the configured capacity, else the pool's
/// filesystem (both re-read every tick, less the pool's own volumes).
fn capacity(config: &AgentConfig) -> Capacity {
    Capacity::for_pool(config.pool.capacity_bytes, config.pool_dir())
}

/// The iSCSI portal's caps: the crate's defaults unless `[dataplane]` sets them.
fn export_limits(config: &AgentConfig) -> meshdrain_iscsi::target::Limits {
    let mut limits = meshdrain_iscsi::target::Limits::default();
    if let Some(n) = config.dataplane.export_max_connections {
        limits.max_connections = n;
    }
    if let Some(n) = config.dataplane.export_max_connections_per_volume {
        limits.max_connections_per_export = n;
    }
    limits
}

/// The data plane the config asks for. `export_addr` is where this node's iSCSI portal
/// listens (its mesh address when a mesh runs).
async fn build_dataplane(config: &AgentConfig, export_addr: &str) -> anyhow::Result<Box<dyn DataPlane>> {
    let progress = Duration::from_millis(config.dataplane.progress_ms);
    Ok(match config.dataplane.backend {
        DataplaneBackend::None => Box::new(NoDataPlane),
        DataplaneBackend::Local => {
            let dir = config.dataplane.exports_dir.clone().expect("validated");
            let clones = LocalClones::new(&dir)
                .with_prepare_delay(Duration::from_millis(config.dataplane.test_prepare_delay_ms));
            let exports = Arc::new(LocalExports::new(&dir));
            Box::new(Executor::new(&config.name, &config.pool_dir(), exports, Arc::new(clones), progress))
        }
        DataplaneBackend::Iscsi => {
            let listen: std::net::SocketAddr =
                export_addr.parse().with_context(|| format!("export address {export_addr:?} is not ip:port"))?;
            let exports = IscsiExports::bind(listen, export_limits(config))
                .await
                .context("config key `dataplane.export_port`")?;
            let clones: Arc<dyn CloneService> = match pick_clone_engine(config.dataplane.clone)? {
                CloneEngineChoice::Dm => Arc::new(DmClones::new(config.dataplane.region_size)),
                _ => {
                    let d = &config.dataplane;
                    let per_read = d.clone_in_flight / d.clone_parallelism as u64 / d.region_size;
                    let tuning = EngineTuning {
                        region_size: d.region_size,
                        parallelism: d.clone_parallelism,
                        batch_regions: per_read.max(1) as usize,
                        read_through: d.clone_read_through,
                    };
                    // Holder processes outlive this agent (docs/holder-process.md); the
                    // ones an earlier agent process left running are adopted here.
                    let clones = ProcessClones::new(&config.run_dir(), tuning)
                        .with_context(|| format!("holder processes under {}", config.run_dir().display()))?
                        .with_expose(d.expose)
                        .map_err(anyhow::Error::msg)
                        .context("config key `dataplane.expose`")?;
                    Arc::new(clones.with_prepare_delay(Duration::from_millis(config.dataplane.test_prepare_delay_ms)))
                }
            };
            Box::new(Executor::new(&config.name, &config.pool_dir(), Arc::new(exports), clones, progress))
        }
    })
}

/// Picks the clone engine for `choice` on this node: an explicit `dm` first asks the
/// kernel for its modules, then any missing piece is an error naming it.
fn pick_clone_engine(choice: CloneEngineChoice) -> anyhow::Result<CloneEngineChoice> {
    if choice == CloneEngineChoice::Dm {
        // Best effort: loaded modules show under /sys/module, which is what counts.
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "-a", "dm-clone", "iscsi_tcp"])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let picked = resolve_clone_engine(choice, &kernel_clone_missing()).map_err(anyhow::Error::msg)?;
    info!(?choice, ?picked, "clone engine");
    Ok(picked)
}

/// What the kernel clone path (open-iscsi + dm-clone) needs that this node lacks.
fn kernel_clone_missing() -> Vec<&'static str> {
    let has = |p: &str| std::path::Path::new(p).exists();
    let mut missing = Vec::new();
    if !has("/sys/module/dm_clone") {
        missing.push("the dm-clone module (modprobe dm-clone)");
    }
    if !has("/sys/module/iscsi_tcp") {
        missing.push("the iscsi_tcp module (modprobe iscsi_tcp)");
    }
    if !has("/dev/mapper/control") {
        missing.push("device-mapper (/dev/mapper/control)");
    }
    if crate::host::find_program("iscsiadm").is_none() {
        missing.push("open-iscsi's iscsiadm (apt-get install open-iscsi)");
    }
    missing
}

/// `auto` takes dm-clone only when nothing of the kernel path is `missing`, else our
/// userspace engine; `dm` with something missing is refused, naming it, rather than
/// failing at the first move.
fn resolve_clone_engine(choice: CloneEngineChoice, missing: &[&str]) -> Result<CloneEngineChoice, String> {
    match choice {
        CloneEngineChoice::Auto if missing.is_empty() => Ok(CloneEngineChoice::Dm),
        CloneEngineChoice::Auto => Ok(CloneEngineChoice::Userspace),
        CloneEngineChoice::Dm if !missing.is_empty() => Err(format!(
            "config key `dataplane.clone` is \"dm\" but this node lacks {}: provide them, or set clone = \"auto\" (dm-clone where the node has it, else the userspace engine)",
            missing.join(", ")
        )),
        c => Ok(c),
    }
}

/// Runs `meshdrain agent` until `shutdown` resolves.
pub async fn run_process(
    config: AgentConfig,
    addrs: ResolvedAddrs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The secret first: a bad one stops the agent before it touches anything.
    let keys = gossip_keys(&config)?;
    // The mesh comes first: gossip and the export bind the mesh address it brings up.
    let mesh = super::mesh::start(&config, &addrs)?;
    let mode = gossip_mode(mesh.mesh_addr.is_some(), keys.is_some(), &addrs);
    if mode == GossipMode::Insecure {
        warn!(
            advertise = %addrs.gossip_advertise,
            "gossip is NOT authenticated (gossip.insecure = true): anyone who can reach this address can drain nodes; \
             set gossip.secret_file or run a mesh"
        );
    } else {
        info!(?mode, "gossip protection");
    }
    let stats = Arc::new(GossipStats::default());
    let transport = GuardedTransport::new(keys, stats.clone());
    let guard = GossipGuard { mode, stats, name_check: mesh.name_check.clone() };
    let addrs = mesh.addrs.clone();
    let core_config = CoreConfig {
        name: config.name.clone(),
        labels: config.labels.clone(),
        free_bytes: 0,
        data_plane: config.dataplane.backend != DataplaneBackend::None,
        gossip_addr: addrs.gossip_advertise,
        mesh_addr: mesh.mesh_addr.map(|a| a.to_string()),
        mesh_backend: Some(mesh.backend.clone()),
        export_addr: std::net::SocketAddr::new(addrs.gossip_advertise.ip(), config.dataplane.export_port).to_string(),
        // `[gc] retention` (validated as a duration when the config loaded).
        timing: Timing {
            retention_ms: config.gc.retention().map_or(24 * 3600 * 1000, |d| d.as_millis() as u64),
            // `[lease] node_lost_after` (docs/failures.md), off unless set.
            node_lost_after_ms: config.lease.node_lost_after().map(|d| d.as_millis() as u64),
            ..Timing::for_interval(config.gossip.interval_ms)
        },
        wireguard: None,
    };
    let mut settings = gossip_settings(&config, &addrs);
    settings.seeds.extend(mesh.gossip_seeds);
    let listener = crate::control::server::bind(&config.control.socket).await?;
    let dataplane = build_dataplane(&config, &core_config.export_addr).await?;
    info!(backend = ?config.dataplane.backend, "data plane");
    let setup = AgentSetup {
        config: core_config,
        interval: settings.interval,
        pool_dir: config.pool_dir(),
        dataplane,
        mesh: mesh.port,
        capacity: capacity(&config),
    };
    let agent = spawn_guarded(&settings, setup, &config.state_dir, &transport, guard)
        .await
        .with_context(|| format!("starting agent {}", config.name))?;
    let metrics_task = match addrs.metrics_listen {
        Some(addr) => {
            let l = super::metrics::bind(addr)
                .await
                .with_context(|| format!("config key `metrics.listen`: cannot bind {addr}"))?;
            info!(%addr, "metrics at http://{addr}/metrics");
            Some(tokio::spawn(super::metrics::serve(l, agent.metrics.clone())))
        }
        None => None,
    };
    let (ctl_stop_tx, ctl_stop_rx) = oneshot::channel::<()>();
    let control = tokio::spawn(crate::control::server::serve(listener, agent.handle.clone(), async move {
        let _ = ctl_stop_rx.await;
    }));
    info!(
        node = %config.name,
        gossip = %addrs.gossip_listen,
        control = %config.control.socket.display(),
        "agent running"
    );
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("gossiping")]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| tokio::spawn(watchdog(agent.handle.clone(), every)));
    let newcomer = tokio::select! {
        _ = shutdown => None,
        c = newcomer_conflict(agent.gossip.clone(), settings.interval) => Some(c),
    };
    // docs/drain-on-shutdown.md: everything stays up (and the watchdog petted) while the
    // node drains itself; only a machine going down drains, not an agent restart.
    if newcomer.is_none()
        && config.drain.on_shutdown == OnShutdown::SelfNode
        && let Some(bound) = config.drain.shutdown_deadline()
    {
        if super::shutdown::probe().await {
            notify(&[sd_notify::NotifyState::Status("draining before shutdown")]);
            super::shutdown::drain_self(&agent.handle, &config.name, bound).await;
        } else {
            info!("the machine is not shutting down (an agent restart): stopping without draining");
        }
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("shutting down");
    notify(&[sd_notify::NotifyState::Stopping]);
    let _ = ctl_stop_tx.send(());
    let _ = control.await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    agent.stop().await;
    let _ = std::fs::remove_file(&config.control.socket);
    match newcomer {
        None => Ok(()),
        Some(c) => Err(anyhow::anyhow!(
            "another live agent named {} runs at {} (generation {}); this agent started later and refuses to run \
             as the same node: give one of them another `name` in its config",
            c.name,
            c.gossip_addr,
            c.generation
        )),
    }
}

/// The fleet secret(s) from `[gossip]`, or none.
fn gossip_keys(config: &AgentConfig) -> anyhow::Result<Option<GossipKeys>> {
    let Some(path) = &config.gossip.secret_file else { return Ok(None) };
    let current = Secret::load(path).context("config key `gossip.secret_file`")?;
    let previous = match &config.gossip.secret_file_previous {
        Some(p) => Some(Secret::load(p).context("config key `gossip.secret_file_previous`")?),
        None => None,
    };
    Ok(Some(GossipKeys::new(current, previous, &config.cluster_id)))
}

/// How gossip is protected, from what runs (config validation refused the unprotected
/// cases that are not `insecure = true`).
fn gossip_mode(mesh: bool, secret: bool, addrs: &ResolvedAddrs) -> GossipMode {
    match (mesh, secret) {
        (true, true) => GossipMode::MeshHmac,
        (true, false) => GossipMode::Mesh,
        (false, true) => GossipMode::Hmac,
        (false, false) if addrs.gossip_listen.ip().is_loopback() && addrs.gossip_advertise.ip().is_loopback() => {
            GossipMode::Loopback
        }
        (false, false) => GossipMode::Insecure,
    }
}

/// Resolves once gossip shows a live agent with this node's name elsewhere that started
/// before this one (src/cluster/identity.rs): this agent is the newcomer and must stop.
async fn newcomer_conflict(health: HealthHandle, every: Duration) -> NameConflict {
    loop {
        tokio::time::sleep(every).await;
        if let Some(c) = health.health().conflicts.into_iter().find(|c| c.we_are_newcomer) {
            return c;
        }
    }
}

/// Pets systemd's watchdog (`WatchdogSec=` in the unit) only while the owner loop answers:
/// a wedged loop (a blocking call where none may be) gets the agent restarted rather than
/// left gossiping as if it were making decisions.
async fn watchdog(handle: crate::agent::AgentHandle, every: Duration) {
    let period = every / 2;
    loop {
        tokio::time::sleep(period).await;
        match tokio::time::timeout(period, handle.status()).await {
            Ok(Ok(_)) => notify(&[sd_notify::NotifyState::Watchdog]),
            _ => {
                warn!(waited = %humantime::format_duration(period), "the owner loop did not answer; not petting the systemd watchdog")
            }
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_dm_clone_only_with_the_whole_kernel_path_and_dm_names_what_is_missing() {
        let all: &[&str] = &[];
        let no_iscsiadm = &["open-iscsi's iscsiadm (apt-get install open-iscsi)"];
        assert_eq!(resolve_clone_engine(CloneEngineChoice::Auto, all), Ok(CloneEngineChoice::Dm));
        assert_eq!(resolve_clone_engine(CloneEngineChoice::Auto, no_iscsiadm), Ok(CloneEngineChoice::Userspace));
        assert_eq!(resolve_clone_engine(CloneEngineChoice::Userspace, all), Ok(CloneEngineChoice::Userspace));
        assert_eq!(resolve_clone_engine(CloneEngineChoice::Dm, all), Ok(CloneEngineChoice::Dm));
        let err = resolve_clone_engine(CloneEngineChoice::Dm, no_iscsiadm).unwrap_err();
        assert!(
            err.starts_with("config key `dataplane.clone` is \"dm\" but this node lacks open-iscsi's iscsiadm"),
            "{err}"
        );
        assert!(err.contains("set clone = \"auto\""), "{err}");
    }
}
