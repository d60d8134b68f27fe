//! `meshdrain mesh init/keygen/sign` through the built binary: keygen says when it reuses a
//! key (and leaves it as it was), sign prints the certificate's expiry (UTC, RFC 3339).
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_meshdrain");

/// Runs meshdrain with `args`; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("running meshdrain");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn mesh_keygen_says_it_reuses_a_key_and_sign_prints_the_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, state) = (dir.path().join("ca"), dir.path().join("state"));
    assert_eq!(run(&["mesh", "init", "--dir", p(&ca)]).0, 0);

    let (code, first, err) = run(&["mesh", "keygen", "--state-dir", p(&state), "--name", "node2"]);
    assert_eq!(code, 0, "{err}");
    let key_file = state.join("wireguard.key");
    assert!(first.starts_with(&format!("created node key {} (mode 0600)\n", key_file.display())), "{first}");
    let key = std::fs::read(&key_file).unwrap();

    let (code, second, err) = run(&["mesh", "keygen", "--state-dir", p(&state), "--name", "node2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        second.starts_with(&format!(
            "reusing the existing node key {} (not overwritten: the node keeps its identity)\n",
            key_file.display()
        )),
        "{second}"
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), key, "the key was overwritten");
    // The same public key both times.
    assert_eq!(first.lines().nth(1), second.lines().nth(1));

    let cert = dir.path().join("node2.cert.json");
    let request = state.join("node.csr.json");
    let ca_key = ca.join("fleet-ca.key");
    let (code, out, err) = run(&[
        "mesh",
        "sign",
        "--ca-key",
        p(&ca_key),
        "--request",
        p(&request),
        "--valid-for",
        "30d",
        "--out",
        p(&cert),
    ]);
    assert_eq!(code, 0, "{err}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&cert).unwrap()).unwrap();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(written["not_after"].as_u64().unwrap());
    let expires = humantime::format_rfc3339_seconds(not_after).to_string();
    assert!(expires.ends_with('Z'), "{expires}");
    let expected = format!(
        "certificate for node2 written to {}\n  public key: {}\n  address:    {}\n  expires:    {expires} (valid for 30days)\n",
        cert.display(),
        written["public_key"].as_str().unwrap(),
        written["address"].as_str().unwrap()
    );
    assert_eq!(out, expected);
}
