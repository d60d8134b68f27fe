//! `meshdrain undrain <node> [--return]`: cancel a drain and, with `--return`, move back
//! every volume that left the node (docs/return.md). Each return is a `volume move <id>
//! --to <node>` with the `return` flag, sent to the volume's owner; where the node kept its
//! copy and the owner's clone engine tracked the workload's writes, only those are copied.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::ControlTarget;
use super::exit::{DEADLINE, FAILURE};
use super::node::{self, Outcome};
use super::units::format_bytes;
use crate::api::{Request, VolumeStatus};
use crate::control::client::Client;
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::moves::VolumeMove;
use crate::decide::node::NodeAction;
use crate::decide::request::DrainOptions;

/// Examples and exit codes shown at the end of `meshdrain undrain --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain undrain node3                     # volumes not cut over stay on node3; the rest stay moved
  meshdrain undrain node3 --return --dry-run  # which volumes would come back, delta or full, and why
  meshdrain undrain node3 --return --wait     # bring them back; per volume: delta or full, bytes copied
  meshdrain undrain node3 --return --volume db1 --json

Exit codes: 0 adopted by the node (with --return --wait: every volume back); 1 refused, not
adopted within --timeout, a volume that never left the node named with --volume, or a
return refused or failed; 2 usage error; 3 agent unreachable; 4 --deadline passed (the
returns go on).";

/// Arguments of `undrain`.
#[derive(Debug, clap::Args)]
pub struct UndrainArgs {
    #[allow(missing_docs)] // documented on `node::Args` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub common: node::Args,
    /// Also move back every volume that left the node by its drain. Where the node still
    /// holds the copy it handed off (within the retention window) and the volume's owner
    /// tracked the workload's writes since (the userspace clone engine does), only the
    /// regions written since are copied; otherwise it is a full move, and the command says
    /// why, per volume.
    #[arg(long = "return")]
    pub returning: bool,
    /// With --return: only this volume (repeatable); one that never left the node is refused.
    #[arg(long = "volume", value_name = "VOLUME", requires = "returning")]
    pub volumes: Vec<VolumeId>,
    /// With --return: print which volumes would come back, delta or full and why, and
    /// change nothing.
    #[arg(long, requires = "returning")]
    pub dry_run: bool,
    /// With --return: follow each return until the volume is back, then print the bytes
    /// it copied.
    #[arg(long, requires = "returning")]
    pub wait: bool,
    /// With --return: each owner checks the digest of what came back against its copy
    /// before it lets go (see `meshdrain drain --help`); the regions the node kept count,
    /// read from its copy.
    #[arg(long, requires = "returning")]
    pub verify: bool,
    /// With --wait: give up waiting after this long (exit 4; the returns go on).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "wait")]
    pub deadline: Option<Duration>,
}

/// One volume to bring back, as planned from the fleet's view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Return {
    /// The volume.
    pub volume: String,
    /// Its owner now (it left the node for it).
    pub from: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its lease epoch now: the return's offer comes after it.
    #[serde(skip)]
    pub epoch: u64,
    /// `delta` (the node kept its copy: only what was written since is copied, if the
    /// owner tracked it) or `full`.
    pub mode: &'static str,
    /// Why a full move.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The returns for `node`: every volume that arrived elsewhere from it (only those named
/// in `only`, when given), and the named volumes that never left it, refused by name.
pub fn plan(node: &str, volumes: &[VolumeStatus], only: &[VolumeId]) -> (Vec<Return>, Vec<String>) {
    let left = |v: &&VolumeStatus| v.owner != node && v.arrived_from.as_deref() == Some(node);
    let mut refused = Vec::new();
    for id in only {
        match volumes.iter().find(|v| v.id == id.as_str()) {
            None => refused.push(format!("volume {id}: no volume of that name in the fleet")),
            Some(v) if v.owner == node => refused.push(format!("volume {id} is on {node} already")),
            Some(v) if !left(&v) => refused.push(format!(
                "volume {id} never left {node}: it is on {}, {}",
                v.owner,
                v.arrived_from
                    .as_ref()
                    .map_or_else(|| "where it was created".to_owned(), |f| format!("arrived from {f}"))
            )),
            Some(_) => {}
        }
    }
    let returns = volumes
        .iter()
        .filter(left)
        .filter(|v| only.is_empty() || only.iter().any(|o| o.as_str() == v.id))
        .map(|v| {
            let kept = v.source_phase.as_deref() == Some("handed_off");
            Return {
                volume: v.id.clone(),
                from: v.owner.clone(),
                size: v.size,
                epoch: v.epoch,
                mode: if kept { "delta" } else { "full" },
                reason: (!kept)
                    .then(|| format!("{node} no longer holds a copy (deleted by gc or after the retention window)")),
            }
        })
        .collect();
    (returns, refused)
}

