//! Whole drains across real `meshdrain agent` processes on one machine, with the local
//! development data plane (exports as ACL files, clones copying regions with a durable
//! bitmap): the lease protocol, persistence and the CLI exercised end to end.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AgentProc, joined, local_fleet, state_seen, wait_until};
use meshdrain::config::{DataplaneConfig, OnShutdown};
use sha2::{Digest, Sha256};

fn fleet(root: &Path, n: usize) -> Vec<AgentProc> {
    fleet_with(root, n, |_| {})
}

/// A fleet whose agents' `[dataplane]` section is changed by `edit`.
fn fleet_with(root: &Path, n: usize, edit: impl Fn(&mut DataplaneConfig)) -> Vec<AgentProc> {
    local_fleet(root, n, |a| edit(&mut a.cfg.dataplane))
}

fn volume_with_data(a: &AgentProc, name: &str, mib: usize) -> String {
    common::volume_with_data(a, name, mib, &[])
}

fn sha_of(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|d| hex::encode(Sha256::digest(&d)))
}

fn volumes(a: &AgentProc) -> Vec<serde_json::Value> {
    let out = a.cli(&["volume", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["volumes"].as_array().cloned().unwrap_or_default()
}

fn agent<'a>(agents: &'a [AgentProc], name: &str) -> &'a AgentProc {
    agents.iter().find(|a| a.name == name).unwrap()
}

#[test]
fn a_node_drains_two_volumes_to_its_peers_and_deletes_only_after_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 3);
    joined(&agents);
    let sums = [("v1", volume_with_data(&agents[0], "v1", 8)), ("v2", volume_with_data(&agents[0], "v2", 4))];

    let out = agents[1].cli(&["drain", "node1", "--wait", "--deadline", "60s"]);
    assert!(
        out.status.success(),
        "drain --wait failed: {}\n{}\nnode1 log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agents[0].log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node1: drained in"));

    // Every volume has a new owner that is not node1, with the same bytes; the two
    // volumes went to different nodes (placement spreads a drain).
    let mut owners = vec![];
    for (name, sum) in &sums {
        let owner = wait_for_owner(&agents[2], name);
        assert_ne!(owner, "node1");
        let path = agent(&agents, &owner).pool().join(format!("{name}.img"));
        assert_eq!(sha_of(&path).as_deref(), Some(sum.as_str()), "{name} on {owner}");
        owners.push(owner);
    }
    assert_ne!(owners[0], owners[1], "one drain's volumes spread across targets");

    // The source keeps its copies (retention) until gc.
    for (name, sum) in &sums {
        assert_eq!(sha_of(&agents[0].pool().join(format!("{name}.img"))).as_deref(), Some(sum.as_str()));
    }
    let out = agents[0].cli(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // gc says what it deleted: both copies, 12 MiB of written bytes on disk.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deleted 2 handed-off copies (12.0 MiB on disk): v1, v2\n");
    let out = agents[0].cli(&["gc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nothing to delete: no handed-off or set-aside copy on node1\n");
    wait_until(
        Duration::from_secs(10),
        || sums.iter().all(|(name, _)| !agents[0].pool().join(format!("{name}.img")).exists()),
        || "gc to delete node1's handed-off copies".to_owned(),
    );
    let s = agents[2].status().unwrap();
    assert_eq!(state_seen(&s, "node1").as_deref(), Some("drained"));
}

fn wait_for_owner(observer: &AgentProc, name: &str) -> String {
    let mut owner = String::new();
    wait_until(
        Duration::from_secs(20),
        || {
            let v = volumes(observer);
            match v.iter().find(|v| v["id"] == name) {
                Some(v) if v["owner"] != "node1" && v["phase"] == "held" => {
                    owner = v["owner"].as_str().unwrap().to_owned();
                    true
                }
                _ => false,
            }
        },
        || format!("{name} to be owned by a new node"),
    );
    owner
}

#[test]
fn a_holder_killed_mid_hydration_resumes_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut agents, sum) = draining_big_volume(tmp.path());

    let mut holder = String::new();
    wait_until(
        Duration::from_secs(20),
        || {
            let v = volumes(&agents[0]);
            let Some(big) = v.iter().find(|v| v["id"] == "big") else { return false };
            let hydrated = big["hydrated"].as_u64().unwrap_or(0);
            if big["phase"] == "cut_over" && hydrated > 0 && hydrated < big["total"].as_u64().unwrap_or(0) {
                holder = big["holder"].as_str().unwrap().to_owned();
                true
            } else {
                false
            }
        },
        || "hydration to be under way".to_owned(),
    );
    let i = agents.iter().position(|a| a.name == holder).unwrap();
    agents[i].kill9();
    std::thread::sleep(Duration::from_millis(500));
    agents[i].start();

    let owner = arrived_intact(&agents, &agents[0], "big", &sum);
    assert_eq!(owner, holder, "cut over: the same holder resumes, never re-placed");
}

