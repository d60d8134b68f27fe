//! The fleet-wide availability lease of rolls (docs/roll.md, "The availability lease").
//!
//! `max_unavailable` slots; each slot has at most one holder. A node that wants to be
//! made unavailable publishes a [`Claim`] `(slot, epoch)`, its epoch one above every epoch
//! it has seen. Every node votes, per slot, for one claimant: it keeps its vote while that
//! claim stays visible and its claimant alive, else votes for the lowest `(epoch, name)`
//! live claim. A claimant holds the slot (and only then cordons itself) once a strict
//! majority of the known, not-lost nodes vote for its `(slot, epoch)`; a claimant that sees
//! a lower live claim on its slot before that withdraws (backs off) and tries again. Two
//! holders of one slot would need two majorities of sticky votes, so they never exist
//! while the failure detector is right; a dead holder's votes move after the timeout.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{RollInput, RollTiming};
use crate::decide::model::NodeName;

/// "I want slot `slot`", at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Claim {
    /// The slot, below the roll's `max_unavailable`.
    pub slot: u32,
    /// One above every epoch the claimant had seen.
    pub epoch: u64,
}

/// A vote: "slot goes to `claimant` at `epoch`".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vote {
    /// The claimant voted for.
    pub claimant: NodeName,
    /// The epoch of its claim.
    pub epoch: u64,
}

/// A node's `rollslot` record: its own claim and its votes, by slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Its claim, while it wants or holds a slot.
    #[serde(default)]
    pub claim: Option<Claim>,
    /// Its votes, by slot.
    #[serde(default)]
    pub votes: BTreeMap<u32, Vote>,
}

/// Every live claim visible, as `(claim, claimant)`, with `mine` standing for the local
/// node's (gossip may show an older one).
pub fn live_claims(
    input: &RollInput,
    me: &NodeName,
    mine: Option<Claim>,
    now_ms: u64,
    timing: RollTiming,
) -> Vec<(Claim, NodeName)> {
    let mut out: Vec<(Claim, NodeName)> = input
        .peers
        .iter()
        .filter(|(n, _)| *n != me && input.alive(n, me, now_ms, timing))
        .filter_map(|(n, p)| Some((p.slot.as_ref()?.claim?, n.clone())))
        .collect();
    out.extend(mine.map(|c| (c, me.clone())));
    out
}

/// The highest epoch seen in any claim or vote.
pub fn highest_epoch(input: &RollInput, mine: Option<Claim>) -> u64 {
    let seen = input
        .peers
        .values()
        .filter_map(|p| p.slot.as_ref())
        .flat_map(|s| s.claim.iter().map(|c| c.epoch).chain(s.votes.values().map(|v| v.epoch)).collect::<Vec<_>>());
    seen.chain(mine.map(|c| c.epoch)).max().unwrap_or(0)
}

/// This node's votes, from its previous ones and the live claims: sticky while the claim
/// voted for is still there, else for the lowest `(epoch, name)` claim of the slot.
pub fn vote(old: &BTreeMap<u32, Vote>, claims: &[(Claim, NodeName)]) -> BTreeMap<u32, Vote> {
    let mut by_slot: BTreeMap<u32, Vec<(u64, &NodeName)>> = BTreeMap::new();
    for (c, n) in claims {
        by_slot.entry(c.slot).or_default().push((c.epoch, n));
    }
    by_slot
        .into_iter()
        .map(|(slot, mut cs)| {
            let keep = old.get(&slot).filter(|v| cs.iter().any(|(e, n)| *e == v.epoch && **n == v.claimant));
            let v = keep.cloned().unwrap_or_else(|| {
                cs.sort();
                Vote { claimant: cs[0].1.clone(), epoch: cs[0].0 }
            });
            (slot, v)
        })
        .collect()
}

/// Whether a strict majority of the voters votes for `me` at `claim`; `my_votes` stands
/// for the local node's. The voters are every known node that is not lost, and every node
/// any roll names (`named`): a node that does not know all its peers yet never takes a
/// majority of the few it knows. Dead nodes count as voters that did not vote.
pub fn granted(
    input: &RollInput,
    me: &NodeName,
    claim: Claim,
    my_votes: &BTreeMap<u32, Vote>,
    named: &BTreeSet<NodeName>,
) -> bool {
    let want = Vote { claimant: me.clone(), epoch: claim.epoch };
    let mut voters: BTreeSet<&NodeName> = input.peers.iter().filter(|(_, p)| !p.lost).map(|(n, _)| n).collect();
    voters.extend(named.iter().filter(|n| !input.peers.get(*n).is_some_and(|p| p.lost)));
    voters.insert(me);
    let yes = voters
        .iter()
        .filter(|n| {
            let votes = if **n == me {
                Some(my_votes)
            } else {
                input.peers.get(**n).and_then(|p| p.slot.as_ref()).map(|s| &s.votes)
            };
            votes.and_then(|v| v.get(&claim.slot)) == Some(&want)
        })
        .count();
    yes * 2 > voters.len()
}

/// Whether another live claim on `claim`'s slot is lower in `(epoch, name)`: back off.
pub fn beaten(claims: &[(Claim, NodeName)], me: &NodeName, claim: Claim) -> bool {
    claims.iter().any(|(c, n)| n != me && c.slot == claim.slot && (c.epoch, n) < (claim.epoch, me))
}

/// The lowest slot below `max` no other live claim names, if any.
pub fn free_slot(claims: &[(Claim, NodeName)], me: &NodeName, max: u32) -> Option<u32> {
    (0..max).find(|s| !claims.iter().any(|(c, n)| n != me && c.slot == *s))
}

/// Whether another live claimant holds `claim`'s slot (a majority votes for it): the
/// fleet took this node for dead and moved on, so this node must come back at once.
pub fn taken_over(
    input: &RollInput,
    claims: &[(Claim, NodeName)],
    me: &NodeName,
    claim: Claim,
    named: &BTreeSet<NodeName>,
) -> bool {
    claims.iter().filter(|(c, n)| n != me && c.slot == claim.slot).any(|(c, n)| {
        let theirs = input.peers.get(n).and_then(|p| p.slot.as_ref()).map(|s| s.votes.clone()).unwrap_or_default();
        granted(input, n, *c, &theirs, named)
    })
}
