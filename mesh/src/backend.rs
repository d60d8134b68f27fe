//! WireGuard backends behind one trait, [`WireguardBackend`]: the kernel module through
//! defguard_wireguard_rs's `WGApi<Kernel>` (netlink), and our own userspace device
//! ([`crate::userspace`]: boringtun's `noise::Tunn` on a TUN with offloads and batched UDP).
//! The agent configures both through the trait (peers, apply, status); both are visible to
//! `wg show` (the userspace device answers `get` on a read-only UAPI socket).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use defguard_wireguard_rs::host::Host;
use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{InterfaceConfiguration, Kernel, WGApi, WireguardInterfaceApi};
use serde::{Deserialize, Serialize};

use crate::address::FLEET_PREFIX_LEN;
use crate::error::BackendError;
use crate::keys::{NodeKey, PublicKey};
use crate::peers::{PeerChange, PeerConfig};

/// Default MTU: 1500 underlay minus IPv6 + UDP + WireGuard overhead.
pub const DEFAULT_MTU: u32 = 1420;

/// Which implementation to use (`mesh.backend` in the agent config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Kernel if a wireguard link can be created, else userspace.
    Auto,
    /// Kernel WireGuard only.
    Kernel,
    /// Userspace (boringtun on TUN) only.
    Userspace,
}

/// The implementation actually running (logged and shown in `meshdrain status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Kernel module via netlink.
    Kernel,
    /// boringtun in this process.
    Userspace,
}

/// The local interface to bring up.
#[derive(Debug, Clone)]
pub struct InterfaceSpec {
    /// Interface name; must be unique on the host (the UAPI socket dir is shared by namespaces).
    pub name: String,
    /// This node's key.
    pub key: NodeKey,
    /// This node's mesh address (gets the fleet /48 on-link).
    pub address: Ipv6Addr,
    /// UDP listen port on the underlay.
    pub listen_port: u16,
    /// MTU.
    pub mtu: u32,
}

/// One peer as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Base64 public key.
    pub public_key: String,
    /// The node name its certificate vouches for (filled by the mesh runtime; `None` for a
    /// seed not yet seen in gossip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Current underlay endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs as `addr/len`.
    pub allowed_ips: Vec<String>,
    /// Seconds since the last handshake, if any.
    pub handshake_age_secs: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// What `meshdrain mesh status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Interface name.
    pub interface: String,
    /// Backend kind.
    pub backend: BackendKind,
    /// Listen port.
    pub listen_port: u16,
    /// Peers.
    pub peers: Vec<PeerStatus>,
}

/// A running WireGuard interface the agent converges.
pub trait WireguardBackend: Send {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;
    /// The current peers, to diff against.
    fn peers(&self) -> Result<Vec<PeerConfig>, BackendError>;
    /// Applies changes in order; stops at the first failure (the next converge retries).
    fn apply(&mut self, changes: &[PeerChange]) -> Result<(), BackendError>;
    /// Peers with handshake age and counters.
    fn status(&self) -> Result<MeshStatus, BackendError>;
}

/// Brings up the interface with the requested backend. `Auto` tries a kernel link first and
/// falls back to userspace; the choice is logged.
pub fn select_backend(choice: BackendChoice, spec: &InterfaceSpec) -> Result<Box<dyn WireguardBackend>, BackendError> {
    let b: Box<dyn WireguardBackend> = match choice {
        BackendChoice::Kernel => Box::new(Defguard::up::<Kernel>(spec, BackendKind::Kernel)?),
        BackendChoice::Userspace => Box::new(crate::userspace::Userspace::start(spec)?),
        BackendChoice::Auto => match Defguard::up::<Kernel>(spec, BackendKind::Kernel) {
            Ok(k) => Box::new(k),
            Err(e) => {
                tracing::info!(interface = %spec.name, reason = %e, "kernel WireGuard unavailable, using userspace");
                Box::new(crate::userspace::Userspace::start(spec)?)
            }
        },
    };
    tracing::info!(interface = %spec.name, backend = ?b.kind(), address = %spec.address, port = spec.listen_port, "WireGuard mesh interface up");
    Ok(b)
}

struct Defguard {
    api: Box<dyn WireguardInterfaceApi + Send>,
    name: String,
    kind: BackendKind,
}