/// Waits until `name` has a new owner holding exactly the bytes hashing to `sum` and
/// node1 is drained, as `observer` sees it; returns the owner.
fn arrived_intact(agents: &[AgentProc], observer: &AgentProc, name: &str, sum: &str) -> String {
    let owner = wait_for_owner(observer, name);
    let path = agent(agents, &owner).pool().join(format!("{name}.img"));
    assert_eq!(sha_of(&path).as_deref(), Some(sum), "{name} on {owner}");
    wait_until(
        Duration::from_secs(15),
        || observer.status().and_then(|s| state_seen(&s, "node1")).as_deref() == Some("drained"),
        || "node1 to finish its drain".to_owned(),
    );
    owner
}

#[test]
fn a_slow_stop_hook_delays_the_move_without_revoking_it() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 3);
    joined(&agents);
    let out = agents[0].cli(&["volume", "create", "slow", "--size", "1M", "--hook-stop", "sleep 2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = agents[0].cli(&["drain", "node1", "--wait", "--deadline", "30s"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v = volumes(&agents[1]);
    let slow = v.iter().find(|v| v["id"] == "slow").unwrap();
    assert_eq!(slow["epoch"], 1, "granted once, never revoked: {slow}");
}

#[test]
fn a_failing_stop_hook_stops_the_move_and_a_new_drain_retries_it() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 3);
    joined(&agents);
    let ok = tmp.path().join("db-may-stop");
    let hook = format!("test -e {} || {{ echo 'db refuses to stop' >&2; exit 3; }}", ok.display());
    let sum = common::volume_with_data(&agents[0], "db2", 2, &["--hook-stop", &hook]);

    let out = agents[1].cli(&["drain", "node1", "--wait", "--deadline", "30s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("volume db2 failed: stop hook of volume db2 failed (exit status: 3)"), "{err}");
    assert!(err.contains("db refuses to stop"), "{err}");
    assert!(err.contains("run `meshdrain drain node1` again to retry"), "{err}");
    // Nothing was deleted, and node1 still owns db2.
    assert_eq!(sha_of(&agents[0].pool().join("db2.img")).as_deref(), Some(sum.as_str()));
    assert_eq!(volumes(&agents[2]).iter().find(|v| v["id"] == "db2").unwrap()["owner"], "node1");

    std::fs::write(&ok, b"").unwrap();
    let out = agents[1].cli(&["drain", "node1", "--wait", "--deadline", "30s"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let owner = wait_for_owner(&agents[2], "db2");
    let path = agent(&agents, &owner).pool().join("db2.img");
    assert_eq!(sha_of(&path).as_deref(), Some(sum.as_str()));
}

fn volume(a: &AgentProc, id: &str) -> Option<serde_json::Value> {
    volumes(a).into_iter().find(|v| v["id"] == id)
}

/// Three joined agents, node1 draining a 16 MiB volume `big` at 4 MiB/s: about four
/// seconds of hydration for a fault to interrupt. Returns the agents and the volume's
/// sha256.
fn draining_big_volume(dir: &Path) -> (Vec<AgentProc>, String) {
    let agents = fleet(dir, 3);
    joined(&agents);
    let sum = volume_with_data(&agents[0], "big", 16);
    let out = agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (agents, sum)
}

#[test]
fn a_source_killed_mid_hydration_stalls_its_holder_until_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut agents, sum) = draining_big_volume(tmp.path());
    wait_until(
        Duration::from_secs(20),
        || {
            volume(&agents[1], "big")
                .is_some_and(|v| v["phase"] == "cut_over" && v["hydrated"].as_u64().unwrap_or(0) > 0)
        },
        || "hydration to be under way".to_owned(),
    );
    agents[0].kill9();
    wait_until(
        Duration::from_secs(15),
        || volume(&agents[1], "big").is_some_and(|v| v["stalled"] == true),
        || format!("the holder to report stalled: {:?}", volume(&agents[1], "big")),
    );
    // Nothing was deleted while the source was down.
    assert_eq!(sha_of(&agents[0].pool().join("big.img")).as_deref(), Some(sum.as_str()));
    agents[0].start();
    arrived_intact(&agents, &agents[1], "big", &sum);
}

#[test]
fn a_holder_lost_before_cut_over_is_replaced_and_discards_its_clone_on_return() {
    let tmp = tempfile::tempdir().unwrap();
    // Every login takes 3 s: time to kill the first holder while it prepares.
    let mut agents = fleet_with(tmp.path(), 4, |d| d.test_prepare_delay_ms = 3000);
    joined(&agents);
    let sum = volume_with_data(&agents[0], "v", 2);
    let out = agents[0].cli(&["drain", "node1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut first = String::new();
    wait_until(
        Duration::from_secs(20),
        || match volume(&agents[0], "v") {
            Some(v) if v["phase"] == "granted" && v["holder_phase"] == "preparing" => {
                first = v["holder"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || "a holder to be preparing".to_owned(),
    );
    let i = agents.iter().position(|a| a.name == first).unwrap();
    let pool = agents[i].pool();
    wait_until(
        Duration::from_secs(5),
        || pool.join("v.clone-meta").exists(),
        || "the partial clone on disk".to_owned(),
    );
    agents[i].kill9();
    assert!(pool.join("v.img").exists(), "a partial clone was left behind to discard");

    let owner = wait_for_owner(&agents[0], "v");
    assert_ne!(owner, first, "re-placed on another node");
    assert_eq!(sha_of(&agent(&agents, &owner).pool().join("v.img")).as_deref(), Some(sum.as_str()));
    let v = volume(&agents[0], "v").unwrap();
    assert!(v["epoch"].as_u64().unwrap() >= 2, "revoked with a newer epoch: {v}");

    // The old holder returns, sees the newer epoch and throws its partial clone away.
    agents[i].start();
    wait_until(
        Duration::from_secs(20),
        || !pool.join("v.img").exists() && !pool.join("v.clone-meta").exists(),
        || {
            let state = std::fs::read_to_string(agents[i].dir.join("state/agent.json")).unwrap_or_default();
            format!("{first} to discard its partial clone; state:\n{state}\nlog:\n{}", agents[i].log())
        },
    );
    assert_eq!(wait_for_owner(&agents[0], "v"), owner, "ownership did not move again");
}

#[test]
fn verify_accepts_a_faithful_copy_and_a_differing_one_keeps_the_source_until_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 3);
    joined(&agents);
    let sum = volume_with_data(&agents[0], "good", 2);
    let out = agents[1].cli(&["drain", "node1", "--wait", "--verify", "--deadline", "60s"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let owner = wait_for_owner(&agents[2], "good");
    // The check's result is printed, not only logged.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("\n  good -> {owner}: verified, the holder's digest matches node1's copy")),
        "{stdout}"
    );
    assert_eq!(sha_of(&agent(&agents, &owner).pool().join("good.img")).as_deref(), Some(sum.as_str()));
    assert!(agents[0].log().contains("verified: the holder read exactly the bytes held here"), "{}", agents[0].log());

    // The source's copy changes under the export after the first regions were copied:
    // the holder's digest no longer matches, and the source keeps its copy.
    let out = agents[0].cli(&["undrain", "node1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What moved stays moved, and undrain says so.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("1 volume cut over before the undrain and stays moved: good on {owner}")),
        "{stdout}"
    );
    let _ = volume_with_data(&agents[0], "bad", 8);
    let out = agents[0].cli(&["drain", "node1", "--verify", "--rate-limit", "2M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(20),
        || volume(&agents[1], "bad").is_some_and(|v| v["hydrated"].as_u64().unwrap_or(0) > 0),
        || format!("hydration of bad to be under way: {:?}", volume(&agents[1], "bad")),
    );
    let img = agents[0].pool().join("bad.img");
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 100).unwrap();
    let out = agents[1].cli(&["drain", "node1", "--wait", "--verify", "--deadline", "60s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("volume bad runs on node") && err.contains("verify failed on node1"), "{err}");
    assert!(err.contains("the holder read other bytes") && err.contains("without --verify"), "{err}");
    // Kept, even through gc; node1 is not drained.
    let out = agents[0].cli(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    assert!(img.exists(), "the source's copy must survive a failed verify");
    assert_eq!(state_seen(&agents[2].status().unwrap(), "node1").as_deref(), Some("draining"));

    // The operator accepts the holder's copy.
    let out = agents[1].cli(&["drain", "node1", "--wait", "--deadline", "30s"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `volume move` (issue 21): one of node1's two volumes moves to the node named with
/// `--to`, started from another node; node1 stays active and keeps the other.
#[test]
fn one_volume_moves_while_its_node_stays_active_and_keeps_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = fleet(tmp.path(), 3);
    joined(&agents);
    let moved = volume_with_data(&agents[0], "v1", 8);
    let stays = volume_with_data(&agents[0], "v2", 4);
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };

    // --dry-run: where it would go; an impossible label says why, exit 1.
    let out = agents[1].cli(&["volume", "move", "v1", "--dry-run", "--to", "node3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("v1 (8.0 MiB) -> node3"), "{}", text(&out));
    let out = agents[1].cli(&["volume", "move", "v1", "--dry-run", "--require", "zone=x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not node2: lacks label zone=x"), "{}", text(&out));
    let out = agents[1].cli(&["volume", "move", "v1", "--to", "node9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--to node9: no node of that name in the fleet (known: node1, node2, node3)"),
        "{}",
        text(&out)
    );
    // Nothing to cancel yet.
    let out = agents[1].cli(&["volume", "move", "v2", "--cancel"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("volume v2 is not moving: nothing to cancel"), "{}", text(&out));

    let out = agents[1].cli(&["volume", "move", "v1", "--to", "node3", "--wait", "--verify", "--deadline", "60s"]);
    assert!(out.status.success(), "volume move --wait failed: {}\nnode1 log:\n{}", text(&out), agents[0].log());
    assert!(text(&out).contains("v1: moved node1 -> node3 in"), "{}", text(&out));
    assert!(text(&out).contains("; verified, the holder's digest matches node1's copy"), "{}", text(&out));
    // --wait ends once node1 let go (handed off after checking the digest), not before.
    assert_eq!(volumes(&agents[1]).iter().find(|x| x["id"] == "v1").unwrap()["source_phase"], "handed_off");

    let v = volumes(&agents[1]);
    let line = |id: &str| v.iter().find(|x| x["id"] == id).cloned().unwrap();
    assert_eq!((line("v1")["owner"].as_str(), line("v1")["phase"].as_str()), (Some("node3"), Some("held")));
    assert_eq!((line("v2")["owner"].as_str(), line("v2")["phase"].as_str()), (Some("node1"), Some("held")));
    assert_eq!(sha_of(&agents[2].pool().join("v1.img")).as_deref(), Some(moved.as_str()));
    assert_eq!(sha_of(&agents[0].pool().join("v2.img")).as_deref(), Some(stays.as_str()));
    assert_eq!(state_seen(&agents[1].status().unwrap(), "node1").as_deref(), Some("active"));

    // A move nobody can take waits offered (saying why) and is cancelled back to held.
    assert!(agents[1].cli(&["cordon", "node2"]).status.success());
    let out = agents[1].cli(&["volume", "move", "v2", "--to", "node2", "--wait", "--deadline", "2s"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("v2: offered; no eligible target: node2 is cordoned"), "{}", text(&out));
    let out = agents[2].cli(&["volume", "move", "v2", "--cancel"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        Duration::from_secs(10),
        || volumes(&agents[1]).iter().any(|x| x["id"] == "v2" && x["owner"] == "node1" && x["phase"] == "held"),
        || "v2 back to held on node1 after --cancel".to_owned(),
    );
    assert_eq!(sha_of(&agents[0].pool().join("v2.img")).as_deref(), Some(stays.as_str()));
}

/// Restarts node1 with `[drain] on_shutdown = "self"` (bound 8 s) and a `systemctl` that
/// answers `is-system-running` with `state`; node1 owns v1 and v2 (sha256s returned).
fn shutdown_fleet(root: &Path, state: &str) -> (Vec<AgentProc>, [(&'static str, String); 2]) {
    use std::os::unix::fs::PermissionsExt;
    let mut agents = fleet(root, 3);
    joined(&agents);
    let sums = [("v1", volume_with_data(&agents[0], "v1", 8)), ("v2", volume_with_data(&agents[0], "v2", 4))];
    let systemctl = root.join("systemctl");
    let script = format!("#!/bin/sh\n[ \"$1\" = is-system-running ] && echo {state}\nexit 0\n");
    std::fs::write(&systemctl, script).unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = &mut agents[0];
    a.stop();
    a.cfg.drain =
        meshdrain::config::DrainConfig { on_shutdown: OnShutdown::SelfNode, shutdown_deadline: Some("8s".into()) };
    a.write_config();
    // SAFETY: the seam (src/agent/shutdown.rs) is read by the agent child, which gets a copy
    // of the environment at spawn; nextest runs each test in a process of its own.
    unsafe { std::env::set_var("MESHDRAIN_SYSTEMCTL", &systemctl) };
    a.start();
    joined(&agents);
    (agents, sums)
}

/// Drain on shutdown (issue 21): SIGTERM while the machine is going down drains the node
/// to its peers before the agent exits, within the bound.
#[test]
fn sigterm_while_the_machine_shuts_down_drains_the_node_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut agents, sums) = shutdown_fleet(tmp.path(), "stopping");
    let started = std::time::Instant::now();
    agents[0].stop();
    let took = started.elapsed();
    let log = agents[0].log();
    assert!(took < Duration::from_secs(8), "the agent took {took:?} to exit (bound 8 s)\n{log}");
    assert!(log.contains("drained before shutdown: every volume was handed off"), "{log}");
    for (name, sum) in &sums {
        let owner = wait_for_owner(&agents[1], name);
        let path = agent(&agents, &owner).pool().join(format!("{name}.img"));
        assert_eq!(sha_of(&path).as_deref(), Some(sum.as_str()), "{name} on {owner}");
    }
}

/// With the machine running (only the agent restarts), SIGTERM is a plain stop.
#[test]
fn sigterm_on_an_agent_restart_stops_without_draining() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut agents, _) = shutdown_fleet(tmp.path(), "running");
    let started = std::time::Instant::now();
    agents[0].stop();
    let log = agents[0].log();
    assert!(started.elapsed() < Duration::from_secs(3), "{log}");
    assert!(log.contains("the machine is not shutting down (an agent restart): stopping without draining"), "{log}");
    assert!(!log.contains("draining this node first"), "{log}");
    let v = volumes(&agents[1]);
    for id in ["v1", "v2"] {
        let line = v.iter().find(|x| x["id"] == id).unwrap();
        assert_eq!((line["owner"].as_str(), line["phase"].as_str()), (Some("node1"), Some("held")), "{id}");
    }
}
