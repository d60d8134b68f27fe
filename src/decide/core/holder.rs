//! The holder side of the core: claiming offered volumes, acting on grants to this node
//! and owning a volume once its move is complete.

use super::{Arrival, Core, DataCommand, Output, OwnedVolume};
use crate::cluster::view::ClusterView;
use crate::decide::lease::{
    HolderEffect, HolderEvent, HolderPhase, HolderVolume, SourcePhase, SourceSignal, SourceVolume,
};
use crate::decide::model::{Incoming, VolumeId};

impl Core {
    pub(super) fn tick_holders(&mut self, view: &ClusterView, out: &mut Output) {
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
                    let base = self.take_retained(id, source, rec);
                    let incoming = Incoming {
                        export: rec.export.clone(),
                        requires: rec.requires.clone(),
                        hooks: rec.hooks.clone(),
                        verify: rec.verify,
                        base,
                    };
                    self.state.incoming.insert(id.clone(), incoming);
                    out.persist = true;
                    for f in fx {
                        self.holder_command(id, f, out);
                    }
                }
            }
        }
        let ids: Vec<VolumeId> = self.state.holding.keys().cloned().collect();
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

    pub(super) fn holder_step(&mut self, id: &VolumeId, event: &HolderEvent, out: &mut Output) {
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
            let ret = meta.as_ref().and_then(|m| m.base.as_ref()).map(crate::decide::returns::ReturnPlan::mode);
            let (requires, hooks) = meta.map(|m| (m.requires, m.hooks)).unwrap_or_default();
            let fetched_bytes = self.progress.get(id).map_or(0, |p| p.hydration.fetched_bytes);
            let arrived = Some(Arrival { from: h.source.clone(), epoch, fetched_bytes, ret });
            self.state.volumes.insert(id.clone(), OwnedVolume { lease, requires, hooks, arrived, moving: None });
        }
        for f in fx {
            self.holder_command(id, f, out);
        }
    }

    pub(super) fn holder_command(&self, id: &VolumeId, fx: HolderEffect, out: &mut Output) {
        let volume = id.clone();
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
                base: meta.and_then(|m| m.base.clone()),
            },
            HolderEffect::StartWorkload => DataCommand::StartHeldWorkload { volume, hook: hooks.start },
            HolderEffect::Finalize => DataCommand::Finalize { volume, done_hook: hooks.done },
            HolderEffect::DiscardClone => DataCommand::DiscardClone { volume },
            HolderEffect::DeclareSourceLost => DataCommand::DeclareSourceLost { volume },
            HolderEffect::AcceptPartial => DataCommand::AcceptPartial { volume },
        });
    }

    pub(super) fn update_claims(&mut self, view: &ClusterView) {
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
}
