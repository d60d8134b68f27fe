//! The source side of one volume's move. The source is the arbiter of its own volumes:
//! it offers, grants, revokes and, once the holder says `done`, deletes.
//!
//! ```text
//!  held ──drain──▶ offered(e) ──claim──▶ granted(e,H) ──H ready──▶ cut_over(e,H) ──done(e)──▶ handed_off ──retention/gc──▶ deleted
//!   ▲                 │  ▲                   │                          │
//!   │◀──undrain───────┘  └─H lost/declined/──┘ (epoch e+1)              └─H lost: stays cut_over ("stranded"), never revoked
//!   │◀──undrain (restart workload here)──────┘
//!   │◀──H declared lost with --accept-data-loss (epoch e+1, restart workload here)──── cut_over / handed_off
//! ```
//!
//! The safety rules: after `cut_over` the holder may run the workload, so the source never
//! revokes it; before `cut_over` the holder must not run it, so revoking is safe. Data is
//! deleted only in `handed_off`, which requires the holder's `done` for the current epoch.
//! A volume is exported only once its workload is stopped: a grant asks for the `stop`
//! hook, and the export opens on the data plane's `WorkloadStopped` for that same epoch (a
//! failed hook is `HookFailed`: the move stops, nothing is exported).

use serde::{Deserialize, Serialize};

use super::{HolderPhase, Timing};
use crate::decide::model::{NodeName, VolumeId};

/// Where the source is in a volume's move. Persisted; published in `vol/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum SourcePhase {
    /// The volume lives here and is not moving. May become `offered` (drain).
    Held,
    /// Waiting for claims for the current epoch. May become `granted`, or `held` (undrain).
    Offered {
        /// When the offer was made.
        since_ms: u64,
    },
    /// The workload here is stopped and the export is open to `holder`, which prepares its
    /// clone. May become `cut_over`, or `offered`/`held` with a new epoch (revoked).
    Granted {
        /// The lease holder.
        holder: NodeName,
        /// When it was granted, or when the export opened.
        at_ms: u64,
        /// The export is open (after the `stop` hook); only then is it advertised, so the
        /// holder never tries to log in during a long quiesce.
        #[serde(default)]
        exported: bool,
        /// The `stop` hook succeeded for this epoch, so the export may open. Kept in the
        /// state file (a restart does not run the hook again) but never published: the
        /// `vol/<id>` record stays what agents of the previous version read and write.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stopped: bool,
    },
    /// The holder may run the workload. Never revoked. May become `handed_off`.
    CutOver {
        /// The lease holder.
        holder: NodeName,
        /// When the source committed the cut-over.
        at_ms: u64,
        /// With `--verify`: the holder's digest is being checked against this copy. Not
        /// persisted: after a restart the check simply runs again.
        #[serde(default, skip_serializing)]
        verifying: bool,
        /// With `--verify`: why the check failed. The copy here is kept until an operator
        /// accepts the holder's copy (a drain without `--verify`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verify_failed: Option<String>,
    },
    /// The holder has every region; the export is closed; the copy here is kept for the
    /// retention window. May become `deleted`.
    HandedOff {
        /// The new owner.
        holder: NodeName,
        /// When `done` was accepted.
        at_ms: u64,
    },
    /// The copy here is deleted. Terminal.
    Deleted {
        /// The new owner.
        holder: NodeName,
    },
    /// A hook failed; the move stopped and nothing was deleted. May become `held` (undrain)
    /// or `offered` (drain again).
    Failed {
        /// What failed, for the operator.
        reason: String,
    },
}

/// One volume as its source keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceVolume {
    /// Volume id.
    pub id: VolumeId,
    /// Size in bytes.
    pub size: u64,
    /// Lease epoch: grows with every offer; fences stale holders.
    pub epoch: u64,
    /// Move phase.
    pub phase: SourcePhase,
    /// The move's `done` must carry a digest equal to this copy's (`drain --verify`), fixed
    /// when the volume is offered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

/// What the source knows of the holder of the current epoch (from gossip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSignal {
    /// Alive per the failure detector.
    pub alive: bool,
    /// The holder's published phase for this volume and the epoch it is for.
    pub progress: Option<(u64, HolderPhase)>,
    /// The epoch of the holder's `done`, if any.
    pub done: Option<u64>,
    /// The digest that `done` carries, if any.
    pub digest: Option<String>,
    /// The holder was declared lost for good (docs/failures.md): never handed off to,
    /// and the copy here is never deleted.
    pub lost: bool,
    /// The declaration accepts that writes made on it since the cut-over are gone: the
    /// copy here becomes the volume again.
    pub accept_data_loss: bool,
}

