//! Volume leases: the source offers a volume at an epoch, candidates claim it, the source
//! grants it to one holder, the holder prepares a clone, the source commits the cut-over,
//! the holder runs the workload and hydrates, then says `done`. Pure: the owner loop
//! feeds in what gossip shows and `now`, and executes the effects.
//!
//! Design decisions of the lease (docs/lease-protocol.md, docs/architecture.md), and why:
//! - An explicit cut-over handshake (`granted` → holder `ready` → source `cut_over` →
//!   holder starts the workload). Without it, a holder that the failure detector wrongly
//!   declared dead (a partition) could start the workload while the source re-offers the
//!   volume: two live workloads. With it, the source revokes only before it committed
//!   the cut-over, and the holder starts only after seeing it.
//! - Every revocation bumps the epoch (also on undrain), so "a newer epoch" is the one
//!   rule a holder needs to discard a partial clone.
//! - Claims carry no score: placement is a pure function of the view that every node
//!   computes identically, so the source ranks claimants itself.

pub mod holder;
pub mod source;

pub use holder::{HolderEffect, HolderEvent, HolderPhase, HolderVolume, SourceSignal};
pub use source::{HolderSignal, SourceEffect, SourceEvent, SourcePhase, SourceVolume};

/// Lease timing, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How long an offer waits for the planned node's claim before granting the best
    /// claimant seen.
    pub settle_ms: u64,
    /// How long a live holder may take from grant to `ready` before it is revoked.
    pub ready_timeout_ms: u64,
    /// How long a handed-off copy is kept on the source before it is deleted.
    pub retention_ms: u64,
    /// `[lease] node_lost_after`: a node dead this long is declared lost, when that loses
    /// no data (docs/failures.md). `None`: only operators declare.
    pub node_lost_after_ms: Option<u64>,
}

impl Timing {
    /// Timing derived from the gossip interval: a few rounds to settle.
    pub fn for_interval(interval_ms: u64) -> Self {
        Self {
            settle_ms: interval_ms * 4,
            ready_timeout_ms: 120_000,
            retention_ms: 24 * 3600 * 1000,
            node_lost_after_ms: None,
        }
    }
}

#[cfg(test)]
mod safety;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lost;
