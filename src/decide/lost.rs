//! Nodes lost for good (docs/failures.md): an operator (or `[lease] node_lost_after`)
//! declares a node gone. The declaration is a gossip record `lost/<node>` that every agent
//! that sees it keeps (persisted) and publishes again, so it survives the declarer's
//! restart or loss. Declarations of the same node merge ([`LostDeclaration::merge`]):
//! commutative, associative and idempotent, so two operators declaring at once, or a
//! declaration seen twice, end in the same record everywhere.
//!
//! What a declaration does, per volume (pure, decided by each node for its own volumes):
//! - a source whose holder is lost before cut-over revokes (as for a dead holder);
//! - a source whose holder is lost after cut-over keeps it `stranded`, unless the
//!   declaration carries `accept_data_loss`: then its retained copy is the volume again
//!   (epoch + 1, the lost holder fenced) and, if the node still drains, it is offered;
//! - a holder whose source is lost stops waiting: the clone fails reads of missing regions
//!   at once, the volume is `incomplete` until the operator accepts or deletes the copy;
//! - the lost node, if it comes back, is fenced: state `lost`, no workload started, no
//!   export opened, copies whose lease moved on set aside until `gc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::view::ClusterView;
use crate::decide::lease::{HolderPhase, SourcePhase};
use crate::decide::model::{NodeName, VolumeId};

/// One node declared lost. Published as `lost/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostDeclaration {
    /// The node that first declared it (the earliest declaration wins, by `(at_ms, name)`).
    pub declared_by: NodeName,
    /// When (wall clock ms of the declarer).
    pub at_ms: u64,
    /// The operator accepted that writes made on the node since a cut-over to it are gone:
    /// sources take their retained copies back. Once given by any declaration, kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_data_loss: bool,
    /// Made by `[lease] node_lost_after`, not an operator. An operator's declaration of the
    /// same node clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automatic: bool,
}

impl LostDeclaration {
    /// Merges another declaration of the same node into this one; returns whether it
    /// changed. The earliest `(at_ms, declared_by)` names the declaration, the data-loss
    /// consent is kept once given, and it is automatic only if every declaration was.
    pub fn merge(&mut self, other: &LostDeclaration) -> bool {
        let before = self.clone();
        if (other.at_ms, &other.declared_by) < (self.at_ms, &self.declared_by) {
            self.at_ms = other.at_ms;
            self.declared_by = other.declared_by.clone();
        }
        self.accept_data_loss |= other.accept_data_loss;
        self.automatic &= other.automatic;
        before != *self
    }
}

/// Merges `from` into `into`; returns whether anything changed.
pub fn merge_all(into: &mut BTreeMap<NodeName, LostDeclaration>, from: &BTreeMap<NodeName, LostDeclaration>) -> bool {
    let mut changed = false;
    for (node, d) in from {
        match into.get_mut(node) {
            Some(mine) => changed |= mine.merge(d),
            None => {
                into.insert(node.clone(), d.clone());
                changed = true;
            }
        }
    }
    changed
}

/// A volume whose newest writes are on the lost node only: it was cut over to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WouldLose {
    /// The volume.
    pub volume: VolumeId,
    /// The source that keeps the copy from before the cut-over.
    pub source: NodeName,
    /// The epoch of the cut-over.
    pub epoch: u64,
    /// When the source committed the cut-over (ms): every write after it is lost.
    pub cut_over_at_ms: u64,
    /// The lost holder's last reported phase (`running`, `finishing`, `complete`).
    pub holder_phase: Option<String>,
    /// Its last reported hydration: regions on it / total.
    pub hydrated: Option<(u64, u64)>,
}

/// What declaring `node` lost would do, from the declarer's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossReport {
    /// Volumes cut over to it: their writes since the cut-over go with it
    /// (needs `--accept-data-loss`).
    pub would_lose: Vec<WouldLose>,
    /// Volumes moving from it to a live holder that has not every region:
    /// they become `incomplete` (volume, holder, regions missing, total).
    pub incomplete: Vec<(VolumeId, NodeName, u64, u64)>,
    /// Volumes it owns that are not moving: no copy elsewhere, nothing to heal.
    pub unavailable: Vec<VolumeId>,
    /// Volumes granted to it before cut-over: the source revokes and offers them again.
    pub revoked: Vec<VolumeId>,
}

impl LossReport {
    /// Whether the declaration needs `--accept-data-loss`.
    pub fn loses_data(&self) -> bool {
        !self.would_lose.is_empty()
    }

