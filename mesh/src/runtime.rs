//! The running mesh of one node: the backend, the join socket, the revocation list and the
//! bookkeeping around the pure [`desired_peers`](crate::peers::desired_peers) / [`diff`]. The agent calls
//! [`MeshRuntime::converge`] once per tick with what gossip says; everything here is
//! synchronous and bounded (non-blocking socket reads, at most [`MAX_JOINS_PER_TICK`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{BackendChoice, BackendKind, InterfaceSpec, MeshStatus, WireguardBackend, select_backend};
use crate::cert::{CaPublicKey, Certificate, RevocationList};
use crate::error::{AdmissionError, BackendError};
use crate::files::{load_json, save_json};
use crate::join::{JOIN_PORT_OFFSET, JoinReplayGuard, JoinRequest, MAX_JOIN_DATAGRAM};
use crate::keys::{NodeKey, PublicKey};
use crate::peers::{Admission, PeerAdvert, Seed, admit, diff};
use crate::refusals::{RefusalKind, RefusalTotals, Refusals, RefusedPeer};

/// A joiner stays a peer this long after its last join datagram (gossip normally takes over
/// within a few rounds).
pub const JOIN_TTL: Duration = Duration::from_secs(30);
/// How often a node re-sends joins to seeds it does not see alive in gossip.
pub const JOIN_RESEND: Duration = Duration::from_secs(2);
/// Bound on datagrams read from the join socket per tick.
pub const MAX_JOINS_PER_TICK: usize = 64;

/// Everything the runtime needs, loaded and checked by the caller.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Interface to create.
    pub interface: String,
    /// Backend to use.
    pub backend: BackendChoice,
    /// This node's key.
    pub key: NodeKey,
    /// This node's certificate.
    pub certificate: Certificate,
    /// The fleet CA.
    pub ca: CaPublicKey,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Underlay endpoints to advertise (may be empty: peers then learn it from handshakes).
    pub endpoints: Vec<SocketAddr>,
    /// Configured seeds.
    pub seeds: Vec<Seed>,
    /// Where the newest revocation list is kept (read when it changes, written when gossip
    /// brings a newer one, so a restart keeps honouring it).
    pub revocations_path: PathBuf,
}

/// One node's mesh advert as gossip carries it (raw JSON: parsed and checked here).
#[derive(Debug, Clone, Default)]
pub struct GossipAdvert {
    /// Node name (for logs).
    pub name: String,
    /// The certificate JSON it publishes.
    pub certificate: Option<serde_json::Value>,
    /// Its underlay endpoints (`ip:port`).
    pub endpoints: Vec<String>,
    /// Alive in the failure detector.
    pub alive: bool,
    /// The revocation list JSON it republishes.
    pub revocations: Option<serde_json::Value>,
}

struct Join {
    certificate: Certificate,
    /// Set only by a join whose HMAC covers its source IP (see [`crate::join`]).
    endpoint: Option<SocketAddr>,
    at: Instant,
}

/// The mesh of this node.
pub struct MeshRuntime {
    settings: MeshSettings,
    address: Ipv6Addr,
    backend: Option<Box<dyn WireguardBackend>>,
    join_socket: UdpSocket,
    joins: BTreeMap<PublicKey, Join>,
    revoked: RevocationList,
    revocations_mtime: Option<SystemTime>,
    /// Gossip adverts refused (keyed by claimed key), apart from joins so a join flood
    /// cannot push them out of `meshdrain mesh status`.
    refused_peers: Refusals,
    /// Join datagrams refused (keyed by source IP: spoofable, hence bounded).
    refused_joins: Refusals,
    replay: JoinReplayGuard,
    applied_endpoints: BTreeMap<PublicKey, SocketAddr>,
    /// Each admitted peer's certificate name, for [`Self::status`].
    peer_names: BTreeMap<PublicKey, String>,
    last_join_sent: Option<Instant>,
    last_error: Option<String>,
}