/// The human line of one planned return.
pub fn describe(node: &str, r: &Return) -> String {
    match &r.reason {
        None => format!(
            "{}: on {}, returning to {node}: delta ({node} kept its copy; only the regions written since are copied if {}'s clone tracked them, else a full move)",
            r.volume, r.from, r.from
        ),
        Some(why) => format!("{}: on {}, returning to {node}: full move: {why}", r.volume, r.from),
    }
}

/// Runs `undrain`.
pub async fn run(args: UndrainArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    if !args.returning {
        return node::run(NodeAction::Undrain, args.common, control).await;
    }
    let node = args.common.node.clone();
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
    let (returns, refused) = plan(node.as_str(), &volumes, &args.volumes);
    if args.dry_run {
        if args.common.json {
            println!("{}", json!({ "node": node, "returns": returns, "refused": refused }));
        } else {
            print_plan(node.as_str(), &returns, &refused);
        }
        return Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(FAILURE) });
    }
    let report = node::publish(&mut client, NodeAction::Undrain, &args.common, DrainOptions::default()).await?;
    let mut outcome = Outcome::from_report(&report);
    if !report.applied && !args.common.no_wait {
        node::wait_adopted(&mut client, &mut outcome, &args.common).await?;
    }
    let mut results: Vec<serde_json::Value> = Vec::new();
    let mut failed = !refused.is_empty() || outcome.rejected.is_some();
    let mut sent = Vec::new();
    for r in &returns {
        match send_return(&mut client, &args, &node, r).await? {
            Ok(()) => sent.push(r.clone()),
            Err(why) => {
                failed = true;
                results.push(json!({ "volume": r.volume, "from": r.from, "result": "refused", "error": why }));
            }
        }
    }
    if !args.common.json {
        println!("{}", node::describe(&outcome, &args.common));
        print_plan(node.as_str(), &sent, &refused);
        for r in &results {
            println!("{}: return refused by {}: {}", r["volume"].as_str().unwrap_or(""), r["from"], r["error"]);
        }
    }
    let mut code = if failed { FAILURE } else { 0 };
    if args.wait {
        let (followed, c) = follow(&mut client, &args, node.as_str(), &sent).await?;
        results.extend(followed);
        code = code.max(c);
    } else {
        results.extend(sent.iter().map(
            |r| json!({ "volume": r.volume, "from": r.from, "result": "sent", "mode": r.mode, "reason": r.reason }),
        ));
    }
    if args.common.json {
        println!("{}", json!({ "node": node, "undrain": outcome, "returns": results, "refused": refused }));
    }
    Ok(ExitCode::from(code))
}

fn print_plan(node: &str, returns: &[Return], refused: &[String]) {
    if returns.is_empty() && refused.is_empty() {
        println!("{node}: no volume left it: nothing to return");
    }
    for r in returns {
        println!("{}", describe(node, r));
    }
    for why in refused {
        println!("refused: {why}");
    }
}

/// Sends one return (a move request with the `return` flag) to the volume's owner and
/// waits until it adopts it. `Ok(Err(why))`: the owner refused it.
async fn send_return(
    client: &mut Client,
    args: &UndrainArgs,
    node: &NodeName,
    r: &Return,
) -> anyhow::Result<Result<(), String>> {
    let mv = VolumeMove {
        volume: r.volume.parse()?,
        to: Some(node.clone()),
        requires: Default::default(),
        cancel: false,
        returning: true,
    };
    let options = DrainOptions { volume: Some(mv), verify: args.verify, ..Default::default() };
    let owner_args = node::Args {
        node: r.from.parse()?,
        force: false,
        no_wait: false,
        timeout: args.common.timeout,
        json: args.common.json,
        control: super::ControlArg { control: args.common.control.control.clone() },
    };
    let report = node::publish(client, NodeAction::Move, &owner_args, options).await?;
    let mut outcome = Outcome::from_report(&report);
    // One issuer has one request per node at a time: wait for this one before the next.
    if !report.applied {
        node::wait_adopted(client, &mut outcome, &owner_args).await?;
    }
    Ok(match (outcome.adopted, outcome.rejected) {
        (_, Some(why)) => Err(why),
        (true, None) => Ok(()),
        (false, None) => Err(format!("{} did not adopt the return within {:?}", r.from, args.common.timeout)),
    })
}

