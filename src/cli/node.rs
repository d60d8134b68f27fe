//! `meshdrain cordon|uncordon|drain|undrain <node>`: change a node's state from any node.
//! For another node the request travels through gossip; the command waits (bounded)
//! until that node has adopted it, and says so plainly when the node is down.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::ControlTarget;
use super::exit::FAILURE;
use crate::api::{ActionReport, Request, StatusReport};
use crate::control::client::Client;
use crate::decide::model::NodeName;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;

/// Arguments shared by the node actions.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node to act on (its configured name; see `meshdrain status`).
    pub node: NodeName,
    /// Publish the request even if gossip does not know the node yet.
    #[arg(long)]
    pub force: bool,
    /// Return as soon as the request is published, without waiting for the node to adopt it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the node to adopt the request (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Outcome printed with `--json`.
#[derive(Debug, serde::Serialize)]
struct Outcome<'a> {
    node: &'a str,
    action: NodeAction,
    nonce: &'a str,
    adopted: bool,
    state: Option<NodeState>,
    rejected: Option<&'a str>,
    node_alive: Option<bool>,
}

/// Sends the action and reports what the node did with it.
pub async fn run(action: NodeAction, args: Args, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    request(action, &args, DrainOptions::default(), control).await
}

/// Sends the action with drain options; prints the outcome; exit 0 if adopted (or
/// published for a node that is down).
pub async fn request(
    action: NodeAction,
    args: &Args,
    options: DrainOptions,
    control: &ControlTarget,
) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let req = Request::NodeAction { node: args.node.clone(), action, force: args.force, options };
    let report: ActionReport = client.get(&req).await?;
    let mut outcome = Outcome {
        node: &report.node,
        action,
        nonce: &report.nonce,
        adopted: report.applied,
        state: report.state,
        rejected: report.rejected.as_deref(),
        node_alive: None,
    };
    let mut rejected_remote = None;
    if !report.applied && !args.no_wait {
        let started = Instant::now();
        let deadline = started + args.timeout;
        loop {
            let status: StatusReport = client.get(&Request::Status).await?;
            let node = status.nodes.iter().find(|n| n.name == args.node);
            outcome.node_alive = node.map(|n| n.alive);
            if let Some(n) = node {
                outcome.state = n.state;
                if let Some(last) = n.last_request.as_ref().filter(|l| l.nonce == report.nonce) {
                    outcome.adopted = true;
                    rejected_remote = last.rejected.clone();
                    break;
                }
                // A node that stays dead for a couple of seconds is down: the request is
                // published and the node adopts it when it returns. (A node that only just
                // joined can look dead until the failure detector has heartbeats.)
                if !n.alive && Instant::now() >= started + Duration::from_secs(2) {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if rejected_remote.is_some() {
        outcome.rejected = rejected_remote.as_deref();
    }
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", describe(&outcome, args));
    }
    Ok(if outcome.rejected.is_some() || (!outcome.adopted && !args.no_wait && outcome.node_alive == Some(true)) {
        ExitCode::from(FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(o: &Outcome<'_>, args: &Args) -> String {
    let state = o.state.map_or("unknown".to_owned(), |s| s.to_string());
    if let Some(why) = o.rejected {
        return format!("{}: {} refused: {why}", o.node, o.action);
    }
    if o.adopted {
        return format!("{}: {} ({} applied, request {})", o.node, state, o.action, o.nonce);
    }
    if args.no_wait {
        return format!(
            "{}: {} request {} published; the node adopts it on its next gossip round",
            o.node, o.action, o.nonce
        );
    }
    match o.node_alive {
        Some(false) | None => format!(
            "{}: node is down; {} request {} is published and the node adopts it when it returns",
            o.node, o.action, o.nonce
        ),
        Some(true) => format!(
            "{}: {} request {} not adopted within {} (node is alive, state {state}); it stays published",
            o.node,
            o.action,
            o.nonce,
            humantime::format_duration(args.timeout)
        ),
    }
}
