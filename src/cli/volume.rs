//! `meshdrain volume create|add|list` and `meshdrain gc`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::progress::{Moved, NodeProgress, is_moving};
use super::units::{format_bytes, format_rate, parse_bytes};
use super::{ControlArg, ControlTarget};
use crate::api::{NewVolume, Request, VolumeFault, VolumeStatus};
use crate::control::client::Client;
use crate::decide::model::{Hooks, VolumeId};

/// Examples shown at the end of `meshdrain volume --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain volume create db1 --size 20G --hook-start unit:postgresql@db1.service
  meshdrain volume add logs --path /dev/nvme1n1p3 --json
  meshdrain volume list";

/// Examples shown at the end of `meshdrain gc --help`.
pub const GC_EXAMPLES: &str = "\
Examples:
  meshdrain gc      # \"deleted 2 handed-off copies (3.1 GiB on disk): db1, logs\" or \"nothing to delete\"

Handed-off copies are otherwise deleted when `[gc] retention` (default \"24h\") has passed
since `done`; copies set aside when this node was declared lost only by gc.";

/// Volume commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a new volume on this node: a sparse file in the pool directory.
    #[command(after_help = "\
Examples:
  meshdrain volume create db1 --size 20G --require zone=a
  meshdrain volume create db1 --size 20G --hook-stop unit:postgresql@db1.service \\
      --hook-start 'mount $MESHDRAIN_DEVICE /srv/db1 && systemctl start postgresql@db1'
  meshdrain volume create db1 --size 1G --json   # {\"volume\":{\"id\":..,\"path\":..},\"message\":..}")]
    Create {
        /// Volume id, unique in the fleet.
        name: VolumeId,
        /// Size (bytes, or with a unit: 512M, 1G, 4GiB).
        #[arg(long, value_parser = parse_bytes)]
        size: u64,
        #[allow(missing_docs)] // documented on `Common` (clap takes no doc on a flattened field)
        #[command(flatten)]
        common: Common,
    },
    /// Register an existing file or block device on this node as a volume.
    #[command(after_help = "\
Examples:
  meshdrain volume add logs --path /dev/nvme1n1p3
  meshdrain volume add logs --path /srv/logs.img --hook-start unit:logs.service --json")]
    Add {
        /// Volume id, unique in the fleet.
        name: VolumeId,
        /// The file or block device holding the volume's bytes.
        #[arg(long)]
        path: PathBuf,
        #[allow(missing_docs)] // documented on `Common` (clap takes no doc on a flattened field)
        #[command(flatten)]
        common: Common,
    },
    /// List every volume of the fleet: owner, size, phase, holder, epoch, progress.
    #[command(after_help = "\
Examples:
  meshdrain volume list
  meshdrain volume list --json | jq '.volumes[] | {id, owner, path}'

PROGRESS counts bytes moved over the network against bytes left to move (regions the source
reported unallocated are not bytes to move); a line per draining node sums its volumes.
`path` (JSON) is the file or device on its owner, given for the volumes of the node asked.")]
    List {
        /// Print JSON (`{"volumes":[{"id":..,"owner":..,"path":..,...}]}`).
        #[arg(long)]
        json: bool,
        #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
        #[command(flatten)]
        control: ControlArg,
    },
    /// Move one volume to another node; its node stays active (src/decide/moves.rs).
    #[command(after_help = super::volume_move::EXAMPLES)]
    Move(super::volume_move::MoveArgs),
}

impl Command {
    /// The command's own `--control`.
    pub fn control(&self) -> &Option<PathBuf> {
        match self {
            Self::Create { common, .. } | Self::Add { common, .. } => &common.control.control,
            Self::List { control, .. } => &control.control,
            Self::Move(args) => &args.control.control,
        }
    }
}

/// `meshdrain gc`'s arguments.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub control: ControlArg,
}

