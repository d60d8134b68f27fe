//! Prometheus metrics: what an operator graphs and alerts on (nodes by state, liveness,
//! gossip progress, values ignored, moving volumes, the WireGuard mesh and its
//! certificates). Served as text on `metrics.listen` at `/metrics`. The example alert rules
//! and Grafana dashboard in packaging/ query these names (tests/root_package.rs checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::cluster::view::ClusterView;
use crate::decide::node::NodeState;

type Labels = Vec<(String, String)>;

/// A WireGuard session without a new handshake for this long carries no data any more
/// (the protocol's reject-after time), so the peer counts as missing.
const FRESH_HANDSHAKE_SECS: u64 = 180;

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    nodes: Family<Labels, Gauge>,
    peers_alive: Gauge,
    peers_dead: Gauge,
    gossip_rounds: Gauge<u64, AtomicU64>,
    ignored_values: Gauge,
    volumes: Family<Labels, Gauge>,
    hydrated_ratio: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    hydration_rate: Family<Labels, Gauge>,
    fetched_bytes: Family<Labels, Gauge>,
    read_through_bytes: Family<Labels, Gauge>,
    stalled: Family<Labels, Gauge>,
    stranded: Family<Labels, Gauge>,
    node_alive: Family<Labels, Gauge>,
    certificate_expiry: Family<Labels, Gauge>,
    mesh_peer_up: Family<Labels, Gauge>,
    mesh_handshake_age: Family<Labels, Gauge>,
    mesh_received: Family<Labels, Counter>,
    mesh_sent: Family<Labels, Counter>,
    /// Node requests this agent applied or refused.
    pub requests_handled: Counter,
    /// Holder processes found dead and restarted (docs/holder-process.md).
    holder_restarts: Counter,
    /// Rolls (docs/roll.md): each node's step as this agent sees it, 1 per (roll, node).
    roll_step: Family<Labels, Gauge>,
    /// Rolls this agent knows, by phase.
    rolls: Family<Labels, Gauge>,
    /// Roll steps this node finished (`done`).
    roll_nodes_done: Counter,
    /// This node's `--exec` runs that failed, by reason.
    roll_exec_failures: Family<Labels, Counter>,
    /// Held for writing while a tick clears and refills its series, for reading while a
    /// scrape encodes: a scrape never sees a series missing mid-refill (which would restart
    /// an alert's `for:` timer).
    refill: std::sync::RwLock<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshdrain");
        let nodes = Family::<Labels, Gauge>::default();
        let peers_alive = Gauge::default();
        let peers_dead = Gauge::default();
        let gossip_rounds = Gauge::<u64, AtomicU64>::default();
        let ignored_values = Gauge::default();
        let requests_handled = Counter::default();
        let holder_restarts = Counter::default();
        let roll_step = Family::<Labels, Gauge>::default();
        let rolls = Family::<Labels, Gauge>::default();
        let roll_nodes_done = Counter::default();
        let roll_exec_failures = Family::<Labels, Counter>::default();
        registry.register(
            "roll_step",
            "1 for each node of each roll this agent knows, labelled with the node's step (docs/roll.md)",
            roll_step.clone(),
        );
        registry.register("rolls", "Rolls this agent knows, by phase (alert on failed)", rolls.clone());
        registry.register(
            "roll_nodes_done",
            "Rolls in which this node finished its turn (drained, command run, back)",
            roll_nodes_done.clone(),
        );
        registry.register(
            "roll_exec_failures",
            "This node's roll --exec runs that failed: reason exit, signal, timeout or not_run",
            roll_exec_failures.clone(),
        );
        let volumes = Family::<Labels, Gauge>::default();
        let hydrated_ratio = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let hydration_rate = Family::<Labels, Gauge>::default();
        let fetched_bytes = Family::<Labels, Gauge>::default();
        let read_through_bytes = Family::<Labels, Gauge>::default();
        let stalled = Family::<Labels, Gauge>::default();
        let stranded = Family::<Labels, Gauge>::default();
        let node_alive = Family::<Labels, Gauge>::default();
        let certificate_expiry = Family::<Labels, Gauge>::default();
        let mesh_peer_up = Family::<Labels, Gauge>::default();
        let mesh_handshake_age = Family::<Labels, Gauge>::default();
        let mesh_received = Family::<Labels, Counter>::default();
        let mesh_sent = Family::<Labels, Counter>::default();
        registry.register(
            "node_alive",
            "1 while the failure detector considers the node alive, 0 once dead (until gossip forgets it)",
            node_alive.clone(),
        );
        registry.register(
            "mesh_certificate_expiry_timestamp_seconds",
            "When the node's mesh certificate (from its gossip record) expires, unix seconds",
            certificate_expiry.clone(),
        );
        registry.register(
            "mesh_peer_up",
            "1 while a live node of the fleet is a WireGuard peer with a handshake in the last 180 s, else 0",
            mesh_peer_up.clone(),
        );
        registry.register(
            "mesh_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with the peer",
            mesh_handshake_age.clone(),
        );
        registry.register(
            "mesh_peer_received_bytes",
            "Bytes received from the WireGuard peer (resets when the interface is recreated)",
            mesh_received.clone(),
        );
        registry.register(
            "mesh_peer_sent_bytes",
            "Bytes sent to the WireGuard peer (resets when the interface is recreated)",
            mesh_sent.clone(),
        );
        registry.register(
            "volume_hydrated_ratio",
            "Fraction of a moving volume's regions on its new node (1 when hydrated)",
            hydrated_ratio.clone(),
        );
        registry.register(
            "volume_hydration_bytes_per_second",
            "Recent hydration rate of a moving volume",
            hydration_rate.clone(),
        );
        registry.register(
            "volume_fetched_bytes",
            "Bytes a moving volume's holder has read from its source",
            fetched_bytes.clone(),
        );
        registry.register(
            "volume_read_through_bytes",
            "Bytes a moving volume's workload read straight from its source, within regions not yet copied",
            read_through_bytes.clone(),
        );
        registry.register(
            "volume_stalled",
            "1 while a holder's hydration cannot progress: source unreachable or dest full (alert when it lasts)",
            stalled.clone(),
        );
        registry.register(
            "volume_stranded",
            "1 while a cut-over volume's holder is dead (the source keeps its copy)",
            stranded.clone(),
        );
        registry.register("volumes", "Volumes of the fleet by owner-side move phase", volumes.clone());
        registry.register("nodes", "Nodes known to this agent, by lifecycle state and liveness", nodes.clone());
        registry.register("peers_alive", "Other nodes the failure detector considers alive", peers_alive.clone());
        registry.register("peers_dead", "Other nodes the failure detector considers dead", peers_dead.clone());
        registry.register("gossip_rounds", "Gossip rounds this agent has run (its heartbeat)", gossip_rounds.clone());
        registry.register(
            "gossip_ignored_values",
            "Gossip values skipped because they were malformed or of an unknown schema version",
            ignored_values.clone(),
        );
        registry.register(
            "node_requests_handled",
            "Node requests applied or refused by this agent",
            requests_handled.clone(),
        );
        registry.register(
            "holder_restarts",
            "Holder processes (userspace clones) found dead and restarted from their metadata by this agent",
            holder_restarts.clone(),
        );
        Self {
            registry,
            nodes,
            peers_alive,
            peers_dead,
            gossip_rounds,
            ignored_values,
            volumes,
            hydrated_ratio,
            hydration_rate,
            fetched_bytes,
            read_through_bytes,
            stalled,
            stranded,
            node_alive,
            certificate_expiry,
            mesh_peer_up,
            mesh_handshake_age,
            mesh_received,
            mesh_sent,
            requests_handled,
            holder_restarts,
            roll_step,
            rolls,
            roll_nodes_done,
            roll_exec_failures,
            refill: std::sync::RwLock::new(()),
        }
    }

    /// Updates the gauges from a fresh view.
    pub fn observe(&self, view: &ClusterView) {
        let _refill = self.refill.write().unwrap_or_else(|p| p.into_inner());
        for state in NodeState::ALL {
            for alive in [true, false] {
                let n = view
                    .nodes
                    .values()
                    .filter(|n| n.alive == alive && n.record.as_ref().map(|r| r.state) == Some(state))
                    .count();
                let labels = vec![("state".to_owned(), state.to_string()), ("alive".to_owned(), alive.to_string())];
                self.nodes.get_or_create(&labels).set(n as i64);
            }
        }
        let others = view.nodes.values().filter(|n| n.name != view.self_name);
        let (alive, dead) = others.fold((0, 0), |(a, d), n| if n.alive { (a + 1, d) } else { (a, d + 1) });
        self.peers_alive.set(alive);
        self.peers_dead.set(dead);
        if let Some(me) = view.local() {
            self.gossip_rounds.set(me.heartbeat);
        }
        self.ignored_values.set(view.nodes.values().map(|n| n.ignored.len() as i64).sum());
        let mut by_phase: std::collections::BTreeMap<String, i64> =
            ["held", "offered", "granted", "cut_over", "handed_off", "failed"]
                .iter()
                .map(|p| ((*p).to_owned(), 0))
                .collect();
        for family in
            [&self.hydration_rate, &self.fetched_bytes, &self.read_through_bytes, &self.stalled, &self.stranded]
        {
            family.clear();
        }
        self.hydrated_ratio.clear();
        for v in super::report::volumes(view) {
            if let Some(holder) = v.holder.clone().filter(|_| v.phase == "cut_over") {
                let labels = vec![("volume".to_owned(), v.id.clone()), ("holder".to_owned(), holder)];
                let ratio =
                    if v.hydration.total == 0 { 0.0 } else { v.hydration.hydrated as f64 / v.hydration.total as f64 };
                self.hydrated_ratio.get_or_create(&labels).set(ratio);
                self.hydration_rate.get_or_create(&labels).set(v.hydration.bytes_per_s as i64);
                self.fetched_bytes.get_or_create(&labels).set(v.hydration.fetched_bytes as i64);
                self.read_through_bytes.get_or_create(&labels).set(v.hydration.read_through_bytes as i64);
                self.stalled.get_or_create(&labels).set(i64::from(v.stalled));
                self.stranded.get_or_create(&labels).set(i64::from(v.stranded));
            }
            *by_phase.entry(v.phase).or_default() += 1;
        }
        for (phase, n) in by_phase {
            self.volumes.get_or_create(&vec![("phase".to_owned(), phase)]).set(n);
        }
        self.observe_nodes(view);
        self.holder_restarts.inner().store(crate::dataplane::clone_process::holder_restarts(), Ordering::Relaxed);
    }

    /// Per node: liveness and the expiry of the certificate it publishes. Every agent
    /// reports every node, so an alert aggregates `by (node)`.
    fn observe_nodes(&self, view: &ClusterView) {
        self.node_alive.clear();
        self.certificate_expiry.clear();
        for n in view.nodes.values() {
            let labels = vec![("node".to_owned(), n.name.to_string())];
            self.node_alive.get_or_create(&labels).set(i64::from(n.alive));
            let not_after = n
                .record
                .as_ref()
                .and_then(|r| r.wireguard.as_ref()?.certificate.clone())
                .and_then(|c| serde_json::from_value::<meshdrain_mesh::Certificate>(c).ok())
                .map(|c| c.body.not_after);
            if let Some(t) = not_after {
                self.certificate_expiry.get_or_create(&labels).set(i64::try_from(t).unwrap_or(i64::MAX));
            }
        }
    }

    /// Updates the mesh metrics from the mesh's status (`MeshPort::status`, the JSON of
    /// `meshdrain mesh status`). A peer is labelled with the node name its gossip record
    /// gives its key, else with the key. Without a mesh (`backend = "none"`) there are none.
    pub fn observe_mesh(&self, view: &ClusterView, status: &serde_json::Value) {
        let _refill = self.refill.write().unwrap_or_else(|p| p.into_inner());
        for family in [&self.mesh_peer_up, &self.mesh_handshake_age] {
            family.clear();
        }
        self.mesh_received.clear();
        self.mesh_sent.clear();
        if status.get("backend").and_then(serde_json::Value::as_str) == Some("none") {
            return;
        }
        let peers: Vec<meshdrain_mesh::PeerStatus> =
            status.get("peers").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default();
        let name_of: std::collections::HashMap<&str, String> = view
            .nodes
            .values()
            .filter_map(|n| Some((n.record.as_ref()?.wireguard.as_ref()?.public_key.as_str(), n.name.to_string())))
            .collect();
        let label = |key: &str| vec![("peer".to_owned(), name_of.get(key).cloned().unwrap_or_else(|| key.to_owned()))];
        for p in &peers {
            let labels = label(&p.public_key);
            if let Some(age) = p.handshake_age_secs {
                self.mesh_handshake_age.get_or_create(&labels).set(i64::try_from(age).unwrap_or(i64::MAX));
            }
            self.mesh_received.get_or_create(&labels).inner().store(p.rx_bytes, Ordering::Relaxed);
            self.mesh_sent.get_or_create(&labels).inner().store(p.tx_bytes, Ordering::Relaxed);
        }
        // Every other live node that advertises a WireGuard key should be a peer with a
        // fresh session; one that is not is "missing" (alert on it lasting).
        for n in view.nodes.values().filter(|n| n.alive && n.name != view.self_name) {
            let Some(wg) = n.record.as_ref().and_then(|r| r.wireguard.as_ref()) else { continue };
            let fresh = peers.iter().any(|p| {
                p.public_key == wg.public_key && p.handshake_age_secs.is_some_and(|a| a < FRESH_HANDSHAKE_SECS)
            });
            self.mesh_peer_up.get_or_create(&vec![("peer".to_owned(), n.name.to_string())]).set(i64::from(fresh));
        }
    }

    /// Updates the roll gauges from every roll this agent knows (docs/roll.md).
    pub fn observe_rolls(&self, reports: &[crate::decide::roll::RollReport]) {
        let _refill = self.refill.write().unwrap_or_else(|p| p.into_inner());
        self.roll_step.clear();
        self.rolls.clear();
        let mut by_phase: std::collections::BTreeMap<String, i64> =
            ["running", "failed", "cancelled", "done"].iter().map(|p| ((*p).to_owned(), 0)).collect();
        for r in reports {
            *by_phase.entry(label(&r.phase)).or_default() += 1;
            for n in &r.nodes {
                let labels = vec![
                    ("roll".to_owned(), r.id.clone()),
                    ("node".to_owned(), n.node.to_string()),
                    ("step".to_owned(), if n.skipped { "skipped".to_owned() } else { label(&n.step) }),
                ];
                self.roll_step.get_or_create(&labels).set(1);
            }
        }
        for (phase, n) in by_phase {
            self.rolls.get_or_create(&vec![("phase".to_owned(), phase)]).set(n);
        }
    }

    /// This node finished its turn in a roll.
    pub fn roll_node_done(&self) {
        self.roll_nodes_done.inc();
    }

    /// This node's `--exec` failed for `reason` (`exit`, `signal`, `timeout`, `not_run`).
    pub fn roll_exec_failed(&self, reason: &str) {
        self.roll_exec_failures.get_or_create(&vec![("reason".to_owned(), reason.to_owned())]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let _refill = self.refill.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The serde name of a unit enum variant (`wait_active`), for a label.
fn label(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Serves `/metrics` until the task is dropped. Deliberately tiny: one request per
/// connection, GET only.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "try /metrics\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(resp.as_bytes()).await {
                debug!(%peer, "metrics write failed: {e}");
            }
        });
    }
}

