//! The types the decision core shares with the gossip schema, the control API and the
//! data plane: defined once here so that none of them imports another for a type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Commands run around a volume's move, with `MESHDRAIN_VOLUME`, `MESHDRAIN_DEVICE` and
/// `MESHDRAIN_NODE` in their environment. A failing hook stops that volume's move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    /// On the source, before the export opens (quiesce the workload).
    #[serde(default)]
    pub stop: Option<String>,
    /// On the target once the clone device exists (start the workload on it); also on
    /// the source when a move is cancelled before cut-over.
    #[serde(default)]
    pub start: Option<String>,
    /// On the target after hand-off.
    #[serde(default)]
    pub done: Option<String>,
}

/// Where a holder logs in to read a volume: the source's export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEndpoint {
    /// `ip:port` of the source's iSCSI target (its mesh address when a mesh runs).
    pub addr: String,
    /// Target name.
    pub iqn: String,
}

/// The WireGuard identity a node advertises so others can add it as a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardAdvert {
    /// Base64 public key (the node's identity).
    pub public_key: String,
    /// Underlay endpoints (`ip:port`) where its WireGuard listens.
    pub endpoints: Vec<String>,
    /// The node certificate signed by the fleet CA (opaque here; the mesh crate checks it).
    #[serde(default)]
    pub certificate: Option<serde_json::Value>,
    /// The newest fleet revocation list this node knows (CA-signed, so anyone may republish).
    #[serde(default)]
    pub revocations: Option<serde_json::Value>,
}

/// How a volume's last move went, kept by its new owner and published with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// The node it came from.
    pub from: String,
    /// The lease epoch of the move.
    pub epoch: u64,
    /// Bytes read from the source (the rest was written by the workload or unallocated).
    pub fetched_bytes: u64,
}

/// What a holder keeps about a volume coming in, from the grant: enough to resume after a
/// restart and to own the volume afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// The source's export.
    pub export: Option<ExportEndpoint>,
    /// Labels a target must carry.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// Hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// The source asked for a digest of what is read (`--verify`).
    #[serde(default)]
    pub verify: bool,
}
