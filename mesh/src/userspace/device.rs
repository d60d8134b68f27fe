//! The device: a TUN, a UDP socket, the peer table and three threads. On 2 cores the two
//! directions each get a thread and never wait for each other except on one peer's `Tunn`
//! lock (held per super-packet on send, per datagram on receive):
//! - tx: TUN read (a 64 KiB GSO super-packet) → segment → encrypt every segment into one
//!   buffer → one `sendmmsg` with UDP GSO;
//! - rx: `recvmmsg` with UDP GRO → decrypt each datagram → coalesce TCP segments → one GSO
//!   write per flow run to the TUN; handshakes answered inline;
//! - timers: `Tunn::update_timers` for every peer every 250 ms (rekey, keepalive, expiry).
//!
//! Locks: the peer table (a `RwLock`, taken briefly per super-packet or datagram) is never
//! taken while a peer's `Tunn` lock is held, so appliers, data path and timers cannot deadlock
//! on a writer-preferring `RwLock`.
//!
//! Buffers are allocated once per thread; nothing allocates per packet in steady state (boringtun
//! itself only copies packets it must queue while a handshake is in flight). Every loop
//! wakes at least every [`POLL`], so dropping the device stops it within ~0.1 s; the TUN goes
//! with the last reference. No signal is touched.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPub, StaticSecret};

use super::gso::{self, Coalescer, Packets, VNET_HDR_LEN, VnetHdr};
use super::table::{Peer, PeerTable};
use super::tun::Tun;
use super::udp::{RxBatch, TxScratch, Udp};
use crate::keys::PublicKey;
use crate::peers::PeerConfig;

/// Longest any loop sleeps before checking for shutdown.
pub const POLL: Duration = Duration::from_millis(100);
/// Timer tick: boringtun's timers have one-second resolution, its device ticks at 250 ms.
const TICK: Duration = Duration::from_millis(250);
/// Messages per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Packets held by the coalescer before it writes.
const MAX_ITEMS: usize = 64;
/// Handshakes per second before peers must answer cookie challenges (boringtun's device
/// value; each handshake is counted twice, by the device and by the peer's `Tunn`).
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// WireGuard data overhead plus AEAD padding.
const WG_OVERHEAD: usize = 32 + 16;

struct Shared {
    tun: Tun,
    udp: Udp,
    peers: RwLock<PeerTable>,
    stop: AtomicBool,
    secret: StaticSecret,
    public: XPub,
    listen_port: u16,
    /// Shared by all peers: mac1 is checked (and cookies sent under load) before the
    /// expensive X25519 of an incoming handshake.
    limiter: Arc<RateLimiter>,
}

impl Shared {
    fn table(&self) -> RwLockReadGuard<'_, PeerTable> {
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running userspace WireGuard device.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Creation failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct StartError {
    /// What failed.
    pub action: &'static str,
    /// Why.
    pub source: io::Error,
}

fn at(action: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError { action, source }
}

impl Device {
    /// Creates the TUN `name` (offloads unless `offload` is false), configures its address and
    /// MTU, binds the UDP port and starts the threads.
    pub fn start(
        name: &str,
        secret: [u8; 32],
        address: std::net::Ipv6Addr,
        prefix_len: u8,
        listen_port: u16,
        mtu: u32,
        offload: bool,
    ) -> Result<Self, StartError> {
        let tun = Tun::open(name, offload).map_err(at("create TUN"))?;
        tun.configure(mtu, address, prefix_len).map_err(at("configure TUN"))?;
        let udp = Udp::bind(listen_port).map_err(at("bind UDP port"))?;
        let secret = StaticSecret::from(secret);
        let public = XPub::from(&secret);
        tracing::info!(
            interface = name,
            vnet = tun.vnet,
            tso = tun.offload,
            udp_gro = udp.gro,
            "userspace WireGuard device up"
        );
        let shared = Arc::new(Shared {
            tun,
            udp,
            peers: RwLock::default(),
            stop: AtomicBool::new(false),
            secret,
            public,
            listen_port,
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        });
        let mut threads = Vec::new();
        for (what, f) in [("tx", tx_loop as fn(&Shared)), ("rx", rx_loop), ("timers", timer_loop)] {
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("wg-{what}"))
                .spawn(move || f(&sh))
                .map_err(at("spawn thread"));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        if let Some((listener, path)) = super::uapi::bind(name) {
            let sh = shared.clone();
            let get = move || super::uapi::render(sh.listen_port, &peer_list(&sh), std::time::SystemTime::now());
            let stop = shared.clone();
            match std::thread::Builder::new()
                .name("wg-uapi".into())
                .spawn(move || super::uapi::serve(listener, path, &stop.stop, &get))
            {
                Ok(t) => threads.push(t),
                Err(e) => tracing::warn!(error = %e, "no UAPI thread: `wg show` will not see this interface"),
            }
        }
        Ok(Self { shared, threads })
    }

