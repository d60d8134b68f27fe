//! What the API's answers carry, and what `--json` prints: the fleet (`status`), a node
//! action's outcome, a drain plan, the volume list, a new volume. Their JSON is a stable
//! interface for operators' scripts, so fields are only ever added (with a default).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decide::model::{Hydration, NodeName, VolumeId};
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::AppliedRequest;

/// The fleet as this agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The local node.
    #[serde(rename = "self")]
    pub self_name: String,
    /// Every known node, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// How gossip is protected, what it dropped, and names claimed twice (docs/usage.md, "Configuration and trust").
    #[serde(default)]
    pub gossip: crate::cluster::identity::GossipHealth,
    /// Nodes declared lost and the copies this node set aside (docs/failures.md); absent
    /// when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<Box<LostStatus>>,
    /// The userspace clones on this node and how each is exposed to its workload
    /// (`nbd`, `ublk`, `fuse-loop`: docs/exposures.md); absent when there are none.
    /// (A boxed slice: a `Vec` would make every `Outcome` carrying a report larger.)
    #[serde(default, skip_serializing_if = "no_clones")]
    pub clones: Box<[crate::dataplane::ExposedClone]>,
}

fn no_clones(c: &[crate::dataplane::ExposedClone]) -> bool {
    c.is_empty()
}

/// The lost nodes part of `status` (docs/failures.md): every declaration this agent
/// knows, and the copies it set aside because it was itself declared lost (removed only
/// by `meshdrain gc`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LostStatus {
    /// Declarations by node.
    #[serde(default)]
    pub declared: std::collections::BTreeMap<NodeName, crate::decide::lost::LostDeclaration>,
    /// Copies set aside on this node.
    #[serde(default)]
    pub aside: Vec<crate::decide::core::AsideCopy>,
}

impl LostStatus {
    /// Nothing to show (then the field is left out of the JSON, as before it existed).
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty() && self.aside.is_empty()
    }
}

/// What `meshdrain node lost` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostReport {
    /// The node declared.
    pub node: NodeName,
    /// The declaration is recorded (false with `--dry-run`).
    pub declared: bool,
    /// The declaration carries `--accept-data-loss`.
    pub accept_data_loss: bool,
    /// What it does to the volumes, from this node's view.
    pub effects: crate::decide::lost::LossReport,
}

/// One node's line in `meshdrain status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Lifecycle state (`None` until its record arrives).
    pub state: Option<NodeState>,
    /// Alive per the failure detector.
    pub alive: bool,
    /// Gossip address.
    pub gossip_addr: String,
    /// Mesh address, if any.
    pub mesh_addr: Option<String>,
    /// WireGuard backend carrying its mesh.
    pub mesh_backend: Option<String>,
    /// Time since its heartbeat last grew, as seen here.
    pub heartbeat_age_ms: Option<u64>,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Incarnation.
    pub generation: u64,
    /// Free bytes for incoming volumes.
    pub free_bytes: Option<u64>,
    /// Volumes held.
    pub volumes: u32,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Last request applied.
    pub last_request: Option<AppliedRequest>,
    /// Requests this node published that their target has not adopted yet.
    #[serde(default)]
    pub pending_requests: Vec<PendingRequest>,
    /// Gossip keys of this node that were skipped, with the reason.
    pub ignored_keys: Vec<String>,
}

/// A volume to register on a node: a new sparse file (`path` absent) or an existing file
/// or block device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewVolume {
    /// Volume id (fleet-wide; a request with an invalid one does not parse).
    pub id: VolumeId,
    /// Size in bytes for a new volume; ignored for an existing path.
    #[serde(default)]
    pub size: Option<u64>,
    /// Existing file or block device.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// Labels a target must carry.
    #[serde(default)]
    pub requires: std::collections::BTreeMap<String, String>,
    /// Hooks around its moves.
    #[serde(default)]
    pub hooks: crate::decide::model::Hooks,
}

/// One line of `drain --dry-run`: where a volume would go, and why other nodes would not
/// take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLine {
    /// Volume id.
    pub volume: String,
    /// Size in bytes.
    pub size: u64,
    /// The node it would move to, or `None` if no node can take it.
    pub target: Option<String>,
    /// Each other node and why it cannot take the volume.
    pub rejected: Vec<(String, String)>,
}

