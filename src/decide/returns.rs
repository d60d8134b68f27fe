//! Coming back cheaply (`meshdrain undrain <node> --return`, docs/return.md): a volume
//! moves back to the node it came from, and where that node still holds the copy it
//! handed off and the current owner's clone engine tracked the workload's writes since
//! cut-over, only the written regions are copied.
//!
//! The return is an ordinary move (`volume move <id> --to <node>`, src/decide/moves.rs)
//! with a `return` flag the owner checks against the volume's arrival. The owner, once the
//! workload is stopped and the export opens, publishes in its `vol/<id>` record a
//! [`ReturnBase`]: the written ranges relative to the copy of (`base`, `epoch`), or why the
//! move is a full one. The returning node takes a delta only for the very copy it handed
//! off at that epoch; everything else is a full move. Pure: no I/O, no clocks.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::model::{Arrival, NodeName, VolumeId};

/// At most this many ranges travel in gossip: a record stays a few KiB (neighbours are
/// merged until it fits: over-copying is always safe).
pub const MAX_RANGES: usize = 128;

/// What the owner's clone engine reports about the workload's writes since its clone was
/// created (the data plane's answer, [`crate::decide::core::DataEvent::Written`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenMap {
    /// The clone id the set is bound to (hex).
    pub clone: String,
    /// The lease epoch of that clone (the move that brought the volume here).
    pub epoch: u64,
    /// The written byte ranges, ascending.
    pub ranges: Vec<Range<u64>>,
}

/// Published by a volume's owner while it moves the volume back to the node it came from:
/// the `return` field of `vol/<id>` (docs/gossip-schema.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ReturnBase {
    /// Only `ranges` differ from the copy `base` handed off at `epoch`.
    Delta {
        /// The node whose retained copy the ranges are relative to.
        base: NodeName,
        /// The epoch of the move that brought the volume from `base`.
        epoch: u64,
        /// The clone id of the engine that tracked the writes (hex).
        clone: String,
        /// `[offset, length]` pairs, ascending, disjoint, within the volume.
        ranges: Vec<[u64; 2]>,
    },
    /// Everything is copied, and why.
    Full {
        /// Why no delta.
        reason: String,
    },
}

/// What the returning node does with its retained copy (kept with the incoming move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ReturnPlan {
    /// Clone over the retained copy, fetching only `ranges`; refused by the data plane
    /// (then full) if the copy changed after `since_ms` (its hand-off).
    Delta {
        /// `[offset, length]` pairs to fetch.
        ranges: Vec<[u64; 2]>,
        /// When the copy was handed off here (ms since the epoch): a copy whose inode
        /// changed after it was touched since.
        since_ms: u64,
    },
    /// A full move, and why.
    Full {
        /// Why no delta.
        reason: String,
    },
}

/// The owner's check of a `return` move request: `to` must be the node the volume arrived
/// from. Refusals name the volume and the node.
pub fn check_request(
    me: &NodeName,
    id: &VolumeId,
    to: Option<&NodeName>,
    arrived: Option<&Arrival>,
) -> Result<(), String> {
    let Some(to) = to else {
        return Err(format!("a return of volume {id} names no node to return to"));
    };
    match arrived {
        Some(a) if a.from == *to => Ok(()),
        Some(a) => Err(format!(
            "volume {id} never left {to} for {me}: it arrived from {}; `meshdrain volume move {id} --to {to}` moves it anyway (a full move)",
            a.from
        )),
        None => Err(format!(
            "volume {id} never left {to}: it was created on {me}; `meshdrain volume move {id} --to {to}` moves it anyway (a full move)"
        )),
    }
}

