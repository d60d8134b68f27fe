//! The core's side of lost nodes (docs/failures.md, [`crate::decide::lost`]): declaring
//! one, keeping every declaration seen, declaring automatically after
//! `[lease] node_lost_after`, fencing this node when it learns it was declared lost, the
//! operator's verdict on an incomplete copy, and `gc` of the copies set aside.

use serde::{Deserialize, Serialize};

use super::{Core, DataCommand, Output, owner_in_view};
use crate::cluster::view::ClusterView;
use crate::decide::lease::{HolderEffect, HolderEvent, HolderPhase, SourcePhase};
use crate::decide::lost::{self, LossReport, LostDeclaration};
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::node::NodeState;

/// A copy kept aside on a node that was declared lost and came back: its lease moved on
/// (or may have), so it is neither served nor deleted, until `gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsideCopy {
    /// The volume.
    pub volume: VolumeId,
    /// The epoch this node had it at (the aside files are named `<volume>.e<epoch>`).
    pub epoch: u64,
    /// What it was here: `source` (the copy a move started from) or `holder` (a clone).
    pub role: String,
    /// When it was set aside (ms).
    pub at_ms: u64,
}

/// Why `node lost` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostError {
    /// The node is alive in gossip.
    #[error(
        "node {0} is alive in gossip: a live node is not lost. Stop its agent (or wait for the failure detector), or pass --force if it is cut off for good"
    )]
    Alive(NodeName),
    /// Gossip has never seen the node.
    #[error("no node named {0:?} in the fleet; pass --force to declare it anyway")]
    Unknown(NodeName),
    /// A node cannot declare itself.
    #[error("node {0} cannot declare itself lost: run `meshdrain node lost {0}` on another node")]
    Itself(NodeName),
    /// Writes made on it since a cut-over would be gone.
    #[error("{}", would_lose_text(.0, .1))]
    WouldLoseData(NodeName, LossReport),
}

fn would_lose_text(node: &NodeName, report: &LossReport) -> String {
    let mut text = format!(
        "declaring {node} lost would lose every write made on it since the cut-over of {} volume(s):",
        report.would_lose.len()
    );
    for w in &report.would_lose {
        let progress = match (w.holder_phase.as_deref(), w.hydrated) {
            (Some(p), Some((h, t))) => format!("{p}, {h} of {t} regions hydrated"),
            (Some(p), None) => p.to_owned(),
            (None, _) => "no progress reported".to_owned(),
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(w.cut_over_at_ms);
        text.push_str(&format!(
            "\n  {}: cut over from {} at {} (epoch {}); {node} last reported: {progress}",
            w.volume,
            w.source,
            humantime::format_rfc3339_seconds(at),
            w.epoch
        ));
    }
    text.push_str(&format!(
        "\nthe sources' copies from before the cut-over would become the volumes again; pass --accept-data-loss to do that, or bring {node} back"
    ));
    text
}

/// Why `partial accept|delete` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialError {
    /// No move of that volume here is incomplete.
    #[error(
        "volume {0} has no incomplete copy on this node (`meshdrain volume list` shows where it is incomplete; run this there)"
    )]
    NotIncomplete(VolumeId),
}

/// The operator's verdict on an incomplete copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialVerdict {
    /// Keep it as the volume: missing regions become zeros.
    Accept,
    /// Delete it.
    Delete,
}

impl Core {
    /// `meshdrain node lost <node>`: refuses a live or unknown node without `force`, and a
    /// loss of writes without `accept_data_loss`; otherwise (unless `dry_run`) records the
    /// declaration, which the next publication carries to the fleet.
    pub fn declare_lost(
        &mut self,
        node: &NodeName,
        force: bool,
        accept_data_loss: bool,
        dry_run: bool,
        view: &ClusterView,
        now_ms: u64,
    ) -> Result<(LossReport, Output), LostError> {
        if *node == self.config.name {
            return Err(LostError::Itself(node.clone()));
        }
        let known = view.nodes.get(node);
        if !force && !self.state.lost.contains_key(node) {
            match known {
                None => return Err(LostError::Unknown(node.clone())),
                Some(n) if n.alive => return Err(LostError::Alive(node.clone())),
                Some(_) => {}
            }
        }
        let report = lost::assess(view, node);
        if report.loses_data() && !accept_data_loss {
            return Err(LostError::WouldLoseData(node.clone(), report));
        }
        if dry_run {
            return Ok((report, Output::default()));
        }
        let d = LostDeclaration {
            declared_by: self.config.name.clone(),
            at_ms: now_ms,
            accept_data_loss,
            automatic: false,
        };
        let persist = lost::merge_all(&mut self.state.lost, &[(node.clone(), d)].into());
        Ok((report, Output { commands: vec![], persist }))
    }

