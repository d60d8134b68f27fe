//! The gossip key schema. Every key is owned by exactly one node (the one whose chitchat
//! state holds it); values are JSON objects carrying a schema version `v`.
//!
//! Decoding never fails the caller: a value of an unknown version, or one that does not
//! parse, becomes an [`Ignored`] with the reason, which the view skips and counts
//! (`status --json` lists them; the metric `meshdrain_gossip_ignored_values`).
//! New optional fields may be added within a version (unknown fields are ignored);
//! anything incompatible bumps `v`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::decide::lease::{HolderPhase, SourcePhase};
use crate::decide::model::{Arrival, ExportEndpoint, Hooks, Hydration, NodeName, VolumeId, WireguardAdvert};
use crate::decide::node::NodeState;
use crate::decide::request::{AppliedRequest, NodeRequest};

/// The schema version this agent writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A parsed gossip key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// `node`: the owner's node record.
    Node,
    /// `req/drain/<node>`: a request that `<node>` change state.
    NodeRequest(NodeName),
    /// `vol/<id>`: a volume as its owner (source) publishes it.
    Volume(VolumeId),
    /// `claim/<source>/<id>`: a candidate's claim for an offered volume.
    Claim {
        /// The source node.
        source: NodeName,
        /// The volume.
        volume: VolumeId,
    },
    /// `progress/<id>`: the holder's progress on a volume moving to it.
    Progress(VolumeId),
    /// `done/<id>`: the holder has every region of the volume.
    Done(VolumeId),
    /// `lost/<node>`: `<node>` was declared lost for good (kept and republished by every
    /// agent that saw it; docs/failures.md).
    Lost(NodeName),
    /// Any other key: kept raw so newer agents' keys don't break older ones.
    Other(String),
}

impl Key {
    /// Parses a key string. A name or id in it that is not plain makes it `Other`.
    pub fn parse(key: &str) -> Key {
        if key == "node" {
            return Key::Node;
        }
        let node = |s: &str| s.parse::<NodeName>().ok();
        let volume = |s: &str| s.parse::<VolumeId>().ok();
        if let Some(node) = key.strip_prefix("req/drain/").and_then(node) {
            return Key::NodeRequest(node);
        }
        if let Some(id) = key.strip_prefix("vol/").and_then(volume) {
            return Key::Volume(id);
        }
        if let Some(id) = key.strip_prefix("progress/").and_then(volume) {
            return Key::Progress(id);
        }
        if let Some(id) = key.strip_prefix("done/").and_then(volume) {
            return Key::Done(id);
        }
        if let Some(n) = key.strip_prefix("lost/").and_then(node) {
            return Key::Lost(n);
        }
        if let Some((s, v)) = key.strip_prefix("claim/").and_then(|r| r.split_once('/'))
            && let (Some(source), Some(volume)) = (node(s), volume(v))
        {
            return Key::Claim { source, volume };
        }
        Key::Other(key.to_owned())
    }

    /// The key string.
    pub fn render(&self) -> String {
        match self {
            Key::Node => "node".to_owned(),
            Key::NodeRequest(node) => format!("req/drain/{node}"),
            Key::Volume(id) => format!("vol/{id}"),
            Key::Claim { source, volume } => format!("claim/{source}/{volume}"),
            Key::Progress(id) => format!("progress/{id}"),
            Key::Done(id) => format!("done/{id}"),
            Key::Lost(node) => format!("lost/{node}"),
            Key::Other(k) => k.clone(),
        }
    }
}

/// Why a gossip value was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// Written by an agent with a schema this one does not know.
    #[error("schema version {found} is not understood (this agent reads {SCHEMA_VERSION}); upgrade this agent")]
    UnknownVersion {
        /// The version found.
        found: u64,
    },
    /// Not JSON, no version, or fields of the wrong type.
    #[error("malformed value: {0}")]
    Malformed(String),
}

/// Encodes a value with the schema version.
pub fn encode<T: Serialize>(value: &T) -> String {
    let mut json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut json {
        map.insert("v".to_owned(), SCHEMA_VERSION.into());
    }
    json.to_string()
}

/// Decodes a versioned value.
pub fn decode<T: DeserializeOwned>(raw: &str) -> Result<T, Ignored> {
    let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| Ignored::Malformed(e.to_string()))?;
    match json.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(found) => return Err(Ignored::UnknownVersion { found }),
        None => return Err(Ignored::Malformed("no schema version `v`".to_owned())),
    }
    serde_json::from_value(json).map_err(|e| Ignored::Malformed(e.to_string()))
}

