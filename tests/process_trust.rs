//! A careless operator against `meshdrain agent` processes: nothing is acknowledged that
//! was not stored, nothing is deleted to make room, and a node that cannot move data does
//! not pretend it can (the project's docs/threat-model.md lists these promises).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{AgentProc, free_udp_port, meshdrain, state_seen, wait_until};

fn solo(root: &std::path::Path, data_plane: bool) -> AgentProc {
    let mut a = AgentProc::new(root, "node1", free_udp_port(), &[], 100);
    if data_plane {
        a.local_dataplane(&root.join("exports"));
    }
    a
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_request_the_state_dir_cannot_store_is_refused_and_a_restart_keeps_the_stored_state() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = solo(tmp.path(), true);
    a.start();
    let state = a.dir.join("state");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state dir");
    let out = a.cli(&["cordon", "node1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&state.join("agent.json")), 0o600, "agent.json");

    // A directory where the temporary file goes: every save fails, as on a broken disk.
    let blocker = state.join(".agent.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let out = a.cli(&["uncordon", "node1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("uncordon node1 was not applied: state dir: create"), "{err}");
    assert!(err.contains(".agent.json.tmp"), "the error names the path: {err}");
    // Not published either: the node is still cordoned, to itself and in gossip.
    assert_eq!(a.status().and_then(|s| state_seen(&s, "node1")).as_deref(), Some("cordoned"));

    // After a crash the node comes back as the disk says, and the fixed disk takes requests.
    a.kill9();
    std::fs::remove_dir(&blocker).unwrap();
    a.start();
    assert_eq!(a.status().and_then(|s| state_seen(&s, "node1")).as_deref(), Some("cordoned"));
    let out = a.cli(&["uncordon", "node1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(a.status().and_then(|s| state_seen(&s, "node1")).as_deref(), Some("active"));
}

#[test]
fn an_agent_whose_state_dir_is_not_writable_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = solo(tmp.path(), true);
    // The state dir's place is taken by a file: nothing can be written under it.
    std::fs::write(a.dir.join("state"), b"not a directory").unwrap();
    let out = meshdrain(&["agent", "--config", a.config.to_str().unwrap()]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("state dir: create {}", a.dir.join("state").display())), "{err}");
}

#[test]
fn a_node_without_a_data_plane_refuses_to_create_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = solo(tmp.path(), false);
    a.start();
    let out = a.cli(&["volume", "create", "db1", "--size", "16M"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "this node has no data plane (dataplane.backend = \"none\"), so volume db1 could never move: \
             set [dataplane] backend = \"iscsi\" and restart the agent"
        ),
        "{err}"
    );
    assert!(!a.pool().join("db1.img").exists(), "no file is left behind");
    let out = a.cli(&["volume", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["volumes"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn a_regular_file_at_the_control_socket_path_is_kept_and_the_agent_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = solo(tmp.path(), true);
    std::fs::write(&a.socket, b"precious").unwrap();
    let out = meshdrain(&["agent", "--config", a.config.to_str().unwrap()]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("exists and is not a socket (it was left untouched"), "{err}");
    assert_eq!(std::fs::read(&a.socket).unwrap(), b"precious");
}

#[test]
fn control_lines_are_bounded_and_must_be_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = solo(tmp.path(), true);
    a.start();
    let stream = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();

    // 8 MiB without a newline, then one: an error reply, and the connection still answers.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        writer.write_all(&chunk).unwrap();
    }
    writer.write_all(b"\n").unwrap();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("control request longer than 1048576 bytes: refused"), "{reply}");

    reply.clear();
    writer.write_all(b"{\"op\":\"status\xff\"}\n").unwrap();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("control request is not UTF-8"), "{reply}");

    reply.clear();
    writer.write_all(b"{\"op\":\"status\"}\n").unwrap();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("nodes"), "a good request after bad ones is answered: {reply}");
    wait_until(Duration::from_secs(5), || a.status().is_some(), || "the agent to keep answering".into());
}