    /// The operator keeps or deletes an incomplete copy here.
    pub fn partial(&mut self, volume: &VolumeId, verdict: PartialVerdict) -> Result<Output, PartialError> {
        let ok = self.state.holding.get(volume).is_some_and(|h| match verdict {
            PartialVerdict::Accept => matches!(h.phase, HolderPhase::Incomplete { .. }),
            PartialVerdict::Delete => {
                matches!(h.phase, HolderPhase::Incomplete { .. } | HolderPhase::Failed { .. })
                    && self.state.lost.contains_key(&h.source)
            }
        });
        if !ok {
            return Err(PartialError::NotIncomplete(volume.clone()));
        }
        let mut out = Output::default();
        let event = match verdict {
            PartialVerdict::Accept => HolderEvent::AcceptPartial,
            PartialVerdict::Delete => HolderEvent::DeletePartial,
        };
        self.holder_step(volume, &event, &mut out);
        out.persist = true;
        Ok(out)
    }

    /// Keeps every declaration gossip shows, declares automatically what may be, and
    /// fences this node if it is declared. Returns true when this node is fenced (the
    /// rest of the tick then does nothing but `gc`).
    pub(super) fn tick_lost(&mut self, view: &ClusterView, now_ms: u64, out: &mut Output) -> bool {
        out.persist |= lost::merge_all(&mut self.state.lost, &view.lost());
        self.auto_declare(view, now_ms, out);
        let me = self.config.name.clone();
        if self.state.lost.contains_key(&me) && self.state.node_state != NodeState::Lost {
            self.fence(view, now_ms, out);
        }
        if self.gc_requested && !self.state.aside.is_empty() {
            for a in std::mem::take(&mut self.state.aside) {
                out.commands.push(DataCommand::DeleteAside { volume: a.volume, epoch: a.epoch });
            }
            out.persist = true;
        }
        if self.state.node_state == NodeState::Lost {
            self.deferred = None;
            self.claims.clear();
            return true;
        }
        self.flush_deferred(view, out);
        false
    }

    /// Work a restart re-establishes on moves coming here waits for a look at the fleet,
    /// so a node declared lost while it was down never starts a workload: a move whose
    /// workload may run here waits until the source's record shows the cut-over to this
    /// node at its epoch (a newer epoch means the lease moved on: the declaration that
    /// fences this node is on its way); the others wait for any other node.
    fn flush_deferred(&mut self, view: &ClusterView, out: &mut Output) {
        let me = self.config.name.clone();
        let Some(deferred) = self.deferred.take() else { return };
        if !view.nodes.keys().any(|n| *n != me) {
            self.deferred = Some(deferred);
            return;
        }
        let mut waiting = Vec::new();
        for (id, fx) in deferred {
            let ready = self.state.holding.get(&id).is_none_or(|h| {
                !h.workload_may_run()
                    || view.nodes.get(&h.source).and_then(|n| n.volumes.get(&id)).is_some_and(|r| {
                        r.epoch == h.epoch
                            && matches!(&r.phase, SourcePhase::CutOver { holder, .. } | SourcePhase::HandedOff { holder, .. } if *holder == me)
                    })
            });
            if ready {
                self.holder_command(&id, fx, out);
            } else {
                waiting.push((id, fx));
            }
        }
        if !waiting.is_empty() {
            self.deferred = Some(waiting);
        }
    }