/// `--wait`: follows every return until its volume is owned by `node` again, and says per
/// volume delta or full and the bytes copied (what the node read from the owner).
async fn follow(
    client: &mut Client,
    args: &UndrainArgs,
    node: &str,
    sent: &[Return],
) -> anyhow::Result<(Vec<serde_json::Value>, u8)> {
    let started = Instant::now();
    let mut modes: Vec<Option<String>> = vec![None; sent.len()];
    let mut done: Vec<Option<serde_json::Value>> = vec![None; sent.len()];
    let mut code = 0;
    while done.iter().any(Option::is_none) {
        let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
        for (i, r) in sent.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let Some(v) = volumes.iter().find(|v| v.id == r.volume) else { continue };
            // A full move seen once (the owner's or the returning node's word) stays full.
            if let Some(m) = &v.return_mode
                && !modes[i].as_deref().is_some_and(|seen| seen.starts_with("full: "))
            {
                modes[i] = Some(m.clone());
            }
            if let Some(crate::api::VolumeFault::VerifyFailed { .. }) = &v.error {
                let why = v.error.as_ref().map(ToString::to_string).unwrap_or_default();
                if !args.common.json {
                    println!("{}: back on {node} but {} keeps its copy: --verify mismatch: {why}", r.volume, r.from);
                }
                done[i] = Some(json!({ "volume": r.volume, "from": r.from, "result": "verify_failed", "error": why }));
                code = FAILURE;
                continue;
            }
            let released = matches!(v.source_phase.as_deref(), None | Some("handed_off" | "deleted"));
            if v.owner == node && v.epoch > r.epoch && v.phase == "held" && released {
                let planned = r.reason.as_ref().map_or_else(|| "delta".to_owned(), |why| format!("full: {why}"));
                // Back here, the volume's arrival says what its holder used (docs/return.md):
                // that, else the last word seen during the move, else the plan.
                let mode = match (&v.return_mode, &modes[i]) {
                    (Some(used), _) => used.clone(),
                    (None, Some(m)) if r.reason.is_none() || m.starts_with("full: ") => m.clone(),
                    _ => planned,
                };
                let (kind, reason) = match mode.strip_prefix("full: ") {
                    Some(why) => ("full", Some(why.to_owned())),
                    None => ("delta", None),
                };
                let fetched = v.hydration.fetched_bytes;
                let pct = if r.size > 0 { fetched as f64 * 100.0 / r.size as f64 } else { 0.0 };
                if !args.common.json {
                    let how = reason.as_ref().map_or_else(|| "delta".to_owned(), |w| format!("full move ({w})"));
                    println!(
                        "{}: back on {node} in {:.1?}: {how}, copied {} of {} ({pct:.1} %)",
                        r.volume,
                        started.elapsed(),
                        format_bytes(fetched),
                        format_bytes(r.size)
                    );
                }
                done[i] = Some(json!({ "volume": r.volume, "from": r.from, "result": "returned", "mode": kind,
                    "reason": reason, "fetched_bytes": fetched, "size": r.size, "verified": args.verify.then_some(true) }));
            } else if v.owner == r.from && v.phase == "failed" && v.epoch > r.epoch {
                let why = v.error.as_ref().map_or_else(|| "no reason given".to_owned(), ToString::to_string);
                if !args.common.json {
                    println!("{}: return failed on {}: {why}", r.volume, r.from);
                }
                done[i] = Some(json!({ "volume": r.volume, "from": r.from, "result": "failed", "error": why }));
                code = FAILURE;
            }
        }
        if let Some(d) = args.deadline.filter(|d| started.elapsed() > *d) {
            for (i, r) in sent.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                if !args.common.json {
                    println!("{}: deadline of {} passed; the return goes on", r.volume, humantime::format_duration(d));
                }
                done[i] = Some(json!({ "volume": r.volume, "from": r.from, "result": "deadline" }));
            }
            code = code.max(DEADLINE);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((done.into_iter().flatten().collect(), code))
}

#[cfg(test)]
#[path = "undrain_tests.rs"]
mod tests;
