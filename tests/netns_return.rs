//! Coming back cheaply (docs/return.md) over the real data path: agents in network
//! namespaces on the userspace WireGuard mesh, our iSCSI target, the userspace clone
//! engine in holder processes. A 1 GiB volume drained off node1, 2 % of it rewritten on
//! node2 through the clone's device, returns with `undrain node1 --return` copying only
//! the written regions (counted as the bytes node1's engine read from node2); a volume
//! whose copy node1 no longer holds returns with a full move and says so, and so does one
//! whose kept copy was touched after its hand-off (planned as a delta, made full by
//! node1's holder: what is reported is what it did); a volume that was never on node1 is
//! refused by name. Root only (netns, loop, FUSE).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::netns::Fleet;
use common::{state_seen, wait_until};
use meshdrain::cli::demo::workload::pseudo_random;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const REGION: u64 = 64 << 10;

/// sha256 of a file, streamed.
fn file_sha(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Volume `id` of `mib` MiB on node1, started by the fleet's start hook (which records
/// the device each start ran on), holding pseudo-random bytes: 8 MiB of every 64 MiB, the
/// rest a hole (the machine's disk is shared: a 1 GiB volume costs 128 MiB per copy).
fn random_volume(f: &Fleet, id: &str, mib: u64) {
    let hook = f.start_hook();
    let out = f.agents[0].cli(&["volume", "create", id, "--size", &format!("{mib}M"), "--hook-start", &hook]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::OpenOptions::new().write(true).open(f.agents[0].pool().join(format!("{id}.img"))).unwrap();
    for i in 0..mib.div_ceil(64) {
        file.write_all_at(&pseudo_random(i * 131 + mib, (8 * MIB) as usize), i * 64 * MIB).unwrap();
    }
    file.sync_all().unwrap();
    assert_eq!(file.metadata().unwrap().len(), mib * MIB);
}

/// Every agent offers 4 GiB to placement whatever its disk's free space (the test disk is
/// shared and nearly full; the volumes here are mostly holes).
fn offer_room(f: &mut Fleet) {
    for a in &mut f.agents {
        a.stop();
        a.cfg.pool.capacity_bytes = Some(4 << 30);
        a.write_config();
        a.start();
    }
    common::joined(&f.agents);
}

fn drain_node1(f: &Fleet) {
    let out = f.agents[1].cli(&["drain", "node1", "--wait", "--deadline", "300s"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "drain --wait: {text}\n{}", f.logs());
}

fn undrain(f: &Fleet, args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["undrain", "node1"];
    full.extend_from_slice(args);
    let out = f.agents[1].cli(&full);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout, format!("{stderr}\n{}", f.logs()))
}

#[test]
fn netns_return_copies_only_what_was_written_while_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 2);
    offer_room(&mut f);

    // "small" leaves node1, whose copy is then gc'd: its return is a full move.
    random_volume(&f, "small", 64);
    drain_node1(&f);
    let out = f.agents[0].cli(&["gc"]);
    assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(30),
        || !f.agents[0].pool().join("small.img").exists(),
        || format!("node1 to delete its copy of small\n{}", f.logs()),
    );
    assert!(undrain(&f, &[]).0);
    // "elsewhere" was never on node1.
    let out = f.agents[1].cli(&["volume", "create", "elsewhere", "--size", "16M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // "big": 1 GiB leaves node1, which keeps its copy; so does "touched", whose kept copy
    // is then touched (its ctime moves past the hand-off).
    random_volume(&f, "big", 1024);
    random_volume(&f, "touched", 64);
    drain_node1(&f);
    let touched_copy = f.agents[0].pool().join("touched.img");
    common::netns::run("touch", &[touched_copy.to_str().unwrap()]);
    let (node, device) = f.starts("big").into_iter().last().expect("big started on node2");
    assert_eq!(node, "node2");

    // 2 % of it rewritten on node2 through the clone's device: 328 regions of 64 KiB, half
    // before and half after a kill -9 of the holder process (restarted from its metadata
    // on a new device, its written set reopened: tracking survives it).
    let regions = 1024 * MIB / REGION;
    let written: Vec<u64> = (0..328u64).map(|i| (i * 7919 + 11) % regions).collect();
    let rewrite = |device: &Path, part: std::ops::Range<usize>| {
        let dev = std::fs::OpenOptions::new().write(true).open(device).unwrap();
        for i in part {
            dev.write_all_at(&pseudo_random(9000 + i as u64, REGION as usize), written[i] * REGION).unwrap();
        }
        dev.sync_all().unwrap();
    };
    rewrite(&device, 0..164);
    let pid = f.holder_state(1, "big")["pid"].as_u64().expect("big's holder pid");
    common::netns::run("kill", &["-9", &pid.to_string()]);
    wait_until(
        Duration::from_secs(60),
        || f.starts("big").len() >= 2 && f.holder_state(1, "big")["pid"].as_u64().is_some_and(|p| p != pid),
        || format!("big's holder restarted and its start hook run again\n{}", f.logs()),
    );
    let (_, device) = f.starts("big").into_iter().last().unwrap();
    rewrite(&device, 164..328);
    let want_big = file_sha(&f.agents[1].pool().join("big.img"));
    let want_small = file_sha(&f.agents[1].pool().join("small.img"));
    let want_touched = file_sha(&f.agents[1].pool().join("touched.img"));
    let rewritten = written.len() as u64 * REGION;

    // The plan: big delta, small full and why; nothing changes.
    let (ok, text, logs) = undrain(&f, &["--return", "--dry-run"]);
    assert!(ok, "{text}\n{logs}");
    assert!(text.contains("big: on node2, returning to node1: delta (node1 kept its copy"), "{text}");
    assert!(
        text.contains(
            "small: on node2, returning to node1: full move: node1 no longer holds a copy (deleted by gc or after the retention window)"
        ),
        "{text}"
    );
    // A volume that was never on node1 is refused by name.
    let (ok, text, logs) = undrain(&f, &["--return", "--volume", "elsewhere"]);
    assert!(!ok, "{text}\n{logs}");
    assert!(
        text.contains("refused: volume elsewhere never left node1: it is on node2, where it was created"),
        "{text}"
    );
    let s = f.agents[1].status().unwrap();
    assert_eq!(state_seen(&s, "node1").as_deref(), Some("active"));

    // The returns.
    let (ok, text, logs) = undrain(&f, &["--return", "--wait", "--verify", "--deadline", "300s", "--json"]);
    assert!(ok, "{text}\n{logs}");
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let ret = |id: &str| report["returns"].as_array().unwrap().iter().find(|r| r["volume"] == id).cloned().unwrap();
    let big = ret("big");
    assert_eq!((big["result"].as_str(), big["mode"].as_str()), (Some("returned"), Some("delta")), "{big}");
    assert_eq!(big["verified"], true, "node2 checked node1's digest, the kept regions read from node1's copy: {big}");
    let copied = big["fetched_bytes"].as_u64().unwrap();
    let size = 1024 * MIB;
    eprintln!(
        "big: 1 GiB, {} rewritten on node2 ({:.2} %); the return copied {copied} bytes ({:.2} %)",
        rewritten,
        rewritten as f64 * 100.0 / size as f64,
        copied as f64 * 100.0 / size as f64
    );
    assert!(copied * 1000 <= size * 25, "copied {copied} bytes, more than 2.5 % of {size}");
    assert!(copied >= rewritten, "copied {copied} bytes, less than the {rewritten} rewritten");
    let small = ret("small");
    assert_eq!((small["result"].as_str(), small["mode"].as_str()), (Some("returned"), Some("full")), "{small}");
    assert_eq!(
        small["reason"].as_str(),
        Some("node1 no longer holds a copy (deleted by gc or after the retention window)"),
        "{small}"
    );
    // Everything node2 holds of it (its 8 MiB of data; the rest is a hole, never fetched).
    assert!(small["fetched_bytes"].as_u64() >= Some(8 * MIB), "{small}");
    // Planned as a delta (node1 kept it), made full by node1's holder: reported as full.
    let touched = ret("touched");
    assert_eq!((touched["result"].as_str(), touched["mode"].as_str()), (Some("returned"), Some("full")), "{touched}");
    let why = format!("the copy kept here ({}) changed ", touched_copy.display());
    assert!(
        touched["reason"].as_str().is_some_and(|r| r.starts_with(&why) && r.ends_with(" ms after it was handed off")),
        "{touched}"
    );
    assert!(touched["fetched_bytes"].as_u64() >= Some(8 * MIB), "{touched}");
    let v = f.volume(0, "touched").unwrap();
    assert!(v["return_mode"].as_str().is_some_and(|m| m.starts_with(&format!("full: {why}"))), "{v}");

    // The bytes on node1 are node2's.
    assert_eq!(file_sha(&f.agents[0].pool().join("big.img")), want_big);
    assert_eq!(file_sha(&f.agents[0].pool().join("small.img")), want_small);
    assert_eq!(file_sha(&touched_copy), want_touched);
    let v = f.volume(1, "big").unwrap();
    assert_eq!((v["owner"].as_str(), v["phase"].as_str()), (Some("node1"), Some("held")), "{v}");
}

#[test]
fn netns_roll_with_return_brings_the_volume_back_copying_what_its_command_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 2);
    offer_room(&mut f);
    random_volume(&f, "vol", 256);
    // The roll's command, run on node1 once drained: rewrites 16 regions of vol through
    // node2's clone device (found in the start hook's record).
    let script = f.root.join("rewrite.sh");
    let body = format!(
        "#!/bin/sh\nset -e\ndev=$(tail -n1 {}/started-vol | cut -d' ' -f2)\n\
         for i in $(seq 0 15); do dd if=/dev/urandom of=$dev bs=65536 count=1 seek=$((i * 97 + 5)) oflag=direct conv=notrunc 2>/dev/null; done\nsync\n",
        f.root.display()
    );
    std::fs::write(&script, body).unwrap();
    common::netns::run("chmod", &["+x", script.to_str().unwrap()]);
    let exec = script.display().to_string();
    let out = f.agents[1].cli(&[
        "roll",
        "--nodes",
        "node1",
        "--exec",
        &exec,
        "--undrain-after",
        "--return",
        "--wait",
        "--deadline",
        "300s",
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "roll: {text}\n{}", f.logs());
    let back = |v: &serde_json::Value| {
        v["owner"] == "node1" && v["phase"] == "held" && v["arrived_from"] == "node2" && v["source_phase"] != "cut_over"
    };
    wait_until(
        Duration::from_secs(120),
        || f.volume(1, "vol").is_some_and(|v| back(&v)),
        || format!("vol back on node1: {:?}\n{}", f.volume(1, "vol"), f.logs()),
    );
    let v = f.volume(1, "vol").unwrap();
    let copied = v["fetched_bytes"].as_u64().unwrap();
    eprintln!("roll --return: 256 MiB volume, 16 regions rewritten while away; the return copied {copied} bytes");
    assert_eq!(copied, 16 * REGION, "{v}");
    assert_eq!(file_sha(&f.agents[0].pool().join("vol.img")), file_sha(&f.agents[1].pool().join("vol.img")));
}
