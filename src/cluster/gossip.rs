//! The gossip seam. The agent sees only [`Gossip`]: set or delete its own keys, and take a
//! [`RawSnapshot`] of everyone's. [`ChitchatGossip`] implements it over chitchat with any
//! chitchat transport: UDP for processes, `ChannelTransport` for many agents in one
//! process (where tests cut links to make partitions).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle, spawn_chitchat};
use tokio::sync::Notify;
use tracing::{error, warn};

use super::identity::{self, GossipHealth, GossipMode, NameCheck, NameConflict, Record};
use super::transport::GossipStats;
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
    /// Trust state for `status`: protection mode, dropped datagrams, name conflicts.
    fn health(&self) -> GossipHealth {
        GossipHealth::default()
    }
}

/// How a gossip instance is protected, and what it checks (docs/threat-model.md).
#[derive(Default)]
pub struct GossipGuard {
    /// Reported in `status`.
    pub mode: GossipMode,
    /// The transport's counters (the same `Arc` the [`super::transport::GuardedTransport`] got).
    pub stats: Arc<GossipStats>,
    /// With the mesh: records whose name is not certified for their address are dropped.
    pub name_check: Option<Arc<dyn NameCheck>>,
}

/// Identities already logged (conflicts, mismatches), bounded: cleared when full.
const MAX_REMEMBERED: usize = 1024;

#[derive(Default)]
struct Shared {
    guard: GossipGuard,
    conflicts: Mutex<Vec<NameConflict>>,
    logged: Mutex<HashSet<(String, u64, SocketAddr)>>,
    mismatched: AtomicU64,
}

impl Shared {
    /// Remembers `id`; true the first time (so each is logged once).
    fn first_time(&self, id: (String, u64, SocketAddr)) -> bool {
        let mut logged = self.logged.lock().expect("gossip log lock");
        if logged.len() >= MAX_REMEMBERED {
            logged.clear();
        }
        logged.insert(id)
    }

    fn note_conflicts(&self, me: &Record, found: Vec<NameConflict>) {
        for c in &found {
            let Ok(addr) = c.gossip_addr.parse() else { continue };
            if !self.first_time((c.name.clone(), c.generation, addr)) {
                continue;
            }
            if c.we_are_newcomer {
                error!(
                    name = %c.name, other = %c.gossip_addr, other_generation = c.generation, generation = me.generation,
                    "another live agent already runs as this node's name; this agent is the newcomer and refuses to run: give one of them another `name`"
                );
            } else if c.ours {
                error!(
                    name = %c.name, other = %c.gossip_addr, other_generation = c.generation, generation = me.generation,
                    "another agent claims this node's name; it is ignored here (this node stays itself) and should refuse to run: give one of them another `name`"
                );
            } else {
                warn!(name = %c.name, other = %c.gossip_addr, other_generation = c.generation, "two live agents claim one name: the older record is used");
            }
        }
        *self.conflicts.lock().expect("conflicts lock") = found;
    }

    fn note_mismatch(&self, n: &RawNode, certified: &str) {
        if self.first_time((n.name.clone(), n.generation, n.gossip_addr)) {
            self.mismatched.fetch_add(1, Relaxed);
            warn!(
                name = %n.name, addr = %n.gossip_addr, %certified,
                "ignoring a gossip record: its name is not the one the fleet CA certified for its mesh address"
            );
        }
    }
}

/// Reads a gossip instance's [`GossipHealth`] after it has been moved into an agent.
#[derive(Clone)]
pub struct HealthHandle(Arc<Shared>);

impl HealthHandle {
    /// The current health (conflicts as of the agent's last snapshot).
    pub fn health(&self) -> GossipHealth {
        let s = &self.0;
        GossipHealth {
            mode: s.guard.mode,
            counters: Box::new(s.guard.stats.counters()),
            conflicts: s.conflicts.lock().expect("conflicts lock").clone(),
            name_mismatch_ignored: s.mismatched.load(Relaxed),
        }
    }
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
    shared: Arc<Shared>,
}

impl ChitchatGossip {
    /// Starts chitchat on `transport` with the initial key-values.
    pub async fn start(
        settings: &GossipSettings,
        transport: &dyn Transport,
        initial: Vec<(String, String)>,
    ) -> Result<Self, GossipError> {
        Self::start_guarded(settings, transport, initial, GossipGuard::default()).await
    }

    /// Starts chitchat with a [`GossipGuard`]: its mode and counters show in `status`, its
    /// name check filters snapshots.
    pub async fn start_guarded(
        settings: &GossipSettings,
        transport: &dyn Transport,
        initial: Vec<(String, String)>,
        guard: GossipGuard,
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
        let shared = Arc::new(Shared { guard, ..Shared::default() });
        Ok(Self { handle, watch: Mutex::new(None), shared })
    }

    /// A handle on this instance's health that outlives moving it into an agent.
    pub fn health_handle(&self) -> HealthHandle {
        HealthHandle(self.shared.clone())
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
        let (self_id, mut nodes) = self
            .handle
            .with_chitchat(|c| {
                let self_id = c.self_chitchat_id().clone();
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let nodes: Vec<RawNode> = c
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
                (self_id, nodes)
            })
            .await;
        let me = Record {
            name: self_id.node_id.to_string(),
            generation: self_id.generation_id,
            addr: self_id.gossip_advertise_addr,
            alive: true,
        };
        let records: Vec<Record> = nodes
            .iter()
            .map(|n| Record { name: n.name.clone(), generation: n.generation, addr: n.gossip_addr, alive: n.alive })
            .collect();
        self.shared.note_conflicts(&me, identity::conflicts(&me, &records));
        // Only this process speaks for our name here: another record with it (an impostor,
        // or our previous incarnation) never replaces ours in our own view.
        let is_me = |n: &RawNode| n.generation == me.generation && n.gossip_addr == me.addr;
        nodes.retain(|n| n.name != me.name || is_me(n));
        if let Some(check) = &self.shared.guard.name_check {
            let certified = check.certified(&nodes);
            nodes.retain(|n| {
                let keep = n.name == me.name || identity::name_matches(&certified, n);
                // A record whose address has no certificate yet (its first record precedes its
                // WireGuard advert) waits silently; a different certified name is counted.
                if let (false, Some(other)) = (keep, certified.get(&n.gossip_addr.ip())) {
                    self.shared.note_mismatch(n, other);
                }
                keep
            });
        }
        RawSnapshot { self_name: me.name, nodes }
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

    fn health(&self) -> GossipHealth {
        self.health_handle().health()
    }
}
