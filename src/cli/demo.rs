//! `meshdrain demo`: a local fleet on an embedded default, for a first look.
//!
//! This version starts three agents in this process, gossiping over UDP on 127.0.0.1,
//! drains one of them from another and shows the flag reaching every node. Moving a
//! volume (export, clone, hydration, hand-off) joins the demo with the end-to-end drain.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;

use crate::agent::AgentSetup;
use crate::agent::core::CoreConfig;
use crate::agent::dataplane::NoDataPlane;
use crate::lease::Timing;
use crate::agent::run::{RunningAgent, spawn};
use crate::cluster::gossip::GossipSettings;
use crate::drain::node::{NodeAction, NodeState};

/// Run a local demo fleet.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=32))]
    pub nodes: u16,
    /// Gossip interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Print one JSON summary object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Summary printed with `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    nodes: u16,
    join_s: f64,
    flag_seen_by_all_s: f64,
    undrain_seen_by_all_s: f64,
    volume_moved: bool,
}

/// Runs the demo and tears it down.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let interval = Duration::from_millis(args.interval_ms);
    let addrs: Vec<SocketAddr> = (0..args.nodes)
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()))
        .collect::<Result<_, _>>()?;
    let mut agents: Vec<RunningAgent> = Vec::new();
    say(&args, &format!("starting {} agents gossiping on 127.0.0.1 every {interval:?}", args.nodes));
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let settings = GossipSettings {
            name: name.clone(),
            generation: 1,
            cluster_id: "demo".into(),
            listen: *addr,
            advertise: *addr,
            seeds: vec![addrs[if i == 0 { 1 } else { 0 }].to_string()],
            interval,
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
        };
        let identity = CoreConfig {
            name: name.clone(),
            gossip_addr: *addr,
            labels: Default::default(),
            mesh_addr: None,
            mesh_backend: Some("none".into()),
            free_bytes: 1 << 30,
            export_addr: String::new(),
            timing: Timing::for_interval(interval.as_millis() as u64),
        };
        agents.push(spawn(&settings, setup(identity, interval, &dir.path().join(&name)), &dir.path().join(&name), &UdpTransport).await?);
    }
    let n = agents.len();
    let start = Instant::now();
    wait_all(&agents, Duration::from_secs(30), |r| r.nodes.len() == n && r.nodes.iter().all(|x| x.alive)).await?;
    let join = start.elapsed();
    say(&args, &format!("fleet joined in {join:.1?}"));
    if !args.json {
        let report = agents[0].handle.status().await.unwrap_or_else(unreachable_agent);
        print!("{}", super::status::render(&report));
    }

    let last = n - 1;
    say(&args, &format!("node{} runs `meshdrain drain node1`", last + 1));
    let t = Instant::now();
    agents[last].handle.node_action("node1", NodeAction::Drain, false).await.map_err(anyhow::Error::msg)?;
    wait_all(&agents, Duration::from_secs(30), |r| state_of(r, "node1") == Some(NodeState::Draining)).await?;
    let flag = t.elapsed();
    say(&args, &format!("every node sees node1 draining after {flag:.1?}"));
    if !args.json {
        let report = agents[1].handle.status().await.unwrap_or_else(unreachable_agent);
        print!("{}", super::status::render(&report));
    }
    say(&args, "volume moves (export, clone, hydration, hand-off) are not part of this build's demo yet");

    let t = Instant::now();
    agents[1].handle.node_action("node1", NodeAction::Undrain, false).await.map_err(anyhow::Error::msg)?;
    wait_all(&agents, Duration::from_secs(30), |r| state_of(r, "node1") == Some(NodeState::Active)).await?;
    let undrain = t.elapsed();
    say(&args, &format!("undrain seen by every node after {undrain:.1?}; stopping the fleet"));
    for a in agents {
        a.stop().await;
    }
    if args.json {
        let s = Summary {
            nodes: args.nodes,
            join_s: join.as_secs_f64(),
            flag_seen_by_all_s: flag.as_secs_f64(),
            undrain_seen_by_all_s: undrain.as_secs_f64(),
            volume_moved: false,
        };
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn unreachable_agent() -> crate::control::protocol::StatusReport {
    panic!("a demo agent stopped unexpectedly")
}

fn state_of(r: &crate::control::protocol::StatusReport, node: &str) -> Option<NodeState> {
    r.nodes.iter().find(|n| n.name == node).and_then(|n| n.state)
}

async fn wait_all(
    agents: &[RunningAgent],
    limit: Duration,
    cond: impl Fn(&crate::control::protocol::StatusReport) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for a in agents {
            match a.handle.status().await {
                Some(r) if cond(&r) => {}
                _ => all = false,
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!("the demo fleet did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn say(args: &Args, line: &str) {
    if args.json {
        eprintln!("demo: {line}");
    } else {
        println!("demo: {line}");
    }
}

fn setup(config: CoreConfig, interval: std::time::Duration, dir: &std::path::Path) -> AgentSetup {
    AgentSetup {
        config,
        interval,
        pool_dir: dir.join("pool"),
        dataplane: Box::new(NoDataPlane),
        shared_volumes: Default::default(),
    }
}