/// The `node` key: everything others need to know about a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name (also its chitchat node id).
    pub name: NodeName,
    /// Lifecycle state.
    pub state: NodeState,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Its mesh address, when a mesh is configured.
    #[serde(default)]
    pub mesh_addr: Option<String>,
    /// Which WireGuard backend carries its mesh (`kernel`, `userspace`, `none`).
    #[serde(default)]
    pub mesh_backend: Option<String>,
    /// WireGuard identity, when a mesh is configured.
    #[serde(default)]
    pub wireguard: Option<WireguardAdvert>,
    /// Bytes free for incoming volumes.
    #[serde(default)]
    pub free_bytes: u64,
    /// Labels for placement constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many volumes it holds.
    #[serde(default)]
    pub volumes: u32,
    /// meshdrain version of its agent.
    #[serde(default)]
    pub agent_version: String,
    /// The last node request it applied (or refused), so issuers see theirs adopted.
    #[serde(default)]
    pub last_request: Option<AppliedRequest>,
    /// It runs no data plane (gossip only): placement never sends it a volume. Absent in
    /// records of agents that predate the field, which all had one when they held volumes.
    #[serde(default)]
    pub no_data_plane: bool,
}

impl NodeRecord {
    /// A record with the three fields every node has and the rest as a record without them
    /// decodes (no mesh, no labels, no volumes, no version, a data plane). Tests and helpers
    /// build records from it with struct update syntax, so a new field is added here and in
    /// the publisher (decide/core/keys.rs), not in every copy.
    pub fn new(name: NodeName, state: NodeState, gossip_addr: SocketAddr) -> Self {
        Self {
            name,
            state,
            gossip_addr,
            mesh_addr: None,
            mesh_backend: None,
            wireguard: None,
            free_bytes: 0,
            labels: BTreeMap::new(),
            volumes: 0,
            agent_version: String::new(),
            last_request: None,
            no_data_plane: false,
        }
    }
}

/// The `vol/<id>` key, published by the volume's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Size in bytes.
    pub size: u64,
    /// Lease epoch.
    pub epoch: u64,
    /// Move phase (with holder where there is one).
    #[serde(flatten)]
    pub phase: SourcePhase,
    /// Labels a target must carry.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    /// The export, while granted or cut over.
    #[serde(default)]
    pub export: Option<ExportEndpoint>,
    /// Hydration bandwidth the holder should keep to, bytes/s.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// Hooks around the volume's moves: they travel with it, so its next holder runs the
    /// same commands. (Only CA-admitted nodes gossip; hooks run as the agent's user.)
    #[serde(default)]
    pub hooks: Hooks,
    /// How the volume's last move went (published by its new owner).
    #[serde(default)]
    pub arrived: Option<Arrival>,
    /// The drain asked for `--verify`: the holder digests what it reads and sends the
    /// digest with `done`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    /// While the volume moves back to the node it came from: what that node's retained
    /// copy lacks, or why everything is copied (docs/return.md).
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub ret: Option<crate::decide::returns::ReturnBase>,
}

/// The `claim/<source>/<id>` key: "I can take it, at this epoch".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The epoch of the offer answered.
    pub epoch: u64,
}

/// The `progress/<id>` key, published by the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// The source.
    pub source: NodeName,
    /// The epoch this holder was granted.
    pub epoch: u64,
    /// Holder phase.
    #[serde(flatten)]
    pub phase: HolderPhase,
    /// The hydration counters, as top-level fields (`hydrated`, `total`, ...).
    #[serde(flatten)]
    pub hydration: Hydration,
    /// The last error, when stalled or failed.
    #[serde(default)]
    pub error: Option<String>,
    /// A return to this holder: `delta` (cloned over the copy it kept) or `full: <why>`
    /// (docs/return.md).
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
}

/// The `done/<id>` key: the holder has every region, flushed, for this epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The source it came from.
    pub source: NodeName,
    /// The epoch.
    pub epoch: u64,
    /// Size in bytes.
    pub size: u64,
    /// Digest of the data read from the source, when `--verify` asked for one.
    #[serde(default)]
    pub digest: Option<String>,
}

/// Decodes a `req/drain/<node>` value.
pub fn decode_request(raw: &str) -> Result<NodeRequest, Ignored> {
    decode(raw)
}

/// The keys of rolls (docs/roll.md). The core's [`Key`] leaves them `Other`; the agent's
/// roll side reads them with [`RollKey::parse`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RollKey {
    /// `roll/<id>`: a roll's spec, republished by every node that saw it.
    Spec(String),
    /// `rollstep/<id>`: the owner's step in that roll.
    Step(String),
    /// `rollctl/<id>`: the latest resume or cancel of that roll the owner saw.
    Ctl(String),
    /// `rollslot`: the owner's claim on the availability lease and its votes.
    Slot,
}

