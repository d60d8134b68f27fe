//! Our own userspace WireGuard: boringtun's sans-IO `noise::Tunn` for the protocol (handshake,
//! sessions, timers, cookies), and a data path of our own built for throughput on few cores:
//! TUN offloads with segmentation and coalescing in userspace ([`gso`]), batched UDP with
//! GSO/GRO ([`udp`]), a thread per direction ([`device`]).
//!
//! Why not a ready-made device: defguard's boringtun fork (and upstream boringtun's `device`)
//! do a syscall and a queue per packet and no offloads; on 2 cores they reach ~0.2-0.3 Gbit/s
//! where the cipher alone could do ~13. The agent configures the device through
//! [`WireguardBackend`] directly; a read-only UAPI socket ([`uapi`]) lets `wg show` see it.

pub mod device;
pub mod gso;
pub mod table;
pub mod tun;
pub mod uapi;
pub mod udp;

use std::time::Duration;

use base64::Engine;

use crate::address::FLEET_PREFIX_LEN;
use crate::backend::{BackendKind, InterfaceSpec, MeshStatus, PeerStatus, WireguardBackend};
use crate::error::BackendError;
use crate::peers::{PeerChange, PeerConfig};

/// Set to `0` to run without TUN offloads (plain batched packets), e.g. to compare.
pub const OFFLOAD_ENV: &str = "MESHDRAIN_WG_OFFLOAD";

/// The userspace backend: a [`device::Device`] in this process.
pub struct Userspace {
    dev: device::Device,
    name: String,
    listen_port: u16,
}

impl Userspace {
    /// Creates and configures the interface and starts the device, with TUN offloads unless
    /// [`OFFLOAD_ENV`] is `0`.
    pub fn start(spec: &InterfaceSpec) -> Result<Self, BackendError> {
        Self::start_with(spec, std::env::var(OFFLOAD_ENV).map(|v| v != "0").unwrap_or(true))
    }

    /// [`Userspace::start`] with offloads chosen by the caller (`false`: plain batched packets).
    pub fn start_with(spec: &InterfaceSpec, offload: bool) -> Result<Self, BackendError> {
        let fail = |reason: String| BackendError::UserspaceUnavailable { interface: spec.name.clone(), reason };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(spec.key.private_base64())
            .map_err(|e| fail(format!("private key: {e}")))?;
        let secret: [u8; 32] = raw.try_into().map_err(|_| fail("private key is not 32 bytes".into()))?;
        let dev = device::Device::start(
            &spec.name,
            secret,
            spec.address,
            FLEET_PREFIX_LEN,
            spec.listen_port,
            spec.mtu,
            offload,
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(Self { dev, name: spec.name.clone(), listen_port: spec.listen_port })
    }

    /// Whether the TUN runs with GSO offloads.
    pub fn offload(&self) -> bool {
        self.dev.offload()
    }
}

impl WireguardBackend for Userspace {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn peers(&self) -> Result<Vec<PeerConfig>, BackendError> {
        let mut out: Vec<PeerConfig> = self.dev.peers().into_iter().map(|(c, ..)| c).collect();
        out.sort();
        Ok(out)
    }

    fn apply(&mut self, changes: &[PeerChange]) -> Result<(), BackendError> {
        for c in changes {
            match c {
                PeerChange::Add(p) | PeerChange::Update(p) => self.dev.upsert(p),
                PeerChange::Remove(k) => {
                    self.dev.remove(k);
                }
            }
            crate::backend::log_change(&self.name, c);
        }
        Ok(())
    }

    fn status(&self) -> Result<MeshStatus, BackendError> {
        let mut peers: Vec<PeerStatus> = self
            .dev
            .peers()
            .into_iter()
            .map(|(c, hs, tx, rx)| PeerStatus {
                public_key: c.public_key.to_base64(),
                name: None,
                endpoint: c.endpoint,
                allowed_ips: c.allowed_ips.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
                handshake_age_secs: hs.map(|d: Duration| d.as_secs()),
                rx_bytes: rx,
                tx_bytes: tx,
            })
            .collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        Ok(MeshStatus {
            interface: self.name.clone(),
            backend: BackendKind::Userspace,
            listen_port: self.listen_port,
            peers,
        })
    }
}
