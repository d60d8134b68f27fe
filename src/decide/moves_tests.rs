use super::*;

fn me() -> NodeName {
    "n1".parse().unwrap()
}
fn mv(to: Option<&str>, cancel: bool) -> VolumeMove {
    VolumeMove {
        volume: "db".parse().unwrap(),
        to: to.map(|t| t.parse().unwrap()),
        requires: BTreeMap::from([("zone".to_owned(), "b".to_owned())]),
        cancel,
        returning: false,
    }
}
fn order() -> MoveOrder {
    MoveOrder { to: None, requires: BTreeMap::new(), rate_limit: None, verify: false }
}
fn node(name: &str, zone: &str) -> Candidate {
    Candidate {
        name: name.parse().unwrap(),
        alive: true,
        state: NodeState::Active,
        free_bytes: 100,
        labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
        data_plane: true,
    }
}

#[test]
fn a_held_volume_on_an_active_node_gets_an_order_with_the_request_options() {
    let got = apply(&me(), NodeState::Active, Some(&SourcePhase::Held), None, &mv(Some("n2"), false), Some(9), true);
    let want = MoveOrder {
        to: Some("n2".parse().unwrap()),
        requires: BTreeMap::from([("zone".to_owned(), "b".to_owned())]),
        rate_limit: Some(9),
        verify: true,
    };
    assert_eq!(got, Ok(MoveChange::Start(want)));
    // A failed move is retried by moving again.
    let failed = SourcePhase::Failed { reason: "stop hook exit 1".into() };
    assert!(matches!(
        apply(&me(), NodeState::Cordoned, Some(&failed), Some(&order()), &mv(None, false), None, false),
        Ok(MoveChange::Start(_))
    ));
}

#[test]
fn refusals_name_the_fix() {
    let held = SourcePhase::Held;
    let offered = SourcePhase::Offered { since_ms: 1 };
    let cut = SourcePhase::CutOver { holder: "n2".parse().unwrap(), at_ms: 1, verifying: false, verify_failed: None };
    let e = |r: Result<MoveChange, String>| r.unwrap_err();
    assert_eq!(
        e(apply(&me(), NodeState::Active, None, None, &mv(None, false), None, false)),
        "volume db is not owned by n1 (it moved, or never lived here); see `meshdrain volume list`"
    );
    assert_eq!(
        e(apply(&me(), NodeState::Draining, Some(&held), None, &mv(None, false), None, false)),
        "node n1 is draining: every volume of it moves already; `meshdrain undrain n1` first to move only db"
    );
    assert_eq!(
        e(apply(&me(), NodeState::Active, Some(&held), None, &mv(Some("n1"), false), None, false)),
        "volume db is already on n1: give another node to --to"
    );
    assert_eq!(
        e(apply(&me(), NodeState::Active, Some(&offered), Some(&order()), &mv(None, false), None, false)),
        "volume db is moving already (offered); `meshdrain volume move db --cancel` first to change where it goes"
    );
    assert_eq!(
        e(apply(&me(), NodeState::Active, Some(&held), None, &mv(None, true), None, false)),
        "volume db is not moving: nothing to cancel"
    );
    assert_eq!(
        e(apply(&me(), NodeState::Active, Some(&cut), Some(&order()), &mv(None, true), None, false)),
        "volume db is already cut over to n2: the move completes and cannot be cancelled; move it back with `meshdrain volume move db --to n1` once it is done"
    );
    assert_eq!(
        apply(&me(), NodeState::Active, Some(&offered), Some(&order()), &mv(None, true), None, false),
        Ok(MoveChange::Cancel)
    );
}

#[test]
fn the_plan_honours_to_and_the_extra_labels() {
    let cands = vec![node("n1", "a"), node("n2", "a"), node("n3", "b"), node("n4", "b")];
    let plain = VolumeSpec { id: "db".parse().unwrap(), size: 10, requires: BTreeMap::new() };
    let zoned = spec(&plain.id, 10, &BTreeMap::new(), &MoveOrder { requires: mv(None, false).requires, ..order() });
    // --require zone=b: only n3 or n4; the source never appears among the reasons.
    let p = plan(&me(), &zoned, &cands, None);
    assert!(matches!(p.target.as_ref().map(NodeName::as_str), Some("n3" | "n4")), "{p:?}");
    assert_eq!(p.rejected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n2"]);
    // --to n2: n2 whatever the rendezvous says; --to n2 with zone=b: not n2, and why.
    let to: NodeName = "n2".parse().unwrap();
    assert_eq!(plan(&me(), &plain, &cands, Some(&to)).target, Some(to.clone()));
    let p = plan(&me(), &zoned, &cands, Some(&to));
    assert_eq!(p.target, None);
    assert_eq!(p.rejected.iter().map(|(n, w)| format!("{n} {w}")).collect::<Vec<_>>(), ["n2 lacks label zone=b"]);
}
