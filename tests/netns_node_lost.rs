//! A node lost for good over the real data path (docs/failures.md): three `meshdrain
//! agent` processes in network namespaces on the userspace mesh, our iSCSI target, the
//! userspace clone in holder processes. The holder of a volume cut over to it dies for
//! good mid-hydration (agent and holder process killed, its /run gone as after a reboot);
//! `node lost` refuses without `--accept-data-loss` (exact text, exit 1), then the source's
//! copy, bytes intact, is the volume again and moves to the last live node; the lost node
//! comes back fenced: state `lost`, its copy set aside, deleted by `gc`. Root only.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::netns::Fleet;
use common::{state_seen, wait_until};
use meshdrain::cli::demo::workload::{pseudo_random, sha};

fn file_sha(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|d| sha(&d))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn netns_a_holder_lost_for_good_after_cut_over_gives_the_volume_back_to_the_source_and_returns_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(tmp.path(), 3);
    let agents = &mut fleet.agents;
    let out = agents[0].cli(&["volume", "create", "db", "--size", "32M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = pseudo_random(17, 32 << 20);
    std::fs::write(agents[0].pool().join("db.img"), &data).unwrap();
    let sum = sha(&data);
    let out = agents[0].cli(&["drain", "node1", "--rate-limit", "2M"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Cut over and hydrating: the holder now has writes the source never sees.
    let mut holder = String::new();
    wait_until(
        Duration::from_secs(60),
        || match agents[0].volume("db") {
            Some(v) if v["phase"] == "cut_over" && v["hydrated"].as_u64().unwrap_or(0) > 0 => {
                holder = v["holder"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || format!("db to be cut over and hydrating: {:?}", agents[0].volume("db")),
    );
    let h = agents.iter().position(|a| a.name == holder).unwrap();
    let other = 3 - h; // the node that is neither node1 nor the holder (indices 1 and 2)
    // The holder dies for good: its agent, its holder process, and /run with a reboot.
    agents[h].kill9();
    meshdrain::dataplane::clone_process::stop_all(&agents[h].cfg.run_dir());
    let _ = std::fs::remove_dir_all(agents[h].cfg.run_dir());
    wait_until(
        Duration::from_secs(30),
        || {
            agents[other].status().is_some_and(|s| {
                s["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|x| x["name"] == holder.as_str() && x["alive"] == false))
            })
        },
        || format!("{holder} to be seen dead"),
    );

    // A live node is not lost.
    let live = agents[other].name.clone();
    let out = agents[0].cli(&["node", "lost", &live]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: node {live} is alive in gossip: a live node is not lost. Stop its agent (or wait for the failure detector), or pass --force if it is cut off for good\n"
        )
    );
    // Without the flag: what would be lost, and exit 1; nothing declared.
    let out = agents[other].cli(&["node", "lost", &holder]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    let head = format!(
        "error: declaring {holder} lost would lose every write made on it since the cut-over of 1 volume(s):\n  db: cut over from node1 at "
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(text.contains(&format!("; {holder} last reported: running, ")), "{text}");
    assert!(text.contains(" regions hydrated\n"), "{text}");
    assert!(
        text.ends_with(&format!(
            "the sources' copies from before the cut-over would become the volumes again; pass --accept-data-loss to do that, or bring {holder} back\n"
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(agents[0].volume("db").unwrap()["phase"], "cut_over", "nothing declared without the flag");

    let out = agents[other].cli(&["node", "lost", &holder, "--accept-data-loss"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.starts_with(&format!("node {holder} declared lost; every agent learns it through gossip and keeps it\n  db: back to node1 (its copy from the cut-over at ")), "{stdout}");

    // The source's copy is the volume again, bytes intact, and (node1 still draining) it
    // moves to the last live node.
    let mut source_copy_checked = false;
    wait_until(
        Duration::from_secs(120),
        || {
            let Some(v) = agents[other].volume("db") else { return false };
            if v["owner"] == "node1" && !source_copy_checked {
                source_copy_checked = file_sha(&agents[0].pool().join("db.img")).as_deref() == Some(sum.as_str());
            }
            v["owner"] == live.as_str() && v["phase"] == "held"
        },
        || format!("db to move to {live}: {:?}\n{}", agents[other].volume("db"), agents[0].log()),
    );
    assert!(source_copy_checked, "node1's copy was the volume again with its bytes intact");
    assert_eq!(file_sha(&agents[other].pool().join("db.img")).as_deref(), Some(sum.as_str()));
    wait_until(
        Duration::from_secs(30),
        || agents[other].status().and_then(|s| state_seen(&s, "node1")).as_deref() == Some("drained"),
        || "node1 to finish its drain".to_owned(),
    );
    assert_eq!(agents[other].status().and_then(|s| state_seen(&s, &holder)).as_deref(), Some("lost"));

    // The lost node comes back: fenced, its copy set aside, nothing served from it.
    agents[h].start();
    let aside: PathBuf = agents[h].pool().join("aside");
    wait_until(
        Duration::from_secs(30),
        || {
            agents[h].status().and_then(|s| state_seen(&s, &holder)).as_deref() == Some("lost")
                && std::fs::read_dir(&aside).map(|d| d.count()).unwrap_or(0) > 0
        },
        || format!("{holder} to know it is lost and set its copy aside:\n{}", agents[h].log()),
    );
    let status = agents[h].status().unwrap();
    let set_aside = &status["lost"]["aside"][0];
    assert_eq!((set_aside["volume"].as_str(), set_aside["role"].as_str()), (Some("db"), Some("holder")));
    let name = format!("db.e{}.img", set_aside["epoch"]);
    assert!(aside.join(&name).exists(), "{name} in {}", aside.display());
    assert!(!agents[h].pool().join("db.img").exists());
    let out = agents[h].cli(&["drain", &holder]);
    assert_eq!(out.status.code(), Some(1), "a fenced node refuses requests: {}", stderr(&out));
    assert_eq!(agents[other].volume("db").unwrap()["owner"], live.as_str());
    // Only gc removes what was set aside.
    std::thread::sleep(Duration::from_secs(1));
    assert!(aside.join(&name).exists());
    let out = agents[h].cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(Duration::from_secs(10), || !aside.join(&name).exists(), || format!("gc to delete {name}"));
}

/// A start hook that records the device the workload would use.
fn start_hook(root: &Path) -> String {
    let script = root.join("start-hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$MESHDRAIN_DEVICE\" > {}/device-$MESHDRAIN_VOLUME\n", root.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script.display().to_string()
}

#[test]
fn netns_a_source_lost_mid_hydration_leaves_an_incomplete_copy_that_fails_fast_and_can_be_kept() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(tmp.path(), 3);
    let agents = &mut fleet.agents;
    let hook = start_hook(tmp.path());
    let out = agents[0].cli(&["volume", "create", "db", "--size", "32M", "--hook-start", &hook]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = pseudo_random(23, 32 << 20);
    std::fs::write(agents[0].pool().join("db.img"), &data).unwrap();
    let out = agents[0].cli(&["drain", "node1", "--rate-limit", "1M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut holder = String::new();
    wait_until(
        Duration::from_secs(60),
        || match agents[1].volume("db") {
            Some(v) if v["phase"] == "cut_over" && v["hydrated"].as_u64().unwrap_or(0) > 0 => {
                holder = v["holder"].as_str().unwrap().to_owned();
                true
            }
            _ => false,
        },
        || "db to be cut over and hydrating".to_owned(),
    );
    let h = agents.iter().position(|a| a.name == holder).unwrap();
    let device = PathBuf::from(std::fs::read_to_string(tmp.path().join("device-db")).unwrap().trim());
    // The source dies for good.
    agents[0].kill9();
    wait_until(
        Duration::from_secs(30),
        || {
            agents[h].status().is_some_and(|s| {
                s["nodes"].as_array().is_some_and(|n| n.iter().any(|x| x["name"] == "node1" && x["alive"] == false))
            })
        },
        || "node1 to be seen dead".to_owned(),
    );
    let out = agents[h].cli(&["node", "lost", "node1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.starts_with(
            "node node1 declared lost; every agent learns it through gossip and keeps it\n  db: incomplete on "
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "regions missing; on {holder} run `meshdrain partial accept db --accept-data-loss` or `meshdrain partial delete db --yes`\n"
        )),
        "{stdout}"
    );
    let mut missing = 0;
    wait_until(
        Duration::from_secs(30),
        || {
            let Some(v) = agents[h].volume("db") else { return false };
            let Some(err) = v["error"].as_str() else { return false };
            let Some(rest) = err.strip_prefix("incomplete: source lost, ") else { return false };
            let (n, total) = rest.strip_suffix(" regions missing").unwrap().split_once(" of ").unwrap();
            missing = n.parse::<u64>().unwrap();
            v["holder_phase"] == "incomplete" && missing > 0 && total.parse::<u64>().unwrap() > missing
        },
        || format!("db to show incomplete: {:?}", agents[h].volume("db")),
    );
    // The end of the volume was never copied (hydration goes from the start): EIO at once.
    let dev = std::fs::File::open(&device).unwrap();
    let mut buf = vec![0u8; 4096];
    let t = std::time::Instant::now();
    let err = dev.read_at(&mut buf, (32 << 20) - 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "the read took {:?}", t.elapsed());
    dev.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data[..4096], "what is here is served");

    // Keeping it needs the flag; then the copy is the volume, missing regions zeros.
    let out = agents[h].cli(&["partial", "accept", "db"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: keeping the partial copy of db makes every region its lost source never sent read as zeros: pass --accept-data-loss to keep it\n"
    );
    let out = agents[h].cli(&["partial", "accept", "db", "--accept-data-loss"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "volume db: the partial copy here is the volume; missing regions read as zeros\n"
    );
    wait_until(
        Duration::from_secs(60),
        || agents[h].volume("db").is_some_and(|v| v["owner"] == holder.as_str() && v["phase"] == "held"),
        || format!("{holder} to own db: {:?}\n{}", agents[h].volume("db"), agents[h].log()),
    );
    let kept = std::fs::read(agents[h].pool().join("db.img")).unwrap();
    assert_eq!(kept.len(), 32 << 20);
    assert_eq!(kept[..4096], data[..4096]);
    assert!(kept[(32 << 20) - 4096..].iter().all(|b| *b == 0), "a missing region reads as zeros");
    drop(fleet);
}