    /// Whether an automatic declaration may be made: nothing cut over to the node, no
    /// holder still hydrating from it (its reads would fail instead of waiting for it), and
    /// no volume whose only copy is there (it would come back fenced with it).
    pub fn safe_to_automate(&self) -> bool {
        self.would_lose.is_empty() && self.incomplete.is_empty() && self.unavailable.is_empty()
    }
}

/// What declaring `node` lost would do, from `view` (pure; the CLI's `--dry-run`, the
/// refusal without `--accept-data-loss`, and the automatic declaration's check).
pub fn assess(view: &ClusterView, node: &NodeName) -> LossReport {
    let mut report = LossReport::default();
    let lost = view.nodes.get(node);
    for n in view.nodes.values().filter(|n| n.name != *node) {
        for (id, rec) in &n.volumes {
            match &rec.phase {
                SourcePhase::CutOver { holder, at_ms, .. } | SourcePhase::HandedOff { holder, at_ms }
                    if holder == node =>
                {
                    // Handed off and owned there: only the source's retained copy is left.
                    let p = lost.and_then(|l| l.progress.get(id)).filter(|p| p.epoch == rec.epoch);
                    let done = lost.and_then(|l| l.done.get(id)).is_some_and(|d| d.epoch == rec.epoch);
                    let phase = p
                        .and_then(|p| serde_json::to_value(&p.phase).ok())
                        .and_then(|v| v["phase"].as_str().map(str::to_owned))
                        .or(done.then(|| "complete".to_owned()));
                    report.would_lose.push(WouldLose {
                        volume: id.clone(),
                        source: n.name.clone(),
                        epoch: rec.epoch,
                        cut_over_at_ms: *at_ms,
                        holder_phase: phase,
                        hydrated: p.map(|p| (p.hydration.hydrated, p.hydration.total)),
                    });
                }
                SourcePhase::Granted { holder, .. } if holder == node => report.revoked.push(id.clone()),
                _ => {}
            }
        }
    }
    if let Some(l) = lost {
        for (id, rec) in &l.volumes {
            if report.would_lose.iter().any(|w| w.volume == *id) {
                // Handed off to it: the source's retained copy is counted above.
                continue;
            }
            let moving_to = match &rec.phase {
                SourcePhase::CutOver { holder, .. } | SourcePhase::Granted { holder, .. } => Some(holder),
                _ => None,
            };
            let holder = moving_to.and_then(|h| view.nodes.get(h));
            let progress = holder.and_then(|h| h.progress.get(id)).filter(|p| p.epoch == rec.epoch);
            match (holder, progress) {
                // Only a holder whose workload runs keeps a partial copy: one still `Ready`
                // fails its clone when the source is declared lost (lease/holder.rs), so
                // that volume's only copy is on the lost node.
                (Some(h), Some(p)) if matches!(p.phase, HolderPhase::Running { .. }) => {
                    let total = p.hydration.total;
                    report.incomplete.push((
                        id.clone(),
                        h.name.clone(),
                        total.saturating_sub(p.hydration.hydrated),
                        total,
                    ));
                }
                (Some(_), Some(p)) if matches!(p.phase, HolderPhase::Finishing) => {}
                _ if matches!(rec.phase, SourcePhase::HandedOff { .. }) => {}
                _ => report.unavailable.push(id.clone()),
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(by: &str, at: u64, accept: bool, automatic: bool) -> LostDeclaration {
        LostDeclaration { declared_by: by.parse().unwrap(), at_ms: at, accept_data_loss: accept, automatic }
    }

    #[test]
    fn merging_is_order_free_and_idempotent() {
        let all = [d("b", 10, false, true), d("a", 10, false, true), d("c", 5, true, false), d("a", 20, false, true)];
        let mut want: Option<LostDeclaration> = None;
        // Every rotation of the order (and each one seen twice) ends in the same record.
        for start in 0..all.len() {
            let mut m = all[start].clone();
            for i in 0..all.len() * 2 {
                m.merge(&all[(start + i) % all.len()]);
            }
            assert_eq!(m, *want.get_or_insert_with(|| m.clone()));
        }
        assert_eq!(want.unwrap(), d("c", 5, true, false));
        let mut same = d("a", 1, false, false);
        assert!(!same.merge(&d("a", 1, false, false)), "a declaration seen twice changes nothing");
    }

    #[test]
    fn the_consent_is_kept_once_given_and_an_operator_overrides_automatic() {
        let mut m = d("a", 1, false, true);
        assert!(m.merge(&d("b", 9, true, false)));
        assert_eq!(m, d("a", 1, true, false));
        assert!(!m.merge(&d("a", 1, false, true)));
    }
}
