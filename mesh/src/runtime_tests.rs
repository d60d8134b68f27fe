//! MeshRuntime over a fake backend: what converge does with gossip, joins, revocations and
//! roaming, without a TUN device.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;
use crate::backend::PeerStatus;
use crate::cert::{FleetCa, SigningRequest};
use crate::join::MAX_JOIN_DATAGRAM;
use crate::peers::{PeerChange, PeerConfig};

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Vec<PeerConfig>>>);

impl WireguardBackend for Fake {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }
    fn peers(&self) -> Result<Vec<PeerConfig>, BackendError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn apply(&mut self, changes: &[PeerChange]) -> Result<(), BackendError> {
        let mut peers = self.0.lock().unwrap();
        for c in changes {
            match c {
                PeerChange::Add(p) | PeerChange::Update(p) => {
                    peers.retain(|q| q.public_key != p.public_key);
                    peers.push(p.clone());
                }
                PeerChange::Remove(k) => peers.retain(|q| q.public_key != *k),
            }
        }
        peers.sort();
        Ok(())
    }
    fn status(&self) -> Result<MeshStatus, BackendError> {
        let guard = self.0.lock().unwrap();
        let peers = guard.iter().map(|p| PeerStatus {
            public_key: p.public_key.to_base64(),
            name: None,
            endpoint: p.endpoint,
            allowed_ips: vec![],
            handshake_age_secs: None,
            rx_bytes: 0,
            tx_bytes: 0,
        });
        Ok(MeshStatus {
            interface: "fake".into(),
            backend: BackendKind::Kernel,
            listen_port: 51820,
            peers: peers.collect(),
        })
    }
}

struct Node {
    key: NodeKey,
    cert: Certificate,
}

fn enrol(ca: &FleetCa, name: &str, valid: Duration) -> Node {
    let key = NodeKey::generate();
    let req = SigningRequest { name: name.into(), public_key: key.public().to_base64() };
    Node { cert: ca.sign(&req, SystemTime::now() + valid).unwrap(), key }
}

fn advert(n: &Node, endpoint: &str, alive: bool) -> GossipAdvert {
    GossipAdvert {
        name: n.cert.body.name.clone(),
        certificate: Some(serde_json::to_value(&n.cert).unwrap()),
        endpoints: vec![endpoint.into()],
        alive,
        revocations: None,
    }
}

struct Rig {
    rt: MeshRuntime,
    fake: Fake,
    _dir: tempfile::TempDir,
}

fn rig(ca: &FleetCa, me: &Node, seeds: Vec<Seed>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let settings = MeshSettings {
        interface: "fake0".into(),
        backend: BackendChoice::Userspace,
        key: me.key.clone(),
        certificate: me.cert.clone(),
        ca: ca.public(),
        listen_port: 51820,
        endpoints: vec![],
        seeds,
        revocations_path: dir.path().join("revoked.json"),
    };
    let fake = Fake::default();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    Rig { rt: MeshRuntime::assemble(settings, Box::new(fake.clone()), socket), fake, _dir: dir }
}

fn endpoints(f: &Fake) -> Vec<(PublicKey, Option<SocketAddr>)> {
    f.0.lock().unwrap().iter().map(|p| (p.public_key, p.endpoint)).collect()
}

#[test]
fn admits_alive_fleet_members_and_refuses_others_once() {
    let ca = FleetCa::generate();
    let (me, b) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "b", Duration::from_secs(60)));
    let foreign = enrol(&FleetCa::generate(), "foreign", Duration::from_secs(60));
    let expired = enrol(&ca, "old", Duration::ZERO);
    let mut r = rig(&ca, &me, vec![]);
    let view = vec![
        advert(&me, "198.18.0.1:51820", true),
        advert(&b, "198.18.0.2:51820", true),
        advert(&foreign, "198.18.0.3:51820", true),
        advert(&expired, "198.18.0.4:51820", true),
    ];
    for _ in 0..3 {
        r.rt.converge(&view, SystemTime::now() + Duration::from_secs(1));
    }
    assert_eq!(endpoints(&r.fake), vec![(b.key.public(), Some("198.18.0.2:51820".parse().unwrap()))]);
    let (_, refused) = r.rt.status().unwrap();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().any(|x| x.peer == foreign.key.public().to_base64() && x.reason.contains("belongs to fleet"))
    );
    assert!(refused.iter().any(|x| x.peer == expired.key.public().to_base64() && x.reason.contains("expired")));
}

