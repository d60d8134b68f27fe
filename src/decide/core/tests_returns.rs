//! Returns in the core (docs/return.md): the owner checks a return against the volume's
//! arrival and publishes what its engine tracked once the export opens; the node the
//! volume came from takes a delta only for the very copy it handed off, and its retained
//! record stops being a copy gc could delete.
#![allow(clippy::single_range_in_vec_init)] // ranges of one region are what these tests write

use std::collections::BTreeMap;

use super::*;
use crate::cluster::schema::{self, ProgressRecord, VolumeRecord};
use crate::cluster::view::{RawNode, RawSnapshot};
use crate::decide::model::{Arrival, ExportEndpoint};
use crate::decide::moves::VolumeMove;
use crate::decide::returns::{self, ReturnBase, ReturnPlan, WrittenMap};

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn node(name: &str, entries: Vec<(String, String)>) -> RawNode {
    RawNode {
        name: name.into(),
        generation: 1,
        gossip_addr: "10.0.0.2:7946".parse().unwrap(),
        alive: true,
        heartbeat: 1,
        entries,
    }
}

fn view(me: &str, nodes: Vec<RawNode>) -> ClusterView {
    ClusterView::from_raw(&RawSnapshot { self_name: me.into(), nodes })
}

fn back_to(seq: u64, volume: &str, to: &str) -> NodeRequest {
    let mv = VolumeMove {
        volume: volume.parse().unwrap(),
        to: Some(n(to)),
        requires: BTreeMap::new(),
        cancel: false,
        returning: true,
    };
    NodeRequest {
        seq,
        nonce: format!("r{seq}"),
        action: NodeAction::Move,
        issued_by: "n3".parse().unwrap(),
        options: DrainOptions { volume: Some(mv), ..Default::default() },
    }
}

/// `n1` owns `a` (arrived from `n2` at epoch 3) and `b` (created here).
fn owner() -> Core {
    let mut core = Core::new(super::tests::config(), CoreState::default());
    let v = view("n1", vec![]);
    for id in ["a", "b"] {
        core.add_volume(&id.parse().unwrap(), 1 << 20, BTreeMap::new(), Hooks::default(), &v).unwrap();
    }
    let a = core.state.volumes.get_mut("a").unwrap();
    a.lease.epoch = 3;
    a.arrived = Some(Arrival { from: n("n2"), epoch: 3, fetched_bytes: 1 << 20, ret: None });
    core
}

#[test]
fn a_return_is_refused_for_a_volume_that_never_came_from_that_node() {
    let mut core = owner();
    assert_eq!(
        core.apply_request(&back_to(1, "b", "n2")),
        Err("volume b never left n2: it was created on n1; `meshdrain volume move b --to n2` moves it anyway (a full move)".into())
    );
    assert_eq!(
        core.apply_request(&back_to(2, "a", "n4")),
        Err("volume a never left n4 for n1: it arrived from n2; `meshdrain volume move a --to n4` moves it anyway (a full move)".into())
    );
    assert_eq!(core.apply_request(&back_to(3, "a", "n2")), Ok(NodeState::Active));
    assert_eq!(core.state.volumes["a"].moving.as_ref().and_then(|m| m.to.clone()), Some(n("n2")));
}

