//! Everything an agent decides, as a pure state machine: a [`ClusterView`], `now` and
//! data-plane events in; the gossip keys it should publish, whether to persist, and
//! data-plane commands out. The async owner loop and the deterministic simulation both
//! drive this same code, so what the simulation proves is what the agent does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::view::ClusterView;
use crate::decide::lease::{
    HolderEvent, HolderPhase, HolderVolume, SourceEffect, SourceEvent, SourcePhase, SourceVolume, Timing,
};
use crate::decide::lost::LostDeclaration;
use crate::decide::model::{Arrival, CloneProgress, Hooks, Incoming, NodeName, VolumeId, WireguardAdvert};
use crate::decide::moves::MoveOrder;
use crate::decide::node::{self, NodeAction, NodeEvent, NodeState};
use crate::decide::placement::Candidate;
use crate::decide::request::{self, AppliedRequest, DrainOptions, NodeRequest};

mod data;
mod holder;
mod keys;
mod lost;
mod moves;
mod returns;
mod source;

pub use data::{DataCommand, DataEvent};
pub use lost::{AsideCopy, LostError, PartialError, PartialVerdict};

/// Static facts and settings of this agent.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Node name.
    pub name: NodeName,
    /// Labels offered to placement.
    pub labels: BTreeMap<String, String>,
    /// Capacity advertised for incoming volumes (the agent re-reads it as the pool fills).
    pub free_bytes: u64,
    /// It runs a data plane: without one it neither takes volumes nor gives them up, and
    /// refuses to create them (nothing could ever move them).
    pub data_plane: bool,
    /// Gossip address advertised.
    pub gossip_addr: std::net::SocketAddr,
    /// Mesh address, when a mesh carries traffic.
    pub mesh_addr: Option<String>,
    /// WireGuard backend in use.
    pub mesh_backend: Option<String>,
    /// `ip:port` of this node's iSCSI target.
    pub export_addr: String,
    /// Lease timing.
    pub timing: Timing,
    /// WireGuard identity to advertise (set by the mesh each tick).
    pub wireguard: Option<WireguardAdvert>,
}

/// A volume this node owns (its source side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedVolume {
    /// Lease state.
    pub lease: SourceVolume,
    /// Labels a target must carry.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// Hooks around its moves (they travel with the volume).
    #[serde(default)]
    pub hooks: Hooks,
    /// How it arrived here, if it moved here.
    #[serde(default)]
    pub arrived: Option<Arrival>,
    /// A move of this volume alone (`volume move`), until handed off or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<MoveOrder>,
}

/// The durable state: what a restarted agent comes back with (a draining node stays draining).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreState {
    /// Format version of this document.
    pub format: u32,
    /// Node lifecycle state.
    pub node_state: NodeState,
    /// The last node request handled here.
    pub last_request: Option<AppliedRequest>,
    /// Requests this node issued for others, until they adopt them.
    #[serde(default)]
    pub issued: BTreeMap<NodeName, NodeRequest>,
    /// Volumes owned here.
    #[serde(default)]
    pub volumes: BTreeMap<VolumeId, OwnedVolume>,
    /// Volumes moving here.
    #[serde(default)]
    pub holding: BTreeMap<VolumeId, HolderVolume>,
    /// Options of the drain under way (from the last `drain` request applied).
    #[serde(default)]
    pub drain_options: DrainOptions,
    /// Export, labels and hooks of each volume in `holding`.
    #[serde(default)]
    pub incoming: BTreeMap<VolumeId, Incoming>,
    /// Every node declared lost that this node knows of (kept and published again as
    /// `lost/<node>`, docs/failures.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lost: BTreeMap<NodeName, LostDeclaration>,
    /// Copies set aside since this node learned it was declared lost; only `gc` deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aside: Vec<AsideCopy>,
}

impl Default for CoreState {
    fn default() -> Self {
        Self {
            format: 1,
            node_state: NodeState::Active,
            last_request: None,
            issued: BTreeMap::new(),
            volumes: BTreeMap::new(),
            holding: BTreeMap::new(),
            drain_options: DrainOptions::default(),
            incoming: BTreeMap::new(),
            lost: BTreeMap::new(),
            aside: Vec::new(),
        }
    }
}

