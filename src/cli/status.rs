//! `meshdrain status`: every node this agent knows, its state and liveness.

use std::process::ExitCode;
use std::time::Duration;

use super::ControlTarget;
use crate::api::{Request, StatusReport};
use crate::cluster::identity::{GossipHealth, GossipMode};
use crate::control::client::Client;

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
}

/// Fetches and prints the status.
pub async fn run(args: Args, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    loop {
        let report: StatusReport = client.get(&Request::Status).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&report));
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The human table.
pub fn render(report: &StatusReport) -> String {
    let mut rows = vec![vec![
        "NODE".to_owned(),
        "STATE".to_owned(),
        "ALIVE".to_owned(),
        "GOSSIP".to_owned(),
        "MESH".to_owned(),
        "HEARTBEAT".to_owned(),
        "FREE".to_owned(),
        "VOLUMES".to_owned(),
    ]];
    for n in &report.nodes {
        let me = if n.name == report.self_name { "*" } else { "" };
        rows.push(vec![
            format!("{}{me}", n.name),
            n.state.map_or("?".to_owned(), |s| s.to_string()),
            if n.alive { "yes" } else { "DEAD" }.to_owned(),
            n.gossip_addr.clone(),
            n.mesh_addr.clone().unwrap_or_else(|| "-".to_owned()),
            n.heartbeat_age_ms.map_or("-".to_owned(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0)),
            n.free_bytes.map_or("-".to_owned(), super::units::format_bytes),
            n.volumes.to_string(),
        ]);
    }
    let mut out = super::table::render(&rows);
    out.push_str(&render_gossip(&report.gossip));
    out
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
    use crate::cluster::identity::NameConflict;

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
