//! Moving one volume while its node stays `active` (`meshdrain volume move`, issue 21).
//!
//! A move is the drain's lease for a single volume: the request travels as a node request
//! (`req/drain/<owner>`, action `move`, [`VolumeMove`] in its options) to the volume's
//! owner, which fixes a [`MoveOrder`] into the volume. While a volume has an order, its
//! source lease sees `draining = true` (docs/lease-protocol.md): offered, granted, cut
//! over and handed off exactly as in a drain; every other volume of the node stays put.
//! Cancelling clears the order, which the lease treats as an undrain of that volume
//! (nothing cut over is ever pulled back). Pure: no I/O, no clocks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lease::SourcePhase;
use super::model::{NodeName, VolumeId};
use super::node::NodeState;
use super::placement::{self, Candidate, Placement, VolumeSpec};

/// What an operator asks of one volume, carried in a `move` node request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMove {
    /// The volume.
    pub volume: VolumeId,
    /// The only node that may take it (`--to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeName>,
    /// Labels the target must carry for this move, beside the volume's own (`--require`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// Cancel the move under way instead (`--cancel`; refused once cut over).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// A return (`undrain --return`, docs/return.md): refused unless the volume arrived
    /// from `to` (src/decide/returns.rs).
    #[serde(default, rename = "return", skip_serializing_if = "std::ops::Not::not")]
    pub returning: bool,
}

/// A move fixed into a volume by its owner: durable until the volume is handed off or
/// the move is cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveOrder {
    /// The only node that may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeName>,
    /// Extra labels the target must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// Hydration bandwidth, bytes/s (`None`: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u64>,
    /// The holder's digest is checked before hand-off (`--verify`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

/// What applying a move request does to a volume's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveChange {
    /// Fix this order into the volume (a `failed` volume is offered afresh).
    Start(MoveOrder),
    /// Clear the order: the lease goes back to `held` (at epoch + 1 if it was granted).
    Cancel,
}

/// Decides what a move request does to volume `req.volume`, owned here in `phase` (with
/// `current` its order, if any), on a node in `node_state`. Refusals name the fix.
pub fn apply(
    me: &NodeName,
    node_state: NodeState,
    phase: Option<&SourcePhase>,
    current: Option<&MoveOrder>,
    req: &VolumeMove,
    rate_limit: Option<u64>,
    verify: bool,
) -> Result<MoveChange, String> {
    let id = &req.volume;
    let Some(phase) = phase else {
        return Err(format!(
            "volume {id} is not owned by {me} (it moved, or never lived here); see `meshdrain volume list`"
        ));
    };
    if req.cancel {
        return match (phase, current) {
            (SourcePhase::CutOver { holder, .. } | SourcePhase::HandedOff { holder, .. }, _) => Err(format!(
                "volume {id} is already cut over to {holder}: the move completes and cannot be cancelled; move it back with `meshdrain volume move {id} --to {me}` once it is done"
            )),
            (_, None) => Err(format!("volume {id} is not moving: nothing to cancel")),
            (_, Some(_)) => Ok(MoveChange::Cancel),
        };
    }
    if matches!(node_state, NodeState::Draining | NodeState::Drained) {
        return Err(format!(
            "node {me} is {node_state}: every volume of it moves already; `meshdrain undrain {me}` first to move only {id}"
        ));
    }
    if node_state == NodeState::Lost {
        return Err(format!("node {me} was declared lost and is fenced: it moves nothing"));
    }
    if req.to.as_ref() == Some(me) {
        return Err(format!("volume {id} is already on {me}: give another node to --to"));
    }
    match phase {
        SourcePhase::Held | SourcePhase::Failed { .. } => {}
        p if current.is_some() => {
            return Err(format!(
                "volume {id} is moving already ({}); `meshdrain volume move {id} --cancel` first to change where it goes",
                phase_name(p)
            ));
        }
        p => return Err(format!("volume {id} is {}: it cannot move now", phase_name(p))),
    }
    Ok(MoveChange::Start(MoveOrder { to: req.to.clone(), requires: req.requires.clone(), rate_limit, verify }))
}

/// The lowercase name of a source phase (as `volume list` shows it).
pub fn phase_name(p: &SourcePhase) -> &'static str {
    match p {
        SourcePhase::Held => "held",
        SourcePhase::Offered { .. } => "offered",
        SourcePhase::Granted { .. } => "granted",
        SourcePhase::CutOver { .. } => "cut_over",
        SourcePhase::HandedOff { .. } => "handed_off",
        SourcePhase::Deleted { .. } => "deleted",
        SourcePhase::Failed { .. } => "failed",
    }
}

/// The spec placement sees for a moving volume: its own labels and the move's.
pub fn spec(id: &VolumeId, size: u64, requires: &BTreeMap<String, String>, order: &MoveOrder) -> VolumeSpec {
    let mut requires = requires.clone();
    requires.extend(order.requires.clone());
    VolumeSpec { id: id.clone(), size, requires }
}

/// The candidates a move may use: with `--to`, that node only.
pub fn restrict(candidates: &[Candidate], to: Option<&NodeName>) -> Vec<Candidate> {
    candidates.iter().filter(|c| to.is_none_or(|t| *t == c.name)).cloned().collect()
}

/// Where one volume would move now (`volume move --dry-run`): placement over the
/// candidates, with `--to` the named node or why it is not eligible.
pub fn plan(source: &NodeName, spec: &VolumeSpec, candidates: &[Candidate], to: Option<&NodeName>) -> Placement {
    let mut p = placement::plan(source, std::slice::from_ref(spec), candidates, &[])
        .pop()
        .unwrap_or_else(|| Placement { volume: spec.id.clone(), target: None, rejected: vec![] });
    p.rejected.retain(|(n, _)| n != source);
    if let Some(t) = to {
        if p.target.as_ref() != Some(t) {
            // Another node may win the rendezvous; --to only asks that this one be eligible.
            let only = restrict(candidates, Some(t));
            let q = placement::plan(source, std::slice::from_ref(spec), &only, &[]).pop();
            p.target = q.as_ref().and_then(|q| q.target.clone());
            p.rejected = q.map(|q| q.rejected).unwrap_or_default();
        } else {
            p.rejected.clear();
        }
    }
    p
}

#[cfg(test)]
#[path = "moves_tests.rs"]
mod tests;
