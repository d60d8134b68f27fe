//! `meshdrain volume move <volume>`: the drain's lease, export, clone and hand-off for one
//! volume, while its node stays `active` (src/decide/moves.rs). Run on any node: the
//! request travels through gossip to the volume's owner, like a node action.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use super::ControlTarget;
use super::drain::{no_target_note, render_plan};
use super::exit::{DEADLINE, FAILURE, USAGE};
use super::follow::{Sink, VolumeLines, fetch, finish};
use super::units::parse_bytes;
use crate::api::{ActionReport, PlanLine, Request, VolumeFault, VolumeStatus};
use crate::control::client::Client;
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::moves::VolumeMove;
use crate::decide::node::NodeAction;
use crate::decide::request::DrainOptions;

/// Examples and exit codes shown at the end of `meshdrain volume move --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain volume move db1 --dry-run              # where it would go, and why not elsewhere
  meshdrain volume move db1 --to node4 --wait      # node4 only; follow it until handed off
  meshdrain volume move db1 --require zone=b --rate-limit 200M --wait --json
  meshdrain volume move db1 --cancel               # before cut-over: db1 stays where it is

Exit codes: 0 moved (with --wait), or adopted by the owner (without); 1 refused, failed,
cancelled, or --dry-run finds no eligible node; 2 usage error or an unknown volume;
3 agent unreachable; 4 --deadline passed (the move goes on).";

/// Move one volume to another node; its node stays active and keeps its other volumes.
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// The volume (see `meshdrain volume list`).
    pub volume: VolumeId,
    /// The node that must take it (it must be eligible: active, alive, labels, room).
    #[arg(long, conflicts_with = "cancel")]
    pub to: Option<NodeName>,
    /// A label the target must carry for this move (repeatable): `--require zone=b`.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = super::volume::parse_label)]
    pub requires: Vec<(String, String)>,
    /// Cancel the move under way (refused once it has cut over).
    #[arg(long)]
    pub cancel: bool,
    /// Print where it would go now and change nothing.
    #[arg(long, conflicts_with = "cancel")]
    pub dry_run: bool,
    /// Follow the move until the volume is handed off.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit 4; the move goes on).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Option<Duration>,
    /// Hydration bandwidth (e.g. 200M = 200 MiB/s).
    #[arg(long, alias = "rate", value_parser = parse_bytes, value_name = "BYTES_PER_S")]
    pub rate_limit: Option<u64>,
    /// The owner checks the holder's digest against its copy before it lets go (see
    /// `meshdrain drain --help`).
    #[arg(long)]
    pub verify: bool,
    /// How long to wait for the owner to adopt the request (without --wait).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub control: super::ControlArg,
}

/// Runs `volume move`.
pub async fn run(args: MoveArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
    let Some(vol) = volumes.iter().find(|v| v.id == args.volume.as_str()) else {
        let known: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
        return Err(anyhow::Error::new(super::exit::Exit(USAGE)).context(format!(
            "no volume named {:?} in the fleet (known: {}); check the name with `meshdrain volume list`",
            args.volume.as_str(),
            known.join(", ")
        )));
    };
    let owner: NodeName = vol.owner.parse()?;
    if let Some(to) = &args.to {
        let status: crate::api::StatusReport = client.get(&Request::Status).await?;
        if !status.nodes.iter().any(|n| n.name == to.as_str()) {
            let known: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(anyhow::Error::new(super::exit::Exit(USAGE)).context(format!(
                "--to {to}: no node of that name in the fleet (known: {}); check it with `meshdrain status`",
                known.join(", ")
            )));
        }
    }
    let requires = args.requires.iter().cloned().collect();
    if args.dry_run {
        let req = Request::MovePlan { volume: args.volume.clone(), to: args.to.clone(), requires };
        let plan: Vec<PlanLine> = client.get(&req).await?;
        if args.json {
            println!("{}", json!({ "volume": args.volume, "owner": owner, "plan": plan }));
        } else {
            print!("{}", render_plan(&owner, &plan).replace("drain plan for", "move plan for a volume of"));
            if let Some(note) = plan.first().and_then(no_target_note) {
                println!("  {note}");
            }
        }
        return Ok(if plan.iter().all(|p| p.target.is_some()) { ExitCode::SUCCESS } else { ExitCode::from(FAILURE) });
    }
    let mv = VolumeMove {
        volume: args.volume.clone(),
        to: args.to.clone(),
        requires,
        cancel: args.cancel,
        returning: false,
    };
    let options = DrainOptions { rate_limit: args.rate_limit, parallel: None, verify: args.verify, volume: Some(mv) };
    let node_args = super::node::Args {
        node: owner.clone(),
        force: false,
        no_wait: false,
        timeout: args.timeout,
        json: args.json,
        control: super::ControlArg { control: args.control.control.clone() },
    };
    if !args.wait || args.cancel {
        return super::node::request(NodeAction::Move, &node_args, options, control).await;
    }
    let report = super::node::publish(&mut client, NodeAction::Move, &node_args, options).await?;
    follow(&args, &owner, vol.epoch, control, client, report).await
}