/// The outcome of one input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Data-plane work, in order.
    pub commands: Vec<DataCommand>,
    /// The durable state changed: write it before acting on `commands`.
    pub persist: bool,
}

/// The agent's decision core.
#[derive(Debug, Clone)]
pub struct Core {
    /// Settings.
    pub config: CoreConfig,
    /// Durable state.
    pub state: CoreState,
    claims: BTreeMap<(NodeName, VolumeId), u64>,
    progress: BTreeMap<VolumeId, CloneProgress>,
    gc_requested: bool,
    /// Exports to open once the holder's address is known (after a restart the view is
    /// empty, and an ACL without the holder's address would let nobody in): volume →
    /// (holder, epoch).
    unaddressed_exports: BTreeMap<VolumeId, (NodeName, u64)>,
    /// Since when each node has been seen dead (for `[lease] node_lost_after`; not
    /// persisted, so a restart starts counting again).
    dead_since: BTreeMap<NodeName, u64>,
    /// Restart work of moves coming here, until the first look at the fleet: a node that
    /// was declared lost while it was down must learn it before starting a workload.
    deferred: Option<Vec<(VolumeId, crate::decide::lease::HolderEffect)>>,
    /// What each volume moving back to the node it came from is published with
    /// (src/decide/returns.rs), by lease epoch; taken again when the export re-opens
    /// after a restart, so not persisted.
    returns: BTreeMap<VolumeId, (u64, crate::decide::returns::ReturnBase)>,
}

/// Why a volume cannot be added. Serializable: the API carries it as a typed refusal
/// (`{"exists":"db"}` beside the message, src/api/wire.rs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeError {
    /// Already here.
    #[error("volume {0} already exists on this node")]
    Exists(VolumeId),
    /// Already elsewhere in the fleet.
    #[error("volume {0} already exists on node {1}; volume ids are fleet-wide")]
    ExistsElsewhere(VolumeId, NodeName),
    /// This node gossips only: a volume here could never move.
    #[error(
        "this node has no data plane (dataplane.backend = \"none\"), so volume {0} could never move: set [dataplane] backend = \"iscsi\" and restart the agent"
    )]
    NoDataPlane(VolumeId),
}

impl Core {
    /// A core restored from durable state.
    pub fn new(config: CoreConfig, state: CoreState) -> Self {
        Self {
            config,
            state,
            claims: BTreeMap::new(),
            progress: BTreeMap::new(),
            gc_requested: false,
            unaddressed_exports: BTreeMap::new(),
            dead_since: BTreeMap::new(),
            deferred: None,
            returns: BTreeMap::new(),
        }
    }

    /// Data-plane work to re-establish after a restart (exports, clones, workloads).
    pub fn restart(&mut self) -> Output {
        let mut out = Output::default();
        let effects: Vec<(VolumeId, SourceEffect)> = self
            .state
            .volumes
            .iter()
            .flat_map(|(id, v)| v.lease.on_restart().into_iter().map(|fx| (id.clone(), fx)))
            .collect();
        for (id, fx) in effects {
            self.source_command(&id, fx, None, &mut out);
        }
        let ids: Vec<VolumeId> = self.state.holding.keys().cloned().collect();
        for id in ids {
            let fx = self.state.holding.get_mut(&id).map(HolderVolume::on_restart).unwrap_or_default();
            out.persist |= !fx.is_empty();
            for f in fx {
                self.defer(&id, f);
            }
        }
        out
    }

    /// Adds a volume owned here.
    pub fn add_volume(
        &mut self,
        id: &VolumeId,
        size: u64,
        requires: BTreeMap<String, String>,
        hooks: Hooks,
        view: &ClusterView,
    ) -> Result<Output, VolumeError> {
        if self.state.volumes.contains_key(id) {
            return Err(VolumeError::Exists(id.clone()));
        }
        if !self.config.data_plane {
            return Err(VolumeError::NoDataPlane(id.clone()));
        }
        if let Some(owner) = owner_in_view(view, id).filter(|o| **o != self.config.name) {
            return Err(VolumeError::ExistsElsewhere(id.clone(), owner.clone()));
        }
        self.state.volumes.insert(
            id.clone(),
            OwnedVolume { lease: SourceVolume::new(id, size), requires, hooks, arrived: None, moving: None },
        );
        Ok(Output { commands: vec![], persist: true })
    }

