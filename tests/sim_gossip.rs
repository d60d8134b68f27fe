//! Fifty agents in one process (chitchat ChannelTransport, paused clock): a drain flag set
//! through one agent reaches all; partitions hide it and healing converges; a killed
//! agent is marked dead by the others.

mod common;

use std::time::Duration;

use common::sim::{SimFleet, converged, seen};
use meshdrain::api::{NewVolume, Request};
use meshdrain::decide::node::{NodeAction, NodeState};

const N: usize = 50;

/// Gives node `i` a volume no node can take (it needs a label none has), so a drain of
/// it stays `draining` and the test watches the flag, not a completed drain.
async fn pin_volume(fleet: &SimFleet, i: usize) {
    let requires = [("zone".to_owned(), "nowhere".to_owned())].into_iter().collect();
    let handle = &fleet.agents[i].agent.as_ref().unwrap().handle;
    let new = NewVolume {
        id: "pinned".parse().unwrap(),
        size: Some(1 << 20),
        path: None,
        requires,
        hooks: Default::default(),
    };
    handle.ask(Request::VolumeAdd(new)).await.unwrap();
}
const INTERVAL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_drain_flag_set_on_one_of_50_is_seen_by_all() {
    let fleet = SimFleet::start(N, INTERVAL).await;
    let joined = fleet.until(Duration::from_secs(60), "50 agents to converge", |s| converged(s, N)).await;
    eprintln!("50 agents converged in {joined:?} of virtual time");

    pin_volume(&fleet, 17).await;
    let report = fleet.agents[3]
        .agent
        .as_ref()
        .unwrap()
        .handle
        .node_action(&"node17".parse().unwrap(), NodeAction::Drain, false)
        .await
        .unwrap();
    assert!(!report.applied, "a request for another node is published, not applied locally");
    let spread = fleet
        .until(Duration::from_secs(30), "every agent to see node17 draining", |s| {
            s.iter().all(|(_, r)| seen(r, "node17").map(|x| x.0) == Some(Some(NodeState::Draining)))
        })
        .await;
    eprintln!("drain flag seen by all 50 after {spread:?} ({} rounds)", spread.as_millis() / INTERVAL.as_millis());
    // Adopted exactly once: node17's last applied request is the one node3 issued.
    let statuses = fleet.statuses().await;
    let me = statuses[17].1.nodes.iter().find(|n| n.name == "node17").unwrap();
    assert_eq!(me.last_request.as_ref().unwrap().nonce, report.nonce);
    // node3 forgets its request once node17 adopted it.
    fleet
        .until(Duration::from_secs(30), "the issuer to drop its acknowledged request", |s| {
            s.iter().all(|(_, r)| r.nodes.iter().all(|n| n.pending_requests.is_empty()))
        })
        .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_partition_hides_the_flag_and_healing_converges() {
    let fleet = SimFleet::start(N, INTERVAL).await;
    fleet.until(Duration::from_secs(60), "50 agents to converge", |s| converged(s, N)).await;
    let left: Vec<usize> = (0..N / 2).collect();
    let right: Vec<usize> = (N / 2..N).collect();
    fleet.partition(&left, &right).await;
    let split = fleet
        .until(Duration::from_secs(120), "each side to see the other dead", |s| {
            s.iter().all(|(i, r)| {
                let other_side = if *i < N / 2 { N / 2..N } else { 0..N / 2 };
                other_side.clone().all(|j| seen(r, &format!("node{j}")).is_some_and(|x| !x.1))
            })
        })
        .await;
    eprintln!("partition detected on both sides after {split:?}");

    pin_volume(&fleet, 5).await;
    fleet.agents[0]
        .agent
        .as_ref()
        .unwrap()
        .handle
        .node_action(&"node5".parse().unwrap(), NodeAction::Drain, false)
        .await
        .unwrap();
    fleet
        .until(Duration::from_secs(30), "the left side to see node5 draining", |s| {
            s.iter().filter(|(i, _)| *i < N / 2).all(|(_, r)| seen(r, "node5").unwrap().0 == Some(NodeState::Draining))
        })
        .await;
    // Give the flag many rounds: it must not cross the cut.
    tokio::time::sleep(INTERVAL * 50).await;
    for (i, r) in fleet.statuses().await {
        if i >= N / 2 {
            assert_eq!(seen(&r, "node5").unwrap().0, Some(NodeState::Active), "node{i} saw across the partition");
        }
    }

    fleet.heal(&left, &right).await;
    let healed = fleet
        .until(Duration::from_secs(120), "all 50 to converge and see node5 draining", |s| {
            converged(s, N) && s.iter().all(|(_, r)| seen(r, "node5").unwrap().0 == Some(NodeState::Draining))
        })
        .await;
    eprintln!("healed and converged after {healed:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_killed_agent_is_marked_dead_by_all_others() {
    let mut fleet = SimFleet::start(N, INTERVAL).await;
    fleet.until(Duration::from_secs(60), "50 agents to converge", |s| converged(s, N)).await;
    fleet.kill(42);
    let detected = fleet
        .until(Duration::from_secs(60), "every live agent to see node42 dead", |s| {
            s.len() == N - 1 && s.iter().all(|(_, r)| seen(r, "node42").is_some_and(|x| !x.1))
        })
        .await;
    eprintln!("node42's death detected by all 49 after {detected:?}");
    // Nobody else was declared dead along with it.
    for (_, r) in fleet.statuses().await {
        assert_eq!(r.nodes.iter().filter(|n| !n.alive).count(), 1);
    }
}
