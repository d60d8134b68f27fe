//! Who may speak for a name. chitchat keys node state by (name, generation, address), so a
//! second process with a live node's name is a second record, not a takeover; this module
//! finds such conflicts, and with the mesh drops records whose name is not the one the
//! fleet CA certified for their mesh address (docs/threat-model.md).
//!
//! Rules: the local node's own record is the only one with its name in the view (a record
//! from another process with our name never makes us look dead to ourselves). Two live
//! records with one name at different addresses are a conflict; the one with the newer
//! generation is the newcomer, and a newcomer agent refuses to run (src/agent/run.rs). A
//! newer generation at the same address is a restart, not a conflict.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::transport::GossipCounters;
use super::view::RawNode;

/// How gossip is protected, for `status` and the start log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GossipMode {
    /// Not reported (an agent on a test transport).
    #[default]
    Unknown,
    /// Every datagram carries the fleet secret's HMAC.
    Hmac,
    /// On mesh addresses only: WireGuard authenticates peers.
    Mesh,
    /// On the mesh, and every datagram carries the fleet secret's HMAC too.
    MeshHmac,
    /// No secret, on a loopback address (development, tests).
    Loopback,
    /// No secret on a reachable address: `insecure = true` in `[gossip]`.
    Insecure,
}

/// A name claimed by more than one live gossip record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameConflict {
    /// The contested name.
    pub name: String,
    /// The other record's incarnation.
    pub generation: u64,
    /// The other record's gossip address.
    pub gossip_addr: String,
    /// The name is this agent's own.
    pub ours: bool,
    /// This agent is the newcomer (newer generation): it refuses to run.
    pub we_are_newcomer: bool,
}

/// What the gossip layer has seen about trust, for `meshdrain status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipHealth {
    /// How gossip is protected.
    pub mode: GossipMode,
    /// Datagrams admitted and dropped before chitchat (boxed: keeps the control API's
    /// response small).
    pub counters: Box<GossipCounters>,
    /// Names claimed by more than one live record.
    pub conflicts: Vec<NameConflict>,
    /// Records ignored because their name is not the one certified for their mesh address
    /// (distinct records seen).
    pub name_mismatch_ignored: u64,
}

/// One record as chitchat holds it: identity and liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Node name.
    pub name: String,
    /// Incarnation.
    pub generation: u64,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Alive per the failure detector.
    pub alive: bool,
}

/// The conflicts in `records` as seen by `me`. `records` may include `me`.
pub fn conflicts(me: &Record, records: &[Record]) -> Vec<NameConflict> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r.alive && r.name == me.name && *r != me) {
        if r.addr != me.addr {
            out.push(NameConflict {
                name: r.name.clone(),
                generation: r.generation,
                gossip_addr: r.addr.to_string(),
                ours: true,
                we_are_newcomer: me.generation > r.generation,
            });
        } else if r.generation > me.generation {
            // Our address, a newer incarnation: someone else binds our address elsewhere.
            out.push(NameConflict {
                name: r.name.clone(),
                generation: r.generation,
                gossip_addr: r.addr.to_string(),
                ours: true,
                we_are_newcomer: false,
            });
        }
    }
    let mut by_name: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.alive && r.name != me.name) {
        by_name.entry(&r.name).or_default().push(r);
    }
    for (name, live) in by_name {
        let Some(oldest) = live.iter().min_by_key(|r| r.generation) else { continue };
        for r in live.iter().filter(|r| r.addr != oldest.addr) {
            out.push(NameConflict {
                name: name.to_owned(),
                generation: r.generation,
                gossip_addr: r.addr.to_string(),
                ours: false,
                we_are_newcomer: false,
            });
        }
    }
    out
}

/// With the mesh: which name the fleet CA certified for each mesh address (implemented
/// in src/agent/mesh.rs from the certificates nodes publish).
pub trait NameCheck: Send + Sync + 'static {
    /// Mesh address → certified node name, from every certificate found in `nodes`.
    fn certified(&self, nodes: &[RawNode]) -> HashMap<IpAddr, String>;
}

/// Whether `node` may keep its name: its gossip address must be a mesh address whose
/// certificate names it.
pub fn name_matches(certified: &HashMap<IpAddr, String>, node: &RawNode) -> bool {
    certified.get(&node.gossip_addr.ip()).is_some_and(|n| *n == node.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, generation: u64, port: u16, alive: bool) -> Record {
        Record { name: name.into(), generation, addr: SocketAddr::from(([127, 0, 0, 1], port)), alive }
    }

    #[test]
    fn a_live_namesake_elsewhere_is_a_conflict_and_the_newer_one_is_the_newcomer() {
        let me = rec("node2", 10, 2, true);
        let impostor = rec("node2", 20, 9, true);
        let all = vec![me.clone(), impostor.clone(), rec("node1", 1, 1, true)];
        let c = conflicts(&me, &all);
        assert_eq!(
            c,
            vec![NameConflict {
                name: "node2".into(),
                generation: 20,
                gossip_addr: "127.0.0.1:9".into(),
                ours: true,
                we_are_newcomer: false
            }]
        );
        // The impostor's side of the same fleet: it is the newcomer.
        assert!(conflicts(&impostor, &all)[0].we_are_newcomer);
        // Gone dead: no conflict left.
        assert!(conflicts(&me, &[me.clone(), rec("node2", 20, 9, false)]).is_empty());
        // Our own earlier incarnation at our address is a restart, not a conflict.
        assert!(conflicts(&me, &[me.clone(), rec("node2", 5, 2, true)]).is_empty());
    }

    #[test]
    fn other_names_conflict_only_at_different_addresses() {
        let me = rec("a", 1, 1, true);
        let restart = vec![rec("b", 1, 2, true), rec("b", 2, 2, true)];
        assert!(conflicts(&me, &restart).is_empty());
        let twins = vec![rec("b", 1, 2, true), rec("b", 2, 3, true)];
        let c = conflicts(&me, &twins);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].gossip_addr.as_str(), c[0].ours), ("127.0.0.1:3", false));
    }
}
