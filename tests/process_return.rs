//! `undrain --return` without root (docs/return.md): local agents with the `local` data
//! plane, whose clones do not track writes, so every return is a full move and says why;
//! the volume comes back with its bytes; one that never left the node is refused by name.

mod common;

use std::time::Duration;

use common::{joined, local_fleet, state_seen, wait_until};
use meshdrain::cli::demo::workload::{pseudo_random, sha};

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_return_without_write_tracking_is_a_full_move_that_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = local_fleet(tmp.path(), 2, |_| {});
    joined(&agents);
    let out = agents[0].cli(&["volume", "create", "v1", "--size", "8M"]);
    assert!(out.status.success(), "{}", text(&out));
    let data = pseudo_random(7, 8 << 20);
    std::fs::write(agents[0].pool().join("v1.img"), &data).unwrap();
    let out = agents[1].cli(&["volume", "create", "v2", "--size", "4M"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = agents[1].cli(&["drain", "node1", "--wait", "--deadline", "60s"]);
    assert!(out.status.success(), "drain: {}\n{}", text(&out), agents[0].log());
    // node2 writes while v1 is away.
    let mut now = std::fs::read(agents[1].pool().join("v1.img")).unwrap();
    now[1 << 20..(1 << 20) + 4096].fill(0xAB);
    std::fs::write(agents[1].pool().join("v1.img"), &now).unwrap();

    // The plan: node1 kept its copy, so a delta is planned if node2 tracked the writes.
    let out = agents[1].cli(&["undrain", "node1", "--return", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["returns"][0]["volume"], "v1");
    assert_eq!(plan["returns"][0]["mode"], "delta");
    assert_eq!(
        state_seen(&agents[1].status().unwrap(), "node1").as_deref(),
        Some("drained"),
        "--dry-run changes nothing"
    );

    // A volume that was never on node1: refused by name, exit 1 (node1 is undrained).
    let out = agents[1].cli(&["undrain", "node1", "--return", "--volume", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("refused: volume v2 never left node1: it is on node2, where it was created"),
        "{}",
        text(&out)
    );

    // The return: the local plane tracks nothing, so it is a full move, and it says so.
    let out = agents[1].cli(&["undrain", "node1", "--return", "--wait", "--deadline", "60s"]);
    assert!(out.status.success(), "undrain --return: {}\n{}\n{}", text(&out), agents[0].log(), agents[1].log());
    assert!(
        text(&out).contains(
            "v1: back on node1 in"
        ) && text(&out).contains(
            "full move (the writes since cut-over were not tracked: no userspace clone of v1 here tracks its writes)"
        ),
        "{}",
        text(&out)
    );
    wait_until(
        Duration::from_secs(30),
        || std::fs::read(agents[0].pool().join("v1.img")).is_ok_and(|d| sha(&d) == sha(&now)),
        || format!("node1's v1 to hold node2's bytes\n{}", agents[0].log()),
    );
    // Back on node1, `volume list` still says how it came (its `arrived` record).
    let v = agents[0].volume("v1").unwrap();
    assert_eq!(v["owner"], "node1", "{v}");
    assert_eq!(
        v["return_mode"],
        "full: the writes since cut-over were not tracked: no userspace clone of v1 here tracks its writes",
        "{v}"
    );
}
