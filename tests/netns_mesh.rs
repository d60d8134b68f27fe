//! netns tier of the mesh: real userspace WireGuard interfaces in network namespaces, and
//! real `meshdrain agent` processes assembling the mesh from one seed each.
//! Needs root, /dev/net/tun, iproute2 and ss; fails (never skips silently) without them.

mod common;
#[path = "common/mesh_node.rs"]
mod mesh_node;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime};

use mesh_node::{WG_PORT, bring_up, bring_up_with, peer_of};
use meshdrain_mesh::{FleetCa, NodeKey, PeerChange, PeerConfig, SigningRequest, WireguardBackend};
use meshdrain_testkit::netns::{Lan, Netns, require, require_tun, unique_name};

/// Sends `len` bytes from `from` to a listener in `to_ns` on `to_addr` and checks the echo.
fn tcp_round_trip(from: &Netns, to_ns: &Netns, to_addr: Ipv6Addr, port: u16, len: usize) {
    let listener = to_ns.run_in(move || TcpListener::bind((to_addr, port))).unwrap().expect("bind on mesh address");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let sent = data.clone();
    let echoed = from
        .run_in(move || -> std::io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(10))?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            let writer = {
                let mut w = c.try_clone()?;
                std::thread::spawn(move || w.write_all(&sent))
            };
            let mut back = vec![0u8; len];
            c.read_exact(&mut back)?;
            writer.join().unwrap()?;
            Ok(back)
        })
        .unwrap()
        .expect("TCP over the mesh");
    server.join().unwrap();
    assert!(echoed == data, "echoed bytes differ");
}

#[test]
fn netns_mesh_userspace_tunnel_carries_tcp() {
    require(&[]).unwrap();
    require_tun().unwrap();
    let lan = Lan::new(2).unwrap();
    let ca = FleetCa::generate();
    let mut a = bring_up(&lan.nodes[0], &ca, "a");
    let mut b = bring_up(&lan.nodes[1], &ca, "b");
    let pa = peer_of(&a, Lan::underlay(0));
    let pb = peer_of(&b, Lan::underlay(1));
    a.backend.apply(&[PeerChange::Add(pb.clone())]).unwrap();
    b.backend.apply(&[PeerChange::Add(pa.clone())]).unwrap();
    assert_eq!(a.backend.peers().unwrap(), vec![pb.clone()]);

    tcp_round_trip(&lan.nodes[0], &lan.nodes[1], b.address, 7001, 4 << 20);
    tcp_round_trip(&lan.nodes[1], &lan.nodes[0], a.address, 7002, 4 << 20);

    let st = a.backend.status().unwrap();
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert!(p.handshake_age_secs.is_some_and(|s| s < 60), "handshake recorded: {p:?}");
    assert!(p.tx_bytes > 4 << 20 && p.rx_bytes > 4 << 20, "counters: {p:?}");

    // Removing the peer cuts the tunnel.
    a.backend.apply(&[PeerChange::Remove(b.key.public())]).unwrap();
    assert!(a.backend.peers().unwrap().is_empty());
    let addr = b.address;
    let cut = lan.nodes[0]
        .run_in(move || TcpStream::connect_timeout(&SocketAddr::from((addr, 7003)), Duration::from_secs(2)).is_err())
        .unwrap();
    assert!(cut, "no route to a removed peer");
}

/// This thread's blocked and the process's caught signals (`SigBlk`, `SigCgt`).
fn signal_state() -> String {
    let st = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    st.lines().filter(|l| l.starts_with("SigBlk") || l.starts_with("SigCgt")).collect::<Vec<_>>().join(" ")
}