    /// Asks that handed-off copies be deleted now rather than after the retention window.
    pub fn request_gc(&mut self) {
        self.gc_requested = true;
    }

    /// Applies a node request here (from the CLI on this node, or adopted from gossip).
    pub fn apply_request(&mut self, req: &NodeRequest) -> Result<NodeState, String> {
        let outcome = node::step(self.state.node_state, NodeEvent::Requested(req.action)).map_err(|e| e.to_string());
        // A move changes one volume, not the node (src/decide/moves.rs).
        let outcome = match outcome {
            Ok(t) if req.action == NodeAction::Move => self.apply_move(req).map(|()| t),
            o => o,
        };
        let rejected = match &outcome {
            Ok(t) => {
                self.state.node_state = t.to;
                if req.action == NodeAction::Drain {
                    self.state.drain_options = req.options.clone();
                    // Draining again is how an operator retries volumes whose hook failed
                    // (after fixing the hook): they are offered afresh on the next tick.
                    for v in self.state.volumes.values_mut() {
                        if matches!(v.lease.phase, SourcePhase::Failed { .. }) {
                            v.lease.phase = SourcePhase::Held;
                        }
                    }
                }
                None
            }
            Err(e) => Some(e.clone()),
        };
        self.state.last_request = Some(AppliedRequest {
            seq: req.seq,
            nonce: req.nonce.clone(),
            action: req.action,
            rejected: rejected.clone(),
        });
        rejected.map_or(Ok(self.state.node_state), Err)
    }

    /// Issues a request for another node: published until that node adopts it.
    pub fn issue_request(
        &mut self,
        node: &NodeName,
        action: NodeAction,
        options: DrainOptions,
        nonce: String,
        now_ms: u64,
        view: &ClusterView,
    ) -> NodeRequest {
        let req = NodeRequest {
            seq: request::next_seq(now_ms, view.highest_seq_for(node)),
            nonce,
            action,
            issued_by: self.config.name.clone(),
            options,
        };
        if *node != self.config.name {
            self.state.issued.insert(node.clone(), req.clone());
        }
        req
    }

    /// One look at the cluster.
    pub fn tick(&mut self, view: &ClusterView, now_ms: u64) -> Output {
        let mut out = Output::default();
        let me = self.config.name.clone();
        for req in request::pending(self.state.last_request.as_ref(), view.requests_for(&me))
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
        {
            let _ = self.apply_request(&req);
            out.persist = true;
        }
        let before = self.state.issued.len();
        self.state.issued.retain(|node, req| {
            !view
                .nodes
                .get(node)
                .and_then(|n| n.record.as_ref())
                .and_then(|r| r.last_request.as_ref())
                .is_some_and(|l| l.covers(req))
        });
        out.persist |= before != self.state.issued.len();
        if self.tick_lost(view, now_ms, &mut out) {
            self.gc_requested = false;
            return out;
        }
        self.open_addressed_exports(view, &mut out);
        self.tick_sources(view, now_ms, &mut out);
        if self.state.node_state == NodeState::Drained
            && self.state.volumes.values().any(|v| v.lease.pending())
            && let Ok(t) = node::step(self.state.node_state, NodeEvent::VolumeReturned)
        {
            // A copy came back (its new owner is lost): the drain is not over after all.
            self.state.node_state = t.to;
            out.persist = true;
        }
        if self.state.node_state == NodeState::Draining
            && !self.state.volumes.values().any(|v| v.lease.pending())
            && let Ok(t) = node::step(self.state.node_state, NodeEvent::AllVolumesHandedOff)
        {
            self.state.node_state = t.to;
            out.persist = true;
        }
        out.persist |= self.end_moves();
        self.holders_of_lost_sources(&mut out);
        self.tick_holders(view, &mut out);
        self.update_claims(view);
        self.gc_requested = false;
        out
    }

