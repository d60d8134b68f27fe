//! The agent's one owner loop (crucible's upstairs pattern): a single task owns the
//! [`Core`](crate::decide::core::Core). Its `select!` turns whatever arrives (a tick, a
//! gossip change, a data-plane event, an API request, shutdown) into one [`Input`], and
//! [`Agent::apply_input`] applies it in one place (crucible's select/apply); the core
//! decides; this loop persists, publishes and hands work to the data plane. Nothing else
//! writes gossip keys or the state dir.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::api::{ActionReport, Answer, Api, ApiError, NewVolume, Outcome, Request, StatusReport};
use crate::cluster::gossip::Gossip;
use crate::cluster::view::ClusterView;
use crate::dataplane::{DataPlane, paths};
use crate::decide::model::NodeName;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;
use crate::store::volumes::{self, LocalVolume, VolumeTable};
use crate::store::{StateDir, StoreError};

pub mod capacity;
mod lost;
pub mod mesh;
pub mod meshport;
pub mod metrics;
pub mod report;
mod returns;
mod roll;
pub mod run;
pub mod shutdown;

use self::meshport::MeshPort;
use self::metrics::Metrics;
use crate::decide::core::{Core, CoreConfig, CoreState, DataEvent, Output, VolumeError};

/// File name of the agent's durable document in the state dir.
pub const STATE_FILE: &str = "agent.json";

/// One API request on its way to the owner loop, and where its answer goes.
pub type Call = (Request, oneshot::Sender<Result<Outcome, ApiError>>);

/// A cheap, cloneable way to talk to the owner loop: the [`Api`] in process.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Call>,
}

impl AgentHandle {
    /// Has the owner loop answer one request.
    pub async fn ask(&self, request: Request) -> Result<Outcome, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((request, reply)).await.map_err(|_| ApiError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ApiError::ShuttingDown))
    }

    /// The fleet as this agent sees it (the systemd watchdog's and the tests' probe).
    pub async fn status(&self) -> Result<StatusReport, ApiError> {
        self.get(Request::Status).await
    }

    /// Cordons, uncordons, drains (with default options) or undrains `node`.
    pub async fn node_action(
        &self,
        node: &NodeName,
        action: NodeAction,
        force: bool,
    ) -> Result<ActionReport, ApiError> {
        self.get(Request::NodeAction { node: node.clone(), action, force, options: DrainOptions::default() }).await
    }

    async fn get<T: Answer>(&self, request: Request) -> Result<T, ApiError> {
        let outcome = self.ask(request).await?;
        // The owner loop answers each request with its own outcome (`Agent::answer`).
        Ok(T::from_outcome(outcome).unwrap_or_else(|other| panic!("the owner loop answered {other:?}")))
    }
}

impl Api for AgentHandle {
    fn ask(&self, request: Request) -> impl Future<Output = Result<Outcome, ApiError>> + Send {
        AgentHandle::ask(self, request)
    }
}

/// One thing the owner loop reacts to, as its `select!` received it.
#[derive(Debug)]
enum Input {
    /// The gossip interval passed.
    Tick,
    /// Another node's gossip key changed: tick now rather than at the interval.
    GossipChanged,
    /// The data plane reports.
    Data(DataEvent),
    /// A roll's `--exec` ended.
    Roll(crate::decide::roll::RollEvent),
    /// An API request.
    Request(Request, oneshot::Sender<Result<Outcome, ApiError>>),
    /// Stop: asked to, or every handle is gone.
    Shutdown,
}

