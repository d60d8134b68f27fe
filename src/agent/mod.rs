//! The agent's one owner loop (crucible's upstairs pattern): a single task owns all node
//! state; gossip ticks, control requests and timers come in as messages, the pure cores
//! decide, and only this loop writes gossip keys and the state dir.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::cluster::gossip::Gossip;
use crate::cluster::schema::{self, NodeRecord};
use crate::cluster::view::ClusterView;
use crate::control::metrics::Metrics;
use crate::control::protocol::{ActionReport, NodeStatus, PendingRequest, StatusReport};
use crate::drain::node::{self, NodeAction, NodeEvent, NodeState};
use crate::drain::request::{self, AppliedRequest, NodeRequest};
use crate::store::{StateDir, StoreError};

pub mod core;
pub mod run;

/// File name of the agent's durable document in the state dir.
pub const STATE_FILE: &str = "agent.json";

/// What survives a restart. A draining node comes back draining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// Format version of this document.
    pub format: u32,
    /// Node lifecycle state.
    pub node_state: NodeState,
    /// The last node request handled, so none is applied twice.
    pub last_request: Option<AppliedRequest>,
}

impl Default for DurableState {
    fn default() -> Self {
        Self { format: 1, node_state: NodeState::Active, last_request: None }
    }
}

/// Static facts about this node that go into its `node` record.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Gossip address advertised.
    pub gossip_addr: std::net::SocketAddr,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Mesh address, if a mesh carries gossip.
    pub mesh_addr: Option<String>,
    /// Which WireGuard backend is in use.
    pub mesh_backend: Option<String>,
    /// Free bytes advertised for placement.
    pub free_bytes: u64,
}

/// Messages to the owner loop.
#[derive(Debug)]
pub enum Command {
    /// Report every node known.
    Status(oneshot::Sender<StatusReport>),
    /// Apply or publish a node action.
    NodeAction {
        /// Target node.
        node: String,
        /// Action.
        action: NodeAction,
        /// Publish even for a node gossip does not know.
        force: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<ActionReport, String>>,
    },
}

/// A cheap, cloneable way to talk to the owner loop.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
}

impl AgentHandle {
    /// Asks for a status report; `None` if the agent stopped.
    pub async fn status(&self) -> Option<StatusReport> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Requests a node action.
    pub async fn node_action(&self, node: &str, action: NodeAction, force: bool) -> Result<ActionReport, String> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::NodeAction { node: node.to_owned(), action, force, reply };
        self.tx.send(cmd).await.map_err(|_| "the agent is shutting down".to_owned())?;
        rx.await.map_err(|_| "the agent is shutting down".to_owned())?
    }
}

/// The owner loop's state.
pub struct Agent<G: Gossip> {
    identity: NodeIdentity,
    gossip: G,
    store: StateDir,
    durable: DurableState,
    view: ClusterView,
    interval: Duration,
    heartbeats: HashMap<String, (u64, Instant)>,
    published_record: Option<String>,
    metrics: Arc<Metrics>,
}

impl<G: Gossip> Agent<G> {
    /// Restores durable state (or starts fresh) and returns the agent and its handle.
    pub fn new(
        identity: NodeIdentity,
        gossip: G,
        store: StateDir,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, AgentHandle, mpsc::Receiver<Command>), StoreError> {
        let durable = store.load::<DurableState>(STATE_FILE)?.unwrap_or_default();
        info!(node = %identity.name, state = %durable.node_state, "agent state restored");
        let (tx, rx) = mpsc::channel(64);
        let view = ClusterView { self_name: identity.name.clone(), nodes: Default::default() };
        let agent = Self {
            identity,
            gossip,
            store,
            durable,
            view,
            interval,
            heartbeats: HashMap::new(),
            published_record: None,
            metrics,
        };
        Ok((agent, AgentHandle { tx }, rx))
    }

    /// The node's current lifecycle state.
    pub fn node_state(&self) -> NodeState {
        self.durable.node_state
    }

