//! Writes the seed files of the `cert` and `join` fuzz targets: real certificates, signing
//! requests, revocation lists and join datagrams made with the fixed fixture keys, so the
//! fuzzer starts from inputs that pass every check (fuzz/src/mesh_fixtures.rs).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use meshdrain_mesh::{JoinRequest, SigningRequest};

#[path = "../../src/mesh_fixtures.rs"]
mod fixtures;
use fixtures::*;

fn write(target: &str, name: &str, sel: u8, body: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let mut v = vec![sel];
    v.extend_from_slice(body);
    std::fs::write(dir.join(format!("seed-{name}")), v).expect("write seed");
}

fn main() {
    let ca = ca();
    let cert = joiner_certificate();
    write("cert", "certificate", 0, &serde_json::to_vec(&cert).expect("json"));
    let req = SigningRequest { name: "node1".into(), public_key: seed_key().public().to_base64() };
    write("cert", "request", 1, &serde_json::to_vec(&req).expect("json"));
    let list = ca.revocations(3, [joiner_key().public().to_base64()].into());
    write("cert", "revocations", 2, &serde_json::to_vec(&list).expect("json"));
    write("cert", "ca-key", 3, &serde_json::to_vec(&ca.public()).expect("json"));

    let ip: IpAddr = "198.18.0.3".parse().expect("fixed");
    let seed = seed_key().public();
    let v2 = JoinRequest::claiming(&joiner_key(), &cert, &seed, 51820, Some(ip), now()).expect("join");
    write("join", "v2-datagram", 0, &v2.encode());
    let nat = JoinRequest::new(&joiner_key(), &cert, &seed, 51820, now() - Duration::from_secs(60)).expect("join");
    write("join", "v2-no-ip", 0, &nat.encode());
    write("join", "patch-mac", 1, &[0x40, 0x00, 0x01]);
    write("join", "fresh-within", 2, &[0x6c, 0xca, 0x10, 0x00, 0x01]);
    write("join", "fresh-stale", 2, &[0x6c, 0xca, 0x90, 0x01, 0x02]);
}
