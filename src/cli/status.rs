//! `meshdrain status`: every node this agent knows, its state and liveness.

use std::process::ExitCode;
use std::time::Duration;

use super::ControlTarget;
use super::progress::NodeProgress;
use crate::api::{Request, StatusReport, VolumeStatus};
use crate::cluster::identity::{GossipHealth, GossipMode};
use crate::control::client::Client;

/// Examples shown at the end of `meshdrain status --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain status                 # NODE STATE ADDRESS MESH HEARTBEAT FREE VOLS
  meshdrain status --watch         # refresh every second; survives an agent restart
  meshdrain status --json | jq '.nodes[] | select(.alive | not) | .name'

ADDRESS is the node's mesh address (its gossip address without a mesh); MESH the WireGuard
backend carrying it; HEARTBEAT the age of its last heartbeat here, DEAD when the failure
detector holds it dead. A line under the table per draining node: volumes moving, bytes moved
of bytes to move, rate and ETA; and one per userspace clone on this node: how its workload
sees it (`nbd`, `ublk`, `fuse-loop`) and the device (JSON: `clones`).";

/// Show every node of the fleet as the local agent sees it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (`{"self":..,"nodes":[{"name":..,"state":..,"alive":..},..],"gossip":{"mode":..,
    /// "counters":{..},"conflicts":[..],"name_mismatch_ignored":..}}`).
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted (with --json: one object per line).
    #[arg(long)]
    pub watch: bool,
    #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub control: super::ControlArg,
}

