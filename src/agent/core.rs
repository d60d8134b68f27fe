//! Everything an agent decides, as a pure state machine: a [`ClusterView`], `now` and
//! data-plane events in; the gossip keys it should publish, whether to persist, and
//! data-plane commands out. The async owner loop and the deterministic simulation both
//! drive this same code, so what the simulation proves is what the agent does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::schema::{
    self, ClaimRecord, DoneRecord, ExportEndpoint, Key, NodeRecord, ProgressRecord, VolumeRecord,
};
use crate::cluster::view::ClusterView;
use crate::drain::node::{self, NodeAction, NodeEvent, NodeState};
use crate::drain::placement::{self, Candidate, VolumeSpec};
use crate::drain::request::{self, AppliedRequest, DrainOptions, NodeRequest};
use crate::lease::{
    HolderEffect, HolderEvent, HolderPhase, HolderSignal, HolderVolume, SourceEffect, SourceEvent, SourcePhase,
    SourceSignal, SourceVolume, Timing,
};
use crate::store::volumes::Hooks;

/// Static facts and settings of this agent.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Node name.
    pub name: String,
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
    pub wireguard: Option<crate::cluster::schema::WireguardAdvert>,
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
}

/// How a volume's last move went, kept by its new owner and published with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// The node it came from.
    pub from: String,
    /// The lease epoch of the move.
    pub epoch: u64,
    /// Bytes read from the source (the rest was written by the workload or unallocated).
    pub fetched_bytes: u64,
}

/// What a holder keeps about a volume coming in, from the grant: enough to resume after a
/// restart and to own the volume afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// The source's export.
    pub export: Option<ExportEndpoint>,
    /// Labels a target must carry.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// Hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// The source asked for a digest of what is read (`--verify`).
    #[serde(default)]
    pub verify: bool,
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
    pub issued: BTreeMap<String, NodeRequest>,
    /// Volumes owned here.
    #[serde(default)]
    pub volumes: BTreeMap<String, OwnedVolume>,
    /// Volumes moving here.
    #[serde(default)]
    pub holding: BTreeMap<String, HolderVolume>,
    /// Options of the drain under way (from the last `drain` request applied).
    #[serde(default)]
    pub drain_options: DrainOptions,
    /// Export, labels and hooks of each volume in `holding`.
    #[serde(default)]
    pub incoming: BTreeMap<String, Incoming>,
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
        }
    }
}

/// What the data plane must do (export, clone, hooks, deletion). Fields are the volume
/// and what its variant's doc names.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataCommand {
    /// Source: run the `stop` hook (quiesce before export).
    StopWorkload { volume: String, hook: Option<String> },
    /// Source: run the `start` hook here again (move cancelled before cut-over).
    StartWorkload { volume: String, hook: Option<String> },
    /// Source: open the read-only export to `holder_addr` for `epoch`.
    OpenExport { volume: String, holder: String, holder_addr: String, epoch: u64 },
    /// Source: close the export (fences everyone).
    CloseExport { volume: String },
    /// Source: delete the local copy (only after the holder's `done`).
    DeleteData { volume: String },
    /// Source: digest the local copy and compare it with the holder's (`--verify`).
    VerifyCopy { volume: String, epoch: u64, digest: String },
    /// Holder: log in to the export and create the clone, workload not started.
    PrepareClone {
        volume: String,
        source: String,
        export: Option<ExportEndpoint>,
        epoch: u64,
        size: u64,
        rate_limit: Option<u64>,
        /// Digest what is read from the source (`--verify`).
        verify: bool,
    },
    /// Holder: change the hydration bandwidth of a clone under way.
    SetRateLimit { volume: String, rate_limit: Option<u64> },
    /// Holder: start the workload on the clone (`start` hook) and hydrate in the background.
    StartHeldWorkload { volume: String, hook: Option<String> },
    /// Holder: flush, replace the clone by the plain device, log out; then the `done` hook.
    Finalize { volume: String, done_hook: Option<String> },
    /// Holder: remove a revoked partial clone.
    DiscardClone { volume: String },
}

