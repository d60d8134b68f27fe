//! Rolls in the drain simulation (tests/sim_world/, docs/roll.md): four agent cores with
//! their roll machines (the agent's own code), lossy gossip with a heartbeat failure
//! detector, the fake data plane moving real regions. Two rolls are started at once from
//! two nodes; in half the seeds a node crashes mid-roll and comes back (with what it
//! persisted). Every tick: at most one node is cordoned, draining or drained (a node back
//! from the dead is given the time to hear its peers), and the drain invariants of
//! sim_world hold. At the end both rolls are done on every node, every node is active and
//! every volume has one live owner holding exactly its bytes.
//!
//! `SIM_SEEDS` sets the number of seeds (default 6; SIM_SEEDS=100 for more).

mod sim_world;

use std::collections::BTreeSet;

use meshdrain::decide::model::NodeName;
use meshdrain::decide::node::{NodeAction, NodeState};
use meshdrain::decide::roll::{
    RollAction, RollCtl, RollEffect, RollEvent, RollMachine, RollPhase, RollSpec, RollState, RollTiming, Step, report,
    view,
};
use sim_world::{DEAD_AFTER, TICK_MS, World};

/// Retention of handed-off copies in this simulation (longer than any run).
const KEEP: u64 = 1 << 40;

/// One node's roll side.
struct Roller {
    machine: RollMachine,
    durable: RollState,
    /// A running `--exec`: when it ends, roll, attempt.
    exec: Option<(u64, String, u32)>,
    /// Effects of a restart, carried out on the next tick.
    pending: Vec<RollEffect>,
}

fn roll_tick(w: &mut World, rollers: &mut [Roller], i: usize, nonce: &mut u64) {
    let now = w.now();
    let snapshot = w.raw(i);
    let heard = |name: &str| w.nodes[i].heard.get(name).map(|h| h.1 * TICK_MS);
    let lost: BTreeSet<NodeName> = w.nodes[i].core.state.lost.keys().cloned().collect();
    let input = view::input_from_raw(&snapshot, heard, &lost, now);
    let r = &mut rollers[i];
    let failed = w.nodes[i].core.state.volumes.iter().find_map(|(id, v)| match &v.lease.phase {
        meshdrain::decide::lease::SourcePhase::Failed { reason } => Some(format!("volume {id}: {reason}")),
        _ => None,
    });
    let event = match r.exec.clone() {
        _ if failed.is_some() => RollEvent::DrainFailed { reason: failed.unwrap() },
        Some((at, roll, attempt)) if at <= now => {
            r.exec = None;
            RollEvent::ExecDone {
                roll,
                attempt,
                exit: Some(0),
                output: format!("upgraded {}\n", w.nodes[i].name),
                error: None,
            }
        }
        _ => RollEvent::Tick,
    };
    let mut fx = std::mem::take(&mut r.pending);
    fx.extend(r.machine.step(event, &input, w.nodes[i].core.state.node_state, now));
    r.durable = r.machine.state.clone();
    for e in fx {
        match e {
            RollEffect::Drain | RollEffect::Undrain => {
                let action = if e == RollEffect::Drain { NodeAction::Drain } else { NodeAction::Undrain };
                let me = w.nodes[i].name.clone();
                let view = w.view(i);
                *nonce += 1;
                let node = &mut w.nodes[i];
                let req = node.core.issue_request(&me, action, Default::default(), format!("{nonce:016x}"), now, &view);
                node.core.apply_request(&req).unwrap();
                node.durable = node.core.state.clone();
            }
            RollEffect::Exec { roll, attempt, .. } => {
                r.exec = Some((now + w.rng.below(1500), roll, attempt));
            }
        }
    }
    let node = &mut w.nodes[i];
    let mut keys = node.core.desired_keys();
    keys.extend(view::keys(&r.machine.state));
    if keys != node.published {
        node.published = keys;
        node.version += 1;
    }
}