    /// Runs until `shutdown` resolves or every handle is dropped.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: impl Future<Output = ()>) {
        let span = tracing::info_span!("agent", node = %self.identity.name);
        let _enter = span.enter();
        self.publish_record().await;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.on_tick().await,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
            }
        }
        info!("agent stopped");
    }

    async fn on_tick(&mut self) {
        let raw = self.gossip.snapshot().await;
        self.view = ClusterView::from_raw(&raw);
        let now = Instant::now();
        for n in self.view.nodes.values() {
            let entry = self.heartbeats.entry(n.name.clone()).or_insert((n.heartbeat, now));
            if entry.0 != n.heartbeat {
                *entry = (n.heartbeat, now);
            }
        }
        self.adopt_requests();
        self.forget_acknowledged_requests().await;
        self.publish_record().await;
        self.metrics.observe(&self.view);
    }

    /// Applies every request for this node not yet applied, in order, once.
    fn adopt_requests(&mut self) {
        let pending: Vec<NodeRequest> = request::pending(
            self.durable.last_request.as_ref(),
            self.view.requests_for(&self.identity.name),
        )
        .into_iter()
        .cloned()
        .collect();
        for req in pending {
            // The outcome (applied or refused) is logged and published in `last_request`.
            let _ = self.apply_request(&req);
        }
    }

    fn apply_request(&mut self, req: &NodeRequest) -> Result<NodeState, String> {
        self.metrics.requests_handled.inc();
        let outcome = node::step(self.durable.node_state, NodeEvent::Requested(req.action));
        let rejected = match &outcome {
            Ok(t) => {
                info!(action = %req.action, from = %t.from, to = %t.to, by = %req.issued_by, nonce = %req.nonce, "node request applied");
                self.durable.node_state = t.to;
                None
            }
            Err(e) => {
                warn!(action = %req.action, by = %req.issued_by, nonce = %req.nonce, "node request refused: {e}");
                Some(e.to_string())
            }
        };
        self.durable.last_request =
            Some(AppliedRequest { seq: req.seq, nonce: req.nonce.clone(), action: req.action, rejected: rejected.clone() });
        if let Err(e) = self.store.save(STATE_FILE, &self.durable) {
            // The in-memory state moved on; the next successful save catches up. Loud, because
            // a restart before then would come back in the old state.
            warn!("cannot persist node state: {e}");
        }
        match rejected {
            None => Ok(self.durable.node_state),
            Some(r) => Err(r),
        }
    }

    /// Deletes our `req/drain/<node>` keys once their node has adopted them.
    async fn forget_acknowledged_requests(&mut self) {
        let Some(me) = self.view.local() else { return };
        let done: Vec<String> = me
            .requests
            .iter()
            .filter(|(target, req)| {
                self.view
                    .nodes
                    .get(*target)
                    .and_then(|n| n.record.as_ref())
                    .and_then(|r| r.last_request.as_ref())
                    .is_some_and(|l| l.covers(req))
            })
            .map(|(target, _)| target.clone())
            .collect();
        for target in done {
            self.gossip.delete(&schema::Key::NodeRequest(target).render()).await;
        }
    }

    fn record(&self) -> NodeRecord {
        NodeRecord {
            name: self.identity.name.clone(),
            state: self.durable.node_state,
            gossip_addr: self.identity.gossip_addr,
            mesh_addr: self.identity.mesh_addr.clone(),
            mesh_backend: self.identity.mesh_backend.clone(),
            wireguard: None,
            free_bytes: self.identity.free_bytes,
            labels: self.identity.labels.clone(),
            volumes: 0,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            last_request: self.durable.last_request.clone(),
        }
    }

    async fn publish_record(&mut self) {
        let raw = schema::encode(&self.record());
        if self.published_record.as_deref() != Some(raw.as_str()) {
            self.gossip.set("node", raw.clone()).await;
            self.published_record = Some(raw);
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status_report());
            }
            Command::NodeAction { node, action, force, reply } => {
                let result = self.node_action(&node, action, force).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn node_action(&mut self, node: &str, action: NodeAction, force: bool) -> Result<ActionReport, String> {
        if !crate::config::valid_node_name(node) {
            return Err(format!("{node:?} is not a valid node name"));
        }
        if node != self.identity.name && !force && !self.view.nodes.contains_key(node) {
            let known: Vec<&str> = self.view.nodes.keys().map(String::as_str).collect();
            return Err(format!(
                "no node named {node:?} in the fleet (known: {}); pass --force to publish the request anyway",
                known.join(", ")
            ));
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let req = NodeRequest {
            seq: request::next_seq(now_ms, self.view.highest_seq_for(node)),
            nonce: format!("{:016x}", rand::random::<u64>()),
            action,
            issued_by: self.identity.name.clone(),
        };
        let mut report = ActionReport {
            node: node.to_owned(),
            action,
            nonce: req.nonce.clone(),
            seq: req.seq,
            applied: false,
            state: None,
            rejected: None,
        };
        if node == self.identity.name {
            report.applied = true;
            match self.apply_request(&req) {
                Ok(state) => report.state = Some(state),
                Err(why) => report.rejected = Some(why),
            }
            self.publish_record().await;
        } else {
            info!(target_node = node, %action, nonce = %req.nonce, "publishing node request");
            self.gossip.set(&schema::Key::NodeRequest(node.to_owned()).render(), schema::encode(&req)).await;
        }
        Ok(report)
    }

    fn status_report(&self) -> StatusReport {
        let now = Instant::now();
        let mut nodes: Vec<NodeStatus> = self
            .view
            .nodes
            .values()
            .map(|n| {
                let r = n.record.as_ref();
                NodeStatus {
                    name: n.name.clone(),
                    state: r.map(|r| r.state),
                    alive: n.alive,
                    gossip_addr: n.gossip_addr.to_string(),
                    mesh_addr: r.and_then(|r| r.mesh_addr.clone()),
                    mesh_backend: r.and_then(|r| r.mesh_backend.clone()),
                    heartbeat_age_ms: self
                        .heartbeats
                        .get(&n.name)
                        .map(|(_, at)| now.duration_since(*at).as_millis() as u64),
                    heartbeat: n.heartbeat,
                    generation: n.generation,
                    free_bytes: r.map(|r| r.free_bytes),
                    volumes: r.map_or(0, |r| r.volumes),
                    agent_version: r.map(|r| r.agent_version.clone()),
                    last_request: r.and_then(|r| r.last_request.clone()),
                    pending_requests: n
                        .requests
                        .iter()
                        .map(|(node, req)| PendingRequest { node: node.clone(), action: req.action, nonce: req.nonce.clone() })
                        .collect(),
                    ignored_keys: n.ignored.iter().map(|(k, why)| format!("{k}: {why}")).collect(),
                }
            })
            .collect();
        if !nodes.iter().any(|n| n.name == self.identity.name) {
            // Before the first tick, still report ourselves.
            let r = self.record();
            nodes.push(NodeStatus {
                name: r.name,
                state: Some(r.state),
                alive: true,
                gossip_addr: r.gossip_addr.to_string(),
                mesh_addr: r.mesh_addr,
                mesh_backend: r.mesh_backend,
                heartbeat_age_ms: None,
                heartbeat: 0,
                generation: 0,
                free_bytes: Some(r.free_bytes),
                volumes: r.volumes,
                agent_version: Some(r.agent_version),
                last_request: r.last_request,
                pending_requests: vec![],
                ignored_keys: vec![],
            });
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        StatusReport { self_name: self.identity.name.clone(), nodes }
    }
}
