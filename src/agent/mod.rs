//! The agent's one owner loop (crucible's upstairs pattern): a single task owns the
//! [`Core`](crate::decide::core::Core); gossip ticks, control requests and data-plane events come in as
//! messages; the core decides; this loop persists, publishes and hands work to the data
//! plane. Nothing else writes gossip keys or the state dir.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::cluster::gossip::Gossip;
use crate::cluster::view::ClusterView;
use crate::control::metrics::Metrics;
use crate::control::protocol::{ActionReport, NewVolume, PlanLine, StatusReport, VolumeStatus};
use crate::decide::model::NodeName;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;
use crate::store::volumes::{self, LocalVolume, VolumeTable};
use crate::store::{StateDir, StoreError};

pub mod capacity;
pub mod dataplane;
pub mod hooks;
pub mod mesh;
pub mod meshport;
pub mod report;
pub mod run;

use self::dataplane::DataPlane;
use self::dataplane::real::SharedVolumes;
use self::meshport::MeshPort;
use crate::decide::core::{Core, CoreConfig, CoreState, DataEvent, Output};

/// File name of the agent's durable document in the state dir.
pub const STATE_FILE: &str = "agent.json";

/// Messages to the owner loop.
#[derive(Debug)]
pub enum Command {
    /// Report every node known.
    Status(oneshot::Sender<StatusReport>),
    /// Apply or publish a node action.
    NodeAction {
        /// Target node.
        node: NodeName,
        /// Action.
        action: NodeAction,
        /// Publish even for a node gossip does not know.
        force: bool,
        /// How to drain (with `drain`).
        options: DrainOptions,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<ActionReport, String>>,
    },
    /// The placement a drain of `node` would get now (`drain --dry-run`).
    Plan {
        /// The node to drain.
        node: NodeName,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<PlanLine>>,
    },
    /// Register a volume owned by this node (a new sparse file, or an existing path).
    AddVolume(NewVolume, oneshot::Sender<Result<String, String>>),
    /// Every volume of the fleet.
    Volumes(oneshot::Sender<Vec<VolumeStatus>>),
    /// Delete handed-off copies now.
    Gc(oneshot::Sender<()>),
    /// The mesh's peers (JSON from the mesh backend).
    MeshStatus(oneshot::Sender<serde_json::Value>),
}

/// A cheap, cloneable way to talk to the owner loop.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
}

impl AgentHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks for a status report; `None` if the agent stopped.
    pub async fn status(&self) -> Option<StatusReport> {
        self.ask(Command::Status).await
    }

    /// Requests a node action.
    pub async fn node_action(&self, node: &NodeName, action: NodeAction, force: bool) -> Result<ActionReport, String> {
        self.node_action_with(node, action, force, DrainOptions::default()).await
    }

    /// Requests a node action with drain options.
    pub async fn node_action_with(
        &self,
        node: &NodeName,
        action: NodeAction,
        force: bool,
        options: DrainOptions,
    ) -> Result<ActionReport, String> {
        let node = node.clone();
        self.ask(|reply| Command::NodeAction { node, action, force, options, reply })
            .await
            .unwrap_or_else(|| Err("the agent is shutting down".to_owned()))
    }

    /// Registers a volume owned by this node: a new sparse file of `size` bytes in the
    /// pool, or the existing `path`.
    pub async fn add_volume(&self, new: NewVolume) -> Result<String, String> {
        self.ask(|reply| Command::AddVolume(new, reply))
            .await
            .unwrap_or_else(|| Err("the agent is shutting down".to_owned()))
    }

    /// The placement a drain of `node` would get now.
    pub async fn plan(&self, node: &NodeName) -> Option<Vec<PlanLine>> {
        let node = node.clone();
        self.ask(|reply| Command::Plan { node, reply }).await
    }

    /// Every volume of the fleet as gossip shows it.
    pub async fn volumes(&self) -> Option<Vec<VolumeStatus>> {
        self.ask(Command::Volumes).await
    }

    /// The mesh's view of its peers.
    pub async fn mesh_status(&self) -> Option<serde_json::Value> {
        self.ask(Command::MeshStatus).await
    }

    /// Deletes handed-off copies on this node now.
    pub async fn gc(&self) -> Option<()> {
        self.ask(Command::Gc).await
    }
}

/// What an agent is made of besides its gossip and state dir.
pub struct AgentSetup {
    /// Decision settings.
    pub config: CoreConfig,
    /// Gossip round interval (the tick).
    pub interval: Duration,
    /// Where new and incoming volumes live.
    pub pool_dir: PathBuf,
    /// Where data-plane commands go.
    pub dataplane: Box<dyn DataPlane>,
    /// Local volume paths, shared with the data plane.
    pub shared_volumes: SharedVolumes,
    /// The WireGuard mesh (or none).
    pub mesh: Box<dyn MeshPort>,
    /// What bounds the room for incoming volumes (re-read every tick).
    pub capacity: capacity::Capacity,
}

