//! The world of the drain simulation (tests/sim_drain.rs): agent cores (the agent's own
//! code), a lossy gossip network with relays and a heartbeat failure detector, crashes that
//! keep only what was persisted, and a fake data plane (plane.rs) that keeps every
//! region's bytes. Lost nodes (docs/failures.md): declarations, fenced returns, copies
//! set aside, incomplete copies kept or deleted.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use meshdrain::cluster::view::{ClusterView, RawNode, RawSnapshot};
use meshdrain::decide::core::{Core, CoreConfig, CoreState, DataEvent, Output};
use meshdrain::decide::lease::Timing;
use meshdrain::decide::lost;
use meshdrain::decide::model::{NodeName, VolumeId};
use meshdrain::decide::node::NodeState;

pub const TICK_MS: u64 = 100;
pub const DEAD_AFTER: u64 = 8;
pub const REGIONS: usize = 24;

/// SplitMix64: a tiny, fully deterministic generator.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Default)]
pub struct Known {
    pub generation: u64,
    pub version: u64,
    pub heartbeat: u64,
    pub keys: BTreeMap<String, String>,
}

pub struct Clone_ {
    pub epoch: u64,
    pub source: NodeName,
    pub dest: Vec<Option<u32>>,
    pub fetched: BTreeSet<usize>,
    pub running: bool,
    /// The source was declared lost: nothing more is fetched.
    pub source_lost: bool,
}

pub struct Node {
    pub name: NodeName,
    pub up: bool,
    pub generation: u64,
    pub version: u64,
    pub core: Core,
    pub durable: CoreState,
    pub published: BTreeMap<String, String>,
    pub known: BTreeMap<String, Known>,
    /// When this node last saw each other node's heartbeat grow.
    pub heard: BTreeMap<String, (u64, u64)>,
    pub copies: BTreeMap<VolumeId, Vec<u32>>,
    pub exports: BTreeMap<VolumeId, (NodeName, u64)>,
    pub clones: BTreeMap<VolumeId, Clone_>,
    pub source_running: BTreeSet<VolumeId>,
    pub events: Vec<DataEvent>,
    /// Every (volume, epoch) whose `WorkloadStopped` this node's core was fed (history:
    /// kept across crashes).
    pub stopped: BTreeSet<(VolumeId, u64)>,
    /// Copies set aside after this node learned it was declared lost.
    pub aside: Vec<(VolumeId, u64)>,
}

pub struct World {
    pub rng: Rng,
    pub tick: u64,
    pub nodes: Vec<Node>,
    pub cut: BTreeSet<(usize, usize)>,
    pub expected: BTreeMap<VolumeId, Vec<u32>>,
    pub seed: u64,
    /// Nodes an operator (or `node_lost_after`) declared lost.
    pub lost: BTreeSet<usize>,
    /// `[lease] node_lost_after` of every node, ms.
    pub lost_after: Option<u64>,
    /// Volumes whose every copy went with a lost node (nothing left to heal).
    pub unavailable: BTreeSet<VolumeId>,
    /// Moves that landed (finalized) from a source other than n0: single-volume moves and
    /// their onward hops (tests/sim_drain.rs).
    pub hops: u64,
}

pub fn n0() -> NodeName {
    "n0".parse().unwrap()
}

pub fn config(name: &str, lost_after: Option<u64>) -> CoreConfig {
    CoreConfig {
        name: name.parse().unwrap(),
        labels: BTreeMap::new(),
        free_bytes: 1 << 30,
        data_plane: true,
        gossip_addr: "127.0.0.1:1".parse().unwrap(),
        mesh_addr: Some(format!("fd00::{}", name.trim_start_matches('n'))),
        mesh_backend: None,
        export_addr: "[fd00::1]:3260".into(),
        timing: Timing {
            settle_ms: 400,
            ready_timeout_ms: 20_000,
            retention_ms: 3_000,
            node_lost_after_ms: lost_after,
        },
        wireguard: None,
    }
}