#[test]
fn dead_nodes_leave_but_a_dead_seed_stays_at_its_configured_endpoint() {
    let ca = FleetCa::generate();
    let (me, b, s) = (
        enrol(&ca, "me", Duration::from_secs(60)),
        enrol(&ca, "b", Duration::from_secs(60)),
        enrol(&ca, "s", Duration::from_secs(60)),
    );
    let seed = Seed { public_key: s.key.public(), endpoint: "198.18.0.9:51820".parse().unwrap() };
    let mut r = rig(&ca, &me, vec![seed]);
    r.rt.converge(&[advert(&b, "198.18.0.2:51820", true), advert(&s, "198.18.0.3:51820", true)], SystemTime::now());
    assert_eq!(endpoints(&r.fake).len(), 2);
    let names = |r: &Rig| -> Vec<(String, Option<String>)> {
        // Sorted here: status lists peers in key order, not in their base64 text's order.
        let mut n: Vec<_> = r.rt.status().unwrap().0.peers.into_iter().map(|p| (p.public_key, p.name)).collect();
        n.sort();
        n
    };
    let mut both = vec![(b.key.public().to_base64(), Some("b".into())), (s.key.public().to_base64(), Some("s".into()))];
    both.sort();
    assert_eq!(names(&r), both, "mesh status names peers by their certificates");
    r.rt.converge(&[advert(&b, "198.18.0.2:51820", false), advert(&s, "198.18.0.3:51820", false)], SystemTime::now());
    assert_eq!(endpoints(&r.fake), vec![(s.key.public(), Some("198.18.0.9:51820".parse().unwrap()))]);
    assert_eq!(names(&r), [(s.key.public().to_base64(), Some("s".into()))]);
}

#[test]
fn roamed_endpoints_are_kept_and_new_adverts_pushed() {
    let ca = FleetCa::generate();
    let (me, b) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "b", Duration::from_secs(60)));
    let mut r = rig(&ca, &me, vec![]);
    r.rt.converge(&[advert(&b, "198.18.0.2:51820", true)], SystemTime::now());
    // WireGuard follows b's packets to a new address.
    r.fake.0.lock().unwrap()[0].endpoint = Some("198.18.0.22:40000".parse().unwrap());
    r.rt.converge(&[advert(&b, "198.18.0.2:51820", true)], SystemTime::now());
    assert_eq!(endpoints(&r.fake)[0].1, Some("198.18.0.22:40000".parse().unwrap()), "roamed endpoint kept");
    // b restarts elsewhere and advertises it: pushed.
    r.rt.converge(&[advert(&b, "198.18.0.5:51820", true)], SystemTime::now());
    assert_eq!(endpoints(&r.fake)[0].1, Some("198.18.0.5:51820".parse().unwrap()));
}

#[test]
fn revocation_lists_from_gossip_are_verified_kept_and_honoured() {
    let ca = FleetCa::generate();
    let (me, b) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "b", Duration::from_secs(60)));
    let mut r = rig(&ca, &me, vec![]);
    let forged = FleetCa::generate().revocations(5, [b.key.public().to_base64()].into());
    let mut ad = advert(&b, "198.18.0.2:51820", true);
    ad.revocations = Some(serde_json::to_value(&forged).unwrap());
    r.rt.converge(&[ad.clone()], SystemTime::now());
    assert_eq!(endpoints(&r.fake).len(), 1, "a list from another CA is ignored");
    assert!(r.rt.revocations().is_none());
    let list = ca.revocations(1, [b.key.public().to_base64()].into());
    ad.revocations = Some(serde_json::to_value(&list).unwrap());
    r.rt.converge(&[ad], SystemTime::now());
    assert!(endpoints(&r.fake).is_empty(), "revoked peer removed");
    assert_eq!(r.rt.revocations(), Some(&list));
    let kept: RevocationList = load_json(&r.rt.settings().revocations_path).unwrap();
    assert_eq!(kept, list, "written for the next start");
}

