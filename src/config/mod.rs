//! Agent configuration: TOML with `deny_unknown_fields`, then validation that names the
//! offending key and says how to fix it. A config that loads is a config the agent can run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::model::NodeName;

/// Default control socket, also used by the CLI when no `--control` is given.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/meshdrain/control.sock";

/// Why a config could not be used. Every message names the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read config {path}: {source} (pass an existing file with --config)")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has an unknown/missing key.
    #[error("config {path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// toml's message, which names the key and shows the line.
        message: String,
    },
    /// A key parsed but its value cannot work.
    #[error("config {path}: key `{key}`: {problem} (fix: {fix})")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// Dotted key, e.g. `gossip.listen`.
        key: String,
        /// What is wrong with the value.
        problem: String,
        /// What to write instead.
        fix: String,
    },
}

/// The whole agent configuration (one node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Node name, unique in the fleet; other nodes and the CLI address the node by it.
    /// Checked as it is parsed ([`NodeName`]).
    pub name: NodeName,
    /// Durable state (node state, applied requests, volumes); must survive reboots.
    pub state_dir: PathBuf,
    /// Fleet name: agents with a different one ignore each other's gossip.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Labels matched by placement constraints (`zone = "a"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Gossip (chitchat) settings.
    pub gossip: GossipConfig,
    /// Local control socket used by the CLI.
    #[serde(default)]
    pub control: ControlConfig,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// WireGuard mesh settings.
    #[serde(default)]
    pub mesh: MeshConfig,
    /// Local volume pool.
    #[serde(default)]
    pub pool: PoolConfig,
    /// How volume bytes move.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// Log format.
    #[serde(default)]
    pub log: LogConfig,
    /// Retention of handed-off copies.
    #[serde(default)]
    pub gc: GcConfig,
    /// Lease settings (`[lease] node_lost_after`).
    #[serde(default, skip_serializing_if = "LeaseConfig::is_default")]
    pub lease: LeaseConfig,
    /// Drain this node when the machine shuts down (`[drain] on_shutdown`,
    /// docs/drain-on-shutdown.md).
    #[serde(default, skip_serializing_if = "DrainConfig::is_default")]
    pub drain: DrainConfig,
}

/// `[lease]`: when a node dead for long is declared lost without an operator
/// (docs/failures.md). Off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Declare a node lost once it has been dead this long (a duration: `"30m"`, `"2h"`),
    /// only when that loses no data: never a holder a volume was cut over to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lost_after: Option<String>,
}

impl LeaseConfig {
    /// Whether nothing is set (the section is then left out of written configs).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The delay, if set and a duration (validation refuses anything else).
    pub fn node_lost_after(&self) -> Option<Duration> {
        self.node_lost_after.as_deref().and_then(|t| humantime::parse_duration(t).ok())
    }
}

/// Which data plane moves volume bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneBackend {
    /// Gossip only: volumes cannot move to or from this node.
    #[default]
    None,
    /// Development: every agent on one machine; exports are ACL files in `exports_dir`
    /// and clones copy from the source's file (lease semantics, no block device).
    Local,
    /// The real path: our iSCSI target on the source (on the mesh address), a clone
    /// device on the holder (`dataplane.clone` picks the engine).
    Iscsi,
}

/// Which engine stacks the clone on a holder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneEngineChoice {
    /// dm-clone when the node has the whole kernel path (dm-clone and iscsi_tcp loaded,
    /// device-mapper, open-iscsi's iscsiadm), else userspace.
    #[default]
    Auto,
    /// Our userspace engine exposed as a loop device over FUSE (any kernel).
    Userspace,
    /// The kernel's dm-clone over an open-iscsi session.
    Dm,
}

