//! `roll --exec-timeout` and the roll metrics across real agent processes on loopback
//! (docs/roll.md): a command that outlives its timeout is killed with its whole process
//! group, the roll stops visibly with the reason, the agent's `/metrics` says so, and
//! `roll cancel` from the other node brings the node back.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{joined, local_fleet, wait_until};

/// The body of `GET /metrics` on `port`.
fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

fn roll(a: &common::AgentProc, id: &str) -> serde_json::Value {
    let out = a.cli(&["roll", "status", id, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn a_command_past_its_exec_timeout_is_killed_with_its_group_and_stops_the_roll_visibly() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agents = local_fleet(tmp.path(), 2, |a| {
        if a.name == "node1" {
            a.cfg.metrics.listen = Some(format!("127.0.0.1:{port}"));
        }
    });
    joined(&agents);
    let pidfile = tmp.path().join("background.pid");
    let exec = format!("echo begun; sleep 60 & echo $! > {}; sleep 60", pidfile.display());
    let out = agents[1].cli(&[
        "roll",
        "--json",
        "--nodes",
        "node1,node2",
        "--undrain-after",
        "--exec",
        &exec,
        "--exec-timeout",
        "1s",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_owned();

    wait_until(
        Duration::from_secs(20),
        || roll(&agents[1], &id)["phase"] == "failed",
        || format!("the roll to fail: {}", roll(&agents[1], &id)),
    );
    let r = roll(&agents[1], &id);
    assert_eq!(r["spec"]["exec_timeout_ms"], 1000, "{r}");
    let n1 = &r["nodes"][0]["record"];
    assert_eq!(r["nodes"][0]["step"], "failed", "{r}");
    assert_eq!(n1["error"], "--exec did not finish within 1s (--exec-timeout): killed with its process group", "{r}");
    assert_eq!((n1["exit"].clone(), n1["output"].as_str()), (serde_json::Value::Null, Some("begun\n")), "{r}");
    assert_eq!(r["nodes"][1]["step"], "pending", "no other node starts: {r}");
    let text = String::from_utf8_lossy(&agents[0].cli(&["roll", "status", &id]).stdout).into_owned();
    assert!(
        text.contains(
            "node1: failed (attempt 1): --exec did not finish within 1s (--exec-timeout): killed with its process group"
        ),
        "{text}"
    );
    // The background `sleep 60` the command started was in its process group: killed too.
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    wait_until(
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        },
        || format!("the background child {pid} to be killed"),
    );
    // node1's metrics: its failure by reason, each node's step, the roll's phase.
    let want = [
        "meshdrain_roll_exec_failures_total{reason=\"timeout\"} 1".to_owned(),
        format!("meshdrain_roll_step{{roll=\"{id}\",node=\"node1\",step=\"failed\"}} 1"),
        format!("meshdrain_roll_step{{roll=\"{id}\",node=\"node2\",step=\"pending\"}} 1"),
        "meshdrain_rolls{phase=\"failed\"} 1".to_owned(),
        "meshdrain_roll_nodes_done_total 0".to_owned(),
    ];
    let text = std::cell::RefCell::new(String::new());
    wait_until(
        Duration::from_secs(5),
        || {
            *text.borrow_mut() = metrics(port);
            want.iter().all(|w| text.borrow().lines().any(|l| l == w))
        },
        || format!("node1's /metrics to show {want:?}:\n{}", text.borrow()),
    );

    // Cancelled from node2: node1 comes back, and the roll ends cancelled.
    let out = agents[1].cli(&["roll", "cancel", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(20),
        || {
            let r = roll(&agents[0], &id);
            r["phase"] == "cancelled" && r["nodes"][0]["step"] == "cancelled"
        },
        || format!("the roll to be cancelled: {}", roll(&agents[0], &id)),
    );
    let s = agents[1].status().unwrap();
    assert_eq!(common::state_seen(&s, "node1").as_deref(), Some("active"), "{s}");
}
