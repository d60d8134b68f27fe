//! A WireGuard interface of ours in a test namespace, with a certificate from a test CA:
//! the fixture of the mesh's netns tests, shared by `tests/netns_mesh.rs` and
//! `mesh/tests/netns_mesh_alloc.rs` (each includes this file with `#[path]`).
#![allow(dead_code, missing_docs)] // each test binary uses part of it

use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use meshdrain_mesh::{
    BackendChoice, BackendKind, FleetCa, InterfaceSpec, NodeKey, PeerConfig, SigningRequest, WireguardBackend,
    select_backend,
};
use meshdrain_testkit::netns::{Netns, unique_name};

/// The underlay UDP port of every test interface (each lives in its own namespace).
pub const WG_PORT: u16 = 51820;

/// One node's interface.
pub struct Node {
    /// Interface name.
    pub name: String,
    pub key: NodeKey,
    /// Mesh address, from the certificate.
    pub address: Ipv6Addr,
    pub backend: Box<dyn WireguardBackend>,
}

/// Our userspace interface named after `name`'s certificate, inside `ns`.
pub fn bring_up(ns: &Netns, ca: &FleetCa, name: &str) -> Node {
    bring_up_with(ns, ca, name, |spec| select_backend(BackendChoice::Userspace, &spec))
}

/// Like [`bring_up`] with the backend made by `start` (a test can wrap or tune it).
pub fn bring_up_with(
    ns: &Netns,
    ca: &FleetCa,
    name: &str,
    start: impl FnOnce(InterfaceSpec) -> Result<Box<dyn WireguardBackend>, meshdrain_mesh::BackendError> + Send + 'static,
) -> Node {
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
    let ifname = spec.name.clone();
    let backend =
        ns.run_in(move || start(spec)).unwrap().unwrap_or_else(|e| panic!("userspace backend in {}: {e}", ns.name()));
    assert_eq!(backend.kind(), BackendKind::Userspace);
    Node { name: ifname, key, address: cert.body.address, backend }
}

/// `n` as a peer reached at `underlay`.
pub fn peer_of(n: &Node, underlay: std::net::Ipv4Addr) -> PeerConfig {
    PeerConfig::host(n.key.public(), n.address, Some(SocketAddr::from((underlay, WG_PORT))))
}