#[test]
fn a_join_datagram_makes_a_peer_until_gossip_takes_over() {
    let ca = FleetCa::generate();
    let (me, j) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "joiner", Duration::from_secs(60)));
    let mut r = rig(&ca, &me, vec![]);
    let to = r.rt.join_socket.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ip = Some("127.0.0.1".parse().unwrap());
    let req = JoinRequest::claiming(&j.key, &j.cert, &me.key.public(), 51999, ip, SystemTime::now()).unwrap();
    sender.send_to(&req.encode(), to).unwrap();
    // A stolen certificate sent without its key is refused.
    let thief = JoinRequest::new(&NodeKey::generate(), &j.cert, &me.key.public(), 51998, SystemTime::now()).unwrap();
    sender.send_to(&thief.encode(), to).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.rt.converge(&[], SystemTime::now());
    assert_eq!(endpoints(&r.fake), vec![(j.key.public(), Some("127.0.0.1:51999".parse().unwrap()))]);
    let (_, refused) = r.rt.status().unwrap();
    assert!(refused.iter().any(|x| x.reason.contains("does not prove possession")), "{refused:?}");
    // Gossip shows it alive: the join is done; when gossip says dead, it goes.
    r.rt.converge(&[advert(&j, "127.0.0.1:51999", true)], SystemTime::now());
    r.rt.converge(&[advert(&j, "127.0.0.1:51999", false)], SystemTime::now());
    assert!(endpoints(&r.fake).is_empty());
}

#[test]
fn ten_thousand_spoofed_joins_keep_the_refusal_list_bounded_and_the_log_quiet() {
    let ca = FleetCa::generate();
    let me = enrol(&ca, "me", Duration::from_secs(60));
    let mut r = rig(&ca, &me, vec![]);
    let to = r.rt.join_socket.local_addr().unwrap();
    let junk = [&b"nonsense"[..], b"{\"v\":2}", b"{}", &[b'x'; MAX_JOIN_DATAGRAM + 100]];
    // 10,000 distinct sources (all of 127/8 is local), sent a tick's worth at a time.
    let mut sent = 0;
    while sent < 10_000 {
        for _ in 0..MAX_JOINS_PER_TICK.min(10_000 - sent) {
            let src = std::net::Ipv4Addr::new(127, 1 + (sent >> 16) as u8, (sent >> 8) as u8, sent as u8);
            let s = UdpSocket::bind((src, 0)).unwrap();
            s.send_to(junk[sent % junk.len()], to).unwrap();
            sent += 1;
        }
        r.rt.converge(&[], SystemTime::now());
    }
    let (_, refused) = r.rt.status().unwrap();
    assert_eq!(refused.len(), crate::refusals::MAX_REFUSALS_SHOWN);
    assert!(
        refused.iter().all(|x| x.peer.starts_with("join from 127.")
            && (x.reason.starts_with("malformed join request") || x.reason.contains("over the 4096-byte limit"))),
        "{refused:?}"
    );
    assert_eq!(refused[0].peer, "join from 127.1.39.15", "most recent first");
    let t = r.rt.refusal_totals();
    assert_eq!((t.refusals, t.new_refusals, t.evicted), (10_000, 10_000, 10_000 - 64));
    // One kind ("join malformed"), no interval over yet: one line, not 10,000.
    assert_eq!(t.log_lines, 1);
    assert!(endpoints(&r.fake).is_empty());
}