fn spec(order: &[usize], by: usize) -> RollSpec {
    RollSpec {
        nodes: order.iter().map(|i| format!("n{i}").parse().unwrap()).collect(),
        max_unavailable: 1,
        exec: Some("upgrade".into()),
        undrain_after: true,
        return_after: false,
        pause_ms: 300,
        exec_timeout_ms: meshdrain::decide::roll::DEFAULT_EXEC_TIMEOUT_MS,
        started_ms: 500,
        started_by: format!("n{by}").parse().unwrap(),
    }
}

/// Runs one seed; returns the ticks it took and how many resumes it needed.
fn run(seed: u64) -> (u64, u32) {
    let n = 4;
    let mut w = World::new(seed, n, 3, None);
    // Volumes hop several times in a roll; the world's delete check knows only the first
    // hop's copies, so handed-off copies are kept for the run (retention is not at test).
    for node in &mut w.nodes {
        node.core.config.timing.retention_ms = KEEP;
    }
    let timing = RollTiming { dead_after_ms: DEAD_AFTER * TICK_MS * 2 };
    let mut rollers: Vec<Roller> = (0..n)
        .map(|i| Roller {
            machine: RollMachine { me: format!("n{i}").parse().unwrap(), timing, state: RollState::default() },
            durable: RollState::default(),
            exec: None,
            pending: Vec::new(),
        })
        .collect();
    let crash =
        seed.is_multiple_of(2).then(|| (w.rng.below(n as u64) as usize, 20 + w.rng.below(300), 5 + w.rng.below(60)));
    let mut nonce = seed << 20;
    let mut back: Option<(usize, u64)> = None;
    let mut resumed = 0;
    for _ in 0..6000 {
        w.run_tick();
        let t = w.tick;
        if t == 5 {
            for (i, id, order) in [(1, "a", [0, 1, 2, 3]), (2, "b", [3, 2, 1, 0])] {
                let input = Default::default();
                rollers[i].machine.step(
                    RollEvent::Start { id: id.into(), spec: spec(&order, i) },
                    &input,
                    NodeState::Active,
                    w.now(),
                );
            }
        }
        if let Some((c, at, down)) = crash {
            if t == at {
                w.crash(c);
                rollers[c].exec = None;
            }
            if t == at + down {
                w.restart(c);
                w.nodes[c].core.config.timing.retention_ms = KEEP;
                let r = &mut rollers[c];
                r.machine.state = r.durable.clone();
                // A command the crash interrupted is taken as done (RollMachine::restart).
                let now = w.now();
                r.pending = r.machine.restart(now);
                r.durable = r.machine.state.clone();
                back = Some((c, t));
            }
        }
        for i in 0..n {
            if w.nodes[i].up {
                roll_tick(&mut w, &mut rollers, i, &mut nonce);
            }
        }
        // An operator on another live node resumes a failed roll a while after it failed
        // (a volume's stop hook failed: the drain is tried again).
        let failed = (0..n).filter(|i| w.nodes[*i].up).find_map(|i| {
            let s = &rollers[i].machine.state.steps;
            s.iter().find(|(_, r)| r.step == Step::Failed).map(|(id, r)| (i, id.clone(), r.since_ms))
        });
        if let Some((i, id, since)) = failed
            && w.now() >= since + 2000
        {
            let j = (1..n).map(|k| (i + k) % n).find(|j| w.nodes[*j].up).unwrap_or(i);
            nonce += 1;
            let ctl = RollCtl {
                seq: w.now(),
                nonce: format!("{nonce:016x}"),
                action: RollAction::Resume,
                issued_by: w.nodes[j].name.clone(),
            };
            let state = w.nodes[j].core.state.node_state;
            let fx = rollers[j].machine.step(RollEvent::Ctl { id, ctl }, &Default::default(), state, w.now());
            assert!(fx.is_empty() || j == i, "{fx:?}");
            rollers[j].durable = rollers[j].machine.state.clone();
            resumed += 1;
        }
        // The bound. A node back from the dead may find its slot given away: it undrains as
        // soon as it hears its peers (a few gossip rounds).
        let out: Vec<String> = (0..n)
            .filter(|i| w.nodes[*i].up && back.is_none_or(|(b, at)| b != *i || t > at + 2 * DEAD_AFTER))
            .filter(|i| w.nodes[*i].core.state.node_state != NodeState::Active)
            .map(|i| format!("n{i}={}", w.nodes[i].core.state.node_state))
            .collect();
        assert!(out.len() <= 1, "seed {seed}: tick {t}: {out:?} unavailable at once (crash {crash:?})");
        // Done: both rolls done on every node, as every node's gossip shows them.
        let done =
            (0..n).all(|i| w.nodes[i].up && rollers[i].machine.state.specs.len() == 2 && seen_done(&w, &rollers, i));
        if done {
            check_end(&w, &rollers, seed);
            return (t, resumed);
        }
    }
    let steps: Vec<String> = rollers
        .iter()
        .zip(&w.nodes)
        .map(|(r, n)| {
            let vols: Vec<String> = n
                .core
                .state
                .volumes
                .iter()
                .map(|(id, v)| format!("{id}@{}:{:?}", v.lease.epoch, v.lease.phase))
                .collect();
            let holding: Vec<String> = n.core.state.holding.iter().map(|(id, h)| format!("{id}:{h:?}")).collect();
            format!(
                "{} {} up {} claim {:?} steps {:?} volumes {vols:?} holding {holding:?}",
                n.name,
                n.core.state.node_state,
                n.up,
                r.machine.state.claim,
                r.machine.state.steps.iter().map(|(k, v)| (k.clone(), v.step)).collect::<Vec<_>>()
            )
        })
        .collect();
    panic!("seed {seed}: the rolls did not finish in 6000 ticks (crash {crash:?}): {steps:#?}");
}