/// One volume's line in `meshdrain volume list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Volume id.
    pub id: String,
    /// The node that owns it now.
    pub owner: String,
    /// Size in bytes.
    pub size: u64,
    /// Lease epoch.
    pub epoch: u64,
    /// The owner's move phase (`held`, `offered`, `granted`, `cut_over`, `handed_off`, `failed`).
    pub phase: String,
    /// The lease holder, while moving.
    pub holder: Option<String>,
    /// The holder's phase (`preparing`, `ready`, `running`, `finishing`, ...).
    pub holder_phase: Option<String>,
    /// The holder's hydration counters, as top-level fields (`hydrated`, `total`, ...);
    /// `fetched_bytes` is the move under way's, or the last move's once it arrived.
    #[serde(flatten)]
    pub hydration: Hydration,
    /// The node the last move came from, once it has arrived.
    #[serde(default)]
    pub arrived_from: Option<String>,
    /// The phase of that node's copy while it has not let go (`cut_over` while it checks
    /// a `--verify` digest, then `handed_off`); `None` once deleted. `volume move --wait`
    /// ends on `handed_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_phase: Option<String>,
    /// While it moves back to the node it came from: `delta` (only the regions written
    /// since are copied) or `full: <why>` (docs/return.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_mode: Option<String>,
    /// Cut over to a holder that is now dead: the source keeps its copy.
    pub stranded: bool,
    /// The holder's hydration cannot progress: the source does not answer, or the dest
    /// is full (`error` says which).
    pub stalled: bool,
    /// The last error, if any (a failed `--verify` check is told apart by type).
    pub error: Option<VolumeFault>,
    /// The file or block device holding its bytes on its owner, when the owner is the
    /// node answering (other nodes' paths are not gossiped: ask their agent).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
}

/// A published node request waiting for its target to adopt it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The node it names.
    pub node: String,
    /// What it asks.
    pub action: NodeAction,
    /// Its id.
    pub nonce: String,
}

/// What happened to a node action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReport {
    /// The node acted on.
    pub node: String,
    /// The action.
    pub action: NodeAction,
    /// The request's id; the target publishes it in `last_request` once adopted.
    pub nonce: String,
    /// The request's seq.
    pub seq: u64,
    /// True when the node was this agent's own and the action is already applied.
    pub applied: bool,
    /// The node's state after, when applied here.
    pub state: Option<NodeState>,
    /// Why it was refused, when applied here and refused.
    pub rejected: Option<String>,
}

/// Why a volume's line shows an error. On the wire and in `--json` it is the plain text
/// (`"verify failed on node1: ..."`), as before it had a type, so scripts and agents of the
/// previous version read and write the same string; the type is recovered from the text
/// here, in the one place that writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeFault {
    /// A source's `--verify` check failed (docs/lease-protocol.md): it keeps its copy while
    /// the holder already owns the volume. `drain --wait` fails on it.
    VerifyFailed {
        /// The source that keeps its copy.
        on: NodeName,
        /// What the check found.
        reason: String,
    },
    /// Any other error (a hook, the clone, the lease), as the node that had it said.
    Other(String),
}

/// How a [`VolumeFault::VerifyFailed`] line starts.
const VERIFY_FAILED_ON: &str = "verify failed on ";

impl fmt::Display for VolumeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VerifyFailed { on, reason } => write!(f, "{VERIFY_FAILED_ON}{on}: {reason}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<String> for VolumeFault {
    /// Reads the text back: a node name cannot hold `:`, so the first `": "` ends it.
    fn from(text: String) -> Self {
        let verify = text.strip_prefix(VERIFY_FAILED_ON).and_then(|rest| rest.split_once(": "));
        match verify.and_then(|(on, reason)| Some((on.parse().ok()?, reason))) {
            Some((on, reason)) => Self::VerifyFailed { on, reason: reason.to_owned() },
            None => Self::Other(text),
        }
    }
}

impl Serialize for VolumeFault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeFault {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_failure_is_typed_and_its_text_unchanged() {
        let text = "verify failed on node1: digest abc != def";
        let fault: VolumeFault = serde_json::from_value(serde_json::json!(text)).unwrap();
        assert_eq!(
            fault,
            VolumeFault::VerifyFailed { on: "node1".parse().unwrap(), reason: "digest abc != def".into() }
        );
        assert_eq!(serde_json::to_value(&fault).unwrap(), serde_json::json!(text));
        let other = VolumeFault::from("source unreachable: verify failed on x".to_owned());
        assert_eq!(other, VolumeFault::Other("source unreachable: verify failed on x".into()));
        assert_eq!(other.to_string(), "source unreachable: verify failed on x");
    }
}
