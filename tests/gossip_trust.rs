//! Gossip trust, in-process over real UDP on 127.0.0.1: agents sharing a fleet secret
//! ignore an agent without it (it cannot drain them), and a second agent with a live
//! node's name neither makes that node dead to itself nor takes its place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshdrain::agent::AgentSetup;
use meshdrain::agent::run::{RunningAgent, spawn_guarded};
use meshdrain::api::StatusReport;
use meshdrain::cluster::auth::{GossipKeys, Secret};
use meshdrain::cluster::gossip::{GossipGuard, GossipSettings};
use meshdrain::cluster::identity::GossipMode;
use meshdrain::cluster::transport::{GossipStats, GuardedTransport};
use meshdrain::dataplane::NoDataPlane;
use meshdrain::decide::core::CoreConfig;
use meshdrain::decide::lease::Timing;
use meshdrain::decide::node::{NodeAction, NodeState};

const INTERVAL: Duration = Duration::from_millis(50);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn agent(
    dir: &std::path::Path,
    name: &str,
    generation: u64,
    port: u16,
    seeds: &[u16],
    secret: Option<&[u8]>,
) -> RunningAgent {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let settings = GossipSettings {
        name: name.into(),
        generation,
        cluster_id: "trust".into(),
        listen: addr,
        advertise: addr,
        seeds: seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        interval: INTERVAL,
        phi_threshold: 8.0,
        dead_node_grace: Duration::from_secs(3600),
    };
    let config = CoreConfig {
        name: name.parse().unwrap(),
        gossip_addr: addr,
        labels: Default::default(),
        mesh_addr: None,
        mesh_backend: None,
        free_bytes: 1 << 30,
        data_plane: true,
        export_addr: String::new(),
        timing: Timing::for_interval(INTERVAL.as_millis() as u64),
        wireguard: None,
    };
    let state = dir.join(format!("{name}-{port}"));
    let setup = AgentSetup {
        interval: INTERVAL,
        pool_dir: state.join("pool"),
        dataplane: Box::new(NoDataPlane),
        mesh: Box::new(meshdrain::agent::meshport::NoMesh),
        capacity: meshdrain::agent::capacity::Capacity::Fixed(config.free_bytes),
        config,
    };
    let keys = secret.map(|s| GossipKeys::new(Secret::from_bytes(s), None, "trust"));
    let mode = if keys.is_some() { GossipMode::Hmac } else { GossipMode::Loopback };
    let stats = Arc::new(GossipStats::default());
    let transport = GuardedTransport::new(keys, stats.clone());
    spawn_guarded(&settings, setup, &state, &transport, GossipGuard { mode, stats, name_check: None }).await.unwrap()
}

async fn status(a: &RunningAgent) -> StatusReport {
    a.handle.status().await.expect("agent answers")
}

/// Polls `cond` on `a`'s status every interval for up to `limit`.
async fn until(a: &RunningAgent, limit: Duration, what: &str, cond: impl Fn(&StatusReport) -> bool) -> StatusReport {
    let start = std::time::Instant::now();
    loop {
        let s = status(a).await;
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}: {s:#?}");
        tokio::time::sleep(INTERVAL).await;
    }
}

fn node<'a>(s: &'a StatusReport, name: &str) -> Option<&'a meshdrain::api::NodeStatus> {
    s.nodes.iter().find(|n| n.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_without_the_secret_cannot_drain_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [42u8; 32];
    let (p1, p2, pr) = (free_port(), free_port(), free_port());
    let node1 = agent(dir.path(), "node1", 1, p1, &[p2], Some(&secret)).await;
    let node2 = agent(dir.path(), "node2", 1, p2, &[p1], Some(&secret)).await;
    let rogue = agent(dir.path(), "rogue", 1, pr, &[p2], None).await;
    until(&node1, Duration::from_secs(10), "node1 to see node2", |s| node(s, "node2").is_some_and(|n| n.alive)).await;

    let published = rogue.handle.node_action(&"node2".parse().unwrap(), NodeAction::Drain, true).await.unwrap();
    assert!(!published.applied);
    tokio::time::sleep(INTERVAL * 30).await;
    let s2 = status(&node2).await;
    assert_eq!(node(&s2, "node2").unwrap().state, Some(NodeState::Active), "{s2:#?}");
    assert!(node(&s2, "rogue").is_none(), "the rogue's record reached node2: {s2:#?}");
    assert!(s2.gossip.counters.dropped_unauthenticated > 0, "{:?}", s2.gossip.counters);
    assert_eq!(s2.gossip.mode, GossipMode::Hmac);
    assert!(node(&status(&node1).await, "rogue").is_none());

    // The same request from a node with the secret is adopted.
    node1.handle.node_action(&"node2".parse().unwrap(), NodeAction::Drain, false).await.unwrap();
    until(&node2, Duration::from_secs(10), "node2 to adopt node1's drain", |s| {
        node(s, "node2").is_some_and(|n| n.state != Some(NodeState::Active))
    })
    .await;
    for a in [node1, node2, rogue] {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namesake_never_makes_the_node_dead_to_itself_and_is_the_refused_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [7u8; 32];
    let (p1, p2, px) = (free_port(), free_port(), free_port());
    let node1 = agent(dir.path(), "node1", 1, p1, &[p2], Some(&secret)).await;
    let node2 = agent(dir.path(), "node2", 100, p2, &[p1], Some(&secret)).await;
    until(&node1, Duration::from_secs(10), "node1 to see node2", |s| node(s, "node2").is_some_and(|n| n.alive)).await;
    let twin = agent(dir.path(), "node2", 200, px, &[p1], Some(&secret)).await;

    let s2 = until(&node2, Duration::from_secs(10), "node2 to report the conflict", |s| !s.gossip.conflicts.is_empty())
        .await;
    let c = &s2.gossip.conflicts[0];
    assert_eq!((c.name.as_str(), c.generation, c.ours, c.we_are_newcomer), ("node2", 200, true, false));
    assert_eq!(c.gossip_addr, format!("127.0.0.1:{px}"));
    until(&twin, Duration::from_secs(10), "the twin to know it is the newcomer", |s| {
        s.gossip.conflicts.iter().any(|c| c.we_are_newcomer && c.generation == 100)
    })
    .await;
    // The others keep the incumbent.
    let s1 = status(&node1).await;
    assert_eq!(node(&s1, "node2").unwrap().gossip_addr, format!("127.0.0.1:{p2}"), "{s1:#?}");

    // The twin leaves: node2 stays alive to itself and to node1, at its own address.
    twin.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s2 = status(&node2).await;
    let me = node(&s2, "node2").unwrap();
    assert!(me.alive && me.generation == 100, "{s2:#?}");
    let s1 = status(&node1).await;
    let seen = node(&s1, "node2").unwrap();
    assert!(seen.alive && seen.gossip_addr == format!("127.0.0.1:{p2}"), "{s1:#?}");
    for a in [node1, node2] {
        a.stop().await;
    }
}
