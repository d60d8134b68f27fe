//! Rolls across real `meshdrain agent` processes on loopback with the local data plane
//! (docs/roll.md): two rolls started at once from two nodes never take more than one node
//! out, every volume ends on a live node with its bytes, and a kill -9 of the node that
//! started the roll and holds its slot is survived, as is an agent restart mid-command.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{AgentProc, joined, local_fleet, wait_until};
use sha2::{Digest, Sha256};

/// The fleet of `n` agents on loopback with the local data plane (common::local_fleet).
fn fleet(root: &Path, n: usize) -> Vec<AgentProc> {
    local_fleet(root, n, |_| {})
}

fn volume_with_data(a: &AgentProc, name: &str, mib: usize) -> String {
    common::volume_with_data(a, name, mib, &[])
}

/// Samples every live node's status every 100 ms; keeps the most nodes any of them saw
/// unavailable (cordoned, draining or drained) among the live ones, and what it saw then.
struct Watcher {
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<String>>,
}

impl Watcher {
    fn start(sockets: Vec<(String, std::path::PathBuf)>, skip: Arc<std::sync::Mutex<Vec<String>>>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, w, c) = (stop.clone(), worst.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            let mut seen_worst = String::new();
            while !s.load(Ordering::SeqCst) {
                for (name, sock) in &sockets {
                    if skip.lock().unwrap().contains(name) {
                        continue;
                    }
                    let out = common::meshdrain(&["--control", sock.to_str().unwrap(), "status", "--json"]);
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { continue };
                    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                    let out: Vec<String> = nodes
                        .iter()
                        .filter(|n| n["alive"] == true)
                        .filter(|n| ["cordoned", "draining", "drained"].contains(&n["state"].as_str().unwrap_or("")))
                        .map(|n| format!("{}={}", n["name"], n["state"]))
                        .collect();
                    c.fetch_add(1, Ordering::SeqCst);
                    if out.len() > w.load(Ordering::SeqCst) {
                        w.store(out.len(), Ordering::SeqCst);
                        seen_worst = format!("{name} saw {out:?}");
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen_worst
        });
        Watcher { stop, worst, samples, handle: Some(handle) }
    }

    /// Stops; returns (most unavailable seen, samples, what was seen then).
    fn finish(mut self) -> (usize, usize, String) {
        self.stop.store(true, Ordering::SeqCst);
        let what = self.handle.take().unwrap().join().unwrap();
        (self.worst.load(Ordering::SeqCst), self.samples.load(Ordering::SeqCst), what)
    }
}

fn rolls(a: &AgentProc) -> Vec<serde_json::Value> {
    let out = a.cli(&["roll", "status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn start_roll(a: &AgentProc, args: &[&str]) -> String {
    let mut full = vec!["roll", "--json"];
    full.extend_from_slice(args);
    let out = a.cli(&full);
    assert!(out.status.success(), "roll {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn sockets(agents: &[AgentProc]) -> Vec<(String, std::path::PathBuf)> {
    agents.iter().map(|a| (a.name.clone(), a.socket.clone())).collect()
}

#[test]
fn two_rolls_started_at_once_from_two_nodes_never_take_two_nodes_out() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 4);
    joined(&agents);
    let mut sums = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let name = format!("v{}", i + 1);
        sums.push((name.clone(), volume_with_data(a, &name, 2)));
    }
    let watcher = Watcher::start(sockets(&agents), Default::default());

    // Two operators, two nodes, the same moment.
    let (a1, a2) = (&agents[0], &agents[1]);
    let (id1, id2) = std::thread::scope(|s| {
        let r1 = s.spawn(|| {
            start_roll(a1, &["--all", "--undrain-after", "--pause", "1s", "--exec", "echo upgraded $MESHDRAIN_NODE"])
        });
        let r2 =
            s.spawn(|| start_roll(a2, &["--nodes", "node4,node3,node2,node1", "--undrain-after", "--pause", "1s"]));
        (r1.join().unwrap(), r2.join().unwrap())
    });
    assert_ne!(id1, id2);

    wait_until(
        Duration::from_secs(55),
        || {
            let r = rolls(&agents[2]);
            r.len() == 2 && r.iter().all(|r| r["phase"] == "done")
        },
        || format!("both rolls to be done; node3 shows {:#}", serde_json::Value::Array(rolls(&agents[2]))),
    );
    let (worst, samples, what) = watcher.finish();
    eprintln!("watcher: {samples} status samples, at most {worst} node(s) unavailable ({what})");
    assert!(samples > 50, "the watcher sampled {samples} times");
    assert!(worst <= 1, "{worst} nodes unavailable at once: {what}");

    // The command ran once on each node, exit 0, its output in the roll's record.
    let r = rolls(&agents[3]);
    let first = r.iter().find(|r| r["id"] == id1.as_str()).unwrap();
    for n in first["nodes"].as_array().unwrap() {
        let name = n["node"].as_str().unwrap();
        assert_eq!(n["step"], "done", "{n}");
        assert_eq!(n["record"]["exit"], 0, "{n}");
        assert_eq!(n["record"]["attempt"], 1, "{n}");
        assert_eq!(n["record"]["output"], format!("upgraded {name}\n"), "{n}");
    }
    // Every volume is held by a live, active node, with its bytes.
    let out = agents[0].cli(&["volume", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, sum) in &sums {
        let vol = v["volumes"].as_array().unwrap().iter().find(|x| x["id"] == name.as_str()).unwrap();
        assert_eq!(vol["phase"], "held", "{vol}");
        let owner = vol["owner"].as_str().unwrap();
        let path = agents.iter().find(|a| a.name == owner).unwrap().pool().join(format!("{name}.img"));
        let got = std::fs::read(&path).map(|d| hex::encode(Sha256::digest(&d))).ok();
        assert_eq!(got.as_deref(), Some(sum.as_str()), "{name} on {owner}");
    }
    let s = agents[0].status().unwrap();
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "active", "{n}");
    }
}

