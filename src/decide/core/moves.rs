//! Applying a `move` request to a volume owned here ([`crate::decide::moves`]): the order
//! is fixed into the volume and `tick_sources` offers that volume alone.

use super::Core;
use crate::decide::lease::SourcePhase;
use crate::decide::moves::{self, MoveChange};
use crate::decide::request::NodeRequest;

impl Core {
    /// Applies a `move` request (`req.options.volume`); the node's state is unchanged.
    pub(super) fn apply_move(&mut self, req: &NodeRequest) -> Result<(), String> {
        let Some(mv) = req.options.volume.as_ref() else {
            return Err("a move request without a volume (an agent of another version sent it)".to_owned());
        };
        let v = self.state.volumes.get(&mv.volume);
        if mv.returning
            && let Some(v) = v
        {
            crate::decide::returns::check_request(&self.config.name, &mv.volume, mv.to.as_ref(), v.arrived.as_ref())?;
        }
        let change = moves::apply(
            &self.config.name,
            self.state.node_state,
            v.map(|v| &v.lease.phase),
            v.and_then(|v| v.moving.as_ref()),
            mv,
            req.options.rate_limit,
            req.options.verify,
        )?;
        let v = self.state.volumes.get_mut(&mv.volume).expect("checked by moves::apply");
        match change {
            MoveChange::Start(order) => {
                tracing::info!(volume = %mv.volume, to = ?order.to, "moving one volume");
                if matches!(v.lease.phase, SourcePhase::Failed { .. }) {
                    // Moving again retries after a failed hook, as a drain does.
                    v.lease.phase = SourcePhase::Held;
                }
                v.moving = Some(order);
            }
            MoveChange::Cancel => {
                tracing::info!(volume = %mv.volume, "move cancelled");
                v.moving = None;
            }
        }
        Ok(())
    }

    /// Forgets the orders of volumes whose move is over (handed off): the volume lives on
    /// its holder now.
    pub(super) fn end_moves(&mut self) -> bool {
        let mut changed = false;
        for v in self.state.volumes.values_mut() {
            if v.moving.is_some() && !v.lease.pending() {
                v.moving = None;
                changed = true;
            }
        }
        changed
    }
}
