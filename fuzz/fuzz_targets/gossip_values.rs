//! Gossip keys and values (src/cluster/schema.rs): the decoders that turn a peer's
//! chitchat value into a typed record.
//! Invariants: never panics; every key renders back to itself; a value that decodes
//! re-encodes to a value that decodes, and that encoding is a fixed point (fields that are
//! deliberately not published, like `verifying`, may drop on the first trip only).
//! Input: byte 0 picks the decoder (node, vol, claim, progress, done, req/drain, key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshdrain::cluster::schema::{
    self, ClaimRecord, DoneRecord, Ignored, Key, NodeRecord, ProgressRecord, SCHEMA_VERSION, VolumeRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(raw) = std::str::from_utf8(rest) else { return };
    match sel % 7 {
        0 => check::<NodeRecord>(raw),
        1 => check::<VolumeRecord>(raw),
        2 => check::<ClaimRecord>(raw),
        3 => check::<ProgressRecord>(raw),
        4 => check::<DoneRecord>(raw),
        5 => {
            if let Ok(req) = schema::decode_request(raw) {
                let again = schema::encode(&req);
                assert_eq!(
                    schema::decode_request(&again).as_ref(),
                    Ok(&req),
                    "request changed through gossip: {again}"
                );
            }
        }
        _ => {
            let key = Key::parse(raw);
            assert_eq!(key.render(), raw);
            assert_eq!(Key::parse(&key.render()), key);
        }
    }
});

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(raw: &str) {
    let first = match schema::decode::<T>(raw) {
        Ok(v) => v,
        Err(Ignored::UnknownVersion { found }) => {
            assert_ne!(found, u64::from(SCHEMA_VERSION));
            return;
        }
        Err(Ignored::Malformed(_)) => return,
    };
    let published = schema::encode(&first);
    let second: T =
        schema::decode(&published).unwrap_or_else(|e| panic!("our own encoding does not decode: {e}: {published}"));
    let republished = schema::encode(&second);
    assert_eq!(republished, published, "encoding is not stable");
    assert_eq!(schema::decode::<T>(&republished).expect("decodes"), second);
}
