//! The seam between decisions and the data path. The owner loop hands each
//! [`DataCommand`] to a [`DataPlane`], which does the slow work (hooks, exports, clones,
//! hydration, deletion) off the loop and reports back through [`DataEvent`]s.

use tokio::sync::mpsc;
use tracing::warn;

use crate::decide::core::{DataCommand, DataEvent};

pub mod digest;
pub mod engine;
pub mod iscsi;
pub mod kernel;
pub mod local;
pub mod real;

/// Removes a volume's files (a discarded clone), tolerating ones already gone.
pub(crate) fn remove_files(volume: &str, paths: &[&std::path::Path]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(%volume, path = %path.display(), "cannot remove: {e}"),
        }
    }
}

/// Executes data-plane commands without blocking the owner loop.
pub trait DataPlane: Send + 'static {
    /// Starts `cmd`; results arrive on `events`.
    fn execute(&mut self, cmd: DataCommand, events: mpsc::UnboundedSender<DataEvent>);
}

/// For agents that only gossip (no volumes can move to or from them): every move that
/// would need data work fails with a reason, so the source re-offers it elsewhere.
#[derive(Debug, Default)]
pub struct NoDataPlane;

impl DataPlane for NoDataPlane {
    fn execute(&mut self, cmd: DataCommand, events: mpsc::UnboundedSender<DataEvent>) {
        let reason = "this agent has no data plane (volumes cannot move here)".to_owned();
        let ev = match cmd {
            DataCommand::PrepareClone { volume, epoch, .. } => DataEvent::CloneFailed { volume, epoch, reason },
            DataCommand::StopWorkload { volume, .. } => DataEvent::HookFailed { volume, reason },
            other => {
                warn!(?other, "ignored: {reason}");
                return;
            }
        };
        let _ = events.send(ev);
    }
}