#[test]
fn netns_mesh_userspace_roams_falls_back_without_offloads_and_stops_cleanly() {
    require(&["wg"]).unwrap();
    require_tun().unwrap();
    let lan = Lan::new(2).unwrap();
    let ca = FleetCa::generate();
    let signals = signal_state();
    // a runs the fallback path (no TUN offloads: plain batched packets), b the offloaded one.
    let mut a = bring_up_with(&lan.nodes[0], &ca, "a", |spec| {
        meshdrain_mesh::userspace::Userspace::start_with(&spec, false).map(|u| {
            assert!(!u.offload());
            Box::new(u) as Box<dyn WireguardBackend>
        })
    });
    let mut b = bring_up(&lan.nodes[1], &ca, "b");
    assert_eq!(signal_state(), signals, "the device leaves signal masks and handlers alone");
    // b does not know where a is: it learns a's endpoint from a's authenticated packets.
    a.backend.apply(&[PeerChange::Add(peer_of(&b, Lan::underlay(1)))]).unwrap();
    b.backend.apply(&[PeerChange::Add(PeerConfig::host(a.key.public(), a.address, None))]).unwrap();
    tcp_round_trip(&lan.nodes[0], &lan.nodes[1], b.address, 7011, 3 << 20);
    // Garbage of every message type at a's port: dropped, the tunnel keeps working.
    let to = SocketAddr::from((Lan::underlay(0), WG_PORT));
    lan.nodes[1]
        .run_in(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for (i, len) in [148, 92, 64, 32, 100, 1500, 3, 0].iter().cycle().take(400).enumerate() {
                let mut d: Vec<u8> = (0..*len).map(|j| (i * 7 + j * 13) as u8).collect();
                if let Some(t) = d.first_mut() {
                    *t = (i % 5) as u8;
                }
                s.send_to(&d, to).unwrap();
            }
        })
        .unwrap();
    tcp_round_trip(&lan.nodes[1], &lan.nodes[0], a.address, 7012, 3 << 20);
    let roamed = b.backend.peers().unwrap();
    assert_eq!(roamed[0].endpoint, Some(SocketAddr::from((Lan::underlay(0), WG_PORT))), "b follows a's packets");
    let st = b.backend.status().unwrap();
    assert!(st.peers[0].rx_bytes > 6 << 20 && st.peers[0].tx_bytes > 6 << 20, "counters: {:?}", st.peers[0]);

    // `wg show` reads the device through its read-only UAPI socket.
    let out = lan.nodes[0].exec("wg", &["show", &a.name, "latest-handshakes"]).unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (key, at) = line.split_once('\t').unwrap_or_else(|| panic!("wg show: {line:?}"));
    assert_eq!(key, b.key.public().to_base64());
    assert!(at.parse::<u64>().unwrap() > 1_600_000_000, "handshake time {at}");
    let set = lan.nodes[0].exec("wg", &["set", &a.name, "listen-port", "1"]);
    assert!(set.is_err(), "the UAPI socket is read-only");
    let sock = format!("/var/run/wireguard/{}.sock", a.name);
    assert!(std::path::Path::new(&sock).exists());

    // Dropping the device stops its threads and removes the TUN within a second.
    let shown = |ns: &Netns, name: &str| ns.ip(&["link", "show", name]).is_ok();
    assert!(shown(&lan.nodes[0], &a.name));
    let t0 = std::time::Instant::now();
    drop(a.backend);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "drop took {took:?}");
    assert!(!shown(&lan.nodes[0], &a.name), "{} removed", a.name);
    assert!(!std::path::Path::new(&sock).exists(), "{sock} removed");
    assert_eq!(signal_state(), signals);
}

