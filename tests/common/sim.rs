//! Many agents in one process on chitchat's ChannelTransport, with tokio's paused clock:
//! time only moves when every agent is idle, so runs are fast and repeatable, and
//! partitions are made by cutting links (as chitchat's own tests do).

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::ChannelTransport;
use meshdrain::agent::AgentSetup;
use meshdrain::agent::run::{RunningAgent, spawn};
use meshdrain::api::StatusReport;
use meshdrain::cluster::gossip::GossipSettings;
use meshdrain::dataplane::NoDataPlane;
use meshdrain::decide::core::CoreConfig;
use meshdrain::decide::lease::Timing;
use meshdrain::decide::node::NodeState;

/// One simulated agent.
pub struct SimAgent {
    pub name: String,
    pub addr: SocketAddr,
    pub agent: Option<RunningAgent>,
}

/// A simulated fleet.
pub struct SimFleet {
    pub transport: ChannelTransport,
    pub agents: Vec<SimAgent>,
    pub interval: Duration,
    _dir: tempfile::TempDir,
}

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))
}

impl SimFleet {
    /// Starts `n` agents named node0..; every agent is seeded with the first three.
    pub async fn start(n: usize, interval: Duration) -> SimFleet {
        let transport = ChannelTransport::default();
        let dir = tempfile::tempdir().unwrap();
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("node{i}");
            let settings = GossipSettings {
                name: name.clone(),
                generation: 1,
                cluster_id: "sim".into(),
                listen: addr(i),
                advertise: addr(i),
                seeds: (0..3.min(n)).filter(|&s| s != i).map(|s| addr(s).to_string()).collect(),
                interval,
                phi_threshold: 8.0,
                dead_node_grace: Duration::from_secs(3600),
            };
            let identity = CoreConfig {
                name: name.parse().unwrap(),
                gossip_addr: addr(i),
                labels: Default::default(),
                mesh_addr: None,
                mesh_backend: None,
                free_bytes: 1 << 30,
                data_plane: true,
                export_addr: String::new(),
                timing: Timing::for_interval(interval.as_millis() as u64),
                wireguard: None,
            };
            let agent = spawn(
                &settings,
                setup(identity, interval, &dir.path().join(&name)),
                &dir.path().join(&name),
                &transport,
            )
            .await
            .unwrap();
            agents.push(SimAgent { name, addr: addr(i), agent: Some(agent) });
        }
        SimFleet { transport, agents, interval, _dir: dir }
    }

    /// Status of every running agent (index, report).
    pub async fn statuses(&self) -> Vec<(usize, StatusReport)> {
        let mut out = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(agent) = &a.agent {
                out.push((i, agent.handle.status().await.expect("agent answers")));
            }
        }
        out
    }

    /// Advances virtual time one gossip interval at a time until `cond` holds for the
    /// statuses, or `limit` of virtual time passes. Returns the virtual time taken.
    pub async fn until(
        &self,
        limit: Duration,
        what: &str,
        mut cond: impl FnMut(&[(usize, StatusReport)]) -> bool,
    ) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            let s = self.statuses().await;
            if cond(&s) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!("after {limit:?} of virtual time, still waiting for {what}");
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Cuts every link between the two groups.
    pub async fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.transport.remove_link(addr(x), addr(y)).await;
            }
        }
    }

    /// Restores every link between the two groups.
    pub async fn heal(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.transport.add_link(addr(x), addr(y)).await;
            }
        }
    }

    /// Crashes agent `i`: its task is aborted and its gossip goes silent.
    pub fn kill(&mut self, i: usize) {
        if let Some(a) = self.agents[i].agent.take() {
            a.kill();
        }
    }
}

/// What `report` says about `node`: (state, alive).
pub fn seen(report: &StatusReport, node: &str) -> Option<(Option<NodeState>, bool)> {
    report.nodes.iter().find(|n| n.name == node).map(|n| (n.state, n.alive))
}

/// Every report lists exactly `n` nodes, all alive.
pub fn converged(statuses: &[(usize, StatusReport)], n: usize) -> bool {
    statuses.iter().all(|(_, r)| r.nodes.len() == n && r.nodes.iter().all(|x| x.alive && x.state.is_some()))
}

fn setup(config: CoreConfig, interval: std::time::Duration, dir: &std::path::Path) -> AgentSetup {
    AgentSetup {
        interval,
        pool_dir: dir.join("pool"),
        dataplane: Box::new(NoDataPlane),
        mesh: Box::new(meshdrain::agent::meshport::NoMesh),
        capacity: meshdrain::agent::capacity::Capacity::Fixed(config.free_bytes),
        config,
    }
}
