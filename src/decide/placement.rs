//! Placement: which node should take each volume of a drain. Pure and deterministic, so
//! every node computes the same plan from the same view (that is what `drain --dry-run`
//! prints), and the source, which arbitrates its own volumes, grants by it.
//!
//! A node is eligible for a volume when it is alive, `active` (not cordoned, draining or
//! drained), not the source, has room, and carries every label the volume requires.
//! Among eligible nodes the plan spreads one drain's volumes (fewest already assigned
//! first), then prefers the highest rendezvous score of (volume, node), then the node
//! name. Volumes are placed largest first so big ones are not starved by small ones.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::model::{NodeName, VolumeId};
use super::node::NodeState;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node name.
    pub name: NodeName,
    /// Alive per the failure detector.
    pub alive: bool,
    /// Lifecycle state.
    pub state: NodeState,
    /// Bytes free for incoming volumes.
    pub free_bytes: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// It runs a data plane (a node with `dataplane.backend = "none"` gossips only).
    pub data_plane: bool,
}

/// A volume to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Volume id.
    pub id: VolumeId,
    /// Size in bytes (what the target must have free).
    pub size: u64,
    /// Labels a target must carry (`zone = "a"`).
    pub requires: BTreeMap<String, String>,
}

/// Why a node cannot take a volume (shown by `--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    /// The source itself.
    #[error("is the source")]
    Source,
    /// Dead per the failure detector.
    #[error("is dead")]
    Dead,
    /// Not active.
    #[error("is {0}")]
    NotActive(NodeState),
    /// Gossips only: it cannot receive a volume's bytes.
    #[error("has no data plane (dataplane.backend = \"none\")")]
    NoDataPlane,
    /// Too little room left (after what this plan already put there).
    #[error("has {free} bytes free, needs {need}")]
    NoRoom {
        /// Free bytes.
        free: u64,
        /// Needed bytes.
        need: u64,
    },
    /// Lacks a required label.
    #[error("lacks label {key}={value}")]
    Label {
        /// Label key.
        key: String,
        /// Required value.
        value: String,
    },
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The volume.
    pub volume: VolumeId,
    /// The chosen node, or `None` if no node can take it.
    pub target: Option<NodeName>,
    /// Why each rejected node was rejected.
    pub rejected: Vec<(NodeName, Ineligible)>,
}

