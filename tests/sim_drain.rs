//! Deterministic simulation of whole drains: several agent cores (the same pure code the
//! agent runs), a lossy gossip network with relays, partitions and a heartbeat failure
//! detector, crashes that keep only what was persisted, and a fake data plane that keeps
//! every region's bytes. Each seed is one run; every tick checks the invariants:
//!
//! - the workload of a volume runs on at most one node at a time;
//! - the source deletes its copy only when the holder has every region (never the last copy);
//! - a revoked partial clone is never one the workload runs on;
//! - each region is fetched from the source at most once per clone;
//! - a volume is exported only for an epoch whose `WorkloadStopped` the source's core was
//!   fed (never after a failed stop hook: the lease decides, the data plane only reports);
//! - at the end the source is drained and the new owner's bytes equal the expected bytes
//!   (the source's data overlaid with every write the workload made on the way).

use std::collections::{BTreeMap, BTreeSet};

use meshdrain::cluster::view::{ClusterView, RawNode, RawSnapshot};
use meshdrain::decide::core::{Core, CoreConfig, CoreState, DataCommand, DataEvent, Output};
use meshdrain::decide::lease::Timing;
use meshdrain::decide::model::{CloneProgress, Hydration, NodeName, VolumeId};
use meshdrain::decide::node::{NodeAction, NodeState};

const TICK_MS: u64 = 100;
const DEAD_AFTER: u64 = 8;
const REGIONS: usize = 24;

/// SplitMix64: a tiny, fully deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Default)]
struct Known {
    generation: u64,
    version: u64,
    heartbeat: u64,
    keys: BTreeMap<String, String>,
}

struct Clone_ {
    epoch: u64,
    source: NodeName,
    dest: Vec<Option<u32>>,
    fetched: BTreeSet<usize>,
    running: bool,
}

struct Node {
    name: NodeName,
    up: bool,
    generation: u64,
    version: u64,
    core: Core,
    durable: CoreState,
    published: BTreeMap<String, String>,
    known: BTreeMap<String, Known>,
    /// When this node last saw each other node's heartbeat grow.
    heard: BTreeMap<String, (u64, u64)>,
    copies: BTreeMap<VolumeId, Vec<u32>>,
    exports: BTreeMap<VolumeId, (NodeName, u64)>,
    clones: BTreeMap<VolumeId, Clone_>,
    source_running: BTreeSet<VolumeId>,
    events: Vec<DataEvent>,
    /// Every (volume, epoch) whose `WorkloadStopped` this node's core was fed (history:
    /// kept across crashes).
    stopped: BTreeSet<(VolumeId, u64)>,
}

struct World {
    rng: Rng,
    tick: u64,
    nodes: Vec<Node>,
    cut: BTreeSet<(usize, usize)>,
    expected: BTreeMap<VolumeId, Vec<u32>>,
    seed: u64,
}

fn n0() -> NodeName {
    "n0".parse().unwrap()
}

fn config(name: &str) -> CoreConfig {
    CoreConfig {
        name: name.parse().unwrap(),
        labels: BTreeMap::new(),
        free_bytes: 1 << 30,
        data_plane: true,
        gossip_addr: "127.0.0.1:1".parse().unwrap(),
        mesh_addr: Some(format!("fd00::{}", name.trim_start_matches('n'))),
        mesh_backend: None,
        export_addr: "[fd00::1]:3260".into(),
        timing: Timing { settle_ms: 400, ready_timeout_ms: 20_000, retention_ms: 3_000 },
        wireguard: None,
    }
}

impl World {
    fn new(seed: u64, n: usize, volumes: usize) -> World {
        let mut rng = Rng(seed);
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let name: NodeName = format!("n{i}").parse().unwrap();
                let core = Core::new(config(&name), CoreState::default());
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
        World { rng, tick: 0, nodes, cut: BTreeSet::new(), expected, seed }
    }

