//! One run's fleet: four `meshdrain agent` processes, each in its own network namespace on
//! one bridge (underlay 198.18.0.0/24 of meshdrain-netns's `Lan`), enrolled by a fresh
//! fleet CA and joined by the userspace WireGuard mesh (gossip and iSCSI on fd00::/8),
//! with the real data path (our iSCSI target, the userspace clone engine). The fleet can
//! kill one agent (`kill -9`), kill a whole node (every process in its namespace), restart
//! an agent, and put nftables rules in a node's namespace; dropping it tears everything
//! down, also after a panic (docs/chaos.md, "Clean-up").

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshdrain::config::{AgentConfig, CloneEngineChoice, DataplaneBackend, DataplaneConfig};
use meshdrain_netns::Lan;
use serde_json::Value;

/// One node: its agent process (when running) and where its files are.
pub struct Node {
    /// `node1` ... `node4`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its control socket.
    pub socket: PathBuf,
    /// Where its volumes live.
    pub pool: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts the agent (entering only the network namespace, so mounts stay shared).
    pub fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bin)
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("MESHDRAIN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}'s agent", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the agent process is running (as far as this driver started it).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` of the agent alone (its clone processes, if any, are left alone).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a bounded wait (the agent tears down what it set up), then `kill -9`.
    pub fn terminate(&mut self, limit: Duration) {
        if let Some(c) = &self.child {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// One control request (`{"op":...}`) answered as JSON; `None` if the agent does not
    /// answer within 2 s or refuses.
    pub fn call(&self, request: &str) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{request}\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        let v: Value = serde_json::from_str(&line).ok()?;
        (v["result"] != "error").then_some(v)
    }

    /// `status` as JSON.
    pub fn status(&self) -> Option<Value> {
        self.call(r#"{"op":"status"}"#)
    }

    /// `volume list` as JSON rows.
    pub fn volumes(&self) -> Option<Vec<Value>> {
        self.call(r#"{"op":"volumes"}"#)?["volumes"].as_array().cloned()
    }

    /// The tail of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The fleet of one run.
pub struct Fleet {
    /// The nodes, `node1` first (the one drained).
    pub nodes: Vec<Node>,
    /// The meshdrain binary.
    pub bin: PathBuf,
    lan: Option<Lan>,
    dir: PathBuf,
}

impl Fleet {
    /// Builds the namespaces, enrols `n` nodes and starts their agents under `dir`.
    pub fn start(dir: &Path, n: usize, bin: &Path) -> anyhow::Result<Self> {
        let lan = Lan::new(n).context("building the namespaces (root, iproute2)")?;
        let meshes = meshdrain::cli::demo::fleet::enrol(dir, n).context("enrolling the fleet")?;
        let mut fleet = Self { nodes: Vec::new(), bin: bin.to_owned(), lan: None, dir: dir.to_owned() };
        for (i, mesh) in meshes.into_iter().enumerate() {
            let name = format!("node{}", i + 1);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home)?;
            let mut cfg = AgentConfig::new(name.parse()?, home.join("state"), format!("{}:7946", Lan::underlay(i)));
            cfg.cluster_id = "chaos".to_owned();
            cfg.gossip.interval_ms = 100;
            cfg.control.socket = home.join("control.sock");
            cfg.mesh = mesh;
            cfg.pool.capacity_bytes = Some(8 << 30);
            cfg.dataplane = DataplaneConfig {
                backend: DataplaneBackend::Iscsi,
                clone: CloneEngineChoice::Userspace,
                progress_ms: 200,
                // The clone takes 1.5 s to set up: a window between grant and cut-over in
                // which early faults can hit a holder still preparing.
                test_prepare_delay_ms: 1500,
                ..DataplaneConfig::default()
            };
            let config = home.join("agent.toml");
            std::fs::write(&config, cfg.to_toml()?).with_context(|| format!("writing {}", config.display()))?;
            fleet.nodes.push(Node {
                name,
                netns: lan.nodes[i].name().to_owned(),
                socket: home.join("control.sock"),
                pool: home.join("state").join("pool"),
                config,
                log: home.join("agent.log"),
                child: None,
            });
        }
        fleet.lan = Some(lan);
        for node in &mut fleet.nodes {
            node.start(bin)?;
        }
        Ok(fleet)
    }

    /// Waits until every agent answers and sees every node alive.
    pub fn wait_joined(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let n = self.nodes.len();
        while start.elapsed() < limit {
            let all = self.nodes.iter().all(|node| {
                node.status().is_some_and(|s| {
                    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
                    nodes.len() == n && nodes.iter().all(|x| x["alive"] == true)
                })
            });
            if all {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        anyhow::bail!("the fleet did not join within {limit:?}; logs under {}", self.dir.display())
    }

    /// Index of the node called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `meshdrain --control <node i's socket> <args>`.
    pub fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.bin)
            .arg("--control")
            .arg(&self.nodes[i].socket)
            .args(args)
            .env("MESHDRAIN_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .context("running the meshdrain CLI")
    }

    /// Kills every process in node `i`'s namespace (the machine is gone: its agent, any
    /// clone process it started); the agent handle is reaped.
    pub fn kill_node(&mut self, i: usize) {
        for pid in netns_pids(&self.nodes[i].netns) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        self.nodes[i].kill9();
    }

    /// Loads an nftables ruleset (`nft -f -`) inside node `i`'s namespace.
    pub fn nft(&self, i: usize, rules: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (apt-get install nftables)")?;
        child.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "nft in {}: {}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The last lines of every agent's log (for a failed run's report).
    pub fn logs(&self, lines: usize) -> String {
        self.nodes.iter().map(|n| format!("--- {}\n{}\n", n.name, n.log_tail(lines))).collect()
    }

    /// Stops every agent (SIGTERM, a bounded wait each: they tear down their clone devices)
    /// and leaves the namespaces and files in place.
    pub fn teardown_agents(&mut self) {
        for n in &self.nodes {
            if let Some(c) = &n.child {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        for n in &mut self.nodes {
            n.terminate(Duration::from_secs(10));
        }
    }

    /// Stops every agent (SIGTERM: each tears down its clone devices), kills what is left
    /// in the namespaces, unmounts and detaches what lives under the run's directory, and
    /// deletes the namespaces. Safe to call twice.
    pub fn teardown(&mut self) {
        self.teardown_agents();
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        sweep(&self.dir);
        self.lan.take();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Pids of the processes in network namespace `ns`.
fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Detaches every loop device whose backing file is under `dir` (one still mounted is
/// released when its mount goes), then unmounts (lazily, deepest first) every mount under
/// `dir`: what a killed agent, its clone processes or a failed run left. Loop devices go
/// first: once their FUSE file's mount is detached, their backing path no longer names
/// `dir`.
pub fn sweep(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if Path::new(backing.trim()).starts_with(&dir) {
                let _ = Command::new("losetup").args(["-d", &format!("/dev/{name}")]).output();
            }
        }
    }
    let mut mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}
