//! What this node publishes in gossip: its node record, requests it issued, its volumes,
//! claims, and progress or `done` for volumes moving here (src/cluster/schema.rs).

use std::collections::BTreeMap;

use super::Core;
use crate::cluster::schema::{self, ClaimRecord, DoneRecord, Key, NodeRecord, ProgressRecord, VolumeRecord};
use crate::decide::lease::{HolderPhase, SourcePhase};
use crate::decide::model::{ExportEndpoint, export_iqn};

impl Core {
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
            let rate = v.moving.as_ref().map_or(self.state.drain_options.rate_limit, |m| m.rate_limit);
            let rate_limit = export.as_ref().and(rate);
            let mut phase = v.lease.phase.clone();
            if let SourcePhase::Granted { stopped, .. } = &mut phase {
                // Local progress toward the export, not published (the record stays what
                // agents of the previous version write).
                *stopped = false;
            }
            let rec = VolumeRecord {
                size: v.lease.size,
                epoch: v.lease.epoch,
                phase,
                requires: v.requires.clone(),
                export,
                rate_limit,
                hooks: v.hooks.clone(),
                arrived: v.arrived.clone(),
                verify: v.lease.verify,
                ret: self.return_base(id, v.lease.epoch, open),
            };
            keys.insert(Key::Volume(id.clone()).render(), schema::encode(&rec));
        }
        for (node, d) in &self.state.lost {
            keys.insert(Key::Lost(node.clone()).render(), schema::encode(d));
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
            let mut p = self.progress.get(id).cloned().unwrap_or_default();
            if let HolderPhase::Incomplete { missing, regions, .. } = &h.phase {
                // The volume list shows this line as the volume's error (docs/failures.md).
                p.error = Some(format!("incomplete: source lost, {missing} of {regions} regions missing"));
            }
            let rec = ProgressRecord {
                source: h.source.clone(),
                epoch: h.epoch,
                phase: h.phase.clone(),
                hydration: p.hydration,
                error: p.error,
                ret: self
                    .state
                    .incoming
                    .get(id)
                    .and_then(|m| m.base.as_ref())
                    .map(crate::decide::returns::ReturnPlan::mode),
            };
            keys.insert(Key::Progress(id.clone()).render(), schema::encode(&rec));
        }
        keys
    }
}
