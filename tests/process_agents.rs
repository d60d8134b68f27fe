//! Real `meshdrain agent` processes gossiping over UDP on 127.0.0.1, driven through the
//! CLI as an operator would.

mod common;

use std::time::Duration;

use common::{AgentProc, free_udp_port, meshdrain, state_seen, wait_until};

fn fleet(root: &std::path::Path, n: usize) -> Vec<AgentProc> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    (0..n)
        .map(|i| {
            // Each node knows only node1 as a seed (node1 knows node2): the rest is gossip.
            let seed = if i == 0 { ports[1] } else { ports[0] };
            let mut a = AgentProc::new(root, &format!("node{}", i + 1), ports[i], &[seed], 100);
            a.local_dataplane(&root.join("exports"));
            a
        })
        .collect()
}

fn all_alive(fleet: &[AgentProc], n: usize) -> bool {
    fleet.iter().all(|a| {
        a.status().is_some_and(|s| {
            let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == n && nodes.iter().all(|x| x["alive"] == true)
        })
    })
}

fn all_agree(fleet: &[AgentProc], node: &str, want: &str) -> bool {
    fleet.iter().all(|a| a.status().as_ref().and_then(|s| state_seen(s, node)).as_deref() == Some(want))
}

#[test]
fn five_agents_drain_from_another_node_and_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agents = fleet(tmp.path(), 5);
    for a in &mut agents {
        a.start();
    }
    let joined = wait_until(
        Duration::from_secs(30),
        || all_alive(&agents, 5),
        || format!("all 5 agents to see 5 live nodes; node1 log:\n{}", agents[0].log()),
    );
    eprintln!("fleet of 5 joined in {joined:?}");

    // node3 holds a volume no node can take (it needs a label none has), so its drain
    // stays `draining` instead of completing at once.
    let out = agents[2].cli(&["volume", "create", "pinned", "--size", "16M", "--require", "zone=nowhere"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(10),
        || {
            agents[..2].iter().all(|a| {
                let out = a.cli(&["volume", "list", "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                v["volumes"].as_array().is_some_and(|a| a.iter().any(|v| v["id"] == "pinned" && v["owner"] == "node3"))
            })
        },
        || "node1 and node2 to list node3's volume".to_owned(),
    );

    // The dry run names the reason per node and exits 1: nothing can take the volume.
    let out = agents[1].cli(&["drain", "node3", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("pinned (16.0 MiB) -> CANNOT BE PLACED"), "{text}");
    assert!(text.contains("not node1: lacks label zone=nowhere"), "{text}");
    assert!(!text.contains("not node3"), "the source is not a candidate: {text}");

    // Drain node3 from node1.
    let out = agents[0].cli(&["drain", "node3", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "drain failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(outcome["adopted"], true, "{outcome}");
    assert_eq!(outcome["state"], "draining", "{outcome}");

    let agreed = wait_until(
        Duration::from_secs(10),
        || all_agree(&agents, "node3", "draining"),
        || "all 5 agents to see node3 draining".to_owned(),
    );
    eprintln!("all 5 agree node3 is draining {agreed:?} after the drain command returned");

    // Waiting with a deadline on a drain that cannot finish: exit 4, and it goes on.
    let out = agents[3].cli(&["drain", "node3", "--wait", "--deadline", "1s"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the drain goes on"));

    // The request is idempotent: issuing it again from node5 changes nothing and succeeds.
    let again = agents[4].cli(&["drain", "node3"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).contains("node3: draining"));

    // kill -9 and restart: node3 comes back draining, from its state dir.
    agents[2].kill9();
    agents[2].start();
    let back = agents[2].status().expect("node3 answers after restart");
    assert_eq!(state_seen(&back, "node3").as_deref(), Some("draining"), "{back}");
    wait_until(
        Duration::from_secs(15),
        || all_agree(&agents, "node3", "draining"),
        || "all 5 agents to see the restarted node3 draining".to_owned(),
    );

    // Undrain from node2 brings it back to active everywhere.
    let out = agents[1].cli(&["undrain", "node3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(10),
        || all_agree(&agents, "node3", "active"),
        || "node3 active everywhere".to_owned(),
    );

    // A refused transition is reported with its reason and exit 1.
    let out = agents[1].cli(&["undrain", "node2"]);
    assert!(out.status.success(), "undrain of an active node is a no-op");
    agents[1].cli(&["cordon", "node2"]);
    let out = agents[1].cli(&["undrain", "node2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("run `meshdrain uncordon`"), "{out:?}");
}

#[test]
fn a_request_for_a_dead_node_is_adopted_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agents = fleet(tmp.path(), 3);
    for a in &mut agents {
        a.start();
    }
    wait_until(Duration::from_secs(30), || all_alive(&agents, 3), || "3 agents to join".to_owned());
    agents[2].kill9();
    wait_until(
        Duration::from_secs(30),
        || {
            agents[0].status().is_some_and(|s| {
                s["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "node3" && n["alive"] == false)
            })
        },
        || "node1 to see node3 dead".to_owned(),
    );
    // Not adopted: exit 1 as the README says, and the text says what is true.
    let out = agents[1].cli(&["cordon", "node3"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node3: the node's agent is not answering; cordon request"), "{text}");
    assert!(text.contains("published and not adopted yet (the node adopts it when its agent returns)"), "{text}");
    // The issuer leaves too, once gossip has carried its request (a few rounds): the
    // request lives on in node1's copy of node2's state.
    std::thread::sleep(Duration::from_secs(1));
    agents[1].kill9();
    agents[2].start();
    wait_until(
        Duration::from_secs(20),
        || agents[0].status().and_then(|s| state_seen(&s, "node3")).as_deref() == Some("cordoned"),
        || format!("node3 to adopt the cordon; node3 log:\n{}", agents[2].log()),
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let mut a = AgentProc::new(tmp.path(), "solo", port, &[], 100);
    a.local_dataplane(&tmp.path().join("exports"));
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    a.cfg.metrics.listen = Some(format!("127.0.0.1:{metrics_port}"));
    a.write_config();
    a.start();
    let out = a.cli(&["volume", "create", "v1", "--size", "1M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = wait_for_metrics(metrics_port, "meshdrain_volumes{phase=\"held\"} 1");
    for want in [
        "meshdrain_nodes{state=\"active\",alive=\"true\"} 1",
        "meshdrain_peers_alive 0",
        "# TYPE meshdrain_gossip_rounds gauge",
        "meshdrain_node_requests_handled_total 0",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
}

fn wait_for_metrics(port: u16, want: &str) -> String {
    use std::io::{Read, Write};
    let mut body = String::new();
    wait_until(
        Duration::from_secs(10),
        || {
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            body.clear();
            let _ = s.read_to_string(&mut body);
            body.starts_with("HTTP/1.1 200 OK") && body.contains(want)
        },
        || format!("metrics to contain {want:?}"),
    );
    body
}

#[test]
fn unreachable_agent_exits_3_with_the_fix() {
    let out = meshdrain(&["--control", "/nonexistent/meshdrain.sock", "status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the meshdrain agent at /nonexistent/meshdrain.sock"), "{err}");
    assert!(err.contains("is the agent running?"), "{err}");
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let out = meshdrain(&["agent", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"), "{out:?}");

    let a = AgentProc::new(tmp.path(), "n1", 7946, &[], 200);
    let good = std::fs::read_to_string(&a.config).unwrap();
    let cases = [
        (good.replace("interval_ms = 200", "interval_ms = 200\nfanout = 3"), "unknown field `fanout`"),
        (good.replace("127.0.0.1:7946", "not-an-address"), "key `gossip.listen`"),
        (good.replace("[metrics]", "[metrics]\nlisten = \"nowhere\""), "key `metrics.listen`"),
    ];
    for (text, want) in cases {
        std::fs::write(&a.config, text).unwrap();
        let out = meshdrain(&["agent", "--config", a.config.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    std::fs::write(&a.config, good).unwrap();
    let out = meshdrain(&["agent", "--check", "--config", a.config.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn systemd_hears_ready_then_watchdog_pets_while_the_loop_answers() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let a = AgentProc::new(tmp.path(), "node1", free_udp_port(), &[], 100);
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["agent", "--config"])
        .arg(&a.config)
        .env("MESHDRAIN_LOG", "warn")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 512];
    while std::time::Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ready = got.iter().position(|m| m.contains("READY=1")).unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    let pets = got[ready..].iter().filter(|m| m.contains("WATCHDOG=1")).count();
    // Every 200 ms for about 2.5 s after READY: allow for a slow start on a loaded machine.
    assert!(pets >= 4, "watchdog petted {pets} times in 3 s: {got:?}");
}
