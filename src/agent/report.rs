//! Read-only reports built from the core and the view: `status` and `volume list`.

use std::collections::HashMap;
use std::time::Instant;

use crate::api::{NodeStatus, PendingRequest, PlanLine, StatusReport, VolumeFault, VolumeStatus};
use crate::cluster::view::ClusterView;
use crate::decide::core::AsideCopy;
use crate::decide::core::{Core, owner_in_view};
use crate::decide::lease::SourcePhase;
use crate::decide::model::{Hydration, NodeName, VolumeId};
use crate::decide::placement::{self, VolumeSpec};
use crate::store::volumes::VolumeTable;

/// Every node known, sorted by name (this node included even before its first tick).
pub fn status(core: &Core, view: &ClusterView, heartbeats: &HashMap<String, (u64, Instant)>) -> StatusReport {
    let now = Instant::now();
    let me = &core.config.name;
    let mut nodes: Vec<NodeStatus> = view
        .nodes
        .values()
        .map(|n| {
            let r = n.record.as_ref();
            NodeStatus {
                name: n.name.to_string(),
                state: if &n.name == me { Some(core.state.node_state) } else { r.map(|r| r.state) },
                alive: n.alive,
                gossip_addr: n.gossip_addr.to_string(),
                mesh_addr: r.and_then(|r| r.mesh_addr.clone()),
                mesh_backend: r.and_then(|r| r.mesh_backend.clone()),
                heartbeat_age_ms: heartbeats
                    .get(n.name.as_str())
                    .map(|(_, at)| now.duration_since(*at).as_millis() as u64),
                heartbeat: n.heartbeat,
                generation: n.generation,
                free_bytes: r.map(|r| r.free_bytes),
                volumes: r.map_or(0, |r| r.volumes),
                agent_version: r.map(|r| r.agent_version.clone()),
                last_request: if &n.name == me {
                    core.state.last_request.clone()
                } else {
                    r.and_then(|r| r.last_request.clone())
                },
                pending_requests: n
                    .requests
                    .iter()
                    .map(|(node, req)| PendingRequest {
                        node: node.to_string(),
                        action: req.action,
                        nonce: req.nonce.clone(),
                    })
                    .collect(),
                ignored_keys: n.ignored.iter().map(|(k, why)| format!("{k}: {why}")).collect(),
            }
        })
        .collect();
    if !nodes.iter().any(|n| n.name == *me) {
        nodes.push(NodeStatus {
            name: me.to_string(),
            state: Some(core.state.node_state),
            alive: true,
            gossip_addr: core.config.gossip_addr.to_string(),
            mesh_addr: core.config.mesh_addr.clone(),
            mesh_backend: core.config.mesh_backend.clone(),
            heartbeat_age_ms: None,
            heartbeat: 0,
            generation: 0,
            free_bytes: Some(core.config.free_bytes),
            volumes: core.state.volumes.len() as u32,
            agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            last_request: core.state.last_request.clone(),
            pending_requests: vec![],
            ignored_keys: vec![],
        });
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    StatusReport {
        self_name: me.to_string(),
        nodes,
        gossip: Default::default(),
        lost: Default::default(),
        clones: Box::default(),
    }
}

/// Every volume of the fleet: its owner's record, joined with its holder's progress.
pub fn volumes(view: &ClusterView) -> Vec<VolumeStatus> {
    let mut ids: Vec<&VolumeId> = view.nodes.values().flat_map(|n| n.volumes.keys()).collect();
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let Some(owner) = owner_in_view(view, id) else { continue };
        let rec = &view.nodes[owner].volumes[id];
        let holder = match &rec.phase {
            SourcePhase::Granted { holder, .. } | SourcePhase::CutOver { holder, .. } => Some(holder),
            _ => None,
        };
        let h = holder.and_then(|h| view.nodes.get(h));
        let progress = h.and_then(|h| h.progress.get(id)).filter(|p| p.epoch == rec.epoch);
        let holder_alive = h.is_some_and(|h| h.alive);
        // A source whose `--verify` check failed keeps its copy (and its record) while the
        // holder already owns the volume: its reason belongs on the volume's line.
        let verify_failed = view.nodes.values().find_map(|n| match n.volumes.get(id).map(|r| (r.epoch, &r.phase)) {
            Some((e, SourcePhase::CutOver { verify_failed: Some(why), .. })) if e == rec.epoch => {
                Some(VolumeFault::VerifyFailed { on: n.name.clone(), reason: why.clone() })
            }
            _ => None,
        });
        let phase = serde_json::to_value(&rec.phase)
            .ok()
            .and_then(|v| v["phase"].as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push(VolumeStatus {
            id: id.to_string(),
            owner: owner.to_string(),
            size: rec.size,
            epoch: rec.epoch,
            phase,
            holder: holder.map(NodeName::to_string),
            holder_phase: progress
                .and_then(|p| serde_json::to_value(&p.phase).ok())
                .and_then(|v| v["phase"].as_str().map(str::to_owned)),
            hydration: Hydration {
                fetched_bytes: progress
                    .map(|p| p.hydration.fetched_bytes)
                    .or(rec.arrived.as_ref().map(|a| a.fetched_bytes))
                    .unwrap_or(0),
                ..progress.map(|p| p.hydration).unwrap_or_default()
            },
            arrived_from: rec.arrived.as_ref().map(|a| a.from.to_string()),
            source_phase: rec
                .arrived
                .as_ref()
                .and_then(|a| view.nodes.get(&a.from)?.volumes.get(id).filter(|r| r.epoch == rec.epoch))
                .map(|r| crate::decide::moves::phase_name(&r.phase).to_owned()),
            // The returning node's decision, else what the owner offers, else (the return
            // over) the mode its holder used, kept with the arrival (docs/return.md).
            return_mode: progress
                .and_then(|p| p.ret.clone())
                .or_else(|| {
                    rec.ret.as_ref().map(|b| match b {
                        crate::decide::returns::ReturnBase::Delta { .. } => "delta".to_owned(),
                        crate::decide::returns::ReturnBase::Full { reason } => format!("full: {reason}"),
                    })
                })
                .or_else(|| rec.arrived.as_ref().and_then(|a| a.ret.clone())),
            stranded: matches!(rec.phase, SourcePhase::CutOver { .. }) && !holder_alive,
            stalled: progress
                .is_some_and(|p| matches!(p.phase, crate::decide::lease::HolderPhase::Running { stalled: true })),
            path: None,
            error: verify_failed.or(progress.and_then(|p| p.error.clone()).map(VolumeFault::Other)).or(
                match &rec.phase {
                    SourcePhase::Failed { reason } => Some(VolumeFault::Other(reason.clone())),
                    _ => None,
                },
            ),
        });
    }
    out
}

/// The placement a drain of `node` would get from this view: the same pure function the
/// source uses, over every eligible node (the source additionally needs their claims).
pub fn plan(view: &ClusterView, node: &NodeName) -> Vec<PlanLine> {
    let Some(n) = view.nodes.get(node) else { return vec![] };
    let specs: Vec<VolumeSpec> = n
        .volumes
        .iter()
        .filter(|(id, _)| owner_in_view(view, id) == Some(node))
        .map(|(id, r)| VolumeSpec { id: id.clone(), size: r.size, requires: r.requires.clone() })
        .collect();
    let candidates = crate::decide::core::candidates(view);
    placement::plan(node, &specs, &candidates, &[])
        .into_iter()
        .map(|p| PlanLine {
            size: specs.iter().find(|s| s.id == p.volume).map_or(0, |s| s.size),
            volume: p.volume.to_string(),
            target: p.target.map(String::from),
            rejected: p
                .rejected
                .into_iter()
                .filter(|(n, _)| n != node)
                .map(|(n, why)| (n.to_string(), why.to_string()))
                .collect(),
        })
        .collect()
}

/// Where volume `id` would move now (`volume move --dry-run`, src/decide/moves.rs);
/// `None` when no node owns it.
pub fn move_plan(
    view: &ClusterView,
    id: &VolumeId,
    to: Option<&NodeName>,
    requires: std::collections::BTreeMap<String, String>,
) -> Option<PlanLine> {
    let owner = owner_in_view(view, id)?;
    let rec = view.nodes.get(owner)?.volumes.get(id)?;
    let order = crate::decide::moves::MoveOrder { to: to.cloned(), requires, rate_limit: None, verify: false };
    let spec = crate::decide::moves::spec(id, rec.size, &rec.requires, &order);
    let p = crate::decide::moves::plan(owner, &spec, &crate::decide::core::candidates(view), to);
    Some(PlanLine {
        volume: id.to_string(),
        size: rec.size,
        target: p.target.map(String::from),
        rejected: p.rejected.into_iter().map(|(n, why)| (n.to_string(), why.to_string())).collect(),
    })
}

/// Fills in `path` for the volumes `me` owns, from the local volume table (paths are not
/// gossiped: each agent knows its own).
pub fn with_paths(mut volumes: Vec<VolumeStatus>, me: &NodeName, table: &VolumeTable) -> Vec<VolumeStatus> {
    for v in volumes.iter_mut().filter(|v| v.owner == me.as_str()) {
        v.path = table.volumes.get(&v.id).map(|l| l.path.clone());
    }
    volumes
}

/// A copy `gc` may delete: a handed-off volume in the table, or a copy set aside when
/// this node was declared lost (docs/failures.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcCandidate {
    /// The volume.
    pub volume: String,
    /// Set aside at this epoch (`None`: a handed-off copy in the volume table).
    pub aside_epoch: Option<u64>,
    /// Its file or device.
    pub path: std::path::PathBuf,
    /// Bytes its files take on disk now.
    pub bytes: u64,
}

