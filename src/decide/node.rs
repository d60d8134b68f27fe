//! The node lifecycle: `active → cordoned → draining → drained`, and back.
//!
//! Pure: `step(state, event)` returns the next state or a rejection an operator can act
//! on. Repeating a request that already holds (drain a draining node) is accepted and
//! changes nothing, so requests are idempotent.
//!
//! ```text
//!  active ──cordon──▶ cordoned ──drain──▶ draining ──complete──▶ drained
//!    ▲  ╰─────────────drain──────────────────▲ │                   │
//!    ├──────uncordon─────╯                    │ │                   │
//!    ╰───────────────────undrain──────────────┴─┴───────undrain─────╯
//!
//!  any ──declared lost (seen in gossip, docs/failures.md)──▶ lost (fenced; final)
//! ```

use serde::{Deserialize, Serialize};

/// Where a node is in its lifecycle. Published in gossip and kept in the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new volumes. May become cordoned or draining.
    Active,
    /// Keeps its volumes, takes no new ones. May become active or draining.
    Cordoned,
    /// Cordoned and moving every volume away. May become drained, or active on undrain.
    Draining,
    /// Holds no volumes that have not been handed off. May become active on undrain.
    Drained,
    /// Declared lost for good (`meshdrain node lost`, docs/failures.md). A node that sees
    /// this about itself is fenced: it starts no workload, opens no export, takes no
    /// volume and refuses every request. Final.
    Lost,
}

impl NodeState {
    /// All states, for metrics with one series per state.
    pub const ALL: [NodeState; 5] =
        [NodeState::Active, NodeState::Cordoned, NodeState::Draining, NodeState::Drained, NodeState::Lost];

    /// The lowercase name used on the wire, in JSON and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
            NodeState::Lost => "lost",
        }
    }

    /// Whether placement may put new volumes here.
    pub fn accepts_volumes(self) -> bool {
        self == NodeState::Active
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator asks of a node. Travels in `req/drain/<node>` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAction {
    /// Stop placing new volumes here.
    Cordon,
    /// Undo a cordon.
    Uncordon,
    /// Cordon and move every volume away.
    Drain,
    /// Cancel a drain (what has moved stays moved) and return to active.
    Undrain,
    /// Move one volume of the node (`volume move`, src/decide/moves.rs); the node's state
    /// does not change.
    Move,
}

impl NodeAction {
    /// The lowercase verb, as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
            NodeAction::Undrain => "undrain",
            NodeAction::Move => "move",
        }
    }
}

impl std::fmt::Display for NodeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Inputs to the node lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// An operator's request.
    Requested(NodeAction),
    /// The volume drain reports that every volume has been handed off.
    AllVolumesHandedOff,
    /// A volume is back here: its new owner was declared lost with `--accept-data-loss`
    /// and this node's retained copy is the volume again (docs/failures.md).
    VolumeReturned,
}

/// What the owner loop must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEffect {
    /// Begin moving volumes away (offer each one).
    StartVolumeDrain,
    /// Cancel the moves that have not handed off.
    CancelVolumeDrain,
}

/// The outcome of one accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: NodeState,
    /// The state after (equal to `from` for an idempotent repeat).
    pub to: NodeState,
    /// Side effects for the owner loop, in order.
    pub effects: Vec<NodeEffect>,
}

