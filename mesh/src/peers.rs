//! The pure peer-set diff: from what gossip says (certificates, endpoints, liveness) to the
//! WireGuard peers this node should have, and from current vs desired peers to the changes a
//! backend applies. No I/O, no clock: `now` is an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

use crate::address::collisions;
use crate::cert::{CaPublicKey, Certificate, RevocationList};
use crate::error::AdmissionError;
use crate::keys::PublicKey;

/// One node as seen in gossip: what the agent extracts from its `node` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAdvert {
    /// The certificate it publishes.
    pub certificate: Certificate,
    /// Underlay endpoints of its WireGuard; the first is used.
    pub endpoints: Vec<SocketAddr>,
    /// Whether the failure detector considers it alive.
    pub alive: bool,
}

/// A configured seed: trusted by the operator, so it is a peer before any gossip arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its underlay endpoint.
    pub endpoint: SocketAddr,
}

/// One WireGuard peer as this node wants it (or has it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerConfig {
    /// The peer's public key (its identity).
    pub public_key: PublicKey,
    /// Underlay endpoint; `None` lets WireGuard learn it from the peer's handshake.
    pub endpoint: Option<SocketAddr>,
    /// Mesh addresses routed to it (its /128).
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

impl PeerConfig {
    /// A peer carrying exactly one mesh address.
    pub fn host(public_key: PublicKey, address: Ipv6Addr, endpoint: Option<SocketAddr>) -> Self {
        Self { public_key, endpoint, allowed_ips: vec![(IpAddr::V6(address), 128)] }
    }
}

/// What a backend must do to converge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer.
    Add(PeerConfig),
    /// Same key, new endpoint (roaming) or new allowed IPs.
    Update(PeerConfig),
    /// A peer no longer admitted or alive.
    Remove(PublicKey),
}

/// Everything admission needs besides the gossip view.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Our fleet CA.
    pub ca: CaPublicKey,
    /// The newest verified revocation list.
    pub revoked: RevocationList,
    /// This node's key (never its own peer).
    pub self_key: PublicKey,
    /// Configured seeds.
    pub seeds: Vec<Seed>,
}

/// A node refused admission, for logging (once per change, by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The public key claimed by the certificate.
    pub public_key: String,
    /// Why.
    pub reason: AdmissionError,
}

/// The peers this node should have: every alive node with a valid certificate of our fleet,
/// plus seeds not yet seen in gossip (a seed known dead or revoked is dropped like any node).
pub fn desired_peers(adm: &Admission, view: &[PeerAdvert], now: SystemTime) -> (Vec<PeerConfig>, Vec<Refusal>) {
    let (peers, refusals, _) = admit(adm, view, now);
    (peers, refusals)
}

/// [`desired_peers`], with the node name each admitted peer's certificate vouches for
/// (`meshdrain mesh status` names peers; a seed not yet seen in gossip has none). Only
/// names of admitted peers are kept, so the map is bounded like the peer list.
pub fn admit(
    adm: &Admission,
    view: &[PeerAdvert],
    now: SystemTime,
) -> (Vec<PeerConfig>, Vec<Refusal>, BTreeMap<PublicKey, String>) {
    let mut names = BTreeMap::new();
    let prefix = adm.ca.prefix();
    let mut refusals = Vec::new();
    let mut seen = BTreeSet::new();
    let mut admitted: BTreeMap<PublicKey, PeerConfig> = BTreeMap::new();
    for advert in view {
        let cert = &advert.certificate;
        match cert.verify(&adm.ca, &adm.revoked, now) {
            Ok(a) => {
                seen.insert(a.public_key);
                if a.public_key == adm.self_key || !advert.alive {
                    continue;
                }
                admitted
                    .insert(a.public_key, PeerConfig::host(a.public_key, a.address, advert.endpoints.first().copied()));
                names.insert(a.public_key, a.name);
            }
            Err(reason) => refusals.push(Refusal { public_key: cert.body.public_key.clone(), reason }),
        }
    }
    for seed in &adm.seeds {
        let revoked = adm.revoked.is_revoked(&seed.public_key.to_base64());
        if seed.public_key == adm.self_key || seen.contains(&seed.public_key) || revoked {
            continue;
        }
        admitted.insert(
            seed.public_key,
            PeerConfig::host(seed.public_key, prefix.node_address(&seed.public_key), Some(seed.endpoint)),
        );
    }
    // Our own address takes part in collision checks: a peer may never shadow us.
    let mut keys: Vec<PublicKey> = admitted.keys().copied().collect();
    keys.push(adm.self_key);
    for (loser, holder, address) in collisions(&prefix, &keys) {
        if loser == adm.self_key {
            // We lose our own address to a smaller key: refuse that holder instead, since
            // we cannot give our address away.
            admitted.remove(&holder);
            refusals.push(Refusal {
                public_key: holder.to_base64(),
                reason: AdmissionError::AddressCollision {
                    name: holder.to_base64(),
                    address,
                    holder: "this node".into(),
                },
            });
        } else if admitted.remove(&loser).is_some() {
            refusals.push(Refusal {
                public_key: loser.to_base64(),
                reason: AdmissionError::AddressCollision {
                    name: loser.to_base64(),
                    address,
                    holder: holder.to_base64(),
                },
            });
        }
    }
    names.retain(|k, _| admitted.contains_key(k));
    (admitted.into_values().collect(), refusals, names)
}

/// The changes turning `current` into `desired`. An endpoint of `None` in `desired` keeps
/// whatever WireGuard learnt (no update); removes come first so a re-keyed address is free.
pub fn diff(current: &[PeerConfig], desired: &[PeerConfig]) -> Vec<PeerChange> {
    let cur: BTreeMap<PublicKey, &PeerConfig> = current.iter().map(|p| (p.public_key, p)).collect();
    let want: BTreeMap<PublicKey, &PeerConfig> = desired.iter().map(|p| (p.public_key, p)).collect();
    let mut out: Vec<PeerChange> =
        cur.keys().filter(|k| !want.contains_key(k)).map(|k| PeerChange::Remove(*k)).collect();
    for (k, w) in &want {
        match cur.get(k) {
            None => out.push(PeerChange::Add((*w).clone())),
            Some(c) => {
                let mut a = c.allowed_ips.clone();
                let mut b = w.allowed_ips.clone();
                a.sort();
                b.sort();
                let endpoint_changed = w.endpoint.is_some() && w.endpoint != c.endpoint;
                if endpoint_changed || a != b {
                    let mut u = (*w).clone();
                    if u.endpoint.is_none() {
                        u.endpoint = c.endpoint;
                    }
                    out.push(PeerChange::Update(u));
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