/// Inputs to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A periodic look at the cluster.
    Tick {
        /// Whether this node is draining.
        draining: bool,
        /// The node placement would choose among claimants for the current epoch, if any.
        best_claimant: Option<NodeName>,
        /// Whether that claimant is the one placement chose among all eligible nodes
        /// (then there is no point waiting for the settle window).
        best_is_planned: bool,
        /// The current holder's signals (when granted or cut over).
        holder: Option<HolderSignal>,
        /// The operator ran `meshdrain gc` (delete handed-off copies now).
        gc: bool,
        /// The current drain asks for `--verify`. Fixed into the volume when it is offered;
        /// a later drain without it accepts a copy whose check failed.
        verify: bool,
    },
    /// A workload hook on this node failed.
    HookFailed(String),
    /// The data plane ran the `stop` hook asked for at this epoch, and it succeeded.
    WorkloadStopped {
        /// The epoch whose grant asked for it (a stale one changes nothing).
        epoch: u64,
    },
    /// The data plane opened the export for this epoch.
    ExportOpened {
        /// The epoch it was opened for.
        epoch: u64,
    },
    /// The data plane compared the holder's digest with this copy.
    Verified {
        /// The epoch of the `done` it checked.
        epoch: u64,
        /// `Err` says how they differ (or why the check could not run).
        result: Result<(), String>,
    },
}

/// Side effects for the owner loop, executed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEffect {
    /// Run the `stop` hook, then report [`SourceEvent::WorkloadStopped`] for `epoch`: the
    /// export is opened only after that, so it is always of a quiesced volume.
    StopWorkload {
        /// The epoch of the grant.
        epoch: u64,
    },
    /// Undo a stop: the move was cancelled before cut-over; run the `start` hook here.
    StartWorkload,
    /// Open the read-only export to `holder` for `epoch` (ACL = holder's mesh address + epoch).
    OpenExport {
        /// The lease holder.
        holder: NodeName,
        /// The epoch its initiator name carries.
        epoch: u64,
    },
    /// Close the export to everyone (fences a revoked holder).
    CloseExport,
    /// Delete the local copy: only ever emitted from `handed_off`.
    DeleteData,
    /// Digest this copy and compare it with the holder's `digest` (`--verify`).
    VerifyCopy {
        /// The epoch of the holder's `done`.
        epoch: u64,
        /// What the holder read, as the data plane's digest module renders it.
        digest: String,
    },
}

impl SourceVolume {
    /// A volume that lives here.
    pub fn new(id: &VolumeId, size: u64) -> Self {
        Self { id: id.clone(), size, epoch: 0, phase: SourcePhase::Held, verify: false }
    }

    /// Whether this volume still keeps its node from being `drained`.
    pub fn pending(&self) -> bool {
        !matches!(self.phase, SourcePhase::HandedOff { .. } | SourcePhase::Deleted { .. })
    }

    /// The current holder, if granted or later.
    pub fn holder(&self) -> Option<&NodeName> {
        match &self.phase {
            SourcePhase::Granted { holder, .. }
            | SourcePhase::CutOver { holder, .. }
            | SourcePhase::HandedOff { holder, .. }
            | SourcePhase::Deleted { holder } => Some(holder),
            _ => None,
        }
    }

    /// Effects to re-establish after a restart: the export of a granted or cut-over volume
    /// must come back for its holder. The `stop` hook is not run again once it succeeded
    /// (or the export opened, which only follows it); a grant whose hook never reported
    /// back (the agent stopped while it ran) runs it again before exporting.
    pub fn on_restart(&self) -> Vec<SourceEffect> {
        match &self.phase {
            SourcePhase::Granted { exported: false, stopped: false, .. } => {
                vec![SourceEffect::StopWorkload { epoch: self.epoch }]
            }
            SourcePhase::Granted { holder, .. } | SourcePhase::CutOver { holder, .. } => {
                vec![SourceEffect::OpenExport { holder: holder.clone(), epoch: self.epoch }]
            }
            _ => vec![],
        }
    }

