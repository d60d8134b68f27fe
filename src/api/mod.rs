//! The agent's API, written once (firecracker's `VmmAction` habit): one [`Request`] in, an
//! [`Outcome`] or a typed [`ApiError`] out. The owner loop answers it
//! (`agent::Agent`), the control socket carries it as JSON lines (`control::server`,
//! `control::client`), and tests call it in process through `agent::AgentHandle`.
//!
//! It sits below both the agent and the control socket and imports only the decision
//! core's types (plus the gossip health report `status` shows). Its JSON is the wire
//! format of the control socket and what `--json` prints, so it only ever grows: a CLI and
//! an agent of the previous version still understand each other ([`wire`]).

use std::future::Future;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::decide::core::{LostError, PartialError, PartialVerdict, VolumeError};
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::node::NodeAction;
use crate::decide::request::DrainOptions;

pub mod reports;
pub mod wire;

pub use reports::{
    ActionReport, LostReport, LostStatus, NewVolume, NodeStatus, PendingRequest, PlanLine, StatusReport, VolumeFault,
    VolumeStatus,
};

/// A request to the agent. On the wire: `{"op":"status"}`, `{"op":"node_action",...}`.
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
        options: DrainOptions,
    },
    /// The placement a drain of `node` would get now; changes nothing.
    Plan {
        /// The node to drain.
        node: NodeName,
    },
    /// Where one volume would move now (`volume move --dry-run`); changes nothing.
    MovePlan {
        /// The volume.
        volume: VolumeId,
        /// Only this node may take it (`--to`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<NodeName>,
        /// Labels the target must carry for this move (`--require`).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        requires: std::collections::BTreeMap<String, String>,
    },
    /// Register a volume owned by this node.
    VolumeAdd(NewVolume),
    /// Every volume of the fleet.
    Volumes,
    /// Delete copies on this node that were handed off (before the retention window ends).
    Gc,
    /// The WireGuard mesh's peers as this node sees them.
    MeshStatus,
    /// Declare a node lost for good (docs/failures.md).
    NodeLost {
        /// The node.
        node: NodeName,
        /// Declare it even if gossip shows it alive (or has never seen it).
        #[serde(default)]
        force: bool,
        /// Accept that writes made on it since a cut-over to it are gone.
        #[serde(default)]
        accept_data_loss: bool,
        /// Say what it would do; declare nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// Start a roll of the fleet (docs/roll.md).
    RollStart {
        /// The nodes in order; `None`: every node gossip shows that is not lost, by name.
        #[serde(default)]
        nodes: Option<Vec<NodeName>>,
        /// At most this many nodes unavailable by rolls at once, fleet-wide.
        max_unavailable: u32,
        /// The command run on each node once it is drained.
        #[serde(default)]
        exec: Option<String>,
        /// Undrain each node after its command.
        #[serde(default)]
        undrain_after: bool,
        /// And move back the volumes that left it (docs/return.md).
        #[serde(default)]
        return_after: bool,
        /// The pause after each node, ms.
        #[serde(default)]
        pause_ms: u64,
        /// Kill `exec` after this long, ms (`None`: the default, 30 min).
        #[serde(default)]
        exec_timeout_ms: Option<u64>,
        /// Say what it would do; start nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// Resume or cancel a roll, from any node.
    RollCtl {
        /// The roll's id.
        id: String,
        /// What to do.
        action: crate::decide::roll::RollAction,
    },
    /// Every roll this node knows, with each node's step.
    RollStatus,
    /// Keep or delete an incomplete copy on this node (its source was declared lost).
    Partial {
        /// The volume.
        volume: VolumeId,
        /// Keep it as the volume, or delete it.
        verdict: PartialVerdict,
    },
}

/// What a request that was carried out answers. On the wire: `{"result":"status",...}`;
/// a refusal is `{"result":"error",...}` ([`wire`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::NodeAction`].
    NodeAction(ActionReport),
    /// Answer to [`Request::Plan`] and [`Request::MovePlan`].
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
    /// Answer to [`Request::NodeLost`].
    NodeLost(Box<LostReport>),
    /// Answer to the roll requests: the roll started or acted on (`id`), and reports.
    Rolls {
        /// The roll started, resumed or cancelled (`None` for status and dry runs).
        #[serde(default)]
        id: Option<String>,
        /// The rolls, oldest first.
        rolls: Vec<crate::decide::roll::RollReport>,
    },
    /// Answer to [`Request::VolumeAdd`], [`Request::Gc`] and [`Request::Partial`]: done,
    /// and what was done.
    #[serde(rename = "ok")]
    Done {
        /// What was done, for the operator.
        message: String,
    },
}

