//! Whole drains over the real data path: `meshdrain agent` processes in network
//! namespaces on one bridge (underlay 198.18.0.0/24) joined by the userspace WireGuard
//! mesh (fleet CA, one seed each), our iSCSI target on the source's mesh address, the userspace clone engine on the holder exposed as a loop device, ext4 on the
//! volume, a workload writing to it while it hydrates. Root only (netns, loop, FUSE).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netns::{Fleet, check_files, ext4_volume, run, tail, write_files};
use common::{state_seen, wait_until};
use meshdrain::cli::demo::workload::{Mounted, pseudo_random, sha};

#[test]
fn netns_drain_moves_two_volumes_over_iscsi_while_the_workload_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::new(tmp.path(), 3);
    let before = ext4_volume(&f, "db", 128, 24);
    // A raw volume next to it: its bytes must arrive exactly.
    let out = f.agents[0].cli(&["volume", "create", "raw", "--size", "32M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let raw = pseudo_random(42, 32 << 20);
    std::fs::write(f.agents[0].pool().join("raw.img"), &raw).unwrap();

    // Slow hydration so the workload runs on an unhydrated clone; --verify: holders digest
    // what they read while the workload writes, node1 checks before it accepts `done`.
    let out = f.agents[1].cli(&["drain", "node1", "--rate-limit", "4M", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (holder, dev) = f.started("db");
    assert_ne!(holder, "node1");
    let mnt = f.root.join("dst-db");
    let mount = Mounted::new(&dev, &mnt).expect("mounting the clone device");
    // Reads of regions not yet copied are fetched on demand.
    check_files(&mnt, &before);
    let v = f.volume(0, "db").expect("db listed");
    assert_eq!(v["phase"], "cut_over", "the workload reads before hydration ends: {v}");
    let during = write_files(&mnt, "during", 8, 512 << 10);
    run("sync", &[]);

    f.wait_drained(1, Duration::from_secs(120));
    check_files(&mnt, &before);
    check_files(&mnt, &during);
    mount.unmount().expect("unmounting the clone device");
    let fsck = Command::new("fsck.ext4").args(["-fn"]).arg(&dev).output().unwrap();
    assert!(fsck.status.success(), "fsck after the move: {}", String::from_utf8_lossy(&fsck.stdout));

    // It went over the real path: our target on node1, a clone device on the holder.
    assert!(f.agents[0].log().contains("export opened"), "node1 log:\n{}", tail(&f.agents[0].log()));
    // The clone runs in a holder process with a log of its own (docs/holder-process.md).
    let holder_log =
        std::fs::read_to_string(f.agent(&holder).cfg.run_dir().join("clones").join("db.log")).unwrap_or_default();
    assert!(holder_log.contains("clone exposed"), "{holder}'s holder log:\n{}", tail(&holder_log));
    let verified = f.agents[0].log().matches("verified: the holder read exactly the bytes held here").count();
    assert_eq!(verified, 2, "both volumes verified; node1 log:\n{}", tail(&f.agents[0].log()));

    // The raw volume went to the other node (placement spreads one drain) byte for byte.
    let raw_owner = f.volume(0, "raw").unwrap()["owner"].as_str().unwrap().to_owned();
    assert_ne!(raw_owner, "node1");
    assert_ne!(raw_owner, holder, "one drain's volumes spread across targets");
    let got = std::fs::read(f.agent(&raw_owner).pool().join("raw.img")).unwrap();
    assert_eq!(sha(&got), sha(&raw), "raw volume bytes on {raw_owner}");

    // The source keeps its copies until gc, and only then deletes them.
    assert!(f.agents[0].pool().join("db.img").exists());
    let out = f.agents[0].cli(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(
        Duration::from_secs(10),
        || !f.agents[0].pool().join("db.img").exists() && !f.agents[0].pool().join("raw.img").exists(),
        || "gc to delete node1's handed-off copies".to_owned(),
    );
}

/// A raw volume of `mib` MiB on node1; returns its bytes' sha256.
fn raw_volume(f: &Fleet, id: &str, mib: usize) -> String {
    let size = format!("{mib}M");
    let out = f.agents[0].cli(&["volume", "create", id, "--size", &size]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = pseudo_random(mib as u64 * 31 + id.len() as u64, mib << 20);
    std::fs::write(f.agents[0].pool().join(format!("{id}.img")), &data).unwrap();
    sha(&data)
}

/// Waits until `id` is cut over and partly hydrated; returns its holder's index.
fn hydrating(f: &Fleet, id: &str) -> usize {
    let mut holder = String::new();
    wait_until(
        Duration::from_secs(60),
        || match f.volume(0, id) {
            Some(v)
                if v["phase"] == "cut_over"
                    && v["hydrated"].as_u64().unwrap_or(0) > 0
                    && v["hydrated"].as_u64() < v["total"].as_u64() =>
            {
                holder = v["holder"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || format!("{id} to be hydrating: {:?}", f.volume(0, id)),
    );
    f.agents.iter().position(|a| a.name == holder).unwrap()
}

fn owner_sha(f: &Fleet, id: &str) -> (String, Option<String>) {
    // Gossip reaches observers at different times: wait until this one sees the move.
    let mut owner = String::new();
    wait_until(
        Duration::from_secs(30),
        || match f.volume(1, id) {
            Some(v) if v["owner"] != "node1" && v["phase"] == "held" => {
                owner = v["owner"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || format!("node2 to see {id} owned by its new node: {:?}", f.volume(1, id)),
    );
    let data = std::fs::read(f.agent(&owner).pool().join(format!("{id}.img"))).ok();
    (owner, data.map(|d| sha(&d)))
}

#[test]
fn netns_drain_holder_agent_killed_mid_hydration_adopts_its_running_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 3);
    let want = raw_volume(&f, "v", 24);
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let i = hydrating(&f, "v");
    let holder = f.agents[i].name.clone();
    let state = f.agents[i].cfg.run_dir().join("clones").join("v.state");
    let before: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    f.agents[i].kill9();
    // Dead after cut-over: stranded on it, never revoked; the source keeps its copy.
    wait_until(
        Duration::from_secs(30),
        || f.volume(0, "v").is_some_and(|v| v["stranded"] == true),
        || format!("the source to show v stranded: {:?}", f.volume(0, "v")),
    );
    let src = std::fs::read(f.agents[0].pool().join("v.img")).map(|d| sha(&d)).ok();
    assert_eq!(src.as_deref(), Some(want.as_str()), "the source keeps its copy");
    // The holder process outlived its agent (docs/holder-process.md).
    let pid = before["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "holder process {pid} outlived its agent");
    f.agents[i].start();
    f.wait_drained(0, Duration::from_secs(90));
    let (owner, got) = owner_sha(&f, "v");
    assert_eq!(owner, holder, "cut over: the same holder resumes, never re-placed\n{}", f.logs());
    assert_eq!(got.as_deref(), Some(want.as_str()), "bytes on {owner}");
    let log = f.agents[i].log();
    assert!(log.contains("adopted the running holder process"), "adopted: {}", tail(&log));
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!((after["pid"].as_u64(), &after["device"]), (Some(pid), &before["device"]), "same process, same device");
}

#[test]
fn netns_drain_source_killed_mid_hydration_stalls_the_holder_until_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 3);
    let want = raw_volume(&f, "v", 24);
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hydrating(&f, "v");
    f.agents[0].kill9();
    wait_until(
        Duration::from_secs(30),
        || f.volume(1, "v").is_some_and(|v| v["stalled"] == true),
        || format!("the holder to report stalled: {:?}", f.volume(1, "v")),
    );
    let src = f.agents[0].pool().join("v.img");
    assert_eq!(std::fs::read(&src).map(|d| sha(&d)).ok().as_deref(), Some(want.as_str()), "nothing deleted");
    f.agents[0].start();
    f.wait_drained(1, Duration::from_secs(90));
    let (owner, got) = owner_sha(&f, "v");
    assert_ne!(owner, "node1");
    assert_eq!(got.as_deref(), Some(want.as_str()), "bytes on {owner}");
}

#[test]
fn netns_drain_partition_between_source_and_holder_heals_and_hydration_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::new(tmp.path(), 3);
    let want = raw_volume(&f, "v", 24);
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let i = hydrating(&f, "v");
    f.lan.set_link(i, false).unwrap();
    // Seen from the holder's side of the cut: the source is unreachable.
    let observer = if i == 1 { 1 } else { 2 };
    wait_until(
        Duration::from_secs(30),
        || f.volume(observer, "v").is_some_and(|v| v["stalled"] == true),
        || format!("the holder to report stalled: {:?}", f.volume(observer, "v")),
    );
    f.lan.set_link(i, true).unwrap();
    f.wait_drained(0, Duration::from_secs(90));
    let (owner, got) = owner_sha(&f, "v");
    assert_eq!(owner, f.agents[i].name, "the partitioned holder kept its lease\n{}", f.logs());
    assert_eq!(got.as_deref(), Some(want.as_str()), "bytes on {owner}");
}

#[test]
fn netns_drain_holder_lost_before_cut_over_is_replaced_and_discards_its_clone_on_return() {
    let tmp = tempfile::tempdir().unwrap();
    // Every clone setup takes 3 s: time to kill the first holder while it prepares.
    let mut f = Fleet::with(tmp.path(), 4, |d| d.test_prepare_delay_ms = 3000);
    let want = raw_volume(&f, "v", 8);
    let out = f.agents[0].cli(&["drain", "node1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut first = String::new();
    wait_until(
        Duration::from_secs(30),
        || match f.volume(0, "v") {
            Some(v) if v["phase"] == "granted" && v["holder_phase"] == "preparing" => {
                first = v["holder"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || "a holder to be preparing".to_owned(),
    );
    let i = f.agents.iter().position(|a| a.name == first).unwrap();
    let pool = f.agents[i].pool();
    wait_until(Duration::from_secs(10), || pool.join("v.clone-meta").exists(), || "the partial clone".to_owned());
    f.agents[i].kill9();

    f.wait_drained(0, Duration::from_secs(90));
    let (owner, got) = owner_sha(&f, "v");
    assert_ne!(owner, first, "re-placed on another node");
    assert_eq!(got.as_deref(), Some(want.as_str()), "bytes on {owner}");
    let v = f.volume(0, "v").unwrap();
    assert!(v["epoch"].as_u64().unwrap() >= 2, "revoked with a newer epoch: {v}");

    // The old holder returns, sees the newer epoch and throws its partial clone away.
    f.agents[i].start();
    wait_until(
        Duration::from_secs(30),
        || !pool.join("v.img").exists() && !pool.join("v.clone-meta").exists(),
        || format!("{first} to discard its partial clone; log:\n{}", tail(&f.agents[i].log())),
    );
    assert_eq!(owner_sha(&f, "v").0, owner, "ownership did not move again");
}

#[test]
fn netns_demo_moves_a_live_ext4_volume_and_verifies_every_record() {
    let out = common::meshdrain(&["demo", "--json", "--size", "128M", "--fill", "20", "--rate-limit", "16M"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("a summary line");
    let s: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(s["fsck_clean"], true, "{s}");
    assert_eq!(s["records_corrupt"], 0, "{s}");
    assert!(s["workload_records_written"].as_u64().unwrap() > 0, "the workload ran: {s}");
    assert_eq!(s["volume_bytes"], 128 << 20);
    // Only allocated regions are fetched: about the 25 MiB of files plus ext4 metadata,
    // never the whole volume.
    let copied = s["bytes_copied"].as_u64().unwrap();
    assert!((20 << 20..64 << 20).contains(&copied), "unallocated regions are not copied: {s}");
    for key in ["cutover_s", "hydration_mb_per_s"] {
        assert!(s[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {s}");
    }
    // The cut-over's milestones come in protocol order and end at the cut-over.
    let p = &s["cutover_phases"];
    let at: Vec<f64> = ["stop_hook_s", "source_unmounted_s", "start_hook_s", "mounted_s"]
        .iter()
        .map(|k| p[k].as_f64().unwrap_or_else(|| panic!("cutover_phases.{k}: {s}")))
        .collect();
    assert!(at[0] > 0.0 && at.windows(2).all(|w| w[0] <= w[1]), "milestones out of order: {p}");
    assert!(at[3] <= s["cutover_s"].as_f64().unwrap(), "mounted after the cut-over: {s}");
    assert_ne!(s["new_owner"], "node1");
    let dir = s["dir"].as_str().unwrap();
    assert!(!Path::new(dir).exists(), "the demo removes its state dir");
}

/// `volume move` (issue 21) over the real data path: one of node1's two volumes moves to
/// node3 (asked on node2), checksums equal; node1 stays active and keeps serving the
/// other: its `stop` hook never ran, its bytes never changed.
#[test]
fn netns_volume_move_moves_one_of_two_volumes_off_a_node_that_keeps_serving_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::new(tmp.path(), 3);
    let moved = raw_volume(&f, "a", 32);
    let marker = f.root.join("b-stopped");
    let hook = format!("touch {}", marker.display());
    let out = f.agents[0].cli(&["volume", "create", "b", "--size", "16M", "--hook-stop", &hook]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = pseudo_random(99, 16 << 20);
    std::fs::write(f.agents[0].pool().join("b.img"), &data).unwrap();

    let out = f.agents[1].cli(&["volume", "move", "a", "--to", "node3", "--wait", "--deadline", "45s"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "volume move --wait: {text}\n{}", f.logs());
    assert!(text.contains("a: moved node1 -> node3 in"), "{text}");

    assert_eq!(owner_sha(&f, "a"), ("node3".to_owned(), Some(moved)));
    let b = f.volume(1, "b").unwrap();
    assert_eq!((b["owner"].as_str(), b["phase"].as_str()), (Some("node1"), Some("held")));
    assert_eq!(std::fs::read(f.agents[0].pool().join("b.img")).map(|d| sha(&d)).ok(), Some(sha(&data)));
    assert!(!marker.exists(), "b's stop hook ran on node1");
    let s = f.agents[1].status().unwrap();
    assert_eq!(state_seen(&s, "node1").as_deref(), Some("active"));
}