/// What the data plane reports back. Fields are the volume and what its variant's doc names.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataEvent {
    /// Source: a hook for this volume failed.
    HookFailed { volume: String, reason: String },
    /// Source: the export for `epoch` is open.
    ExportOpened { volume: String, epoch: u64 },
    /// Holder: the clone for `epoch` exists.
    CloneReady { volume: String, epoch: u64 },
    /// Holder: preparing the clone for `epoch` failed.
    CloneFailed { volume: String, epoch: u64, reason: String },
    /// Holder: hydration progress.
    Progress {
        volume: String,
        hydrated: u64,
        total: u64,
        bytes_per_s: u64,
        fetched_bytes: u64,
        read_through_bytes: u64,
        stalled: bool,
        error: Option<String>,
    },
    /// Holder: every region is on the dest.
    Hydrated { volume: String },
    /// Holder: flushed and swapped; the volume lives here. `digest` of what was read from
    /// the source when the move asked for one.
    Finalized { volume: String, digest: Option<String> },
    /// Source: the holder's digest compared with the local copy.
    Verified { volume: String, epoch: u64, result: Result<(), String> },
}

/// The outcome of one input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Data-plane work, in order.
    pub commands: Vec<DataCommand>,
    /// The durable state changed: write it before acting on `commands`.
    pub persist: bool,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    hydrated: u64,
    total: u64,
    bytes_per_s: u64,
    fetched_bytes: u64,
    read_through_bytes: u64,
    error: Option<String>,
}

/// The agent's decision core.
#[derive(Debug, Clone)]
pub struct Core {
    /// Settings.
    pub config: CoreConfig,
    /// Durable state.
    pub state: CoreState,
    claims: BTreeMap<(String, String), u64>,
    progress: BTreeMap<String, Progress>,
    gc_requested: bool,
    /// Exports to open once the holder's address is known (after a restart the view is
    /// empty, and an ACL without the holder's address would let nobody in): volume →
    /// (holder, epoch).
    unaddressed_exports: BTreeMap<String, (String, u64)>,
}