#[test]
fn the_owner_publishes_the_written_ranges_with_the_open_export_only() {
    let mut core = owner();
    core.apply_request(&back_to(1, "a", "n2")).unwrap();
    let a = core.state.volumes.get_mut("a").unwrap();
    a.lease.epoch = 4;
    a.lease.phase =
        serde_json::from_str(r#"{"phase":"granted","holder":"n2","at_ms":5,"exported":false,"stopped":true}"#).unwrap();
    let map = WrittenMap { clone: "ab".into(), epoch: 3, ranges: vec![0..65536] };
    let v = view("n1", vec![node("n2", vec![])]);
    core.data_event(DataEvent::Written { volume: "a".parse().unwrap(), epoch: 4, result: Ok(map.clone()) }, &v, 10);
    assert!(!core.desired_keys()["vol/a"].contains("return"), "not before the export is open");
    core.data_event(DataEvent::ExportOpened { volume: "a".parse().unwrap(), epoch: 4 }, &v, 11);
    let rec: VolumeRecord = schema::decode(&core.desired_keys()["vol/a"]).unwrap();
    let bits = returns::encode(&[0..65536], 1 << 20, 65536);
    assert_eq!(rec.ret, Some(ReturnBase::Delta { base: n("n2"), epoch: 3, clone: "ab".into(), grain: 65536, bits }));
    // A stale answer (another epoch) changes nothing; an untracked one says why.
    core.data_event(DataEvent::Written { volume: "a".parse().unwrap(), epoch: 3, result: Err("x".into()) }, &v, 12);
    assert!(matches!(
        schema::decode::<VolumeRecord>(&core.desired_keys()["vol/a"]).unwrap().ret,
        Some(ReturnBase::Delta { .. })
    ));
    core.data_event(
        DataEvent::Written { volume: "a".parse().unwrap(), epoch: 4, result: Err("dm-clone".into()) },
        &v,
        13,
    );
    let rec: VolumeRecord = schema::decode(&core.desired_keys()["vol/a"]).unwrap();
    assert_eq!(
        rec.ret,
        Some(ReturnBase::Full { reason: "the writes since cut-over were not tracked: dm-clone".into() })
    );
}

/// `vol/a` as `n2` publishes it: granted to `n1` at epoch 4, export open, with `ret`.
fn granted_to_n1(ret: Option<ReturnBase>) -> (String, String) {
    n2_record(r#"{"phase":"granted","holder":"n1","at_ms":5,"exported":true}"#, ret)
}

/// `vol/a` as `n2` publishes it at epoch 4 in `phase` (JSON).
fn n2_record(phase: &str, ret: Option<ReturnBase>) -> (String, String) {
    let rec = VolumeRecord {
        size: 1 << 20,
        epoch: 4,
        phase: serde_json::from_str(phase).unwrap(),
        requires: BTreeMap::new(),
        export: Some(ExportEndpoint { addr: "10.0.0.2:3260".into(), iqn: "iqn.x:n2.a".into() }),
        rate_limit: None,
        hooks: Hooks::default(),
        arrived: Some(Arrival { from: n("n1"), epoch: 3, fetched_bytes: 1 << 20, ret: None }),
        verify: false,
        ret,
    };
    ("vol/a".into(), schema::encode(&rec))
}

/// `n1` kept its copy of `a`, handed off to `n2` at epoch 3 at `at_ms` 1000.
fn returning_node(kept: bool) -> Core {
    let mut core = Core::new(super::tests::config(), CoreState::default());
    if kept {
        let v = view("n1", vec![]);
        core.add_volume(&"a".parse().unwrap(), 1 << 20, BTreeMap::new(), Hooks::default(), &v).unwrap();
        let a = core.state.volumes.get_mut("a").unwrap();
        a.lease.epoch = 3;
        a.lease.phase = SourcePhase::HandedOff { holder: n("n2"), at_ms: 1000 };
    }
    core
}

fn prepared_base(out: &Output) -> Option<ReturnPlan> {
    out.commands.iter().find_map(|c| match c {
        DataCommand::PrepareClone { base, .. } => Some(base.clone()),
        _ => None,
    })?
}

#[test]
fn the_node_the_volume_came_from_clones_over_its_kept_copy_and_stops_treating_it_as_one() {
    let bits = returns::encode(&[65536..69632], 1 << 20, 65536);
    let delta = ReturnBase::Delta { base: n("n1"), epoch: 3, clone: "ab".into(), grain: 65536, bits: bits.clone() };
    let mut core = returning_node(true);
    let out = core.tick(&view("n1", vec![node("n2", vec![granted_to_n1(Some(delta.clone()))])]), 2000);
    assert_eq!(prepared_base(&out), Some(ReturnPlan::Delta { grain: 65536, bits, since_ms: 1000 }));
    assert!(!core.state.volumes.contains_key("a"), "the kept copy is the clone's dest now: gc must not delete it");
    assert!(core.state.incoming["a"].base.is_some(), "kept for a restarted prepare");
    // The copy is gone (gc): a full move, and it says why.
    let mut core = returning_node(false);
    let out = core.tick(&view("n1", vec![node("n2", vec![granted_to_n1(Some(delta))])]), 2000);
    assert_eq!(
        prepared_base(&out),
        Some(ReturnPlan::Full {
            reason: "n1 no longer holds a copy (deleted by gc or after the retention window)".into()
        })
    );
    // An ordinary move here (no return base, nothing kept): no base at all.
    let mut core = returning_node(false);
    let out = core.tick(&view("n1", vec![node("n2", vec![granted_to_n1(None)])]), 2000);
    assert!(
        out.commands.iter().any(|c| matches!(c, DataCommand::PrepareClone { base: None, .. })),
        "{:?}",
        out.commands
    );
}

/// docs/return.md: a holder that finds the kept copy changed since its hand-off clones it
/// all; `progress/a`, the `arrived` record once it is here and a prepare after a restart
/// say so, not the delta planned.
#[test]
fn a_delta_the_holder_made_full_is_published_as_full_with_its_reason() {
    let bits = returns::encode(&[65536..69632], 1 << 20, 65536);
    let delta = ReturnBase::Delta { base: n("n1"), epoch: 3, clone: "ab".into(), grain: 65536, bits };
    let mut core = returning_node(true);
    let v = view("n1", vec![node("n2", vec![granted_to_n1(Some(delta.clone()))])]);
    core.tick(&v, 2000);
    let ret = |core: &Core| schema::decode::<ProgressRecord>(&core.desired_keys()["progress/a"]).unwrap().ret;
    assert_eq!(ret(&core).as_deref(), Some("delta"));
    let why = "the copy kept here (/pool/a.img) changed 5 ms after it was handed off".to_owned();
    let fell_back = |epoch| DataEvent::ReturnFull { volume: "a".parse().unwrap(), epoch, reason: why.clone() };
    // Another epoch's word changes nothing.
    assert!(!core.data_event(fell_back(3), &v, 2001).persist);
    assert_eq!(ret(&core).as_deref(), Some("delta"));
    assert!(core.data_event(fell_back(4), &v, 2002).persist, "a restarted agent must not plan the delta again");
    assert_eq!(ret(&core), Some(format!("full: {why}")));
    // A restarted agent prepares the full move it is.
    let mut restarted = Core::new(super::tests::config(), core.state.clone());
    restarted.restart();
    let restarted = restarted.tick(&v, 2003);
    assert_eq!(prepared_base(&restarted), Some(ReturnPlan::Full { reason: why.clone() }));
    // Through to the end: the volume's `arrived` record keeps the mode used.
    core.data_event(DataEvent::CloneReady { volume: "a".parse().unwrap(), epoch: 4 }, &v, 2004);
    let cut = view("n1", vec![node("n2", vec![n2_record(r#"{"phase":"cut_over","holder":"n1","at_ms":6}"#, None)])]);
    core.tick(&cut, 2005);
    core.data_event(DataEvent::Hydrated { volume: "a".parse().unwrap() }, &cut, 2006);
    core.data_event(DataEvent::Finalized { volume: "a".parse().unwrap(), digest: None }, &cut, 2007);
    let rec: VolumeRecord = schema::decode(&core.desired_keys()["vol/a"]).unwrap();
    assert_eq!(rec.arrived.and_then(|a| a.ret), Some(format!("full: {why}")));
}