impl Transition {
    /// Whether the state changed (a repeat request changes nothing).
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// A request the lifecycle refuses, with the reason and the command that would work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a node that is {state}: {hint}")]
pub struct Rejected {
    /// The refused action (or `complete` for the internal event).
    pub action: &'static str,
    /// The state the node was in.
    pub state: NodeState,
    /// What to do instead.
    pub hint: &'static str,
}

/// Applies one event to a node state.
pub fn step(state: NodeState, event: NodeEvent) -> Result<Transition, Rejected> {
    use NodeAction::*;
    use NodeState::*;
    let to = |to: NodeState, effects: Vec<NodeEffect>| Ok(Transition { from: state, to, effects });
    let reject = |action: &'static str, hint: &'static str| Err(Rejected { action, state, hint });
    match (state, event) {
        // The volume's own checks are in src/decide/moves.rs; a lost node refuses below.
        (Active | Cordoned | Draining | Drained, NodeEvent::Requested(Move)) => to(state, vec![]),
        (Active, NodeEvent::Requested(Cordon)) => to(Cordoned, vec![]),
        (Active, NodeEvent::Requested(Uncordon | Undrain)) => to(Active, vec![]),
        (Active | Cordoned, NodeEvent::Requested(Drain)) => to(Draining, vec![NodeEffect::StartVolumeDrain]),
        (Cordoned, NodeEvent::Requested(Cordon)) => to(Cordoned, vec![]),
        (Cordoned, NodeEvent::Requested(Uncordon)) => to(Active, vec![]),
        (Cordoned, NodeEvent::Requested(Undrain)) => {
            reject("undrain", "it is not draining; run `meshdrain uncordon` to let it take volumes again")
        }
        (Draining | Drained, NodeEvent::Requested(Drain | Cordon)) => to(state, vec![]),
        (Draining, NodeEvent::Requested(Undrain)) => to(Active, vec![NodeEffect::CancelVolumeDrain]),
        (Drained, NodeEvent::Requested(Undrain)) => to(Active, vec![]),
        (Draining | Drained, NodeEvent::Requested(Uncordon)) => {
            reject("uncordon", "run `meshdrain undrain` to cancel the drain and make it active")
        }
        (Draining, NodeEvent::AllVolumesHandedOff) => to(Drained, vec![]),
        (Drained, NodeEvent::AllVolumesHandedOff) => to(Drained, vec![]),
        (Active | Cordoned, NodeEvent::AllVolumesHandedOff) => {
            reject("complete a drain of", "no drain is running; this is ignored")
        }
        (Lost, NodeEvent::Requested(a)) => reject(
            a.as_str(),
            "it was declared lost (`meshdrain node lost`) and is fenced; remove its state dir and enrol it under a new name to use the machine again",
        ),
        (Lost, NodeEvent::AllVolumesHandedOff) => reject("complete a drain of", "it is fenced; this is ignored"),
        // A drained node is not drained any more: the volume moves on again.
        (Drained, NodeEvent::VolumeReturned) => to(Draining, vec![NodeEffect::StartVolumeDrain]),
        (_, NodeEvent::VolumeReturned) => to(state, vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::NodeAction::*;
    use super::NodeState::*;
    use super::*;

    fn req(a: NodeAction) -> NodeEvent {
        NodeEvent::Requested(a)
    }

    #[test]
    fn every_transition() {
        let table: &[(NodeState, NodeEvent, NodeState, &[NodeEffect])] = &[
            (Active, req(Cordon), Cordoned, &[]),
            (Active, req(Uncordon), Active, &[]),
            (Active, req(Undrain), Active, &[]),
            (Active, req(Drain), Draining, &[NodeEffect::StartVolumeDrain]),
            (Cordoned, req(Cordon), Cordoned, &[]),
            (Cordoned, req(Uncordon), Active, &[]),
            (Cordoned, req(Drain), Draining, &[NodeEffect::StartVolumeDrain]),
            (Draining, req(Drain), Draining, &[]),
            (Draining, req(Cordon), Draining, &[]),
            (Draining, req(Undrain), Active, &[NodeEffect::CancelVolumeDrain]),
            (Draining, NodeEvent::AllVolumesHandedOff, Drained, &[]),
            (Drained, req(Drain), Drained, &[]),
            (Drained, req(Cordon), Drained, &[]),
            (Drained, req(Undrain), Active, &[]),
            (Drained, NodeEvent::AllVolumesHandedOff, Drained, &[]),
            (Drained, NodeEvent::VolumeReturned, Draining, &[NodeEffect::StartVolumeDrain]),
            (Draining, NodeEvent::VolumeReturned, Draining, &[]),
            (Active, NodeEvent::VolumeReturned, Active, &[]),
            (Lost, NodeEvent::VolumeReturned, Lost, &[]),
        ];
        for (from, event, want, effects) in table {
            let t = step(*from, *event).unwrap_or_else(|e| panic!("{from} {event:?}: {e}"));
            assert_eq!((t.from, t.to, t.effects.as_slice()), (*from, *want, *effects), "{from} {event:?}");
        }
    }

    #[test]
    fn every_rejection_says_what_to_do() {
        let cases = [
            (
                Cordoned,
                req(Undrain),
                "cannot undrain a node that is cordoned: it is not draining; run `meshdrain uncordon` to let it take volumes again",
            ),
            (
                Draining,
                req(Uncordon),
                "cannot uncordon a node that is draining: run `meshdrain undrain` to cancel the drain and make it active",
            ),
            (
                Drained,
                req(Uncordon),
                "cannot uncordon a node that is drained: run `meshdrain undrain` to cancel the drain and make it active",
            ),
            (
                Active,
                NodeEvent::AllVolumesHandedOff,
                "cannot complete a drain of a node that is active: no drain is running; this is ignored",
            ),
            (
                Cordoned,
                NodeEvent::AllVolumesHandedOff,
                "cannot complete a drain of a node that is cordoned: no drain is running; this is ignored",
            ),
            (
                Lost,
                req(Undrain),
                "cannot undrain a node that is lost: it was declared lost (`meshdrain node lost`) and is fenced; remove its state dir and enrol it under a new name to use the machine again",
            ),
        ];
        for (from, event, msg) in cases {
            assert_eq!(step(from, event).unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn the_table_is_total() {
        let events = [
            req(Cordon),
            req(Uncordon),
            req(Drain),
            req(Undrain),
            NodeEvent::AllVolumesHandedOff,
            NodeEvent::VolumeReturned,
        ];
        for s in NodeState::ALL {
            for e in events {
                // Either outcome is fine; what matters is that it is decided, and that an
                // accepted repeat of the same event is a no-op.
                if let Ok(t) = step(s, e) {
                    let again = step(t.to, e);
                    if let Ok(again) = again {
                        assert!(
                            !again.changed() || matches!(e, NodeEvent::Requested(Undrain)),
                            "{s} {e:?} not idempotent"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_active_takes_volumes() {
        assert_eq!(NodeState::ALL.iter().filter(|s| s.accepts_volumes()).count(), 1);
        assert!(Active.accepts_volumes());
    }
}
