//! A return's written bitmap (src/decide/returns.rs `decode`): the `bits` and `grain` of a
//! `vol/<id>` record's `return` come from the volume's owner, and the returning node
//! decodes them against the size it knows (docs/return.md: hostile input).
//! Invariants: `decode` never panics; every range it returns is non-empty, lies within the
//! size and starts on a grain boundary; ranges are ascending and disjoint, neighbours
//! merged (a gap between any two); `encode` of the ranges gives back the text (up to hex
//! case), which decodes to the same ranges; an accepted grain is a non-zero multiple of
//! 512 giving at most `MAX_BITS` bits.
//! Input: `[mode][size u64 LE][grain u64 LE]` then the bitmap. Mode bit 0 set: the rest
//! is hex-encoded (always hex, so the bit checks run) else taken as text (lossy UTF-8);
//! bit 1: the size is taken modulo 2^34 (a volume up to 16 GiB); bit 2: the grain is 512
//! times its low 16 bits; bit 3: the grain is `grain_for(size)`, as an owner publishes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshdrain::decide::returns::{MAX_BITS, decode, encode, grain_for};

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let mode = data[0];
    let mut size = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let mut grain = u64::from_le_bytes(data[9..17].try_into().unwrap());
    let rest = &data[17..];
    if mode & 2 != 0 {
        size %= 1 << 34;
    }
    if mode & 4 != 0 {
        grain = 512 * (grain & 0xffff);
    }
    if mode & 8 != 0 {
        grain = grain_for(size);
    }
    let bits = if mode & 1 != 0 { hex_of(rest) } else { String::from_utf8_lossy(rest).into_owned() };
    let Ok(ranges) = decode(&bits, size, grain) else { return };
    assert!(grain > 0 && grain % 512 == 0, "grain {grain} accepted");
    assert!(size.div_ceil(grain) <= MAX_BITS, "grain {grain} for {size} bytes accepted");
    let mut prev_end: Option<u64> = None;
    for r in &ranges {
        assert!(r.start < r.end, "empty range {r:?}");
        assert!(r.end <= size, "range {r:?} past the size {size}");
        assert_eq!(r.start % grain, 0, "range {r:?} not on a grain boundary ({grain})");
        if let Some(end) = prev_end {
            assert!(end < r.start, "ranges not ascending, disjoint and merged: {ranges:?}");
        }
        prev_end = Some(r.end);
    }
    let again = encode(&ranges, size, grain);
    assert_eq!(again, bits.to_ascii_lowercase(), "encode(decode(x)) is not x for {size} bytes at {grain}");
    assert_eq!(decode(&again, size, grain).as_ref(), Ok(&ranges), "encode(decode(x)) decodes differently");
});

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
