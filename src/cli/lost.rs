//! `meshdrain node lost <node>` and `meshdrain partial accept|delete <volume>`: what an
//! operator does when a node is gone for good (docs/failures.md).

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;

use super::exit::{Exit, FAILURE};
use super::{ControlArg, ControlTarget};
use crate::api::{LostReport, Request};
use crate::control::client::Client;
use crate::decide::core::PartialVerdict;
use crate::decide::model::{NodeName, VolumeId};

/// Examples shown by `meshdrain node lost --help`.
pub const LOST_EXAMPLES: &str = "\
Examples:
  meshdrain node lost node3 --dry-run           what declaring node3 lost would do
  meshdrain node lost node3                     declare it (refused while it is alive, or if it would lose writes)
  meshdrain node lost node3 --accept-data-loss  declare it; volumes cut over to it go back to their sources
  meshdrain node lost node3 --force             declare it although gossip still sees it (a partition for good)";

/// Examples shown by `meshdrain partial --help` and its subcommands.
pub const PARTIAL_EXAMPLES: &str = "\
Examples:
  meshdrain volume list                              an incomplete copy: `incomplete: source lost, N of M regions missing`
  meshdrain partial accept db --accept-data-loss     keep it as the volume (missing regions read as zeros)
  meshdrain partial delete db --yes                  delete it";

/// `meshdrain node ...`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Declare a node gone for good: the fleet re-places what it can and fences the node if it comes back.
    #[command(after_help = LOST_EXAMPLES)]
    Lost(LostArgs),
}

/// `meshdrain node lost` arguments.
#[derive(Debug, clap::Args)]
pub struct LostArgs {
    /// The node (its configured name; see `meshdrain status`).
    pub node: NodeName,
    /// Declare it even while gossip shows it alive (or has never seen it).
    #[arg(long)]
    pub force: bool,
    /// Accept that the writes made on it since a volume was cut over to it are gone: the
    /// source's copy from before the cut-over becomes the volume again.
    #[arg(long)]
    pub accept_data_loss: bool,
    /// Print what the declaration would do; declare nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // documented on `ControlArg`
    #[command(flatten)]
    pub control: ControlArg,
}

/// `meshdrain partial ...`: an incomplete copy (its source was declared lost mid-hydration).
#[derive(Debug, clap::Subcommand)]
pub enum PartialCommand {
    /// Keep the incomplete copy on this node as the volume: its missing regions read as zeros.
    #[command(after_help = PARTIAL_EXAMPLES)]
    Accept(AcceptArgs),
    /// Delete the incomplete copy on this node.
    #[command(after_help = PARTIAL_EXAMPLES)]
    Delete(DeleteArgs),
}

/// `meshdrain partial accept` arguments.
#[derive(Debug, clap::Args)]
pub struct AcceptArgs {
    /// The volume (see `meshdrain volume list`: `incomplete: source lost, ...`).
    pub volume: VolumeId,
    /// Required: the regions the lost source never sent become zeros.
    #[arg(long)]
    pub accept_data_loss: bool,
    #[allow(missing_docs)] // documented on `ControlArg`
    #[command(flatten)]
    pub control: ControlArg,
}

/// `meshdrain partial delete` arguments.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The volume (see `meshdrain volume list`).
    pub volume: VolumeId,
    /// Required: the copy is removed.
    #[arg(long)]
    pub yes: bool,
    #[allow(missing_docs)] // documented on `ControlArg`
    #[command(flatten)]
    pub control: ControlArg,
}

impl NodeCommand {
    /// The `--control` given to the subcommand.
    pub fn control(&self) -> &Option<std::path::PathBuf> {
        match self {
            NodeCommand::Lost(a) => &a.control.control,
        }
    }
}

impl PartialCommand {
    /// The `--control` given to the subcommand.
    pub fn control(&self) -> &Option<std::path::PathBuf> {
        match self {
            PartialCommand::Accept(a) => &a.control.control,
            PartialCommand::Delete(a) => &a.control.control,
        }
    }
}

