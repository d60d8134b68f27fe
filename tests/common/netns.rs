//! A fleet of `meshdrain agent` processes in network namespaces on one bridge (underlay
//! 198.18.0.0/24), enrolled by one fleet CA and joined by the userspace WireGuard mesh,
//! with our iSCSI target and the userspace clone engine: the setup every `netns_*` drain
//! test shares. Root only (netns, loop, FUSE).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshdrain::cli::demo::workload::{pseudo_random, sha};
use meshdrain::config::{CloneEngineChoice, DataplaneBackend, DataplaneConfig};
use meshdrain_testkit::netns::Lan;

use super::{AgentProc, joined, state_seen, wait_until};

pub struct Fleet {
    pub agents: Vec<AgentProc>,
    /// Keeps the namespaces alive for the test's length (and cuts links in partition tests).
    pub lan: Lan,
    pub root: PathBuf,
}

impl Fleet {
    pub fn new(root: &Path, n: usize) -> Self {
        Self::with(root, n, |_| {})
    }

    /// A fleet whose agents' `[dataplane]` section is changed by `edit`; returns once every
    /// agent sees all `n` nodes alive.
    pub fn with(root: &Path, n: usize, edit: impl Fn(&mut DataplaneConfig)) -> Self {
        let lan = Lan::new(n).expect("building the test LAN (needs root, ip, bridge)");
        // Every node enrolled by one fleet CA; all agent traffic rides the userspace mesh.
        let mesh = meshdrain::cli::demo::fleet::enrol(root, n).expect("enrolling the fleet");
        let agents = mesh
            .iter()
            .enumerate()
            .map(|(i, section)| {
                let ip = Lan::underlay(i).to_string();
                let mut a = AgentProc::in_netns(root, &format!("node{}", i + 1), lan.nodes[i].name(), &ip, &[], 100);
                a.cfg.mesh = section.clone();
                a.cfg.dataplane = DataplaneConfig {
                    backend: DataplaneBackend::Iscsi,
                    clone: CloneEngineChoice::Userspace,
                    progress_ms: 200,
                    ..DataplaneConfig::default()
                };
                edit(&mut a.cfg.dataplane);
                a.write_config();
                a.start();
                a
            })
            .collect();
        let fleet = Self { agents, lan, root: root.to_owned() };
        joined(&fleet.agents);
        fleet
    }

    pub fn agent(&self, name: &str) -> &AgentProc {
        self.agents.iter().find(|a| a.name == name).unwrap()
    }

    /// A start hook that appends "node device" to `started-<volume>` each time it runs.
    pub fn start_hook(&self) -> String {
        let script = self.root.join("start-hook.sh");
        let body = format!(
            "#!/bin/sh\necho \"$MESHDRAIN_NODE $MESHDRAIN_DEVICE\" >> {}/started-$MESHDRAIN_VOLUME\n",
            self.root.display()
        );
        std::fs::write(&script, body).unwrap();
        run("chmod", &["+x", script.to_str().unwrap()]);
        script.display().to_string()
    }

    /// Every (node, device) the volume's start hook ran with, in order.
    pub fn starts(&self, volume: &str) -> Vec<(String, PathBuf)> {
        let text = std::fs::read_to_string(self.root.join(format!("started-{volume}"))).unwrap_or_default();
        text.lines().filter_map(|l| l.split_once(' ')).map(|(n, d)| (n.to_owned(), PathBuf::from(d))).collect()
    }

    /// (node, device) of the volume's first start, waiting (60 s) for its start hook to run.
    pub fn started(&self, volume: &str) -> (String, PathBuf) {
        wait_until(
            Duration::from_secs(60),
            || !self.starts(volume).is_empty(),
            || format!("{volume}'s workload to start; node1 log:\n{}", self.agents[0].log()),
        );
        self.starts(volume).swap_remove(0)
    }

    /// `volume` as agent `observer` lists it.
    pub fn volume(&self, observer: usize, id: &str) -> Option<serde_json::Value> {
        self.agents[observer].volume(id)
    }

    /// The last 40 log lines of every agent, for failure messages.
    pub fn logs(&self) -> String {
        let logs: Vec<String> = self.agents.iter().map(|a| format!("--- {}\n{}", a.name, tail(&a.log()))).collect();
        logs.join("\n")
    }

    pub fn wait_drained(&self, observer: usize, limit: Duration) {
        wait_until(
            limit,
            || self.agents[observer].status().and_then(|s| state_seen(&s, "node1")).as_deref() == Some("drained"),
            || format!("node1 to be drained\n{}", self.logs()),
        );
    }

    /// (hydrated, total) of `id` as the source sees it.
    pub fn hydration(&self, id: &str) -> (u64, u64) {
        let v = self.volume(0, id).unwrap_or_default();
        (v["hydrated"].as_u64().unwrap_or(0), v["total"].as_u64().unwrap_or(0))
    }

    /// The holder's state file of `id` on agent `i` (docs/holder-process.md).
    pub fn holder_state(&self, i: usize, id: &str) -> serde_json::Value {
        let path = self.agents[i].cfg.run_dir().join("clones").join(format!("{id}.state"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or_default()
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs `cmd args` to success; returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `count` files of `size` bytes under `dir`; returns (name, sha256) pairs.
pub fn write_files(dir: &Path, prefix: &str, count: usize, size: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let name = format!("{prefix}-{i}.bin");
            let data = pseudo_random((i as u64 + 1) * 7919 + prefix.len() as u64, size);
            std::fs::write(dir.join(&name), &data).unwrap();
            (name, sha(&data))
        })
        .collect()
}

/// Asserts every file under `dir` has its recorded sha256.
pub fn check_files(dir: &Path, files: &[(String, String)]) {
    for (name, want) in files {
        let got = std::fs::read(dir.join(name)).map(|d| sha(&d)).unwrap_or_else(|e| format!("unreadable: {e}"));
        assert_eq!(&got, want, "{name} under {}", dir.display());
    }
}

/// An ext4 volume `id` of `mib` MiB on node1, started by [`Fleet::start_hook`], holding
/// `files` files of 1 MiB; returns their (name, sha256).
pub fn ext4_volume(f: &Fleet, id: &str, mib: u64, files: usize) -> Vec<(String, String)> {
    let hook = f.start_hook();
    let out = f.agents[0].cli(&["volume", "create", id, "--size", &format!("{mib}M"), "--hook-start", &hook]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = f.agents[0].pool().join(format!("{id}.img"));
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let mnt = f.root.join(format!("src-{id}"));
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
    let sums = write_files(&mnt, "before", files, 1 << 20);
    run("umount", &[mnt.to_str().unwrap()]);
    sums
}