#[test]
fn a_kill_9_of_the_node_that_started_the_roll_and_holds_its_slot_is_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agents = fleet(tmp.path(), 3);
    joined(&agents);
    let sums = [("w2", volume_with_data(&agents[1], "w2", 2)), ("w3", volume_with_data(&agents[2], "w3", 2))];
    let skip: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let watcher = Watcher::start(sockets(&agents), skip.clone());
    let exec = "if [ $MESHDRAIN_NODE = node1 ]; then sleep 60; fi; echo ok";
    // node1 starts the roll and is its first node: the kill takes the starter and the
    // slot holder at once.
    let id = start_roll(&agents[0], &["--nodes", "node1,node2,node3", "--undrain-after", "--exec", exec]);

    // node1 holds the slot and runs its command: kill it there.
    wait_until(
        Duration::from_secs(20),
        || rolls(&agents[1]).iter().any(|r| r["nodes"][0]["step"] == "exec" && r["nodes"][0]["node"] == "node1"),
        || "node1 to run its command".to_owned(),
    );
    skip.lock().unwrap().push("node1".into());
    agents[0].kill9();

    wait_until(
        Duration::from_secs(45),
        || rolls(&agents[2]).first().is_some_and(|r| r["phase"] == "done"),
        || format!("the roll to go on without node1: {:#}", serde_json::Value::Array(rolls(&agents[2]))),
    );
    let (worst, _, what) = watcher.finish();
    assert!(worst <= 1, "{worst} live nodes unavailable at once: {what}");
    let r = &rolls(&agents[1])[0];
    assert_eq!(r["id"], id.as_str());
    assert_eq!(r["nodes"][0]["skipped"], true, "node1 is reported skipped: {r}");
    for i in [1, 2] {
        assert_eq!(r["nodes"][i]["step"], "done", "{r}");
        assert_eq!(r["nodes"][i]["record"]["output"], "ok\n", "{r}");
    }
    let out = agents[2].cli(&["roll", "status", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node1: exec (attempt 1) — not heard from: skipped, the roll goes on without it"), "{text}");
    let out = agents[1].cli(&["volume", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, sum) in &sums {
        let vol = v["volumes"].as_array().unwrap().iter().find(|x| x["id"] == *name).unwrap();
        let owner = vol["owner"].as_str().unwrap();
        assert_ne!(owner, "node1", "{vol}");
        assert_eq!(vol["phase"], "held", "{vol}");
        let path = agents.iter().find(|a| a.name == owner).unwrap().pool().join(format!("{name}.img"));
        let got = std::fs::read(&path).map(|d| hex::encode(Sha256::digest(&d))).ok();
        assert_eq!(got.as_deref(), Some(sum.as_str()), "{name} on {owner}");
    }
}

#[test]
fn an_agent_restarted_mid_roll_keeps_its_slot_and_takes_its_command_as_done() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agents = fleet(tmp.path(), 3);
    joined(&agents);
    let watcher = Watcher::start(sockets(&agents), Default::default());
    let exec = "if [ $MESHDRAIN_NODE = node1 ]; then sleep 30; fi; echo ok";
    let id = start_roll(&agents[1], &["--nodes", "node1,node2", "--undrain-after", "--exec", exec]);
    wait_until(
        Duration::from_secs(20),
        || rolls(&agents[1]).iter().any(|r| r["nodes"][0]["step"] == "exec"),
        || "node1 to run its command".to_owned(),
    );
    agents[0].kill9();
    agents[0].start();
    wait_until(
        Duration::from_secs(30),
        || rolls(&agents[2]).first().is_some_and(|r| r["phase"] == "done"),
        || format!("the roll to finish: {:#}", serde_json::Value::Array(rolls(&agents[2]))),
    );
    let (worst, _, what) = watcher.finish();
    assert!(worst <= 1, "{worst} nodes unavailable at once: {what}");
    let r = &rolls(&agents[0])[0];
    assert_eq!(r["id"], id.as_str());
    let n1 = &r["nodes"][0];
    assert_eq!((n1["step"].as_str(), n1["skipped"].as_bool()), (Some("done"), Some(false)), "{r}");
    // The command is not run again (it may be what restarted the agent: a reboot would
    // loop): taken as done, exit status unknown, and said so.
    assert_eq!(n1["record"]["exit"], serde_json::Value::Null, "{r}");
    assert_eq!(
        n1["record"]["output"],
        "[meshdrain: the agent restarted while this command ran (a reboot?): taken as done, exit status unknown]\n",
        "{r}"
    );
    assert_eq!(n1["record"]["attempt"], 1, "{r}");
    let n2 = &r["nodes"][1];
    assert_eq!((n2["step"].as_str(), n2["record"]["output"].as_str()), (Some("done"), Some("ok\n")), "{r}");
}