/// Whether `id` is a roll id: 1 to 32 of `[a-z0-9-]`.
pub fn valid_roll_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl RollKey {
    /// Parses a roll key; `None` for any other key or an invalid id.
    pub fn parse(key: &str) -> Option<RollKey> {
        if key == "rollslot" {
            return Some(RollKey::Slot);
        }
        let id = |p: &str| key.strip_prefix(p).filter(|id| valid_roll_id(id)).map(str::to_owned);
        id("roll/")
            .map(RollKey::Spec)
            .or_else(|| id("rollstep/").map(RollKey::Step))
            .or_else(|| id("rollctl/").map(RollKey::Ctl))
    }

    /// The key string.
    pub fn render(&self) -> String {
        match self {
            RollKey::Spec(id) => format!("roll/{id}"),
            RollKey::Step(id) => format!("rollstep/{id}"),
            RollKey::Ctl(id) => format!("rollctl/{id}"),
            RollKey::Slot => "rollslot".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::node::NodeAction;

    fn record() -> NodeRecord {
        NodeRecord {
            free_bytes: 10,
            volumes: 2,
            agent_version: "0.1.0".into(),
            ..NodeRecord::new("node1".parse().unwrap(), NodeState::Draining, "127.0.0.1:7946".parse().unwrap())
        }
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            "node",
            "req/drain/node3",
            "vol/abc",
            "req/drain/bad name",
            "claim/n1/v1",
            "progress/v",
            "done/v",
            "lost/n2",
            "claim/x",
        ] {
            assert_eq!(Key::parse(k).render(), k);
        }
        assert_eq!(Key::parse("req/drain/node3"), Key::NodeRequest("node3".parse().unwrap()));
        assert!(matches!(Key::parse("req/drain/../x"), Key::Other(_)));
        assert_eq!(
            Key::parse("claim/n1/v1"),
            Key::Claim { source: "n1".parse().unwrap(), volume: "v1".parse().unwrap() }
        );
        assert!(matches!(Key::parse("claim/x"), Key::Other(_)));
        assert_eq!(Key::parse("lost/n2"), Key::Lost("n2".parse().unwrap()));
        assert!(matches!(Key::parse("lost/../n2"), Key::Other(_)));
        assert!(matches!(Key::parse("vol/a/b"), Key::Other(_)));
    }

    #[test]
    fn values_round_trip_with_version() {
        let raw = encode(&record());
        assert!(raw.contains("\"v\":1"), "{raw}");
        assert_eq!(decode::<NodeRecord>(&raw).unwrap(), record());
        let req = NodeRequest {
            seq: 5,
            nonce: "n".into(),
            action: NodeAction::Drain,
            issued_by: "node1".parse().unwrap(),
            options: Default::default(),
        };
        assert_eq!(decode_request(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn unknown_version_is_ignored_not_fatal() {
        let raw = encode(&record()).replace("\"v\":1", "\"v\":7");
        assert_eq!(decode::<NodeRecord>(&raw).unwrap_err(), Ignored::UnknownVersion { found: 7 });
    }

    #[test]
    fn malformed_values_are_ignored_with_reason() {
        for raw in ["", "not json", "[1,2]", "{\"name\":\"x\"}", "{\"v\":1,\"name\":3}"] {
            let err = decode::<NodeRecord>(raw).unwrap_err();
            assert!(matches!(err, Ignored::Malformed(_)), "{raw}: {err}");
        }
    }

    /// `progress/<id>` as agents of the previous version publish it (counters declared in
    /// the record itself): ours decodes it and writes the same bytes back.
    #[test]
    fn a_progress_record_of_the_previous_version_round_trips_byte_identical() {
        for old in [
            r#"{"bytes_per_s":9,"epoch":2,"error":null,"fetched_bytes":262144,"hydrated":4,"phase":"running","read_through_bytes":8192,"source":"a","stalled":false,"total":16,"v":1}"#,
            r#"{"bytes_per_s":0,"epoch":7,"error":"login to 10.0.0.1:3260 (iqn.x): refused","fetched_bytes":0,"hydrated":0,"phase":"preparing","read_through_bytes":0,"source":"n1","total":0,"v":1}"#,
        ] {
            let rec = decode::<ProgressRecord>(old).unwrap();
            assert_eq!(encode(&rec), old);
        }
        let rec = decode::<ProgressRecord>(
            r#"{"v":1,"source":"a","epoch":2,"phase":"running","stalled":true,"hydrated":4,"total":16}"#,
        )
        .unwrap();
        assert_eq!(rec.phase, HolderPhase::Running { stalled: true });
        assert_eq!(rec.hydration, Hydration { hydrated: 4, total: 16, ..Default::default() });
    }

    #[test]
    fn newer_fields_are_tolerated() {
        let raw = encode(&record()).replace("\"v\":1", "\"v\":1,\"future\":{\"x\":1}");
        assert_eq!(decode::<NodeRecord>(&raw).unwrap(), record());
    }

    #[test]
    fn roll_keys_round_trip_and_refuse_odd_ids() {
        for k in ["roll/r1", "rollstep/abc-9", "rollctl/x", "rollslot"] {
            assert_eq!(RollKey::parse(k).unwrap().render(), k);
        }
        for k in ["roll/", "roll/A", "roll/../x", "rollstep/a/b", "rolls", &format!("roll/{}", "a".repeat(33))] {
            assert_eq!(RollKey::parse(k), None, "{k}");
        }
        assert!(matches!(Key::parse("roll/r1"), Key::Other(_)), "the volume core leaves roll keys alone");
    }
}
