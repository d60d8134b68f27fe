//! The holder side of one volume's move: the node a volume moves to.
//!
//! ```text
//!  (granted e to me) ─▶ preparing ──clone ready──▶ ready ──source cut_over(e)──▶ running ──hydrated──▶ finishing ──finalized──▶ complete (publishes done e, owns the volume)
//!                         │   └─clone failed─▶ failed     │
//!                         └──────── source epoch > e ─────┴──▶ discarded (partial clone removed)
//!  preparing, ready ──source declared lost──▶ failed (copy kept; deletable)
//!  running ──source declared lost──▶ incomplete ──accept (missing = zeros)──▶ running
//!                                              └──────delete (operator, --yes)──▶ discarded
//! ```
//!
//! The holder starts the workload only after it sees the source's `cut_over` for its own
//! epoch; before that, a newer epoch means it was revoked, and it throws its partial clone
//! away. After cut-over the source never revokes, so a returning holder just resumes.

use serde::{Deserialize, Serialize};

use crate::decide::model::{NodeName, VolumeId};

/// Where the holder is. Published in `progress/<id>` with the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum HolderPhase {
    /// Logging in to the export and creating the clone device. May become `ready`,
    /// `failed`, or `discarded` (revoked).
    Preparing,
    /// The clone exists; waiting for the source's cut-over. May become `running` or
    /// `discarded` (revoked).
    Ready,
    /// The workload runs on the clone; hydration copies the rest. May become `finishing`.
    Running {
        /// Hydration cannot progress (the source does not answer, or the dest is full);
        /// reads of missing regions and hydration wait.
        stalled: bool,
    },
    /// Every region is here: flushing and replacing the clone by the plain device.
    /// May become `complete`.
    Finishing,
    /// The volume lives here now; `done` is published. Terminal.
    Complete,
    /// Revoked before cut-over; the partial clone is removed. Terminal.
    Discarded,
    /// Preparing failed (the source revokes and re-offers). May become `discarded`.
    Failed {
        /// What failed.
        reason: String,
    },
    /// The source was declared lost after cut-over, before every region was here
    /// (docs/failures.md):
    /// reads of missing regions fail at once, hydration stopped. May become `running`
    /// (the operator accepts the partial copy: missing regions read as zeros) or
    /// `discarded` (the operator deletes it).
    Incomplete {
        /// Regions not on this node (0 until the clone engine has counted them).
        missing: u64,
        /// Regions of the volume.
        regions: u64,
        /// The workload had started here (cut over before the source was lost).
        #[serde(default)]
        workload_started: bool,
    },
}

/// One volume as its holder keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderVolume {
    /// Volume id.
    pub id: VolumeId,
    /// The node it comes from.
    pub source: NodeName,
    /// The lease epoch this holder was granted.
    pub epoch: u64,
    /// Size in bytes.
    pub size: u64,
    /// Phase.
    pub phase: HolderPhase,
    /// Hydration bandwidth asked for by the drain, bytes/s.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// With `--verify`: the digest of what was read from the source, sent with `done`.
    #[serde(default)]
    pub digest: Option<String>,
    /// The source was declared lost (docs/failures.md): taken into account once, so a
    /// partial copy the operator accepted is not made incomplete again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_lost: bool,
}

/// What the holder sees of the source's `vol/<id>` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSignal {
    /// The source's current epoch.
    pub epoch: u64,
    /// Whether the source has cut over to this holder at that epoch.
    pub cut_over_to_me: bool,
}

/// Inputs to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderEvent {
    /// A periodic look at the source's record (`None`: not visible right now).
    Tick(Option<SourceSignal>),
    /// The clone device exists and reads reach the source.
    CloneReady,
    /// Preparing failed.
    CloneFailed(String),
    /// The clone engine reports the source (un)reachable.
    Stalled(bool),
    /// Every region is on the dest.
    Hydrated,
    /// Flushed, clone replaced by the plain device, persisted, logged out.
    Finalized,
    /// The source was declared lost for good.
    SourceLost,
    /// The clone engine stopped waiting for the source: `missing` of `regions` are not here.
    SourceLostCounted {
        /// Regions not here.
        missing: u64,
        /// Regions of the volume.
        regions: u64,
    },
    /// The operator keeps the partial copy as the volume (missing regions become zeros).
    AcceptPartial,
    /// The operator deletes the partial copy.
    DeletePartial,
}

/// Side effects for the owner loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderEffect {
    /// Log in to the source's export (initiator name carries the epoch) and create the
    /// clone device, without starting the workload.
    PrepareClone,
    /// Start the workload on the clone (the `start` hook) and background hydration.
    StartWorkload,
    /// Flush, replace the clone by the plain device, persist, log out. Idempotent: after
    /// a crash it completes a half-done swap, or reports one already done.
    Finalize,
    /// Remove the partial clone (dest and metadata).
    DiscardClone,
    /// Tell the clone engine the source is gone: reads of missing regions fail at once,
    /// hydration stops; report the count as [`HolderEvent::SourceLostCounted`].
    DeclareSourceLost,
    /// Make the missing regions zeros on the dest so hydration completes with what is here.
    AcceptPartial,
}