#[test]
fn netns_mesh_userspace_interoperates_with_wireguard_go() {
    // An independent implementation on the other side: its TUN has no offloads, so the
    // kernel there checks every TCP checksum our segmentation wrote, and our coalescer
    // merges its plain packets.
    require(&["wg", "wireguard-go"]).unwrap();
    require_tun().unwrap();
    let lan = Lan::new(2).unwrap();
    let ca = FleetCa::generate();
    let mut a = bring_up(&lan.nodes[0], &ca, "a");
    let go_key = NodeKey::generate();
    let req = SigningRequest { name: "go".into(), public_key: go_key.public().to_base64() };
    let go_addr = ca.sign(&req, SystemTime::now() + Duration::from_secs(3600)).unwrap().body.address;
    let go_if = unique_name("mdg");
    let go = &lan.nodes[1];
    let mut cmd = go.command("wireguard-go");
    cmd.args(["-f", &go_if]).env("WG_PROCESS_FOREGROUND", "1");
    let pid = go.spawn(cmd).unwrap();
    let sock = format!("/var/run/wireguard/{go_if}.sock");
    for _ in 0..100 {
        if std::path::Path::new(&sock).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("go.key");
    std::fs::write(&key_file, go_key.private_base64()).unwrap();
    let endpoint = format!("{}:{WG_PORT}", Lan::underlay(0));
    let allowed = format!("{}/128", a.address);
    let port = WG_PORT.to_string();
    let a_pub = a.key.public().to_base64();
    #[rustfmt::skip]
    go.exec("wg", &["set", &go_if, "private-key", key_file.to_str().unwrap(), "listen-port", &port,
        "peer", &a_pub, "endpoint", &endpoint, "allowed-ips", &allowed]).unwrap();
    go.ip(&["addr", "add", &format!("{go_addr}/48"), "dev", &go_if]).unwrap();
    go.ip(&["link", "set", &go_if, "mtu", "1420", "up"]).unwrap();
    a.backend
        .apply(&[PeerChange::Add(PeerConfig::host(
            go_key.public(),
            go_addr,
            Some(SocketAddr::from((Lan::underlay(1), WG_PORT))),
        ))])
        .unwrap();

    tcp_round_trip(&lan.nodes[0], go, go_addr, 7031, 8 << 20);
    tcp_round_trip(go, &lan.nodes[0], a.address, 7032, 8 << 20);
    let st = a.backend.status().unwrap();
    assert!(st.peers[0].handshake_age_secs.is_some() && st.peers[0].rx_bytes > 16 << 20, "{:?}", st.peers[0]);
    go.kill(pid);
    let _ = std::fs::remove_file(&sock);
}

// ---------------------------------------------------------------------------------------
// Agents: `meshdrain agent` processes, one per namespace, userspace backend, one seed each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{AgentProc, wait_until};
use meshdrain::config::{MeshBackendChoice, MeshConfig, MeshSeed};
use meshdrain_mesh::files::{create_ca, save_json};

/// A fleet CA on disk and the namespaces its agents run in.
struct Fleet {
    root: tempfile::TempDir,
    ca: FleetCa,
    ca_key: PathBuf,
    ca_pub: PathBuf,
    lan: Lan,
}

/// One enrolled agent (not started yet).
struct MeshAgent {
    proc_: AgentProc,
    key: String,
    address: Ipv6Addr,
    index: usize,
}

impl Fleet {
    fn new(nodes: usize) -> Self {
        require(&["ss", "nsenter"]).unwrap();
        require_tun().unwrap();
        let root = tempfile::tempdir().unwrap();
        let (ca, ca_key, ca_pub) = create_ca(&root.path().join("ca")).unwrap();
        Self { root, ca, ca_key, ca_pub, lan: Lan::new(nodes).unwrap() }
    }

    /// Enrols node `i` (certificate from `ca`, valid for `valid`); seeds come with `seed_with`.
    fn agent(&self, i: usize, name: &str, ca: &FleetCa, ca_pub: &Path, valid: Duration) -> MeshAgent {
        let ns = &self.lan.nodes[i];
        let ip = Lan::underlay(i).to_string();
        let mut proc_ = AgentProc::in_netns(self.root.path(), name, ns.name(), &ip, &[], 200);
        let state = proc_.dir.join("state");
        let key = NodeKey::load_or_create(&state).unwrap();
        let req = SigningRequest { name: name.into(), public_key: key.public().to_base64() };
        let cert = ca.sign(&req, SystemTime::now() + valid).unwrap();
        let cert_path = proc_.dir.join("node.cert.json");
        save_json(&cert_path, &cert).unwrap();
        proc_.cfg.mesh = MeshConfig {
            backend: MeshBackendChoice::Userspace,
            interface: Some(unique_name("mda")),
            listen_port: Some(WG_PORT),
            endpoint: Some(format!("{ip}:{WG_PORT}")),
            certificate: Some(cert_path),
            fleet_ca: Some(ca_pub.to_owned()),
            ..MeshConfig::default()
        };
        proc_.write_config();
        MeshAgent { proc_, key: key.public().to_base64(), address: cert.body.address, index: i }
    }

    fn member(&self, i: usize, name: &str) -> MeshAgent {
        self.agent(i, name, &self.ca, &self.ca_pub, Duration::from_secs(3600))
    }
}

impl MeshAgent {
    /// Starts the agent; on failure the panic carries its log.
    fn start(&mut self) {
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.proc_.start()));
        if let Err(e) = started {
            let why = e.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("{} did not start: {why}\n{}", self.proc_.name, self.proc_.log());
        }
    }

    /// Makes `seed` this agent's only mesh seed.
    fn seed_with(&mut self, seed: &MeshAgent) {
        assert!(self.proc_.cfg.mesh.seeds.is_empty(), "mesh seeds set twice");
        self.proc_.cfg.mesh.seeds = vec![MeshSeed {
            public_key: seed.key.clone(),
            endpoint: format!("{}:{WG_PORT}", Lan::underlay(seed.index)),
        }];
        self.proc_.write_config();
    }

    fn mesh_status(&self) -> Option<serde_json::Value> {
        let out = self.proc_.cli(&["mesh", "status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Public keys of its WireGuard peers.
    fn peers(&self) -> BTreeSet<String> {
        self.mesh_status()
            .and_then(|s| {
                s["peers"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|p| p["public_key"].as_str().map(str::to_owned)).collect())
            })
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        let log = self.proc_.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "{}: {:?}\n  log tail: {}",
            self.proc_.name,
            self.mesh_status(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        )
    }
}

/// Kills agents in parallel: a killed agent's exit waits in the kernel for its TUN device to
/// unregister (seconds), so one after another would add that wait per agent.
fn stop_all(agents: Vec<MeshAgent>) {
    std::thread::scope(|s| {
        for a in agents {
            s.spawn(move || drop(a));
        }
    });
}

/// The pid of the agent process started with `config` (its command line names the file).
fn pid_of(config: &Path) -> i32 {
    let want = config.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.contains(&b"agent".as_slice()) && args.contains(&want.as_bytes())
        })
        .unwrap_or_else(|| panic!("no agent process for {want}"))
}