/// `--wait`: follows the volume until it is owned by another node, with drain's progress
/// lines ([`super::follow`]).
async fn follow(
    args: &MoveArgs,
    source: &NodeName,
    epoch: u64,
    control: &ControlTarget,
    mut client: Client,
    report: ActionReport,
) -> anyhow::Result<ExitCode> {
    let id = args.volume.as_str();
    let started = Instant::now();
    let mut sink = Sink::new(args.json, id);
    let end = |sink: Sink, result: &str, code: u8, text: String, extra: serde_json::Value| {
        let head = json!({ "volume": id, "from": source, "result": result });
        finish(sink, args.json, started, head, code, &text, extra)
    };
    if let Some(why) = &report.rejected {
        return end(sink, "refused", FAILURE, format!("{id}: move refused: {why}"), json!({ "error": why }));
    }
    let mut adopted = report.applied;
    sink.event(
        json!({ "event": "published", "volume": id, "owner": source, "nonce": report.nonce, "adopted": adopted }),
        &format!("{id}: move request {} sent to {source}", report.nonce),
    );
    let mut lines = VolumeLines::default();
    let mut plan: Vec<PlanLine> = vec![];
    loop {
        let Ok((status, volumes)) = fetch(&mut client).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(c) = Client::connect(&control.socket).await {
                client = c;
            }
            continue;
        };
        let n = status.nodes.iter().find(|n| n.name == source.as_str());
        if !adopted && let Some(last) = n.and_then(|n| n.last_request.as_ref()).filter(|l| l.nonce == report.nonce) {
            adopted = true;
            if let Some(why) = &last.rejected {
                return end(sink, "refused", FAILURE, format!("{id}: move refused: {why}"), json!({ "error": why }));
            }
            sink.event(json!({ "event": "adopted", "volume": id }), &format!("{id}: moving (adopted by {source})"));
        }
        let Some(v) = volumes.iter().find(|v| v.id == id) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(VolumeFault::VerifyFailed { .. }) = &v.error {
            let why = v.error.as_ref().map(VolumeFault::to_string).unwrap_or_default();
            let text = format!("{id}: runs on {} but the copy on {source} is kept: --verify mismatch: {why}", v.owner);
            return end(sink, "verify_failed", FAILURE, text, json!({ "on": v.owner, "error": why }));
        }
        // Over once the source let go: after `done` (and its --verify check, if asked).
        let released = matches!(v.source_phase.as_deref(), None | Some("handed_off" | "deleted"));
        if v.owner != source.as_str() && v.epoch > epoch && v.phase == "held" && released {
            let mut text = format!("{id}: moved {source} -> {} in {:.1?}", v.owner, started.elapsed());
            if args.verify {
                text.push_str(&format!("; verified, the holder's digest matches {source}'s copy"));
            }
            return end(sink, "moved", 0, text, json!({ "to": v.owner, "verified": args.verify.then_some(true) }));
        }
        if adopted && v.owner == source.as_str() && v.phase == "failed" && v.epoch > epoch {
            let why = v.error.as_ref().map_or_else(|| "no reason given".to_owned(), VolumeFault::to_string);
            let text = format!("{id}: move failed: {why} (fix it, then move it again to retry, or --cancel)");
            return end(sink, "failed", FAILURE, text, json!({ "error": why }));
        }
        if adopted && v.owner == source.as_str() && v.phase == "held" && v.epoch > epoch {
            let text = format!("{id}: the move was cancelled; it stays on {source}");
            return end(sink, "cancelled", FAILURE, text, json!({}));
        }
        if v.phase == "offered" && v.holder.is_none() {
            let requires = args.requires.iter().cloned().collect();
            let req = Request::MovePlan { volume: args.volume.clone(), to: args.to.clone(), requires };
            plan = client.get(&req).await.unwrap_or_default();
        }
        lines.show(&mut sink, v, &plan, Instant::now());
        if let Some(d) = args.deadline.filter(|d| started.elapsed() > *d) {
            let text = format!(
                "{id}: deadline of {} passed; the move goes on (`meshdrain volume move {id} --cancel` stops it before cut-over)",
                humantime::format_duration(d)
            );
            return end(sink, "deadline", DEADLINE, text, json!({}));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
