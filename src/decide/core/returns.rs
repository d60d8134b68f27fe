//! Returns in the core (src/decide/returns.rs, docs/return.md): the owner publishes what
//! its engine tracked once the export to the node the volume came from opens; that node,
//! taking up the grant, decides what to do with the copy it kept.

use super::{Core, Output};
use crate::cluster::schema::VolumeRecord;
use crate::decide::lease::SourcePhase;
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::returns::{self, ReturnBase, ReturnPlan, WrittenMap};

impl Core {
    /// The data plane's answer about the writes tracked here, taken before the export for
    /// `epoch` opens: kept for publication if the export goes to the node the volume
    /// arrived from.
    pub(super) fn note_written(&mut self, id: &VolumeId, epoch: u64, result: Result<WrittenMap, String>) {
        let Some(v) = self.state.volumes.get(id).filter(|v| v.lease.epoch == epoch) else { return };
        let SourcePhase::Granted { holder, .. } = &v.lease.phase else { return };
        match returns::publish(holder, v.lease.size, v.arrived.as_ref(), result) {
            Some(base) => {
                match &base {
                    ReturnBase::Delta { grain, .. } => {
                        tracing::info!(volume = %id, %holder, grain, "returning: only the regions written here since it arrived are copied")
                    }
                    ReturnBase::Full { reason } => {
                        tracing::info!(volume = %id, %holder, "returning with a full move: {reason}")
                    }
                }
                self.returns.insert(id.clone(), (epoch, base));
            }
            None => {
                self.returns.remove(id);
            }
        }
    }

    /// The `return` field of `vol/<id>` at `epoch`: only while the export is open.
    pub(super) fn return_base(&self, id: &VolumeId, epoch: u64, open: bool) -> Option<ReturnBase> {
        self.returns.get(id).filter(|(e, _)| open && *e == epoch).map(|(_, b)| b.clone())
    }

    /// Taking up a grant of `id` from `source`: a copy of it kept here (handed off
    /// earlier) becomes the clone's dest, so its record is dropped (retention must not
    /// delete a dest); with a `return` base the plan says whether only the written
    /// regions are copied. `None`: an ordinary move.
    pub(super) fn take_retained(&mut self, id: &VolumeId, source: &NodeName, rec: &VolumeRecord) -> Option<ReturnPlan> {
        let kept = self.state.volumes.get(id).filter(|v| !v.lease.pending() && v.moving.is_none());
        let retained = kept.map(|v| {
            let handed = match &v.lease.phase {
                SourcePhase::HandedOff { holder, at_ms } => Some((holder, *at_ms)),
                _ => None,
            };
            (v.lease.epoch, handed)
        });
        if rec.ret.is_none() && retained.is_none() {
            return None;
        }
        let plan = returns::plan(&self.config.name, source, rec.size, rec.ret.as_ref(), retained);
        match &plan {
            ReturnPlan::Delta { grain, .. } => {
                tracing::info!(volume = %id, %source, grain, "return: the copy kept here is reused; only the regions written since are copied")
            }
            ReturnPlan::Full { reason } => tracing::info!(volume = %id, %source, "return: full move: {reason}"),
        }
        if kept.is_some() {
            self.state.volumes.remove(id);
        }
        Some(plan)
    }

    /// The data plane could not clone over the copy kept here after all (`reason`: it
    /// changed since its hand-off, or the clone backend cannot): the return of `id` at
    /// `epoch` is a full move, and what `progress/<id>`, the volume's `arrived` record and
    /// a prepare after a restart say is that, not the delta planned.
    pub(super) fn return_fell_back(&mut self, id: &VolumeId, epoch: u64, reason: String, out: &mut Output) {
        if self.state.holding.get(id).is_none_or(|h| h.epoch != epoch) {
            return;
        }
        let Some(m) = self.state.incoming.get_mut(id).filter(|m| matches!(m.base, Some(ReturnPlan::Delta { .. })))
        else {
            return;
        };
        tracing::warn!(volume = %id, epoch, "return: full move after all: {reason}");
        m.base = Some(ReturnPlan::Full { reason });
        out.persist = true;
    }
}
