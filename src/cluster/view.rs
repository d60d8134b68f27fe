//! `ClusterView`: a typed snapshot of what gossip says, built from a raw snapshot.
//! The pure cores (drain, lease, placement) only ever see this type.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::schema::{self, ClaimRecord, DoneRecord, Ignored, Key, NodeRecord, ProgressRecord, VolumeRecord};
use crate::decide::lost::LostDeclaration;
use crate::decide::model::{NodeName, VolumeId};
use crate::decide::request::NodeRequest;

/// One node as the gossip layer reports it, keys and values untyped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawNode {
    /// chitchat node id (the node name).
    pub name: String,
    /// Incarnation: grows when the node restarts.
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Alive according to the failure detector (the local node is always alive).
    pub alive: bool,
    /// Heartbeat counter (grows once per gossip round of that node).
    pub heartbeat: u64,
    /// Key-value pairs (tombstones excluded).
    pub entries: Vec<(String, String)>,
}

/// A whole raw snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSnapshot {
    /// The local node's name.
    pub self_name: String,
    /// Every node known, possibly several generations of one name.
    pub nodes: Vec<RawNode>,
}

/// A node in the typed view.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Name.
    pub name: NodeName,
    /// Incarnation.
    pub generation: u64,
    /// Gossip address.
    pub gossip_addr: SocketAddr,
    /// Alive per the failure detector.
    pub alive: bool,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Its `node` record, if published and valid.
    pub record: Option<NodeRecord>,
    /// Requests it has published, by the node they name.
    pub requests: BTreeMap<NodeName, NodeRequest>,
    /// Volumes it owns, by id.
    pub volumes: BTreeMap<VolumeId, VolumeRecord>,
    /// Its claims, by (source, volume).
    pub claims: BTreeMap<(NodeName, VolumeId), ClaimRecord>,
    /// Its progress on volumes moving to it, by id.
    pub progress: BTreeMap<VolumeId, ProgressRecord>,
    /// Volumes it has completed, by id.
    pub done: BTreeMap<VolumeId, DoneRecord>,
    /// Nodes it knows were declared lost (docs/failures.md).
    pub lost: BTreeMap<NodeName, LostDeclaration>,
    /// Values skipped, with the reason.
    pub ignored: Vec<(String, Ignored)>,
}

/// The typed cluster snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The local node's name.
    pub self_name: String,
    /// Nodes by name (the newest generation of each). A chitchat id that is not a valid
    /// node name is left out: no agent can be configured with one.
    pub nodes: BTreeMap<NodeName, NodeView>,
}

impl ClusterView {
    /// Builds the typed view. A name seen in several records keeps a live one over a dead
    /// one; of two live ones at different addresses the older generation (the incumbent,
    /// src/cluster/identity.rs), else the newest (a restart): a namesake that came and went
    /// never hides the live node (docs/threat-model.md).
    pub fn from_raw(raw: &RawSnapshot) -> ClusterView {
        let mut nodes: BTreeMap<NodeName, NodeView> = BTreeMap::new();
        for n in &raw.nodes {
            let Ok(name) = NodeName::try_from(n.name.as_str()) else { continue };
            if nodes.get(&name).is_some_and(|old| !replaces(n, old)) {
                continue;
            }
            nodes.insert(name.clone(), NodeView::from_raw(name, n));
        }
        ClusterView { self_name: raw.self_name.clone(), nodes }
    }

    /// Every request published anywhere that names `node`.
    pub fn requests_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a NodeRequest> + 'a {
        self.nodes.values().filter_map(move |n| n.requests.get(node))
    }

    /// The highest request seq seen for `node` (published or applied), for the HLC.
    pub fn highest_seq_for(&self, node: &str) -> u64 {
        let published = self.requests_for(node).map(|r| r.seq).max().unwrap_or(0);
        let applied = self
            .nodes
            .get(node)
            .and_then(|n| n.record.as_ref())
            .and_then(|r| r.last_request.as_ref())
            .map_or(0, |l| l.seq);
        published.max(applied)
    }

    /// Every declaration of a lost node that any node publishes, merged
    /// ([`LostDeclaration::merge`]).
    pub fn lost(&self) -> BTreeMap<NodeName, LostDeclaration> {
        let mut all = BTreeMap::new();
        for n in self.nodes.values() {
            crate::decide::lost::merge_all(&mut all, &n.lost);
        }
        all
    }

    /// The local node.
    pub fn local(&self) -> Option<&NodeView> {
        self.nodes.get(self.self_name.as_str())
    }
}

/// Whether record `new` should replace `old` for their shared name.
fn replaces(new: &RawNode, old: &NodeView) -> bool {
    if new.alive != old.alive {
        return new.alive;
    }
    if new.alive && new.gossip_addr != old.gossip_addr {
        return new.generation < old.generation;
    }
    new.generation > old.generation
}

