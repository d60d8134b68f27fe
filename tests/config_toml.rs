//! `AgentConfig` written as TOML reads back as the same config: the demo and the tests write
//! agent configs by serializing one (`AgentConfig::to_toml`), never by hand.

use std::path::{Path, PathBuf};

use meshdrain::config::{
    AgentConfig, CloneEngineChoice, ControlConfig, DataplaneBackend, DataplaneConfig, GcConfig, GossipConfig,
    LogConfig, LogFormat, MeshBackendChoice, MeshConfig, MeshSeed, MetricsConfig, PoolConfig,
};

/// Every field set, none at its default.
fn populated() -> AgentConfig {
    AgentConfig {
        name: "node-7.rack_2".parse().unwrap(),
        state_dir: PathBuf::from("/var/lib/meshdrain-7"),
        cluster_id: "fleet-a".to_owned(),
        labels: [("zone".to_owned(), "a".to_owned()), ("disk \"x\"".to_owned(), "nvme=1".to_owned())].into(),
        gossip: GossipConfig {
            listen: "198.18.0.7:7000".to_owned(),
            advertise: Some("203.0.113.7:7000".to_owned()),
            seeds: vec!["198.18.0.1:7000".to_owned(), "node2.example:7001".to_owned()],
            interval_ms: 250,
            phi_threshold: 6.5,
            dead_node_grace_s: 600,
            secret_file: Some(PathBuf::from("/etc/meshdrain/gossip.key")),
            secret_file_previous: Some(PathBuf::from("/etc/meshdrain/gossip.key.old")),
            insecure: true,
        },
        control: ControlConfig { socket: PathBuf::from("/run/md-7/control.sock") },
        metrics: MetricsConfig { listen: Some("127.0.0.1:9107".to_owned()) },
        mesh: MeshConfig {
            backend: MeshBackendChoice::Userspace,
            interface: Some("md7".to_owned()),
            listen_port: Some(51821),
            endpoint: Some("198.18.0.7:51821".to_owned()),
            certificate: Some(PathBuf::from("/etc/meshdrain/node.cert.json")),
            fleet_ca: Some(PathBuf::from("/etc/meshdrain/ca.pub")),
            seeds: vec![
                MeshSeed { public_key: "a".repeat(43) + "=", endpoint: "198.18.0.1:51820".to_owned() },
                MeshSeed { public_key: "b".repeat(43) + "=", endpoint: "[fd00::2]:51820".to_owned() },
            ],
            revocations: Some(PathBuf::from("/etc/meshdrain/revocations.json")),
        },
        pool: PoolConfig { dir: Some(PathBuf::from("/srv/pool")), capacity_bytes: Some(1 << 40) },
        dataplane: DataplaneConfig {
            backend: DataplaneBackend::Iscsi,
            exports_dir: Some(PathBuf::from("/srv/exports")),
            progress_ms: 150,
            test_prepare_delay_ms: 3000,
            export_port: 3261,
            clone: CloneEngineChoice::Dm,
            expose: meshdrain_clone::exposure::ExposeKind::Nbd,
            run_dir: Some(PathBuf::from("/run/md-7")),
            region_size: 1 << 20,
            clone_parallelism: 9,
            clone_in_flight: 3 << 20,
            clone_read_through: false,
            export_max_connections: Some(77),
            export_max_connections_per_volume: Some(5),
        },
        log: LogConfig { format: LogFormat::Json },
        gc: GcConfig { retention: "90m".to_owned() },
        lease: Default::default(),
        drain: Default::default(),
    }
}

fn round_trip(config: &AgentConfig) -> (String, AgentConfig) {
    let text = config.to_toml().expect("serializes");
    let back = AgentConfig::parse(Path::new("agent.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, back)
}

#[test]
fn a_fully_populated_config_round_trips_through_toml() {
    let config = populated();
    let (text, back) = round_trip(&config);
    // Debug prints every field: equal text is an equal config.
    assert_eq!(format!("{back:?}"), format!("{config:?}"), "through\n{text}");
    assert_eq!(back.to_toml().unwrap(), text, "a second trip writes the same text");
}

#[test]
fn absent_options_stay_absent_and_defaults_round_trip() {
    let mut config = populated();
    config.gossip.advertise = None;
    config.gossip.secret_file = None;
    config.gossip.secret_file_previous = None;
    config.mesh = MeshConfig::default();
    config.metrics = MetricsConfig::default();
    config.pool = PoolConfig::default();
    config.dataplane = DataplaneConfig::default();
    let (text, back) = round_trip(&config);
    assert_eq!(format!("{back:?}"), format!("{config:?}"), "through\n{text}");
    for absent in ["advertise", "secret_file", "revocations", "certificate", "capacity_bytes", "exports_dir"] {
        assert!(!text.contains(absent), "{absent} written although None:\n{text}");
    }
}

#[test]
fn a_written_config_validates_like_the_value() {
    let config = AgentConfig::new("node1".parse().unwrap(), PathBuf::from("/var/lib/md1"), "127.0.0.1:7946".into());
    let (text, back) = round_trip(&config);
    let p = Path::new("agent.toml");
    let (want, got) = (config.validate(p).unwrap(), back.validate(p).unwrap());
    assert_eq!(got.gossip_listen, want.gossip_listen);
    assert_eq!(got.gossip_advertise.to_string(), "127.0.0.1:7946", "{text}");
    assert_eq!(format!("{back:?}"), format!("{config:?}"));
}
