//! `meshdrain drain <node>`: plan, request and follow a drain from any node.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::ControlTarget;
use super::exit::{DEADLINE, FAILURE};
use super::units::{format_bytes, parse_bytes};
use crate::api::{PlanLine, Request, StatusReport, VolumeFault, VolumeStatus};
use crate::control::client::Client;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;

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
    /// volume cannot be placed).
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the drain with a progress bar per volume; exit 0 once the node is drained.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit 4; the drain goes on).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Option<Duration>,
    /// Hydration bandwidth per volume (e.g. 200M = 200 MiB/s); a later drain with another
    /// value changes it while volumes move.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES_PER_S")]
    pub rate_limit: Option<u64>,
    /// How many volumes move at once.
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Have each holder digest every byte it reads from this node, and this node check the
    /// digest against its own copy before it accepts `done` (and may delete). A mismatch
    /// keeps the copy here and fails the drain; a later drain without --verify accepts the
    /// holder's copy. Needs the userspace clone engine on holders (dm-clone copies inside
    /// the kernel, out of sight). Costs one sha256 pass over the volume on each side.
    #[arg(long)]
    pub verify: bool,
}

/// Runs the drain command.
pub async fn run(args: DrainArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        return dry_run(&args, control).await;
    }
    let options = DrainOptions { rate_limit: args.rate_limit, parallel: args.parallel, verify: args.verify };
    // Volumes failed before this request are retried by it: only a failure at a newer
    // epoch counts. Taken before the request, since the new failure may be seen at once.
    let retried = if args.wait { failed_epochs(&args.common.node, control).await? } else { BTreeMap::new() };
    let code = super::node::request(NodeAction::Drain, &args.common, options, control).await?;
    if !args.wait || code != ExitCode::SUCCESS {
        return Ok(code);
    }
    follow(&args, control, retried).await
}

/// The epoch of each of `node`'s volumes that is failed now.
async fn failed_epochs(node: &str, control: &ControlTarget) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
    Ok(volumes.into_iter().filter(|v| v.owner == node && v.phase == "failed").map(|v| (v.id, v.epoch)).collect())
}

async fn dry_run(args: &DrainArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let plan: Vec<PlanLine> = client.get(&Request::Plan { node: args.common.node.clone() }).await?;
    if args.common.json {
        println!("{}", serde_json::json!({ "node": args.common.node, "plan": plan }));
    } else {
        print!("{}", render_plan(&args.common.node, &plan));
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

/// Shows per-volume progress until the node is drained, a volume fails, or the deadline.
async fn follow(args: &DrainArgs, control: &ControlTarget, retried: BTreeMap<String, u64>) -> anyhow::Result<ExitCode> {
    let node = &args.common.node;
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let started = Instant::now();
    let bars = MultiProgress::new();
    if args.common.json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {percent:>3}% {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    loop {
        let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
        let status: StatusReport = client.get(&Request::Status).await?;
        let state = status.nodes.iter().find(|n| &n.name == node).and_then(|n| n.state);
        let mine: Vec<&VolumeStatus> = volumes.iter().filter(|v| &v.owner == node).collect();
        for v in &mine {
            let bar = shown.entry(v.id.clone()).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(1));
                b.set_style(style.clone());
                b.set_prefix(v.id.clone());
                b
            });
            bar.set_length(v.hydration.total.max(1));
            bar.set_position(v.hydration.hydrated);
            bar.set_message(volume_message(v));
        }
        if state == Some(NodeState::Drained) {
            for b in shown.values() {
                b.finish_with_message("handed off");
            }
            println!("{node}: drained in {:.1?}", started.elapsed());
            return Ok(ExitCode::SUCCESS);
        }
        if state != Some(NodeState::Draining) && state.is_some() {
            println!("{node}: {} (the drain was cancelled)", state.map_or("?".into(), |s| s.to_string()));
            return Ok(ExitCode::from(FAILURE));
        }
        if let Some(failed) =
            mine.iter().find(|v| v.phase == "failed" && retried.get(&v.id).is_none_or(|e| v.epoch > *e))
        {
            eprintln!(
                "{node}: volume {} failed: {} (fix it, then run `meshdrain drain {node}` again to retry)",
                failed.id,
                failed.error.as_ref().map_or_else(|| "no reason given".to_owned(), VolumeFault::to_string)
            );
            return Ok(ExitCode::from(FAILURE));
        }
        // After `done` the holder owns the volume; a failed check shows on its line.
        let verify_failed = |v: &&VolumeStatus| {
            v.arrived_from.as_deref() == Some(node.as_str())
                && matches!(v.error, Some(VolumeFault::VerifyFailed { .. }))
        };
        if let Some(bad) = volumes.iter().find(verify_failed) {
            eprintln!(
                "{node}: volume {} runs on {} but the copy on {node} is kept: {}",
                bad.id,
                bad.owner,
                bad.error.as_ref().map(VolumeFault::to_string).unwrap_or_default()
            );
            return Ok(ExitCode::from(FAILURE));
        }
        if args.deadline.is_some_and(|d| started.elapsed() > d) {
            eprintln!(
                "{node}: deadline of {} passed; the drain goes on (`meshdrain undrain {node}` cancels what has not cut over)",
                humantime::format_duration(args.deadline.unwrap_or_default())
            );
            return Ok(ExitCode::from(DEADLINE));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn volume_message(v: &VolumeStatus) -> String {
    let eta = if v.hydration.bytes_per_s > 0 && v.hydration.total > 0 {
        let left =
            v.size.saturating_mul(v.hydration.total - v.hydration.hydrated.min(v.hydration.total)) / v.hydration.total;
        format!(" eta {}", humantime::format_duration(Duration::from_secs(left / v.hydration.bytes_per_s)))
    } else {
        String::new()
    };
    let who = v.holder.as_deref().map(|h| format!(" -> {h}")).unwrap_or_default();
    let phase = v.holder_phase.as_deref().unwrap_or(&v.phase);
    let note = if v.stranded {
        " STRANDED"
    } else if v.stalled {
        " STALLED"
    } else {
        ""
    };
    format!("{phase}{who} {}/s{eta}{note}", format_bytes(v.hydration.bytes_per_s))
}