/// What an agent is made of besides its gossip and state dir.
pub struct AgentSetup {
    /// Decision settings.
    pub config: CoreConfig,
    /// Gossip round interval (the tick).
    pub interval: Duration,
    /// Where new and incoming volumes live.
    pub pool_dir: PathBuf,
    /// Where data-plane commands go (each with its volume's path from the volume table).
    pub dataplane: Box<dyn DataPlane>,
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
    /// The local volume table; this loop is its only writer.
    volumes: VolumeTable,
    pool_dir: PathBuf,
    events_tx: mpsc::UnboundedSender<DataEvent>,
    events_rx: mpsc::UnboundedReceiver<DataEvent>,
    capacity: capacity::Capacity,
    /// Why the state dir last refused a write, while it does (logged once per reason).
    persist_error: Option<String>,
    /// Inputs whose decisions could not be persisted, fed again on the next tick: the core
    /// was rolled back, so nothing they caused has happened yet.
    retry: Retry,
    /// Rolls of the fleet (docs/roll.md).
    roll: roll::RollSide,
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
    ) -> Result<(Self, AgentHandle, mpsc::Receiver<Call>), StoreError> {
        let AgentSetup { config, interval, pool_dir, dataplane, mesh, capacity } = setup;
        let state = store.load::<CoreState>(STATE_FILE)?.unwrap_or_default();
        let volumes = VolumeTable::load(&store)?;
        info!(node = %config.name, state = %state.node_state, volumes = state.volumes.len(), moving_here = state.holding.len(), "agent state restored");
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let view = ClusterView { self_name: config.name.to_string(), nodes: Default::default() };
        let roll = roll::RollSide::load(&store, config.name.clone(), interval)?;
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
            pool_dir,
            events_tx,
            events_rx,
            capacity,
            persist_error: None,
            retry: Retry::default(),
            roll,
        };
        Ok((agent, AgentHandle { tx }, rx))
    }

    /// The node's current lifecycle state.
    pub fn node_state(&self) -> NodeState {
        self.core.state.node_state
    }

    /// Runs until `shutdown` resolves or every handle is dropped.
    pub async fn run(self, requests: mpsc::Receiver<Call>, shutdown: impl Future<Output = ()>) {
        use tracing::Instrument;
        // `instrument`, not `enter`: a span entered across `.await` leaks into other tasks.
        let span = tracing::info_span!("agent", node = %self.core.config.name);
        self.run_inner(requests, shutdown).instrument(span).await;
    }

    async fn run_inner(mut self, mut requests: mpsc::Receiver<Call>, shutdown: impl Future<Output = ()>) {
        self.restart().await;
        // Set by gossip when another node's key changes: the loop ticks at once.
        let changed = Arc::new(tokio::sync::Notify::new());
        self.gossip.watch_changes(changed.clone()).await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let input = tokio::select! {
                _ = &mut shutdown => Input::Shutdown,
                _ = tick.tick() => Input::Tick,
                _ = changed.notified() => Input::GossipChanged,
                Some(ev) = self.events_rx.recv() => Input::Data(ev),
                Some(ev) = self.roll.rx.recv() => Input::Roll(ev),
                call = requests.recv() => match call {
                    Some((request, reply)) => Input::Request(request, reply),
                    None => Input::Shutdown,
                },
            };
            if self.apply_input(input).await.is_break() {
                break;
            }
        }
        info!("agent stopped");
    }

    /// Applies one input: the one place the loop acts.
    async fn apply_input(&mut self, input: Input) -> ControlFlow<()> {
        match input {
            Input::Shutdown => return ControlFlow::Break(()),
            Input::Tick | Input::GossipChanged => self.on_tick().await,
            Input::Roll(ev) => self.roll_exec_done(ev).await,
            Input::Data(ev) => {
                self.data_event(ev).await;
                self.publish().await;
            }
            Input::Request(request, reply) => {
                let answer = self.answer(request).await;
                // A caller that went away does not need its answer.
                let _ = reply.send(answer);
            }
        }
        ControlFlow::Continue(())
    }

    /// Re-establishes the data-plane work of the durable state (once, or again on the next
    /// tick if its decisions could not be persisted).
    async fn restart(&mut self) {
        let before = self.core.state.clone();
        let out = self.core.restart();
        self.retry.restart = self.apply(before, out).await.is_err();
        self.roll_restart().await;
        self.publish().await;
    }

    /// Feeds one data-plane event to the core; kept for the next tick if the state dir
    /// refuses the decision it led to.
    async fn data_event(&mut self, ev: DataEvent) {
        if let DataEvent::Finalized { volume, .. } = &ev {
            self.register_arrived(volume);
        }
        let before = self.core.state.clone();
        let out = self.core.data_event(ev.clone(), &self.view, now_ms());
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
        // A roll step not persisted is decided again on the next tick.
        let _ = self.roll_step(crate::decide::roll::RollEvent::Tick).await;
        self.metrics.observe(&self.view);
        self.metrics.observe_mesh(&self.view, &self.mesh.status());
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
            info!(command = format!("{cmd:?}").split([' ', '{', '(']).next().unwrap_or_default(), volume = %cmd.volume(), "data plane");
            let local = self.volumes.path_for(&cmd);
            // A copy set aside (docs/failures.md) is no longer a volume of this node.
            if let crate::decide::core::DataCommand::SetAside { volume, .. } = &cmd
                && self.volumes.volumes.remove(volume.as_str()).is_some()
                && let Err(e) = self.volumes.save(&self.store)
            {
                warn!("cannot save the volume table: {e}");
            }
            if let crate::decide::core::DataCommand::DeleteData { .. } = &cmd
                && let Err(e) = self.volumes.save(&self.store)
            {
                warn!("cannot save the volume table: {e}");
            }
            self.dataplane.execute(cmd, local, self.events_tx.clone());
        }
        Ok(())
    }

    /// Converges this node's gossip keys to what the core wants published.
    /// A change another node acts on (anything but a progress count) is pushed at once.
    async fn publish(&mut self) {
        let mut want = self.core.desired_keys();
        want.extend(self.roll.keys());
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

    /// Answers one API request.
    async fn answer(&mut self, request: Request) -> Result<Outcome, ApiError> {
        Ok(match request {
            Request::Status => {
                let mut status = report::status(&self.core, &self.view, &self.heartbeats);
                status.gossip = self.gossip.health();
                status.clones = self.dataplane.exposures().into(); // docs/exposures.md
                // docs/failures.md: a node declared lost shows as `lost`, whatever its last
                // record said; the declarations and the copies set aside here come along.
                for n in &mut status.nodes {
                    if self.core.state.lost.keys().any(|l| l.as_str() == n.name) {
                        n.state = Some(NodeState::Lost);
                    }
                }
                let lost = crate::api::LostStatus {
                    declared: self.core.state.lost.clone(),
                    aside: self.core.state.aside.clone(),
                };
                status.lost = (!lost.is_empty()).then(|| Box::new(lost));
                Outcome::Status(status)
            }
            Request::NodeLost { node, force, accept_data_loss, dry_run } => {
                Outcome::NodeLost(Box::new(self.node_lost(&node, force, accept_data_loss, dry_run).await?))
            }
            Request::Partial { volume, verdict } => Outcome::Done { message: self.partial(&volume, verdict).await? },
            Request::NodeAction { node, action, force, options } => {
                Outcome::NodeAction(self.node_action(&node, action, force, options).await?)
            }
            // From this node's gossip state as it is now, not the view of the last tick: a
            // volume just created shows at once (issue 19).
            Request::Plan { node } => {
                Outcome::Plan { plan: report::plan(&ClusterView::from_raw(&self.gossip.snapshot().await), &node) }
            }
            Request::MovePlan { volume, to, requires } => {
                let view = ClusterView::from_raw(&self.gossip.snapshot().await);
                Outcome::Plan { plan: report::move_plan(&view, &volume, to.as_ref(), requires).into_iter().collect() }
            }
            Request::VolumeAdd(new) => Outcome::Done { message: self.add_volume(new).await? },
            Request::Volumes => {
                let view = ClusterView::from_raw(&self.gossip.snapshot().await);
                let volumes = report::with_paths(report::volumes(&view), &self.core.config.name, &self.volumes);
                Outcome::Volumes { volumes }
            }
            Request::Gc => {
                let before = report::gc_candidates(&self.volumes, &self.core.state.aside, &self.pool_dir);
                self.core.request_gc();
                self.on_tick().await;
                let me = &self.core.config.name;
                let after = (&self.volumes, self.core.state.aside.as_slice());
                // The data plane deletes in the background: answer once the files are gone
                // (bounded), so "deleted" is true when the operator reads it.
                let files: Vec<PathBuf> = report::gc_deleted(&before, after)
                    .into_iter()
                    .filter(|c| c.path.starts_with(&self.pool_dir))
                    .map(|c| c.path.clone())
                    .collect();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while files.iter().any(|f| f.exists()) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let after = (&self.volumes, self.core.state.aside.as_slice());
                Outcome::Done { message: report::gc_message(me, &before, after, &self.pool_dir) }
            }
            Request::MeshStatus => Outcome::Mesh { mesh: self.mesh.status() },
            r @ (Request::RollStart { .. } | Request::RollCtl { .. } | Request::RollStatus) => {
                self.roll_answer(r).await?
            }
        })
    }

    /// A volume that moved here is a local volume now: its dest file in the pool.
    fn register_arrived(&mut self, volume: &str) {
        let path = paths::volume_file(&self.pool_dir, volume);
        self.volumes.volumes.insert(volume.to_owned(), LocalVolume { path, created: true });
        if let Err(e) = self.volumes.save(&self.store) {
            warn!("cannot save the volume table: {e}");
        }
    }

    async fn add_volume(&mut self, new: NewVolume) -> Result<String, ApiError> {
        let NewVolume { id: volume_id, size, path, requires, hooks } = new;
        let id = volume_id.as_str();
        if self.volumes.volumes.contains_key(id) {
            return Err(VolumeError::Exists(volume_id).into());
        }
        let (path, size, created) = match (path, size) {
            (Some(p), _) => match volumes::size_of(&p) {
                Ok(size) => (p, size, false),
                Err(e) => return Err(ApiError::CannotOpen { path: p, reason: e.to_string() }),
            },
            (None, Some(size)) => (paths::volume_file(&self.pool_dir, id), size, true),
            (None, None) => return Err(ApiError::SizeOrPath),
        };
        // Every step is undone if a later one fails: a volume exists only once its file, its
        // table entry and the core's durable record all do.
        let before = self.core.state.clone();
        let out = self.core.add_volume(&volume_id, size, requires, hooks, &self.view)?;
        let undo = |agent: &mut Self, file: bool| {
            agent.core.state = before.clone();
            agent.volumes.volumes.remove(id);
            if file {
                let _ = std::fs::remove_file(&path);
            }
        };
        if created && let Err(e) = volumes::create_sparse(&path, size) {
            undo(self, false);
            return Err(ApiError::CannotCreate { path, reason: e.to_string() });
        }
        self.volumes.volumes.insert(id.to_owned(), LocalVolume { path: path.clone(), created });
        let not_added = |e: StoreError| ApiError::VolumeNotAdded { volume: volume_id.clone(), reason: e.to_string() };
        if let Err(e) = self.volumes.save(&self.store) {
            undo(self, created);
            return Err(not_added(e));
        }
        if let Err(e) = self.apply(before.clone(), out).await {
            undo(self, created);
            let _ = self.volumes.save(&self.store);
            return Err(not_added(e));
        }
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
    ) -> Result<ActionReport, ApiError> {
        let me = self.core.config.name.clone();
        if *node != me && !force && !self.view.nodes.contains_key(node) {
            return Err(ApiError::UnknownNode { node: node.clone(), known: self.view.nodes.keys().cloned().collect() });
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
            return Err(ApiError::NotApplied { action, node: node.clone(), reason: e.to_string() });
        }
        self.publish().await;
        Ok(report)
    }
}
