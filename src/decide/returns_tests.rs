use super::*;

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn arrived(from: &str, epoch: u64) -> Arrival {
    Arrival { from: n(from), epoch, fetched_bytes: 0 }
}

const GIB: u64 = 1 << 30;

#[test]
fn a_return_is_refused_for_a_volume_that_never_left_that_node() {
    let id: VolumeId = "db".parse().unwrap();
    assert_eq!(check_request(&n("b"), &id, Some(&n("a")), Some(&arrived("a", 3))), Ok(()));
    assert_eq!(
        check_request(&n("b"), &id, Some(&n("a")), Some(&arrived("c", 3))).unwrap_err(),
        "volume db never left a for b: it arrived from c; `meshdrain volume move db --to a` moves it anyway (a full move)"
    );
    assert_eq!(
        check_request(&n("b"), &id, Some(&n("a")), None).unwrap_err(),
        "volume db never left a: it was created on b; `meshdrain volume move db --to a` moves it anyway (a full move)"
    );
}

#[test]
fn the_owner_publishes_a_delta_only_for_the_move_that_brought_the_volume() {
    let map = |epoch| WrittenMap { clone: "ab".into(), epoch, ranges: vec![0..65536, 131072..196608] };
    let a = arrived("a", 3);
    assert_eq!(publish(&n("c"), Some(&a), Ok(map(3))), None, "not a return: nothing published");
    assert_eq!(
        publish(&n("a"), Some(&a), Ok(map(3))),
        Some(ReturnBase::Delta {
            base: n("a"),
            epoch: 3,
            clone: "ab".into(),
            ranges: vec![[0, 65536], [131072, 65536]]
        })
    );
    assert_eq!(
        publish(&n("a"), Some(&a), Ok(map(2))),
        Some(ReturnBase::Full {
            reason: "the writes were tracked by a clone of epoch 2, the move from a was epoch 3".into()
        })
    );
    assert_eq!(
        publish(&n("a"), Some(&a), Err("dm-clone does not track writes".into())),
        Some(ReturnBase::Full {
            reason: "the writes since cut-over were not tracked: dm-clone does not track writes".into()
        })
    );
    let many =
        WrittenMap { clone: "ab".into(), epoch: 3, ranges: (0..1000).map(|i| i * 200_000..i * 200_000 + 10).collect() };
    let Some(ReturnBase::Delta { ranges, .. }) = publish(&n("a"), Some(&a), Ok(many)) else { panic!("a delta") };
    assert!(ranges.len() <= MAX_RANGES, "bounded: {}", ranges.len());
    assert!(serde_json::to_string(&ranges).unwrap().len() < 6 << 10, "a few KiB");
}

#[test]
fn hostile_ranges_are_refused() {
    assert_eq!(check_ranges(&[[0, 10], [10, 10]], 100), Ok(()));
    assert_eq!(check_ranges(&[[0, 0]], 100).unwrap_err(), "range 0 (0+0) is empty or outside the volume's 100 bytes");
    assert_eq!(
        check_ranges(&[[90, 20]], 100).unwrap_err(),
        "range 0 (90+20) is empty or outside the volume's 100 bytes"
    );
    assert!(check_ranges(&[[u64::MAX, 2]], 100).is_err(), "no overflow");
    assert_eq!(check_ranges(&[[50, 10], [10, 10]], 100).unwrap_err(), "range 1 (10+10) is not after the one before it");
    assert!(check_ranges(&vec![[0, 1]; MAX_RANGES + 1], 100).unwrap_err().starts_with("129 ranges"));
}

#[test]
fn the_returning_node_takes_a_delta_only_for_the_very_copy_it_handed_off() {
    let delta = ReturnBase::Delta { base: n("a"), epoch: 3, clone: "ab".into(), ranges: vec![[0, 65536]] };
    let (a, b) = (n("a"), n("b"));
    let handed = Some((3, Some((&b, 1000))));
    assert_eq!(plan(&a, &b, GIB, Some(&delta), handed), ReturnPlan::Delta { ranges: vec![[0, 65536]], since_ms: 1000 });
    let full = |p: ReturnPlan| match p {
        ReturnPlan::Full { reason } => reason,
        p => panic!("{p:?}"),
    };
    assert_eq!(
        full(plan(&a, &b, GIB, Some(&delta), None)),
        "a no longer holds a copy (deleted by gc or after the retention window)"
    );
    assert_eq!(
        full(plan(&a, &b, GIB, Some(&delta), Some((2, Some((&b, 1000)))))),
        "the copy on a is of epoch 2, the written ranges are relative to epoch 3"
    );
    let c = n("c");
    assert_eq!(
        full(plan(&a, &b, GIB, Some(&delta), Some((3, Some((&c, 1000)))))),
        "the copy on a was handed off to c, not b"
    );
    assert_eq!(full(plan(&a, &b, GIB, Some(&delta), Some((3, None)))), "the copy on a is not a handed-off copy");
    assert_eq!(full(plan(&c, &b, GIB, Some(&delta), handed)), "the written ranges are relative to a's copy, not c's");
    assert_eq!(
        full(plan(&a, &b, 100, Some(&delta), handed)),
        "b's written ranges are refused: range 0 (0+65536) is empty or outside the volume's 100 bytes"
    );
    assert!(full(plan(&a, &b, GIB, None, handed)).starts_with("b published no return base"));
    let why = ReturnBase::Full { reason: "not tracked".into() };
    assert_eq!(full(plan(&a, &b, GIB, Some(&why), handed)), "not tracked");
}

#[test]
fn delta_bytes_rounds_to_regions_once() {
    assert_eq!(delta_bytes(&[[10, 10], [100, 10]], 64, 1000), 128, "two ranges in two regions");
    assert_eq!(delta_bytes(&[[10, 10], [20, 10]], 64, 1000), 64, "one region counted once");
    assert_eq!(delta_bytes(&[[990, 10]], 64, 1000), 40, "clipped at the end");
}
