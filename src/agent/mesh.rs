//! The WireGuard mesh behind [`MeshPort`]: loads this node's identity from the config,
//! brings the interface up (before gossip starts, since gossip binds the mesh address) and
//! translates the cluster view into the mesh crate's adverts each tick.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, bail};
use meshdrain_mesh::files::{load_ca_public, load_json};
use meshdrain_mesh::{
    AdmissionError, BackendChoice, Certificate, GossipAdvert, MeshRuntime, MeshSettings, NodeKey, PublicKey,
    RevocationList, Seed,
};
use tracing::{info, warn};

use super::meshport::{MeshPort, NoMesh};
use crate::cluster::identity::NameCheck;
use crate::cluster::schema::{self, Key, NodeRecord};
use crate::cluster::view::{ClusterView, RawNode};
use crate::config::{AgentConfig, MeshBackendChoice, ResolvedAddrs};
use crate::decide::model::WireguardAdvert;

/// Default interface name when `mesh.interface` is not set.
pub const DEFAULT_INTERFACE: &str = "meshdrain0";
/// Default WireGuard port when neither `mesh.listen_port` nor `mesh.endpoint` gives one.
pub const DEFAULT_WG_PORT: u16 = 51820;
/// File name of the revocation list in the state dir (default of `mesh.revocations`).
pub const REVOCATIONS_FILE: &str = "mesh-revocations.json";

/// What starting the mesh gives `run_process`.
pub struct MeshSetup {
    /// The port for the owner loop.
    pub port: Box<dyn MeshPort>,
    /// This node's mesh address (none without a mesh).
    pub mesh_addr: Option<Ipv6Addr>,
    /// `kernel`, `userspace` or `none`, for `meshdrain status`.
    pub backend: String,
    /// Gossip addresses: the mesh address with the configured gossip port when a mesh runs.
    pub addrs: ResolvedAddrs,
    /// Extra chitchat seeds: the mesh seeds' mesh addresses with the gossip port.
    pub gossip_seeds: Vec<String>,
    /// With a mesh: drops gossip records whose name is not certified for their address.
    pub name_check: Option<std::sync::Arc<dyn NameCheck>>,
}

/// Mesh address → certified name, from the certificates nodes publish in their `node`
/// records (each signed by the fleet CA, so it does not matter who relayed it). A node's
/// mesh address derives from its WireGuard key (mesh/src/address.rs), and its certificate
/// binds that key to its name (mesh/src/cert.rs).
pub struct CertifiedNames {
    ca: meshdrain_mesh::CaPublicKey,
    /// The fleet's revocation list as the mesh runtime last adopted it: a revoked node's
    /// certificate no longer backs its name.
    revoked: Revoked,
}

/// The revocation list the mesh thread adopts, shared with the name check.
type Revoked = std::sync::Arc<std::sync::Mutex<RevocationList>>;

impl CertifiedNames {
    /// Checks certificates against the fleet CA `ca` and the shared revocation list.
    pub fn new(ca: meshdrain_mesh::CaPublicKey, revoked: Revoked) -> Self {
        Self { ca, revoked }
    }
}

impl NameCheck for CertifiedNames {
    fn certified(&self, nodes: &[RawNode]) -> std::collections::HashMap<std::net::IpAddr, String> {
        let now = SystemTime::now();
        let revoked = self.revoked.lock().expect("revocations lock").clone();
        nodes
            .iter()
            .flat_map(|n| n.entries.iter())
            .filter(|(k, _)| Key::parse(k) == Key::Node)
            .filter_map(|(_, v)| schema::decode::<NodeRecord>(v).ok()?.wireguard?.certificate)
            .filter_map(|c| serde_json::from_value::<Certificate>(c).ok())
            .filter_map(|c| c.verify(&self.ca, &revoked, now).ok())
            .map(|a| (std::net::IpAddr::V6(a.address), a.name))
            .collect()
    }
}

