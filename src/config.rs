//! Agent configuration: TOML with `deny_unknown_fields`, then validation that names the
//! offending key and says how to fix it. A config that loads is a config the agent can run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<(Self, ResolvedAddrs), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Self::parse(path, &text)?;
        let addrs = config.validate(path)?;
        Ok((config, addrs))
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })
    }

    /// Checks every value that parsed but could still not work, naming the key.
    pub fn validate(&self, path: &Path) -> Result<ResolvedAddrs, ConfigError> {
        let invalid = |key: &str, problem: String, fix: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
            fix: fix.to_owned(),
        };
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("{} is a relative path", self.state_dir.display()),
                "use an absolute path such as /var/lib/meshdrain",
            ));
        }
        let gossip_listen = parse_addr(&self.gossip.listen).ok_or_else(|| {
            invalid("gossip.listen", bad_addr(&self.gossip.listen), "write ip:port, e.g. 127.0.0.1:7946")
        })?;
        let gossip_advertise = match &self.gossip.advertise {
            Some(a) => parse_addr(a)
                .ok_or_else(|| invalid("gossip.advertise", bad_addr(a), "write ip:port, e.g. 198.18.0.1:7946"))?,
            None if gossip_listen.ip().is_unspecified() => {
                return Err(invalid(
                    "gossip.advertise",
                    format!("gossip.listen is {gossip_listen}, which peers cannot reach"),
                    "set gossip.advertise to the address peers should use",
                ));
            }
            None => gossip_listen,
        };
        for (i, seed) in self.gossip.seeds.iter().enumerate() {
            if !seed.contains(':') || seed.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(invalid(
                    &format!("gossip.seeds[{i}]"),
                    bad_addr(seed),
                    "write host:port or ip:port, e.g. 127.0.0.1:7947",
                ));
            }
        }
        if !(10..=60_000).contains(&self.gossip.interval_ms) {
            return Err(invalid(
                "gossip.interval_ms",
                format!("{} ms is out of range", self.gossip.interval_ms),
                "use 10 to 60000 (default 500)",
            ));
        }
        if self.gossip.secret_file_previous.is_some() && self.gossip.secret_file.is_none() {
            return Err(invalid(
                "gossip.secret_file_previous",
                "is set without gossip.secret_file".to_owned(),
                "set secret_file to the secret to send with; secret_file_previous is only also accepted",
            ));
        }
        if self.mesh.backend == MeshBackendChoice::None
            && self.gossip.secret_file.is_none()
            && !self.gossip.insecure
            && !(gossip_listen.ip().is_loopback() && gossip_advertise.ip().is_loopback())
        {
            return Err(invalid(
                "gossip.secret_file",
                format!(
                    "is required: gossip on {gossip_advertise} without a mesh would let anyone who can reach it drain nodes"
                ),
                "create a fleet secret (head -c 32 /dev/urandom > /etc/meshdrain/gossip.key && chmod 600 /etc/meshdrain/gossip.key), \
                 copy it to every node and set secret_file to it; or run a mesh (mesh.backend); or set insecure = true",
            ));
        }
        if !(self.gossip.phi_threshold > 0.0 && self.gossip.phi_threshold < 100.0) {
            return Err(invalid(
                "gossip.phi_threshold",
                format!("{} is out of range", self.gossip.phi_threshold),
                "use a value between 1 and 20 (default 8)",
            ));
        }
        let metrics_listen = match &self.metrics.listen {
            Some(a) => Some(
                parse_addr(a)
                    .ok_or_else(|| invalid("metrics.listen", bad_addr(a), "write ip:port, e.g. 127.0.0.1:9477"))?,
            ),
            None => None,
        };
        if self.dataplane.backend == DataplaneBackend::Local && self.dataplane.exports_dir.is_none() {
            return Err(invalid(
                "dataplane.exports_dir",
                "is required with backend = \"local\"".to_owned(),
                "give a directory every agent of the local fleet can reach, e.g. /run/meshdrain-local",
            ));
        }
        if self.dataplane.backend == DataplaneBackend::Iscsi {
            let rs = self.dataplane.region_size;
            if rs == 0 || !rs.is_multiple_of(4096) || rs > 64 << 20 {
                return Err(invalid(
                    "dataplane.region_size",
                    format!("{rs} is not a multiple of 4096 between 4 KiB and 64 MiB"),
                    "use 65536 (the default) unless benchmarks say otherwise",
                ));
            }
            let f = self.dataplane.clone_in_flight;
            if f < rs || f > 1 << 30 {
                return Err(invalid(
                    "dataplane.clone_in_flight",
                    format!("{f} is outside one region ({rs}) ..= 1 GiB"),
                    "use 4194304 (the default); lower it where the path to sources is slow (a workload read waits behind up to this much)",
                ));
            }
            if self.dataplane.clone_parallelism == 0 || self.dataplane.clone_parallelism > 64 {
                return Err(invalid(
                    "dataplane.clone_parallelism",
                    format!("{} is outside 1..=64", self.dataplane.clone_parallelism),
                    "use 4 (the default)",
                ));
            }
            for (key, value) in [
                ("dataplane.export_max_connections", self.dataplane.export_max_connections),
                ("dataplane.export_max_connections_per_volume", self.dataplane.export_max_connections_per_volume),
            ] {
                if value.is_some_and(|n| !(1..=65_536).contains(&n)) {
                    return Err(invalid(
                        key,
                        format!("{} is outside 1..=65536", value.unwrap_or_default()),
                        "leave it out for the default (256 on the portal, 32 per volume)",
                    ));
                }
            }
        }
        if self.mesh.backend != MeshBackendChoice::None {
            if let Some(ep) = &self.mesh.endpoint {
                parse_addr(ep).ok_or_else(|| {
                    invalid("mesh.endpoint", bad_addr(ep), "write the underlay ip:port, e.g. 198.18.0.1:51820")
                })?;
            }
            for (i, seed) in self.mesh.seeds.iter().enumerate() {
                parse_addr(&seed.endpoint).ok_or_else(|| {
                    invalid(
                        &format!("mesh.seeds[{i}].endpoint"),
                        bad_addr(&seed.endpoint),
                        "write the seed's underlay ip:port",
                    )
                })?;
                if meshdrain_mesh::PublicKey::from_base64(&seed.public_key).is_err() {
                    return Err(invalid(
                        &format!("mesh.seeds[{i}].public_key"),
                        format!("{:?} is not a base64 WireGuard public key", seed.public_key),
                        "copy the seed's `public key` line printed by `meshdrain mesh keygen`",
                    ));
                }
            }
            if self.mesh.fleet_ca.is_none() {
                return Err(invalid(
                    "mesh.fleet_ca",
                    "is required with a mesh".to_owned(),
                    "point it at fleet-ca.pub from `meshdrain mesh init`",
                ));
            }
            if self.mesh.certificate.is_none() {
                return Err(invalid(
                    "mesh.certificate",
                    "is required with a mesh".to_owned(),
                    "enrol the node (`meshdrain mesh keygen`, then `meshdrain mesh sign` on the CA) and give the certificate's path",
                ));
            }
        }
        Ok(ResolvedAddrs { gossip_listen, gossip_advertise, metrics_listen })
    }

    /// The gossip round interval.
    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip.interval_ms)
    }

    /// Where clone devices' mounts and links live (explicit or under the state dir).
    pub fn run_dir(&self) -> PathBuf {
        self.dataplane.run_dir.clone().unwrap_or_else(|| self.state_dir.join("run"))
    }

    /// The pool directory (explicit or under the state dir).
    pub fn pool_dir(&self) -> PathBuf {
        self.pool.dir.clone().unwrap_or_else(|| self.state_dir.join("pool"))
    }
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn bad_addr(s: &str) -> String {
    format!("{s:?} is not an ip:port address")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "node1"
state_dir = "/var/lib/meshdrain"
[gossip]
listen = "127.0.0.1:7946"
seeds = ["127.0.0.1:7947"]
interval_ms = 200
[control]
socket = "/run/meshdrain/control.sock"
[mesh]
backend = "none"
"#;

    fn load(text: &str) -> Result<ResolvedAddrs, ConfigError> {
        let p = Path::new("/etc/meshdrain/agent.toml");
        AgentConfig::parse(p, text)?.validate(p)
    }

    #[test]
    fn the_documented_example_is_valid() {
        let addrs = load(GOOD).expect("example config");
        assert_eq!(addrs.gossip_listen.to_string(), "127.0.0.1:7946");
        assert_eq!(addrs.gossip_advertise, addrs.gossip_listen);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&GOOD.replace("interval_ms = 200", "interval_ms = 200\nfanout = 3")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `fanout`"), "{msg}");
        assert!(msg.contains("/etc/meshdrain/agent.toml"), "{msg}");
    }

    #[test]
    fn bad_address_names_key_and_fix() {
        let err = load(&GOOD.replace("127.0.0.1:7946", "localhost")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config /etc/meshdrain/agent.toml: key `gossip.listen`: \"localhost\" is not an ip:port address \
             (fix: write ip:port, e.g. 127.0.0.1:7946)"
        );
    }

    #[test]
    fn bad_seed_names_its_index() {
        let err = load(&GOOD.replace("\"127.0.0.1:7947\"", "\"127.0.0.1:7947\", \"nohost\"")).unwrap_err();
        assert!(err.to_string().contains("key `gossip.seeds[1]`"), "{err}");
    }

    #[test]
    fn missing_section_is_named() {
        let err = load("name = \"n\"\nstate_dir = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("missing field `gossip`"), "{err}");
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let err = load(&GOOD.replace("127.0.0.1:7946", "0.0.0.0:7946")).unwrap_err();
        assert!(err.to_string().contains("key `gossip.advertise`"), "{err}");
    }

    #[test]
    fn node_names_are_plain() {
        // The rule itself is tested with `NodeName` (src/decide/model.rs); here, that the
        // config refuses a bad name where it is written.
        let err = load(&GOOD.replace("\"node1\"", "\"a/b\"")).unwrap_err();
        assert!(err.to_string().contains("name = \"a/b\""), "{err}");
        assert!(err.to_string().contains("\"a/b\" is not a valid node name (use 1-63 characters"), "{err}");
    }

    #[test]
    fn mesh_keys_are_checked_by_name() {
        let mesh = |extra: &str| GOOD.replace("backend = \"none\"", &format!("backend = \"userspace\"\n{extra}"));
        let err = load(&mesh("certificate = \"/c.json\"")).unwrap_err();
        assert!(err.to_string().contains("key `mesh.fleet_ca`: is required with a mesh"), "{err}");
        let err = load(&mesh("fleet_ca = \"/ca.pub\"")).unwrap_err();
        assert!(err.to_string().contains("key `mesh.certificate`"), "{err}");
        let seed = "fleet_ca = \"/ca.pub\"\ncertificate = \"/c.json\"\nseeds = [{ public_key = \"nope\", endpoint = \"198.18.0.2:51820\" }]";
        let err = load(&mesh(seed)).unwrap_err();
        assert!(err.to_string().contains("key `mesh.seeds[0].public_key`"), "{err}");
        let key = meshdrain_mesh::NodeKey::generate().public().to_base64();
        load(&mesh(&seed.replace("nope", &key))).expect("complete mesh section");
    }

    #[test]
    fn reachable_gossip_without_mesh_needs_a_secret_or_insecure() {
        let public = GOOD.replace("127.0.0.1:7946", "198.18.0.1:7946");
        assert_eq!(
            load(&public).unwrap_err().to_string(),
            "config /etc/meshdrain/agent.toml: key `gossip.secret_file`: is required: gossip on 198.18.0.1:7946 \
             without a mesh would let anyone who can reach it drain nodes (fix: create a fleet secret \
             (head -c 32 /dev/urandom > /etc/meshdrain/gossip.key && chmod 600 /etc/meshdrain/gossip.key), \
             copy it to every node and set secret_file to it; or run a mesh (mesh.backend); or set insecure = true)"
        );
        // Advertising a reachable address counts even when binding loopback.
        let advertised = GOOD.replace("interval_ms = 200", "interval_ms = 200\nadvertise = \"198.18.0.1:7946\"");
        assert!(load(&advertised).unwrap_err().to_string().contains("key `gossip.secret_file`"));
        let with = |extra: &str| public.replace("interval_ms = 200", &format!("interval_ms = 200\n{extra}"));
        load(&with("secret_file = \"/etc/meshdrain/gossip.key\"")).expect("with a secret");
        load(&with("insecure = true")).expect("insecure, on purpose");
        let err = load(&with("secret_file_previous = \"/k\"")).unwrap_err().to_string();
        assert!(err.contains("key `gossip.secret_file_previous`: is set without gossip.secret_file"), "{err}");
        // Loopback stays allowed without a secret (development, the process tests).
        load(GOOD).expect("loopback");
    }

    #[test]
    fn the_example_config_moves_data_and_export_caps_are_checked() {
        let example = include_str!("../systemd/agent.example.toml");
        load(example).expect("the example config is valid");
        let p = Path::new("/etc/meshdrain/agent.toml");
        assert_eq!(AgentConfig::parse(p, example).unwrap().dataplane.backend, DataplaneBackend::Iscsi);
        let capped = GOOD.to_owned() + "\n[dataplane]\nbackend = \"iscsi\"\nexport_max_connections = 0\n";
        assert_eq!(
            load(&capped).unwrap_err().to_string(),
            "config /etc/meshdrain/agent.toml: key `dataplane.export_max_connections`: 0 is outside 1..=65536 \
             (fix: leave it out for the default (256 on the portal, 32 per volume))"
        );
    }

    #[test]
    fn relative_state_dir_is_refused() {
        let err = load(&GOOD.replace("/var/lib/meshdrain", "state")).unwrap_err();
        assert!(err.to_string().contains("key `state_dir`"), "{err}");
    }
}