/// Why a volume cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// Bad id.
    #[error("{0:?} is not a valid volume id (1-63 of a-z A-Z 0-9 - _ ., starting alphanumeric)")]
    BadId(String),
    /// Already here.
    #[error("volume {0} already exists on this node")]
    Exists(String),
    /// Already elsewhere in the fleet.
    #[error("volume {0} already exists on node {1}; volume ids are fleet-wide")]
    ExistsElsewhere(String, String),
    /// This node gossips only: a volume here could never move.
    #[error(
        "this node has no data plane (dataplane.backend = \"none\"), so volume {0} could never move: set [dataplane] backend = \"iscsi\" and restart the agent"
    )]
    NoDataPlane(String),
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
        }
    }

    /// Data-plane work to re-establish after a restart (exports, clones, workloads).
    pub fn restart(&mut self) -> Output {
        let mut out = Output::default();
        let effects: Vec<(String, SourceEffect)> = self
            .state
            .volumes
            .iter()
            .flat_map(|(id, v)| v.lease.on_restart().into_iter().map(|fx| (id.clone(), fx)))
            .collect();
        for (id, fx) in effects {
            self.source_command(&id, fx, None, &mut out);
        }
        let ids: Vec<String> = self.state.holding.keys().cloned().collect();
        for id in ids {
            let fx = self.state.holding.get_mut(&id).map(HolderVolume::on_restart).unwrap_or_default();
            out.persist |= !fx.is_empty();
            for f in fx {
                self.holder_command(&id, f, &mut out);
            }
        }
        out
    }

    /// Adds a volume owned here.
    pub fn add_volume(
        &mut self,
        id: &str,
        size: u64,
        requires: BTreeMap<String, String>,
        hooks: Hooks,
        view: &ClusterView,
    ) -> Result<Output, VolumeError> {
        if !crate::config::valid_node_name(id) {
            return Err(VolumeError::BadId(id.to_owned()));
        }
        if self.state.volumes.contains_key(id) {
            return Err(VolumeError::Exists(id.to_owned()));
        }
        if !self.config.data_plane {
            return Err(VolumeError::NoDataPlane(id.to_owned()));
        }
        if let Some(owner) = owner_in_view(view, id).filter(|o| *o != self.config.name) {
            return Err(VolumeError::ExistsElsewhere(id.to_owned(), owner.to_owned()));
        }
        self.state
            .volumes
            .insert(id.to_owned(), OwnedVolume { lease: SourceVolume::new(id, size), requires, hooks, arrived: None });
        Ok(Output { commands: vec![], persist: true })
    }

    /// Asks that handed-off copies be deleted now rather than after the retention window.
    pub fn request_gc(&mut self) {
        self.gc_requested = true;
    }

    /// Applies a node request here (from the CLI on this node, or adopted from gossip).
    pub fn apply_request(&mut self, req: &NodeRequest) -> Result<NodeState, String> {
        let outcome = node::step(self.state.node_state, NodeEvent::Requested(req.action));
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
            Err(e) => Some(e.to_string()),
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
        node: &str,
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
        if node != self.config.name {
            self.state.issued.insert(node.to_owned(), req.clone());
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
        self.open_addressed_exports(view, &mut out);
        self.tick_sources(view, now_ms, &mut out);
        if self.state.node_state == NodeState::Draining
            && !self.state.volumes.values().any(|v| v.lease.pending())
            && let Ok(t) = node::step(self.state.node_state, NodeEvent::AllVolumesHandedOff)
        {
            self.state.node_state = t.to;
            out.persist = true;
        }
        self.tick_holders(view, &mut out);
        self.update_claims(view);
        self.gc_requested = false;
        out
    }

    /// Opens the exports that waited for their holder's address, if the lease still
    /// wants them.
    fn open_addressed_exports(&mut self, view: &ClusterView, out: &mut Output) {
        let waiting = std::mem::take(&mut self.unaddressed_exports);
        for (id, (holder, epoch)) in waiting {
            let wanted = self.state.volumes.get(&id).is_some_and(|v| {
                v.lease.epoch == epoch
                    && v.lease.holder() == Some(holder.as_str())
                    && matches!(v.lease.phase, SourcePhase::Granted { .. } | SourcePhase::CutOver { .. })
            });
            if wanted {
                self.source_command(&id, SourceEffect::OpenExport { holder, epoch }, Some(view), out);
            }
        }
    }

    fn tick_sources(&mut self, view: &ClusterView, now_ms: u64, out: &mut Output) {
        // Without a data plane no export can open: offering would stop the workload for a
        // move that cannot happen, so such a node's volumes stay held (status says why).
        let draining = self.state.node_state == NodeState::Draining && self.config.data_plane;
        let me = self.config.name.clone();
        let all = candidates(view);
        let mut order: Vec<(u64, String)> =
            self.state.volumes.iter().map(|(id, v)| (v.lease.size, id.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, id) in order {
            let fixed: Vec<(String, String)> = self
                .state
                .volumes
                .iter()
                .filter(|(_, v)| matches!(v.lease.phase, SourcePhase::Granted { .. } | SourcePhase::CutOver { .. }))
                .filter_map(|(vid, v)| v.lease.holder().map(|h| (vid.clone(), h.to_owned())))
                .collect();
            let specs: Vec<VolumeSpec> = self.state.volumes.iter().map(|(vid, v)| spec(vid, v)).collect();
            let vol = &self.state.volumes[&id];
            let this: Vec<VolumeSpec> =
                specs.iter().filter(|s| s.id == id || fixed.iter().any(|(f, _)| f == &s.id)).cloned().collect();
            let claimants: Vec<Candidate> = all
                .iter()
                .filter(|c| {
                    view.nodes
                        .get(&c.name)
                        .and_then(|n| n.claims.get(&(me.clone(), id.clone())))
                        .is_some_and(|cl| cl.epoch == vol.lease.epoch)
                })
                .cloned()
                .collect();
            let pick = |cands: &[Candidate]| {
                placement::plan(&me, &this, cands, &fixed).into_iter().find(|p| p.volume == id).and_then(|p| p.target)
            };
            let moving = fixed.len() as u32;
            let room = self.state.drain_options.parallel.is_none_or(|p| moving < p);
            let best = if room || vol.lease.holder().is_some() { pick(&claimants) } else { None };
            let planned = pick(&all);
            let holder = vol.lease.holder().map(|h| holder_signal(view, h, &id));
            let event = SourceEvent::Tick {
                draining,
                best_is_planned: best.is_some() && best == planned,
                best_claimant: best,
                holder,
                gc: self.gc_requested,
                verify: self.state.drain_options.verify,
            };
            let v = self.state.volumes.get_mut(&id).expect("volume exists");
            let before = v.lease.clone();
            let effects = v.lease.step(&event, now_ms, &self.config.timing);
            out.persist |= before != v.lease;
            for fx in effects {
                self.source_command(&id, fx, Some(view), out);
            }
            if matches!(self.state.volumes[&id].lease.phase, SourcePhase::Deleted { .. }) {
                self.state.volumes.remove(&id);
            }
        }
    }

    fn source_command(&mut self, id: &str, fx: SourceEffect, view: Option<&ClusterView>, out: &mut Output) {
        let volume = id.to_owned();
        if let SourceEffect::OpenExport { holder, epoch } = &fx {
            let addr = view.map(|v| node_addr(v, holder)).unwrap_or_default();
            if addr.is_empty() {
                self.unaddressed_exports.insert(volume, (holder.clone(), *epoch));
                return;
            }
            self.unaddressed_exports.remove(id);
        }
        let hooks = self.state.volumes.get(id).map(|v| v.hooks.clone()).unwrap_or_default();
        out.commands.push(match fx {
            SourceEffect::StopWorkload => DataCommand::StopWorkload { volume, hook: hooks.stop },
            SourceEffect::StartWorkload => DataCommand::StartWorkload { volume, hook: hooks.start },
            SourceEffect::CloseExport => DataCommand::CloseExport { volume },
            SourceEffect::DeleteData => DataCommand::DeleteData { volume },
            SourceEffect::VerifyCopy { epoch, digest } => DataCommand::VerifyCopy { volume, epoch, digest },
            SourceEffect::OpenExport { holder, epoch } => {
                let holder_addr = view.map_or_else(String::new, |v| node_addr(v, &holder));
                DataCommand::OpenExport { volume, holder, holder_addr, epoch }
            }
        });
    }

    fn tick_holders(&mut self, view: &ClusterView, out: &mut Output) {
        let me = self.config.name.clone();
        for (source, n) in view.nodes.iter().filter(|(name, _)| **name != me) {
            for (id, rec) in &n.volumes {
                // The grant is acted on once its export is open (advertised).
                let SourcePhase::Granted { holder, exported: true, .. } = &rec.phase else { continue };
                let newer = self.state.holding.get(id).is_none_or(|h| h.epoch < rec.epoch && !h.workload_may_run());
                if holder == &me && newer {
                    let (mut h, fx) = HolderVolume::granted(id, source, rec.epoch, rec.size);
                    h.rate_limit = rec.rate_limit;
                    self.state.holding.insert(id.clone(), h);
                    let incoming = Incoming {
                        export: rec.export.clone(),
                        requires: rec.requires.clone(),
                        hooks: rec.hooks.clone(),
                        verify: rec.verify,
                    };
                    self.state.incoming.insert(id.clone(), incoming);
                    out.persist = true;
                    for f in fx {
                        self.holder_command(id, f, out);
                    }
                }
            }
        }
        let ids: Vec<String> = self.state.holding.keys().cloned().collect();
        for id in ids {
            let h = &self.state.holding[&id];
            let rec = view.nodes.get(&h.source).and_then(|n| n.volumes.get(&id));
            let signal = rec.map(|r| SourceSignal {
                epoch: r.epoch,
                cut_over_to_me: matches!(&r.phase, SourcePhase::CutOver { holder, .. } | SourcePhase::HandedOff { holder, .. } if *holder == me),
            });
            let rate = rec.filter(|r| r.epoch == h.epoch).map(|r| r.rate_limit);
            if let Some(rate) = rate.filter(|r| *r != h.rate_limit && h.active()) {
                self.state.holding.get_mut(&id).expect("held").rate_limit = rate;
                out.persist = true;
                out.commands.push(DataCommand::SetRateLimit { volume: id.clone(), rate_limit: rate });
            }
            let h = &self.state.holding[&id];
            let handed_off = rec.is_none_or(|r| {
                matches!(&r.phase, SourcePhase::HandedOff { .. } | SourcePhase::Deleted { .. }) || r.epoch > h.epoch
            });
            if h.phase == HolderPhase::Complete && handed_off {
                // The source has taken note of our `done`: the move is over.
                self.state.holding.remove(&id);
                self.state.incoming.remove(&id);
                out.persist = true;
                continue;
            }
            if h.phase == HolderPhase::Discarded {
                self.state.holding.remove(&id);
                self.state.incoming.remove(&id);
                self.progress.remove(&id);
                out.persist = true;
                continue;
            }
            self.holder_step(&id, &HolderEvent::Tick(signal), out);
        }
    }

    fn holder_step(&mut self, id: &str, event: &HolderEvent, out: &mut Output) {
        let Some(h) = self.state.holding.get_mut(id) else { return };
        let before = h.clone();
        let fx = h.step(event);
        out.persist |= before != *h;
        if h.phase == HolderPhase::Complete && before.phase != HolderPhase::Complete {
            // The data is here and flushed: this node owns the volume from now on.
            let (size, epoch) = (h.size, h.epoch);
            let mut lease = SourceVolume::new(id, size);
            lease.epoch = epoch;
            let meta = self.state.incoming.get(id).cloned();
            let (requires, hooks) = meta.map(|m| (m.requires, m.hooks)).unwrap_or_default();
            let fetched_bytes = self.progress.get(id).map_or(0, |p| p.fetched_bytes);
            let arrived = Some(Arrival { from: h.source.clone(), epoch, fetched_bytes });
            self.state.volumes.insert(id.to_owned(), OwnedVolume { lease, requires, hooks, arrived });
        }
        for f in fx {
            self.holder_command(id, f, out);
        }
    }

    fn holder_command(&self, id: &str, fx: HolderEffect, out: &mut Output) {
        let volume = id.to_owned();
        let Some(h) = self.state.holding.get(id) else { return };
        let meta = self.state.incoming.get(id);
        let hooks = meta.map(|m| m.hooks.clone()).unwrap_or_default();
        out.commands.push(match fx {
            HolderEffect::PrepareClone => DataCommand::PrepareClone {
                volume,
                source: h.source.clone(),
                export: meta.and_then(|m| m.export.clone()),
                epoch: h.epoch,
                size: h.size,
                rate_limit: h.rate_limit,
                verify: meta.is_some_and(|m| m.verify),
            },
            HolderEffect::StartWorkload => DataCommand::StartHeldWorkload { volume, hook: hooks.start },
            HolderEffect::Finalize => DataCommand::Finalize { volume, done_hook: hooks.done },
            HolderEffect::DiscardClone => DataCommand::DiscardClone { volume },
        });
    }

    /// Feeds a data-plane event in.
    pub fn data_event(&mut self, event: DataEvent, now_ms: u64) -> Output {
        let mut out = Output::default();
        match event {
            DataEvent::HookFailed { volume, reason } => {
                self.source_event(&volume, &SourceEvent::HookFailed(reason), now_ms, &mut out)
            }
            DataEvent::ExportOpened { volume, epoch } => {
                self.source_event(&volume, &SourceEvent::ExportOpened { epoch }, now_ms, &mut out)
            }
            DataEvent::CloneReady { volume, epoch } | DataEvent::CloneFailed { volume, epoch, .. }
                if self.state.holding.get(&volume).is_none_or(|h| h.epoch != epoch) => {}
            DataEvent::CloneReady { volume, .. } => self.holder_step(&volume, &HolderEvent::CloneReady, &mut out),
            DataEvent::CloneFailed { volume, reason, .. } => {
                self.progress.entry(volume.clone()).or_default().error = Some(reason.clone());
                self.holder_step(&volume, &HolderEvent::CloneFailed(reason), &mut out);
            }
            DataEvent::Progress {
                volume,
                hydrated,
                total,
                bytes_per_s,
                fetched_bytes,
                read_through_bytes,
                stalled,
                error,
            } => {
                let p = Progress { hydrated, total, bytes_per_s, fetched_bytes, read_through_bytes, error };
                self.progress.insert(volume.clone(), p);
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
                self.source_event(&volume, &SourceEvent::Verified { epoch, result }, now_ms, &mut out)
            }
        }
        out
    }

    fn source_event(&mut self, volume: &str, event: &SourceEvent, now_ms: u64, out: &mut Output) {
        let Some(v) = self.state.volumes.get_mut(volume) else { return };
        let before = v.lease.clone();
        let fx = v.lease.step(event, now_ms, &self.config.timing);
        out.persist |= before != v.lease;
        for f in fx {
            self.source_command(volume, f, None, out);
        }
    }

    fn update_claims(&mut self, view: &ClusterView) {
        self.claims.clear();
        if !self.state.node_state.accepts_volumes() || !self.config.data_plane {
            return;
        }
        let incoming: u64 = self.state.holding.values().filter(|h| h.active()).map(|h| h.size).sum();
        let free = self.config.free_bytes.saturating_sub(incoming);
        for (source, n) in view.nodes.iter().filter(|(name, _)| **name != self.config.name) {
            for (id, rec) in &n.volumes {
                let fits = rec.size <= free && rec.requires.iter().all(|(k, v)| self.config.labels.get(k) == Some(v));
                if matches!(rec.phase, SourcePhase::Offered { .. }) && fits {
                    self.claims.insert((source.clone(), id.clone()), rec.epoch);
                }
            }
        }
    }

    /// The full set of gossip keys this node should publish now.
    pub fn desired_keys(&self) -> BTreeMap<String, String> {
        let mut keys = BTreeMap::new();
        let record = NodeRecord {
            name: self.config.name.clone(),
            state: self.state.node_state,
            gossip_addr: self.config.gossip_addr,
            mesh_addr: self.config.mesh_addr.clone(),
            mesh_backend: self.config.mesh_backend.clone(),
            wireguard: self.config.wireguard.clone(),
            free_bytes: self.config.free_bytes,
            labels: self.config.labels.clone(),
            volumes: self.state.volumes.len() as u32,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            last_request: self.state.last_request.clone(),
            no_data_plane: !self.config.data_plane,
        };
        keys.insert(Key::Node.render(), schema::encode(&record));
        for (node, req) in &self.state.issued {
            keys.insert(Key::NodeRequest(node.clone()).render(), schema::encode(req));
        }
        for (id, v) in &self.state.volumes {
            let open =
                matches!(v.lease.phase, SourcePhase::Granted { exported: true, .. } | SourcePhase::CutOver { .. });
            let export = open.then(|| ExportEndpoint {
                addr: self.config.export_addr.clone(),
                iqn: export_iqn(&self.config.name, id),
            });
            let rate_limit = export.as_ref().and(self.state.drain_options.rate_limit);
            let rec = VolumeRecord {
                size: v.lease.size,
                epoch: v.lease.epoch,
                phase: v.lease.phase.clone(),
                requires: v.requires.clone(),
                export,
                rate_limit,
                hooks: v.hooks.clone(),
                arrived: v.arrived.clone(),
                verify: v.lease.verify,
            };
            keys.insert(Key::Volume(id.clone()).render(), schema::encode(&rec));
        }
        for ((source, volume), epoch) in &self.claims {
            keys.insert(
                Key::Claim { source: source.clone(), volume: volume.clone() }.render(),
                schema::encode(&ClaimRecord { epoch: *epoch }),
            );
        }
        for (id, h) in &self.state.holding {
            if h.phase == HolderPhase::Complete {
                let done =
                    DoneRecord { source: h.source.clone(), epoch: h.epoch, size: h.size, digest: h.digest.clone() };
                keys.insert(Key::Done(id.clone()).render(), schema::encode(&done));
                continue;
            }
            let p = self.progress.get(id).cloned().unwrap_or_default();
            let rec = ProgressRecord {
                source: h.source.clone(),
                epoch: h.epoch,
                phase: h.phase.clone(),
                hydrated: p.hydrated,
                total: p.total,
                bytes_per_s: p.bytes_per_s,
                fetched_bytes: p.fetched_bytes,
                read_through_bytes: p.read_through_bytes,
                error: p.error,
            };
            keys.insert(Key::Progress(id.clone()).render(), schema::encode(&rec));
        }
        keys
    }
}

/// The target name of a volume's export on `node`.
pub fn export_iqn(node: &str, volume: &str) -> String {
    format!("iqn.2026-11.dev.meshdrain:{node}.{volume}")
}

/// The address a node's traffic comes from: its mesh address, else its gossip IP.
fn node_addr(view: &ClusterView, node: &str) -> String {
    view.nodes
        .get(node)
        .map(|n| n.record.as_ref().and_then(|r| r.mesh_addr.clone()).unwrap_or_else(|| n.gossip_addr.ip().to_string()))
        .unwrap_or_default()
}

fn spec(id: &str, v: &OwnedVolume) -> VolumeSpec {
    VolumeSpec { id: id.to_owned(), size: v.lease.size, requires: v.requires.clone() }
}

/// Every node of the view as placement sees it (the drain itself and `--dry-run` alike).
pub fn candidates(view: &ClusterView) -> Vec<Candidate> {
    view.nodes
        .values()
        .filter_map(|n| {
            let r = n.record.as_ref()?;
            Some(Candidate {
                name: n.name.clone(),
                alive: n.alive,
                state: r.state,
                free_bytes: r.free_bytes,
                labels: r.labels.clone(),
                data_plane: !r.no_data_plane,
            })
        })
        .collect()
}

fn holder_signal(view: &ClusterView, holder: &str, id: &str) -> HolderSignal {
    let n = view.nodes.get(holder);
    HolderSignal {
        alive: n.is_some_and(|n| n.alive),
        progress: n.and_then(|n| n.progress.get(id)).map(|p| (p.epoch, p.phase.clone())),
        done: n.and_then(|n| n.done.get(id)).map(|d| d.epoch),
        digest: n.and_then(|n| n.done.get(id)).and_then(|d| d.digest.clone()),
    }
}

/// The node that owns volume `id` according to the view: the highest epoch wins; at the
/// same epoch, the new owner (its record is `held`) wins over the source that moved it.
pub fn owner_in_view<'a>(view: &'a ClusterView, id: &str) -> Option<&'a str> {
    view.nodes
        .values()
        .filter_map(|n| n.volumes.get(id).map(|r| (n.name.as_str(), r)))
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