/// What the owner publishes once the export to `holder` opens: a delta when `holder` is the
/// node the volume arrived from and the engine's set is of that very move.
pub fn publish(
    holder: &NodeName,
    arrived: Option<&Arrival>,
    written: Result<WrittenMap, String>,
) -> Option<ReturnBase> {
    let a = arrived.filter(|a| a.from == *holder)?;
    Some(match written {
        Ok(w) if w.epoch == a.epoch => {
            let ranges = meshdrain_clone::written::coarsen(w.ranges, MAX_RANGES);
            let ranges = ranges.into_iter().map(|r| [r.start, r.end - r.start]).collect();
            ReturnBase::Delta { base: a.from.clone(), epoch: a.epoch, clone: w.clone, ranges }
        }
        Ok(w) => ReturnBase::Full {
            reason: format!(
                "the writes were tracked by a clone of epoch {}, the move from {holder} was epoch {}",
                w.epoch, a.epoch
            ),
        },
        Err(why) => ReturnBase::Full { reason: format!("the writes since cut-over were not tracked: {why}") },
    })
}

/// Checks a peer's ranges (hostile input): bounded count, non-empty, ascending, disjoint,
/// within `size`.
pub fn check_ranges(ranges: &[[u64; 2]], size: u64) -> Result<(), String> {
    if ranges.len() > MAX_RANGES {
        return Err(format!("{} ranges, at most {MAX_RANGES} are taken", ranges.len()));
    }
    let mut end = 0u64;
    for (i, [off, len]) in ranges.iter().enumerate() {
        let Some(stop) = off.checked_add(*len).filter(|s| *len > 0 && *s <= size) else {
            return Err(format!("range {i} ({off}+{len}) is empty or outside the volume's {size} bytes"));
        };
        if i > 0 && *off < end {
            return Err(format!("range {i} ({off}+{len}) is not after the one before it"));
        }
        end = stop;
    }
    Ok(())
}

/// What the returning node `me` does with a grant from `source` of a volume of `size`
/// bytes whose record carries `base`. `retained`: its own record of the volume, if any
/// (the epoch and the phase's holder and time when it is `handed_off`).
pub fn plan(
    me: &NodeName,
    source: &NodeName,
    size: u64,
    base: Option<&ReturnBase>,
    retained: Option<(u64, Option<(&NodeName, u64)>)>,
) -> ReturnPlan {
    let full = |reason: String| ReturnPlan::Full { reason };
    let Some(base) = base else {
        return full(format!("{source} published no return base (an agent without returns, or not a return)"));
    };
    let (epoch, ranges) = match base {
        ReturnBase::Full { reason } => return full(reason.clone()),
        ReturnBase::Delta { base, .. } if base != me => {
            return full(format!("the written ranges are relative to {base}'s copy, not {me}'s"));
        }
        ReturnBase::Delta { epoch, ranges, .. } => (*epoch, ranges),
    };
    let since_ms = match retained {
        None => return full(format!("{me} no longer holds a copy (deleted by gc or after the retention window)")),
        Some((e, _)) if e != epoch => {
            return full(format!("the copy on {me} is of epoch {e}, the written ranges are relative to epoch {epoch}"));
        }
        Some((_, None)) => return full(format!("the copy on {me} is not a handed-off copy")),
        Some((_, Some((holder, _)))) if holder != source => {
            return full(format!("the copy on {me} was handed off to {holder}, not {source}"));
        }
        Some((_, Some((_, at)))) => at,
    };
    if let Err(why) = check_ranges(ranges, size) {
        return full(format!("{source}'s written ranges are refused: {why}"));
    }
    ReturnPlan::Delta { ranges: ranges.clone(), since_ms }
}

/// Bytes a plan copies at most (the ranges rounded out to `region_size`), for messages.
pub fn delta_bytes(ranges: &[[u64; 2]], region_size: u64, size: u64) -> u64 {
    let rs = region_size.max(1);
    let mut total = 0;
    let mut covered_to = 0;
    for [off, len] in ranges {
        let lo = (off / rs * rs).max(covered_to);
        let hi = (off + len).div_ceil(rs).saturating_mul(rs).min(size);
        total += hi.saturating_sub(lo);
        covered_to = covered_to.max(hi);
    }
    total
}

#[cfg(test)]
#[path = "returns_tests.rs"]
mod tests;