    /// Feeds a data-plane event in. `view` is the latest look at the cluster (an export the
    /// event lets open is addressed to the holder's address in it).
    pub fn data_event(&mut self, event: DataEvent, view: &ClusterView, now_ms: u64) -> Output {
        let mut out = Output::default();
        match event {
            DataEvent::HookFailed { volume, reason } => {
                self.source_event(&volume, &SourceEvent::HookFailed(reason), view, now_ms, &mut out)
            }
            DataEvent::WorkloadStopped { volume, epoch } => {
                self.source_event(&volume, &SourceEvent::WorkloadStopped { epoch }, view, now_ms, &mut out)
            }
            DataEvent::ExportOpened { volume, epoch } => {
                self.source_event(&volume, &SourceEvent::ExportOpened { epoch }, view, now_ms, &mut out)
            }
            DataEvent::CloneReady { volume, epoch } | DataEvent::CloneFailed { volume, epoch, .. }
                if self.state.holding.get(&volume).is_none_or(|h| h.epoch != epoch) => {}
            DataEvent::CloneReady { volume, .. } => self.holder_step(&volume, &HolderEvent::CloneReady, &mut out),
            DataEvent::CloneFailed { volume, reason, .. } => {
                self.progress.entry(volume.clone()).or_default().error = Some(reason.clone());
                self.holder_step(&volume, &HolderEvent::CloneFailed(reason), &mut out);
            }
            DataEvent::Progress { volume, progress } => {
                let stalled = progress.stalled;
                self.progress.insert(volume.clone(), progress);
                if matches!(self.state.holding.get(&volume).map(|h| &h.phase), Some(HolderPhase::Running { stalled: s }) if *s != stalled)
                {
                    self.holder_step(&volume, &HolderEvent::Stalled(stalled), &mut out);
                }
            }
            DataEvent::Hydrated { volume } => self.holder_step(&volume, &HolderEvent::Hydrated, &mut out),
            DataEvent::Finalized { volume, digest } => {
                if let Some(h) = self.state.holding.get_mut(&volume) {
                    h.digest = digest;
                }
                self.holder_step(&volume, &HolderEvent::Finalized, &mut out)
            }
            DataEvent::Verified { volume, epoch, result } => {
                if let Err(why) = &result {
                    tracing::error!(%volume, epoch, "verify failed: {why}; the copy here is kept");
                }
                self.source_event(&volume, &SourceEvent::Verified { epoch, result }, view, now_ms, &mut out)
            }
            DataEvent::SourceLost { volume, result } => self.source_lost_counted(&volume, result, &mut out),
            DataEvent::Written { volume, epoch, result } => self.note_written(&volume, epoch, result),
            DataEvent::ReturnFull { volume, epoch, reason } => self.return_fell_back(&volume, epoch, reason, &mut out),
        }
        out
    }
}

/// Every node of the view as placement sees it (the drain itself and `--dry-run` alike).
pub fn candidates(view: &ClusterView) -> Vec<Candidate> {
    let lost = view.lost();
    view.nodes
        .values()
        .filter_map(|n| {
            let r = n.record.as_ref()?;
            Some(Candidate {
                name: n.name.clone(),
                // A node declared lost is never chosen, whatever its failure detector says.
                alive: n.alive && !lost.contains_key(&n.name),
                state: r.state,
                free_bytes: r.free_bytes,
                labels: r.labels.clone(),
                data_plane: !r.no_data_plane,
            })
        })
        .collect()
}

/// The node that owns volume `id` according to the view: the highest epoch wins; at the
/// same epoch, the new owner (its record is `held`) wins over the source that moved it.
pub fn owner_in_view<'a>(view: &'a ClusterView, id: &str) -> Option<&'a NodeName> {
    view.nodes
        .values()
        .filter_map(|n| n.volumes.get(id).map(|r| (&n.name, r)))
        .filter(|(_, r)| !matches!(r.phase, SourcePhase::Deleted { .. }))
        .max_by_key(|(name, r)| {
            (
                r.epoch,
                !matches!(r.phase, SourcePhase::CutOver { .. } | SourcePhase::HandedOff { .. }),
                std::cmp::Reverse(*name),
            )
        })
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lost;
#[cfg(test)]
mod tests_moves;
#[cfg(test)]
mod tests_returns;
