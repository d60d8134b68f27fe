//! Prometheus metrics: what an operator graphs and alerts on (nodes by state, liveness,
//! gossip progress, values ignored). Served as text on `metrics.listen` at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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
    /// Node requests this agent applied or refused.
    pub requests_handled: Counter,
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
        let volumes = Family::<Labels, Gauge>::default();
        let hydrated_ratio = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let hydration_rate = Family::<Labels, Gauge>::default();
        let fetched_bytes = Family::<Labels, Gauge>::default();
        let read_through_bytes = Family::<Labels, Gauge>::default();
        let stalled = Family::<Labels, Gauge>::default();
        let stranded = Family::<Labels, Gauge>::default();
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
            requests_handled,
        }
    }

    /// Updates the gauges from a fresh view.
    pub fn observe(&self, view: &ClusterView) {
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
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
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
}
