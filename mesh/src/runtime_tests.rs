//! MeshRuntime over a fake backend: what converge does with gossip, joins, revocations and
//! roaming, without a TUN device.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;
use crate::backend::PeerStatus;
use crate::cert::{FleetCa, SigningRequest};
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
    r.rt.converge(&[advert(&b, "198.18.0.2:51820", false), advert(&s, "198.18.0.3:51820", false)], SystemTime::now());
    assert_eq!(endpoints(&r.fake), vec![(s.key.public(), Some("198.18.0.9:51820".parse().unwrap()))]);
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
