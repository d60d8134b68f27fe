//! Checking a parsed config: every address, range and combination, each refusal naming
//! its key and the fix (the rules the agent relies on once it runs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;

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
            if self.dataplane.clone == CloneEngineChoice::Dm
                && self.dataplane.expose != meshdrain_clone::exposure::ExposeKind::Auto
            {
                return Err(invalid(
                    "dataplane.expose",
                    format!("{} applies to the userspace engine, not clone = \"dm\"", self.dataplane.expose),
                    "leave expose out (dm-clone is its own device) or set clone = \"auto\" or \"userspace\"",
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
        if self.gc.retention().is_none() {
            return Err(invalid(
                "gc.retention",
                format!("{:?} is not a duration", self.gc.retention),
                "write a duration such as \"24h\", \"90m\" or \"0s\"",
            ));
        }
        if let Some(text) = &self.lease.node_lost_after
            && self.lease.node_lost_after().is_none_or(|d| d.is_zero())
        {
            return Err(invalid(
                "lease.node_lost_after",
                format!("{text:?} is not a positive duration"),
                "write a duration such as \"30m\" or \"2h\", or leave the key out to declare lost nodes by hand only",
            ));
        }
        if let Some(text) = &self.drain.shutdown_deadline
            && self.drain.shutdown_deadline().is_none()
        {
            return Err(invalid(
                "drain.shutdown_deadline",
                format!("{text:?} is not a positive duration"),
                "write a duration such as \"5m\", below the unit's TimeoutStopSec=, or leave the key out (5m)",
            ));
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
mod lease_tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const BASE: &str = "name = \"node1\"\nstate_dir = \"/var/lib/meshdrain\"\n[gossip]\nlisten = \"127.0.0.1:7946\"\n";

    fn load(extra: &str) -> Result<AgentConfig, ConfigError> {
        let p = Path::new("/etc/meshdrain/agent.toml");
        let c = AgentConfig::parse(p, &format!("{BASE}{extra}"))?;
        c.validate(p).map(|_| c)
    }

    #[test]
    fn node_lost_after_is_off_by_default_and_a_positive_duration_when_set() {
        assert_eq!(load("").unwrap().lease.node_lost_after(), None);
        let c = load("[lease]\nnode_lost_after = \"2h\"\n").unwrap();
        assert_eq!(c.lease.node_lost_after(), Some(Duration::from_secs(7200)));
        assert!(c.to_toml().unwrap().contains("[lease]\nnode_lost_after = \"2h\""));
        assert!(!load("").unwrap().to_toml().unwrap().contains("[lease]"), "left out when unset");
        for bad in ["\"soon\"", "\"0s\""] {
            let err = load(&format!("[lease]\nnode_lost_after = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains("lease.node_lost_after"), "{err}");
            assert!(err.contains("is not a positive duration"), "{err}");
            assert!(err.contains("write a duration such as \"30m\" or \"2h\""), "{err}");
        }
    }
}