    fn table_mut(&self) -> RwLockWriteGuard<'_, PeerTable> {
        self.shared.peers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a peer, or updates its endpoint (if given) and allowed IPs keeping its sessions.
    pub fn upsert(&self, p: &PeerConfig) {
        let mut t = self.table_mut();
        if let Some((peer, _)) = t.get(&p.public_key) {
            if let Some(e) = p.endpoint {
                *peer.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
            t.set_allowed(&p.public_key, p.allowed_ips.clone());
            return;
        }
        let index = t.free_index();
        let limiter = Some(self.shared.limiter.clone());
        let tunn = Tunn::new(self.shared.secret.clone(), XPub::from(p.public_key.0), None, None, index, limiter);
        let peer = Peer { key: p.public_key, index, tunn: Mutex::new(tunn), endpoint: Mutex::new(p.endpoint) };
        t.insert(Arc::new(peer), p.allowed_ips.clone());
    }

    /// Removes a peer; `false` if it was not there.
    pub fn remove(&self, key: &PublicKey) -> bool {
        self.table_mut().remove(key).is_some()
    }

    /// Every peer: configuration, time since its last handshake, tx and rx bytes.
    pub fn peers(&self) -> Vec<(PeerConfig, Option<Duration>, u64, u64)> {
        peer_list(&self.shared)
    }

    /// Whether the TUN runs with GSO offloads (else plain packets).
    pub fn offload(&self) -> bool {
        self.shared.tun.offload
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(interface = self.shared.tun.name(), "userspace WireGuard device stopped");
    }
}

fn peer_list(sh: &Shared) -> Vec<(PeerConfig, Option<Duration>, u64, u64)> {
    let snapshot: Vec<super::table::Entry> = sh.table().iter().map(|(p, a)| (p.clone(), a.to_vec())).collect();
    snapshot
        .into_iter()
        .map(|(p, allowed)| {
            let (hs, tx, rx, _, _) = p.tunn().stats();
            let c = PeerConfig { public_key: p.key, endpoint: p.endpoint(), allowed_ips: allowed };
            (c, hs, tx as u64, rx as u64)
        })
        .collect()
}

/// Logs an I/O failure of a data-path loop at most once per kind of failure and thread.
struct Once(bool);

impl Once {
    fn warn(&mut self, what: &str, e: &io::Error) {
        if !self.0 {
            self.0 = true;
            tracing::warn!(error = %e, "{what} (further failures of this kind are not logged)");
        }
    }
}

fn tx_loop(sh: &Shared) {
    let off = if sh.tun.vnet { VNET_HDR_LEN } else { 0 };
    let mut buf = vec![0u8; off + gso::MAX_SUPER];
    let mut segs = Packets::default();
    let mut out: Vec<u8> = Vec::new();
    let mut lens: Vec<usize> = Vec::with_capacity(256);
    let mut tx = TxScratch::default();
    let (mut read_err, mut send_err) = (Once(false), Once(false));
    while !sh.stop.load(Ordering::Relaxed) {
        let n = match sh.tun.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = sh.tun.wait_readable(POLL);
                continue;
            }
            Err(e) => {
                read_err.warn("TUN read failed", &e);
                std::thread::sleep(POLL);
                continue;
            }
        };
        if n <= off {
            continue;
        }
        let hdr = if off > 0 { VnetHdr::parse(&buf).unwrap_or_default() } else { VnetHdr::default() };
        let pkt = &mut buf[off..n];
        if let Err(e) = gso::prepare(&hdr, pkt, &mut segs) {
            tracing::debug!(error = %e, "dropping packet from TUN");
            continue;
        }
        let pkt = &buf[off..n];
        let count = segs.len().max(1);
        let seg = |i: usize| if segs.is_empty() { pkt } else { segs.get(i) };
        let Some(dst) = Tunn::dst_address(seg(0)) else { continue };
        let Some(peer) = sh.table().route(dst).cloned() else { continue };
        let Some(endpoint) = peer.endpoint() else { continue };
        let longest = (0..count).map(|i| seg(i).len()).max().unwrap_or(0);
        let need = count * (longest + WG_OVERHEAD) + 148;
        if out.len() < need {
            out.resize(need, 0);
        }
        lens.clear();
        let mut pos = 0;
        {
            let mut tunn = peer.tunn();
            for i in 0..count {
                match tunn.encapsulate(seg(i), &mut out[pos..]) {
                    TunnResult::WriteToNetwork(p) if p.first() == Some(&4) => {
                        lens.push(p.len());
                        pos += p.len();
                    }
                    // A handshake initiation: the packet is queued until the session exists.
                    TunnResult::WriteToNetwork(p) => {
                        if let Err(e) = sh.udp.send_to(p, endpoint) {
                            send_err.warn("UDP send failed", &e);
                        }
                    }
                    TunnResult::Err(e) => tracing::debug!(error = ?e, "encapsulate"),
                    _ => {}
                }
            }
        }
        if !lens.is_empty()
            && let Err(e) = sh.udp.send_batch(&out[..pos], &lens, endpoint, &mut tx)
        {
            send_err.warn("UDP send failed", &e);
        }
    }
}