/// Starts the mesh the config asks for, or [`NoMesh`] for `mesh.backend = "none"`.
pub fn start(config: &AgentConfig, addrs: &ResolvedAddrs) -> anyhow::Result<MeshSetup> {
    let choice = match config.mesh.backend {
        MeshBackendChoice::None => {
            return Ok(MeshSetup {
                port: Box::new(NoMesh),
                mesh_addr: None,
                backend: "none".to_owned(),
                addrs: addrs.clone(),
                gossip_seeds: Vec::new(),
                name_check: None,
            });
        }
        MeshBackendChoice::Auto => BackendChoice::Auto,
        MeshBackendChoice::Kernel => BackendChoice::Kernel,
        MeshBackendChoice::Userspace => BackendChoice::Userspace,
    };
    let settings = settings(config, choice)?;
    let revoked = Revoked::default();
    let name_check: std::sync::Arc<dyn NameCheck> =
        std::sync::Arc::new(CertifiedNames::new(settings.ca, revoked.clone()));
    let prefix = settings.ca.prefix();
    let gossip_port = addrs.gossip_listen.port();
    let gossip_seeds = settings
        .seeds
        .iter()
        .map(|s| SocketAddr::from((prefix.node_address(&s.public_key), gossip_port)).to_string())
        .collect();
    let runtime = MeshRuntime::start(settings).context("config key `mesh.backend`")?;
    let address = runtime.address();
    let backend = format!("{:?}", runtime.kind()).to_lowercase();
    info!(backend, %address, interface = %runtime.settings().interface, "mesh up; gossip runs on the mesh address");
    let gossip = SocketAddr::from((address, gossip_port));
    Ok(MeshSetup {
        port: Box::new(WireguardMesh::start(runtime, revoked)?),
        mesh_addr: Some(address),
        backend,
        addrs: ResolvedAddrs { gossip_listen: gossip, gossip_advertise: gossip, metrics_listen: addrs.metrics_listen },
        gossip_seeds,
        name_check: Some(name_check),
    })
}

/// Loads and checks everything the mesh needs, naming the config key of each failure.
fn settings(config: &AgentConfig, backend: BackendChoice) -> anyhow::Result<MeshSettings> {
    let m = &config.mesh;
    let key = NodeKey::load_or_create(&config.state_dir).with_context(|| {
        format!("config key `state_dir`: node key {}", NodeKey::path_in(&config.state_dir).display())
    })?;
    let Some(ca_path) = &m.fleet_ca else {
        bail!(
            "config key `mesh.fleet_ca` is missing: point it at the fleet CA's public key (fleet-ca.pub from `meshdrain mesh init`)"
        );
    };
    let ca = load_ca_public(ca_path).context("config key `mesh.fleet_ca`")?;
    let Some(cert_path) = &m.certificate else {
        bail!(
            "config key `mesh.certificate` is missing: run `meshdrain mesh keygen --state-dir {}`, have the CA run \
             `meshdrain mesh sign`, and point mesh.certificate at the result",
            config.state_dir.display()
        );
    };
    let certificate: Certificate = load_json(cert_path).context("config key `mesh.certificate`")?;
    check_own_certificate(&certificate, &key, &config.state_dir, &ca)?;
    let endpoints: Vec<SocketAddr> = m.endpoint.iter().filter_map(|e| e.parse().ok()).collect();
    let listen_port = m.listen_port.or_else(|| endpoints.first().map(SocketAddr::port)).unwrap_or(DEFAULT_WG_PORT);
    let mut seeds = Vec::new();
    for (i, s) in m.seeds.iter().enumerate() {
        let public_key = PublicKey::from_base64(&s.public_key)
            .with_context(|| format!("config key `mesh.seeds[{i}].public_key`"))?;
        let endpoint = s.endpoint.parse().with_context(|| format!("config key `mesh.seeds[{i}].endpoint`"))?;
        seeds.push(Seed { public_key, endpoint });
    }
    Ok(MeshSettings {
        interface: m.interface.clone().unwrap_or_else(|| DEFAULT_INTERFACE.to_owned()),
        backend,
        key,
        certificate,
        ca,
        listen_port,
        endpoints,
        seeds,
        revocations_path: m.revocations.clone().unwrap_or_else(|| config.state_dir.join(REVOCATIONS_FILE)),
    })
}

