//! `meshdrain cordon|uncordon|drain|undrain <node>`: change a node's state from any node.
//! For another node the request travels through gossip; the command waits (bounded)
//! until that node has adopted it, and says so plainly when the node is down.
//!
//! Exit codes (README.md, "Exit codes"): 0 adopted (with --no-wait: published), 1 refused
//! or not adopted within --timeout (the request stays published and the node adopts it
//! when it returns), 2 usage, 3 agent unreachable.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::ControlTarget;
use super::exit::FAILURE;
use crate::api::{ActionReport, Request, StatusReport, VolumeStatus};
use crate::control::client::Client;
use crate::decide::model::NodeName;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;

/// Exit codes of the node actions, shown at the end of their `--help`.
macro_rules! exit_codes {
    () => {
        "Exit codes: 0 adopted by the node (with --no-wait: published), 1 refused, or not adopted
within --timeout (the node is down or slow: the request stays published and the node
adopts it when it returns), 2 usage error or a node the fleet does not know (without
--force), 3 agent unreachable."
    };
}

/// Examples shown at the end of `meshdrain cordon --help`.
pub const CORDON_EXAMPLES: &str = concat!(
    "Examples:
  meshdrain cordon node3             # no new volumes on node3; its volumes stay
  meshdrain cordon node3 --no-wait   # publish and return; node3 adopts it on its next round

",
    exit_codes!()
);
/// Examples shown at the end of `meshdrain uncordon --help`.
pub const UNCORDON_EXAMPLES: &str = concat!(
    "Examples:
  meshdrain uncordon node3           # node3 takes volumes again
  meshdrain uncordon node3 --timeout 2m

",
    exit_codes!()
);

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
    #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub control: super::ControlArg,
}

/// A volume that moved off the node and stays where it went (`undrain` does not bring it back).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StaysMoved {
    /// Volume id.
    pub volume: String,
    /// Where it is (or is being handed off to).
    pub on: String,
}

/// Outcome printed with `--json`.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    /// The node acted on.
    pub node: String,
    /// The action.
    pub action: NodeAction,
    /// The request's id.
    pub nonce: String,
    /// The node applied it.
    pub adopted: bool,
    /// Its state as last seen.
    pub state: Option<NodeState>,
    /// Why it was refused.
    pub rejected: Option<String>,
    /// Its agent answers gossip (`None`: not known to gossip).
    pub node_alive: Option<bool>,
    /// With `undrain`: volumes that cut over before it and stay moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stay_moved: Option<Vec<StaysMoved>>,
}

impl Outcome {
    /// What a fresh request's report says, before any wait.
    pub fn from_report(report: &ActionReport) -> Self {
        Self {
            node: report.node.clone(),
            action: report.action,
            nonce: report.nonce.clone(),
            adopted: report.applied,
            state: report.state,
            rejected: report.rejected.clone(),
            node_alive: None,
            stay_moved: None,
        }
    }

    /// 0 if adopted and not refused, or published with --no-wait; else 1 (README.md, "Exit codes").
    pub fn exit_code(&self, no_wait: bool) -> ExitCode {
        if self.rejected.is_some() || !(self.adopted || no_wait) { ExitCode::from(FAILURE) } else { ExitCode::SUCCESS }
    }
}

/// Sends the action and reports what the node did with it.
pub async fn run(action: NodeAction, args: Args, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    request(action, &args, DrainOptions::default(), control).await
}

/// Publishes the request; the agent's report (applied at once when the node is this one).
pub async fn publish(
    client: &mut Client,
    action: NodeAction,
    args: &Args,
    options: DrainOptions,
) -> anyhow::Result<ActionReport> {
    let req = Request::NodeAction { node: args.node.clone(), action, force: args.force, options };
    client.get(&req).await.map_err(super::unreachable)
}

/// Sends the action with drain options, waits for adoption unless --no-wait, prints the
/// outcome.
pub async fn request(
    action: NodeAction,
    args: &Args,
    options: DrainOptions,
    control: &ControlTarget,
) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let report = publish(&mut client, action, args, options).await?;
    let mut outcome = Outcome::from_report(&report);
    if !report.applied && !args.no_wait {
        wait_adopted(&mut client, &mut outcome, args).await?;
    }
    if action == NodeAction::Undrain && outcome.adopted && outcome.rejected.is_none() {
        let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
        outcome.stay_moved = Some(stays_moved(&args.node, &volumes));
    }
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", describe(&outcome, args));
    }
    Ok(outcome.exit_code(args.no_wait))
}