/// The owner loop's state.
pub struct Agent<G: Gossip> {
    core: Core,
    gossip: G,
    store: StateDir,
    view: ClusterView,
    interval: Duration,
    heartbeats: HashMap<String, (u64, Instant)>,
    published: BTreeMap<String, String>,
    metrics: Arc<Metrics>,
    dataplane: Box<dyn DataPlane>,
    mesh: Box<dyn MeshPort>,
    volumes: VolumeTable,
    shared_volumes: SharedVolumes,
    pool_dir: PathBuf,
    events_tx: mpsc::UnboundedSender<DataEvent>,
    events_rx: mpsc::UnboundedReceiver<DataEvent>,
    capacity: capacity::Capacity,
    /// Why the state dir last refused a write, while it does (logged once per reason).
    persist_error: Option<String>,
    /// Inputs whose decisions could not be persisted, fed again on the next tick: the core
    /// was rolled back, so nothing they caused has happened yet.
    retry: Retry,
}

/// What a failed persist left to do again.
#[derive(Debug, Default)]
struct Retry {
    /// The restart's re-establishing work (exports, clones, workloads).
    restart: bool,
    /// Data-plane events, oldest first (progress counts are not kept: the next one comes).
    events: std::collections::VecDeque<DataEvent>,
}

/// At most this many data-plane events wait for a writable state dir; older ones are
/// dropped with a warning (each volume has a handful of phase events, so this is room for
/// hundreds of moving volumes).
const MAX_RETRY_EVENTS: usize = 1024;

