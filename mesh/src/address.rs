//! Mesh addresses without allocation: the fleet's ULA /48 comes from the fleet CA's public
//! key and the node's /128 from a hash of its WireGuard public key, so every node can compute
//! every other node's address from gossip alone.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use sha2::{Digest, Sha256};

use crate::keys::PublicKey;

/// Prefix length of the fleet's mesh network.
pub const FLEET_PREFIX_LEN: u8 = 48;

/// The fleet's ULA /48 (`fdXX:XXXX:XXXX::/48`), derived from the CA public key so that two
/// fleets never share a prefix by accident and nobody hands prefixes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FleetPrefix(pub [u8; 6]);

impl FleetPrefix {
    /// Derives the prefix: `fd` + the first 40 bits of SHA-256("meshdrain fleet" ‖ CA key).
    pub fn from_ca_key(ca_public: &[u8; 32]) -> Self {
        let h = Sha256::new().chain_update(b"meshdrain fleet v1\0").chain_update(ca_public).finalize();
        let mut p = [0u8; 6];
        p[0] = 0xfd;
        p[1..].copy_from_slice(&h[..5]);
        Self(p)
    }

    /// The network address (`fdXX:XXXX:XXXX::`).
    pub fn network(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.0);
        Ipv6Addr::from(o)
    }

    /// Whether `addr` lies inside this /48.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        addr.octets()[..6] == self.0
    }

    /// A node's mesh address: prefix, subnet 0, and the first 64 bits of
    /// SHA-256("meshdrain node" ‖ public key) as interface id.
    pub fn node_address(&self, node: &PublicKey) -> Ipv6Addr {
        let h = Sha256::new().chain_update(b"meshdrain node v1\0").chain_update(node.0).finalize();
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&self.0);
        o[8..].copy_from_slice(&h[..8]);
        Ipv6Addr::from(o)
    }
}

impl std::fmt::Display for FleetPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), FLEET_PREFIX_LEN)
    }
}

/// Finds keys whose addresses collide. The holder of an address is the smallest key (a rule
/// every node applies identically, so all agree); every other key with that address is
/// returned with the holder, to be refused.
pub fn collisions(prefix: &FleetPrefix, keys: &[PublicKey]) -> Vec<(PublicKey, PublicKey, Ipv6Addr)> {
    collisions_by(keys, |k| prefix.node_address(k))
}

fn collisions_by(
    keys: &[PublicKey],
    addr_of: impl Fn(&PublicKey) -> Ipv6Addr,
) -> Vec<(PublicKey, PublicKey, Ipv6Addr)> {
    let mut by_addr: BTreeMap<Ipv6Addr, Vec<PublicKey>> = BTreeMap::new();
    for k in keys {
        by_addr.entry(addr_of(k)).or_default().push(*k);
    }
    let mut out = Vec::new();
    for (addr, mut ks) in by_addr {
        ks.sort();
        ks.dedup();
        if let Some((holder, rest)) = ks.split_first() {
            out.extend(rest.iter().map(|k| (*k, *holder, addr)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_inside_fd00_8() {
        let ca = [7u8; 32];
        let p = FleetPrefix::from_ca_key(&ca);
        assert_eq!(p, FleetPrefix::from_ca_key(&ca));
        assert_eq!(p.0[0], 0xfd);
        let k = PublicKey([1u8; 32]);
        let a = p.node_address(&k);
        assert_eq!(a, p.node_address(&k));
        assert_eq!(a.octets()[0], 0xfd);
        assert!(p.contains(a));
        assert_eq!(&a.octets()[6..8], &[0, 0]);
        assert_ne!(a, p.node_address(&PublicKey([2u8; 32])));
    }

    #[test]
    fn prefix_is_per_fleet() {
        let a = FleetPrefix::from_ca_key(&[1u8; 32]);
        let b = FleetPrefix::from_ca_key(&[2u8; 32]);
        assert_ne!(a, b);
        let k = PublicKey([9u8; 32]);
        assert!(!b.contains(a.node_address(&k)));
        assert!(a.to_string().ends_with("::/48"));
    }

    #[test]
    fn collision_refuses_all_but_smallest_key() {
        let p = FleetPrefix::from_ca_key(&[1u8; 32]);
        let k1 = PublicKey([1u8; 32]);
        let k2 = PublicKey([2u8; 32]);
        assert!(collisions(&p, &[k1, k2, k1]).is_empty());
        // A real 64-bit collision needs ~2^32 work; force one with a constant address.
        let a = p.node_address(&k1);
        let k3 = PublicKey([3u8; 32]);
        let dup = collisions_by(&[k3, k2, k1], |_| a);
        assert_eq!(dup, vec![(k2, k1, a), (k3, k1, a)]);
    }
}
