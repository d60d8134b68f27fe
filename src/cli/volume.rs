//! `meshdrain volume create|add|list` and `meshdrain gc`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::ControlTarget;
use super::units::{format_bytes, parse_bytes};
use crate::api::{NewVolume, Request, VolumeFault, VolumeStatus};
use crate::control::client::Client;
use crate::decide::model::{Hooks, VolumeId};

/// Volume commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a new volume on this node: a sparse file in the pool directory.
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
    List {
        /// Print JSON (`{"volumes":[...]}`).
        #[arg(long)]
        json: bool,
    },
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
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: write KEY=VALUE, e.g. zone=a"))
}

/// Runs one volume command.
pub async fn run(command: Command, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let (id, size, path, common) = match command {
        Command::List { json } => {
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
    };
    let req = Request::VolumeAdd(NewVolume {
        id,
        size,
        path,
        requires: common.requires.into_iter().collect::<BTreeMap<_, _>>(),
        hooks: Hooks { stop: common.hook_stop, start: common.hook_start, done: common.hook_done },
    });
    let message: String = client.get(&req).await?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// `meshdrain gc`: delete handed-off copies on this node now.
pub async fn gc(control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    let message: String = client.get(&Request::Gc).await?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// The human table.
pub fn render(volumes: &[VolumeStatus]) -> String {
    let mut rows =
        vec![["VOLUME", "OWNER", "SIZE", "PHASE", "HOLDER", "EPOCH", "PROGRESS", "NOTE"].map(str::to_owned).to_vec()];
    for v in volumes {
        let progress = if v.hydration.total > 0 {
            format!(
                "{:.0}% {}/s",
                100.0 * v.hydration.hydrated as f64 / v.hydration.total as f64,
                format_bytes(v.hydration.bytes_per_s)
            )
        } else {
            "-".to_owned()
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
    super::table::render(&rows)
}