/// Why a request was refused: one variant per refusal a caller may act on. `Display` is
/// the operator's message (what is wrong and the fix); on the wire it travels as
/// `message` with the variant as `kind` and its fields beside it ([`wire`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApiError {
    /// The owner loop has stopped (or stops before answering).
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A node action names a node gossip does not know, without `--force`.
    #[error(
        "no node named {node:?} in the fleet (known: {}); pass --force to publish the request anyway",
        .known.iter().map(NodeName::as_str).collect::<Vec<_>>().join(", ")
    )]
    UnknownNode {
        /// The name asked for.
        node: NodeName,
        /// Every node this agent knows.
        known: Vec<NodeName>,
    },
    /// The state dir refused the node request: neither applied nor published (a restart
    /// would undo an acknowledged one).
    #[error("{action} {node} was not applied: {reason}")]
    NotApplied {
        /// What was asked.
        action: NodeAction,
        /// Of which node.
        node: NodeName,
        /// The state dir's error, naming the path.
        reason: String,
    },
    /// The decision core refused the volume (exists here or elsewhere, no data plane).
    #[error(transparent)]
    Volume {
        /// The core's reason.
        refusal: VolumeError,
    },
    /// `volume add --path` names something that cannot be opened.
    #[error("cannot open {}: {reason} (give an existing file or block device)", .path.display())]
    CannotOpen {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A new volume needs a size, an existing one a path.
    #[error("give --size for a new volume, or --path for an existing one")]
    SizeOrPath,
    /// The new volume's file could not be created in the pool.
    #[error("cannot create {}: {reason} (check pool.dir)", .path.display())]
    CannotCreate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The volume table or the state dir refused the new volume: everything was undone.
    #[error("volume {volume} was not added: {reason}")]
    VolumeNotAdded {
        /// The volume.
        volume: VolumeId,
        /// The store's error, naming the path.
        reason: String,
    },
    /// `node lost` refused (alive, unknown, itself, or it would lose writes without
    /// `--accept-data-loss`: the message lists them).
    #[error(transparent)]
    Lost {
        /// The core's reason.
        refusal: LostError,
    },
    /// The state dir refused a decision: nothing was done or published (a restart would
    /// undo an acknowledged one).
    #[error("{what} was not recorded: {reason}")]
    NotRecorded {
        /// What was asked.
        what: String,
        /// The state dir's error, naming the path.
        reason: String,
    },
    /// `partial accept|delete` names a volume with no incomplete copy here.
    #[error(transparent)]
    Partial {
        /// The core's reason.
        refusal: PartialError,
    },
    /// A roll request that cannot be carried out (bad spec, unknown roll): the message says
    /// what to change.
    #[error("{message}")]
    Roll {
        /// What is wrong, and the fix.
        message: String,
    },
    /// A control request line longer than the socket accepts.
    #[error("control request longer than {max} bytes: refused")]
    RequestTooLong {
        /// The bound in bytes.
        max: usize,
    },
    /// A control request line that is not UTF-8.
    #[error("control request is not UTF-8 ({reason}): refused")]
    RequestNotUtf8 {
        /// Where the bad byte is.
        reason: String,
    },
    /// A control request line that is not a [`Request`].
    #[error("malformed control request: {reason}")]
    MalformedRequest {
        /// The JSON error.
        reason: String,
    },
    /// A refusal without a `kind` this version knows (from an agent of another version):
    /// only its message.
    #[error("{message}")]
    Refused {
        /// The agent's message.
        message: String,
    },
}

impl From<VolumeError> for ApiError {
    fn from(refusal: VolumeError) -> Self {
        Self::Volume { refusal }
    }
}

impl From<LostError> for ApiError {
    fn from(refusal: LostError) -> Self {
        Self::Lost { refusal }
    }
}

impl From<PartialError> for ApiError {
    fn from(refusal: PartialError) -> Self {
        Self::Partial { refusal }
    }
}

impl Answer for LostReport {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::NodeLost(r) = outcome { Ok(*r) } else { Err(outcome) }
    }
}

/// Whatever answers requests: the agent's handle in process; the control socket serves
/// any of them.
pub trait Api: Clone + Send + Sync + 'static {
    /// Answers one request.
    fn ask(&self, request: Request) -> impl Future<Output = Result<Outcome, ApiError>> + Send;
}

/// The payload of the [`Outcome`] a request answers with, for callers that know which
/// one they asked for.
pub trait Answer: Sized {
    /// The payload, or the outcome back when it is another one.
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome>;
}

/// The roll id (if any) and the reports of a roll request.
impl Answer for (Option<String>, Vec<crate::decide::roll::RollReport>) {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Rolls { id, rolls } = outcome { Ok((id, rolls)) } else { Err(outcome) }
    }
}

impl Answer for StatusReport {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Status(s) = outcome { Ok(s) } else { Err(outcome) }
    }
}

impl Answer for ActionReport {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::NodeAction(r) = outcome { Ok(r) } else { Err(outcome) }
    }
}

impl Answer for Vec<PlanLine> {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Plan { plan } = outcome { Ok(plan) } else { Err(outcome) }
    }
}

impl Answer for Vec<VolumeStatus> {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Volumes { volumes } = outcome { Ok(volumes) } else { Err(outcome) }
    }
}

/// The mesh status report.
impl Answer for serde_json::Value {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Mesh { mesh } = outcome { Ok(mesh) } else { Err(outcome) }
    }
}

/// The message of [`Outcome::Done`].
impl Answer for String {
    fn from_outcome(outcome: Outcome) -> Result<Self, Outcome> {
        if let Outcome::Done { message } = outcome { Ok(message) } else { Err(outcome) }
    }
}