/// What `gc` may delete, with the bytes on disk taken before it runs (the data plane
/// deletes in the background).
pub fn gc_candidates(table: &VolumeTable, aside: &[AsideCopy], pool: &std::path::Path) -> Vec<GcCandidate> {
    use std::os::unix::fs::MetadataExt;
    let on_disk = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.blocks() * 512);
    let mut out: Vec<GcCandidate> = table
        .volumes
        .iter()
        .map(|(id, l)| GcCandidate {
            volume: id.clone(),
            aside_epoch: None,
            bytes: on_disk(&l.path),
            path: l.path.clone(),
        })
        .collect();
    for a in aside {
        // The executor's names for a set-aside copy (dataplane::executor, `DeleteAside`).
        let file = |ext: &str| pool.join("aside").join(format!("{}.e{}.{ext}", a.volume, a.epoch));
        let bytes = on_disk(&file("img")) + on_disk(&file("clone-meta"));
        out.push(GcCandidate { volume: a.volume.to_string(), aside_epoch: Some(a.epoch), path: file("img"), bytes });
    }
    out
}

/// The candidates `gc`'s tick took out of the volume table or the set-aside list: the
/// data plane deletes their files (those in the pool) in the background.
pub fn gc_deleted<'a>(before: &'a [GcCandidate], after: (&VolumeTable, &[AsideCopy])) -> Vec<&'a GcCandidate> {
    let (table, aside) = after;
    let gone = |c: &&GcCandidate| match c.aside_epoch {
        None => !table.volumes.contains_key(&c.volume),
        Some(e) => !aside.iter().any(|a| a.volume.as_str() == c.volume && a.epoch == e),
    };
    before.iter().filter(gone).collect()
}