fn rx_loop(sh: &Shared) {
    let mut rx = RxBatch::new(RX_BATCH);
    let mut scratch = vec![0u8; super::udp::RX_BUF + 256];
    let mut co = Coalescer::new(sh.tun.vnet, MAX_ITEMS);
    let (mut recv_err, mut write_err) = (Once(false), Once(false));
    let mut write = |b: &[u8]| {
        if let Err(e) = sh.tun.write(b) {
            write_err.warn("TUN write failed", &e);
        }
    };
    while !sh.stop.load(Ordering::Relaxed) {
        let n = match sh.udp.recv_batch(&mut rx) {
            Ok(0) => {
                let _ = sh.udp.wait_readable(POLL);
                continue;
            }
            Ok(n) => n,
            Err(e) => {
                recv_err.warn("UDP receive failed", &e);
                std::thread::sleep(POLL);
                continue;
            }
        };
        for i in 0..n {
            let (data, from, seg) = rx.message(i);
            for d in data.chunks(seg) {
                receive(sh, d, from, &mut scratch, &mut co, &mut write);
            }
        }
        co.flush(&mut write);
    }
}

/// One datagram from the underlay.
fn receive(
    sh: &Shared,
    d: &[u8],
    from: SocketAddr,
    scratch: &mut [u8],
    co: &mut Coalescer,
    write: &mut dyn FnMut(&[u8]),
) {
    let peer = {
        let t = sh.table();
        match Tunn::parse_incoming_packet(d) {
            Ok(Packet::HandshakeInit(h)) => parse_handshake_anon(&sh.secret, &sh.public, &h)
                .ok()
                .and_then(|half| t.by_key(&half.peer_static_public).cloned()),
            Ok(Packet::HandshakeResponse(p)) => t.by_receiver(p.receiver_idx).cloned(),
            Ok(Packet::PacketCookieReply(p)) => t.by_receiver(p.receiver_idx).cloned(),
            Ok(Packet::PacketData(p)) => t.by_receiver(p.receiver_idx).cloned(),
            Err(_) => None,
        }
    };
    let Some(peer) = peer else { return };
    let mut tunn = peer.tunn();
    match tunn.decapsulate(Some(from.ip()), d, scratch) {
        TunnResult::WriteToNetwork(p) => {
            // A handshake response or the keepalive confirming one: authenticated. A cookie
            // reply (type 3, we are under load) is not.
            if p.first() != Some(&3) {
                peer.seen_at(from);
            }
            let _ = sh.udp.send_to(p, from);
            // Packets queued during the handshake go out now.
            for _ in 0..1024 {
                match tunn.decapsulate(None, &[], scratch) {
                    TunnResult::WriteToNetwork(p) => {
                        let _ = sh.udp.send_to(p, from);
                    }
                    _ => break,
                }
            }
        }
        // The plaintext lives in `scratch`, not in the `Tunn`: release the peer before the
        // table lock and the TUN write (lock order: table, then a peer; never the reverse).
        TunnResult::WriteToTunnelV4(p, src) => {
            drop(tunn);
            deliver(sh, &peer, IpAddr::V4(src), p, from, co, write)
        }
        TunnResult::WriteToTunnelV6(p, src) => {
            drop(tunn);
            deliver(sh, &peer, IpAddr::V6(src), p, from, co, write)
        }
        TunnResult::Done => {
            if d.first() == Some(&4) || d.first() == Some(&2) {
                peer.seen_at(from); // keepalive or handshake response
            }
        }
        TunnResult::Err(e) => tracing::debug!(error = ?e, from = %from, "decapsulate"),
    }
}

/// Cryptokey routing on receive: the inner source must be one of the sender's allowed IPs.
fn deliver(
    sh: &Shared,
    peer: &Arc<Peer>,
    src: IpAddr,
    p: &[u8],
    from: SocketAddr,
    co: &mut Coalescer,
    write: &mut dyn FnMut(&[u8]),
) {
    let allowed = sh.table().route(src).is_some_and(|r| Arc::ptr_eq(r, peer));
    if !allowed {
        tracing::debug!(peer = %peer.key, src = %src, "dropping packet from a source the peer may not use");
        return;
    }
    peer.seen_at(from);
    co.push(p, write);
}

fn timer_loop(sh: &Shared) {
    let mut buf = vec![0u8; 256];
    let mut peers: Vec<Arc<Peer>> = Vec::new();
    let mut since = Duration::ZERO;
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        since += Duration::from_millis(50);
        if since < TICK {
            continue;
        }
        since = Duration::ZERO;
        sh.limiter.reset_count();
        peers.clear();
        peers.extend(sh.table().iter().map(|(p, _)| p.clone()));
        for p in &peers {
            let endpoint = p.endpoint();
            let mut tunn = p.tunn();
            match tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(pkt) => {
                    if let Some(e) = endpoint {
                        let _ = sh.udp.send_to(pkt, e);
                    }
                }
                TunnResult::Err(e) => tracing::trace!(peer = %p.key, error = ?e, "timers"),
                _ => {}
            }
        }
    }
}