mod plane;

impl World {
    pub fn new(seed: u64, n: usize, volumes: usize, lost_after: Option<u64>) -> World {
        let mut rng = Rng(seed);
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let name: NodeName = format!("n{i}").parse().unwrap();
                let core = Core::new(config(&name, lost_after), CoreState::default());
                Node {
                    name,
                    up: true,
                    generation: 1,
                    version: 0,
                    durable: core.state.clone(),
                    core,
                    published: BTreeMap::new(),
                    known: BTreeMap::new(),
                    heard: BTreeMap::new(),
                    copies: BTreeMap::new(),
                    exports: BTreeMap::new(),
                    clones: BTreeMap::new(),
                    source_running: BTreeSet::new(),
                    events: vec![],
                    stopped: BTreeSet::new(),
                    aside: vec![],
                }
            })
            .collect();
        let mut expected = BTreeMap::new();
        for v in 0..volumes {
            let id: VolumeId = format!("vol{v}").parse().unwrap();
            let data: Vec<u32> = (0..REGIONS).map(|_| rng.next() as u32).collect();
            let empty = ClusterView::default();
            nodes[0].core.add_volume(&id, 1 << 20, BTreeMap::new(), Default::default(), &empty).unwrap();
            nodes[0].durable = nodes[0].core.state.clone();
            nodes[0].copies.insert(id.clone(), data.clone());
            nodes[0].source_running.insert(id.clone());
            expected.insert(id, data);
        }
        World {
            rng,
            tick: 0,
            nodes,
            cut: BTreeSet::new(),
            expected,
            seed,
            lost: BTreeSet::new(),
            lost_after,
            unavailable: BTreeSet::new(),
            hops: 0,
        }
    }

    pub fn now(&self) -> u64 {
        self.tick * TICK_MS
    }

    pub fn linked(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    pub fn view(&self, i: usize) -> ClusterView {
        ClusterView::from_raw(&self.raw(i))
    }

    /// The raw snapshot node `i` sees: itself, and every node it has heard of, dead once
    /// not heard from for `DEAD_AFTER` ticks.
    pub fn raw(&self, i: usize) -> RawSnapshot {
        let me = &self.nodes[i];
        let mut nodes = vec![RawNode {
            name: me.name.to_string(),
            generation: me.generation,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            alive: true,
            heartbeat: self.tick,
            entries: me.published.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }];
        for (name, k) in &me.known {
            let last = me.heard.get(name).map_or(0, |h| h.1);
            nodes.push(RawNode {
                name: name.clone(),
                generation: k.generation,
                gossip_addr: "127.0.0.1:1".parse().unwrap(),
                alive: self.tick.saturating_sub(last) < DEAD_AFTER,
                heartbeat: k.heartbeat,
                entries: k.keys.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            });
        }
        RawSnapshot { self_name: me.name.to_string(), nodes }
    }

    pub fn gossip(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                if a == b || !self.nodes[a].up || !self.nodes[b].up || !self.linked(a, b) || !self.rng.chance(60) {
                    continue;
                }
                // b tells a everything it knows, itself included.
                let mut told: Vec<(String, Known)> =
                    self.nodes[b].known.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let nb = &self.nodes[b];
                told.push((
                    nb.name.to_string(),
                    Known {
                        generation: nb.generation,
                        version: nb.version,
                        heartbeat: self.tick,
                        keys: nb.published.clone(),
                    },
                ));
                let tick = self.tick;
                let na = &mut self.nodes[a];
                for (name, k) in told {
                    if name == na.name {
                        continue;
                    }
                    let mine = na.known.entry(name.clone()).or_default();
                    if (k.generation, k.version, k.heartbeat) > (mine.generation, mine.version, mine.heartbeat) {
                        if k.heartbeat > mine.heartbeat {
                            na.heard.insert(name.clone(), (k.heartbeat, tick));
                        }
                        *mine = k;
                    }
                }
            }
        }
    }

    pub fn step_node(&mut self, i: usize) {
        let view = self.view(i);
        let now = self.now();
        let events = std::mem::take(&mut self.nodes[i].events);
        let mut outs = vec![];
        for ev in events {
            if let DataEvent::WorkloadStopped { volume, epoch } = &ev {
                self.nodes[i].stopped.insert((volume.clone(), *epoch));
            }
            outs.push(self.nodes[i].core.data_event(ev, &view, now));
        }
        let known_before = self.nodes[i].core.state.lost.clone();
        outs.push(self.nodes[i].core.tick(&view, now));
        // An automatic declaration is made only of a node seen dead and only when it
        // loses nothing (docs/failures.md).
        let new: Vec<NodeName> =
            self.nodes[i].core.state.lost.keys().filter(|n| !known_before.contains_key(*n)).cloned().collect();
        for node in new {
            let d = &self.nodes[i].core.state.lost[&node];
            let j = self.nodes.iter().position(|x| x.name == node).unwrap();
            if d.automatic && d.declared_by == self.nodes[i].name {
                // Dead to the declarer (a partition may hide a live node: it is then fenced,
                // which costs no data since nothing lost is its only copy).
                let seed = self.seed;
                assert!(!view.nodes[&node].alive, "seed {seed}: {node} declared lost automatically while seen alive");
                assert!(
                    lost::assess(&view, &node).safe_to_automate(),
                    "seed {seed}: automatic declaration of {node} loses data"
                );
            }
            self.lost.insert(j);
        }
        for out in outs {
            self.apply(i, out);
        }
        let keys = self.nodes[i].core.desired_keys();
        if keys != self.nodes[i].published {
            self.nodes[i].published = keys;
            self.nodes[i].version += 1;
        }
    }

    pub fn apply(&mut self, i: usize, out: Output) {
        if out.persist {
            self.nodes[i].durable = self.nodes[i].core.state.clone();
        }
        for cmd in out.commands {
            self.execute(i, cmd);
        }
    }

    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.source_running.clear();
        n.exports.clear();
        n.events.clear();
        for c in n.clones.values_mut() {
            c.running = false;
        }
    }

    pub fn restart(&mut self, i: usize) {
        let (lost_after, declared) = (self.lost_after, self.lost.contains(&i));
        let n = &mut self.nodes[i];
        n.up = true;
        n.generation += 1;
        n.version = 0;
        n.core = Core::new(config(&n.name, lost_after), n.durable.clone());
        // A restarted agent's gossip starts empty; peers fill it in.
        n.known.clear();
        n.heard.clear();
        for (id, v) in &n.core.state.volumes {
            // A node declared lost is fenced: an operator who declares a node lost keeps
            // its workloads from starting on their own (docs/failures.md).
            if !declared && v.lease.phase == meshdrain::decide::lease::SourcePhase::Held && n.copies.contains_key(id) {
                n.source_running.insert(id.clone());
            }
        }
        let out = self.nodes[i].core.restart();
        self.apply(i, out);
    }

    pub fn check(&self) {
        for id in self.expected.keys() {
            let mut running = vec![];
            for n in &self.nodes {
                if n.source_running.contains(id) || n.clones.get(id).is_some_and(|c| c.running) {
                    running.push(n.name.clone());
                }
            }
            assert!(running.len() <= 1, "seed {}: tick {}: {id} runs on {running:?}", self.seed, self.tick);
        }
        // A node that knows it was declared lost is fenced: nothing runs there.
        for n in self.nodes.iter().filter(|n| n.up && n.core.state.node_state == NodeState::Lost) {
            let runs = !n.source_running.is_empty() || n.clones.values().any(|c| c.running);
            assert!(!runs, "seed {}: fenced {} runs a workload", self.seed, n.name);
        }
    }

    pub fn run_tick(&mut self) {
        self.tick += 1;
        self.gossip();
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                self.step_node(i);
            }
        }
        self.data_plane();
        self.check();
    }
}
