//! Gossip benchmark: rounds and time until a drain flag set through 1 of N simulated
//! agents is seen by all N, and time until a killed agent is seen dead by all others,
//! for N = 10, 50, 200 at 100 ms and 1 s gossip intervals. Runs on chitchat's
//! ChannelTransport with tokio's paused clock, so "time" is protocol time (virtual),
//! independent of this machine's load; the CPU time each run took is shown too.
//!
//! `cargo bench --bench gossip` prints a markdown table.

#![allow(missing_docs, clippy::print_stdout)]

#[allow(dead_code)]
#[path = "../tests/common/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use meshdrain::decide::node::{NodeAction, NodeState};
use sim::{SimFleet, converged, seen};

struct Row {
    n: usize,
    interval: Duration,
    join: Duration,
    flag: Duration,
    dead: Duration,
    cpu: Duration,
}

async fn one(n: usize, interval: Duration) -> Row {
    let cpu = Instant::now();
    let mut fleet = SimFleet::start(n, interval).await;
    let limit = interval * 600;
    let join = fleet.until(limit, "convergence", |s| converged(s, n)).await;
    let target = format!("node{}", n / 2);
    fleet.agents[1]
        .agent
        .as_ref()
        .unwrap()
        .handle
        .node_action(&target.parse().unwrap(), NodeAction::Drain, false)
        .await
        .unwrap();
    let flag = fleet
        .until(limit, "flag everywhere", |s| {
            // A node with no volumes is drained a moment after it drains: either state
            // shows the flag arrived.
            s.iter().all(|(_, r)| {
                matches!(seen(r, &target).map(|x| x.0), Some(Some(NodeState::Draining | NodeState::Drained)))
            })
        })
        .await;
    let victim = n - 1;
    let victim_name = format!("node{victim}");
    fleet.kill(victim);
    let dead = fleet
        .until(limit, "death everywhere", |s| s.iter().all(|(_, r)| seen(r, &victim_name).is_some_and(|x| !x.1)))
        .await;
    Row { n, interval, join, flag, dead, cpu: cpu.elapsed() }
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    println!("| agents | interval | join (virtual) | flag seen by all | rounds | dead seen by all | cpu time |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for interval in [Duration::from_millis(100), Duration::from_secs(1)] {
        for n in [10, 50, 200] {
            if !filter.is_empty() && !filter.iter().any(|f| f == &n.to_string()) {
                continue;
            }
            let r = rt.block_on(one(n, interval));
            println!(
                "| {} | {:?} | {:?} | {:?} | {} | {:?} | {:.1?} |",
                r.n,
                r.interval,
                r.join,
                r.flag,
                r.flag.as_millis() / r.interval.as_millis(),
                r.dead,
                r.cpu
            );
        }
    }
}