#[test]
fn a_replayed_join_from_another_ip_never_moves_the_endpoint() {
    let ca = FleetCa::generate();
    let (me, j) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "joiner", Duration::from_secs(60)));
    let mut r = rig(&ca, &me, vec![]);
    let to = r.rt.join_socket.local_addr().unwrap();
    let (real, copier) = (UdpSocket::bind("127.0.0.2:0").unwrap(), UdpSocket::bind("127.0.0.3:0").unwrap());
    let now = SystemTime::now();
    let dg = JoinRequest::claiming(&j.key, &j.cert, &me.key.public(), 51999, Some("127.0.0.2".parse().unwrap()), now)
        .unwrap()
        .encode();
    real.send_to(&dg, to).unwrap();
    r.rt.converge(&[], now);
    let want = vec![(j.key.public(), Some("127.0.0.2:51999".parse().unwrap()))];
    assert_eq!(endpoints(&r.fake), want);
    // The same datagram from another IP, within its window: refused, endpoint unchanged.
    copier.send_to(&dg, to).unwrap();
    r.rt.converge(&[], now);
    assert_eq!(endpoints(&r.fake), want);
    let (_, refused) = r.rt.status().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].peer, "join from 127.0.0.3");
    assert!(refused[0].reason.contains("is a replay"), "{refused:?}");
    // A newer join from the real node (e.g. the next resend) is accepted as before.
    let later = now + Duration::from_secs(2);
    let dg2 =
        JoinRequest::claiming(&j.key, &j.cert, &me.key.public(), 51999, Some("127.0.0.2".parse().unwrap()), later)
            .unwrap()
            .encode();
    // Its copy arriving first from elsewhere admits nothing new and moves nothing...
    copier.send_to(&dg2, to).unwrap();
    r.rt.converge(&[], later);
    assert_eq!(endpoints(&r.fake), want);
    // ...and the original still counts afterwards.
    real.send_to(&dg2, to).unwrap();
    r.rt.converge(&[], later);
    assert_eq!(endpoints(&r.fake), want);
    assert_eq!(r.rt.status().unwrap().1.len(), 1, "nothing more refused");
}

#[test]
fn a_first_join_copied_from_elsewhere_leaves_the_endpoint_to_the_handshake() {
    let ca = FleetCa::generate();
    let (me, j) = (enrol(&ca, "me", Duration::from_secs(60)), enrol(&ca, "joiner", Duration::from_secs(60)));
    let mut r = rig(&ca, &me, vec![]);
    let to = r.rt.join_socket.local_addr().unwrap();
    let now = SystemTime::now();
    let dg = JoinRequest::claiming(&j.key, &j.cert, &me.key.public(), 51999, Some("127.0.0.2".parse().unwrap()), now)
        .unwrap()
        .encode();
    // The copy wins the race: the peer is added with no endpoint (WireGuard learns it).
    UdpSocket::bind("127.0.0.3:0").unwrap().send_to(&dg, to).unwrap();
    r.rt.converge(&[], now);
    assert_eq!(endpoints(&r.fake), vec![(j.key.public(), None)]);
    // The original then sets the endpoint it proves.
    UdpSocket::bind("127.0.0.2:0").unwrap().send_to(&dg, to).unwrap();
    r.rt.converge(&[], now);
    assert_eq!(endpoints(&r.fake), vec![(j.key.public(), Some("127.0.0.2:51999".parse().unwrap()))]);
}

#[test]
fn joins_claim_the_configured_endpoint_else_the_routed_source() {
    let ca = FleetCa::generate();
    let me = enrol(&ca, "me", Duration::from_secs(60));
    let mut r = rig(&ca, &me, vec![]);
    let seed: SocketAddr = "127.0.0.1:51820".parse().unwrap();
    assert_eq!(r.rt.claimed_ip(seed), Some("127.0.0.1".parse().unwrap()), "routed source");
    r.rt.settings.endpoints = vec!["0.0.0.0:51820".parse().unwrap(), "198.18.0.9:51820".parse().unwrap()];
    assert_eq!(r.rt.claimed_ip(seed), Some("198.18.0.9".parse().unwrap()), "configured, unspecified skipped");
    assert_eq!(r.rt.claimed_ip("[::ffff:127.0.0.1]:51820".parse().unwrap()), Some("198.18.0.9".parse().unwrap()));
}