/// Data plane settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// `none`, `local` or `iscsi`.
    #[serde(default)]
    pub backend: DataplaneBackend,
    /// With `local`: the directory every agent of the local fleet shares for exports.
    #[serde(default)]
    pub exports_dir: Option<PathBuf>,
    /// How often hydration progress is published, in milliseconds.
    #[serde(default = "default_progress_ms")]
    pub progress_ms: u64,
    /// Fault injection for tests: how long preparing a clone takes.
    #[serde(default)]
    pub test_prepare_delay_ms: u64,
    /// With `iscsi`: TCP port of this node's iSCSI portal (on its mesh address).
    #[serde(default = "default_export_port")]
    pub export_port: u16,
    /// With `iscsi`: the clone engine on holders.
    #[serde(default)]
    pub clone: CloneEngineChoice,
    /// With `iscsi` and the userspace engine: how holders present clones to the workload
    /// (`auto`, `ublk`, `nbd`, `fuse-loop`; docs/exposures.md). `auto` takes the best the
    /// kernel has; an explicit choice the kernel lacks keeps the agent from starting.
    #[serde(default)]
    pub expose: meshdrain_clone::exposure::ExposeKind,
    /// With `iscsi`: where clone devices' FUSE mounts and links live
    /// (default `<state_dir>/run`).
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// With `iscsi` and the userspace engine: clone region size in bytes (multiple of 4096).
    #[serde(default = "default_region_size")]
    pub region_size: u64,
    /// With `iscsi` and the userspace engine: background reads in flight per volume.
    #[serde(default = "default_clone_parallelism")]
    pub clone_parallelism: usize,
    /// With `iscsi` and the userspace engine: bytes of background reads outstanding per
    /// volume, over all of `clone_parallelism`. Everything in flight queues ahead of the
    /// workload's on-demand reads on a shared path (a userspace tunnel above all), so this
    /// bounds how long a workload read waits behind hydration. 8 MiB keeps the mesh
    /// busy across each batch's turnaround (4 MiB left it idle ~10 % of the time here);
    /// right after workload I/O only one batch runs (see the clone's quiet window).
    #[serde(default = "default_clone_in_flight")]
    pub clone_in_flight: u64,
    /// With `iscsi` and the userspace engine: the first workload read within a region not
    /// yet copied takes just its bytes from the source and puts the region first in line
    /// for hydration (dm-clone's behaviour, and the lower first-read latency; a second
    /// read there fetches the region). `false` fetches whole regions at the first read.
    #[serde(default = "default_clone_read_through")]
    pub clone_read_through: bool,
    /// With `iscsi`: connections the portal serves at once, all exports together; the
    /// login past it is refused ("out of resources") and logged naming this key. Default
    /// 256 (the iSCSI crate's `Limits`).
    #[serde(default)]
    pub export_max_connections: Option<usize>,
    /// With `iscsi`: connections per exported volume (a holder uses one or two). Default 32.
    #[serde(default)]
    pub export_max_connections_per_volume: Option<usize>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            backend: DataplaneBackend::None,
            exports_dir: None,
            progress_ms: default_progress_ms(),
            test_prepare_delay_ms: 0,
            export_port: default_export_port(),
            clone: CloneEngineChoice::Auto,
            expose: meshdrain_clone::exposure::ExposeKind::Auto,
            run_dir: None,
            region_size: default_region_size(),
            clone_parallelism: default_clone_parallelism(),
            clone_in_flight: default_clone_in_flight(),
            clone_read_through: default_clone_read_through(),
            export_max_connections: None,
            export_max_connections_per_volume: None,
        }
    }
}

fn default_export_port() -> u16 {
    3260
}

fn default_region_size() -> u64 {
    64 * 1024
}

fn default_clone_parallelism() -> usize {
    4
}

fn default_clone_in_flight() -> u64 {
    8 << 20
}

fn default_clone_read_through() -> bool {
    true
}

fn default_progress_ms() -> u64 {
    500
}

fn default_cluster_id() -> String {
    "meshdrain".to_owned()
}

/// Gossip settings. Addresses are strings here and checked in [`AgentConfig::validate`]
/// so that a bad one is reported with its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipConfig {
    /// UDP address chitchat binds (`ip:port`).
    pub listen: String,
    /// Address other nodes should gossip to, when it differs from `listen` (NAT, 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Seed nodes (`ip:port` or `host:port`) to join through; may include this node.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Gossip round interval in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Phi-accrual threshold above which a silent node is declared dead.
    #[serde(default = "default_phi")]
    pub phi_threshold: f64,
    /// How long a dead node's state is kept before it is forgotten, in seconds.
    #[serde(default = "default_dead_grace_s")]
    pub dead_node_grace_s: u64,
    /// The fleet secret (32+ bytes, mode 0600, the same file on every node): every gossip
    /// datagram carries its HMAC and datagrams without it are dropped unread. Required
    /// without a mesh on a non-loopback address unless `insecure = true`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// A second secret accepted for verifying only (never for sending): key rotation.
    #[serde(default)]
    pub secret_file_previous: Option<PathBuf>,
    /// Gossip without a secret on a reachable address without a mesh: anyone who can send
    /// it a datagram can drain nodes. Logged at start and shown by `meshdrain status`.
    #[serde(default)]
    pub insecure: bool,
}

