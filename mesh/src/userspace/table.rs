//! The peer table: peers by public key, by receiver index (the upper 24 bits of the session
//! index boringtun puts in every packet to us) and by allowed IP (cryptokey routing: the
//! longest matching prefix owns a destination, and a decrypted packet's source must route
//! back to the peer that sent it).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use boringtun::noise::Tunn;

use crate::keys::PublicKey;

/// One peer: its protocol state and where it is.
pub struct Peer {
    /// Its identity.
    pub key: PublicKey,
    /// Our 24-bit index for it (receiver index >> 8 in its packets).
    pub index: u32,
    /// Handshake, sessions and timers (sans-IO).
    pub tunn: Mutex<Tunn>,
    /// Current underlay endpoint: configured, then whatever authenticated packets come from.
    pub endpoint: Mutex<Option<SocketAddr>>,
}

impl Peer {
    /// The current endpoint.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Roaming: an authenticated packet came from `from`.
    pub fn seen_at(&self, from: SocketAddr) {
        let mut e = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if *e != Some(from) {
            tracing::debug!(peer = %self.key, from = %from, "peer endpoint roamed");
            *e = Some(from);
        }
    }

    /// Locks the protocol state (a poisoned lock only means another thread panicked
    /// mid-packet; the state itself stays consistent).
    pub fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A peer with its allowed IPs.
pub type Entry = (Arc<Peer>, Vec<(IpAddr, u8)>);

struct Route {
    net: IpAddr,
    len: u8,
    peer: Arc<Peer>,
}

/// All peers of the device.
#[derive(Default)]
pub struct PeerTable {
    by_key: BTreeMap<PublicKey, Entry>,
    by_index: HashMap<u32, Arc<Peer>>,
    routes: Vec<Route>,
}

fn prefix_matches(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl PeerTable {
    /// The peer with this key and its allowed IPs.
    pub fn get(&self, key: &PublicKey) -> Option<&Entry> {
        self.by_key.get(key)
    }

    /// Every peer with its allowed IPs, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Peer>, &[(IpAddr, u8)])> {
        self.by_key.values().map(|(p, a)| (p, a.as_slice()))
    }

    /// An index no peer uses (24 bits, random so restarts do not reuse the previous ones).
    pub fn free_index(&self) -> u32 {
        loop {
            let i = rand::random::<u32>() & 0x00ff_ffff;
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// Adds or replaces a peer; `allowed` become its routes.
    pub fn insert(&mut self, peer: Arc<Peer>, allowed: Vec<(IpAddr, u8)>) {
        self.remove(&peer.key);
        self.by_index.insert(peer.index, peer.clone());
        self.by_key.insert(peer.key, (peer, allowed));
        self.rebuild_routes();
    }

    /// Changes a peer's allowed IPs.
    pub fn set_allowed(&mut self, key: &PublicKey, allowed: Vec<(IpAddr, u8)>) {
        if let Some(e) = self.by_key.get_mut(key) {
            e.1 = allowed;
            self.rebuild_routes();
        }
    }

    /// Removes a peer (its sessions go with it).
    pub fn remove(&mut self, key: &PublicKey) -> Option<Arc<Peer>> {
        let (p, _) = self.by_key.remove(key)?;
        self.by_index.remove(&p.index);
        self.rebuild_routes();
        Some(p)
    }

    fn rebuild_routes(&mut self) {
        self.routes.clear();
        for (p, allowed) in self.by_key.values() {
            for (net, len) in allowed {
                self.routes.push(Route { net: *net, len: *len, peer: p.clone() });
            }
        }
        // Longest prefix first: the first match wins.
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.len));
    }

    /// The peer a packet to `ip` goes to.
    pub fn route(&self, ip: IpAddr) -> Option<&Arc<Peer>> {
        self.routes.iter().find(|r| prefix_matches(r.net, r.len, ip)).map(|r| &r.peer)
    }

    /// The peer whose sessions use our index `receiver_idx >> 8`.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_idx >> 8))
    }

    /// The peer with this key.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(&PublicKey(*key)).map(|(p, _)| p)
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No peers.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::x25519::{PublicKey as XPub, StaticSecret};

    fn peer(table: &PeerTable, seed: u8) -> Arc<Peer> {
        let me = StaticSecret::from([1u8; 32]);
        let them = StaticSecret::from([seed; 32]);
        let index = table.free_index();
        let key = PublicKey(XPub::from(&them).to_bytes());
        let tunn = Tunn::new(me, XPub::from(&them), None, None, index, None);
        Arc::new(Peer { key, index, tunn: Mutex::new(tunn), endpoint: Mutex::new(None) })
    }

    #[test]
    fn routes_by_longest_prefix_and_finds_by_index_and_key() {
        let mut t = PeerTable::default();
        let a = peer(&t, 2);
        t.insert(a.clone(), vec![("fd00:1::".parse().unwrap(), 48)]);
        let b = peer(&t, 3);
        t.insert(b.clone(), vec![("fd00:1::2".parse().unwrap(), 128), ("10.0.0.0".parse().unwrap(), 8)]);
        let key_of = |p: Option<&Arc<Peer>>| p.map(|p| p.key);
        assert_eq!(key_of(t.route("fd00:1::2".parse().unwrap())), Some(b.key));
        assert_eq!(key_of(t.route("fd00:1::3".parse().unwrap())), Some(a.key));
        assert_eq!(key_of(t.route("10.9.8.7".parse().unwrap())), Some(b.key));
        assert_eq!(key_of(t.route("fd00:2::1".parse().unwrap())), None);
        assert_eq!(key_of(t.route("11.0.0.1".parse().unwrap())), None);
        assert_eq!(key_of(t.by_receiver((b.index << 8) | 5)), Some(b.key));
        assert_eq!(key_of(t.by_key(&a.key.0)), Some(a.key));
        // Narrowing b's allowed IPs moves fd00:1::2 back to a; removing a leaves nothing there.
        t.set_allowed(&b.key, vec![("10.0.0.0".parse().unwrap(), 8)]);
        assert_eq!(key_of(t.route("fd00:1::2".parse().unwrap())), Some(a.key));
        assert_eq!(t.remove(&a.key).map(|p| p.key), Some(a.key));
        assert_eq!(key_of(t.route("fd00:1::2".parse().unwrap())), None);
        assert!(t.by_receiver(a.index << 8).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn roaming_follows_the_last_authenticated_source() {
        let t = PeerTable::default();
        let p = peer(&t, 4);
        assert_eq!(p.endpoint(), None);
        p.seen_at("198.18.0.1:1".parse().unwrap());
        p.seen_at("198.18.0.9:2".parse().unwrap());
        assert_eq!(p.endpoint(), Some("198.18.0.9:2".parse().unwrap()));
    }
}
