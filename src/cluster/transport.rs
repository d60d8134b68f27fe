//! The gossip transport: chitchat's `Transport` over UDP with a gate in front of chitchat.
//! Every datagram is checked here before chitchat decodes it: its HMAC tag when the fleet
//! has a secret (src/cluster/auth.rs), then the size it would decompress to
//! (src/cluster/wire.rs). Refused datagrams are counted ([`GossipStats`], shown by
//! `meshdrain status`) and logged at most once per [`LOG_EVERY`].
//!
//! chitchat 0.13.0 keeps the envelope codec crate-private (`ChitchatEnvelope::serialize`
//! and `deserialize` are `pub(crate)`, and so is `Digest`'s; only `Delta` implements the
//! public `Serializable`/`Deserializable`), and its one public bytes-to-envelope path is its
//! own `UdpSocket`. So each guarded socket keeps a codec relay on 127.0.0.1: an encoder
//! (chitchat's socket) serializes an envelope to our encoder tap, which hands the bytes to
//! the real socket; admitted bytes go from our decoder tap to the decoder (chitchat's
//! socket), which parses them. Every relay socket is pinned to its one peer with connect(2)
//! ([`pin`]) and drained of what arrived before, so the kernel refuses datagrams from any
//! other local process: only bytes that passed the gate reach chitchat's parser.
//! docs/upstream/chitchat-decompression.md asks upstream for the public codec that would
//! remove the relay.

mod pin;

use std::collections::VecDeque;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::auth::{FRAME_OVERHEAD, GossipKeys, PART_OVERHEAD, Part, Verdict};
use super::wire::{self, MAX_DECOMPRESSED_BYTES, WireError};

/// Refused datagrams are summarized in the log at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long encoding waits for the relay on loopback: delivery there is immediate, but a
/// starved process (a loaded or emulated machine) took over 50 ms, and a message not
/// encoded is a message not sent.
const ENCODE_WAIT: Duration = Duration::from_secs(1);
/// How long decoding waits: a parse failure inside chitchat shows only as no answer, so
/// this is also what one malformed (but authenticated) message costs the receive loop.
const DECODE_WAIT: Duration = Duration::from_millis(250);
/// Split messages being reassembled at once (authenticated parts only), and their age limit.
const MAX_PARTIALS: usize = 8;
const PARTIAL_TTL: Duration = Duration::from_secs(2);
/// The largest UDP payload over IPv4 and IPv6.
const MAX_UDP_V4: usize = 65_507;
const MAX_UDP_V6: usize = 65_527;

/// Counters of the gossip gate, shared by the transport and `status`.
#[derive(Debug, Default)]
pub struct GossipStats {
    accepted: AtomicU64,
    accepted_previous_key: AtomicU64,
    dropped_unauthenticated: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_local: AtomicU64,
    send_failed: AtomicU64,
    split_sent: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// A copy of [`GossipStats`] for `status --json` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCounters {
    /// Datagrams handed to chitchat.
    pub accepted: u64,
    /// Of those, tagged with `secret_file_previous` (nodes not yet rotated).
    pub accepted_previous_key: u64,
    /// Dropped: no tag, or a tag no key of ours made (outsiders, other fleets).
    pub dropped_unauthenticated: u64,
    /// Dropped: would decompress past the cap (src/cluster/wire.rs).
    pub dropped_oversize: u64,
    /// Dropped: authenticated but not a message chitchat accepts.
    pub dropped_malformed: u64,
    /// Dropped: a local process wrote to the codec relay's loopback sockets before they were
    /// pinned to their peers (after that the kernel refuses such datagrams).
    pub dropped_local: u64,
    /// Messages that could not be sent (codec relay failure).
    pub send_failed: u64,
    /// Messages sent in two datagrams (too long for one once tagged).
    pub split_sent: u64,
}

impl GossipStats {
    /// The current counts.
    pub fn counters(&self) -> GossipCounters {
        GossipCounters {
            accepted: self.accepted.load(Relaxed),
            accepted_previous_key: self.accepted_previous_key.load(Relaxed),
            dropped_unauthenticated: self.dropped_unauthenticated.load(Relaxed),
            dropped_oversize: self.dropped_oversize.load(Relaxed),
            dropped_malformed: self.dropped_malformed.load(Relaxed),
            dropped_local: self.dropped_local.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
            split_sent: self.split_sent.load(Relaxed),
        }
    }

