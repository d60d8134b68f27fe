//! Join datagrams (mesh/src/join.rs) as a seed receives them, at a fixed clock, with a
//! fixed seed key and fleet CA, then through the seed's replay guard.
//! Invariants: never panics; nothing over MAX_JOIN_DATAGRAM is accepted; an endpoint is
//! only ever taken from the datagram's own source IP; an accepted join carries exactly
//! the certificate, seed, port, IP and time the joiner's MAC covers (flipping bytes of a
//! valid datagram never yields a join admitted with other content); a join built by the
//! certified key is accepted exactly when its clock is within JOIN_CLOCK_SKEW and its port
//! is not 0, and the replay guard refuses the same join twice.
//! Input: byte 0 picks the mode: 0 raw datagram; 1 a valid datagram with XOR patches
//! `[u16 LE offset][xor byte]`; 2 a fresh join `[u16 LE wg_port][i16 LE skew s][ip sel]`.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshdrain_fuzz::{ca, joiner_certificate, joiner_key, now, seed_key};
use meshdrain_mesh::join::{JOIN_CLOCK_SKEW, JoinReplayGuard, MAX_JOIN_DATAGRAM};
use meshdrain_mesh::{JoinRequest, RevocationList};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (seed, public) = (seed_key(), ca().public());
    let from: SocketAddr = "[::ffff:198.18.0.3]:51821".parse().expect("fixed address");
    let source: IpAddr = "198.18.0.3".parse().expect("fixed address");
    let none = RevocationList::default();
    let verify = |dg: &[u8]| JoinRequest::verify(dg, from, &seed, &public, &none, now());
    match sel % 3 {
        0 => {
            if let Ok(j) = verify(rest) {
                assert!(rest.len() <= MAX_JOIN_DATAGRAM);
                let req: JoinRequest = serde_json::from_slice(rest).expect("accepted datagram parses");
                assert_eq!(j.admitted.public_key.to_base64(), j.certificate.body.public_key);
                if let Some(ep) = j.endpoint {
                    assert_eq!((ep.ip(), ep.port()), (source, req.wg_port), "endpoint not from the source");
                }
            }
        }
        1 => {
            let cert = joiner_certificate();
            let valid = JoinRequest::claiming(&joiner_key(), &cert, &seed.public(), 51820, Some(source), now())
                .expect("fixed keys agree");
            let mut dg = valid.encode();
            for p in rest.chunks_exact(3) {
                let at = u16::from_le_bytes([p[0], p[1]]) as usize % dg.len();
                dg[at] ^= p[2];
            }
            if let Ok(j) = verify(&dg) {
                let req: JoinRequest = serde_json::from_slice(&dg).expect("accepted datagram parses");
                assert_eq!(req.certificate, cert, "accepted join with an altered certificate");
                assert_eq!((&req.to, req.wg_port, req.ip, req.at), (&valid.to, valid.wg_port, valid.ip, valid.at));
                assert!(j.endpoint.is_none() || j.endpoint == Some("198.18.0.3:51820".parse().expect("fixed")));
            }
        }
        _ => {
            let [a, b, c, d, e, ..] = *rest else { return };
            let (port, skew) = (u16::from_le_bytes([a, b]), i16::from_le_bytes([c, d]));
            let claimed: Option<IpAddr> = match e % 3 {
                0 => None,
                1 => Some(source),
                _ => Some("198.18.0.9".parse().expect("fixed")),
            };
            let sent = if skew >= 0 {
                now() + Duration::from_secs(skew as u64)
            } else {
                now() - Duration::from_secs(u64::from(skew.unsigned_abs()))
            };
            let dg = JoinRequest::claiming(&joiner_key(), &joiner_certificate(), &seed.public(), port, claimed, sent)
                .expect("fixed keys agree")
                .encode();
            let acceptable = u64::from(skew.unsigned_abs()) <= JOIN_CLOCK_SKEW.as_secs() && port != 0;
            match verify(&dg) {
                Ok(j) => {
                    assert!(acceptable, "join {skew} s off our clock, port {port}, accepted");
                    let want = (claimed == Some(source)).then(|| SocketAddr::new(source, port));
                    assert_eq!(j.endpoint, want);
                    let mut guard = JoinReplayGuard::default();
                    guard.admit(&j).expect("first join admitted");
                    assert!(guard.admit(&j).is_err(), "replayed join admitted");
                    assert_eq!(guard.len(), 1);
                }
                Err(e) => assert!(!acceptable, "valid join {skew} s off, port {port}, refused: {e}"),
            }
        }
    }
});