    fn now(&self) -> u64 {
        self.tick * TICK_MS
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn view(&self, i: usize) -> ClusterView {
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
        ClusterView::from_raw(&RawSnapshot { self_name: me.name.to_string(), nodes })
    }

    fn gossip(&mut self) {
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

    fn step_node(&mut self, i: usize) {
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
        outs.push(self.nodes[i].core.tick(&view, now));
        for out in outs {
            self.apply(i, out);
        }
        let keys = self.nodes[i].core.desired_keys();
        if keys != self.nodes[i].published {
            self.nodes[i].published = keys;
            self.nodes[i].version += 1;
        }
    }

    fn apply(&mut self, i: usize, out: Output) {
        if out.persist {
            self.nodes[i].durable = self.nodes[i].core.state.clone();
        }
        for cmd in out.commands {
            self.execute(i, cmd);
        }
    }

    fn execute(&mut self, i: usize, cmd: DataCommand) {
        let seed = self.seed;
        let name = self.nodes[i].name.clone();
        match cmd {
            DataCommand::StopWorkload { volume, epoch, .. } => {
                if self.rng.chance(3) {
                    self.nodes[i].events.push(DataEvent::HookFailed { volume, reason: "stop hook exited 1".into() });
                } else {
                    self.nodes[i].source_running.remove(&volume);
                    self.nodes[i].events.push(DataEvent::WorkloadStopped { volume, epoch });
                }
            }
            DataCommand::StartWorkload { volume, .. } => {
                self.nodes[i].source_running.insert(volume);
            }
            DataCommand::OpenExport { volume, holder, epoch, .. } => {
                assert!(
                    self.nodes[i].stopped.contains(&(volume.clone(), epoch)),
                    "seed {seed}: {name} exports {volume} for epoch {epoch} before its WorkloadStopped"
                );
                assert!(!self.nodes[i].source_running.contains(&volume), "seed {seed}: exporting a running volume");
                self.nodes[i].exports.insert(volume.clone(), (holder, epoch));
                self.nodes[i].events.push(DataEvent::ExportOpened { volume, epoch });
            }
            DataCommand::CloseExport { volume } => {
                self.nodes[i].exports.remove(&volume);
            }
            DataCommand::DeleteData { volume } => {
                let complete =
                    self.nodes.iter().any(|n| n.name != name && n.copies.get(&volume) == self.expected.get(&volume));
                assert!(complete, "seed {seed}: {name} deletes {volume} while no other node has every region");
                assert!(!self.nodes[i].source_running.contains(&volume), "seed {seed}: deleting a running volume");
                self.nodes[i].copies.remove(&volume);
            }
            DataCommand::PrepareClone { volume, source, epoch, .. } => {
                let keep = self.nodes[i].clones.get(&volume).is_some_and(|c| c.epoch == epoch);
                if !keep {
                    if let Some(old) = self.nodes[i].clones.get(&volume) {
                        assert!(!old.running, "seed {seed}: replacing a clone the workload runs on");
                    }
                    self.nodes[i].clones.insert(
                        volume.clone(),
                        Clone_ { epoch, source, dest: vec![None; REGIONS], fetched: BTreeSet::new(), running: false },
                    );
                }
                // Login happens over the next ticks (see `data_plane`).
            }
            DataCommand::StartHeldWorkload { volume, .. } => {
                let c = self.nodes[i]
                    .clones
                    .get_mut(&volume)
                    .unwrap_or_else(|| panic!("seed {seed}: start without a clone"));
                c.running = true;
            }
            DataCommand::Finalize { volume, .. } => {
                let Some(c) = self.nodes[i].clones.remove(&volume) else {
                    // Already swapped before a crash: idempotent.
                    assert!(
                        self.nodes[i].copies.contains_key(&volume),
                        "seed {seed}: finalize with neither clone nor data"
                    );
                    self.nodes[i].events.push(DataEvent::Finalized { volume, digest: None });
                    return;
                };
                let data: Vec<u32> = c
                    .dest
                    .iter()
                    .map(|r| {
                        r.unwrap_or_else(|| {
                            panic!(
                                "seed {seed}: {name} finalizes {volume} before full hydration: {:?}",
                                self.nodes[i].core.state.holding.get(&volume)
                            )
                        })
                    })
                    .collect();
                self.nodes[i].copies.insert(volume.clone(), data);
                self.nodes[i].events.push(DataEvent::Finalized { volume, digest: None });
            }
            DataCommand::SetRateLimit { .. } => {}
            DataCommand::VerifyCopy { volume, epoch, .. } => {
                self.nodes[i].events.push(DataEvent::Verified { volume, epoch, result: Ok(()) });
            }
            DataCommand::DiscardClone { volume } => {
                if let Some(c) = self.nodes[i].clones.remove(&volume) {
                    assert!(!c.running, "seed {seed}: discarding a clone the workload runs on");
                }
            }
        }
    }

    /// Logins, hydration and workload writes.
    fn data_plane(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.nodes[i].up {
                continue;
            }
            let ids: Vec<VolumeId> = self.nodes[i].clones.keys().cloned().collect();
            for id in ids {
                let (epoch, source) = {
                    let c = &self.nodes[i].clones[&id];
                    (c.epoch, c.source.clone())
                };
                let s = self.nodes.iter().position(|x| x.name == source).unwrap();
                let me = self.nodes[i].name.clone();
                let reachable = self.nodes[s].up && self.linked(i, s);
                let allowed = self.nodes[s].exports.get(&id) == Some(&(me.clone(), epoch));
                let holder_phase_ready = self.nodes[i].core.state.holding.get(&id).map(|h| h.phase.clone());
                if matches!(holder_phase_ready, Some(meshdrain::decide::lease::HolderPhase::Preparing)) && reachable {
                    self.nodes[i].events.push(if allowed {
                        DataEvent::CloneReady { volume: id.clone(), epoch }
                    } else {
                        DataEvent::CloneFailed { volume: id.clone(), epoch, reason: "login refused".into() }
                    });
                }
                if !self.nodes[i].clones[&id].running {
                    continue;
                }
                // Workload writes whole regions on the clone.
                if self.rng.chance(30) {
                    let r = self.rng.below(REGIONS as u64) as usize;
                    let val = self.rng.next() as u32;
                    self.nodes[i].clones.get_mut(&id).unwrap().dest[r] = Some(val);
                    self.expected.get_mut(&id).unwrap()[r] = val;
                }
                let stalled = !(reachable && allowed);
                if !stalled {
                    for _ in 0..3 {
                        let missing: Vec<usize> =
                            (0..REGIONS).filter(|r| self.nodes[i].clones[&id].dest[*r].is_none()).collect();
                        if missing.is_empty() {
                            break;
                        }
                        let r = missing[self.rng.below(missing.len() as u64) as usize];
                        let val = self.nodes[s]
                            .copies
                            .get(&id)
                            .unwrap_or_else(|| panic!("seed {}: {id} read after delete", self.seed))[r];
                        let c = self.nodes[i].clones.get_mut(&id).unwrap();
                        assert!(c.fetched.insert(r), "seed {}: region {r} of {id} fetched twice", self.seed);
                        c.dest[r] = Some(val);
                    }
                }
                let c = &self.nodes[i].clones[&id];
                let hydrated = c.dest.iter().filter(|r| r.is_some()).count() as u64;
                self.nodes[i].events.push(DataEvent::Progress {
                    volume: id.clone(),
                    progress: CloneProgress {
                        hydration: Hydration { hydrated, total: REGIONS as u64, ..Default::default() },
                        stalled,
                        error: None,
                    },
                });
                if hydrated == REGIONS as u64 {
                    self.nodes[i].events.push(DataEvent::Hydrated { volume: id.clone() });
                }
            }
            // The source's own workload writes while it runs there.
            let running: Vec<VolumeId> = self.nodes[i].source_running.iter().cloned().collect();
            for id in running {
                if self.rng.chance(20)
                    && let Some(copy) = self.nodes[i].copies.get_mut(&id)
                {
                    let r = self.rng.below(REGIONS as u64) as usize;
                    let val = self.rng.next() as u32;
                    copy[r] = val;
                    self.expected.get_mut(&id).unwrap()[r] = val;
                }
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.source_running.clear();
        n.exports.clear();
        n.events.clear();
        for c in n.clones.values_mut() {
            c.running = false;
        }
    }

    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = true;
        n.generation += 1;
        n.version = 0;
        n.core = Core::new(config(&n.name), n.durable.clone());
        for (id, v) in &n.core.state.volumes {
            if v.lease.phase == meshdrain::decide::lease::SourcePhase::Held && n.copies.contains_key(id) {
                n.source_running.insert(id.clone());
            }
        }
        let out = self.nodes[i].core.restart();
        self.apply(i, out);
    }

    fn check(&self) {
        for id in self.expected.keys() {
            let mut running = vec![];
            for n in &self.nodes {
                if n.source_running.contains(id) || n.clones.get(id).is_some_and(|c| c.running) {
                    running.push(n.name.clone());
                }
            }
            assert!(running.len() <= 1, "seed {}: tick {}: {id} runs on {running:?}", self.seed, self.tick);
        }
    }

    fn run_tick(&mut self) {
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

fn run(seed: u64) {
    let mut rng = Rng(seed ^ 0xDEAD_BEEF);
    let n = 4 + rng.below(2) as usize;
    let mut w = World::new(seed, n, 1 + rng.below(3) as usize);
    for _ in 0..10 {
        w.run_tick();
    }
    // Someone asks n0 to drain.
    let issuer = rng.below(n as u64) as usize;
    let view = w.view(issuer);
    let now = w.now();
    let req = w.nodes[issuer].core.issue_request(
        &n0(),
        NodeAction::Drain,
        Default::default(),
        format!("{seed:x}"),
        now,
        &view,
    );
    if issuer == 0 {
        w.nodes[0].core.apply_request(&req).unwrap();
    }
    w.nodes[issuer].durable = w.nodes[issuer].core.state.clone();
    let mut down_until: BTreeMap<usize, u64> = BTreeMap::new();
    for t in 0..700u64 {
        let faulty = t < 350;
        if faulty {
            if rng.chance(3) {
                let victim = rng.below(n as u64) as usize;
                if w.nodes[victim].up && down_until.len() < n - 2 {
                    w.crash(victim);
                    down_until.insert(victim, w.tick + 5 + rng.below(60));
                }
            }
            if rng.chance(2) {
                let a = rng.below(n as u64) as usize;
                let b = rng.below(n as u64) as usize;
                if a != b {
                    w.cut.insert((a.min(b), a.max(b)));
                }
            }
            if rng.chance(4) {
                w.cut.clear();
            }
            if t == 120 && rng.chance(25) {
                // An operator undrains for a while, then drains again.
                let view = w.view(1);
                let now = w.now();
                w.nodes[1].core.issue_request(
                    &n0(),
                    NodeAction::Undrain,
                    Default::default(),
                    format!("u{seed:x}"),
                    now,
                    &view,
                );
                w.nodes[1].durable = w.nodes[1].core.state.clone();
            }
            if t == 200 {
                let view = w.view(2);
                let now = w.now();
                w.nodes[2].core.issue_request(
                    &n0(),
                    NodeAction::Drain,
                    Default::default(),
                    format!("d{seed:x}"),
                    now,
                    &view,
                );
                w.nodes[2].durable = w.nodes[2].core.state.clone();
            }
        }
        if t % 50 == 25
            && w.nodes[0]
                .core
                .state
                .volumes
                .values()
                .any(|v| matches!(v.lease.phase, meshdrain::decide::lease::SourcePhase::Failed { .. }))
        {
            // The operator fixed the hook and drains again.
            let view = w.view(3);
            let now = w.now();
            w.nodes[3].core.issue_request(&n0(), NodeAction::Drain, Default::default(), format!("r{t}"), now, &view);
            w.nodes[3].durable = w.nodes[3].core.state.clone();
        }
        if !faulty {
            w.cut.clear();
            for i in 0..n {
                if !w.nodes[i].up {
                    down_until.insert(i, w.tick);
                }
            }
        }
        let wake: Vec<usize> = down_until.iter().filter(|(_, until)| **until <= w.tick).map(|(i, _)| *i).collect();
        for i in wake {
            down_until.remove(&i);
            w.restart(i);
        }
        w.run_tick();
        let done = w.nodes[0].core.state.node_state == NodeState::Drained && w.nodes[0].copies.is_empty();
        if !faulty && done {
            break;
        }
    }
    let n0 = &w.nodes[0];
    assert_eq!(
        n0.core.state.node_state,
        NodeState::Drained,
        "seed {seed}: n0 not drained: {:#?}",
        n0.core.state.volumes
    );
    for (id, want) in &w.expected {
        let owners: Vec<&Node> = w.nodes.iter().filter(|n| n.core.state.volumes.contains_key(id)).collect();
        assert_eq!(
            owners.len(),
            1,
            "seed {seed}: {id} owned by {:?}",
            owners.iter().map(|n| &n.name).collect::<Vec<_>>()
        );
        assert_ne!(owners[0].name, "n0", "seed {seed}: {id} still on n0");
        assert_eq!(owners[0].copies.get(id), Some(want), "seed {seed}: {id} bytes differ on {}", owners[0].name);
    }
}

#[test]
fn drains_hold_their_invariants_over_200_seeds() {
    let seeds: u64 = std::env::var("MESHDRAIN_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in 0..seeds {
        run(seed);
    }
}