/// Polls until the node adopts the request, it is seen down for a couple of seconds, or
/// --timeout passes.
pub(super) async fn wait_adopted(client: &mut Client, outcome: &mut Outcome, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    loop {
        let status: StatusReport = client.get(&Request::Status).await?;
        let node = status.nodes.iter().find(|n| n.name == args.node);
        outcome.node_alive = node.map(|n| n.alive);
        if let Some(n) = node {
            outcome.state = n.state;
            if let Some(last) = n.last_request.as_ref().filter(|l| l.nonce == outcome.nonce) {
                outcome.adopted = true;
                outcome.rejected = last.rejected.clone();
                return Ok(());
            }
            // A node that stays dead for a couple of seconds is down: the request is
            // published and the node adopts it when it returns. (A node that only just
            // joined can look dead until the failure detector has heartbeats.)
            if !n.alive && Instant::now() >= started + Duration::from_secs(2) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The volumes that moved off `node` (cut over or handed off, or arrived elsewhere from
/// it): an undrain leaves them where they went.
pub fn stays_moved(node: &str, volumes: &[VolumeStatus]) -> Vec<StaysMoved> {
    volumes
        .iter()
        .filter_map(|v| {
            let cut_over = v.owner == node && matches!(v.phase.as_str(), "cut_over" | "handed_off");
            if cut_over {
                v.holder.clone().map(|on| StaysMoved { volume: v.id.clone(), on })
            } else if v.owner != node && v.arrived_from.as_deref() == Some(node) {
                Some(StaysMoved { volume: v.id.clone(), on: v.owner.clone() })
            } else {
                None
            }
        })
        .collect()
}

/// The human form of an outcome.
pub fn describe(o: &Outcome, args: &Args) -> String {
    let state = o.state.map_or("unknown".to_owned(), |s| s.to_string());
    if let Some(why) = &o.rejected {
        return format!("{}: {} refused: {why}", o.node, o.action);
    }
    if o.adopted {
        let mut line = format!("{}: {} ({} applied, request {})", o.node, state, o.action, o.nonce);
        if let Some(moved) = &o.stay_moved {
            if moved.is_empty() {
                line.push_str("; no volume had moved off it");
            } else {
                let list: Vec<String> = moved.iter().map(|m| format!("{} on {}", m.volume, m.on)).collect();
                let verb = if moved.len() == 1 { "stays" } else { "stay" };
                line.push_str(&format!(
                    "; {} cut over before the undrain and {verb} moved: {}",
                    plural(moved.len(), "volume"),
                    list.join(", ")
                ));
            }
        }
        return line;
    }
    if args.no_wait {
        return format!(
            "{}: {} request {} published; the node adopts it on its next gossip round",
            o.node, o.action, o.nonce
        );
    }
    match o.node_alive {
        Some(false) | None => format!(
            "{}: the node's agent is not answering; {} request {} is published and not adopted yet \
             (the node adopts it when its agent returns)",
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

/// `1 volume`, `2 volumes`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        T::parse_from([&["t", "node2"], extra].concat()).args
    }

    fn outcome(adopted: bool, alive: Option<bool>) -> Outcome {
        Outcome {
            node: "node2".into(),
            action: NodeAction::Drain,
            nonce: "ab".into(),
            adopted,
            state: Some(NodeState::Active),
            rejected: None,
            node_alive: alive,
            stay_moved: None,
        }
    }

    #[test]
    fn a_request_not_adopted_exits_1_and_says_the_agent_is_not_answering() {
        let o = outcome(false, Some(false));
        assert_eq!(o.exit_code(false), ExitCode::from(FAILURE));
        assert_eq!(
            describe(&o, &args(&[])),
            "node2: the node's agent is not answering; drain request ab is published and not adopted yet \
             (the node adopts it when its agent returns)"
        );
        assert_eq!(o.exit_code(true), ExitCode::SUCCESS, "--no-wait asks only to publish");
        assert_eq!(outcome(true, Some(true)).exit_code(false), ExitCode::SUCCESS);
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["adopted"], false);
        assert!(json.get("stay_moved").is_none());
    }

    #[test]
    fn undrain_names_the_volumes_that_stay_moved() {
        let line = |id: &str, owner: &str, phase: &str, holder: Option<&str>, from: Option<&str>| VolumeStatus {
            id: id.into(),
            owner: owner.into(),
            size: 1,
            epoch: 1,
            phase: phase.into(),
            holder: holder.map(Into::into),
            holder_phase: None,
            hydration: Default::default(),
            arrived_from: from.map(Into::into),
            source_phase: None,
            return_mode: None,
            stranded: false,
            stalled: false,
            error: None,
            path: None,
        };
        let volumes = vec![
            line("v1", "node3", "held", None, Some("node2")),
            line("v2", "node2", "cut_over", Some("node1"), None),
            line("v3", "node2", "held", None, None),
            line("v4", "node2", "granted", Some("node1"), None),
        ];
        let moved = stays_moved("node2", &volumes);
        let mut o = outcome(true, Some(true));
        o.action = NodeAction::Undrain;
        o.stay_moved = Some(moved);
        assert_eq!(
            describe(&o, &args(&[])),
            "node2: active (undrain applied, request ab); 2 volumes cut over before the undrain and stay moved: \
             v1 on node3, v2 on node1"
        );
    }
}