    /// Counts one refusal and logs a summary if none was logged for [`LOG_EVERY`].
    fn refuse(&self, counter: &AtomicU64, from: SocketAddr, why: &dyn std::fmt::Display) {
        counter.fetch_add(1, Relaxed);
        self.log(from, why);
    }

    /// Logs a summary of the counts if none was logged for [`LOG_EVERY`].
    fn log(&self, from: SocketAddr, why: &dyn std::fmt::Display) {
        let mut last = self.last_log.lock().expect("gossip log lock");
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let c = self.counters();
        warn!(
            %from,
            unauthenticated = c.dropped_unauthenticated,
            oversize = c.dropped_oversize,
            malformed = c.dropped_malformed,
            local = c.dropped_local,
            "gossip datagrams dropped before chitchat (totals so far; next summary in {}s at the earliest): latest: {why}",
            LOG_EVERY.as_secs()
        );
    }
}

/// chitchat's transport with the gate: HMAC check when `keys` is set, decompression cap always.
pub struct GuardedTransport {
    keys: Option<Arc<GossipKeys>>,
    stats: Arc<GossipStats>,
    cap: u64,
}

impl GuardedTransport {
    /// A transport signing and checking with `keys` (none: plain chitchat datagrams, for
    /// loopback, `insecure = true`, or the mesh, which authenticates peers itself).
    pub fn new(keys: Option<GossipKeys>, stats: Arc<GossipStats>) -> Self {
        Self { keys: keys.map(Arc::new), stats, cap: MAX_DECOMPRESSED_BYTES }
    }

    /// The same with another decompression cap (tests).
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    async fn open_socket(&self, listen: SocketAddr) -> anyhow::Result<GuardedSocket> {
        let net = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("failed to bind to {listen}/UDP for gossip"))?;
        let local = net.local_addr()?;
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let encoder = CodecSocket::open(lo).await?;
        let decoder = CodecSocket::open(lo).await?;
        let bind_tap =
            || async { tokio::net::UdpSocket::bind(lo).await.context("binding the gossip codec relay on 127.0.0.1") };
        let (encoder_tap, decoder_tap) = (bind_tap().await?, bind_tap().await?);
        let (encoder_addr, decoder_addr) = (encoder.local_addr()?, decoder.local_addr()?);
        let (encoder_tap_addr, decoder_tap_addr) = (encoder_tap.local_addr()?, decoder_tap.local_addr()?);
        let mut stale = 0;
        for (a, b) in [(encoder_addr, encoder_tap_addr), (decoder_addr, decoder_tap_addr)] {
            stale += pin::pin_to_peer(a, b)? + pin::pin_to_peer(b, a)?;
        }
        if stale > 0 {
            self.stats.dropped_local.fetch_add(stale as u64, Relaxed);
            self.stats.log(lo, &format_args!("{stale} datagrams written to the codec relay before it was pinned"));
        }
        Ok(GuardedSocket {
            local,
            encoder_tap_addr,
            decoder_tap_addr,
            net,
            encoder,
            decoder,
            encoder_tap,
            decoder_tap,
            keys: self.keys.clone(),
            stats: self.stats.clone(),
            cap: self.cap,
            pending: None,
            net_buf: vec![0; 65_536],
            tap_buf: vec![0; 65_536],
            frame: Vec::new(),
            partials: VecDeque::new(),
            next_id: rand::random(),
        })
    }
}

impl Transport for GuardedTransport {
    fn open<'a, 'b>(
        &'a self,
        listen: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Box<dyn Socket>>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(Box::new(self.open_socket(listen).await?) as Box<dyn Socket>) })
    }
}

struct Partial {
    from: SocketAddr,
    id: u32,
    parts: Vec<Option<Vec<u8>>>,
    at: Instant,
}

