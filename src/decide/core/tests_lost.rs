//! The core's side of lost nodes (docs/failures.md): the declaration's refusals and its
//! record, fencing a node that learns it was declared, restart work held back until the
//! lease is seen, `gc` of copies set aside, and `node_lost_after`.

use std::collections::BTreeMap;

use super::*;
use crate::cluster::schema::{self, VolumeRecord};
use crate::cluster::view::{RawNode, RawSnapshot};
use crate::decide::lease::HolderVolume;

/// The shared test settings (core/tests.rs) as node `name`, declaring silent nodes lost
/// after `lost_after` ms.
fn config(name: &str, lost_after: Option<u64>) -> CoreConfig {
    CoreConfig {
        name: name.parse().unwrap(),
        timing: Timing { node_lost_after_ms: lost_after, ..Timing::for_interval(100) },
        ..super::tests::config()
    }
}

fn raw(name: &str, alive: bool, entries: Vec<(String, String)>) -> RawNode {
    RawNode {
        name: name.into(),
        generation: 1,
        gossip_addr: "10.0.0.9:7946".parse().unwrap(),
        alive,
        heartbeat: 1,
        entries,
    }
}

fn view(me: &str, nodes: Vec<RawNode>) -> ClusterView {
    ClusterView::from_raw(&RawSnapshot { self_name: me.into(), nodes })
}

/// `vol/db` as `n1` publishes it: cut over to `n2` at epoch 3.
fn cut_over_to_n2() -> (String, String) {
    let rec = VolumeRecord {
        size: 10,
        epoch: 3,
        phase: SourcePhase::CutOver {
            holder: "n2".parse().unwrap(),
            at_ms: 1_764_990_000_000,
            verifying: false,
            verify_failed: None,
        },
        requires: BTreeMap::new(),
        export: None,
        rate_limit: None,
        hooks: Hooks::default(),
        arrived: None,
        verify: false,
        ret: None,
    };
    ("vol/db".into(), schema::encode(&rec))
}

