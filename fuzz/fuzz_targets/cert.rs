//! Certificates, signing requests and revocation lists (mesh/src/cert.rs), as they
//! arrive in gossip and files (JSON), checked against a fixed CA at a fixed time.
//! Invariants: never panics; whatever parses re-serializes to JSON that parses equal;
//! an admitted certificate is of our fleet and version, and its address is derived from
//! its key; any signing request the CA signs yields a certificate that verifies (also
//! after a JSON round trip); a revocation list only verifies if our CA signed it.
//! Input: byte 0 picks the kind (0 certificate, 1 request, 2 revocation list, 3 CA key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshdrain_fuzz::{ca, now};
use meshdrain_mesh::{CaPublicKey, Certificate, RevocationList, SigningRequest, cert::CERT_VERSION};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, json)) = data.split_first() else { return };
    let ca = ca();
    let public = ca.public();
    let none = RevocationList::default();
    match sel % 4 {
        0 => {
            let Some(cert) = round_trip::<Certificate>(json) else { return };
            if let Ok(admitted) = cert.verify(&public, &none, now()) {
                assert_eq!(cert.body.fleet, public.fleet_id());
                assert_eq!(cert.body.version, CERT_VERSION);
                assert_eq!(admitted.public_key.to_base64(), cert.body.public_key);
                assert_eq!(admitted.address, public.prefix().node_address(&admitted.public_key));
            }
        }
        1 => {
            let Some(req) = round_trip::<SigningRequest>(json) else { return };
            let Ok(cert) = ca.sign(&req, now() + Duration::from_secs(3600)) else { return };
            let admitted = cert.verify(&public, &none, now()).expect("a certificate our CA just signed verifies");
            assert_eq!(admitted.name, req.name);
            let back: Certificate =
                serde_json::from_slice(&serde_json::to_vec(&cert).expect("serializes")).expect("parses");
            assert_eq!(back.verify(&public, &none, now()), Ok(admitted));
        }
        2 => {
            let Some(list) = round_trip::<RevocationList>(json) else { return };
            if list.verify(&public).is_ok() {
                assert_eq!(list.body.fleet, public.fleet_id());
            }
        }
        _ => {
            let Some(key) = round_trip::<CaPublicKey>(json) else { return };
            assert_eq!(CaPublicKey::try_from(key.fleet_id()).ok(), Some(key));
        }
    }
});

/// Parses `json` as `T`; if it parses, checks that it serializes and parses back equal.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(json: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(json).ok()?;
    let again = serde_json::to_vec(&value).expect("parsed value serializes");
    let back: T = serde_json::from_slice(&again).unwrap_or_else(|e| panic!("re-serialized value does not parse: {e}"));
    assert_eq!(back, value);
    Some(value)
}
