#![allow(clippy::single_range_in_vec_init)] // ranges of one region are what these tests write
use std::ops::Range;

use super::*;

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn arrived(from: &str, epoch: u64) -> Arrival {
    Arrival { from: n(from), epoch, fetched_bytes: 0, ret: None }
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
    assert_eq!(publish(&n("c"), GIB, Some(&a), Ok(map(3))), None, "not a return: nothing published");
    let Some(ReturnBase::Delta { base, epoch, clone, grain, bits }) = publish(&n("a"), GIB, Some(&a), Ok(map(3)))
    else {
        panic!("a delta")
    };
    assert_eq!((base, epoch, clone.as_str(), grain), (n("a"), 3, "ab", 65536));
    assert_eq!(bits.len(), 4096, "16384 bits in hex: 4 KiB");
    assert!(bits.starts_with("0500"), "{}", &bits[..8]);
    assert_eq!(decode(&bits, GIB, grain).unwrap(), vec![0..65536, 131072..196608]);
    assert_eq!(
        publish(&n("a"), GIB, Some(&a), Ok(map(2))),
        Some(ReturnBase::Full {
            reason: "the writes were tracked by a clone of epoch 2, the move from a was epoch 3".into()
        })
    );
    assert_eq!(
        publish(&n("a"), GIB, Some(&a), Err("dm-clone does not track writes".into())),
        Some(ReturnBase::Full {
            reason: "the writes since cut-over were not tracked: dm-clone does not track writes".into()
        })
    );
}

#[test]
fn the_bitmap_stays_a_few_kib_and_covers_every_written_byte() {
    let tib = 1u64 << 40;
    assert_eq!(grain_for(GIB), 65536);
    assert_eq!(grain_for(tib), 64 << 20);
    let ranges: Vec<Range<u64>> = (0..5000u64).map(|i| i * 200_000_000 + 7..i * 200_000_000 + 4103).collect();
    let bits = encode(&ranges, tib, grain_for(tib));
    assert_eq!(bits.len(), 4096);
    let back = decode(&bits, tib, grain_for(tib)).unwrap();
    for r in &ranges {
        assert!(back.iter().any(|b| b.start <= r.start && r.end <= b.end), "{r:?} not covered");
    }
    let short = encode(&[GIB - 10..GIB + 100], GIB - 5, 65536);
    assert_eq!(decode(&short, GIB - 5, 65536).unwrap(), vec![GIB - 65536..GIB - 5], "clipped at the end");
}

#[test]
fn a_hostile_bitmap_is_refused() {
    let ok = encode(&[0..1], GIB, 65536);
    assert_eq!(decode(&ok, GIB, 65536).unwrap(), vec![0..65536]);
    assert_eq!(
        decode(&ok, GIB, 1000).unwrap_err(),
        "grain 1000 is not a multiple of 512 giving at most 16384 bits for 1073741824 bytes"
    );
    assert!(decode(&ok, GIB, 512).unwrap_err().starts_with("grain 512"), "too many bits");
    assert!(decode(&ok, GIB, 0).is_err());
    assert_eq!(decode("00", GIB, 65536).unwrap_err(), "the bitmap is 2 hex digits, 4096 expected");
    assert_eq!(
        decode(&"zz".repeat(2048), GIB, 65536).unwrap_err(),
        "the bitmap is not hex: Invalid character 'z' at position 0"
    );
    // 10 bits in 2 bytes: bit 10 is past the end.
    assert_eq!(decode("0004", 10 * 65536, 65536).unwrap_err(), "the bitmap has bits past the volume's end");
}

#[test]
fn the_returning_node_takes_a_delta_only_for_the_very_copy_it_handed_off() {
    let bits = encode(&[0..65536], GIB, 65536);
    let delta = ReturnBase::Delta { base: n("a"), epoch: 3, clone: "ab".into(), grain: 65536, bits: bits.clone() };
    let (a, b) = (n("a"), n("b"));
    let handed = Some((3, Some((&b, 1000))));
    assert_eq!(plan(&a, &b, GIB, Some(&delta), handed), ReturnPlan::Delta { grain: 65536, bits, since_ms: 1000 });
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
        full(plan(&a, &b, GIB / 2, Some(&delta), handed)),
        "b's written ranges are refused: the bitmap is 4096 hex digits, 2048 expected"
    );
    assert!(full(plan(&a, &b, GIB, None, handed)).starts_with("b published no return base"));
    let why = ReturnBase::Full { reason: "not tracked".into() };
    assert_eq!(full(plan(&a, &b, GIB, Some(&why), handed)), "not tracked");
}

/// A size near `u64::MAX` with a grain whose last bit ends past it overflowed computing
/// that bit's end (a panic with overflow checks; fuzz/return_bitmap covers it): it ends
/// at the size.
#[test]
fn a_bit_that_ends_past_a_huge_size_decodes_to_a_range_ending_at_the_size() {
    assert_eq!(decode("03", u64::MAX, 1 << 63), Ok(vec![0..u64::MAX]));
    assert_eq!(decode("02", u64::MAX, 1 << 63), Ok(vec![(1 << 63)..u64::MAX]));
    assert_eq!(encode(&[0..u64::MAX], u64::MAX, 1 << 63), "03");
}
