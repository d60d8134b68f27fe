use std::time::Duration;

use super::*;
use crate::cert::{FleetCa, SigningRequest};
use crate::keys::NodeKey;

struct Fleet {
    ca: FleetCa,
    now: SystemTime,
}

impl Fleet {
    fn new() -> Self {
        Self { ca: FleetCa::generate(), now: SystemTime::now() }
    }
    fn node(&self, name: &str, port: u16) -> (PublicKey, PeerAdvert) {
        let k = NodeKey::generate().public();
        let req = SigningRequest { name: name.into(), public_key: k.to_base64() };
        let certificate = self.ca.sign(&req, self.now + Duration::from_secs(600)).unwrap();
        let ep: SocketAddr = format!("198.18.0.1:{port}").parse().unwrap();
        (k, PeerAdvert { certificate, endpoints: vec![ep], alive: true })
    }
    fn adm(&self, self_key: PublicKey) -> Admission {
        Admission { ca: self.ca.public(), revoked: RevocationList::default(), self_key, seeds: vec![] }
    }
}

fn keys(p: &[PeerConfig]) -> Vec<PublicKey> {
    p.iter().map(|p| p.public_key).collect()
}

#[test]
fn admitted_alive_peers_are_desired_self_excluded() {
    let f = Fleet::new();
    let (me, me_ad) = f.node("me", 1);
    let (a, a_ad) = f.node("a", 2);
    let (_, mut dead) = f.node("dead", 3);
    dead.alive = false;
    let (want, refused) = desired_peers(&f.adm(me), &[me_ad, a_ad.clone(), dead], f.now);
    assert_eq!(keys(&want), vec![a]);
    assert!(refused.is_empty());
    assert_eq!(want[0].endpoint, Some(a_ad.endpoints[0]));
    assert_eq!(want[0].allowed_ips, vec![(IpAddr::V6(a_ad.certificate.body.address), 128)]);
}

#[test]
fn unadmitted_nodes_are_refused() {
    let f = Fleet::new();
    let (me, _) = f.node("me", 1);
    let other = Fleet::new();
    let (_, foreign) = other.node("foreign", 2);
    let (_, mut expired) = f.node("old", 3);
    expired.certificate =
        f.ca.sign(
            &SigningRequest { name: "old".into(), public_key: expired.certificate.body.public_key.clone() },
            f.now - Duration::from_secs(1),
        )
        .unwrap();
    let (_, mut forged) = f.node("forged", 4);
    forged.certificate.body.name = "root".into();
    let (rk, revoked) = f.node("revoked", 5);
    let mut adm = f.adm(me);
    adm.revoked = f.ca.revocations(1, [rk.to_base64()].into());
    let (want, refused) = desired_peers(&adm, &[foreign, expired, forged, revoked], f.now);
    assert!(want.is_empty());
    let kinds: Vec<_> = refused.iter().map(|r| std::mem::discriminant(&r.reason)).collect();
    assert_eq!(refused.len(), 4);
    assert!(matches!(refused[0].reason, AdmissionError::OtherFleet { .. }));
    assert!(matches!(refused[1].reason, AdmissionError::Expired { .. }));
    assert!(matches!(refused[2].reason, AdmissionError::Forged { .. }));
    assert!(matches!(refused[3].reason, AdmissionError::Revoked { .. }));
    assert_eq!(kinds.len(), 4);
}

#[test]
fn seeds_are_peers_until_gossip_knows_them() {
    let f = Fleet::new();
    let (me, _) = f.node("me", 1);
    let (s, mut s_ad) = f.node("seed", 2);
    let mut adm = f.adm(me);
    adm.seeds = vec![
        Seed { public_key: s, endpoint: "198.18.0.9:51820".parse().unwrap() },
        Seed { public_key: me, endpoint: "198.18.0.1:1".parse().unwrap() },
    ];
    let (want, _) = desired_peers(&adm, &[], f.now);
    assert_eq!(keys(&want), vec![s]);
    assert_eq!(want[0].allowed_ips[0].0, IpAddr::V6(f.ca.public().prefix().node_address(&s)));
    s_ad.alive = false;
    let (want, _) = desired_peers(&adm, &[s_ad], f.now);
    assert!(want.is_empty(), "a seed known dead is dropped");
    adm.revoked = f.ca.revocations(1, [s.to_base64()].into());
    assert!(desired_peers(&adm, &[], f.now).0.is_empty(), "a revoked seed is dropped");
}

fn peer(b: u8, port: Option<u16>) -> PeerConfig {
    let ep = port.map(|p| SocketAddr::from(([198, 18, 0, b], p)));
    PeerConfig::host(PublicKey([b; 32]), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, b as u16), ep)
}

#[test]
fn diff_add_remove_unchanged() {
    let cur = vec![peer(1, Some(1)), peer(2, Some(2))];
    let want = vec![peer(2, Some(2)), peer(3, Some(3))];
    assert_eq!(diff(&cur, &want), vec![PeerChange::Remove(PublicKey([1; 32])), PeerChange::Add(peer(3, Some(3)))]);
    assert!(diff(&want, &want).is_empty());
    assert!(diff(&[], &[]).is_empty());
}

#[test]
fn diff_endpoint_roaming_updates() {
    let cur = vec![peer(1, Some(1))];
    let want = vec![peer(1, Some(9))];
    assert_eq!(diff(&cur, &want), vec![PeerChange::Update(peer(1, Some(9)))]);
    // No advertised endpoint: keep what WireGuard learnt.
    assert!(diff(&cur, &[peer(1, None)]).is_empty());
}

#[test]
fn diff_allowed_ips_change_updates() {
    let cur = vec![peer(1, Some(1))];
    let mut w = peer(1, None);
    w.allowed_ips.push((IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0)), 64));
    let mut expect = w.clone();
    expect.endpoint = cur[0].endpoint;
    assert_eq!(diff(&cur, &[w]), vec![PeerChange::Update(expect)]);
}

#[test]
fn converging_twice_is_a_no_op() {
    let f = Fleet::new();
    let (me, _) = f.node("me", 1);
    let view: Vec<_> = (0..5).map(|i| f.node(&format!("n{i}"), 10 + i).1).collect();
    let (want, _) = desired_peers(&f.adm(me), &view, f.now);
    let changes = diff(&[], &want);
    assert_eq!(changes.len(), 5);
    assert!(diff(&want, &want).is_empty());
}

#[test]
fn admitted_peers_are_named_by_their_certificate_and_only_they_are() {
    let f = Fleet::new();
    let (me, me_ad) = f.node("me", 1);
    let (a, a_ad) = f.node("db-east-1", 2);
    let (_, mut dead) = f.node("dead", 3);
    dead.alive = false;
    // A forged advert for `a`'s key naming itself otherwise never renames it.
    let mut forged = a_ad.clone();
    forged.certificate.body.name = "impostor".into();
    let (want, refused, names) = admit(&f.adm(me), &[me_ad, forged, a_ad, dead], f.now);
    assert_eq!(keys(&want), vec![a]);
    assert_eq!(refused.len(), 1);
    assert_eq!(names, BTreeMap::from([(a, "db-east-1".to_owned())]));
}