#[test]
fn a_declaration_is_refused_for_a_live_unknown_or_own_node_and_for_lost_writes() {
    let mut core = Core::new(config("n3", None), CoreState::default());
    let v = view("n3", vec![raw("n1", true, vec![cut_over_to_n2()]), raw("n2", true, vec![])]);
    let n = |s: &str| -> NodeName { s.parse().unwrap() };
    let err = |core: &mut Core, node: &str, force, accept| {
        core.declare_lost(&n(node), force, accept, false, &v, 5).unwrap_err().to_string()
    };
    assert_eq!(
        err(&mut core, "n2", false, false),
        "node n2 is alive in gossip: a live node is not lost. Stop its agent (or wait for the failure detector), or pass --force if it is cut off for good"
    );
    assert_eq!(
        err(&mut core, "n9", false, false),
        "no node named \"n9\" in the fleet; pass --force to declare it anyway"
    );
    assert_eq!(
        err(&mut core, "n3", true, true),
        "node n3 cannot declare itself lost: run `meshdrain node lost n3` on another node"
    );
    assert_eq!(
        err(&mut core, "n2", true, false),
        "declaring n2 lost would lose every write made on it since the cut-over of 1 volume(s):\n  \
         db: cut over from n1 at 2025-12-06T03:00:00Z (epoch 3); n2 last reported: no progress reported\n\
         the sources' copies from before the cut-over would become the volumes again; pass --accept-data-loss to do that, or bring n2 back"
    );
    assert!(core.state.lost.is_empty(), "a refusal records nothing");
    let (dry, out) = core.declare_lost(&n("n2"), true, true, true, &v, 5).unwrap();
    assert_eq!((dry.would_lose.len(), out.persist, core.state.lost.len()), (1, false, 0), "a dry run records nothing");
    let (_, out) = core.declare_lost(&n("n2"), true, true, false, &v, 5).unwrap();
    assert!(out.persist);
    assert_eq!(core.desired_keys()["lost/n2"], r#"{"accept_data_loss":true,"at_ms":5,"declared_by":"n3","v":1}"#);
    // Declaring again (here without the flag, as a second operator might) changes nothing.
    let (_, again) = core.declare_lost(&n("n2"), true, true, false, &v, 9).unwrap();
    assert!(!again.persist);
}

/// A holder `n2` running `db` from `n1` at epoch 3, with a `stop` hook.
fn running_holder() -> CoreState {
    let mut state = CoreState::default();
    let (mut h, _) = HolderVolume::granted(&"db".parse().unwrap(), &"n1".parse().unwrap(), 3, 10);
    h.phase = HolderPhase::Running { stalled: false };
    state.holding.insert("db".parse().unwrap(), h);
    let hooks = Hooks { stop: Some("systemctl stop db".into()), ..Hooks::default() };
    state.incoming.insert(
        "db".parse().unwrap(),
        Incoming { export: None, requires: BTreeMap::new(), hooks, verify: false, base: None },
    );
    state
}

#[test]
fn a_node_that_learns_it_was_declared_lost_is_fenced_and_sets_its_copies_aside_until_gc() {
    let mut core = Core::new(config("n2", None), running_holder());
    let restart = core.restart();
    assert!(restart.commands.is_empty(), "restart work waits for a look at the fleet: {:?}", restart.commands);
    let decl =
        LostDeclaration { declared_by: "n3".parse().unwrap(), at_ms: 1, accept_data_loss: true, automatic: false };
    let v = view("n2", vec![raw("n3", true, vec![("lost/n2".into(), schema::encode(&decl))])]);
    let out = core.tick(&v, 10);
    let db: VolumeId = "db".parse().unwrap();
    assert_eq!(
        out.commands,
        vec![DataCommand::SetAside { volume: db.clone(), epoch: 3, hook: Some("systemctl stop db".into()) }]
    );
    assert!(out.persist);
    assert_eq!(core.state.node_state, NodeState::Lost);
    assert!(core.state.holding.is_empty());
    assert_eq!(core.state.aside, vec![AsideCopy { volume: db.clone(), epoch: 3, role: "holder".into(), at_ms: 10 }]);
    assert!(
        core.apply_request(&crate::decide::request::NodeRequest {
            seq: 1,
            nonce: "x".into(),
            action: NodeAction::Undrain,
            issued_by: "n3".parse().unwrap(),
            options: Default::default(),
        })
        .is_err()
    );
    // Nothing more happens on later ticks; `gc` deletes what was set aside.
    assert_eq!(core.tick(&v, 20).commands, vec![]);
    core.request_gc();
    assert_eq!(core.tick(&v, 30).commands, vec![DataCommand::DeleteAside { volume: db, epoch: 3 }]);
    assert!(core.state.aside.is_empty());
}

#[test]
fn a_restarted_holder_starts_its_workload_only_once_the_source_shows_the_cut_over_to_it() {
    let mut core = Core::new(config("n2", None), running_holder());
    assert!(core.restart().commands.is_empty());
    // Another node is seen, but not the source's record: still waiting.
    assert!(core.tick(&view("n2", vec![raw("n3", true, vec![])]), 10).commands.is_empty());
    // The source moved on (epoch 4: the operator took its copy back): never started.
    let mut moved = cut_over_to_n2();
    moved.1 = moved.1.replace("\"epoch\":3", "\"epoch\":4");
    assert!(core.tick(&view("n2", vec![raw("n1", true, vec![moved])]), 20).commands.is_empty());
    let rec = cut_over_to_n2();
    let out = core.tick(&view("n2", vec![raw("n1", true, vec![rec])]), 30);
    let kinds: Vec<&str> = out
        .commands
        .iter()
        .map(|c| match c {
            DataCommand::PrepareClone { .. } => "prepare",
            DataCommand::StartHeldWorkload { .. } => "start",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["prepare", "start"]);
}

#[test]
fn node_lost_after_declares_only_a_node_whose_loss_loses_nothing() {
    let mut core = Core::new(config("n3", Some(1_000)), CoreState::default());
    let v =
        view("n3", vec![raw("n1", true, vec![cut_over_to_n2()]), raw("n2", false, vec![]), raw("n4", false, vec![])]);
    core.tick(&v, 0);
    assert!(core.state.lost.is_empty(), "not dead long enough");
    let out = core.tick(&v, 1_000);
    assert!(out.persist);
    let lost: Vec<(&str, bool)> = core.state.lost.iter().map(|(n, d)| (n.as_str(), d.automatic)).collect();
    assert_eq!(lost, [("n4", true)], "n2 has a volume cut over to it: only an operator may declare it");
}

/// A source lost while its holder is `Ready` (granted, not cut over): the holder fails its
/// clone on the declaration (lease/holder.rs), so the volume's only copy is on the lost
/// node. `node lost` must call it unavailable, not "incomplete, 0 of 0 regions missing"
/// with a `partial accept` nothing could answer (found by the drain simulation, seed 259).
#[test]
fn a_source_lost_before_its_holder_ran_the_workload_leaves_the_volume_unavailable() {
    let granted = VolumeRecord {
        phase: SourcePhase::Granted { holder: "n2".parse().unwrap(), at_ms: 1, exported: true, stopped: false },
        ..schema::decode::<VolumeRecord>(&cut_over_to_n2().1).unwrap()
    };
    let ready = schema::ProgressRecord {
        source: "n1".parse().unwrap(),
        epoch: 3,
        phase: HolderPhase::Ready,
        hydration: Default::default(),
        error: None,
        ret: None,
    };
    let running = schema::ProgressRecord { phase: HolderPhase::Running { stalled: false }, ..ready.clone() };
    for (progress, incomplete) in [(ready, false), (running, true)] {
        let v = view(
            "n3",
            vec![
                raw("n1", false, vec![("vol/db".into(), schema::encode(&granted))]),
                raw("n2", true, vec![("progress/db".into(), schema::encode(&progress))]),
            ],
        );
        let report = crate::decide::lost::assess(&v, &"n1".parse().unwrap());
        assert_eq!(report.incomplete.len(), usize::from(incomplete), "{:?}: {report:?}", progress.phase);
        assert_eq!(report.unavailable.len(), usize::from(!incomplete), "{:?}: {report:?}", progress.phase);
    }
}