fn keys(agents: &[&MeshAgent]) -> BTreeSet<String> {
    agents.iter().map(|a| a.key.clone()).collect()
}

/// Waits until every agent's peer set is exactly every other agent of `agents`.
fn wait_full_mesh(agents: &[&MeshAgent], limit: Duration) -> Duration {
    wait_until(
        limit,
        || agents.iter().all(|a| a.peers() == &keys(agents) - &keys(&[a])),
        || agents.iter().map(|a| a.describe()).collect::<Vec<_>>().join("\n"),
    )
}

/// Sockets bound on the gossip port inside the namespace (`ss`'s local address column).
fn gossip_sockets(ns: &Netns) -> Vec<String> {
    let out = ns.exec("ss", &["-Hlun", "sport = :7946"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

#[test]
fn netns_mesh_agents_converge_on_mesh_addresses_and_recover_a_killed_node() {
    let fleet = Fleet::new(3);
    let mut a = fleet.member(0, "a");
    let mut b = fleet.member(1, "b");
    let mut c = fleet.member(2, "c");
    // One seed each: a and b seed each other, c knows only a.
    a.seed_with(&b);
    b.seed_with(&a);
    c.seed_with(&a);
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    let took = wait_full_mesh(&[&a, &b, &c], Duration::from_secs(60));
    eprintln!("three agents converged to full WireGuard peer sets in {took:?}");

    // Gossip listens on the mesh address only, never on the underlay or a wildcard.
    for n in [&a, &b, &c] {
        let socks = gossip_sockets(&fleet.lan.nodes[n.index]);
        assert_eq!(socks, vec![format!("[{}]:7946", n.address)], "gossip sockets of {}", n.proc_.name);
    }
    let st = a.proc_.status().unwrap();
    let me = st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "c").cloned().unwrap_or_default();
    assert_eq!(me["mesh_backend"], "userspace", "meshdrain status shows the backend: {me}");
    assert_eq!(me["mesh_addr"], c.address.to_string(), "{me}");

    // TCP both ways between mesh addresses of the two nodes that were never each other's seed.
    let (nb, nc) = (&fleet.lan.nodes[1], &fleet.lan.nodes[2]);
    tcp_round_trip(nb, nc, c.address, 7101, 1 << 20);
    tcp_round_trip(nc, nb, b.address, 7102, 1 << 20);
    let human = a.proc_.cli(&["mesh", "status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(human.status.success() && text.contains(&c.key) && text.contains("s ago"), "mesh status table: {text}");

    // Kill c: the failure detector's verdict removes it from a and b.
    c.proc_.kill9();
    let took = wait_until(
        Duration::from_secs(60),
        || !a.peers().contains(&c.key) && !b.peers().contains(&c.key),
        || format!("c removed\n{}\n{}", a.describe(), b.describe()),
    );
    eprintln!("killed node removed from its peers' WireGuard in {took:?}");
    assert_eq!(a.peers(), keys(&[&b]));

    // c comes back (same key, new incarnation): joins through its seed and is re-added everywhere.
    c.start();
    let took = wait_full_mesh(&[&a, &b, &c], Duration::from_secs(60));
    eprintln!("restarted node re-added in {took:?}");
    tcp_round_trip(nb, nc, c.address, 7103, 1 << 16);

    // Roaming: c's underlay address changes under the running agent. WireGuard follows its
    // authenticated packets and converge must not push the stale advertised endpoint back.
    // (Delete first: deleting a primary address also deletes its secondaries.)
    nc.ip(&["addr", "del", &format!("{}/24", Lan::underlay(2)), "dev", "eth0"]).unwrap();
    nc.ip(&["addr", "add", "198.18.0.33/24", "dev", "eth0"]).unwrap();
    let roamed = format!("198.18.0.33:{WG_PORT}");
    let endpoint_of_c = |n: &MeshAgent| {
        n.mesh_status().and_then(|s| {
            s["peers"].as_array()?.iter().find(|p| p["public_key"] == c.key.as_str())?["endpoint"]
                .as_str()
                .map(str::to_owned)
        })
    };
    let took = wait_until(
        Duration::from_secs(30),
        || [&a, &b].iter().all(|n| endpoint_of_c(n).as_deref() == Some(roamed.as_str())),
        || format!("c's new endpoint\n{}\n{}", a.describe(), b.describe()),
    );
    eprintln!("roamed endpoint picked up in {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(endpoint_of_c(&a).as_deref(), Some(roamed.as_str()), "converge kept the roamed endpoint");
    tcp_round_trip(nb, nc, c.address, 7104, 1 << 16);

    // SIGTERM reaches the agent (the userspace device must not swallow it): clean shutdown.
    let pid = pid_of(&a.proc_.config);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t = std::time::Instant::now();
    wait_until(
        Duration::from_secs(10),
        || a.proc_.log().contains("agent stopped"),
        || format!("a to stop on SIGTERM\n{}", a.describe()),
    );
    eprintln!("SIGTERM: agent stopped after {:?}", t.elapsed());
    wait_until(
        Duration::from_secs(20),
        || std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ")),
        || "a to exit".into(),
    );
    eprintln!("SIGTERM: process exited after {:?}", t.elapsed());
    stop_all(vec![a, b, c]);
}

#[test]
fn netns_mesh_refuses_foreign_expired_and_revoked_nodes() {
    let fleet = Fleet::new(5);
    let mut a = fleet.member(0, "a");
    let mut b = fleet.member(1, "b");
    let mut c = fleet.member(2, "c");
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, other_pub) = create_ca(other.path()).unwrap();
    let mut d = fleet.agent(3, "foreign", &other_ca, &other_pub, Duration::from_secs(3600));
    let mut e = fleet.agent(4, "expired", &fleet.ca, &fleet.ca_pub, Duration::ZERO);
    a.seed_with(&b);
    for n in [&mut b, &mut c, &mut d, &mut e] {
        n.seed_with(&a);
    }
    for n in [&mut a, &mut b, &mut c, &mut d, &mut e] {
        n.start();
    }
    let took = wait_full_mesh(&[&a, &b, &c], Duration::from_secs(60));
    eprintln!("three members converged (two outsiders knocking) in {took:?}");
    // The outsiders keep knocking (a join every 2 s) and are refused every time.
    let outsiders = keys(&[&d, &e]);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        for n in [&a, &b, &c] {
            let p = n.peers();
            assert!(p.is_disjoint(&outsiders), "{} took an outsider as peer: {p:?}", n.proc_.name);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = a.mesh_status().unwrap();
    let refused = st["refused"].to_string();
    assert!(refused.contains("belongs to fleet"), "foreign CA refusal logged: {refused}");
    assert!(refused.contains("expired"), "expired refusal logged: {refused}");
    let log = a.proc_.log();
    assert_eq!(log.matches("belongs to fleet").count(), 1, "refusal logged once:\n{log}");

    // Revoke c with the CA, hand the list to b only: gossip carries it, a and b drop c.
    let list = b.proc_.dir.join("state").join("mesh-revocations.json");
    let out = common::meshdrain(&[
        "mesh",
        "revoke",
        "--ca-key",
        fleet.ca_key.to_str().unwrap(),
        "--public-key",
        &c.key,
        "--list",
        list.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took = wait_until(
        Duration::from_secs(30),
        || a.peers() == keys(&[&b]) && b.peers() == keys(&[&a]),
        || format!("c dropped\n{}\n{}", a.describe(), b.describe()),
    );
    eprintln!("revoked node dropped by every peer in {took:?}");
    assert_eq!(a.mesh_status().unwrap()["revocations_serial"], 1);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(a.peers(), keys(&[&b]), "revoked node stays out (its joins are refused)");
    stop_all(vec![a, b, c, d, e]);
}