impl NodeView {
    fn from_raw(name: NodeName, n: &RawNode) -> NodeView {
        let mut view = NodeView {
            name,
            generation: n.generation,
            gossip_addr: n.gossip_addr,
            alive: n.alive,
            heartbeat: n.heartbeat,
            record: None,
            requests: BTreeMap::new(),
            volumes: BTreeMap::new(),
            claims: BTreeMap::new(),
            progress: BTreeMap::new(),
            done: BTreeMap::new(),
            lost: BTreeMap::new(),
            ignored: Vec::new(),
        };
        for (k, v) in &n.entries {
            let result = match Key::parse(k) {
                Key::Node => schema::decode::<NodeRecord>(v).map(|r| view.record = Some(r)),
                Key::NodeRequest(target) => schema::decode_request(v).map(|r| {
                    view.requests.insert(target, r);
                }),
                Key::Volume(id) => schema::decode::<VolumeRecord>(v).map(|r| {
                    view.volumes.insert(id, r);
                }),
                Key::Claim { source, volume } => schema::decode::<ClaimRecord>(v).map(|r| {
                    view.claims.insert((source, volume), r);
                }),
                Key::Progress(id) => schema::decode::<ProgressRecord>(v).map(|r| {
                    view.progress.insert(id, r);
                }),
                Key::Done(id) => schema::decode::<DoneRecord>(v).map(|r| {
                    view.done.insert(id, r);
                }),
                Key::Lost(node) => schema::decode::<LostDeclaration>(v).map(|r| {
                    view.lost.insert(node, r);
                }),
                Key::Other(_) => Ok(()),
            };
            if let Err(why) = result {
                view.ignored.push((k.clone(), why));
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::node::{NodeAction, NodeState};

    fn raw_node(name: &str, generation: u64, entries: Vec<(&str, String)>) -> RawNode {
        RawNode {
            name: name.into(),
            generation,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            alive: true,
            heartbeat: 3,
            entries: entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn bad_values_are_skipped_and_reported() {
        let req = NodeRequest {
            seq: 9,
            nonce: "x".into(),
            action: NodeAction::Drain,
            issued_by: "a".parse().unwrap(),
            options: Default::default(),
        };
        let raw = RawSnapshot {
            self_name: "a".into(),
            nodes: vec![raw_node(
                "a",
                1,
                vec![
                    ("node", "garbage".into()),
                    ("req/drain/b", schema::encode(&req)),
                    ("req/drain/c", "{\"v\":99}".into()),
                    ("future/x", "anything".into()),
                ],
            )],
        };
        let view = ClusterView::from_raw(&raw);
        let a = &view.nodes["a"];
        assert!(a.record.is_none());
        assert_eq!(a.requests.len(), 1);
        assert_eq!(a.ignored.len(), 2);
        assert_eq!(view.requests_for("b").count(), 1);
        assert_eq!(view.highest_seq_for("b"), 9);
        assert!(matches!(a.ignored[1].1, Ignored::UnknownVersion { found: 99 }));
    }

    #[test]
    fn newest_generation_wins() {
        let rec = |state| schema::encode(&NodeRecord::new("a".parse().unwrap(), state, "127.0.0.1:1".parse().unwrap()));
        let raw = RawSnapshot {
            self_name: "b".into(),
            nodes: vec![
                raw_node("a", 2, vec![("node", rec(NodeState::Draining))]),
                raw_node("a", 1, vec![("node", rec(NodeState::Active))]),
            ],
        };
        let view = ClusterView::from_raw(&raw);
        assert_eq!(view.nodes["a"].record.as_ref().unwrap().state, NodeState::Draining);
    }

    #[test]
    fn a_live_record_wins_over_a_newer_dead_namesake() {
        let mut gone = raw_node("a", 9, vec![]);
        gone.alive = false;
        let raw = RawSnapshot { self_name: "b".into(), nodes: vec![raw_node("a", 2, vec![]), gone] };
        let view = ClusterView::from_raw(&raw);
        assert_eq!((view.nodes["a"].generation, view.nodes["a"].alive), (2, true));
        // Two live ones: at another address the incumbent stays, at the same a restart wins.
        let mut elsewhere = raw_node("a", 9, vec![]);
        elsewhere.gossip_addr = "127.0.0.1:9".parse().unwrap();
        let raw = RawSnapshot { self_name: "b".into(), nodes: vec![raw_node("a", 2, vec![]), elsewhere] };
        assert_eq!(ClusterView::from_raw(&raw).nodes["a"].generation, 2);
        let raw =
            RawSnapshot { self_name: "b".into(), nodes: vec![raw_node("a", 2, vec![]), raw_node("a", 9, vec![])] };
        assert_eq!(ClusterView::from_raw(&raw).nodes["a"].generation, 9);
    }
}
