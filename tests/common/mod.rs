//! Helpers for tests that run `meshdrain` processes: free ports, configs, a fleet of
//! agent processes that are killed on drop.

#![allow(dead_code, missing_docs)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshdrain::config::{AgentConfig, DataplaneBackend, DataplaneConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");

/// A UDP port free right now on 127.0.0.1 (the OS picks it).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `meshdrain <args>` to completion.
pub fn meshdrain(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("MESHDRAIN_LOG", "warn").output().expect("running meshdrain")
}

/// Creates volume `name` of `mib` MiB of pseudo-random bytes (seeded by the name) on `a`,
/// with `extra` `volume create` arguments; returns their sha256.
pub fn volume_with_data(a: &AgentProc, name: &str, mib: usize, extra: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let size = format!("{mib}M");
    let mut args = vec!["volume", "create", name, "--size", size.as_str()];
    args.extend_from_slice(extra);
    let out = a.cli(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seed = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let data = meshdrain_testkit::pattern(seed, mib << 20);
    std::fs::write(a.pool().join(format!("{name}.img")), &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

/// One agent process with its own config, state dir and control socket.
pub struct AgentProc {
    pub name: String,
    pub dir: PathBuf,
    /// Where [`AgentProc::write_config`] writes `cfg`.
    pub config: PathBuf,
    /// The agent's config: edit it, then [`AgentProc::write_config`] (before `start`).
    pub cfg: AgentConfig,
    pub socket: PathBuf,
    pub port: u16,
    /// Network namespace the agent runs in (entered with nsenter, so mounts stay shared).
    pub netns: Option<String>,
    child: Option<Child>,
}

impl AgentProc {
    pub fn new(root: &Path, name: &str, port: u16, seeds: &[u16], interval_ms: u64) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let mut cfg = AgentConfig::new(name.parse().unwrap(), dir.join("state"), format!("127.0.0.1:{port}"));
        cfg.gossip.seeds = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        cfg.gossip.interval_ms = interval_ms;
        cfg.control.socket = socket.clone();
        cfg.pool.capacity_bytes = Some(1 << 30);
        let a = Self {
            name: name.to_owned(),
            config: dir.join("agent.toml"),
            dir,
            cfg,
            socket,
            port,
            netns: None,
            child: None,
        };
        a.write_config();
        a
    }

    /// An agent inside network namespace `ns`, gossiping on `ip:7946` with `seeds` (ips).
    pub fn in_netns(root: &Path, name: &str, ns: &str, ip: &str, seeds: &[String], interval_ms: u64) -> Self {
        let mut a = Self::new(root, name, 7946, &[], interval_ms);
        a.cfg.gossip.listen = format!("{ip}:7946");
        a.cfg.gossip.seeds = seeds.iter().map(|s| format!("{s}:7946")).collect();
        a.write_config();
        a.netns = Some(ns.to_owned());
        a
    }

    /// Gives the agent the local development data plane (exports as ACL files in `exports`,
    /// shared by the fleet): a node without a data plane refuses to create volumes.
    pub fn local_dataplane(&mut self, exports: &Path) {
        self.cfg.dataplane = DataplaneConfig {
            backend: DataplaneBackend::Local,
            exports_dir: Some(exports.to_owned()),
            progress_ms: 100,
            ..DataplaneConfig::default()
        };
        self.write_config();
    }

    /// Writes `cfg` to the config file, serialized (never by hand).
    pub fn write_config(&self) {
        std::fs::write(&self.config, self.cfg.to_toml().expect("serializing the agent config")).unwrap();
    }

    /// The pool directory (default: under the state dir).
    pub fn pool(&self) -> PathBuf {
        self.dir.join("state").join("pool")
    }

    pub fn start(&mut self) {
        self.start_bin(Path::new(BIN));
    }

    /// Starts the agent from `bin` (a copy of the binary stands for another build).
    pub fn start_bin(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("MESHDRAIN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting agent");
        self.child = Some(child);
        // A killed agent leaves its socket behind: ready means "answers", not "exists".
        wait_until(
            Duration::from_secs(10),
            || self.status().is_some(),
            || format!("{} to answer on its control socket", self.name),
        );
    }

    /// SIGTERM and a bounded wait (10 s), then kill -9: a clean stop.
    pub fn stop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None))) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill9();
    }

    /// kill -9: no clean shutdown, no final writes.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec!["--control", self.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        meshdrain(&full)
    }

    /// `status --json` parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Volume `id` as `volume list --json` on this agent shows it.
    pub fn volume(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["volume", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["volumes"].as_array()?.iter().find(|v| v["id"] == id).cloned()
    }
}

/// `n` agents on loopback with the local data plane (exports shared under `root/exports`),
/// each seeded with one other; `edit` changes each agent before it starts. Call [`joined`]
/// to wait for them to see each other.
pub fn local_fleet(root: &Path, n: usize, edit: impl Fn(&mut AgentProc)) -> Vec<AgentProc> {
    let exports = root.join("exports");
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    (0..n)
        .map(|i| {
            // One seed: node2 for node1, node1 for the others (none in a fleet of one).
            let seeds: Vec<u16> = ports.iter().copied().filter(|p| *p != ports[i]).take(1).collect();
            let mut a = AgentProc::new(root, &format!("node{}", i + 1), ports[i], &seeds, 100);
            a.local_dataplane(&exports);
            edit(&mut a);
            a.write_config();
            a.start();
            a
        })
        .collect()
}

/// Waits (30 s) until every agent sees all of them alive.
pub fn joined(agents: &[AgentProc]) {
    let n = agents.len();
    wait_until(
        Duration::from_secs(30),
        || {
            agents.iter().all(|a| {
                a.status().is_some_and(|s| {
                    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
                    nodes.len() == n && nodes.iter().all(|x| x["alive"] == true)
                })
            })
        },
        || "the fleet to join".to_owned(),
    );
}

impl Drop for AgentProc {
    /// SIGTERM and a bounded wait, then kill -9; then the holder processes it started,
    /// which outlive it by design (docs/holder-process.md), are stopped by their pid files.
    fn drop(&mut self) {
        self.stop();
        meshdrain::dataplane::clone_process::stop_all(&self.cfg.run_dir());
    }
}

/// The state `observer` reports for `node`, if any.
pub fn state_seen(status: &serde_json::Value, node: &str) -> Option<String> {
    status["nodes"].as_array()?.iter().find(|n| n["name"] == node)?["state"].as_str().map(str::to_owned)
}

/// Polls `cond` every 100 ms until it holds or `limit` passes (then panics with `what`).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
pub mod netns;
pub mod sim;