    /// Applies one event; returns the effects to execute.
    pub fn step(&mut self, event: &SourceEvent, now_ms: u64, timing: &Timing) -> Vec<SourceEffect> {
        use SourceEffect as E;
        use SourcePhase as P;
        let (draining, best, best_is_planned, holder, gc, verify) = match event {
            SourceEvent::HookFailed(reason) => {
                return match &self.phase {
                    P::Granted { .. } | P::Offered { .. } => {
                        self.epoch += 1;
                        self.phase = P::Failed { reason: reason.clone() };
                        vec![E::CloseExport]
                    }
                    _ => vec![],
                };
            }
            SourceEvent::WorkloadStopped { epoch } => {
                if let P::Granted { holder, stopped: stopped @ false, .. } = &mut self.phase
                    && *epoch == self.epoch
                {
                    *stopped = true;
                    return vec![E::OpenExport { holder: holder.clone(), epoch: self.epoch }];
                }
                return vec![];
            }
            SourceEvent::ExportOpened { epoch } => {
                if let P::Granted { exported, at_ms, .. } = &mut self.phase
                    && *epoch == self.epoch
                {
                    *exported = true;
                    *at_ms = now_ms;
                }
                return vec![];
            }
            SourceEvent::Verified { epoch, result } => {
                if let P::CutOver { holder, verifying: verifying @ true, verify_failed, .. } = &mut self.phase
                    && *epoch == self.epoch
                {
                    *verifying = false;
                    match result {
                        Ok(()) => {
                            self.phase = P::HandedOff { holder: holder.clone(), at_ms: now_ms };
                            return vec![E::CloseExport];
                        }
                        Err(why) => *verify_failed = Some(why.clone()),
                    }
                }
                return vec![];
            }
            SourceEvent::Tick { draining, best_claimant, best_is_planned, holder, gc, verify } => {
                (*draining, best_claimant, *best_is_planned, holder, *gc, *verify)
            }
        };
        match self.phase.clone() {
            P::Held => {
                if draining {
                    self.epoch += 1;
                    self.verify = verify;
                    self.phase = P::Offered { since_ms: now_ms };
                }
                vec![]
            }
            P::Failed { .. } => {
                // Stays failed (and the node draining) until the operator undrains; then the
                // workload runs here again. A later drain offers it afresh.
                if draining {
                    return vec![];
                }
                self.phase = P::Held;
                vec![E::StartWorkload]
            }
            P::Offered { since_ms } => {
                if !draining {
                    self.phase = P::Held;
                    return vec![];
                }
                let settled = best_is_planned || now_ms.saturating_sub(since_ms) >= timing.settle_ms;
                match best {
                    Some(h) if settled => {
                        self.phase = P::Granted { holder: h.clone(), at_ms: now_ms, exported: false, stopped: false };
                        vec![E::StopWorkload { epoch: self.epoch }]
                    }
                    _ => vec![],
                }
            }
            P::Granted { holder: h, at_ms, exported, .. } => {
                let sig = holder.as_ref();
                let ready = sig.is_some_and(|s| {
                    s.alive && !s.lost && matches!(s.progress, Some((e, HolderPhase::Ready | HolderPhase::Running { .. })) if e == self.epoch)
                });
                let lost = sig.is_none_or(|s| !s.alive || s.lost)
                    || sig.is_some_and(
                        |s| matches!(s.progress, Some((e, HolderPhase::Failed { .. })) if e == self.epoch),
                    )
                    || (exported && now_ms.saturating_sub(at_ms) >= timing.ready_timeout_ms);
                if !draining {
                    // Undrain before cut-over: the volume stays here.
                    self.epoch += 1;
                    self.phase = P::Held;
                    return vec![E::CloseExport, E::StartWorkload];
                }
                if ready {
                    self.phase = P::CutOver { holder: h, at_ms: now_ms, verifying: false, verify_failed: None };
                    vec![]
                } else if lost {
                    self.epoch += 1;
                    self.phase = P::Offered { since_ms: now_ms };
                    vec![E::CloseExport]
                } else {
                    vec![]
                }
            }
            P::CutOver { .. } | P::HandedOff { .. } if holder.as_ref().is_some_and(|s| s.lost) => {
                // The holder is gone for good: it is never handed off to and the copy here,
                // the last one, is never deleted. With the operator's consent the copy here
                // is the volume again, at a new epoch that fences the lost holder.
                if !holder.as_ref().is_some_and(|s| s.accept_data_loss) {
                    return vec![];
                }
                let exported = matches!(self.phase, P::CutOver { .. });
                self.epoch += 1;
                self.phase = P::Held;
                if exported { vec![E::CloseExport, E::StartWorkload] } else { vec![E::StartWorkload] }
            }
            P::CutOver { holder: h, verifying, verify_failed, at_ms } => {
                let Some(sig) = holder.as_ref().filter(|s| s.done == Some(self.epoch)) else { return vec![] };
                // A failed check is accepted only by a drain that no longer asks for it.
                let accepted = verify_failed.is_some() && !verify;
                if !self.verify || accepted {
                    self.phase = P::HandedOff { holder: h, at_ms: now_ms };
                    return vec![E::CloseExport];
                }
                if verifying || verify_failed.is_some() {
                    return vec![];
                }
                let Some(digest) = sig.digest.clone() else {
                    let why = format!(
                        "{h} sent `done` without a digest (its clone engine, dm-clone, does not see the bytes it copies)"
                    );
                    self.phase = P::CutOver { holder: h, at_ms, verifying: false, verify_failed: Some(why) };
                    return vec![];
                };
                self.phase = P::CutOver { holder: h, at_ms, verifying: true, verify_failed: None };
                vec![E::VerifyCopy { epoch: self.epoch, digest }]
            }
            P::HandedOff { holder: h, at_ms } => {
                if gc || now_ms.saturating_sub(at_ms) >= timing.retention_ms {
                    self.phase = P::Deleted { holder: h };
                    vec![E::DeleteData]
                } else {
                    vec![]
                }
            }
            P::Deleted { .. } => vec![],
        }
    }

    /// The holder is lost after cut-over: the volume is stranded on it (shown to operators).
    pub fn stranded(&self, holder_alive: bool) -> bool {
        matches!(self.phase, SourcePhase::CutOver { .. }) && !holder_alive
    }
}
