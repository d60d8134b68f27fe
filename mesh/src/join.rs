//! Join requests: how a new (or returning) node gets through a seed's WireGuard.
//!
//! WireGuard drops handshakes from keys it does not know, and a node is only learnt from
//! gossip, which itself rides WireGuard. So a joining node first sends each seed one small
//! UDP datagram on the underlay (the seed's WireGuard port + [`JOIN_PORT_OFFSET`]) carrying
//! its certificate. The seed checks the certificate like any gossip advert (fleet,
//! signature, expiry, revocation) and that the sender holds the certified key: the datagram
//! carries an HMAC keyed by the X25519 secret shared by the two nodes, which only the key's
//! holder can compute. The seed then adds the joiner as a peer for a while; gossip takes over
//! from there. Nothing here is trusted beyond what the CA signed.
//!
//! # Endpoints and replays
//! Anyone who sees a join datagram can send a copy from another address within its clock
//! window. So a join only *sets* an endpoint when the address is covered by the HMAC: format
//! v2 carries the underlay IP the joiner sends from (`ip`), and the seed uses `ip:wg_port` as
//! the joiner's endpoint only when the datagram came from that IP. A copy from elsewhere, or
//! a joiner behind NAT whose source differs from what it claims, is admitted with no
//! endpoint: WireGuard then learns it from the joiner's own handshake (roaming, which only
//! authenticated packets move). [`JoinReplayGuard`] remembers each key's newest accepted
//! timestamp for the clock window, so an older or equal copy is refused as a replay and can
//! neither refresh the join nor move anything. Hostile input is bounded: a datagram over
//! [`MAX_JOIN_DATAGRAM`] bytes is refused before parsing, peer text in errors is clipped.
//!
//! # Upgrades
//! A new seed reads both formats. A v1 datagram (agents before v2: no `ip`, HMAC without the
//! address) is accepted **without an endpoint**: the old joiner is admitted and WireGuard
//! learns its endpoint from its handshake, so a replayed v1 copy moves nothing. An old seed
//! refuses v2 datagrams as malformed (unknown field `ip`), so upgrade seeds first.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cert::{Admitted, CaPublicKey, Certificate, RevocationList};
use crate::error::AdmissionError;
use crate::keys::{NodeKey, PublicKey};
use crate::refusals::{RefusalKind, clip};

/// The join port is the WireGuard listen port plus this.
pub const JOIN_PORT_OFFSET: u16 = 1;
/// How far a join's timestamp may be from our clock (bounds replays).
pub const JOIN_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Largest join datagram read; anything longer is refused unparsed (ours are under 1 KiB).
pub const MAX_JOIN_DATAGRAM: usize = 4096;
/// Most keys whose newest join timestamp a seed remembers at once (one per fleet member
/// joining within the clock window; only CA-certified keys that proved possession count).
pub const MAX_JOIN_KEYS: usize = 4096;
/// Format version written: v2 binds the sender's underlay IP.
const JOIN_VERSION: u32 = 2;
/// The older format still read (no endpoint is taken from it).
const JOIN_VERSION_V1: u32 = 1;

/// The datagram a joining node sends to a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Format version.
    pub v: u32,
    /// The joiner's certificate.
    pub certificate: Certificate,
    /// The seed it is meant for (base64 key): a join for another seed is refused.
    pub to: String,
    /// The joiner's WireGuard listen port (the datagram comes from its join port).
    pub wg_port: u16,
    /// The underlay IP the joiner sends from (v2): the seed takes an endpoint from the join
    /// only when the datagram's source is this IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Unix seconds when sent.
    pub at: u64,
    /// HMAC-SHA256 over the fields above, keyed by the X25519 shared secret (base64).
    pub mac: String,
}

/// A join that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The admitted node.
    pub admitted: Admitted,
    /// Its certificate (to treat it like a gossip advert).
    pub certificate: Certificate,
    /// Its WireGuard endpoint (claimed IP with its WireGuard port) when the datagram came from
    /// the IP its HMAC covers; `None` otherwise (NAT, a copy, a v1 join): WireGuard learns it
    /// from the joiner's handshake.
    pub endpoint: Option<SocketAddr>,
    /// The join's timestamp (unix seconds), for [`JoinReplayGuard`].
    pub at: u64,
}