/// Our own certificate must be for our key and from our CA; an expired one only warns (the
/// node runs, but others refuse it until it is re-signed).
fn check_own_certificate(
    cert: &Certificate,
    key: &NodeKey,
    state_dir: &Path,
    ca: &meshdrain_mesh::CaPublicKey,
) -> anyhow::Result<()> {
    if cert.body.public_key != key.public().to_base64() {
        bail!(
            "config key `mesh.certificate`: it certifies key {} but this node's key ({}) is {}: sign this node's request \
             (`meshdrain mesh keygen --state-dir {}` then `meshdrain mesh sign`)",
            cert.body.public_key,
            NodeKey::path_in(state_dir).display(),
            key.public(),
            state_dir.display()
        );
    }
    match cert.verify(ca, &RevocationList::default(), SystemTime::now()) {
        Ok(_) => Ok(()),
        Err(e @ AdmissionError::Expired { .. }) => {
            warn!("config key `mesh.certificate`: {e}; other nodes will refuse this one");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("config key `mesh.certificate` or `mesh.fleet_ca`: {e}")),
    }
}

/// The mesh crate's runtime as the agent's [`MeshPort`]. The runtime talks to WireGuard
/// (netlink or the userspace device's UAPI socket), which can block for seconds; so it
/// lives on a thread of its own and the owner loop only drops the latest view in a
/// one-slot mailbox and reads cached status, never waiting on the interface.
pub struct WireguardMesh {
    shared: std::sync::Arc<Shared>,
    advert: WireguardAdvert,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    /// The newest adverts not yet converged to (older ones are superseded).
    mailbox: std::sync::Mutex<Option<Vec<GossipAdvert>>>,
    wake: std::sync::Condvar,
    stop: std::sync::atomic::AtomicBool,
    status: std::sync::Mutex<serde_json::Value>,
    revocations: std::sync::Mutex<Option<serde_json::Value>>,
}

/// How often the mesh thread refreshes its status even without a new view.
const MESH_STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl WireguardMesh {
    fn start(runtime: MeshRuntime, revoked: Revoked) -> anyhow::Result<Self> {
        let s = runtime.settings();
        let advert = WireguardAdvert {
            public_key: s.key.public().to_base64(),
            endpoints: s.endpoints.iter().map(ToString::to_string).collect(),
            certificate: serde_json::to_value(&s.certificate).ok(),
            revocations: None,
        };
        if let Some(list) = runtime.revocations() {
            *revoked.lock().expect("revocations lock") = list.clone();
        }
        let shared = std::sync::Arc::new(Shared::default());
        *shared.status.lock().expect("status lock") = status_json(&runtime);
        *shared.revocations.lock().expect("revocations lock") =
            runtime.revocations().and_then(|r| serde_json::to_value(r).ok());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mesh".into())
            .spawn(move || mesh_thread(runtime, &worker, &revoked))
            .context("starting the mesh thread")?;
        Ok(Self { shared, advert, thread: Some(thread) })
    }
}

fn mesh_thread(mut runtime: MeshRuntime, shared: &Shared, revoked: &Revoked) {
    use std::sync::atomic::Ordering;
    let mut last_status = std::time::Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let adverts = {
            let slot = shared.mailbox.lock().expect("mailbox lock");
            let (mut slot, _) = shared
                .wake
                .wait_timeout_while(slot, MESH_STATUS_EVERY, |s| s.is_none() && !shared.stop.load(Ordering::Relaxed))
                .expect("mailbox lock");
            slot.take()
        };
        if let Some(adverts) = adverts {
            runtime.converge(&adverts, SystemTime::now());
            *shared.revocations.lock().expect("revocations lock") =
                runtime.revocations().and_then(|r| serde_json::to_value(r).ok());
            if let Some(list) = runtime.revocations() {
                *revoked.lock().expect("revocations lock") = list.clone();
            }
        }
        if last_status.elapsed() >= MESH_STATUS_EVERY {
            *shared.status.lock().expect("status lock") = status_json(&runtime);
            last_status = std::time::Instant::now();
        }
    }
}

