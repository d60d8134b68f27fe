use std::path::Path;

use super::*;

const GOOD: &str = r#"
name = "node1"
state_dir = "/var/lib/meshdrain"
[gossip]
listen = "127.0.0.1:7946"
seeds = ["127.0.0.1:7947"]
interval_ms = 200
[control]
socket = "/run/meshdrain/control.sock"
[mesh]
backend = "none"
"#;

fn load(text: &str) -> Result<ResolvedAddrs, ConfigError> {
    let p = Path::new("/etc/meshdrain/agent.toml");
    AgentConfig::parse(p, text)?.validate(p)
}

#[test]
fn the_documented_example_is_valid() {
    let addrs = load(GOOD).expect("example config");
    assert_eq!(addrs.gossip_listen.to_string(), "127.0.0.1:7946");
    assert_eq!(addrs.gossip_advertise, addrs.gossip_listen);
}

#[test]
fn unknown_key_is_named() {
    let err = load(&GOOD.replace("interval_ms = 200", "interval_ms = 200\nfanout = 3")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unknown field `fanout`"), "{msg}");
    assert!(msg.contains("/etc/meshdrain/agent.toml"), "{msg}");
}

#[test]
fn bad_address_names_key_and_fix() {
    let err = load(&GOOD.replace("127.0.0.1:7946", "localhost")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config /etc/meshdrain/agent.toml: key `gossip.listen`: \"localhost\" is not an ip:port address \
         (fix: write ip:port, e.g. 127.0.0.1:7946)"
    );
}

#[test]
fn bad_seed_names_its_index() {
    let err = load(&GOOD.replace("\"127.0.0.1:7947\"", "\"127.0.0.1:7947\", \"nohost\"")).unwrap_err();
    assert!(err.to_string().contains("key `gossip.seeds[1]`"), "{err}");
}

#[test]
fn missing_section_is_named() {
    let err = load("name = \"n\"\nstate_dir = \"/x\"\n").unwrap_err();
    assert!(err.to_string().contains("missing field `gossip`"), "{err}");
}

#[test]
fn unspecified_listen_needs_advertise() {
    let err = load(&GOOD.replace("127.0.0.1:7946", "0.0.0.0:7946")).unwrap_err();
    assert!(err.to_string().contains("key `gossip.advertise`"), "{err}");
}

#[test]
fn node_names_are_plain() {
    // The rule itself is tested with `NodeName` (src/decide/model.rs); here, that the
    // config refuses a bad name where it is written.
    let err = load(&GOOD.replace("\"node1\"", "\"a/b\"")).unwrap_err();
    assert!(err.to_string().contains("name = \"a/b\""), "{err}");
    assert!(err.to_string().contains("\"a/b\" is not a valid node name (use 1-63 characters"), "{err}");
}

#[test]
fn mesh_keys_are_checked_by_name() {
    let mesh = |extra: &str| GOOD.replace("backend = \"none\"", &format!("backend = \"userspace\"\n{extra}"));
    let err = load(&mesh("certificate = \"/c.json\"")).unwrap_err();
    assert!(err.to_string().contains("key `mesh.fleet_ca`: is required with a mesh"), "{err}");
    let err = load(&mesh("fleet_ca = \"/ca.pub\"")).unwrap_err();
    assert!(err.to_string().contains("key `mesh.certificate`"), "{err}");
    let seed = "fleet_ca = \"/ca.pub\"\ncertificate = \"/c.json\"\nseeds = [{ public_key = \"nope\", endpoint = \"198.18.0.2:51820\" }]";
    let err = load(&mesh(seed)).unwrap_err();
    assert!(err.to_string().contains("key `mesh.seeds[0].public_key`"), "{err}");
    let key = meshdrain_mesh::NodeKey::generate().public().to_base64();
    load(&mesh(&seed.replace("nope", &key))).expect("complete mesh section");
}

#[test]
fn reachable_gossip_without_mesh_needs_a_secret_or_insecure() {
    let public = GOOD.replace("127.0.0.1:7946", "198.18.0.1:7946");
    assert_eq!(
        load(&public).unwrap_err().to_string(),
        "config /etc/meshdrain/agent.toml: key `gossip.secret_file`: is required: gossip on 198.18.0.1:7946 \
         without a mesh would let anyone who can reach it drain nodes (fix: create a fleet secret \
         (head -c 32 /dev/urandom > /etc/meshdrain/gossip.key && chmod 600 /etc/meshdrain/gossip.key), \
         copy it to every node and set secret_file to it; or run a mesh (mesh.backend); or set insecure = true)"
    );
    // Advertising a reachable address counts even when binding loopback.
    let advertised = GOOD.replace("interval_ms = 200", "interval_ms = 200\nadvertise = \"198.18.0.1:7946\"");
    assert!(load(&advertised).unwrap_err().to_string().contains("key `gossip.secret_file`"));
    let with = |extra: &str| public.replace("interval_ms = 200", &format!("interval_ms = 200\n{extra}"));
    load(&with("secret_file = \"/etc/meshdrain/gossip.key\"")).expect("with a secret");
    load(&with("insecure = true")).expect("insecure, on purpose");
    let err = load(&with("secret_file_previous = \"/k\"")).unwrap_err().to_string();
    assert!(err.contains("key `gossip.secret_file_previous`: is set without gossip.secret_file"), "{err}");
    // Loopback stays allowed without a secret (development, the process tests).
    load(GOOD).expect("loopback");
}

#[test]
fn the_example_config_moves_data_and_export_caps_are_checked() {
    let example = include_str!("../../systemd/agent.example.toml");
    load(example).expect("the example config is valid");
    let p = Path::new("/etc/meshdrain/agent.toml");
    assert_eq!(AgentConfig::parse(p, example).unwrap().dataplane.backend, DataplaneBackend::Iscsi);
    let capped = GOOD.to_owned() + "\n[dataplane]\nbackend = \"iscsi\"\nexport_max_connections = 0\n";
    assert_eq!(
        load(&capped).unwrap_err().to_string(),
        "config /etc/meshdrain/agent.toml: key `dataplane.export_max_connections`: 0 is outside 1..=65536 \
         (fix: leave it out for the default (256 on the portal, 32 per volume))"
    );
}

#[test]
fn relative_state_dir_is_refused() {
    let err = load(&GOOD.replace("/var/lib/meshdrain", "state")).unwrap_err();
    assert!(err.to_string().contains("key `state_dir`"), "{err}");
}

#[test]
fn expose_is_read_by_name_and_refused_with_dm_clone() {
    let p = Path::new("/etc/meshdrain/agent.toml");
    let with = |lines: &str| GOOD.to_owned() + "\n[dataplane]\nbackend = \"iscsi\"\n" + lines;
    let c = AgentConfig::parse(p, &with("expose = \"fuse-loop\"\n")).unwrap();
    assert_eq!(c.dataplane.expose, meshdrain_clone::exposure::ExposeKind::FuseLoop);
    assert_eq!(AgentConfig::parse(p, GOOD).unwrap().dataplane.expose, meshdrain_clone::exposure::ExposeKind::Auto);
    let err = AgentConfig::parse(p, &with("expose = \"loop\"\n")).unwrap_err().to_string();
    assert!(err.contains("expose") && err.contains("fuse-loop"), "{err}");
    assert_eq!(
        load(&with("clone = \"dm\"\nexpose = \"nbd\"\n")).unwrap_err().to_string(),
        "config /etc/meshdrain/agent.toml: key `dataplane.expose`: nbd applies to the userspace engine, not clone = \"dm\" \
         (fix: leave expose out (dm-clone is its own device) or set clone = \"auto\" or \"userspace\")"
    );
}