struct GuardedSocket {
    local: SocketAddr,
    net: tokio::net::UdpSocket,
    /// chitchat's socket serializing envelopes, pinned to `encoder_tap`.
    encoder: CodecSocket,
    /// chitchat's socket parsing admitted bytes, pinned to `decoder_tap`.
    decoder: CodecSocket,
    /// Ours: hears the encoder only.
    encoder_tap: tokio::net::UdpSocket,
    /// Ours: writes to the decoder only.
    decoder_tap: tokio::net::UdpSocket,
    encoder_tap_addr: SocketAddr,
    decoder_tap_addr: SocketAddr,
    keys: Option<Arc<GossipKeys>>,
    stats: Arc<GossipStats>,
    cap: u64,
    /// A datagram handed to the decoder and not yet read back: its sender and size.
    pending: Option<(SocketAddr, usize)>,
    net_buf: Vec<u8>,
    tap_buf: Vec<u8>,
    frame: Vec<u8>,
    partials: VecDeque<Partial>,
    next_id: u32,
}

impl GuardedSocket {
    /// Serializes `envelope` through the encoder; the bytes land in `tap_buf[..n]`.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Option<usize>> {
        self.encoder.send(self.encoder_tap_addr, envelope).await?;
        match tokio::time::timeout(ENCODE_WAIT, self.encoder_tap.recv(&mut self.tap_buf)).await {
            Ok(Ok(n)) => Ok(Some(n)),
            Ok(Err(e)) => Err(e).context("gossip codec relay"),
            Err(_) => Ok(None),
        }
    }

    async fn send_bytes(&mut self, to: SocketAddr) -> anyhow::Result<usize> {
        self.net.send_to(&self.frame, to).await.context("failed to send chitchat message to peer")
    }

    async fn send_inner(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let Some(n) = self.encode(envelope).await? else {
            self.stats.send_failed.fetch_add(1, Relaxed);
            warn!(%to, "gossip codec relay gave no bytes; message not sent");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let Some(keys) = self.keys.clone() else {
            self.frame.clear();
            self.frame.extend_from_slice(&self.tap_buf[..n]);
            return Ok(SendOutcome { num_bytes_sent: self.send_bytes(to).await? });
        };
        let max = if to.is_ipv4() { MAX_UDP_V4 } else { MAX_UDP_V6 };
        if n + FRAME_OVERHEAD <= max {
            keys.seal_into(None, &self.tap_buf[..n], &mut self.frame);
            return Ok(SendOutcome { num_bytes_sent: self.send_bytes(to).await? });
        }
        // chitchat fills datagrams to the IPv4 limit; the tag pushes the longest over it.
        self.next_id = self.next_id.wrapping_add(1);
        self.stats.split_sent.fetch_add(1, Relaxed);
        let half = n.div_ceil(2);
        let mut sent = 0;
        for (index, range) in [(0u8, 0..half), (1, half..n)] {
            debug_assert!(range.len() + PART_OVERHEAD <= max);
            let part = Part { id: self.next_id, index, count: 2 };
            keys.seal_into(Some(part), &self.tap_buf[range], &mut self.frame);
            sent += self.send_bytes(to).await?;
        }
        Ok(SendOutcome { num_bytes_sent: sent })
    }

    /// Checks the datagram in `net_buf[..n]`; the chitchat bytes to decode go to `frame`.
    fn admit(&mut self, n: usize, from: SocketAddr) -> bool {
        let stats = self.stats.clone();
        self.frame.clear();
        match &self.keys {
            None => self.frame.extend_from_slice(&self.net_buf[..n]),
            Some(keys) => match keys.open(&self.net_buf[..n]) {
                (Verdict::NoTag, ..) => {
                    stats.refuse(&stats.dropped_unauthenticated, from, &"no gossip tag (sender lacks the secret?)");
                    return false;
                }
                (Verdict::BadTag, ..) => {
                    stats.refuse(&stats.dropped_unauthenticated, from, &"gossip tag made with another secret");
                    return false;
                }
                (verdict, part, payload) => {
                    if verdict == Verdict::Previous {
                        stats.accepted_previous_key.fetch_add(1, Relaxed);
                    }
                    match part {
                        None => self.frame.extend_from_slice(payload),
                        Some(part) => {
                            let payload = payload.to_vec();
                            match self.reassemble(from, part, payload) {
                                Some(whole) => self.frame = whole,
                                None => return false,
                            }
                        }
                    }
                }
            },
        }
        match wire::decompressed_bound(&self.frame, self.cap) {
            Ok(_) => true,
            Err(e @ WireError::TooLarge { .. }) => {
                stats.refuse(&stats.dropped_oversize, from, &e);
                false
            }
            Err(e @ WireError::Malformed(_)) => {
                stats.refuse(&stats.dropped_malformed, from, &e);
                false
            }
        }
    }

    /// Keeps an authenticated part; returns the message once every part is in.
    fn reassemble(&mut self, from: SocketAddr, part: Part, payload: Vec<u8>) -> Option<Vec<u8>> {
        if part.count != 2 || part.index >= part.count {
            self.stats.refuse(&self.stats.dropped_malformed, from, &"bad part header");
            return None;
        }
        self.partials.retain(|p| p.at.elapsed() < PARTIAL_TTL);
        let pos = match self.partials.iter().position(|p| p.from == from && p.id == part.id) {
            Some(pos) => pos,
            None => {
                if self.partials.len() >= MAX_PARTIALS {
                    self.partials.pop_front();
                }
                let parts = vec![None; usize::from(part.count)];
                self.partials.push_back(Partial { from, id: part.id, parts, at: Instant::now() });
                self.partials.len() - 1
            }
        };
        self.partials[pos].parts[usize::from(part.index)] = Some(payload);
        if self.partials[pos].parts.iter().any(Option::is_none) {
            return None;
        }
        let done = self.partials.remove(pos)?;
        Some(done.parts.into_iter().flatten().flatten().collect())
    }

    async fn recv_inner(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, len)) = self.pending {
                match tokio::time::timeout(DECODE_WAIT, self.decoder.recv()).await {
                    Ok(Ok(out)) if out.from_addr == self.decoder_tap_addr => {
                        self.pending = None;
                        self.stats.accepted.fetch_add(1, Relaxed);
                        return Ok(RecvOutcome { from_addr: from, envelope: out.envelope, num_bytes_received: len });
                    }
                    Ok(Ok(out)) => {
                        self.stats.refuse(&self.stats.dropped_local, out.from_addr, &"write to the codec relay");
                        continue;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        self.pending = None;
                        self.stats.refuse(&self.stats.dropped_malformed, from, &"chitchat could not parse it");
                        continue;
                    }
                }
            }
            let (n, from) = match self.net.recv_from(&mut self.net_buf).await {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            if !self.admit(n, from) {
                continue;
            }
            self.decoder_tap.send(&self.frame).await.context("gossip codec relay")?;
            self.pending = Some((from, n));
        }
    }
}

