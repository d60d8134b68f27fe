//! The roll machine's input from a raw gossip snapshot: the agent's and the simulation's
//! one way to read the `roll*` keys (docs/roll.md).

use std::collections::{BTreeMap, BTreeSet};

use super::{Peer, RollInput, RollSpec};
use crate::cluster::schema::{self, RollKey};
use crate::cluster::view::{ClusterView, RawSnapshot};
use crate::decide::model::NodeName;

/// Every node of the view (the generation it chose), its roll keys (values that do not
/// decode are skipped), its state, whether it was declared lost (`lost`), and when its
/// heartbeat last moved (`heard`, ms; `None`: never, so dead; the local node: `now`).
pub fn input_from_raw(
    raw: &RawSnapshot,
    heard: impl Fn(&str) -> Option<u64>,
    lost: &BTreeSet<NodeName>,
    now: u64,
) -> RollInput {
    let view = ClusterView::from_raw(raw);
    let mut peers = BTreeMap::new();
    for (name, v) in &view.nodes {
        let Some(r) = raw.nodes.iter().find(|r| r.name == name.as_str() && r.generation == v.generation) else {
            continue;
        };
        let last_heard_ms = if name.as_str() == raw.self_name { now } else { heard(name.as_str()).unwrap_or(0) };
        let mut p = Peer {
            last_heard_ms,
            state: v.record.as_ref().map(|r| r.state),
            lost: lost.contains(name),
            ..Peer::default()
        };
        for (k, val) in &r.entries {
            match RollKey::parse(k) {
                Some(RollKey::Slot) => p.slot = schema::decode(val).ok(),
                Some(RollKey::Spec(id)) => {
                    if let Ok(s) = schema::decode::<RollSpec>(val)
                        && s.check().is_ok()
                    {
                        p.specs.insert(id, s);
                    }
                }
                Some(RollKey::Step(id)) => {
                    if let Ok(s) = schema::decode(val) {
                        p.steps.insert(id, s);
                    }
                }
                Some(RollKey::Ctl(id)) => {
                    if let Ok(c) = schema::decode(val) {
                        p.ctls.insert(id, c);
                    }
                }
                None => {}
            }
        }
        peers.insert(name.clone(), p);
    }
    RollInput { peers }
}

/// The `roll*` keys a node with roll state `state` publishes.
pub fn keys(state: &super::RollState) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if state.claim.is_some() || !state.votes.is_empty() {
        let slot = super::SlotRecord { claim: state.claim, votes: state.votes.clone() };
        out.insert(RollKey::Slot.render(), schema::encode(&slot));
    }
    for (id, spec) in &state.specs {
        out.insert(RollKey::Spec(id.clone()).render(), schema::encode(spec));
    }
    for (id, step) in &state.steps {
        out.insert(RollKey::Step(id.clone()).render(), schema::encode(step));
    }
    for (id, ctl) in &state.ctls {
        out.insert(RollKey::Ctl(id.clone()).render(), schema::encode(ctl));
    }
    out
}
