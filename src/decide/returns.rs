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

/// The written set travels in gossip as a bitmap of at most this many bits (2 KiB, 4 KiB
/// in hex): one bit per `grain` bytes, the grain the smallest power of two from 64 KiB
/// that fits. A coarser grain only over-copies, which is always safe.
pub const MAX_BITS: u64 = 16 * 1024;
/// The finest grain (the engine's default region size).
pub const MIN_GRAIN: u64 = 64 * 1024;

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
        /// Bytes per bit of `bits`.
        grain: u64,
        /// The written bitmap, hex: bit `i` (of byte `i / 8`, least significant first)
        /// covers bytes `i * grain .. (i + 1) * grain`.
        bits: String,
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
    /// Clone over the retained copy, fetching only what `bits` marks; refused by the data
    /// plane (then full) if the copy changed after `since_ms` (its hand-off).
    Delta {
        /// Bytes per bit.
        grain: u64,
        /// The written bitmap, hex (checked: see [`decode`]).
        bits: String,
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

impl ReturnPlan {
    /// `delta`, or `full: <why>`: what `volume list` and `undrain --return` show.
    pub fn mode(&self) -> String {
        match self {
            ReturnPlan::Delta { .. } => "delta".to_owned(),
            ReturnPlan::Full { reason } => format!("full: {reason}"),
        }
    }
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
    size: u64,
    arrived: Option<&Arrival>,
    written: Result<WrittenMap, String>,
) -> Option<ReturnBase> {
    let a = arrived.filter(|a| a.from == *holder)?;
    Some(match written {
        Ok(w) if w.epoch == a.epoch => {
            let grain = grain_for(size);
            let bits = encode(&w.ranges, size, grain);
            ReturnBase::Delta { base: a.from.clone(), epoch: a.epoch, clone: w.clone, grain, bits }
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

/// The grain for a volume of `size` bytes: the smallest power of two from [`MIN_GRAIN`]
/// whose bitmap has at most [`MAX_BITS`] bits.
pub fn grain_for(size: u64) -> u64 {
    let mut g = MIN_GRAIN;
    while size.div_ceil(g) > MAX_BITS {
        g *= 2;
    }
    g
}

/// The bitmap (hex) of `ranges` at `grain`: every bit a range touches is set (a superset).
pub fn encode(ranges: &[Range<u64>], size: u64, grain: u64) -> String {
    let mut bits = vec![0u8; size.div_ceil(grain).div_ceil(8) as usize];
    for r in ranges.iter().filter(|r| r.start < r.end && r.start < size) {
        for i in r.start / grain..r.end.min(size).div_ceil(grain) {
            bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    hex::encode(bits)
}

/// Decodes a peer's bitmap (hostile input) into byte ranges within `size`: the grain must
/// be a multiple of 512 that gives at most [`MAX_BITS`] bits, the text exactly the
/// bitmap's length (checked before decoding), no bit past the volume's end.
pub fn decode(bits: &str, size: u64, grain: u64) -> Result<Vec<Range<u64>>, String> {
    if grain == 0 || !grain.is_multiple_of(512) || size.div_ceil(grain) > MAX_BITS {
        return Err(format!("grain {grain} is not a multiple of 512 giving at most {MAX_BITS} bits for {size} bytes"));
    }
    let n = size.div_ceil(grain);
    let want = (n.div_ceil(8) * 2) as usize;
    if bits.len() != want {
        return Err(format!("the bitmap is {} hex digits, {want} expected", bits.len()));
    }
    let raw = hex::decode(bits).map_err(|e| format!("the bitmap is not hex: {e}"))?;
    if !n.is_multiple_of(8) && raw.last().is_some_and(|b| b >> (n % 8) != 0) {
        return Err("the bitmap has bits past the volume's end".into());
    }
    let mut out: Vec<Range<u64>> = Vec::new();
    for i in (0..n).filter(|i| raw[(i / 8) as usize] & (1 << (i % 8)) != 0) {
        // `lo < size` (i < n), so neither sum overflows whatever the size (fuzz/return_bitmap).
        let lo = i * grain;
        let hi = lo + (size - lo).min(grain);
        match out.last_mut() {
            Some(last) if last.end == lo => last.end = hi,
            _ => out.push(lo..hi),
        }
    }
    Ok(out)
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
    let (epoch, grain, bits) = match base {
        ReturnBase::Full { reason } => return full(reason.clone()),
        ReturnBase::Delta { base, .. } if base != me => {
            return full(format!("the written ranges are relative to {base}'s copy, not {me}'s"));
        }
        ReturnBase::Delta { epoch, grain, bits, .. } => (*epoch, *grain, bits),
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
    if let Err(why) = decode(bits, size, grain) {
        return full(format!("{source}'s written ranges are refused: {why}"));
    }
    ReturnPlan::Delta { grain, bits: bits.clone(), since_ms }
}

#[cfg(test)]
#[path = "returns_tests.rs"]
mod tests;
