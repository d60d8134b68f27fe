//! `roll --undrain-after --return` (docs/return.md): once a roll has undrained this node,
//! its agent moves back the volumes that left it, as `undrain --return` does from the
//! CLI: a `move` request with the `return` flag to each volume's owner, one per owner at
//! a time (an issuer has one request per node), until each is adopted or refused. The
//! list and the nonces sent are kept in the state dir (`roll-returns.json`), so an agent
//! restarted before every return was adopted goes on with them.

use tracing::{info, warn};

use super::Agent;
use crate::cluster::gossip::Gossip;
use crate::decide::core::owner_in_view;
use crate::decide::model::VolumeId;
use crate::decide::moves::VolumeMove;
use crate::decide::node::NodeAction;
use crate::decide::request::DrainOptions;

impl<G: Gossip> Agent<G> {
    /// This node was undrained by a roll: when a roll that includes it asked for
    /// `--return`, every volume that arrived elsewhere from it is to come back.
    pub(super) fn want_returns(&mut self) {
        let me = self.core.config.name.clone();
        let specs = &self.roll_specs_with_return();
        if !specs.iter().any(|nodes| nodes.contains(&me)) {
            return;
        }
        let away: Vec<VolumeId> = self
            .view
            .nodes
            .values()
            .flat_map(|n| n.volumes.iter().map(move |(id, r)| (n, id, r)))
            .filter(|(n, id, r)| {
                n.name != me
                    && owner_in_view(&self.view, id) == Some(&n.name)
                    && r.arrived.as_ref().is_some_and(|a| a.from == me)
            })
            .map(|(_, id, _)| id.clone())
            .collect();
        info!(volumes = ?away, "roll: moving back the volumes that left this node (--return)");
        for id in away {
            self.roll.returns.entry(id).or_insert(None);
        }
        super::roll::save_returns(&self.store, &self.roll.returns); // resumed after a restart
    }

    fn roll_specs_with_return(&self) -> Vec<Vec<crate::decide::model::NodeName>> {
        self.roll.machine_specs().filter(|s| s.undrain_after && s.return_after).map(|s| s.nodes.clone()).collect()
    }

    /// Sends the next return to each owner that has none pending; forgets a volume once it
    /// is back here, or its return was adopted or refused (logged).
    pub(super) async fn returns_tick(&mut self) {
        if self.roll.returns.is_empty() {
            return;
        }
        let before = self.roll.returns.clone();
        self.returns_send().await;
        if self.roll.returns != before {
            super::roll::save_returns(&self.store, &self.roll.returns); // resumed after a restart
        }
    }

    async fn returns_send(&mut self) {
        let me = self.core.config.name.clone();
        let mut busy: std::collections::BTreeSet<_> = self.core.state.issued.keys().cloned().collect();
        for (id, nonce) in self.roll.returns.clone() {
            let Some(owner) = owner_in_view(&self.view, &id).cloned().filter(|o| *o != me) else {
                self.roll.returns.remove(&id);
                continue;
            };
            let last = self.view.nodes.get(&owner).and_then(|n| n.record.as_ref()).and_then(|r| r.last_request.clone());
            if let Some(l) = last.filter(|l| nonce.as_deref() == Some(l.nonce.as_str())) {
                match &l.rejected {
                    Some(why) => warn!(volume = %id, %owner, "roll: return refused: {why}"),
                    None => info!(volume = %id, %owner, "roll: return adopted; the volume moves back"),
                }
                self.roll.returns.remove(&id);
                continue;
            }
            if busy.contains(&owner) {
                continue; // ours (or another request of this node) waits to be adopted
            }
            let mv = VolumeMove {
                volume: id.clone(),
                to: Some(me.clone()),
                requires: Default::default(),
                cancel: false,
                returning: true,
            };
            let options = DrainOptions { volume: Some(mv), ..Default::default() };
            match self.node_action(&owner, NodeAction::Move, false, options).await {
                Ok(r) => {
                    info!(volume = %id, %owner, nonce = %r.nonce, "roll: return sent");
                    self.roll.returns.insert(id, Some(r.nonce));
                    busy.insert(owner);
                }
                Err(e) => warn!(volume = %id, %owner, "roll: cannot send the return: {e}"),
            }
        }
    }
}
