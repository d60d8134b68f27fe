//! `meshdrain drain <node>`: plan, request and follow a drain from any node. Following
//! (`--wait`) is in [`super::follow`].

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use super::ControlTarget;
use super::exit::{Exit, FAILURE, USAGE};
use super::units::{format_bytes, parse_bytes};
use crate::api::{PlanLine, Request, StatusReport, VolumeStatus};
use crate::control::client::Client;
use crate::decide::node::NodeAction;
use crate::decide::request::DrainOptions;

/// Examples and exit codes shown at the end of `meshdrain drain --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain drain node3 --dry-run             # where each volume would go, and why not elsewhere
  meshdrain drain node3                       # publish; exit once node3 adopted it
  meshdrain drain node3 --wait --deadline 30m --rate-limit 200M --parallel 4
  meshdrain drain node3 --wait --verify       # node3 checks each holder's digest before letting go
  meshdrain drain node3 --wait --json | jq -c 'select(.event == \"volume\")'

Exit codes: 0 drained (with --wait), or adopted by the node (without; with --no-wait:
published); 1 refused, a volume failed, a --verify mismatch, the drain cancelled by an
undrain, or (without --wait) not adopted within --timeout because the node's agent is down
or slow (the request stays published: the node drains when it returns); 2 usage error or
an unknown node; 3 agent unreachable; 4 --deadline passed (the drain goes on).
With --dry-run: 0 every volume can be placed, 1 some cannot, 2 unknown node.";

/// Cordon a node and move every volume off it; run on any node of the fleet.
///
/// Each volume is offered, granted to one target through a gossip lease, exported
/// read-only by the source, cloned by the target which starts the workload at once, and
/// hydrated in the background; the source deletes its copy only after the target's
/// `done` (and the retention window, or `meshdrain gc`). `undrain` cancels what has not
/// cut over.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    #[allow(missing_docs)] // documented on `node::Args` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub common: super::node::Args,
    /// Print the placement the fleet would choose now and change nothing (exit 1 if a
    /// volume cannot be placed, 2 if the node is unknown).
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the drain until the node is drained: bars on a terminal, a line per change
    /// (or every few seconds) otherwise, JSON lines with --json.
    #[arg(long, conflicts_with = "no_wait")]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit 4; the drain goes on).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Option<Duration>,
    /// Hydration bandwidth per volume (e.g. 200M = 200 MiB/s); a later drain with another
    /// value changes it while volumes move.
    #[arg(long, alias = "rate", value_parser = parse_bytes, value_name = "BYTES_PER_S")]
    pub rate_limit: Option<u64>,
    /// How many volumes move at once (1 or more).
    #[arg(long, value_name = "N", value_parser = parse_parallel)]
    pub parallel: Option<u32>,
    /// Have each holder digest every byte it reads from this node, and this node check the
    /// digest against its own copy before it accepts `done` (and may delete). A mismatch
    /// keeps the copy here and fails the drain; a later drain without --verify accepts the
    /// holder's copy. Needs the userspace clone engine on holders (dm-clone copies inside
    /// the kernel, out of sight). Costs one sha256 pass over the volume on each side.
    /// With --wait the result of each check is printed.
    #[arg(long)]
    pub verify: bool,
}

/// `--parallel`: a count of 1 or more.
fn parse_parallel(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("0 would move nothing: give 1 or more".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count (e.g. 4)")),
    }
}

/// Runs the drain command.
pub async fn run(args: DrainArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        return dry_run(&args, control).await;
    }
    let options =
        DrainOptions { rate_limit: args.rate_limit, parallel: args.parallel, verify: args.verify, volume: None };
    if !args.wait {
        return super::node::request(NodeAction::Drain, &args.common, options, control).await;
    }
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    // Volumes failed before this request are retried by it: only a failure at a newer
    // epoch counts. Taken before the request, since the new failure may be seen at once.
    let retried = failed_epochs(&args.common.node, &mut client).await?;
    let report = super::node::publish(&mut client, NodeAction::Drain, &args.common, options).await?;
    super::follow::follow(&args, control, client, report, retried).await
}

/// The epoch of each of `node`'s volumes that is failed now.
async fn failed_epochs(node: &str, client: &mut Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
    Ok(volumes.into_iter().filter(|v| v.owner == node && v.phase == "failed").map(|v| (v.id, v.epoch)).collect())
}

async fn dry_run(args: &DrainArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let node = &args.common.node;
    let status: StatusReport = client.get(&Request::Status).await?;
    if !status.nodes.iter().any(|n| n.name == node.as_str()) {
        let known: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(anyhow::Error::new(Exit(USAGE)).context(format!(
            "no node named {node:?} in the fleet (known: {}); check the name with `meshdrain status`",
            known.join(", ")
        )));
    }
    let plan: Vec<PlanLine> = client.get(&Request::Plan { node: node.clone() }).await?;
    if args.common.json {
        println!("{}", serde_json::json!({ "node": node, "plan": plan }));
    } else {
        print!("{}", render_plan(node, &plan));
    }
    Ok(if plan.iter().all(|p| p.target.is_some()) { ExitCode::SUCCESS } else { ExitCode::from(FAILURE) })
}

/// The human form of a plan.
pub fn render_plan(node: &str, plan: &[PlanLine]) -> String {
    if plan.is_empty() {
        return format!("{node} owns no volumes: a drain would finish at once\n");
    }
    let mut out = format!("drain plan for {node} (dry run: nothing changed)\n");
    for p in plan {
        match &p.target {
            Some(t) => out.push_str(&format!("  {} ({}) -> {t}\n", p.volume, format_bytes(p.size))),
            None => out.push_str(&format!("  {} ({}) -> CANNOT BE PLACED\n", p.volume, format_bytes(p.size))),
        }
        for (n, why) in &p.rejected {
            out.push_str(&format!("      not {n}: {why}\n"));
        }
    }
    out
}

/// Why no node takes a volume, from a plan line: `no eligible target: node2 is cordoned,
/// node3 is dead`.
pub fn no_target_note(line: &PlanLine) -> Option<String> {
    if line.target.is_some() {
        return None;
    }
    let why: Vec<String> = line.rejected.iter().map(|(n, why)| format!("{n} {why}")).collect();
    Some(if why.is_empty() {
        "no eligible target: no other node in the fleet".to_owned()
    } else {
        format!("no eligible target: {}", why.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: DrainArgs,
    }

    #[test]
    fn flags_that_cannot_work_are_refused() {
        let err = T::try_parse_from(["t", "node2", "--parallel", "0"]).err().unwrap();
        assert!(err.to_string().contains("0 would move nothing: give 1 or more"), "{err}");
        let err = T::try_parse_from(["t", "node2", "--wait", "--no-wait"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let ok = T::try_parse_from(["t", "node2", "--rate", "2M", "--parallel", "3"]).unwrap();
        assert_eq!((ok.args.rate_limit, ok.args.parallel), (Some(2 << 20), Some(3)));
    }

    #[test]
    fn a_volume_nobody_can_take_says_why() {
        let line = PlanLine {
            volume: "v1".into(),
            size: 1,
            target: None,
            rejected: vec![("node2".into(), "is cordoned".into()), ("node3".into(), "is cordoned".into())],
        };
        assert_eq!(no_target_note(&line).unwrap(), "no eligible target: node2 is cordoned, node3 is cordoned");
    }
}