/// Fetches and prints the status.
pub async fn run(args: Args, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Some(Client::connect(&control.socket).await.map_err(super::unreachable)?);
    let mut said_retrying = false;
    loop {
        // With --watch an agent that restarts is waited for, with one visible line.
        let answer = match client.as_mut() {
            Some(c) => fetch(c).await,
            None => match Client::connect(&control.socket).await {
                Ok(mut c) => {
                    let a = fetch(&mut c).await;
                    client = Some(c);
                    a
                }
                Err(e) => Err(e),
            },
        };
        let (report, volumes) = match answer {
            Ok(a) => {
                said_retrying = false;
                a
            }
            Err(e) if args.watch => {
                client = None;
                if !said_retrying {
                    eprintln!("agent not answering ({e}); retrying every second");
                    said_retrying = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(super::unreachable(e)),
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&report, &volumes));
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn fetch(client: &mut Client) -> Result<(StatusReport, Vec<VolumeStatus>), crate::control::client::ClientError> {
    Ok((client.get(&Request::Status).await?, client.get(&Request::Volumes).await?))
}

/// The human table (under 100 columns), a progress line per node with volumes moving off
/// it, then gossip's warnings.
pub fn render(report: &StatusReport, volumes: &[VolumeStatus]) -> String {
    let mut rows = vec![["NODE", "STATE", "ADDRESS", "MESH", "HEARTBEAT", "FREE", "VOLS"].map(str::to_owned).to_vec()];
    for n in &report.nodes {
        let me = if n.name == report.self_name { "*" } else { "" };
        rows.push(vec![
            format!("{}{me}", n.name),
            n.state.map_or("?".to_owned(), |s| s.to_string()),
            n.mesh_addr.clone().unwrap_or_else(|| n.gossip_addr.clone()),
            n.mesh_backend.clone().unwrap_or_else(|| "-".to_owned()),
            heartbeat(n.alive, n.heartbeat_age_ms),
            n.free_bytes.map_or("-".to_owned(), super::units::format_bytes),
            n.volumes.to_string(),
        ]);
    }
    let mut out = super::table::render(&rows);
    for n in &report.nodes {
        if let Some(line) = NodeProgress::of(&n.name, volumes).render() {
            out.push_str(&format!("{}: {line}\n", n.name));
        }
    }
    for c in &report.clones {
        out.push_str(&format!("clone {}: {} {} (docs/exposures.md)\n", c.volume, c.exposure, c.device.display()));
    }
    out.push_str(&render_lost(report));
    out.push_str(&render_gossip(&report.gossip));
    out
}

/// Lines below the table for nodes declared lost and for copies this node set aside
/// (docs/failures.md): they stay until `meshdrain gc`, so an operator must see them.
fn render_lost(report: &StatusReport) -> String {
    let Some(lost) = report.lost.as_deref() else { return String::new() };
    let mut out = String::new();
    for (node, d) in &lost.declared {
        let how = if d.automatic { "automatically ([lease] node_lost_after)" } else { "by the operator" };
        let loss = if d.accept_data_loss { ", data loss accepted" } else { "" };
        out.push_str(&format!("lost: {node} declared by {} {how}{loss}\n", d.declared_by));
    }
    for c in &lost.aside {
        out.push_str(&format!(
            "set aside: {} (epoch {}, this node's {} copy), removed only by `meshdrain gc`\n",
            c.volume, c.epoch, c.role
        ));
    }
    out
}

/// `0.4s ago`, `12s ago`; `DEAD 95s` for a node the failure detector holds dead.
fn heartbeat(alive: bool, age_ms: Option<u64>) -> String {
    let age =
        age_ms.map(|ms| if ms < 10_000 { format!("{:.1}s", ms as f64 / 1000.0) } else { format!("{}s", ms / 1000) });
    match (alive, age) {
        (true, Some(a)) => format!("{a} ago"),
        (true, None) => "-".to_owned(),
        (false, Some(a)) => format!("DEAD {a}"),
        (false, None) => "DEAD".to_owned(),
    }
}

/// Lines below the table: unprotected gossip, dropped datagrams, name conflicts. Nothing
/// when all is well.
fn render_gossip(g: &GossipHealth) -> String {
    let mut out = String::new();
    if g.mode == GossipMode::Insecure {
        out.push_str(
            "WARNING: gossip is not authenticated (gossip.insecure = true): anyone who can reach it can drain nodes\n",
        );
    }
    let c = &g.counters;
    let dropped = c.dropped_unauthenticated + c.dropped_oversize + c.dropped_malformed + c.dropped_local;
    if dropped > 0 {
        out.push_str(&format!(
            "gossip dropped {dropped} datagrams: {} unauthenticated, {} over the decompression cap, {} malformed, {} local\n",
            c.dropped_unauthenticated, c.dropped_oversize, c.dropped_malformed, c.dropped_local
        ));
    }
    if g.name_mismatch_ignored > 0 {
        out.push_str(&format!(
            "gossip ignored {} records whose name is not certified for their mesh address\n",
            g.name_mismatch_ignored
        ));
    }
    for k in &g.conflicts {
        let whose = if k.ours { "this node's name" } else { "name" };
        let what = if k.we_are_newcomer { "; this agent is the newcomer and stops" } else { "" };
        out.push_str(&format!(
            "CONFLICT: {whose} {} is also claimed by a live agent at {} (generation {}){what}\n",
            k.name, k.gossip_addr, k.generation
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeStatus;
    use crate::cluster::identity::NameConflict;

    #[test]
    fn the_table_shows_the_mesh_backend_and_fits_100_columns() {
        let node = |name: &str, alive: bool| NodeStatus {
            name: name.into(),
            state: Some(crate::decide::node::NodeState::Cordoned),
            alive,
            gossip_addr: "[fd7a:5e2c:9b41:1234:8c3e:1a2b:3c4d:5e6f]:7946".into(),
            mesh_addr: Some("fd7a:5e2c:9b41:1234:8c3e:1a2b:3c4d:5e6f".into()),
            mesh_backend: Some("userspace".into()),
            heartbeat_age_ms: Some(123_456),
            heartbeat: 1,
            generation: 1,
            free_bytes: Some(1023 << 30),
            volumes: 12,
            agent_version: None,
            last_request: None,
            pending_requests: vec![],
            ignored_keys: vec![],
        };
        let report = StatusReport {
            self_name: "node-one".into(),
            nodes: vec![node("node-one", true), node("node-two", false)],
            gossip: GossipHealth { mode: GossipMode::Hmac, ..Default::default() },
            lost: Default::default(),
            clones: vec![crate::dataplane::ExposedClone {
                volume: "db1".into(),
                exposure: "nbd".into(),
                device: "/dev/nbd3".into(),
            }]
            .into(),
        };
        let out = render(&report, &[]);
        assert!(out.contains("\nclone db1: nbd /dev/nbd3 (docs/exposures.md)\n"), "{out}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["clones"][0]["exposure"], "nbd", "{json}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>()[2..4], ["ADDRESS", "MESH"]);
        assert!(lines[1].contains(" userspace "), "{out}");
        assert!(lines[1].contains(" 123s ago "), "{out}");
        assert!(lines[2].contains(" DEAD 123s "), "{out}");
        for l in &lines {
            assert!(l.len() <= 100, "{} columns: {l}", l.len());
        }
    }

    #[test]
    fn lost_nodes_and_copies_set_aside_are_shown_under_the_table() {
        let mut lost = crate::api::LostStatus::default();
        lost.declared.insert(
            "node3".parse().unwrap(),
            crate::decide::lost::LostDeclaration {
                declared_by: "node1".parse().unwrap(),
                at_ms: 1,
                accept_data_loss: true,
                automatic: false,
            },
        );
        lost.aside.push(crate::decide::core::AsideCopy {
            volume: "db1".parse().unwrap(),
            epoch: 4,
            role: "holder".into(),
            at_ms: 2,
        });
        let report = StatusReport {
            self_name: "node1".into(),
            nodes: vec![],
            gossip: GossipHealth::default(),
            lost: Some(Box::new(lost)),
            clones: Box::default(),
        };
        assert_eq!(
            render_lost(&report),
            "lost: node3 declared by node1 by the operator, data loss accepted\n\
             set aside: db1 (epoch 4, this node's holder copy), removed only by `meshdrain gc`\n"
        );
    }

    #[test]
    fn conflicts_and_drops_are_shown_under_the_table() {
        let mut g = GossipHealth { mode: GossipMode::Hmac, ..Default::default() };
        assert_eq!(render_gossip(&g), "");
        g.counters.dropped_unauthenticated = 3;
        g.conflicts.push(NameConflict {
            name: "node2".into(),
            generation: 7,
            gossip_addr: "10.0.0.9:7946".into(),
            ours: true,
            we_are_newcomer: false,
        });
        assert_eq!(
            render_gossip(&g),
            "gossip dropped 3 datagrams: 3 unauthenticated, 0 over the decompression cap, 0 malformed, 0 local\n\
             CONFLICT: this node's name node2 is also claimed by a live agent at 10.0.0.9:7946 (generation 7)\n"
        );
        g = GossipHealth { mode: GossipMode::Insecure, ..Default::default() };
        assert!(render_gossip(&g).starts_with("WARNING: gossip is not authenticated"));
    }
}
