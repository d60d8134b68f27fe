//! Join datagrams: building, checking, every refusal, hostile input and replays.

use super::*;
use crate::cert::{FleetCa, SigningRequest};

fn enrol(ca: &FleetCa, name: &str, valid: Duration) -> (NodeKey, Certificate) {
    let key = NodeKey::generate();
    let req = SigningRequest { name: name.into(), public_key: key.public().to_base64() };
    let cert = ca.sign(&req, SystemTime::now() + valid).unwrap();
    (key, cert)
}

#[test]
fn hmac_matches_a_reference_implementation() {
    // Python: hmac.new(b"\x0b" * 32, b"Hi There", hashlib.sha256).hexdigest()
    let mac = hmac(&[0x0b; 32], b"Hi There");
    assert_eq!(
        mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
    );
}

#[test]
fn valid_join_is_admitted_with_source_ip_and_wg_port() {
    let ca = FleetCa::generate();
    let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
    let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
    let now = SystemTime::now();
    let ip = Some("198.18.0.3".parse().unwrap());
    let dg = JoinRequest::claiming(&joiner, &cert, &seed.public(), 51820, ip, now).unwrap().encode();
    let from: SocketAddr = "[::ffff:198.18.0.3]:51821".parse().unwrap();
    let j = JoinRequest::verify(&dg, from, &seed, &ca.public(), &RevocationList::default(), now).unwrap();
    assert_eq!(j.admitted.public_key, joiner.public());
    assert_eq!(j.endpoint, Some("198.18.0.3:51820".parse().unwrap()));
    assert_eq!(j.at, unix(now));
}

#[test]
fn a_copy_from_another_ip_is_admitted_without_an_endpoint() {
    let ca = FleetCa::generate();
    let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
    let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
    let now = SystemTime::now();
    let ip = Some("198.18.0.3".parse().unwrap());
    let dg = JoinRequest::claiming(&joiner, &cert, &seed.public(), 51820, ip, now).unwrap().encode();
    let none = RevocationList::default();
    let copy = JoinRequest::verify(&dg, "198.18.0.66:51821".parse().unwrap(), &seed, &ca.public(), &none, now).unwrap();
    assert_eq!(copy.endpoint, None, "a copy from elsewhere sets no endpoint");
    // Rewriting the claimed IP to the copier's breaks the HMAC.
    let mut forged: JoinRequest = serde_json::from_slice(&dg).unwrap();
    forged.ip = Some("198.18.0.66".parse().unwrap());
    let e =
        JoinRequest::verify(&forged.encode(), "198.18.0.66:51821".parse().unwrap(), &seed, &ca.public(), &none, now);
    assert_eq!(e.unwrap_err().to_string(), "join request from joiner does not prove possession of the certified key");
    // No claim (behind NAT, or `new`): admitted, endpoint learnt from the handshake.
    let dg = JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now).unwrap().encode();
    let j = JoinRequest::verify(&dg, "198.18.0.3:51821".parse().unwrap(), &seed, &ca.public(), &none, now).unwrap();
    assert_eq!(j.endpoint, None);
}

/// A join as agents before v2 sent it: no `ip`, HMAC over the v1 fields.
fn v1_join(key: &NodeKey, cert: &Certificate, seed: &PublicKey, wg_port: u16, now: SystemTime) -> Vec<u8> {
    let shared = key.agree(seed).unwrap();
    let (to, at) = (seed.to_base64(), unix(now));
    let mac = B64.encode(hmac(&shared, &signed_bytes(1, cert, &to, wg_port, None, at)));
    let req = JoinRequest { v: 1, certificate: cert.clone(), to, wg_port, ip: None, at, mac };
    let text = String::from_utf8(req.encode()).unwrap();
    assert!(!text.contains("\"ip\""), "v1 has no ip field: {text}");
    text.into_bytes()
}