/// Whether node `i`'s gossip shows every roll it knows done.
fn seen_done(w: &World, rollers: &[Roller], i: usize) -> bool {
    let snapshot = w.raw(i);
    let input = view::input_from_raw(&snapshot, |_| Some(w.now()), &BTreeSet::new(), w.now());
    let r = &rollers[i].machine;
    r.state.specs.iter().all(|(id, spec)| report(id, spec, &input, &r.me, w.now(), r.timing).phase == RollPhase::Done)
}

fn check_end(w: &World, rollers: &[Roller], seed: u64) {
    for (i, node) in w.nodes.iter().enumerate() {
        assert_eq!(node.core.state.node_state, NodeState::Active, "seed {seed}: n{i}");
        assert!(seen_done(w, rollers, i), "seed {seed}: n{i}");
    }
    for (id, data) in &w.expected {
        let owners: Vec<usize> = (0..w.nodes.len())
            .filter(|i| {
                w.nodes[*i]
                    .core
                    .state
                    .volumes
                    .get(id)
                    .is_some_and(|v| v.lease.phase == meshdrain::decide::lease::SourcePhase::Held)
            })
            .collect();
        assert_eq!(owners.len(), 1, "seed {seed}: {id} owned by {owners:?}");
        assert_eq!(w.nodes[owners[0]].copies.get(id), Some(data), "seed {seed}: {id} bytes on n{}", owners[0]);
    }
}

#[test]
fn two_rolls_at_once_keep_one_node_out_at_most_and_finish() {
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut ticks = Vec::new();
    let mut resumes = 0;
    for seed in 0..seeds {
        let (t, r) = run(seed);
        ticks.push(t);
        resumes += r;
    }
    ticks.sort();
    eprintln!("sim_roll: {resumes} resumes after failed drains");
    eprintln!(
        "sim_roll: {seeds} seeds, ticks to finish: median {}, max {}",
        ticks[ticks.len() / 2],
        ticks[ticks.len() - 1]
    );
}
