//! The mesh crate's errors, one enum per layer, each message saying what to do next.

use std::path::PathBuf;

/// Failures of key, CA and certificate files (identity layer).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A key or certificate file could not be read or written.
    #[error("{path}: {source} (check the path and that the agent may read/write it)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file exists but does not hold what we expect.
    #[error("{path}: {reason} (restore it from backup or recreate it with `meshdrain mesh keygen`/`init`)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Refusing to overwrite a file whose loss would orphan the fleet.
    #[error("{path} already exists; refusing to replace it (every node certificate depends on it): pick another --dir")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A private key file is readable by others.
    #[error("{path}: mode {mode:o} lets others read a private key; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A node name the CA will not sign.
    #[error("node name {name:?} refused: {reason} (pick another `--name` at `meshdrain mesh keygen`)")]
    BadName {
        /// The name (clipped).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A base64 key string is malformed.
    #[error("bad key {what}: {reason} (expected 32 bytes in base64, as printed by `meshdrain mesh keygen`)")]
    BadKey {
        /// Which key.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Why a node certificate is refused admission to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Signed by another fleet's CA.
    #[error(
        "certificate of node {name} belongs to fleet {fleet}, not ours ({ours}): sign it with our CA (`meshdrain mesh sign`)"
    )]
    OtherFleet {
        /// Node name in the certificate.
        name: String,
        /// The fleet the certificate names.
        fleet: String,
        /// Our fleet.
        ours: String,
    },
    /// The signature does not verify, or the address was not derived from the key.
    #[error("certificate of node {name} is forged or corrupt ({reason}): refuse it and check who publishes it")]
    Forged {
        /// Node name in the certificate.
        name: String,
        /// What failed.
        reason: String,
    },
    /// Past its expiry.
    #[error("certificate expired at {expired_at} (unix seconds) for node {name}: re-sign with `meshdrain mesh sign`")]
    Expired {
        /// Node name.
        name: String,
        /// Expiry, unix seconds.
        expired_at: u64,
    },
    /// Listed in the fleet's revocation list.
    #[error("node {name} ({public_key}) is revoked by the fleet: it stays out until re-keyed and re-signed")]
    Revoked {
        /// Node name.
        name: String,
        /// Its WireGuard public key.
        public_key: String,
    },
    /// Two different keys hash to the same mesh address.
    #[error(
        "node {name} would take mesh address {address} already held by {holder}: re-key it with `meshdrain mesh keygen`"
    )]
    AddressCollision {
        /// The refused node.
        name: String,
        /// The contested address.
        address: std::net::Ipv6Addr,
        /// The node that keeps it.
        holder: String,
    },
}

/// Failures of a WireGuard backend (interface layer).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel backend was asked for but no wireguard link can be created.
    #[error(
        "kernel WireGuard unavailable on this host ({0}): load the module (`modprobe wireguard`) or set mesh.backend = \"userspace\""
    )]
    KernelUnavailable(String),
    /// The userspace backend could not start (usually /dev/net/tun or privileges).
    #[error(
        "userspace WireGuard could not start interface {interface}: {reason} (needs CAP_NET_ADMIN and /dev/net/tun)"
    )]
    UserspaceUnavailable {
        /// Interface name.
        interface: String,
        /// The underlying failure.
        reason: String,
    },
    /// Configuring the interface or a peer failed.
    #[error("WireGuard interface {interface}: {action} failed: {reason}")]
    Configure {
        /// Interface name.
        interface: String,
        /// What was being done.
        action: String,
        /// The underlying failure.
        reason: String,
    },
}