/// Why a join datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Not a join datagram of a version we read.
    #[error("malformed join request: {0}")]
    Malformed(String),
    /// Larger than any join we send.
    #[error("join datagram of {0} bytes or more is over the {MAX_JOIN_DATAGRAM}-byte limit")]
    Oversized(usize),
    /// Addressed to another node.
    #[error("join request for another seed ({0})")]
    WrongSeed(String),
    /// Too old or from the future.
    #[error("join request timestamp {at} is more than {JOIN_CLOCK_SKEW:?} from our clock (check NTP)")]
    Stale {
        /// Its timestamp.
        at: u64,
    },
    /// The certificate is refused.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The sender does not hold the certified key.
    #[error("join request from {0} does not prove possession of the certified key")]
    BadMac(String),
    /// Not newer than a join already accepted from that key: a copy.
    #[error("join request of node {name} at {at} is a replay (newest accepted: {newest}); it changes nothing")]
    Replayed {
        /// Node name.
        name: String,
        /// Its timestamp.
        at: u64,
        /// The newest timestamp accepted from that key.
        newest: u64,
    },
    /// [`MAX_JOIN_KEYS`] distinct keys joined within the clock window.
    #[error("join request of node {0} refused: {MAX_JOIN_KEYS} nodes already joined within {JOIN_CLOCK_SKEW:?}")]
    TooManyJoiners(String),
}