impl HolderVolume {
    /// A new grant seen in gossip.
    pub fn granted(id: &VolumeId, source: &NodeName, epoch: u64, size: u64) -> (Self, Vec<HolderEffect>) {
        let v = Self {
            id: id.clone(),
            source: source.clone(),
            epoch,
            size,
            phase: HolderPhase::Preparing,
            rate_limit: None,
            digest: None,
            source_lost: false,
        };
        (v, vec![HolderEffect::PrepareClone])
    }

    /// Whether this move is still under way here.
    pub fn active(&self) -> bool {
        !matches!(self.phase, HolderPhase::Complete | HolderPhase::Discarded)
    }

    /// Whether the workload may run here (and so the source must not be revoked).
    pub fn workload_may_run(&self) -> bool {
        matches!(
            self.phase,
            HolderPhase::Running { .. }
                | HolderPhase::Finishing
                | HolderPhase::Complete
                | HolderPhase::Incomplete { workload_started: true, .. }
        )
    }

    /// Effects to re-establish after a restart: preparation starts over (the epoch check
    /// still applies), a running move resumes from the clone metadata.
    pub fn on_restart(&mut self) -> Vec<HolderEffect> {
        match self.phase {
            HolderPhase::Preparing | HolderPhase::Ready => {
                self.phase = HolderPhase::Preparing;
                vec![HolderEffect::PrepareClone]
            }
            HolderPhase::Running { .. } => {
                self.phase = HolderPhase::Running { stalled: false };
                vec![HolderEffect::PrepareClone, HolderEffect::StartWorkload]
            }
            // Finalize is idempotent: it completes a half-done swap, or finds it done.
            // Preparing a clone again here would put an empty clone over finished data.
            HolderPhase::Finishing => vec![HolderEffect::Finalize],
            // The engine does not keep "source lost" across a restart: say it again.
            HolderPhase::Incomplete { workload_started, .. } => {
                let mut fx = vec![HolderEffect::PrepareClone, HolderEffect::DeclareSourceLost];
                if workload_started {
                    fx.push(HolderEffect::StartWorkload);
                }
                fx
            }
            _ => vec![],
        }
    }

    /// Applies one event; returns the effects to execute.
    pub fn step(&mut self, event: &HolderEvent) -> Vec<HolderEffect> {
        use HolderEffect as E;
        use HolderPhase as P;
        if let HolderEvent::SourceLost = event {
            if self.source_lost {
                return vec![];
            }
            self.source_lost = true;
        }
        match (&self.phase, event) {
            (P::Preparing | P::Ready | P::Failed { .. }, HolderEvent::Tick(Some(s))) if s.epoch > self.epoch => {
                self.phase = P::Discarded;
                vec![E::DiscardClone]
            }
            (P::Ready, HolderEvent::Tick(Some(s))) if s.epoch == self.epoch && s.cut_over_to_me => {
                self.phase = P::Running { stalled: false };
                vec![E::StartWorkload]
            }
            (P::Preparing, HolderEvent::CloneReady) => {
                self.phase = P::Ready;
                vec![]
            }
            (P::Preparing, HolderEvent::CloneFailed(reason)) => {
                self.phase = P::Failed { reason: reason.clone() };
                vec![]
            }
            (P::Running { .. }, HolderEvent::Stalled(stalled)) => {
                self.phase = P::Running { stalled: *stalled };
                vec![]
            }
            (P::Running { .. }, HolderEvent::Hydrated) => {
                self.phase = P::Finishing;
                vec![E::Finalize]
            }
            (P::Finishing, HolderEvent::Finalized) => {
                self.phase = P::Complete;
                vec![]
            }
            // Never cut over: the workload never ran here, and this holder cannot tell
            // whether it was still the source's choice, so its partial copy is never
            // offered as the volume (it may be deleted).
            (P::Preparing | P::Ready, HolderEvent::SourceLost) => {
                self.phase = P::Failed { reason: format!("source {} was declared lost before cut-over", self.source) };
                vec![]
            }
            (P::Running { .. }, HolderEvent::SourceLost) => {
                self.phase = P::Incomplete { missing: 0, regions: 0, workload_started: true };
                vec![E::DeclareSourceLost]
            }
            (P::Incomplete { workload_started, .. }, HolderEvent::SourceLostCounted { missing, regions }) => {
                self.phase =
                    P::Incomplete { missing: *missing, regions: *regions, workload_started: *workload_started };
                vec![]
            }
            (P::Incomplete { workload_started, .. }, HolderEvent::AcceptPartial) => {
                let started = *workload_started;
                self.phase = P::Running { stalled: false };
                if started { vec![E::AcceptPartial] } else { vec![E::AcceptPartial, E::StartWorkload] }
            }
            (P::Incomplete { .. } | P::Failed { .. }, HolderEvent::DeletePartial) => {
                self.phase = P::Discarded;
                vec![E::DiscardClone]
            }
            _ => vec![],
        }
    }
}
