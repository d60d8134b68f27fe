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
//! # Backends
//! The kernel backend goes through defguard_wireguard_rs's `WGApi<Kernel>` (netlink). The
//! userspace backend is our own device ([`userspace`]): upstream boringtun's sans-IO
//! `noise::Tunn` for the protocol, and a data path with TUN offloads (userspace TSO/GRO),
//! UDP GSO/GRO and a thread per direction, because the ready-made devices (defguard's fork,
//! boringtun's `device`) cap at a fraction of what the cipher allows. Both are driven through
//! the same [`WireguardBackend`] calls; the userspace device serves a read-only UAPI socket
//! (`get` only, private key withheld), so `wg show` sees either backend, while `wg set` on
//! the userspace one is refused: the agent owns the configuration.
//!
//! # Joining through a seed
//! WireGuard drops handshakes from unknown keys, so a seed cannot learn a newcomer from
//! gossip that has to cross WireGuard first. [`join`]: the newcomer sends each seed a
//! datagram (WireGuard port + 1) with its certificate and an HMAC keyed by their X25519
//! shared secret, binding the IP it sends from; the seed checks it like any advert and adds
//! the peer for [`runtime::JOIN_TTL`]. A copy sent from elsewhere never sets or moves an
//! endpoint; old-format (v1) joins are admitted without one (see [`join`]).
//!
//! # Agent wiring
//! The agent (src/agent/mesh.rs) loads key, certificate and CA, starts a [`MeshRuntime`]
//! (interface up with the mesh address, join socket), binds gossip on the mesh address and
//! each tick calls [`MeshRuntime::converge`] with the `node` records' adverts (certificate,
//! endpoints, liveness from the failure detector, revocation list). Converge adopts newer
//! revocation lists, reads joins, runs [`desired_peers`] and [`diff`], and applies the
//! changes. Refusals are kept in a bounded list with counters and logged at most once per
//! kind per minute plus a summary ([`refusals`]).

pub mod address;
pub mod backend;
pub mod cert;
pub mod error;
pub mod files;
pub mod join;
pub mod keys;
pub mod peers;
pub mod refusals;
pub mod runtime;
pub mod userspace;

pub use address::FleetPrefix;
pub use backend::{
    BackendChoice, BackendKind, InterfaceSpec, MeshStatus, PeerStatus, WireguardBackend, select_backend,
};
pub use cert::{Admitted, CaPublicKey, Certificate, FleetCa, RevocationList, SigningRequest};
pub use error::{AdmissionError, BackendError, IdentityError};
pub use join::{JoinError, JoinRequest};
pub use keys::{NodeKey, PublicKey};
pub use peers::{Admission, PeerAdvert, PeerChange, PeerConfig, Refusal, Seed, desired_peers, diff};
pub use refusals::{RefusalTotals, RefusedPeer};
pub use runtime::{GossipAdvert, MeshRuntime, MeshSettings};
