//! The data plane: the slow work behind decisions (hooks, exports, clones, hydration,
//! deletion), off the owner loop. The owner loop hands each [`DataCommand`] to a
//! [`DataPlane`] with the volume's local path from its volume table, and the data plane
//! reports back through [`DataEvent`]s. It alone knows where a volume's files go
//! ([`paths`]); export and initiator names are the pure functions of
//! [`decide::model`](crate::decide::model), which the core publishes.
//!
//! - [`executor`]: runs commands per volume against an export service and a clone service.
//! - [`iscsi_export`]: the source side over our iSCSI target.
//! - [`clone_process`], [`dm_clone`]: the holder side, our clone engine in holder processes
//!   that outlive the agent (docs/holder-process.md), or dm-clone.
//! - [`local_plane`]: both sides through a shared directory, for fleets on one machine.
//! - [`hooks`]: the operator's workload commands.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tracing::warn;

use crate::decide::core::{DataCommand, DataEvent};
use crate::decide::model::Hydration;

pub mod clone_process;
pub mod dm_clone;
pub mod executor;
pub mod hooks;
pub mod iscsi_export;
pub mod local_plane;
pub mod paths;

/// Removes a volume's files (a discarded clone), tolerating ones already gone.
pub(crate) fn remove_files(volume: &str, paths: &[&Path]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(%volume, path = %path.display(), "cannot remove: {e}"),
        }
    }
}

/// The counters of a clone engine's progress snapshot (both engines of the clone crate).
impl From<&meshdrain_clone::Progress> for Hydration {
    fn from(p: &meshdrain_clone::Progress) -> Self {
        Hydration {
            hydrated: p.hydrated,
            total: p.total,
            bytes_per_s: p.bytes_per_sec as u64,
            fetched_bytes: p.fetched_bytes,
            read_through_bytes: p.read_through_bytes,
        }
    }
}

/// Executes data-plane commands without blocking the owner loop.
pub trait DataPlane: Send + 'static {
    /// Starts `cmd`; results arrive on `events`. `local` is where the volume's bytes live
    /// here, as the owner loop's volume table says when it hands the command over (`None`:
    /// not a local volume).
    fn execute(&mut self, cmd: DataCommand, local: Option<PathBuf>, events: mpsc::UnboundedSender<DataEvent>);
    /// This node's clones and how each is presented to its workload (`status` shows them;
    /// docs/exposures.md). Default: none.
    fn exposures(&self) -> Vec<ExposedClone> {
        Vec::new()
    }
}

/// One clone on this node and the device its workload uses (docs/exposures.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExposedClone {
    /// Volume id.
    pub volume: String,
    /// `ublk`, `nbd` or `fuse-loop`.
    pub exposure: String,
    /// The device (`/dev/nbdN`, ...).
    pub device: PathBuf,
}

/// For agents that only gossip (no volumes can move to or from them): every move that
/// would need data work fails with a reason, so the source re-offers it elsewhere.
#[derive(Debug, Default)]
pub struct NoDataPlane;

impl DataPlane for NoDataPlane {
    fn execute(&mut self, cmd: DataCommand, _local: Option<PathBuf>, events: mpsc::UnboundedSender<DataEvent>) {
        let reason = "this agent has no data plane (volumes cannot move here)".to_owned();
        let ev = match cmd {
            DataCommand::PrepareClone { volume, epoch, .. } => DataEvent::CloneFailed { volume, epoch, reason },
            DataCommand::StopWorkload { volume, .. } => DataEvent::HookFailed { volume, reason },
            other => {
                warn!(volume = %other.volume(), "ignored: {reason}");
                return;
            }
        };
        let _ = events.send(ev);
    }
}
