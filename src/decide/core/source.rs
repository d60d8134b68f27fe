//! The source side of the core: offering, granting and exporting the volumes this node
//! owns, from its lease ([`crate::decide::lease::source`]) to data-plane commands.

use super::{Core, DataCommand, Output, OwnedVolume, candidates};
use crate::cluster::view::ClusterView;
use crate::decide::lease::{HolderSignal, SourceEffect, SourceEvent, SourcePhase};
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::moves;
use crate::decide::node::NodeState;
use crate::decide::placement::{self, Candidate, VolumeSpec};

impl Core {
    /// Opens the exports that waited for their holder's address, if the lease still
    /// wants them.
    pub(super) fn open_addressed_exports(&mut self, view: &ClusterView, out: &mut Output) {
        let waiting = std::mem::take(&mut self.unaddressed_exports);
        for (id, (holder, epoch)) in waiting {
            let wanted = self.state.volumes.get(&id).is_some_and(|v| {
                v.lease.epoch == epoch
                    && v.lease.holder() == Some(&holder)
                    && matches!(v.lease.phase, SourcePhase::Granted { .. } | SourcePhase::CutOver { .. })
            });
            if wanted {
                self.source_command(&id, SourceEffect::OpenExport { holder, epoch }, Some(view), out);
            }
        }
    }

    pub(super) fn tick_sources(&mut self, view: &ClusterView, now_ms: u64, out: &mut Output) {
        // Without a data plane no export can open: offering would stop the workload for a
        // move that cannot happen, so such a node's volumes stay held (status says why).
        let draining = self.state.node_state == NodeState::Draining && self.config.data_plane;
        let me = self.config.name.clone();
        let all = candidates(view);
        let mut order: Vec<(u64, VolumeId)> =
            self.state.volumes.iter().map(|(id, v)| (v.lease.size, id.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, id) in order {
            let fixed: Vec<(VolumeId, NodeName)> = self
                .state
                .volumes
                .iter()
                .filter(|(_, v)| matches!(v.lease.phase, SourcePhase::Granted { .. } | SourcePhase::CutOver { .. }))
                .filter_map(|(vid, v)| v.lease.holder().map(|h| (vid.clone(), h.clone())))
                .collect();
            let specs: Vec<VolumeSpec> = self.state.volumes.iter().map(|(vid, v)| spec(vid, v)).collect();
            let vol = &self.state.volumes[&id];
            // `volume move` (src/decide/moves.rs): this volume alone is drained, to the
            // nodes its order allows.
            let order = vol.moving.as_ref();
            let all = moves::restrict(&all, order.and_then(|o| o.to.as_ref()));
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
            let holder = vol.lease.holder().map(|h| {
                let mut sig = holder_signal(view, h, &id);
                if let Some(d) = self.state.lost.get(h) {
                    (sig.lost, sig.accept_data_loss) = (true, d.accept_data_loss);
                }
                sig
            });
            let event = SourceEvent::Tick {
                draining: draining || (order.is_some() && self.config.data_plane),
                best_is_planned: best.is_some() && best == planned,
                best_claimant: best,
                holder,
                gc: self.gc_requested,
                verify: order.map_or(self.state.drain_options.verify, |o| o.verify),
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

    pub(super) fn source_command(
        &mut self,
        id: &VolumeId,
        fx: SourceEffect,
        view: Option<&ClusterView>,
        out: &mut Output,
    ) {
        let volume = id.clone();
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
            SourceEffect::StopWorkload { epoch } => DataCommand::StopWorkload { volume, hook: hooks.stop, epoch },
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

    pub(super) fn source_event(
        &mut self,
        volume: &VolumeId,
        event: &SourceEvent,
        view: &ClusterView,
        now_ms: u64,
        out: &mut Output,
    ) {
        let Some(v) = self.state.volumes.get_mut(volume) else { return };
        let before = v.lease.clone();
        let fx = v.lease.step(event, now_ms, &self.config.timing);
        out.persist |= before != v.lease;
        for f in fx {
            self.source_command(volume, f, Some(view), out);
        }
    }
}

/// The address a node's traffic comes from: its mesh address, else its gossip IP.
fn node_addr(view: &ClusterView, node: &str) -> String {
    view.nodes
        .get(node)
        .map(|n| n.record.as_ref().and_then(|r| r.mesh_addr.clone()).unwrap_or_else(|| n.gossip_addr.ip().to_string()))
        .unwrap_or_default()
}

fn spec(id: &VolumeId, v: &OwnedVolume) -> VolumeSpec {
    match &v.moving {
        Some(order) => moves::spec(id, v.lease.size, &v.requires, order),
        None => VolumeSpec { id: id.clone(), size: v.lease.size, requires: v.requires.clone() },
    }
}

fn holder_signal(view: &ClusterView, holder: &str, id: &str) -> HolderSignal {
    let n = view.nodes.get(holder);
    HolderSignal {
        alive: n.is_some_and(|n| n.alive),
        progress: n.and_then(|n| n.progress.get(id)).map(|p| (p.epoch, p.phase.clone())),
        done: n.and_then(|n| n.done.get(id)).map(|d| d.epoch),
        digest: n.and_then(|n| n.done.get(id)).and_then(|d| d.digest.clone()),
        lost: false,
        accept_data_loss: false,
    }
}
