//! Node requests from anywhere in the fleet, adopted by the node they name.
//!
//! An operator on node A runs `meshdrain drain C`: A publishes `req/drain/C` in its own
//! gossip state. C adopts every request for it that it has not applied yet, in `(seq,
//! nonce)` order, and remembers the last one durably, so a request is applied once even
//! when gossip repeats it, C restarts, or A leaves. `seq` is a hybrid logical clock: the
//! issuer takes `max(wall clock ms, highest seq it has seen for C + 1)`, so a later request
//! wins even across clock skew between issuers.

use serde::{Deserialize, Serialize};

use super::model::NodeName;
use super::node::NodeAction;

/// A request that a node change state, as published by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    /// Ordering key (hybrid logical clock, ms).
    pub seq: u64,
    /// Random id making the request unique and idempotent.
    pub nonce: String,
    /// What to do.
    pub action: NodeAction,
    /// The node that issued it (for logs and status).
    pub issued_by: NodeName,
    /// How to drain (with `drain`; ignored otherwise).
    #[serde(default)]
    pub options: DrainOptions,
}

/// How a drain moves volumes, chosen by the operator on `meshdrain drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOptions {
    /// Hydration bandwidth per volume, bytes/s (`None`: unlimited).
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// How many volumes move at once (`None`: all).
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Ask holders for a digest of what they read, checked by the source before hand-off.
    #[serde(default)]
    pub verify: bool,
    /// With `move`: the volume and where it may go (src/decide/moves.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<super::moves::VolumeMove>,
}

impl NodeRequest {
    /// The total order requests are applied in.
    pub fn order_key(&self) -> (u64, &str) {
        (self.seq, &self.nonce)
    }
}

/// What a node remembers about the last request it applied (durable, and published so
/// issuers can see their request was adopted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRequest {
    /// The request's seq.
    pub seq: u64,
    /// The request's nonce.
    pub nonce: String,
    /// The action.
    pub action: NodeAction,
    /// `None` if applied, else why it was refused.
    pub rejected: Option<String>,
}

impl AppliedRequest {
    /// Whether `req` is at or before this one in the total order (already handled).
    pub fn covers(&self, req: &NodeRequest) -> bool {
        (self.seq, self.nonce.as_str()) >= req.order_key()
    }
}

/// Picks the requests still to apply from everything gossip shows for this node, in order.
pub fn pending<'a>(
    last: Option<&AppliedRequest>,
    seen: impl IntoIterator<Item = &'a NodeRequest>,
) -> Vec<&'a NodeRequest> {
    let mut out: Vec<&NodeRequest> = seen.into_iter().filter(|r| last.is_none_or(|l| !l.covers(r))).collect();
    out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    out.dedup_by(|a, b| a.nonce == b.nonce);
    out
}

/// The seq an issuer should give a new request: later than its clock and than anything
/// it has seen for that node.
pub fn next_seq(now_ms: u64, highest_seen: u64) -> u64 {
    now_ms.max(highest_seen.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(seq: u64, nonce: &str, action: NodeAction) -> NodeRequest {
        NodeRequest {
            seq,
            nonce: nonce.into(),
            action,
            issued_by: "n1".parse().unwrap(),
            options: DrainOptions::default(),
        }
    }

    #[test]
    fn applies_in_order_and_once() {
        let reqs = [r(30, "c", NodeAction::Undrain), r(10, "a", NodeAction::Drain), r(20, "b", NodeAction::Cordon)];
        let p = pending(None, &reqs);
        assert_eq!(p.iter().map(|r| r.nonce.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let last = AppliedRequest { seq: 20, nonce: "b".into(), action: NodeAction::Cordon, rejected: None };
        let p = pending(Some(&last), &reqs);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].nonce, "c");
    }

    #[test]
    fn the_same_request_seen_twice_is_applied_once() {
        let a = r(10, "a", NodeAction::Drain);
        let b = a.clone();
        let p = pending(None, [&a, &b]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn equal_seq_breaks_on_nonce() {
        let reqs = [r(10, "z", NodeAction::Undrain), r(10, "a", NodeAction::Drain)];
        let p = pending(None, &reqs);
        assert_eq!(p[1].nonce, "z");
    }

    #[test]
    fn seq_beats_clock_skew() {
        assert_eq!(next_seq(100, 500), 501);
        assert_eq!(next_seq(1000, 500), 1000);
        assert_eq!(next_seq(0, u64::MAX), u64::MAX);
    }
}
