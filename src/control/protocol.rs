//! The control API between the CLI and the local agent: one JSON request line, one JSON
//! response line, over a Unix socket only root can open. These types are also what
//! `--json` prints, so they are a stable interface for operators' scripts.

use serde::{Deserialize, Serialize};

use crate::decide::model::{NodeName, VolumeId};
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::AppliedRequest;

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every node the agent knows.
    Status,
    /// Cordon, uncordon, drain or undrain a node (this one or any other).
    NodeAction {
        /// The node to act on (a request naming an invalid one does not parse).
        node: NodeName,
        /// What to do.
        action: NodeAction,
        /// Publish even if the node is not (yet) known to gossip.
        #[serde(default)]
        force: bool,
        /// How to drain (with `drain`).
        #[serde(default)]
        options: crate::decide::request::DrainOptions,
    },
    /// The placement a drain of `node` would get now; changes nothing.
    Plan {
        /// The node to drain.
        node: NodeName,
    },
    /// Register a volume owned by this node.
    VolumeAdd(NewVolume),
    /// Every volume of the fleet.
    Volumes,
    /// Delete copies on this node that were handed off (before the retention window ends).
    Gc,
    /// The WireGuard mesh's peers as this node sees them.
    MeshStatus,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::NodeAction`].
    NodeAction(ActionReport),
    /// Answer to [`Request::Plan`].
    Plan {
        /// One line per volume of the node.
        plan: Vec<PlanLine>,
    },
    /// Answer to [`Request::Volumes`].
    Volumes {
        /// The volumes, sorted by id.
        volumes: Vec<VolumeStatus>,
    },
    /// Answer to [`Request::MeshStatus`]: the backend's report.
    Mesh {
        /// Backend, peers, handshake ages, bytes.
        mesh: serde_json::Value,
    },
    /// The request was carried out.
    Ok {
        /// What was done.
        message: String,
    },
    /// The request was refused; `message` says why and what to do.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

/// The fleet as this agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The local node.
    #[serde(rename = "self")]
    pub self_name: String,
    /// Every known node, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// How gossip is protected, what it dropped, and names claimed twice (README.md, "Trust").
    #[serde(default)]
    pub gossip: crate::cluster::identity::GossipHealth,
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
    /// Regions on the holder.
    pub hydrated: u64,
    /// Regions in all.
    pub total: u64,
    /// Recent hydration rate.
    pub bytes_per_s: u64,
    /// Bytes read from the source by the move under way, or by the last move.
    #[serde(default)]
    pub fetched_bytes: u64,
    /// Bytes the workload's reads took straight from the source during the move under
    /// way (within regions not yet copied; on top of `fetched_bytes`).
    #[serde(default)]
    pub read_through_bytes: u64,
    /// The node the last move came from, once it has arrived.
    #[serde(default)]
    pub arrived_from: Option<String>,
    /// Cut over to a holder that is now dead: the source keeps its copy.
    pub stranded: bool,
    /// The holder's hydration cannot progress: the source does not answer, or the dest
    /// is full (`error` says which).
    pub stalled: bool,
    /// The last error, if any.
    pub error: Option<String>,
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