/// Options shared by `create` and `add`.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// A label every target must carry (repeatable): `--require zone=a`.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub requires: Vec<(String, String)>,
    /// Command run on the source before the export opens (quiesce the workload), with
    /// MESHDRAIN_VOLUME, MESHDRAIN_DEVICE and MESHDRAIN_NODE set; or `unit:<name>` for
    /// `systemctl stop <name>`.
    #[arg(long, value_name = "CMD")]
    pub hook_stop: Option<String>,
    /// Command run on the target once the clone device exists (start the workload);
    /// MESHDRAIN_DEVICE names the device; or `unit:<name>` for `systemctl start <name>`.
    #[arg(long, value_name = "CMD")]
    pub hook_start: Option<String>,
    /// Command run on the target after hand-off; or `unit:<name>` for
    /// `systemctl try-reload-or-restart <name>`.
    #[arg(long, value_name = "CMD")]
    pub hook_done: Option<String>,
    /// Print the new volume as JSON (`{"volume":{"id":..,"size":..,"path":..},"message":..}`).
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // documented on `ControlArg` (clap takes no doc on a flattened field)
    #[command(flatten)]
    pub control: ControlArg,
}

pub(super) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. zone=a"))
}

/// Runs one volume command.
pub async fn run(command: Command, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let (id, size, path, common) = match command {
        Command::List { json, .. } => {
            let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
            if json {
                println!("{}", serde_json::json!({ "volumes": volumes }));
            } else {
                print!("{}", render(&volumes));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Create { name, size, common } => (name, Some(size), None, common),
        Command::Add { name, path, common } => (name, None, Some(path), common),
        Command::Move(args) => return super::volume_move::run(args, control).await,
    };
    let json = common.json;
    let req = Request::VolumeAdd(NewVolume {
        id: id.clone(),
        size,
        path,
        requires: common.requires.into_iter().collect::<BTreeMap<_, _>>(),
        hooks: Hooks { stop: common.hook_stop, start: common.hook_start, done: common.hook_done },
    });
    let message: String = client.get(&req).await?;
    if json {
        let volumes: Vec<VolumeStatus> = client.get(&Request::Volumes).await?;
        let line = volumes.into_iter().find(|v| v.id == id.as_str());
        println!("{}", serde_json::json!({ "volume": line, "message": message }));
    } else {
        println!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshdrain gc`: delete handed-off copies on this node now, and say what went.
pub async fn gc(control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let message: String = client.get(&Request::Gc).await?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// The human table, then one line per node with volumes on their way off it.
pub fn render(volumes: &[VolumeStatus]) -> String {
    let mut rows =
        vec![["VOLUME", "OWNER", "SIZE", "PHASE", "HOLDER", "EPOCH", "PROGRESS", "NOTE"].map(str::to_owned).to_vec()];
    for v in volumes {
        let progress = match Moved::of(v) {
            Some(m) if is_moving(&v.phase) => format!(
                "{}% {}/{} {}",
                m.percent(),
                format_bytes(m.moved),
                format_bytes(m.to_move),
                format_rate(v.hydration.bytes_per_s)
            ),
            _ => "-".to_owned(),
        };
        let note = if v.stranded {
            "stranded (holder dead; source keeps its copy)".to_owned()
        } else if v.stalled {
            "stalled (source unreachable)".to_owned()
        } else {
            v.error.as_ref().map(VolumeFault::to_string).unwrap_or_default()
        };
        let holder = match (&v.holder, &v.holder_phase) {
            (Some(h), Some(p)) => format!("{h} ({p})"),
            (Some(h), None) => h.clone(),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            v.id.clone(),
            v.owner.clone(),
            format_bytes(v.size),
            v.phase.clone(),
            holder,
            v.epoch.to_string(),
            progress,
            note,
        ]);
    }
    let mut out = super::table::render(&rows);
    let mut owners: Vec<&str> = volumes.iter().map(|v| v.owner.as_str()).collect();
    owners.dedup();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        if let Some(line) = NodeProgress::of(owner, volumes).render() {
            out.push_str(&format!("{owner}: {line}\n"));
        }
    }
    out
}
