//! docs/operations.md kept true: its runnable blocks, as written, on four "machines" (admin
//! and node1..node3: network namespaces with private mount, UTS and IPC namespaces, made by
//! tests/guide/machine.sh), then the outcome checked here: node1 drained, PostgreSQL on
//! node2 with every row, the archive volume's bytes equal on node3, node1's copy gone after
//! gc. Root only (netns, loop, FUSE, overlayfs, cgroups). How the machines stand in for
//! real ones: docs/operations.md, "How this guide is tested".

mod guide;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshdrain_testkit::netns::{Lan, Netns, require, require_tun};

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");
/// A block that takes longer than this has hung (the whole guide runs in about 30 s).
const BLOCK_LIMIT: Duration = Duration::from_secs(180);

/// One machine: the process whose namespaces the guide's blocks enter.
struct Machine {
    name: String,
    dir: PathBuf,
    child: Child,
}

impl Machine {
    fn start(name: &str, netns: &str, root: &Path, shared: &Path) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["unshare", "--mount", "--uts", "--ipc", "--propagation", "private", "bash"])
            .arg(repo.join("tests/guide/machine.sh"))
            .args([name.as_ref(), dir.as_os_str(), shared.as_os_str(), BIN.as_ref()])
            .arg(repo.join("systemd/meshdrain.service"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a guide machine");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "machine {name} did not come up (see stderr above)");
        Self { name: name.to_owned(), dir, child }
    }

    /// `bash -e -o pipefail -c <text>` inside the machine, as root in /root.
    fn run(&self, text: &str) -> Output {
        let mut child = Command::new("nsenter")
            .arg("-t")
            .arg(self.child.id().to_string())
            .args(["-m", "-u", "-i", "-n", "--wd=/root", "--", "bash", "-e", "-o", "pipefail", "-c", text])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("USER", "root")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter");
        // Read both pipes on threads so a chatty block cannot block on a full pipe.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let o = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut v).ok();
            v
        });
        let e = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut v).ok();
            v
        });
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > BLOCK_LIMIT {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
    }

    /// Runs `text`, panicking with its output (and the agents' logs) if it fails.
    fn ok(&self, text: &str, machines: &[Machine]) -> String {
        let out = self.run(text);
        if !out.status.success() {
            panic!(
                "on {}: `{}` failed ({}):\nstdout:\n{}\nstderr:\n{}\n{}",
                self.name,
                text.trim(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs(machines)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit's output as the systemctl stub kept it (in the overlay's upper dir).
    fn unit_log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("var.upper/log/systemctl-stub/{unit}.log"))).unwrap_or_default()
    }

    /// Stops what the guide started here (in the stub's cgroups), detaches the loop devices
    /// left on its files, and ends the machine.
    fn teardown(&mut self) {
        let _ = self.run("systemctl stop postgresql@15-main meshdrain; umount -R /var/lib/postgresql/15/main || true");
        // What a unit left behind (holder processes, after KillMode=process): SIGTERM lets
        // a holder take its device down; SIGKILL after 10 s.
        let prefix = format!("guide-{}-", self.machine_id());
        let groups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup/pids")
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()))
            .into_iter()
            .flatten()
            .collect();
        let procs = |g: &Path| std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
        for (signal, wait) in [("-TERM", 100), ("-KILL", 50)] {
            for g in &groups {
                for pid in procs(g).split_whitespace() {
                    let _ = Command::new("kill").args([signal, pid]).status();
                }
            }
            for _ in 0..wait {
                if groups.iter().all(|g| procs(g).trim().is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for g in &groups {
            let _ = std::fs::remove_dir(g);
        }
        // Loop devices over this machine's files (paths as the machine sees them).
        let _ = self.run(
            "losetup -n -O NAME,BACK-FILE | awk '$2 ~ /^\\/(var\\/lib\\/meshdrain|srv)\\// {print $1}' | xargs -r -n1 losetup -d",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn machine_id(&self) -> String {
        format!("{}-{}", self.name, self.child.id())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn logs(machines: &[Machine]) -> String {
    machines
        .iter()
        .filter(|m| m.name != "admin")
        .map(|m| format!("--- {} meshdrain\n{}", m.name, tail(&m.unit_log("meshdrain"), 30)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn root_operations_guide_runs_as_written() {
    // scripts/install-deps installs the guide's own tools (its guide line).
    require(&["nsenter", "unshare", "nft", "jq", "mkfs.ext4", "curl", "python3", "pg_ctlcluster", "su"])
        .expect("the guide's tools (apt-get install postgresql-15 jq curl nftables)");
    require_tun().expect("userspace WireGuard needs /dev/net/tun");
    assert!(
        Path::new("/etc/postgresql/15/main/postgresql.conf").exists(),
        "the guide moves PostgreSQL 15's cluster 15/main: apt-get install postgresql-15 (it creates the cluster)"
    );
    let started = Instant::now();
    let markdown = std::fs::read_to_string(guide::path()).unwrap();
    let blocks = guide::blocks(&markdown);
    assert!(blocks.iter().filter(|b| !b.on.is_empty()).count() >= 15, "the guide's runnable blocks were found");

    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("fleet");
    std::fs::create_dir_all(&shared).unwrap();
    let lan = Lan::new(3).expect("the guide's LAN (198.18.0.1-3)");
    let admin_ns = Netns::new("admin").unwrap();
    let mut machines = vec![Machine::start("admin", admin_ns.name(), tmp.path(), &shared)];
    for (i, ns) in lan.nodes.iter().enumerate() {
        machines.push(Machine::start(&format!("node{}", i + 1), ns.name(), tmp.path(), &shared));
    }
    for m in &machines {
        m.ok(&format!("echo {} > /run/guide-machine", m.machine_id()), &machines);
    }

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut transcript = String::new();
        for b in blocks.iter().filter(|b| !b.on.is_empty()) {
            for on in &b.on {
                let m = machines
                    .iter()
                    .find(|m| &m.name == on)
                    .unwrap_or_else(|| panic!("operations.md line {}: no machine {on}", b.line));
                let t = Instant::now();
                eprintln!("guide: line {} on {on} ({:.1}s into the run)", b.line, started.elapsed().as_secs_f64());
                let out = m.ok(&b.text, &machines);
                transcript.push_str(&format!(
                    "### {on} (line {}, {:.1}s)\n{}{out}\n",
                    b.line,
                    t.elapsed().as_secs_f64(),
                    b.text
                ));
            }
        }
        eprintln!("{transcript}");
        check_outcome(&machines, &shared);
    }));
    for m in machines.iter_mut() {
        m.teardown();
    }
    drop(lan);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    eprintln!("the guide ran in {:.1}s", started.elapsed().as_secs_f64());
}

/// What the guide promises, checked apart from its own commands.
fn check_outcome(machines: &[Machine], shared: &Path) {
    let node = |n: &str| machines.iter().find(|m| m.name == n).unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&node("node3").ok("meshdrain status --json", machines)).expect("status --json");
    let nodes = status["nodes"].as_array().expect("nodes");
    let state = |n: &str| nodes.iter().find(|x| x["name"] == n).map(|x| x["state"].clone());
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(nodes.iter().all(|x| x["alive"] == true), "every node alive: {status}");
    assert_eq!(state("node1"), Some("drained".into()), "{status}");
    assert_eq!(state("node2"), Some("active".into()), "{status}");
    assert!(status.to_string().contains("userspace"), "the userspace mesh backend ran: {status}");

    let list: serde_json::Value =
        serde_json::from_str(&node("node1").ok("meshdrain volume list --json", machines)).expect("volume list");
    let volume = |id: &str| list["volumes"].as_array().unwrap().iter().find(|v| v["id"] == id).cloned().unwrap();
    assert_eq!(volume("pg-main")["owner"], "node2", "only node2 carries role=db: {list}");
    assert_eq!(volume("archive")["owner"], "node3", "one drain's volumes spread: {list}");
    for id in ["pg-main", "archive"] {
        assert_eq!(volume(id)["phase"], "held", "{id} landed: {list}");
    }

    let rows = node("node2").ok("su - postgres -c \"psql -tA -c 'select count(*) from orders'\"", machines);
    assert_eq!(rows.trim(), "1001", "every row before the drain plus the one after the upgrades");

    let want = std::fs::read_to_string(shared.join("archive.sha256")).unwrap();
    let got = sha256(&node("node3").dir.join("state/pool/archive.img"));
    assert_eq!(want.split_whitespace().next(), Some(got.as_str()), "archive bytes on node3");

    let metrics = node("node1").ok("curl -sf http://198.18.0.1:9477/metrics", machines);
    assert!(metrics.contains("meshdrain_nodes{state=\"drained\",alive=\"true\"} 1"), "metrics:\n{metrics}");
    assert!(metrics.contains("meshdrain_peers_alive 2"), "metrics:\n{metrics}");

    // gc answers once the deletion is decided; the data plane removes the file just after.
    let copy = node("node1").dir.join("state/pool/pg-main.img");
    let deadline = Instant::now() + Duration::from_secs(10);
    while copy.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!copy.exists(), "gc deleted node1's handed-off copy");
    assert!(node("node2").dir.join("state/pool/pg-main.img").exists(), "pg-main lives in node2's pool");
    // Each agent restarted (upgrade, and node3's renewal) without a failed unit start.
    let restarts = node("node2").unit_log("meshdrain").matches("mesh up").count();
    assert!(restarts >= 2, "node2's agent ran twice (start, upgrade): {restarts}");
}
