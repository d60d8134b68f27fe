//! meshdrain-mesh: node identity, fleet admission and the WireGuard mesh.
//!
//! Every node computes everything from keys: its id is its WireGuard public key, its mesh
//! address is the fleet /48 (from the fleet CA key) plus a hash of that key, and admission is
//! a CA signature any node checks alone. No coordinator, no allocation.
//!
//! # Layers
//! - [`keys`], [`address`], [`cert`]: identity and admission (pure except key files).
//! - [`peers`]: the pure peer-set diff (gossip view + `now` → desired peers → changes).
//! - [`backend`]: [`WireguardBackend`] applies changes to a kernel or userspace interface.
//!
//! # Why defguard_wireguard_rs for both backends
//! `WGApi<Kernel>` (netlink) and `WGApi<Userspace>` (its boringtun fork's device, configured
//! over the standard UAPI socket) implement the same `WireguardInterfaceApi`, so there is one
//! configuration path: the same `configure_peer` / `remove_peer` / `read_interface_data` calls
//! whichever backend runs, and `wg show` works on both. Upstream boringtun 0.7's `device` would
//! need a second path (hand-written UAPI for userspace, netlink for kernel). The UAPI is also
//! the seam for a faster data path of our own (boringtun `noise::Tunn` with batched
//! syscalls): it only has to serve the same socket.
//!
//! # Agent wiring (intended)
//! At start: `NodeKey::load_or_create(state_dir)`, load the certificate and CA public key,
//! `select_backend(choice, &InterfaceSpec{..})`, bind gossip on the mesh address. Publish
//! `{public_key, endpoints, certificate}` in the `node` record. Each tick (the agent's
//! `MeshPort::converge`): build `PeerAdvert`s from the view (alive = failure detector),
//! `desired_peers(&admission, &view, now)` (log refusals once), `diff(&backend.peers()?, &desired)`,
//! `backend.apply(&changes)`. `MeshPort::status` = `backend.status()` as JSON.

pub mod address;
pub mod backend;
pub mod cert;
pub mod error;
pub mod files;
pub mod keys;
pub mod peers;

pub use address::FleetPrefix;
pub use backend::{BackendChoice, BackendKind, InterfaceSpec, MeshStatus, PeerStatus, WireguardBackend, select_backend};
pub use cert::{Admitted, CaPublicKey, Certificate, FleetCa, RevocationList, SigningRequest};
pub use error::{AdmissionError, BackendError, IdentityError};
pub use keys::{NodeKey, PublicKey};
pub use peers::{Admission, PeerAdvert, PeerChange, PeerConfig, Refusal, Seed, desired_peers, diff};
