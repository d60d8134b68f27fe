//! The types the decision core shares with the gossip schema, the control API and the
//! data plane: defined once here so that none of them imports another for a type.
//!
//! Node names and volume ids are newtypes checked once, where they enter (config, gossip
//! decode, control requests, CLI arguments): past that boundary a [`NodeName`] or a
//! [`VolumeId`] is known to be plain enough for gossip keys (`req/drain/<node>`,
//! `vol/<id>`), iSCSI names and file names. Both serialize as plain strings, so the
//! gossip values and state files are the same bytes as with plain `String`s.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// 1-63 of `a-z A-Z 0-9 - _ .`, starting with a letter or digit.
fn plain(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A name or id that was refused where it entered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a node name.
    #[error(
        "{0:?} is not a valid node name (use 1-63 characters from a-z, A-Z, 0-9, '-', '_', '.', starting with a letter or digit)"
    )]
    Node(String),
    /// Not a volume id.
    #[error("{0:?} is not a valid volume id (1-63 of a-z A-Z 0-9 - _ ., starting alphanumeric)")]
    Volume(String),
}

/// A string newtype checked once by `$valid`; everything else reads it as a `str`.
macro_rules! checked_name {
    ($(#[$doc:meta])* $name:ident, $valid:path, $error:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                if $valid(&s) { Ok(Self(s)) } else { Err($error(s)) }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::try_from(s.to_owned())
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::try_from(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Shown like the string (logs and messages read the same as before the newtype).
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

checked_name!(
    /// A node's name: its chitchat id, its gossip keys, its iSCSI names. Checked in the
    /// config, in gossip keys and records, in control requests and on the command line.
    NodeName,
    NodeName::valid,
    NameError::Node
);

checked_name!(
    /// A volume's fleet-wide id: its gossip keys, its export's target name, its file in
    /// the pool (`<id>.img`). Checked where a volume is created and where gossip names one.
    VolumeId,
    VolumeId::valid,
    NameError::Volume
);

impl NodeName {
    /// Whether `s` may name a node: it travels in gossip keys (`req/drain/<node>`),
    /// iSCSI names and file names, so it stays plain.
    pub fn valid(s: &str) -> bool {
        plain(s)
    }
}

impl VolumeId {
    /// Whether `s` may be a volume id: it travels in gossip keys (`vol/<id>`), iSCSI
    /// names and pool file names. The same characters as node names, so no id an earlier
    /// agent accepted is refused.
    pub fn valid(s: &str) -> bool {
        plain(s)
    }
}

/// Commands run around a volume's move, with `MESHDRAIN_VOLUME`, `MESHDRAIN_DEVICE` and
/// `MESHDRAIN_NODE` in their environment. A failing `stop` hook stops that volume's move;
/// a failing `start` or `done` hook is logged and the move goes on (docs/lease-protocol.md).
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

/// The prefix of every iSCSI name meshdrain gives out (targets and initiators), written
/// only here.
const IQN_PREFIX: &str = "iqn.2026-11.dev.meshdrain";

/// The target name of `volume`'s export on `node`. Pure naming: the core publishes it in
/// the volume record ([`ExportEndpoint::iqn`]) and the data plane opens the export under
/// it, so both call this one function.
pub fn export_iqn(node: &str, volume: &str) -> String {
    format!("{IQN_PREFIX}:{node}.{volume}")
}

/// The initiator name `holder` logs in with for one lease: it carries the epoch, so the
/// source's ACL admits this lease's holder and no earlier one.
pub fn initiator_iqn(holder: &str, volume: &str, epoch: u64) -> String {
    format!("{IQN_PREFIX}:{holder}.{volume}.e{epoch}")
}

/// Hydration counters of one clone, declared once: the clone services report them, the
/// data plane's [`CloneProgress`] carries them to the core, the holder publishes them
/// (flattened into the gossip `progress/<id>` record, same JSON) and `volume list` shows
/// them (flattened into the API's volume line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hydration {
    /// Regions on the dest.
    pub hydrated: u64,
    /// Regions in the volume.
    pub total: u64,
    /// Recent hydration rate, bytes/s.
    pub bytes_per_s: u64,
    /// Bytes read from the source so far (what the network carried; regions the workload
    /// overwrote or the source reported unallocated are not fetched).
    pub fetched_bytes: u64,
    /// Bytes the workload's reads took straight from the source, within regions not yet
    /// copied (they leave the regions to hydration; on top of `fetched_bytes`).
    pub read_through_bytes: u64,
}

impl Hydration {
    /// Every region is on the dest.
    pub fn complete(&self) -> bool {
        self.total > 0 && self.hydrated >= self.total
    }
}

/// One clone's progress as the data plane reports it: the counters, whether the source
/// stopped answering (the holder phase publishes it), and the last error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneProgress {
    /// The counters.
    pub hydration: Hydration,
    /// The source does not answer (or the dest takes no writes).
    pub stalled: bool,
    /// Last error.
    pub error: Option<String>,
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
    pub from: NodeName,
    /// The lease epoch of the move.
    pub epoch: u64,
    /// Bytes read from the source (the rest was written by the workload or unallocated).
    pub fetched_bytes: u64,
    /// A return's mode as the holder used it, `delta` or `full: <why>` (docs/return.md), so
    /// `volume list` and `undrain --return --wait` say it after the move too. Absent for an
    /// ordinary move and in records of earlier builds.
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
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
    /// A return to this node: what to do with the copy kept here (docs/return.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::decide::returns::ReturnPlan>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn names_are_plain_and_checked_once() {
        assert_eq!("node-1.rack_2".parse::<NodeName>().unwrap().as_str(), "node-1.rack_2");
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(64), "é"] {
            assert_eq!(bad.parse::<NodeName>().unwrap_err(), NameError::Node(bad.to_owned()), "{bad:?}");
            assert_eq!(bad.parse::<VolumeId>().unwrap_err(), NameError::Volume(bad.to_owned()), "{bad:?}");
        }
        assert_eq!(
            "a/b".parse::<NodeName>().unwrap_err().to_string(),
            "\"a/b\" is not a valid node name (use 1-63 characters from a-z, A-Z, 0-9, '-', '_', '.', starting with a letter or digit)"
        );
        assert_eq!(
            "a b".parse::<VolumeId>().unwrap_err().to_string(),
            "\"a b\" is not a valid volume id (1-63 of a-z A-Z 0-9 - _ ., starting alphanumeric)"
        );
    }

    #[test]
    fn names_serialize_as_plain_strings_and_refuse_bad_ones() {
        let id: VolumeId = "db.1".parse().unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"db.1\"");
        assert_eq!(serde_json::from_str::<VolumeId>("\"db.1\"").unwrap(), id);
        let err = serde_json::from_str::<NodeName>("\"../x\"").unwrap_err().to_string();
        assert!(err.starts_with("\"../x\" is not a valid node name"), "{err}");
        // Maps keyed by names are looked up by `&str` and read the same in JSON.
        let map: BTreeMap<NodeName, u32> = [("n1".parse().unwrap(), 1)].into();
        assert_eq!(map.get("n1"), Some(&1));
        assert_eq!(serde_json::to_string(&map).unwrap(), "{\"n1\":1}");
        assert_eq!(format!("{:?}", id), "\"db.1\"");
    }
}