#[test]
fn an_old_format_join_is_admitted_without_an_endpoint() {
    let ca = FleetCa::generate();
    let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
    let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
    let now = SystemTime::now();
    let dg = v1_join(&joiner, &cert, &seed.public(), 51820, now);
    let from: SocketAddr = "198.18.0.3:51821".parse().unwrap();
    let j = JoinRequest::verify(&dg, from, &seed, &ca.public(), &RevocationList::default(), now).unwrap();
    assert_eq!((j.admitted.public_key, j.endpoint), (joiner.public(), None));
    // A v1 datagram claiming an ip is not one we ever wrote.
    let mut odd: JoinRequest = serde_json::from_slice(&dg).unwrap();
    odd.ip = Some("198.18.0.3".parse().unwrap());
    let e = JoinRequest::verify(&odd.encode(), from, &seed, &ca.public(), &RevocationList::default(), now);
    assert_eq!(e.unwrap_err().to_string(), "malformed join request: version 1 carries no ip");
}

#[test]
fn joins_are_refused_for_every_reason() {
    let ca = FleetCa::generate();
    let other = FleetCa::generate();
    let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
    let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
    let now = SystemTime::now();
    let from: SocketAddr = "198.18.0.3:51821".parse().unwrap();
    let none = RevocationList::default();
    let check = |dg: &[u8], revoked: &RevocationList| {
        JoinRequest::verify(dg, from, &seed, &ca.public(), revoked, now).unwrap_err().to_string()
    };
    // Foreign fleet.
    let (fk, fc) = enrol(&other, "foreign", Duration::from_secs(60));
    let dg = JoinRequest::new(&fk, &fc, &seed.public(), 51820, now).unwrap().encode();
    assert!(check(&dg, &none).contains("belongs to fleet"));
    // Expired.
    let (ek, ec) = enrol(&ca, "old", Duration::ZERO);
    let dg = JoinRequest::new(&ek, &ec, &seed.public(), 51820, now + Duration::from_secs(1)).unwrap().encode();
    assert!(
        JoinRequest::verify(&dg, from, &seed, &ca.public(), &none, now + Duration::from_secs(1))
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    // Someone else's certificate, without its key.
    let thief = NodeKey::generate();
    let dg = JoinRequest::new(&thief, &cert, &seed.public(), 51820, now).unwrap().encode();
    assert!(check(&dg, &none).contains("does not prove possession"));
    // Revoked.
    let list = ca.revocations(1, [joiner.public().to_base64()].into());
    let dg = JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now).unwrap().encode();
    assert!(check(&dg, &list).contains("revoked"));
    // For another seed.
    let dg = JoinRequest::new(&joiner, &cert, &NodeKey::generate().public(), 51820, now).unwrap().encode();
    assert!(check(&dg, &none).contains("another seed"));
    // Replayed much later.
    let dg = JoinRequest::new(&joiner, &cert, &seed.public(), 51820, now - Duration::from_secs(600)).unwrap().encode();
    assert!(check(&dg, &none).contains("from our clock"));
    assert!(check(b"nonsense", &none).contains("malformed"));
}

