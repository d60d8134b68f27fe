//! `volume move` in the core: one volume is offered while the node stays active.

use std::collections::BTreeMap;

use super::*;
use crate::cluster::view::RawSnapshot;
use crate::decide::moves::VolumeMove;

fn core() -> (Core, ClusterView) {
    let config = super::tests::config();
    let view = ClusterView::from_raw(&RawSnapshot { self_name: "n1".into(), nodes: vec![] });
    let mut core = Core::new(config, CoreState::default());
    for id in ["a", "b"] {
        core.add_volume(&id.parse().unwrap(), 10, BTreeMap::new(), Hooks::default(), &view).unwrap();
    }
    (core, view)
}

fn request(seq: u64, volume: &str, cancel: bool) -> NodeRequest {
    NodeRequest {
        seq,
        nonce: format!("r{seq}"),
        action: NodeAction::Move,
        issued_by: "n3".parse().unwrap(),
        options: DrainOptions {
            rate_limit: Some(5),
            volume: Some(VolumeMove {
                volume: volume.parse().unwrap(),
                to: None,
                requires: BTreeMap::new(),
                cancel,
                returning: false,
            }),
            ..Default::default()
        },
    }
}

#[test]
fn a_move_offers_one_volume_and_the_node_stays_active_until_cancelled() {
    let (mut core, view) = core();
    assert_eq!(core.apply_request(&request(1, "a", false)), Ok(NodeState::Active));
    core.tick(&view, 10);
    assert_eq!(core.state.node_state, NodeState::Active);
    assert_eq!(core.state.volumes["a"].lease.phase, SourcePhase::Offered { since_ms: 10 });
    assert_eq!(core.state.volumes["a"].lease.epoch, 1);
    assert_eq!(core.state.volumes["b"].lease.phase, SourcePhase::Held);
    assert!(core.desired_keys()["vol/a"].contains("\"offered\""));
    // A second move of it is refused; the refusal is what the issuer sees.
    assert_eq!(
        core.apply_request(&request(2, "a", false)),
        Err("volume a is moving already (offered); `meshdrain volume move a --cancel` first to change where it goes"
            .to_owned())
    );
    assert_eq!(core.state.last_request.as_ref().map(|l| l.action), Some(NodeAction::Move));
    assert!(core.state.last_request.as_ref().unwrap().rejected.is_some());
    // Cancel: back to held, nothing started or stopped (nothing was).
    assert_eq!(core.apply_request(&request(3, "a", true)), Ok(NodeState::Active));
    let out = core.tick(&view, 20);
    assert_eq!(core.state.volumes["a"].lease.phase, SourcePhase::Held);
    assert!(out.commands.is_empty(), "{:?}", out.commands);
    // The order survives a restart (it is durable) and the previous format still loads.
    core.apply_request(&request(4, "b", false)).unwrap();
    let json = serde_json::to_string(&core.state).unwrap();
    let back: CoreState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.volumes["b"].moving.as_ref().and_then(|m| m.rate_limit), Some(5));
    assert!(back.volumes["a"].moving.is_none());
}

#[test]
fn a_draining_node_refuses_a_move() {
    let (mut core, _) = core();
    let drain = NodeRequest { action: NodeAction::Drain, options: DrainOptions::default(), ..request(1, "a", false) };
    core.apply_request(&drain).unwrap();
    let err = core.apply_request(&request(2, "a", false)).unwrap_err();
    assert_eq!(
        err,
        "node n1 is draining: every volume of it moves already; `meshdrain undrain n1` first to move only a"
    );
}
