//! The gossip seam. The agent sees only [`Gossip`]: set or delete its own keys, and take a
//! [`RawSnapshot`] of everyone's. [`ChitchatGossip`] implements it over chitchat with any
//! chitchat transport: UDP for processes, `ChannelTransport` for many agents in one
//! process (where tests cut links to make partitions).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle, spawn_chitchat};
use tokio::sync::Notify;

use super::view::{RawNode, RawSnapshot};

/// Why the gossip layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// chitchat could not open its socket or start.
    #[error("cannot start gossip on {addr}: {message} (is another agent using this port? change gossip.listen)")]
    Start {
        /// The address it tried.
        addr: SocketAddr,
        /// chitchat's message.
        message: String,
    },
}

/// What the agent needs from gossip: its own keys out, everyone's keys in.
pub trait Gossip: Send + Sync + 'static {
    /// Sets a key in the local node's state (published on the next round).
    fn set(&self, key: &str, value: String) -> impl Future<Output = ()> + Send;
    /// Deletes a key from the local node's state.
    fn delete(&self, key: &str) -> impl Future<Output = ()> + Send;
    /// Everything currently known, with liveness.
    fn snapshot(&self) -> impl Future<Output = RawSnapshot> + Send;
    /// Sends this node's state to every live peer now rather than at the next round: a lease
    /// step another node waits on (offer, claim, grant, ready) then costs a round trip, not
    /// up to a gossip interval. Rounds still run; this only adds one exchange per peer.
    fn push_now(&self) -> impl Future<Output = ()> + Send;
    /// Wakes `notify` whenever a key of another node changes, so the owner loop reacts at
    /// once instead of at its next tick.
    fn watch_changes(&self, notify: Arc<Notify>) -> impl Future<Output = ()> + Send;
}

/// Settings for one chitchat instance.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// Node name = chitchat node id.
    pub name: String,
    /// Incarnation (grows across restarts; the agent uses its start time in ms).
    pub generation: u64,
    /// Fleet name; other fleets are ignored.
    pub cluster_id: String,
    /// Bind address.
    pub listen: SocketAddr,
    /// Address advertised to peers.
    pub advertise: SocketAddr,
    /// Seeds (`host:port`).
    pub seeds: Vec<String>,
    /// Round interval.
    pub interval: Duration,
    /// Phi threshold of the failure detector.
    pub phi_threshold: f64,
    /// How long dead nodes' state is kept.
    pub dead_node_grace: Duration,
}

/// At most this many peers get an immediate push per change (the rest hear it in rounds):
/// small fleets are pushed to in full, a big one does not get a burst per change.
const PUSH_FANOUT: usize = 16;

/// chitchat behind [`Gossip`].
pub struct ChitchatGossip {
    handle: ChitchatHandle,
    /// Keeps the change subscription alive (dropping it unsubscribes).
    watch: Mutex<Option<ListenerHandle>>,
}

impl ChitchatGossip {
    /// Starts chitchat on `transport` with the initial key-values.
    pub async fn start(
        settings: &GossipSettings,
        transport: &dyn Transport,
        initial: Vec<(String, String)>,
    ) -> Result<Self, GossipError> {
        let interval = settings.interval;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(settings.name.clone(), settings.generation, settings.advertise),
            cluster_id: settings.cluster_id.clone(),
            gossip_interval: interval,
            listen_addr: settings.listen,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                sampling_window_size: 1000,
                // A heartbeat gap longer than this is not a sample (a pause, not a rate).
                max_interval: interval * 20,
                initial_interval: interval * 2,
                dead_node_grace_period: settings.dead_node_grace,
            },
            marked_for_deletion_grace_period: settings.dead_node_grace.max(Duration::from_secs(3600)),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V1 (compressed digests) once every agent in a fleet reads it; all meshdrain agents do.
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(config, initial, transport)
            .await
            .map_err(|e| GossipError::Start { addr: settings.listen, message: format!("{e:#}") })?;
        Ok(Self { handle, watch: Mutex::new(None) })
    }

    /// Stops the gossip server (used by tests that kill an agent).
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

impl Gossip for ChitchatGossip {
    async fn set(&self, key: &str, value: String) {
        let key = key.to_owned();
        self.handle
            .with_chitchat(move |c| {
                let node = c.self_node_state();
                if node.get(&key) != Some(value.as_str()) {
                    node.set(key.clone(), value.clone());
                }
            })
            .await;
    }

    async fn delete(&self, key: &str) {
        let key = key.to_owned();
        self.handle
            .with_chitchat(move |c| {
                let node = c.self_node_state();
                if node.contains_key(&key) {
                    node.delete(&key);
                }
            })
            .await;
    }

    async fn snapshot(&self) -> RawSnapshot {
        self.handle
            .with_chitchat(|c| {
                let self_id = c.self_chitchat_id().clone();
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let nodes = c
                    .node_states()
                    .iter()
                    .map(|(id, state)| RawNode {
                        name: id.node_id.to_string(),
                        generation: id.generation_id,
                        gossip_addr: id.gossip_advertise_addr,
                        alive: *id == self_id || live.contains(id),
                        heartbeat: u64::from(state.heartbeat()),
                        entries: state.key_values().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                    })
                    .collect();
                RawSnapshot { self_name: self_id.node_id.to_string(), nodes }
            })
            .await
    }

    async fn push_now(&self) {
        let mut peers: Vec<SocketAddr> = self
            .handle
            .with_chitchat(|c| {
                let me = c.self_chitchat_id().clone();
                c.live_nodes().filter(|id| **id != me).map(|id| id.gossip_advertise_addr).collect()
            })
            .await;
        rand::seq::SliceRandom::shuffle(peers.as_mut_slice(), &mut rand::rng());
        for addr in peers.into_iter().take(PUSH_FANOUT) {
            // Best effort: the next round carries the state anyway.
            let _ = self.handle.gossip(addr);
        }
    }

    async fn watch_changes(&self, notify: Arc<Notify>) {
        let handle = self
            .handle
            .with_chitchat(move |c| {
                let me = c.self_chitchat_id().node_id.clone();
                let notify = notify.clone();
                c.subscribe_event("", move |ev| {
                    if ev.node.node_id != me {
                        notify.notify_one();
                    }
                })
            })
            .await;
        *self.watch.lock().expect("gossip watch lock") = Some(handle);
    }
}