#[test]
fn hostile_datagrams_get_their_error_and_allocate_nothing_unchecked() {
    let ca = FleetCa::generate();
    let (seed, _) = enrol(&ca, "seed", Duration::from_secs(60));
    let (joiner, cert) = enrol(&ca, "joiner", Duration::from_secs(60));
    let now = SystemTime::now();
    let from: SocketAddr = "198.18.0.3:51821".parse().unwrap();
    let none = RevocationList::default();
    let check = |dg: &[u8]| JoinRequest::verify(dg, from, &seed, &ca.public(), &none, now).unwrap_err().to_string();
    let good = JoinRequest::claiming(&joiner, &cert, &seed.public(), 51820, Some(from.ip()), now).unwrap();
    let dg = good.encode();
    assert!(dg.len() < 1024, "a join is small: {} bytes", dg.len());
    // Truncated.
    let cut = dg.len() - 1;
    assert_eq!(
        check(&dg[..cut]),
        format!("malformed join request: EOF while parsing an object at line 1 column {cut}")
    );
    // Oversized: refused before parsing (the runtime reads one byte over the limit).
    let mut big = dg.clone();
    big.resize(MAX_JOIN_DATAGRAM + 1, b' ');
    assert_eq!(check(&big), "join datagram of 4097 bytes or more is over the 4096-byte limit");
    // Bad JSON, bad types, unknown fields, an unknown version, port 0.
    assert_eq!(check(b"nonsense"), "malformed join request: expected ident at line 1 column 2");
    assert_eq!(
        check(b"{\"v\":\"two\"}"),
        "malformed join request: invalid type: string \"two\", expected u32 at line 1 column 10"
    );
    let mut v = serde_json::to_value(&good).unwrap();
    v["extra"] = 1.into();
    assert!(check(&serde_json::to_vec(&v).unwrap()).starts_with("malformed join request: unknown field `extra`"));
    let mut r = good.clone();
    r.v = 3;
    assert_eq!(check(&r.encode()), "malformed join request: version 3 (this node reads 1 and 2)");
    r.v = 2;
    r.wg_port = 0;
    assert_eq!(check(&r.encode()), "malformed join request: WireGuard port 0");
    // Bad base64 in the MAC, or a MAC far too long to be one (not decoded).
    let mut r = good.clone();
    r.mac = "!!not base64!!".into();
    assert_eq!(check(&r.encode()), "join request from joiner does not prove possession of the certified key");
    r.mac = "A".repeat(2000);
    assert_eq!(check(&r.encode()), "join request from joiner does not prove possession of the certified key");
    // Bad base64 in the certificate's signature.
    let mut r = good.clone();
    r.certificate.signature = "%%%".into();
    assert_eq!(
        check(&r.encode()),
        "certificate of node joiner is forged or corrupt (signature not base64: Invalid symbol 37, offset 0.): \
         refuse it and check who publishes it"
    );
    // A long `to` and a long, control-laden name of an unsigned certificate are clipped and escaped.
    let mut r = good.clone();
    r.to = "x".repeat(3000);
    assert_eq!(check(&r.encode()), format!("join request for another seed ({}…)", "x".repeat(64)));
    let mut r = good.clone();
    r.certificate.body.name = format!("evil\n{}", "n".repeat(3000));
    r.certificate.body.fleet = "other".into();
    let e = check(&r.encode());
    assert!(e.starts_with(&format!("certificate of node evil\\n{}… belongs to fleet other", "n".repeat(58))), "{e}");
}

fn joined(key: u8, at: u64, endpoint: Option<&str>) -> Joined {
    let k = PublicKey([key; 32]);
    Joined {
        admitted: Admitted { name: format!("n{key}"), public_key: k, address: "fd00::1".parse().unwrap() },
        certificate: Certificate {
            body: crate::cert::CertificateBody {
                version: 1,
                fleet: String::new(),
                name: String::new(),
                public_key: k.to_base64(),
                address: "fd00::1".parse().unwrap(),
                not_after: 0,
            },
            signature: String::new(),
        },
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        at,
    }
}

#[test]
fn the_replay_guard_refuses_copies_and_stays_bounded() {
    let mut g = JoinReplayGuard::default();
    let t = 1_800_000_000;
    g.admit(&joined(1, t, None)).unwrap();
    // The original arriving after a copy from elsewhere may still set the endpoint, once.
    g.admit(&joined(1, t, Some("198.18.0.3:51820"))).unwrap();
    assert_eq!(
        g.admit(&joined(1, t, Some("198.18.0.3:51820"))).unwrap_err().to_string(),
        format!("join request of node n1 at {t} is a replay (newest accepted: {t}); it changes nothing")
    );
    assert_eq!(g.admit(&joined(1, t, None)).unwrap_err().kind(), "join replayed");
    assert_eq!(g.admit(&joined(1, t - 5, Some("198.18.0.66:51820"))).unwrap_err().kind(), "join replayed");
    g.admit(&joined(1, t + 2, None)).unwrap();
    // Forgotten once its timestamp could no longer pass the clock check.
    g.prune(UNIX_EPOCH + Duration::from_secs(t + 2 + JOIN_CLOCK_SKEW.as_secs()));
    assert_eq!(g.len(), 1);
    g.prune(UNIX_EPOCH + Duration::from_secs(t + 3 + JOIN_CLOCK_SKEW.as_secs()));
    assert!(g.is_empty());
    // Bounded: at most MAX_JOIN_KEYS keys within the window.
    for i in 0..MAX_JOIN_KEYS {
        let mut j = joined(0, t, None);
        j.admitted.public_key = PublicKey(rand_key(i));
        g.admit(&j).unwrap();
    }
    assert_eq!(
        g.admit(&joined(1, t, None)).unwrap_err().to_string(),
        "join request of node n1 refused: 4096 nodes already joined within 120s"
    );
    assert_eq!(g.len(), MAX_JOIN_KEYS);
}

fn rand_key(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k
}
