use super::*;

fn vol(id: &str, owner: &str, from: Option<&str>, source_phase: Option<&str>) -> VolumeStatus {
    VolumeStatus {
        id: id.into(),
        owner: owner.into(),
        size: 1 << 30,
        epoch: 3,
        phase: "held".into(),
        holder: None,
        holder_phase: None,
        hydration: Default::default(),
        arrived_from: from.map(Into::into),
        source_phase: source_phase.map(Into::into),
        return_mode: None,
        stranded: false,
        stalled: false,
        error: None,
        path: None,
    }
}

fn fleet() -> Vec<VolumeStatus> {
    vec![
        vol("kept", "n2", Some("n1"), Some("handed_off")),
        vol("gone", "n3", Some("n1"), None),
        vol("other", "n2", Some("n3"), Some("handed_off")),
        vol("made", "n2", None, None),
        vol("home", "n1", None, None),
    ]
}

#[test]
fn every_volume_that_left_the_node_comes_back_delta_where_its_copy_is_kept() {
    let (returns, refused) = plan("n1", &fleet(), &[]);
    assert!(refused.is_empty());
    let got: Vec<(&str, &str, &str)> = returns.iter().map(|r| (r.volume.as_str(), r.from.as_str(), r.mode)).collect();
    assert_eq!(got, [("kept", "n2", "delta"), ("gone", "n3", "full")]);
    assert_eq!(
        describe("n1", &returns[1]),
        "gone: on n3, returning to n1: full move: n1 no longer holds a copy (deleted by gc or after the retention window)"
    );
    assert_eq!(
        describe("n1", &returns[0]),
        "kept: on n2, returning to n1: delta (n1 kept its copy; only the regions written since are copied if n2's clone tracked them, else a full move)"
    );
    let json = serde_json::to_value(&returns[0]).unwrap();
    assert_eq!(json, json!({ "volume": "kept", "from": "n2", "size": 1u64 << 30, "mode": "delta" }));
}

#[test]
fn a_named_volume_that_never_left_the_node_is_refused_by_name() {
    let only: Vec<VolumeId> = ["kept", "other", "made", "home", "nope"].iter().map(|s| s.parse().unwrap()).collect();
    let (returns, refused) = plan("n1", &fleet(), &only);
    assert_eq!(returns.iter().map(|r| r.volume.as_str()).collect::<Vec<_>>(), ["kept"]);
    assert_eq!(
        refused,
        [
            "volume other never left n1: it is on n2, arrived from n3",
            "volume made never left n1: it is on n2, where it was created",
            "volume home is on n1 already",
            "volume nope: no volume of that name in the fleet",
        ]
    );
}

#[test]
fn return_flags_parse_and_need_return() {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: UndrainArgs,
    }
    let t = T::try_parse_from(["t", "n1", "--return", "--volume", "db", "--wait", "--deadline", "5m"]).unwrap();
    assert!(t.a.returning && t.a.wait);
    assert_eq!(t.a.volumes, ["db".parse::<VolumeId>().unwrap()]);
    assert!(T::try_parse_from(["t", "n1", "--volume", "db"]).is_err(), "--volume needs --return");
    assert!(T::try_parse_from(["t", "n1", "--dry-run"]).is_err(), "--dry-run needs --return");
}