/// What `meshdrain gc` did: the copies that left the volume table or the set-aside list
/// during its tick (those in the pool are deleted; a device outside it is left to the
/// operator).
pub fn gc_message(
    me: &NodeName,
    before: &[GcCandidate],
    after: (&VolumeTable, &[AsideCopy]),
    pool: &std::path::Path,
) -> String {
    let gone = gc_deleted(before, after);
    if gone.is_empty() {
        return format!("nothing to delete: no handed-off or set-aside copy on {me}");
    }
    let mut parts = vec![];
    let summary = |what: &str, list: &[&GcCandidate]| {
        let bytes: u64 = list.iter().map(|c| c.bytes).sum();
        let names: Vec<String> = list
            .iter()
            .map(|c| c.aside_epoch.map_or_else(|| c.volume.clone(), |e| format!("{} (epoch {e})", c.volume)))
            .collect();
        let noun = if list.len() == 1 { "copy" } else { "copies" };
        format!(
            "deleted {} {what} {noun} ({} on disk): {}",
            list.len(),
            crate::cli::units::format_bytes(bytes),
            names.join(", ")
        )
    };
    let handed: Vec<&GcCandidate> =
        gone.iter().copied().filter(|c| c.aside_epoch.is_none() && c.path.starts_with(pool)).collect();
    let set_aside: Vec<&GcCandidate> = gone.iter().copied().filter(|c| c.aside_epoch.is_some()).collect();
    if !handed.is_empty() {
        parts.push(summary("handed-off", &handed));
    }
    if !set_aside.is_empty() {
        parts.push(summary("set-aside", &set_aside));
    }
    for c in gone.iter().filter(|c| c.aside_epoch.is_none() && !c.path.starts_with(pool)) {
        parts.push(format!(
            "{} handed off; {} is outside the pool and left to the operator",
            c.volume,
            c.path.display()
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::volumes::LocalVolume;

    #[test]
    fn gc_says_what_it_deleted_or_that_there_was_nothing() {
        let me: NodeName = "node1".parse().unwrap();
        let pool = std::path::Path::new("/pool");
        let mut table = VolumeTable::default();
        let nothing = gc_message(&me, &[], (&table, &[]), pool);
        assert_eq!(nothing, "nothing to delete: no handed-off or set-aside copy on node1");
        let c = |v: &str, e: Option<u64>, path: &str, bytes: u64| GcCandidate {
            volume: v.into(),
            aside_epoch: e,
            path: path.into(),
            bytes,
        };
        let before = vec![
            c("a", None, "/pool/a.img", 3 << 20),
            c("b", None, "/pool/b.img", 1 << 20),
            c("c", None, "/dev/sdz", 0),
            c("d", None, "/pool/d.img", 1),
            c("e", Some(4), "/pool/aside/e.e4.img", 2 << 30),
        ];
        table.volumes.insert("d".into(), LocalVolume { path: pool.join("d.img"), created: true });
        assert_eq!(
            gc_message(&me, &before, (&table, &[]), pool),
            "deleted 2 handed-off copies (4.0 MiB on disk): a, b; deleted 1 set-aside copy (2.0 GiB on disk): e (epoch 4); \
             c handed off; /dev/sdz is outside the pool and left to the operator"
        );
    }
}