/// Runs `meshdrain node ...`.
pub async fn run_node(cmd: NodeCommand, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let NodeCommand::Lost(args) = cmd;
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let req = Request::NodeLost {
        node: args.node.clone(),
        force: args.force,
        accept_data_loss: args.accept_data_loss,
        dry_run: args.dry_run,
    };
    let report: LostReport = client.get(&req).await.map_err(super::unreachable)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// A time in ms since the epoch, as the operator reads it.
pub fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The text `node lost` prints.
pub fn render(r: &LostReport) -> String {
    let node = &r.node;
    let mut out = if r.declared {
        format!("node {node} declared lost; every agent learns it through gossip and keeps it\n")
    } else {
        format!("dry run: declaring node {node} lost would do this (nothing declared)\n")
    };
    let e = &r.effects;
    for w in &e.would_lose {
        out.push_str(&format!(
            "  {}: back to {} (its copy from the cut-over at {}); the writes made on {node} since are gone\n",
            w.volume,
            w.source,
            when(w.cut_over_at_ms)
        ));
    }
    for (volume, holder, missing, total) in &e.incomplete {
        out.push_str(&format!(
            "  {volume}: incomplete on {holder}, {missing} of {total} regions missing; on {holder} run \
             `meshdrain partial accept {volume} --accept-data-loss` or `meshdrain partial delete {volume} --yes`\n"
        ));
    }
    for volume in &e.revoked {
        out.push_str(&format!("  {volume}: granted to {node} before cut-over: offered again to a live node\n"));
    }
    for volume in &e.unavailable {
        out.push_str(&format!("  {volume}: its only copy is on {node}: unavailable until {node} comes back\n"));
    }
    if e.would_lose.is_empty() && e.incomplete.is_empty() && e.revoked.is_empty() && e.unavailable.is_empty() {
        out.push_str("  no volume is affected\n");
    }
    out.push_str(&format!(
        "if {node} comes back it is fenced: it starts no workload, its copies are set aside until `meshdrain gc`\n"
    ));
    out
}

/// Runs `meshdrain partial ...`.
pub async fn run_partial(cmd: PartialCommand, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let (volume, verdict, consent) = match cmd {
        PartialCommand::Accept(a) => (a.volume, PartialVerdict::Accept, a.accept_data_loss),
        PartialCommand::Delete(a) => (a.volume, PartialVerdict::Delete, a.yes),
    };
    let volume = &volume;
    match verdict {
        PartialVerdict::Accept if !consent => {
            return Err(anyhow::Error::new(Exit(FAILURE)).context(format!(
                "keeping the partial copy of {volume} makes every region its lost source never sent read as zeros: \
                 pass --accept-data-loss to keep it"
            )));
        }
        PartialVerdict::Delete if !consent => {
            return Err(anyhow::Error::new(Exit(FAILURE)).context(format!(
                "deleting the partial copy of {volume} removes what is left of it on this node: pass --yes to delete it"
            )));
        }
        _ => {}
    }
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let message: String =
        client.get(&Request::Partial { volume: volume.clone(), verdict }).await.map_err(super::unreachable)?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::lost::{LossReport, WouldLose};

    #[test]
    fn the_report_names_each_volume_and_what_happens_to_it() {
        let r = LostReport {
            node: "n2".parse().unwrap(),
            declared: true,
            accept_data_loss: true,
            effects: LossReport {
                would_lose: vec![WouldLose {
                    volume: "db".parse().unwrap(),
                    source: "n1".parse().unwrap(),
                    epoch: 3,
                    cut_over_at_ms: 1_764_990_000_000,
                    holder_phase: Some("running".into()),
                    hydrated: Some((4, 16)),
                }],
                incomplete: vec![],
                unavailable: vec!["logs".parse().unwrap()],
                revoked: vec![],
            },
        };
        assert_eq!(
            render(&r),
            "node n2 declared lost; every agent learns it through gossip and keeps it\n\
             \x20 db: back to n1 (its copy from the cut-over at 2025-12-06T03:00:00Z); the writes made on n2 since are gone\n\
             \x20 logs: its only copy is on n2: unavailable until n2 comes back\n\
             if n2 comes back it is fenced: it starts no workload, its copies are set aside until `meshdrain gc`\n"
        );
    }
}
