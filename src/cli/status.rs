//! `meshdrain status`: every node this agent knows, its state and liveness.

use std::process::ExitCode;
use std::time::Duration;

use super::ControlTarget;
use crate::control::client::Client;
use crate::control::protocol::{Request, Response, StatusReport};

/// Show every node of the fleet as the local agent sees it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (`{"self":..,"nodes":[{"name":..,"state":..,"alive":..},..]}`).
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
        let report = match client.call(&Request::Status).await? {
            Response::Status(r) => r,
            other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        };
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
    super::table::render(&rows)
}