/// Binds the metrics listener, naming the config key on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.observe(&ClusterView::default());
        let text = m.render();
        assert!(text.contains("# TYPE meshdrain_nodes gauge"), "{text}");
        assert!(text.contains("meshdrain_nodes{state=\"draining\",alive=\"true\"} 0"), "{text}");
        assert!(text.contains("meshdrain_peers_alive 0"), "{text}");
        assert!(text.contains("# TYPE meshdrain_holder_restarts counter"), "{text}");
        assert!(text.contains("meshdrain_holder_restarts_total 0"), "{text}");
    }

    #[test]
    fn moving_volume_reports_copied_and_read_through_bytes_apart() {
        use crate::cluster::view::{RawNode, RawSnapshot};
        let node = |name: &str, key: &str, value: &str| RawNode {
            name: name.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            alive: true,
            heartbeat: 3,
            entries: vec![(key.into(), value.into())],
        };
        let raw = RawSnapshot {
            self_name: "a".into(),
            nodes: vec![
                node("a", "vol/db", r#"{"v":1,"size":1048576,"epoch":2,"phase":"cut_over","holder":"b","at_ms":5}"#),
                node(
                    "b",
                    "progress/db",
                    r#"{"v":1,"source":"a","epoch":2,"phase":"running","stalled":false,"hydrated":4,"total":16,"bytes_per_s":9,"fetched_bytes":262144,"read_through_bytes":8192}"#,
                ),
            ],
        };
        let m = Metrics::new();
        m.observe(&ClusterView::from_raw(&raw));
        let text = m.render();
        assert!(text.contains("meshdrain_volume_fetched_bytes{volume=\"db\",holder=\"b\"} 262144"), "{text}");
        assert!(text.contains("meshdrain_volume_read_through_bytes{volume=\"db\",holder=\"b\"} 8192"), "{text}");
    }

    #[test]
    fn rolls_report_each_nodes_step_the_phases_and_exec_failures() {
        use crate::decide::roll::{NodeProgress, RollPhase, RollReport, RollSpec, Step};
        let node = |n: &str, step, skipped| NodeProgress { node: n.parse().unwrap(), step, skipped, record: None };
        let report = RollReport {
            id: "3f2a9c1e".into(),
            spec: RollSpec { pause_ms: 0, ..RollSpec::for_tests(&["a", "b", "c"], Some("true"), true) },
            phase: RollPhase::Failed,
            nodes: vec![node("a", Step::Done, false), node("b", Step::WaitActive, false), node("c", Step::Exec, true)],
        };
        let m = Metrics::new();
        m.observe_rolls(std::slice::from_ref(&report));
        m.roll_node_done();
        m.roll_exec_failed("timeout");
        m.roll_exec_failed("timeout");
        m.roll_exec_failed("exit");
        let text = m.render();
        for line in [
            "meshdrain_roll_step{roll=\"3f2a9c1e\",node=\"a\",step=\"done\"} 1",
            "meshdrain_roll_step{roll=\"3f2a9c1e\",node=\"b\",step=\"wait_active\"} 1",
            "meshdrain_roll_step{roll=\"3f2a9c1e\",node=\"c\",step=\"skipped\"} 1",
            "meshdrain_rolls{phase=\"failed\"} 1",
            "meshdrain_rolls{phase=\"running\"} 0",
            "# TYPE meshdrain_roll_nodes_done counter",
            "meshdrain_roll_nodes_done_total 1",
            "meshdrain_roll_exec_failures_total{reason=\"timeout\"} 2",
            "meshdrain_roll_exec_failures_total{reason=\"exit\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        // A roll forgotten (or a node's step moved on) leaves no stale series.
        m.observe_rolls(&[]);
        let text = m.render();
        assert!(!text.contains("meshdrain_roll_step{"), "{text}");
        assert!(text.lines().any(|l| l == "meshdrain_rolls{phase=\"failed\"} 0"), "{text}");
    }

    /// A view of `a` (this node), a live `b` and a dead `c`, each publishing a WireGuard key
    /// and a certificate that expires at 1_900_000_000 + i.
    fn meshed_view() -> ClusterView {
        use crate::cluster::schema::{self, Key, NodeRecord};
        use crate::cluster::view::{RawNode, RawSnapshot};
        use crate::decide::model::WireguardAdvert;
        let ca = meshdrain_mesh::FleetCa::generate();
        let node = |i: u64, name: &str, alive: bool| {
            let key = meshdrain_mesh::NodeKey::generate().public().to_base64();
            let request = meshdrain_mesh::SigningRequest { name: name.into(), public_key: key.clone() };
            let not_after = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000 + i);
            let cert = ca.sign(&request, not_after).unwrap();
            let record = NodeRecord {
                wireguard: Some(WireguardAdvert {
                    public_key: key,
                    endpoints: vec![],
                    certificate: serde_json::to_value(&cert).ok(),
                    revocations: None,
                }),
                ..NodeRecord::new(name.parse().unwrap(), NodeState::Active, "[fd00::1]:7946".parse().unwrap())
            };
            RawNode {
                name: name.into(),
                generation: 1,
                gossip_addr: "[fd00::1]:7946".parse().unwrap(),
                alive,
                heartbeat: 1,
                entries: vec![(Key::Node.render(), schema::encode(&record))],
            }
        };
        let raw = RawSnapshot {
            self_name: "a".into(),
            nodes: vec![node(0, "a", true), node(1, "b", true), node(2, "c", false)],
        };
        ClusterView::from_raw(&raw)
    }

    fn key_of(view: &ClusterView, name: &str) -> String {
        view.nodes[name].record.as_ref().unwrap().wireguard.as_ref().unwrap().public_key.clone()
    }

    #[test]
    fn nodes_report_liveness_and_certificate_expiry() {
        let m = Metrics::new();
        m.observe(&meshed_view());
        let text = m.render();
        assert!(text.contains("meshdrain_node_alive{node=\"b\"} 1"), "{text}");
        assert!(text.contains("meshdrain_node_alive{node=\"c\"} 0"), "{text}");
        assert!(text.contains("meshdrain_mesh_certificate_expiry_timestamp_seconds{node=\"a\"} 1900000000"), "{text}");
        assert!(text.contains("meshdrain_mesh_certificate_expiry_timestamp_seconds{node=\"c\"} 1900000002"), "{text}");
    }

    #[test]
    fn mesh_peers_are_named_and_a_live_node_without_a_fresh_handshake_is_down() {
        let view = meshed_view();
        let m = Metrics::new();
        // b handshook 5 s ago; c (dead in gossip) is a stale peer and is not expected.
        let status = serde_json::json!({
            "backend": "userspace", "interface": "meshdrain0", "listen_port": 51820,
            "peers": [
                { "public_key": key_of(&view, "b"), "endpoint": null, "allowed_ips": [],
                  "handshake_age_secs": 5, "rx_bytes": 1000, "tx_bytes": 2000 },
                { "public_key": key_of(&view, "c"), "endpoint": null, "allowed_ips": [],
                  "handshake_age_secs": 900, "rx_bytes": 1, "tx_bytes": 2 },
            ],
        });
        m.observe_mesh(&view, &status);
        let text = m.render();
        assert!(text.contains("meshdrain_mesh_peer_up{peer=\"b\"} 1"), "{text}");
        assert!(!text.contains("meshdrain_mesh_peer_up{peer=\"c\"}"), "{text}");
        assert!(text.contains("meshdrain_mesh_peer_received_bytes_total{peer=\"b\"} 1000"), "{text}");
        assert!(text.contains("meshdrain_mesh_peer_sent_bytes_total{peer=\"b\"} 2000"), "{text}");
        assert!(text.contains("meshdrain_mesh_peer_handshake_age_seconds{peer=\"c\"} 900"), "{text}");

        // b's session goes stale: it is missing, though gossip still says it is alive.
        let stale = serde_json::json!({ "backend": "kernel", "peers": [
            { "public_key": key_of(&view, "b"), "endpoint": null, "allowed_ips": [],
              "handshake_age_secs": 181, "rx_bytes": 1000, "tx_bytes": 2000 } ] });
        m.observe_mesh(&view, &stale);
        assert!(m.render().contains("meshdrain_mesh_peer_up{peer=\"b\"} 0"), "{}", m.render());

        // Without a mesh there is nothing to be missing.
        m.observe_mesh(&view, &serde_json::json!({ "backend": "none", "peers": [] }));
        assert!(!m.render().contains("meshdrain_mesh_peer_up{"), "{}", m.render());
    }
}