impl JoinError {
    /// The kind, for the refusal log's rate limit.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::Malformed(_) | Self::Oversized(_) => "join malformed",
            Self::WrongSeed(_) => "join for another seed",
            Self::Stale { .. } => "join stale",
            Self::Admission(a) => match a {
                AdmissionError::OtherFleet { .. } => "join from another fleet",
                AdmissionError::Forged { .. } | AdmissionError::AddressCollision { .. } => "join forged",
                AdmissionError::Expired { .. } => "join expired",
                AdmissionError::Revoked { .. } => "join revoked",
            },
            Self::BadMac(_) => "join without key",
            Self::Replayed { .. } => "join replayed",
            Self::TooManyJoiners(_) => "join table full",
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signed_bytes(v: u32, cert: &Certificate, to: &str, wg_port: u16, ip: Option<IpAddr>, at: u64) -> Vec<u8> {
    let mut out = if v == JOIN_VERSION_V1 { b"meshdrain join v1\0".to_vec() } else { b"meshdrain join v2\0".to_vec() };
    out.extend(to.as_bytes());
    out.push(0);
    out.extend(wg_port.to_be_bytes());
    out.extend(at.to_be_bytes());
    if v != JOIN_VERSION_V1 {
        match ip {
            None => out.push(0),
            Some(IpAddr::V4(a)) => {
                out.push(4);
                out.extend(a.octets());
            }
            Some(IpAddr::V6(a)) => {
                out.push(6);
                out.extend(a.octets());
            }
        }
    }
    out.extend(serde_json::to_vec(cert).unwrap_or_default());
    out
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let ipad: [u8; 64] = k.map(|b| b ^ 0x36);
    let opad: [u8; 64] = k.map(|b| b ^ 0x5c);
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

impl JoinRequest {
    /// Builds a datagram for `seed` that claims no underlay IP (the seed then learns the
    /// endpoint from our handshake); `None` if the seed's key is degenerate.
    pub fn new(
        key: &NodeKey,
        certificate: &Certificate,
        seed: &PublicKey,
        wg_port: u16,
        now: SystemTime,
    ) -> Option<Self> {
        Self::claiming(key, certificate, seed, wg_port, None, now)
    }

    /// Builds the datagram for `seed`, binding `ip` (the underlay address we send from) so
    /// the seed may take `ip:wg_port` as our endpoint; `None` if the seed's key is degenerate.
    pub fn claiming(
        key: &NodeKey,
        certificate: &Certificate,
        seed: &PublicKey,
        wg_port: u16,
        ip: Option<IpAddr>,
        now: SystemTime,
    ) -> Option<Self> {
        let shared = key.agree(seed)?;
        let to = seed.to_base64();
        let at = unix(now);
        let ip = ip.map(|i| i.to_canonical());
        let mac = B64.encode(hmac(&shared, &signed_bytes(JOIN_VERSION, certificate, &to, wg_port, ip, at)));
        Some(Self { v: JOIN_VERSION, certificate: certificate.clone(), to, wg_port, ip, at, mac })
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks a received datagram from `from` against our key, CA, revocations and clock.
    /// Replays are the caller's [`JoinReplayGuard`]'s business (it needs memory).
    pub fn verify(
        datagram: &[u8],
        from: SocketAddr,
        me: &NodeKey,
        ca: &CaPublicKey,
        revoked: &RevocationList,
        now: SystemTime,
    ) -> Result<Joined, JoinError> {
        if datagram.len() > MAX_JOIN_DATAGRAM {
            return Err(JoinError::Oversized(datagram.len()));
        }
        let req: JoinRequest =
            serde_json::from_slice(datagram).map_err(|e| JoinError::Malformed(clip(&e.to_string(), 160)))?;
        match (req.v, req.ip) {
            (JOIN_VERSION, _) | (JOIN_VERSION_V1, None) => {}
            (JOIN_VERSION_V1, Some(_)) => return Err(JoinError::Malformed("version 1 carries no ip".into())),
            (v, _) => return Err(JoinError::Malformed(format!("version {v} (this node reads 1 and 2)"))),
        }
        if req.wg_port == 0 {
            return Err(JoinError::Malformed("WireGuard port 0".into()));
        }
        if req.to != me.public().to_base64() {
            return Err(JoinError::WrongSeed(clip(&req.to, 64)));
        }
        let skew = unix(now).abs_diff(req.at);
        if skew > JOIN_CLOCK_SKEW.as_secs() {
            return Err(JoinError::Stale { at: req.at });
        }
        let admitted = req.certificate.verify(ca, revoked, now)?;
        let name = clip(&admitted.name, 64);
        let shared = me.agree(&admitted.public_key).ok_or_else(|| JoinError::BadMac(name.clone()))?;
        let want = hmac(&shared, &signed_bytes(req.v, &req.certificate, &req.to, req.wg_port, req.ip, req.at));
        // A MAC is 44 base64 characters: anything longer is not one (and is not decoded).
        let got = (req.mac.len() <= 64).then(|| B64.decode(&req.mac).ok()).flatten().unwrap_or_default();
        // Constant-time enough: compare every byte.
        if got.len() != 32 || got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(JoinError::BadMac(name));
        }
        let source = from.ip().to_canonical();
        let endpoint = req.ip.filter(|ip| ip.to_canonical() == source).map(|ip| SocketAddr::new(ip, req.wg_port));
        Ok(Joined { admitted, certificate: req.certificate, endpoint, at: req.at })
    }
}

/// Per key, the newest join timestamp accepted and whether it set an endpoint.
#[derive(Debug, Clone, Copy)]
struct Newest {
    at: u64,
    endpoint: bool,
}

/// Refuses join copies: remembers each key's newest accepted join for as long as a datagram
/// with that timestamp could still pass the clock check, bounded by [`MAX_JOIN_KEYS`].
#[derive(Debug, Default)]
pub struct JoinReplayGuard {
    newest: BTreeMap<PublicKey, Newest>,
}

impl JoinReplayGuard {
    /// Forgets timestamps that [`JoinRequest::verify`] would now refuse as stale anyway.
    pub fn prune(&mut self, now: SystemTime) {
        let now = unix(now);
        self.newest.retain(|_, n| n.at.saturating_add(JOIN_CLOCK_SKEW.as_secs()) >= now);
    }

    /// Accepts `join` if it is newer than any accepted from its key. The one exception: the
    /// same timestamp again is accepted when it sets an endpoint the first arrival did not
    /// (the original arriving after a copy sent from elsewhere).
    pub fn admit(&mut self, join: &Joined) -> Result<(), JoinError> {
        let key = join.admitted.public_key;
        let endpoint = join.endpoint.is_some();
        let full = self.newest.len() >= MAX_JOIN_KEYS;
        match self.newest.get_mut(&key) {
            None if full => Err(JoinError::TooManyJoiners(clip(&join.admitted.name, 64))),
            None => {
                self.newest.insert(key, Newest { at: join.at, endpoint });
                Ok(())
            }
            Some(n) if join.at > n.at || (join.at == n.at && endpoint && !n.endpoint) => {
                *n = Newest { at: join.at, endpoint };
                Ok(())
            }
            Some(n) => Err(JoinError::Replayed { name: clip(&join.admitted.name, 64), at: join.at, newest: n.at }),
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