/// True when a `progress/` value changed only in its counters (hydrated, rate), not its
/// phase: nobody waits on those, so they ride the normal rounds.
fn only_progress_counts(key: &str, old: &str, new: &str) -> bool {
    use crate::cluster::schema::Key;
    if !matches!(Key::parse(key), Key::Progress(_)) {
        return false;
    }
    let phase = |v: &str| serde_json::from_str::<serde_json::Value>(v).ok().map(|j| j["phase"].clone());
    phase(old).is_some() && phase(old) == phase(new)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl<G: Gossip> Agent<G> {
    /// Restores durable state (or starts fresh) and returns the agent and its handle.
    pub fn new(
        setup: AgentSetup,
        gossip: G,
        store: StateDir,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, AgentHandle, mpsc::Receiver<Command>), StoreError> {
        let AgentSetup { config, interval, pool_dir, dataplane, shared_volumes, mesh, capacity } = setup;
        let state = store.load::<CoreState>(STATE_FILE)?.unwrap_or_default();
        let volumes = VolumeTable::load(&store)?;
        shared_volumes
            .lock()
            .expect("volume table lock")
            .extend(volumes.volumes.iter().map(|(id, v)| (id.clone(), v.path.clone())));
        info!(node = %config.name, state = %state.node_state, volumes = state.volumes.len(), moving_here = state.holding.len(), "agent state restored");
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let view = ClusterView { self_name: config.name.to_string(), nodes: Default::default() };
        let agent = Self {
            core: Core::new(config, state),
            gossip,
            store,
            view,
            interval,
            heartbeats: HashMap::new(),
            published: BTreeMap::new(),
            metrics,
            dataplane,
            mesh,
            volumes,
            shared_volumes,
            pool_dir,
            events_tx,
            events_rx,
            capacity,
            persist_error: None,
            retry: Retry::default(),
        };
        Ok((agent, AgentHandle { tx }, rx))
    }

    /// The node's current lifecycle state.
    pub fn node_state(&self) -> NodeState {
        self.core.state.node_state
    }

    /// Runs until `shutdown` resolves or every handle is dropped.
    pub async fn run(self, commands: mpsc::Receiver<Command>, shutdown: impl Future<Output = ()>) {
        use tracing::Instrument;
        // `instrument`, not `enter`: a span entered across `.await` leaks into other tasks.
        let span = tracing::info_span!("agent", node = %self.core.config.name);
        self.run_inner(commands, shutdown).instrument(span).await;
    }

    async fn run_inner(mut self, mut commands: mpsc::Receiver<Command>, shutdown: impl Future<Output = ()>) {
        self.restart().await;
        // Set by gossip when another node's key changes: the loop ticks at once.
        let changed = Arc::new(tokio::sync::Notify::new());
        self.gossip.watch_changes(changed.clone()).await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.on_tick().await,
                _ = changed.notified() => self.on_tick().await,
                Some(ev) = self.events_rx.recv() => {
                    self.data_event(ev).await;
                    self.publish().await;
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
            }
        }
        info!("agent stopped");
    }

    /// Re-establishes the data-plane work of the durable state (once, or again on the next
    /// tick if its decisions could not be persisted).
    async fn restart(&mut self) {
        let before = self.core.state.clone();
        let out = self.core.restart();
        self.retry.restart = self.apply(before, out).await.is_err();
        self.publish().await;
    }

    /// Feeds one data-plane event to the core; kept for the next tick if the state dir
    /// refuses the decision it led to.
    async fn data_event(&mut self, ev: DataEvent) {
        if let DataEvent::Finalized { volume, .. } = &ev {
            self.register_arrived(volume);
        }
        let before = self.core.state.clone();
        let out = self.core.data_event(ev.clone(), now_ms());
        if self.apply(before, out).await.is_err() && !matches!(ev, DataEvent::Progress { .. }) {
            if self.retry.events.len() == MAX_RETRY_EVENTS {
                warn!("more than {MAX_RETRY_EVENTS} data-plane events wait for the state dir; dropping the oldest");
                self.retry.events.pop_front();
            }
            self.retry.events.push_back(ev);
        }
    }

    async fn on_tick(&mut self) {
        if self.retry.restart {
            self.restart().await;
        }
        for ev in std::mem::take(&mut self.retry.events) {
            self.data_event(ev).await;
        }
        self.core.config.free_bytes = self.capacity.free_for_incoming(&self.volumes);
        let raw = self.gossip.snapshot().await;
        self.view = ClusterView::from_raw(&raw);
        let now = Instant::now();
        for n in self.view.nodes.values() {
            let entry = self.heartbeats.entry(n.name.to_string()).or_insert((n.heartbeat, now));
            if entry.0 != n.heartbeat {
                *entry = (n.heartbeat, now);
            }
        }
        self.mesh.converge(&self.view);
        self.core.config.wireguard = self.mesh.advert();
        let before = self.core.state.clone();
        let out = self.core.tick(&self.view, now_ms());
        let last_request_before = before.last_request.clone();
        if self.apply(before, out).await.is_err() {
            // Rolled back: the next tick decides the same again.
            self.publish().await;
            return;
        }
        if self.core.state.last_request != last_request_before {
            self.metrics.requests_handled.inc();
            if let Some(l) = &self.core.state.last_request {
                match &l.rejected {
                    None => {
                        info!(action = %l.action, nonce = %l.nonce, state = %self.core.state.node_state, "node request applied")
                    }
                    Some(why) => warn!(action = %l.action, nonce = %l.nonce, "node request refused: {why}"),
                }
            }
        }
        self.publish().await;
        self.metrics.observe(&self.view);
    }

    /// Persists first (decisions survive a crash before their effects), then acts. A
    /// decision the state dir refuses is undone (the core goes back to `before`, which is
    /// what the disk holds): it is neither acted on nor published, so a restart can never
    /// contradict something the fleet already saw. The error names the path.
    async fn apply(&mut self, before: CoreState, out: Output) -> Result<(), StoreError> {
        if out.persist
            && let Err(e) = self.store.save(STATE_FILE, &self.core.state)
        {
            self.core.state = before;
            let message = e.to_string();
            if self.persist_error.as_ref() != Some(&message) {
                tracing::error!("cannot persist agent state, so no decision is acted on or published: {message}");
                self.persist_error = Some(message);
            }
            return Err(e);
        }
        if out.persist && self.persist_error.take().is_some() {
            info!("agent state persisted again: decisions resume");
        }
        for cmd in out.commands {
            info!(?cmd, "data plane");
            if let crate::decide::core::DataCommand::DeleteData { volume } = &cmd {
                self.volumes.volumes.remove(volume.as_str());
                if let Err(e) = self.volumes.save(&self.store) {
                    warn!("cannot save the volume table: {e}");
                }
            }
            self.dataplane.execute(cmd, self.events_tx.clone());
        }
        Ok(())
    }

    /// Converges this node's gossip keys to what the core wants published.
    /// A change another node acts on (anything but a progress count) is pushed at once.
    async fn publish(&mut self) {
        let want = self.core.desired_keys();
        let mut urgent = false;
        for (k, v) in &want {
            let old = self.published.get(k);
            if old != Some(v) {
                urgent |= old.is_none_or(|old| !only_progress_counts(k, old, v));
                self.gossip.set(k, v.clone()).await;
            }
        }
        for k in self.published.keys() {
            if !want.contains_key(k) {
                urgent = true;
                self.gossip.delete(k).await;
            }
        }
        self.published = want;
        if urgent {
            self.gossip.push_now().await;
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let mut status = report::status(&self.core, &self.view, &self.heartbeats);
                status.gossip = self.gossip.health();
                let _ = reply.send(status);
            }
            Command::NodeAction { node, action, force, options, reply } => {
                let result = self.node_action(&node, action, force, options).await;
                let _ = reply.send(result);
            }
            Command::AddVolume(new, reply) => {
                let result = self.add_volume(new).await;
                let _ = reply.send(result);
            }
            Command::Plan { node, reply } => {
                let _ = reply.send(report::plan(&self.view, &node));
            }
            Command::Volumes(reply) => {
                let _ = reply.send(report::volumes(&self.view));
            }
            Command::MeshStatus(reply) => {
                let _ = reply.send(self.mesh.status());
            }
            Command::Gc(reply) => {
                self.core.request_gc();
                self.on_tick().await;
                let _ = reply.send(());
            }
        }
    }

    /// A volume that moved here is a local volume now: its dest file in the pool.
    fn register_arrived(&mut self, volume: &str) {
        let (path, _) = self::dataplane::real::dest_paths(&self.pool_dir, volume);
        self.shared_volumes.lock().expect("volume table lock").insert(volume.to_owned(), path.clone());
        self.volumes.volumes.insert(volume.to_owned(), LocalVolume { path, created: true });
        if let Err(e) = self.volumes.save(&self.store) {
            warn!("cannot save the volume table: {e}");
        }
    }

    async fn add_volume(&mut self, new: NewVolume) -> Result<String, String> {
        let NewVolume { id: volume_id, size, path, requires, hooks } = new;
        let id = volume_id.as_str();
        if self.volumes.volumes.contains_key(id) {
            return Err(format!("volume {id} already exists on this node"));
        }
        let (path, size, created) = match (path, size) {
            (Some(p), _) => {
                let size = volumes::size_of(&p)
                    .map_err(|e| format!("cannot open {}: {e} (give an existing file or block device)", p.display()))?;
                (p, size, false)
            }
            (None, Some(size)) => (self.pool_dir.join(format!("{id}.img")), size, true),
            (None, None) => return Err("give --size for a new volume, or --path for an existing one".to_owned()),
        };
        // Every step is undone if a later one fails: a volume exists only once its file, its
        // table entry and the core's durable record all do.
        let before = self.core.state.clone();
        let out = self.core.add_volume(&volume_id, size, requires, hooks, &self.view).map_err(|e| e.to_string())?;
        let undo = |agent: &mut Self, file: bool| {
            agent.core.state = before.clone();
            agent.volumes.volumes.remove(id);
            if file {
                let _ = std::fs::remove_file(&path);
            }
        };
        if created && let Err(e) = volumes::create_sparse(&path, size) {
            undo(self, false);
            return Err(format!("cannot create {}: {e} (check pool.dir)", path.display()));
        }
        self.volumes.volumes.insert(id.to_owned(), LocalVolume { path: path.clone(), created });
        if let Err(e) = self.volumes.save(&self.store) {
            undo(self, created);
            return Err(format!("volume {id} was not added: {e}"));
        }
        if let Err(e) = self.apply(before.clone(), out).await {
            undo(self, created);
            let _ = self.volumes.save(&self.store);
            return Err(format!("volume {id} was not added: {e}"));
        }
        self.shared_volumes.lock().expect("volume table lock").insert(id.to_owned(), path.clone());
        self.publish().await;
        info!(volume = id, path = %path.display(), size, "volume added");
        Ok(format!("volume {id}: {size} bytes at {}", path.display()))
    }

    async fn node_action(
        &mut self,
        node: &NodeName,
        action: NodeAction,
        force: bool,
        options: DrainOptions,
    ) -> Result<ActionReport, String> {
        let me = self.core.config.name.clone();
        if *node != me && !force && !self.view.nodes.contains_key(node) {
            let known: Vec<&str> = self.view.nodes.keys().map(NodeName::as_str).collect();
            return Err(format!(
                "no node named {node:?} in the fleet (known: {}); pass --force to publish the request anyway",
                known.join(", ")
            ));
        }
        let nonce = format!("{:016x}", rand::random::<u64>());
        let before = self.core.state.clone();
        let req = self.core.issue_request(node, action, options, nonce, now_ms(), &self.view);
        let mut report = ActionReport {
            node: node.to_string(),
            action,
            nonce: req.nonce.clone(),
            seq: req.seq,
            applied: false,
            state: None,
            rejected: None,
        };
        if *node == me {
            report.applied = true;
            self.metrics.requests_handled.inc();
            match self.core.apply_request(&req) {
                Ok(state) => {
                    info!(%action, %state, "node request applied");
                    report.state = Some(state);
                }
                Err(why) => {
                    warn!(%action, "node request refused: {why}");
                    report.rejected = Some(why);
                }
            }
        } else {
            info!(target_node = %node, %action, nonce = %req.nonce, "publishing node request");
        }
        if let Err(e) = self.apply(before, Output { commands: vec![], persist: true }).await {
            // Neither applied nor published: acknowledging it would be undone by a restart.
            return Err(format!("{action} {node} was not applied: {e}"));
        }
        self.publish().await;
        Ok(report)
    }
}