fn status_json(runtime: &MeshRuntime) -> serde_json::Value {
    let s = runtime.settings();
    let base = serde_json::json!({
        "address": runtime.address().to_string(),
        "public_key": s.key.public().to_base64(),
        "revocations_serial": runtime.revocations().map_or(0, |r| r.body.serial),
    });
    let mut out = match runtime.status() {
        Ok((st, refused)) => {
            let mut v = serde_json::to_value(st).unwrap_or_default();
            v["refused"] = serde_json::to_value(refused).unwrap_or_default();
            v["refusals"] = serde_json::to_value(runtime.refusal_totals()).unwrap_or_default();
            v
        }
        Err(e) => {
            serde_json::json!({ "backend": format!("{:?}", runtime.kind()).to_lowercase(), "error": e.to_string(), "peers": [] })
        }
    };
    if let (Some(o), serde_json::Value::Object(b)) = (out.as_object_mut(), base) {
        o.extend(b);
    }
    out
}

impl Drop for WireguardMesh {
    /// Stops the mesh thread, waiting at most a few seconds: a WireGuard call stuck in the
    /// kernel or the userspace device must not keep the agent from exiting.
    fn drop(&mut self) {
        self.shared.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!("the mesh thread did not stop within 3 s; leaving it to process exit");
            }
        }
    }
}

impl MeshPort for WireguardMesh {
    fn converge(&mut self, view: &ClusterView) {
        let adverts: Vec<GossipAdvert> = view
            .nodes
            .values()
            .filter_map(|n| {
                let wg = n.record.as_ref()?.wireguard.as_ref()?;
                Some(GossipAdvert {
                    name: n.name.to_string(),
                    certificate: wg.certificate.clone(),
                    endpoints: wg.endpoints.clone(),
                    alive: n.alive,
                    revocations: wg.revocations.clone(),
                })
            })
            .collect();
        *self.shared.mailbox.lock().expect("mailbox lock") = Some(adverts);
        self.shared.wake.notify_one();
    }

    fn advert(&self) -> Option<WireguardAdvert> {
        let mut a = self.advert.clone();
        a.revocations = self.shared.revocations.lock().expect("revocations lock").clone();
        Some(a)
    }

    fn status(&self) -> serde_json::Value {
        self.shared.status.lock().expect("status lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshdrain_mesh::{FleetCa, SigningRequest};

    fn raw_node(name: &str, certificate: &Certificate) -> RawNode {
        let record = NodeRecord {
            wireguard: Some(WireguardAdvert {
                public_key: certificate.body.public_key.clone(),
                endpoints: vec![],
                certificate: serde_json::to_value(certificate).ok(),
                revocations: None,
            }),
            ..NodeRecord::new(
                name.parse().unwrap(),
                crate::decide::node::NodeState::Active,
                "[fd00::1]:7946".parse().unwrap(),
            )
        };
        RawNode {
            name: name.to_owned(),
            generation: 1,
            gossip_addr: "[fd00::1]:7946".parse().unwrap(),
            alive: true,
            heartbeat: 1,
            entries: vec![(Key::Node.render(), schema::encode(&record))],
        }
    }

    #[test]
    fn certified_names_follow_the_ca_and_drop_revoked_keys() {
        let ca = FleetCa::generate();
        let key = NodeKey::generate();
        let request = SigningRequest { name: "node1".into(), public_key: key.public().to_base64() };
        let cert = ca.sign(&request, SystemTime::now() + std::time::Duration::from_secs(3600)).unwrap();
        let revoked = Revoked::default();
        let check = CertifiedNames::new(ca.public(), revoked.clone());
        let nodes = [raw_node("node1", &cert)];
        let names = check.certified(&nodes);
        assert_eq!(names.get(&std::net::IpAddr::V6(cert.body.address)).map(String::as_str), Some("node1"));

        // Another CA's certificate backs nothing.
        let foreign = CertifiedNames::new(FleetCa::generate().public(), Revoked::default());
        assert!(foreign.certified(&nodes).is_empty());

        // Once the fleet revokes the key, its certificate no longer backs the name.
        *revoked.lock().unwrap() = ca.revocations(1, [request.public_key.clone()].into());
        assert!(check.certified(&nodes).is_empty());
    }
}
