//! The seam to the data plane: the commands the core emits and the events it is fed.

use crate::decide::model::{CloneProgress, ExportEndpoint, NodeName, VolumeId};
use crate::decide::returns::{ReturnPlan, WrittenMap};

/// What the data plane must do (export, clone, hooks, deletion). Fields are the volume
/// and what its variant's doc names.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataCommand {
    /// Source: run the `stop` hook (quiesce before export), then report
    /// [`DataEvent::WorkloadStopped`] for `epoch`, or [`DataEvent::HookFailed`].
    StopWorkload { volume: VolumeId, hook: Option<String>, epoch: u64 },
    /// Source: run the `start` hook here again (move cancelled before cut-over).
    StartWorkload { volume: VolumeId, hook: Option<String> },
    /// Source: open the read-only export to `holder_addr` for `epoch`.
    OpenExport { volume: VolumeId, holder: NodeName, holder_addr: String, epoch: u64 },
    /// Source: close the export (fences everyone).
    CloseExport { volume: VolumeId },
    /// Source: delete the local copy (only after the holder's `done`).
    DeleteData { volume: VolumeId },
    /// Source: digest the local copy and compare it with the holder's (`--verify`).
    VerifyCopy { volume: VolumeId, epoch: u64, digest: String },
    /// Holder: log in to the export and create the clone, workload not started.
    PrepareClone {
        volume: VolumeId,
        source: NodeName,
        export: Option<ExportEndpoint>,
        epoch: u64,
        size: u64,
        rate_limit: Option<u64>,
        /// Digest what is read from the source (`--verify`).
        verify: bool,
        /// A return to this node: clone over the retained copy (docs/return.md).
        base: Option<ReturnPlan>,
    },
    /// Holder: change the hydration bandwidth of a clone under way.
    SetRateLimit { volume: VolumeId, rate_limit: Option<u64> },
    /// Holder: start the workload on the clone (`start` hook) and hydrate in the background.
    StartHeldWorkload { volume: VolumeId, hook: Option<String> },
    /// Holder: flush, replace the clone by the plain device, log out; then the `done` hook.
    Finalize { volume: VolumeId, done_hook: Option<String> },
    /// Holder: remove a revoked partial clone.
    DiscardClone { volume: VolumeId },
    /// Holder: the source was declared lost; the clone engine stops waiting for it (reads
    /// of missing regions fail with EIO, hydration stops) and reports
    /// [`DataEvent::SourceLost`] with what is missing (docs/failures.md).
    DeclareSourceLost { volume: VolumeId },
    /// Holder: the operator keeps the partial copy: missing regions become zeros on the
    /// dest, so hydration completes and the move finalizes as usual.
    AcceptPartial { volume: VolumeId },
    /// This node was declared lost and came back: run the `stop` hook (on a copy whose
    /// workload may run here), then move the copy and its clone metadata into the pool's
    /// `aside/` directory as `<volume>.e<epoch>.*`, where only `gc` removes them.
    SetAside { volume: VolumeId, epoch: u64, hook: Option<String> },
    /// `gc`: delete a copy set aside by [`DataCommand::SetAside`].
    DeleteAside { volume: VolumeId, epoch: u64 },
}

impl DataCommand {
    /// The volume the command is about (the data plane runs each volume's commands in order).
    pub fn volume(&self) -> &VolumeId {
        match self {
            DataCommand::StopWorkload { volume, .. }
            | DataCommand::StartWorkload { volume, .. }
            | DataCommand::OpenExport { volume, .. }
            | DataCommand::CloseExport { volume }
            | DataCommand::DeleteData { volume }
            | DataCommand::VerifyCopy { volume, .. }
            | DataCommand::PrepareClone { volume, .. }
            | DataCommand::StartHeldWorkload { volume, .. }
            | DataCommand::SetRateLimit { volume, .. }
            | DataCommand::Finalize { volume, .. }
            | DataCommand::DiscardClone { volume }
            | DataCommand::DeclareSourceLost { volume }
            | DataCommand::AcceptPartial { volume }
            | DataCommand::SetAside { volume, .. }
            | DataCommand::DeleteAside { volume, .. } => volume,
        }
    }
}

/// What the data plane reports back. Fields are the volume and what its variant's doc names.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataEvent {
    /// Source: a hook for this volume failed.
    HookFailed { volume: VolumeId, reason: String },
    /// Source: what the volume's clone engine here tracked of the workload's writes since
    /// the volume arrived, taken once its workload is stopped, before the export for
    /// `epoch` opens (docs/return.md); `Err` says why there is no such set.
    Written { volume: VolumeId, epoch: u64, result: Result<WrittenMap, String> },
    /// Source: the `stop` hook asked for at `epoch` succeeded (the export may open).
    WorkloadStopped { volume: VolumeId, epoch: u64 },
    /// Source: the export for `epoch` is open.
    ExportOpened { volume: VolumeId, epoch: u64 },
    /// Holder: the clone for `epoch` exists.
    CloneReady { volume: VolumeId, epoch: u64 },
    /// Holder: the clone for `epoch` of a return planned as a delta copies everything after
    /// all, and why: the copy kept here changed since its hand-off, or this node's clone
    /// backend cannot clone over it (docs/return.md). Sent before [`DataEvent::CloneReady`].
    ReturnFull { volume: VolumeId, epoch: u64, reason: String },
    /// Holder: preparing the clone for `epoch` failed.
    CloneFailed { volume: VolumeId, epoch: u64, reason: String },
    /// Holder: hydration progress.
    Progress { volume: VolumeId, progress: CloneProgress },
    /// Holder: every region is on the dest.
    Hydrated { volume: VolumeId },
    /// Holder: flushed and swapped; the volume lives here. `digest` of what was read from
    /// the source when the move asked for one.
    Finalized { volume: VolumeId, digest: Option<String> },
    /// Source: the holder's digest compared with the local copy.
    Verified { volume: VolumeId, epoch: u64, result: Result<(), String> },
    /// Holder: the clone engine stopped waiting for a lost source: `Ok((missing, regions))`,
    /// or why it could not (a clone backend without the mode).
    SourceLost { volume: VolumeId, result: Result<(u64, u64), String> },
}