fn default_interval_ms() -> u64 {
    500
}
fn default_phi() -> f64 {
    8.0
}
fn default_dead_grace_s() -> u64 {
    24 * 3600
}

/// Control socket settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket path (created mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { socket: default_socket() }
    }
}

/// Metrics endpoint settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` serving Prometheus text at `/metrics`; absent = no endpoint.
    #[serde(default)]
    pub listen: Option<String>,
}

/// Which WireGuard implementation carries the mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshBackendChoice {
    /// No mesh: gossip runs directly on the configured addresses (development, tests).
    #[default]
    None,
    /// Kernel WireGuard if a wireguard link can be created, else userspace.
    Auto,
    /// Kernel WireGuard via netlink.
    Kernel,
    /// Userspace WireGuard (boringtun) on a TUN device.
    Userspace,
}

/// A seed of the mesh: the public key and underlay endpoint of a node to join through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSeed {
    /// The seed's WireGuard public key (base64).
    pub public_key: String,
    /// The seed's underlay `ip:port`.
    pub endpoint: String,
}

/// WireGuard mesh settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `none`, `auto`, `kernel` or `userspace`.
    #[serde(default)]
    pub backend: MeshBackendChoice,
    /// WireGuard interface name (must be unique per network namespace).
    #[serde(default)]
    pub interface: Option<String>,
    /// UDP port WireGuard listens on.
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// Underlay `ip:port` other nodes reach this node's WireGuard on.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// This node's certificate signed by the fleet CA.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The fleet CA's public certificate.
    #[serde(default)]
    pub fleet_ca: Option<PathBuf>,
    /// Seeds to join through.
    #[serde(default)]
    pub seeds: Vec<MeshSeed>,
    /// The fleet's signed revocation list: read when it changes, rewritten when gossip brings
    /// a newer one [default: `<state_dir>/mesh-revocations.json`]. Put a list made by
    /// `meshdrain mesh revoke` here on any one node and gossip carries it to all.
    #[serde(default)]
    pub revocations: Option<PathBuf>,
}

/// Local volume pool settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Where `volume create` puts sparse files and where incoming clones land;
    /// defaults to `<state_dir>/pool`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Capacity advertised to placement, in bytes; defaults to the free space of `dir`.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

/// The validated, typed addresses derived from a config.
#[derive(Debug, Clone)]
pub struct ResolvedAddrs {
    /// chitchat's bind address.
    pub gossip_listen: SocketAddr,
    /// The address advertised to peers.
    pub gossip_advertise: SocketAddr,
    /// Metrics bind address, if any.
    pub metrics_listen: Option<SocketAddr>,
}

impl AgentConfig {
    /// A config with every optional key at its default, so the demo and the tests build
    /// one as a value and write it with [`AgentConfig::to_toml`] instead of by hand.
    pub fn new(name: NodeName, state_dir: PathBuf, gossip_listen: String) -> Self {
        Self {
            name,
            state_dir,
            cluster_id: default_cluster_id(),
            labels: BTreeMap::new(),
            gossip: GossipConfig::new(gossip_listen),
            control: ControlConfig::default(),
            metrics: MetricsConfig::default(),
            mesh: MeshConfig::default(),
            pool: PoolConfig::default(),
            dataplane: DataplaneConfig::default(),
            log: LogConfig::default(),
            gc: GcConfig::default(),
            lease: LeaseConfig::default(),
            drain: DrainConfig::default(),
        }
    }

    /// The config as TOML that [`AgentConfig::parse`] reads back to the same value (absent
    /// options are left out).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

impl GossipConfig {
    /// Gossip on `listen` with every other key at its default.
    pub fn new(listen: String) -> Self {
        Self {
            listen,
            advertise: None,
            seeds: Vec::new(),
            interval_ms: default_interval_ms(),
            phi_threshold: default_phi(),
            dead_node_grace_s: default_dead_grace_s(),
            secret_file: None,
            secret_file_previous: None,
            insecure: false,
        }
    }
}

mod drain;
mod ops;
mod validate;

pub use drain::{DEFAULT_SHUTDOWN_DEADLINE, DrainConfig, OnShutdown};
pub use ops::{GcConfig, LogConfig, LogFormat};

#[cfg(test)]
mod tests;