/// Rendezvous (highest-random-weight) score: stable across versions and platforms.
pub fn score(volume: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(volume.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha256 is 32 bytes"))
}

/// Checks one node for one volume given the room it has left.
pub fn check(c: &Candidate, source: &str, v: &VolumeSpec, free_left: u64) -> Result<(), Ineligible> {
    if c.name == source {
        return Err(Ineligible::Source);
    }
    if !c.alive {
        return Err(Ineligible::Dead);
    }
    if !c.state.accepts_volumes() {
        return Err(Ineligible::NotActive(c.state));
    }
    if !c.data_plane {
        return Err(Ineligible::NoDataPlane);
    }
    for (key, value) in &v.requires {
        if c.labels.get(key) != Some(value) {
            return Err(Ineligible::Label { key: key.clone(), value: value.clone() });
        }
    }
    if free_left < v.size {
        return Err(Ineligible::NoRoom { free: free_left, need: v.size });
    }
    Ok(())
}

/// Plans every volume of a drain. `fixed` are volumes already granted (volume, node):
/// they count against their node's room and toward spreading, and keep their node.
pub fn plan(
    source: &str,
    volumes: &[VolumeSpec],
    candidates: &[Candidate],
    fixed: &[(VolumeId, NodeName)],
) -> Vec<Placement> {
    let mut free: BTreeMap<&str, u64> = candidates.iter().map(|c| (c.name.as_str(), c.free_bytes)).collect();
    let mut assigned: BTreeMap<&str, usize> = BTreeMap::new();
    let size_of = |id: &str| volumes.iter().find(|v| v.id == id).map_or(0, |v| v.size);
    for (vol, node) in fixed {
        if let Some(f) = free.get_mut(node.as_str()) {
            *f = f.saturating_sub(size_of(vol));
        }
        *assigned.entry(node.as_str()).or_default() += 1;
    }
    let mut order: Vec<&VolumeSpec> = volumes.iter().filter(|v| !fixed.iter().any(|(f, _)| f == &v.id)).collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
    let mut out = Vec::with_capacity(order.len());
    for v in order {
        let mut rejected = Vec::new();
        let mut best: Option<(&Candidate, usize, u64)> = None;
        for c in candidates {
            let left = free.get(c.name.as_str()).copied().unwrap_or(0);
            if let Err(why) = check(c, source, v, left) {
                rejected.push((c.name.clone(), why));
                continue;
            }
            let load = assigned.get(c.name.as_str()).copied().unwrap_or(0);
            let s = score(&v.id, &c.name);
            let better = match best {
                None => true,
                Some((b, bl, bs)) => (load, std::cmp::Reverse(s), &c.name) < (bl, std::cmp::Reverse(bs), &b.name),
            };
            if better {
                best = Some((c, load, s));
            }
        }
        let target = best.map(|(c, _, _)| c.name.clone());
        if let Some(t) = &target {
            if let Some(f) = free.get_mut(t.as_str()) {
                *f -= v.size;
            }
            *assigned
                .entry(candidates.iter().find(|c| &c.name == t).map(|c| c.name.as_str()).unwrap_or_default())
                .or_default() += 1;
        }
        out.push(Placement { volume: v.id.clone(), target, rejected });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, free: u64) -> Candidate {
        Candidate {
            name: name.parse().unwrap(),
            alive: true,
            state: NodeState::Active,
            free_bytes: free,
            labels: BTreeMap::new(),
            data_plane: true,
        }
    }
    fn vol(id: &str, size: u64) -> VolumeSpec {
        VolumeSpec { id: id.parse().unwrap(), size, requires: BTreeMap::new() }
    }

    #[test]
    fn never_the_source_a_dead_a_non_active_or_a_gossip_only_node() {
        let mut nodes = vec![
            node("src", 100),
            node("dead", 100),
            node("cord", 100),
            node("drn", 100),
            node("gossip-only", 1000),
            node("ok", 100),
        ];
        nodes[1].alive = false;
        nodes[2].state = NodeState::Cordoned;
        nodes[3].state = NodeState::Draining;
        nodes[4].data_plane = false;
        let p = plan("src", &[vol("v", 10)], &nodes, &[]);
        assert_eq!(p[0].target.as_deref(), Some("ok"));
        let why: BTreeMap<_, _> = p[0].rejected.iter().map(|(n, w)| (n.as_str(), w.to_string())).collect();
        assert_eq!(why["src"], "is the source");
        assert_eq!(why["dead"], "is dead");
        assert_eq!(why["cord"], "is cordoned");
        assert_eq!(why["drn"], "is draining");
        assert_eq!(why["gossip-only"], "has no data plane (dataplane.backend = \"none\")");
    }

    #[test]
    fn capacity_and_labels_are_respected() {
        let mut big = node("big", 100);
        big.labels.insert("zone".into(), "b".into());
        let mut zoned = node("zoned", 30);
        zoned.labels.insert("zone".into(), "a".into());
        let mut v = vol("v", 50);
        v.requires.insert("zone".into(), "a".into());
        let p = plan("src", &[v], &[big, zoned], &[]);
        assert_eq!(p[0].target, None);
        assert!(p[0].rejected.iter().any(|(n, w)| n == "big" && w.to_string() == "lacks label zone=a"));
        assert!(p[0].rejected.iter().any(|(n, w)| n == "zoned" && w.to_string() == "has 30 bytes free, needs 50"));
    }

    #[test]
    fn a_drain_spreads_across_targets() {
        let nodes = vec![node("a", 1000), node("b", 1000), node("c", 1000)];
        let vols: Vec<_> = (0..6).map(|i| vol(&format!("v{i}"), 10)).collect();
        let p = plan("src", &vols, &nodes, &[]);
        let mut count: BTreeMap<NodeName, usize> = BTreeMap::new();
        for x in &p {
            *count.entry(x.target.clone().unwrap()).or_default() += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn fixed_grants_keep_their_node_and_use_its_room() {
        let nodes = vec![node("a", 100), node("b", 100)];
        let p = plan("src", &[vol("x", 80), vol("y", 50)], &nodes, &[("x".parse().unwrap(), "a".parse().unwrap())]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].target.as_deref(), Some("b"));
    }

    proptest! {
        #[test]
        fn plans_are_deterministic_and_never_overcommit(
            frees in proptest::collection::vec(0u64..500, 1..8),
            sizes in proptest::collection::vec(1u64..200, 1..12),
        ) {
            let nodes: Vec<_> = frees.iter().enumerate().map(|(i, f)| node(&format!("n{i}"), *f)).collect();
            let vols: Vec<_> = sizes.iter().enumerate().map(|(i, s)| vol(&format!("v{i}"), *s)).collect();
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            let p1 = plan("src", &vols, &nodes, &[]);
            let p2 = plan("src", &vols, &shuffled, &[]);
            let t1: BTreeMap<_, _> = p1.iter().map(|p| (p.volume.clone(), p.target.clone())).collect();
            let t2: BTreeMap<_, _> = p2.iter().map(|p| (p.volume.clone(), p.target.clone())).collect();
            prop_assert_eq!(&t1, &t2);
            for n in &nodes {
                let used: u64 = p1.iter().filter(|p| p.target.as_deref() == Some(n.name.as_str()))
                    .map(|p| vols.iter().find(|v| v.id == p.volume).unwrap().size).sum();
                prop_assert!(used <= n.free_bytes);
            }
        }
    }
}