impl MeshRuntime {
    /// Brings the interface up with the node's mesh address and opens the join socket.
    pub fn start(settings: MeshSettings) -> Result<Self, BackendError> {
        let address = settings.certificate.body.address;
        let spec = InterfaceSpec {
            name: settings.interface.clone(),
            key: settings.key.clone(),
            address,
            listen_port: settings.listen_port,
            mtu: crate::backend::DEFAULT_MTU,
        };
        let backend = select_backend(settings.backend, &spec)?;
        wait_usable(address, &settings.interface)?;
        let join_port = settings.listen_port.wrapping_add(JOIN_PORT_OFFSET);
        let join_socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, join_port))
            .or_else(|_| UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, join_port)))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| BackendError::Configure {
                interface: settings.interface.clone(),
                action: format!("bind join port {join_port} (WireGuard port + {JOIN_PORT_OFFSET})"),
                reason: e.to_string(),
            })?;
        Ok(Self::assemble(settings, backend, join_socket))
    }

    /// A runtime over an already running backend and join socket (tests use a fake backend).
    pub fn assemble(settings: MeshSettings, backend: Box<dyn WireguardBackend>, join_socket: UdpSocket) -> Self {
        let address = settings.certificate.body.address;
        let _ = join_socket.set_nonblocking(true);
        let mut me = Self {
            settings,
            address,
            backend: Some(backend),
            join_socket,
            joins: BTreeMap::new(),
            revoked: RevocationList::default(),
            revocations_mtime: None,
            refused_peers: Refusals::default(),
            refused_joins: Refusals::default(),
            replay: JoinReplayGuard::default(),
            applied_endpoints: BTreeMap::new(),
            peer_names: BTreeMap::new(),
            last_join_sent: None,
            last_error: None,
        };
        me.reload_revocations();
        me
    }

    /// This node's mesh address.
    pub fn address(&self) -> Ipv6Addr {
        self.address
    }

    /// The backend actually running.
    pub fn kind(&self) -> BackendKind {
        self.backend.as_ref().map_or(BackendKind::Userspace, |b| b.kind())
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The revocation list in force (to republish in gossip); `None` while there is none.
    pub fn revocations(&self) -> Option<&RevocationList> {
        (self.revoked.body.serial > 0).then_some(&self.revoked)
    }

    /// Reads the revocation file when it changed; adopts it if our CA signed it and it is newer.
    fn reload_revocations(&mut self) {
        let path = &self.settings.revocations_path;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime.is_none() || mtime == self.revocations_mtime {
            return;
        }
        self.revocations_mtime = mtime;
        match load_json::<RevocationList>(path) {
            Ok(list) => self.adopt(list, "file"),
            Err(e) => tracing::warn!(path = %path.display(), "ignoring revocation list: {e}"),
        }
    }

    fn adopt(&mut self, list: RevocationList, from: &str) {
        if list.body.serial <= self.revoked.body.serial {
            return;
        }
        if let Err(e) = list.verify(&self.settings.ca) {
            tracing::warn!(from, "ignoring revocation list: {e}");
            return;
        }
        tracing::info!(from, serial = list.body.serial, revoked = list.body.revoked.len(), "revocation list adopted");
        self.revoked = list;
        if from != "file" {
            let path = &self.settings.revocations_path;
            if let Err(e) = save_json(path, &self.revoked) {
                tracing::warn!(path = %path.display(), "cannot keep the revocation list: {e}");
            }
            self.revocations_mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        }
    }

    /// Reads pending join datagrams (bounded, one fixed buffer) and remembers the admitted
    /// joiners. A copy of a join cannot move an endpoint (see [`crate::join`]).
    fn read_joins(&mut self, now: SystemTime) {
        // One byte more than the limit, so an oversized datagram is seen as such (the
        // kernel truncates it to the buffer) rather than as broken JSON.
        let mut buf = [0u8; MAX_JOIN_DATAGRAM + 1];
        self.replay.prune(now);
        for _ in 0..MAX_JOINS_PER_TICK {
            let Ok((n, from)) = self.join_socket.recv_from(&mut buf) else { break };
            let checked =
                JoinRequest::verify(&buf[..n], from, &self.settings.key, &self.settings.ca, &self.revoked, now)
                    .and_then(|j| self.replay.admit(&j).map(|()| j));
            match checked {
                Ok(j) => {
                    let old = self.joins.get(&j.admitted.public_key).and_then(|o| o.endpoint);
                    if old.is_none() {
                        let endpoint = j.endpoint.map_or_else(|| "from its handshake".to_owned(), |e| e.to_string());
                        tracing::info!(node = %j.admitted.name, peer = %j.admitted.public_key, %endpoint, "join request accepted");
                    }
                    // A join without a bound endpoint never erases one an earlier join set.
                    let join = Join { certificate: j.certificate, endpoint: j.endpoint.or(old), at: Instant::now() };
                    self.joins.insert(j.admitted.public_key, join);
                }
                Err(e) => {
                    let source = format!("join from {}", from.ip().to_canonical());
                    self.refused_joins.record(e.kind(), &source, &e.to_string(), Instant::now());
                }
            }
        }
        self.joins.retain(|_, j| j.at.elapsed() < JOIN_TTL);
    }

    /// The underlay IP our join to `seed` leaves from, bound into its HMAC: the configured
    /// endpoint of the seed's family (the address peers should use, e.g. behind 1:1 NAT),
    /// else the source the kernel picks on the route to the seed.
    fn claimed_ip(&self, seed: SocketAddr) -> Option<IpAddr> {
        let v4 = seed.ip().to_canonical().is_ipv4();
        let configured = (self.settings.endpoints.iter().map(|e| e.ip().to_canonical()))
            .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified());
        configured.or_else(|| {
            let any: SocketAddr =
                if v4 { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
            let probe = UdpSocket::bind(any).ok()?;
            probe.connect(SocketAddr::new(seed.ip().to_canonical(), seed.port())).ok()?;
            probe.local_addr().ok().map(|a| a.ip().to_canonical()).filter(|ip| !ip.is_unspecified())
        })
    }

    /// Sends a join to every seed not seen alive in gossip, at most every [`JOIN_RESEND`].
    fn send_joins(&mut self, alive: &[PublicKey], now: SystemTime) {
        if self.last_join_sent.is_some_and(|t| t.elapsed() < JOIN_RESEND) {
            return;
        }
        self.last_join_sent = Some(Instant::now());
        let v6 = self.join_socket.local_addr().is_ok_and(|a| a.is_ipv6());
        for seed in &self.settings.seeds {
            if alive.contains(&seed.public_key) || seed.public_key == self.settings.key.public() {
                continue;
            }
            let Some(req) = JoinRequest::claiming(
                &self.settings.key,
                &self.settings.certificate,
                &seed.public_key,
                self.settings.listen_port,
                self.claimed_ip(seed.endpoint),
                now,
            ) else {
                continue;
            };
            let mut to = SocketAddr::new(seed.endpoint.ip(), seed.endpoint.port().wrapping_add(JOIN_PORT_OFFSET));
            if let (true, IpAddr::V4(v4)) = (v6, to.ip()) {
                to.set_ip(IpAddr::V6(v4.to_ipv6_mapped()));
            }
            if let Err(e) = self.join_socket.send_to(&req.encode(), to) {
                tracing::debug!(%to, "join request not sent: {e}");
            }
        }
    }

    /// Counters of refusals since start (the list in [`Self::status`] is bounded).
    pub fn refusal_totals(&self) -> RefusalTotals {
        let (p, j) = (self.refused_peers.totals(), self.refused_joins.totals());
        RefusalTotals {
            refusals: p.refusals.saturating_add(j.refusals),
            new_refusals: p.new_refusals.saturating_add(j.new_refusals),
            evicted: p.evicted.saturating_add(j.evicted),
            log_lines: p.log_lines.saturating_add(j.log_lines),
        }
    }

    /// One convergence step: revocations, joins, admission, diff, apply.
    pub fn converge(&mut self, gossip: &[GossipAdvert], now: SystemTime) {
        self.refused_peers.tick(Instant::now());
        self.refused_joins.tick(Instant::now());
        self.reload_revocations();
        for g in gossip {
            if let Some(list) = g.revocations.clone().and_then(|v| serde_json::from_value::<RevocationList>(v).ok()) {
                self.adopt(list, &g.name);
            }
        }
        self.read_joins(now);
        let mut adverts = Vec::new();
        let mut alive_keys = Vec::new();
        let mut refusals = Vec::new();
        for g in gossip {
            let Some(raw) = &g.certificate else { continue };
            let cert: Certificate = match serde_json::from_value(raw.clone()) {
                Ok(c) => c,
                Err(e) => {
                    let reason = AdmissionError::Forged { name: g.name.clone(), reason: format!("malformed: {e}") };
                    refusals.push((admission_kind(&reason), g.name.clone(), reason.to_string()));
                    continue;
                }
            };
            let key = PublicKey::from_base64(&cert.body.public_key).ok();
            if g.alive {
                alive_keys.extend(key);
            }
            let endpoints: Vec<SocketAddr> = g.endpoints.iter().filter_map(|e| e.parse().ok()).collect();
            // A seed is trusted by configuration: it stays a peer (at its configured endpoint)
            // while dead, so that either side can reach the other when it returns.
            let seed = key.and_then(|k| self.settings.seeds.iter().find(|s| s.public_key == k));
            if let (false, Some(seed)) = (g.alive, seed) {
                adverts.push(PeerAdvert { certificate: cert.clone(), endpoints: vec![seed.endpoint], alive: true });
            }
            adverts.push(PeerAdvert { certificate: cert, endpoints, alive: g.alive });
        }
        // Once gossip shows a joiner alive, gossip decides (and a later death removes it).
        self.joins.retain(|k, _| !alive_keys.contains(k));
        for j in self.joins.values() {
            let endpoints = j.endpoint.into_iter().collect();
            adverts.push(PeerAdvert { certificate: j.certificate.clone(), endpoints, alive: true });
        }
        let admission = Admission {
            ca: self.settings.ca,
            revoked: self.revoked.clone(),
            self_key: self.settings.key.public(),
            seeds: self.settings.seeds.clone(),
        };
        let (mut desired, refused, names) = admit(&admission, &adverts, now);
        self.peer_names = names;
        refusals.extend(refused.into_iter().map(|r| (admission_kind(&r.reason), r.public_key, r.reason.to_string())));
        let at = Instant::now();
        for (kind, who, why) in refusals {
            self.refused_peers.record(kind, &who, &why, at);
        }
        self.send_joins(&alive_keys, now);
        let Some(backend) = self.backend.as_mut() else { return };
        let current = match backend.peers() {
            Ok(c) => c,
            Err(e) => {
                self.note_error(e.to_string());
                return;
            }
        };
        // Roaming: an advertised endpoint we already applied stays WireGuard's business (it
        // follows the peer's packets); only a newly advertised endpoint is pushed.
        for p in &mut desired {
            let known = current.iter().any(|c| c.public_key == p.public_key);
            if known && p.endpoint.is_some() && self.applied_endpoints.get(&p.public_key) == p.endpoint.as_ref() {
                p.endpoint = None;
            }
        }
        let changes = diff(&current, &desired);
        if changes.is_empty() {
            return;
        }
        match backend.apply(&changes) {
            Ok(()) => {
                self.last_error = None;
                for c in &changes {
                    match c {
                        crate::PeerChange::Add(p) | crate::PeerChange::Update(p) => {
                            if let Some(e) = p.endpoint {
                                self.applied_endpoints.insert(p.public_key, e);
                            }
                        }
                        crate::PeerChange::Remove(k) => {
                            self.applied_endpoints.remove(k);
                        }
                    }
                }
            }
            Err(e) => self.note_error(e.to_string()),
        }
    }

    fn note_error(&mut self, e: String) {
        if self.last_error.as_deref() != Some(e.as_str()) {
            tracing::warn!("mesh: {e} (retrying every tick)");
            self.last_error = Some(e);
        }
    }

    /// Peers, handshake ages and counters of the interface, plus the latest refusals (at most
    /// [`crate::refusals::MAX_REFUSALS_SHOWN`] gossip adverts, then as many join sources;
    /// [`Self::refusal_totals`] counts them all).
    pub fn status(&self) -> Result<(MeshStatus, Vec<RefusedPeer>), BackendError> {
        let mut st = self.backend.as_ref().map(|b| b.status()).transpose()?.ok_or_else(|| BackendError::Configure {
            interface: self.settings.interface.clone(),
            action: "status".into(),
            reason: "interface stopped".into(),
        })?;
        for p in &mut st.peers {
            let key = PublicKey::from_base64(&p.public_key).ok();
            p.name = key.and_then(|k| self.peer_names.get(&k)).cloned();
        }
        let now = Instant::now();
        let mut refused = self.refused_peers.list(now);
        refused.extend(self.refused_joins.list(now));
        Ok((st, refused))
    }
}

/// The log rate-limit kind of a refused gossip advert.
fn admission_kind(e: &AdmissionError) -> RefusalKind {
    match e {
        AdmissionError::OtherFleet { .. } => "peer from another fleet",
        AdmissionError::Forged { .. } => "peer forged",
        AdmissionError::Expired { .. } => "peer expired",
        AdmissionError::Revoked { .. } => "peer revoked",
        AdmissionError::AddressCollision { .. } => "peer address collision",
    }
}

/// Waits (bounded) until the mesh address can be bound: gossip binds it right after this.
fn wait_usable(address: Ipv6Addr, interface: &str) -> Result<(), BackendError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UdpSocket::bind((address, 0)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(BackendError::Configure {
                    interface: interface.to_owned(),
                    action: format!("use mesh address {address}"),
                    reason: format!("{e} after 10 s (is IPv6 disabled on this host?)"),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