    /// `[lease] node_lost_after`: a node dead that long is declared lost, if that loses
    /// no data and strands no holder's reads ([`LossReport::safe_to_automate`]).
    fn auto_declare(&mut self, view: &ClusterView, now_ms: u64, out: &mut Output) {
        let Some(after) = self.config.timing.node_lost_after_ms else { return };
        self.dead_since.retain(|n, _| view.nodes.get(n).is_some_and(|v| !v.alive));
        for n in view.nodes.values().filter(|n| !n.alive && n.name != self.config.name) {
            let since = *self.dead_since.entry(n.name.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(since) < after || self.state.lost.contains_key(&n.name) {
                continue;
            }
            if !lost::assess(view, &n.name).safe_to_automate() {
                continue;
            }
            tracing::warn!(node = %n.name, dead_ms = now_ms - since, "declaring the node lost ([lease] node_lost_after)");
            let d = LostDeclaration {
                declared_by: self.config.name.clone(),
                at_ms: now_ms,
                accept_data_loss: false,
                automatic: true,
            };
            self.state.lost.insert(n.name.clone(), d);
            out.persist = true;
        }
    }

    /// This node was declared lost: it stops being a member. Its moves stop without
    /// starting a workload; every copy whose lease moved on (or may have) is set aside.
    fn fence(&mut self, view: &ClusterView, now_ms: u64, out: &mut Output) {
        tracing::error!("this node was declared lost: fenced (no workload, no export, no new volume)");
        self.state.node_state = NodeState::Lost;
        self.unaddressed_exports.clear();
        out.persist = true;
        let me = self.config.name.clone();
        let ids: Vec<VolumeId> = self.state.volumes.keys().cloned().collect();
        for id in ids {
            let v = self.state.volumes.get_mut(&id).expect("listed");
            let moved_on = owner_in_view(view, &id).is_some_and(|o| *o != me);
            match v.lease.phase.clone() {
                SourcePhase::CutOver { .. } | SourcePhase::HandedOff { .. } | SourcePhase::Deleted { .. } => {
                    out.commands.push(DataCommand::CloseExport { volume: id.clone() });
                    self.set_aside(&id, "source", None, now_ms, out);
                }
                _ if moved_on => self.set_aside(&id, "source", None, now_ms, out),
                SourcePhase::Granted { .. } => {
                    // Nothing was cut over: this copy is the volume. Stop exporting it; the
                    // workload is not started again (the node is fenced).
                    v.lease.epoch += 1;
                    v.lease.phase = SourcePhase::Held;
                    out.commands.push(DataCommand::CloseExport { volume: id.clone() });
                }
                SourcePhase::Offered { .. } | SourcePhase::Failed { .. } => v.lease.phase = SourcePhase::Held,
                SourcePhase::Held => {}
            }
        }
        let ids: Vec<VolumeId> = self.state.holding.keys().cloned().collect();
        for id in ids {
            let h = &self.state.holding[&id];
            if h.phase == HolderPhase::Discarded {
                continue;
            }
            let hook =
                h.workload_may_run().then(|| self.state.incoming.get(&id).and_then(|m| m.hooks.stop.clone())).flatten();
            self.set_aside(&id, "holder", hook, now_ms, out);
        }
    }

    fn set_aside(&mut self, id: &VolumeId, role: &str, hook: Option<String>, now_ms: u64, out: &mut Output) {
        let epoch = if role == "source" {
            self.state.volumes.remove(id).map(|v| v.lease.epoch)
        } else {
            self.state.incoming.remove(id);
            self.progress.remove(id);
            self.state.holding.remove(id).map(|h| h.epoch)
        };
        let Some(epoch) = epoch else { return };
        tracing::warn!(volume = %id, epoch, role, "copy set aside (fenced); `meshdrain gc` deletes it");
        self.state.aside.push(AsideCopy { volume: id.clone(), epoch, role: role.to_owned(), at_ms: now_ms });
        out.commands.push(DataCommand::SetAside { volume: id.clone(), epoch, hook });
    }

    /// Holders whose source is declared lost stop waiting for it.
    pub(super) fn holders_of_lost_sources(&mut self, out: &mut Output) {
        let ids: Vec<VolumeId> = self
            .state
            .holding
            .iter()
            .filter(|(_, h)| self.state.lost.contains_key(&h.source))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.holder_step(&id, &HolderEvent::SourceLost, out);
        }
    }

    /// The data plane's answer to [`HolderEffect::DeclareSourceLost`].
    pub(super) fn source_lost_counted(
        &mut self,
        volume: &VolumeId,
        result: Result<(u64, u64), String>,
        out: &mut Output,
    ) {
        match result {
            Ok((missing, regions)) => {
                self.holder_step(volume, &HolderEvent::SourceLostCounted { missing, regions }, out)
            }
            Err(why) => {
                tracing::error!(%volume, "the clone cannot stop waiting for its lost source: {why}");
                self.progress.entry(volume.clone()).or_default().error = Some(why);
            }
        }
    }

    /// Keeps restart effects of moves coming here until the fleet is in view.
    pub(super) fn defer(&mut self, id: &VolumeId, fx: HolderEffect) {
        self.deferred.get_or_insert_with(Vec::new).push((id.clone(), fx));
    }
}