impl Socket for GuardedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local)
    }

    fn send<'a, 'b>(
        &'a mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<SendOutcome>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send_inner(to, envelope))
    }

    fn recv<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = anyhow::Result<RecvOutcome>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.recv_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::auth::Secret;
    use crate::cluster::wire::tests::zstd_bomb;
    use chitchat::ChitchatMessage;

    /// A whole chitchat message: BadCluster (magic, version 1, type 3).
    const BAD_CLUSTER: [u8; 4] = [0x53, 0xb0, 1, 3];

    fn keys() -> GossipKeys {
        GossipKeys::new(Secret::from_bytes(&[9; 32]), None, "fleet")
    }

    #[tokio::test]
    async fn only_tagged_datagrams_under_the_cap_reach_chitchat() {
        let stats = Arc::new(GossipStats::default());
        let transport = GuardedTransport::new(Some(keys()), stats.clone());
        let mut socket = transport.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let to = socket.local_addr().unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let send = |bytes: Vec<u8>| {
            let peer = &peer;
            async move { peer.send_to(&bytes, to).await.unwrap() }
        };
        let sealed = |payload: &[u8]| {
            let mut out = Vec::new();
            keys().seal_into(None, payload, &mut out);
            out
        };
        let (bomb, blocks) = zstd_bomb(65_507 - FRAME_OVERHEAD);
        // Untagged, wrongly tagged, a tagged bomb, then one good message.
        send(BAD_CLUSTER.to_vec()).await;
        let mut forged = Vec::new();
        GossipKeys::new(Secret::from_bytes(&[8; 32]), None, "fleet").seal_into(None, &BAD_CLUSTER, &mut forged);
        send(forged).await;
        send(sealed(&bomb)).await;
        send(sealed(b"\x53\xb0\x01\x09")).await;
        send(sealed(&BAD_CLUSTER)).await;
        let got = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await.unwrap().unwrap();
        assert_eq!(got.from_addr, peer.local_addr().unwrap());
        assert_eq!(got.envelope.message, ChitchatMessage::BadCluster);
        let c = stats.counters();
        assert_eq!(
            (c.dropped_unauthenticated, c.dropped_oversize, c.dropped_malformed, c.accepted),
            (2, 1, 1, 1),
            "{c:?}"
        );
        // What the bomb would have inflated to in chitchat, for the record.
        eprintln!("refused a {}-byte datagram declaring {} MiB", bomb.len(), (blocks * 65_535) >> 20);
    }

    #[tokio::test]
    async fn envelopes_round_trip_between_guarded_sockets_and_long_ones_are_split() {
        let stats = Arc::new(GossipStats::default());
        let transport = GuardedTransport::new(Some(keys()), stats.clone());
        let mut a = transport.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut b = transport.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b_addr = b.local_addr().unwrap();
        let envelope =
            || ChitchatEnvelope { version: chitchat::ProtocolVersion::V1, message: ChitchatMessage::BadCluster };
        a.send(b_addr, envelope()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await.unwrap().unwrap();
        assert_eq!((got.from_addr, got.envelope), (a.local_addr().unwrap(), envelope()));
        // A near-limit message, reassembled from its two authenticated parts.
        let mut s = transport.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let s_addr = s.local_addr().unwrap();
        let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // chitchat ignores what follows a BadCluster: a long one parses once both parts are in.
        let mut long = BAD_CLUSTER.to_vec();
        long.resize(65_507, 0);
        let half = long.len().div_ceil(2);
        for (index, range) in [(0u8, 0..half), (1, half..long.len())] {
            let mut frame = Vec::new();
            keys().seal_into(Some(Part { id: 5, index, count: 2 }), &long[range], &mut frame);
            assert!(frame.len() <= MAX_UDP_V4);
            raw.send_to(&frame, s_addr).await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), s.recv()).await.unwrap().unwrap();
        assert_eq!((got.from_addr, got.envelope), (raw.local_addr().unwrap(), envelope()));
        assert_eq!(stats.counters().accepted, 2, "{:?}", stats.counters());
    }

    #[tokio::test]
    async fn local_processes_cannot_write_past_the_gate_to_the_codec_relay() {
        let stats = Arc::new(GossipStats::default());
        let transport = GuardedTransport::new(Some(keys()), stats.clone());
        let mut socket = transport.open_socket("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let relay = [
            socket.encoder.local_addr().unwrap(),
            socket.decoder.local_addr().unwrap(),
            socket.encoder_tap_addr,
            socket.decoder_tap_addr,
        ];
        let (bomb, _) = zstd_bomb(60_000);
        // A local process writing to any relay socket is refused by the kernel: no socket
        // of ours takes the datagram, so chitchat's parser never sees it.
        for addr in relay {
            let rogue = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            rogue.connect(addr).await.unwrap();
            rogue.send(&BAD_CLUSTER).await.unwrap();
            let refused = tokio::time::timeout(Duration::from_secs(5), rogue.recv(&mut [0; 8])).await.unwrap();
            assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused, "relay socket {addr}");
            rogue.send(&bomb).await.unwrap();
        }
        // Unauthenticated datagrams to the gossip port itself are dropped by the gate.
        let rogue = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        rogue.send_to(&BAD_CLUSTER, socket.local).await.unwrap();
        rogue.send_to(&bomb, socket.local).await.unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sealed = Vec::new();
        keys().seal_into(None, &BAD_CLUSTER, &mut sealed);
        peer.send_to(&sealed, socket.local).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await.unwrap().unwrap();
        assert_eq!((got.from_addr, got.envelope.message), (peer.local_addr().unwrap(), ChitchatMessage::BadCluster));
        // Sending still works: the encoder tap heard nothing but the encoder.
        let envelope =
            ChitchatEnvelope { version: chitchat::ProtocolVersion::V1, message: ChitchatMessage::BadCluster };
        socket.send(peer.local_addr().unwrap(), envelope).await.unwrap();
        let mut buf = vec![0; 65_536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((from, keys().open(&buf[..n])), (socket.local, (Verdict::Current, None, &BAD_CLUSTER[..])));
        let c = stats.counters();
        assert_eq!(
            (c.dropped_local, c.dropped_unauthenticated, c.accepted, c.send_failed, c.dropped_malformed),
            (0, 2, 1, 0, 0),
            "{c:?}"
        );
    }
}
