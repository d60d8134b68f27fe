//! netns tier of the mesh: real userspace WireGuard interfaces in network namespaces.
//! Needs root, /dev/net/tun and iproute2; fails (never skips silently) without them.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime};

use meshdrain_mesh::{
    BackendChoice, BackendKind, FleetCa, InterfaceSpec, NodeKey, PeerChange, PeerConfig, SigningRequest, WireguardBackend,
    select_backend,
};
use meshdrain_testkit::netns::{Lan, Netns, require, require_tun, unique_name};

const WG_PORT: u16 = 51820;

struct Node {
    key: NodeKey,
    address: Ipv6Addr,
    backend: Box<dyn WireguardBackend>,
}

fn bring_up(ns: &Netns, ca: &FleetCa, name: &str) -> Node {
    let key = NodeKey::generate();
    let req = SigningRequest { name: name.into(), public_key: key.public().to_base64() };
    let cert = ca.sign(&req, SystemTime::now() + Duration::from_secs(3600)).unwrap();
    let spec = InterfaceSpec {
        name: unique_name("mdw"),
        key: key.clone(),
        address: cert.body.address,
        listen_port: WG_PORT,
        mtu: meshdrain_mesh::backend::DEFAULT_MTU,
    };
    let backend = ns
        .run_in(move || select_backend(BackendChoice::Userspace, &spec))
        .unwrap()
        .unwrap_or_else(|e| panic!("userspace backend in {}: {e}", ns.name()));
    assert_eq!(backend.kind(), BackendKind::Userspace);
    Node { key, address: cert.body.address, backend }
}

fn peer_of(n: &Node, underlay: std::net::Ipv4Addr) -> PeerConfig {
    PeerConfig::host(n.key.public(), n.address, Some(SocketAddr::from((underlay, WG_PORT))))
}

/// Sends `len` bytes from `from` to a listener in `to_ns` on `to_addr` and checks the echo.
fn tcp_round_trip(from: &Netns, to_ns: &Netns, to_addr: Ipv6Addr, port: u16, len: usize) {
    let listener = to_ns.run_in(move || TcpListener::bind((to_addr, port))).unwrap().expect("bind on mesh address");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let sent = data.clone();
    let echoed = from
        .run_in(move || -> std::io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(10))?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            let writer = {
                let mut w = c.try_clone()?;
                std::thread::spawn(move || w.write_all(&sent))
            };
            let mut back = vec![0u8; len];
            c.read_exact(&mut back)?;
            writer.join().unwrap()?;
            Ok(back)
        })
        .unwrap()
        .expect("TCP over the mesh");
    server.join().unwrap();
    assert!(echoed == data, "echoed bytes differ");
}

#[test]
fn netns_mesh_userspace_tunnel_carries_tcp() {
    require(&[]).unwrap();
    require_tun().unwrap();
    let lan = Lan::new(2).unwrap();
    let ca = FleetCa::generate();
    let mut a = bring_up(&lan.nodes[0], &ca, "a");
    let mut b = bring_up(&lan.nodes[1], &ca, "b");
    let pa = peer_of(&a, Lan::underlay(0));
    let pb = peer_of(&b, Lan::underlay(1));
    a.backend.apply(&[PeerChange::Add(pb.clone())]).unwrap();
    b.backend.apply(&[PeerChange::Add(pa.clone())]).unwrap();
    assert_eq!(a.backend.peers().unwrap(), vec![pb.clone()]);

    tcp_round_trip(&lan.nodes[0], &lan.nodes[1], b.address, 7001, 4 << 20);
    tcp_round_trip(&lan.nodes[1], &lan.nodes[0], a.address, 7002, 4 << 20);

    let st = a.backend.status().unwrap();
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert!(p.handshake_age_secs.is_some_and(|s| s < 60), "handshake recorded: {p:?}");
    assert!(p.tx_bytes > 4 << 20 && p.rx_bytes > 4 << 20, "counters: {p:?}");

    // Removing the peer cuts the tunnel.
    a.backend.apply(&[PeerChange::Remove(b.key.public())]).unwrap();
    assert!(a.backend.peers().unwrap().is_empty());
    let addr = b.address;
    let cut = lan.nodes[0]
        .run_in(move || TcpStream::connect_timeout(&SocketAddr::from((addr, 7003)), Duration::from_secs(2)).is_err())
        .unwrap();
    assert!(cut, "no route to a removed peer");
}