impl Defguard {
    fn up<API: Send + 'static>(spec: &InterfaceSpec, kind: BackendKind) -> Result<Self, BackendError>
    where
        WGApi<API>: WireguardInterfaceApi,
    {
        let fail = |action: &str, e: &dyn std::fmt::Display| match kind {
            BackendKind::Kernel => BackendError::KernelUnavailable(format!("{action}: {e}")),
            BackendKind::Userspace => {
                BackendError::UserspaceUnavailable { interface: spec.name.clone(), reason: format!("{action}: {e}") }
            }
        };
        let mut api = WGApi::<API>::new(spec.name.clone()).map_err(|e| fail("open", &e))?;
        api.create_interface().map_err(|e| fail("create interface", &e))?;
        // The mesh address is derived from a key, unique by construction: skip duplicate
        // address detection so gossip can bind it at once (best effort; `wait_usable` covers
        // hosts where this is not writable).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_dad", spec.name), "0");
        let me = Self { api: Box::new(api), name: spec.name.clone(), kind };
        let config = InterfaceConfiguration {
            name: spec.name.clone(),
            prvkey: spec.key.private_base64(),
            addresses: vec![IpAddrMask::new(IpAddr::V6(spec.address), FLEET_PREFIX_LEN)],
            port: spec.listen_port,
            peers: vec![],
            mtu: Some(spec.mtu),
            fwmark: None,
        };
        me.api.configure_interface(&config).map_err(|e| me.err("configure interface", e))?;
        Ok(me)
    }

    fn err(&self, action: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Configure { interface: self.name.clone(), action: action.to_owned(), reason: e.to_string() }
    }

    fn host(&self) -> Result<Host, BackendError> {
        self.api.read_interface_data().map_err(|e| self.err("read interface", e))
    }
}

/// One log line per applied peer change, the same for every backend.
pub(crate) fn log_change(interface: &str, c: &PeerChange) {
    match c {
        PeerChange::Add(p) | PeerChange::Update(p) => {
            let change = if matches!(c, PeerChange::Add(_)) { "add" } else { "update" };
            tracing::info!(interface, peer = %p.public_key, endpoint = %p.endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string()), change, "WireGuard peer");
        }
        PeerChange::Remove(k) => tracing::info!(interface, peer = %k, change = "remove", "WireGuard peer"),
    }
}

fn to_peer(p: &PeerConfig) -> Peer {
    let mut peer = Peer::new(Key::new(p.public_key.0));
    peer.endpoint = p.endpoint;
    peer.allowed_ips = p.allowed_ips.iter().map(|(a, l)| IpAddrMask::new(*a, *l)).collect();
    peer
}

impl WireguardBackend for Defguard {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn peers(&self) -> Result<Vec<PeerConfig>, BackendError> {
        let host = self.host()?;
        let mut out: Vec<PeerConfig> = host
            .peers
            .values()
            .map(|p| PeerConfig {
                public_key: PublicKey(p.public_key.as_array()),
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.iter().map(|m| (m.address, m.cidr)).collect(),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn apply(&mut self, changes: &[PeerChange]) -> Result<(), BackendError> {
        for c in changes {
            match c {
                PeerChange::Add(p) | PeerChange::Update(p) => {
                    self.api.configure_peer(&to_peer(p)).map_err(|e| self.err("configure peer", e))?;
                }
                PeerChange::Remove(k) => {
                    self.api.remove_peer(&Key::new(k.0)).map_err(|e| self.err("remove peer", e))?;
                }
            }
            log_change(&self.name, c);
        }
        Ok(())
    }

    fn status(&self) -> Result<MeshStatus, BackendError> {
        let host = self.host()?;
        let now = SystemTime::now();
        let mut peers: Vec<PeerStatus> = host
            .peers
            .values()
            .map(|p| PeerStatus {
                public_key: PublicKey(p.public_key.as_array()).to_base64(),
                name: None,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.iter().map(|m| m.to_string()).collect(),
                handshake_age_secs: p
                    .last_handshake
                    .filter(|t| *t > SystemTime::UNIX_EPOCH)
                    .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        Ok(MeshStatus { interface: self.name.clone(), backend: self.kind, listen_port: host.listen_port, peers })
    }
}

impl Drop for Defguard {
    fn drop(&mut self) {
        if let Err(e) = self.api.remove_interface() {
            tracing::warn!(interface = %self.name, error = %e, "removing WireGuard interface");
        }
    }
}
