//! The holder keeps serving while its agent restarts (docs/holder-process.md): agents in
//! network namespaces on the userspace mesh, our iSCSI target on the source, the
//! userspace clone engine in a holder process on the holder node, an ext4 workload on
//! its device writing and reading checksummed records while it hydrates. Root only.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{Fleet, check_files, ext4_volume, run, tail};
use common::wait_until;
use meshdrain::cli::demo::workload::{Mounted, pseudo_random, sha};

/// Records of 64 KiB, fsynced, and re-reads of older ones, checked against a ledger kept
/// outside the volume; every I/O error is counted, never fatal, and the longest single
/// I/O (a write + fsync, or a read) is the stall.
struct Workload {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Outcome>>,
    ledger: Arc<Mutex<BTreeMap<String, String>>>,
}

#[derive(Default)]
struct Outcome {
    written: u64,
    read_ok: u64,
    errors: Vec<String>,
    corrupt: u64,
    longest: Duration,
    /// Every record written, with its sha256.
    ledger: Vec<(String, String)>,
}

/// Records the workload keeps: older ones are deleted (600 x 64 KiB = 37.5 MiB of the
/// volume's ~150 MiB free).
const KEPT: usize = 600;

impl Workload {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let (stop2, ledger2, dir) = (stop.clone(), ledger.clone(), dir.join("records"));
        std::fs::create_dir_all(&dir).unwrap();
        let thread = std::thread::spawn(move || {
            let mut o = Outcome::default();
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) && n < 5000 {
                let name = format!("r-{n:05}.bin");
                let data = pseudo_random(0xABCD + n, 64 << 10);
                let t = Instant::now();
                let wrote = std::fs::File::create(dir.join(&name)).and_then(|mut f| {
                    f.write_all(&data)?;
                    f.sync_all()
                });
                o.longest = o.longest.max(t.elapsed());
                match wrote {
                    Ok(()) => {
                        let oldest = {
                            let mut l = ledger2.lock().unwrap();
                            l.insert(name, sha(&data));
                            // At most KEPT records (KEPT x 64 KiB): a run that writes fast
                            // must not fill the volume (ENOSPC is not what this test is about).
                            if l.len() > KEPT { l.pop_first().map(|(k, _)| k) } else { None }
                        };
                        if let Some(old) = oldest
                            && let Err(e) = std::fs::remove_file(dir.join(&old))
                        {
                            o.errors.push(format!("remove {old}: {e}"));
                        }
                        o.written += 1;
                    }
                    Err(e) => o.errors.push(format!("write {name}: {e}")),
                }
                let old = {
                    let l = ledger2.lock().unwrap();
                    (!l.is_empty())
                        .then(|| l.iter().nth((n as usize * 7919) % l.len()).map(|(k, v)| (k.clone(), v.clone())))
                };
                if let Some(Some((name, want))) = old {
                    let t = Instant::now();
                    let read = std::fs::read(dir.join(&name));
                    o.longest = o.longest.max(t.elapsed());
                    match read {
                        Ok(d) if sha(&d) == want => o.read_ok += 1,
                        Ok(_) => o.corrupt += 1,
                        Err(e) => o.errors.push(format!("read {name}: {e}")),
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            o
        });
        Self { stop, thread: Some(thread), ledger }
    }

    fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut o = self.thread.take().unwrap().join().unwrap();
        o.ledger = self.ledger.lock().unwrap().iter().map(|(k, v)| (format!("records/{k}"), v.clone())).collect();
        o
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts `id` is still hydrating (a restart now is mid-hydration).
fn assert_mid_hydration(f: &Fleet, id: &str, what: &str) {
    let (h, t) = f.hydration(id);
    assert!(h > 0 && h < t, "{what} must come mid-hydration: {h} of {t} regions\n{}", f.logs());
}

#[test]
fn netns_holder_serves_the_workload_through_agent_kill_upgrade_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 3);
    let seeded = ext4_volume(&f, "db", 256, 96);
    // 96 MiB at 2 MiB/s: hydration lasts ~50 s, through three agent restarts.
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "2M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(60), || !f.starts("db").is_empty(), || format!("db to start\n{}", f.logs()));
    let (holder, dev) = f.starts("db")[0].clone();
    let i = f.agents.iter().position(|a| a.name == holder).unwrap();
    let pid = f.holder_state(i, "db")["pid"].as_u64().expect("the holder's pid");
    let mnt = f.root.join("dst-db");
    let mount = Mounted::new(&dev, &mnt).expect("mounting the clone device");
    let workload = Workload::start(&mnt);
    wait_until(Duration::from_secs(30), || f.hydration("db").0 > 0, || "hydration to start".to_owned());

    // 1. kill -9 of the holder's agent, restarted.
    std::thread::sleep(Duration::from_secs(2));
    assert_mid_hydration(&f, "db", "the agent's kill -9");
    f.agents[i].kill9();
    std::thread::sleep(Duration::from_secs(1));
    f.agents[i].start();

    // 2. A different build: a copy of the binary with bytes appended (its hash differs).
    std::thread::sleep(Duration::from_secs(3));
    assert_mid_hydration(&f, "db", "the upgrade");
    let other = f.root.join("meshdrain-other-build");
    std::fs::copy(common::BIN, &other).unwrap();
    std::fs::OpenOptions::new().append(true).open(&other).unwrap().write_all(b"another build").unwrap();
    run("chmod", &["+x", other.to_str().unwrap()]);
    assert_ne!(sha(&std::fs::read(&other).unwrap()), sha(&std::fs::read(common::BIN).unwrap()));
    f.agents[i].stop();
    f.agents[i].start_bin(&other);

    // 3. SIGTERM stop, restarted.
    std::thread::sleep(Duration::from_secs(3));
    assert_mid_hydration(&f, "db", "the SIGTERM restart");
    f.agents[i].stop();
    std::thread::sleep(Duration::from_secs(1));
    f.agents[i].start();

    f.wait_drained(0, Duration::from_secs(180));
    let outcome = workload.stop();
    eprintln!(
        "workload: {} records written, {} reads checked, longest I/O stall {:?}, {} errors",
        outcome.written,
        outcome.read_ok,
        outcome.longest,
        outcome.errors.len()
    );
    assert!(
        outcome.errors.is_empty(),
        "the workload saw I/O errors: {:?}",
        &outcome.errors[..outcome.errors.len().min(5)]
    );
    assert_eq!(outcome.corrupt, 0, "records read back different");
    assert!(outcome.written > 100, "the workload ran: {} records", outcome.written);
    // Every record and every seeded file reads back with its checksum.
    check_files(&mnt, &outcome.ledger);
    check_files(&mnt, &seeded);
    mount.unmount().expect("unmounting the clone device");
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&dev).output().unwrap();
    assert!(fsck.status.success(), "e2fsck -fn: {}", String::from_utf8_lossy(&fsck.stdout));

    // One holder process, one device, one start all along.
    assert_eq!(f.starts("db").len(), 1, "the start hook ran once: {:?}", f.starts("db"));
    let state = f.holder_state(i, "db");
    assert_eq!(state["pid"].as_u64(), Some(pid), "the same holder process served throughout");
    assert_eq!(state["handed_off"], true);
    let log = f.agents[i].log();
    assert_eq!(log.matches("adopted the running holder process").count(), 3, "{}", tail(&log));
    // The agent of the other build saw its holder run another binary; FUSE + loop cannot
    // hand its device over, so the holder kept its binary (docs/holder-process.md, "Upgrades").
    assert_eq!(log.matches("keeps that binary until its volume moves").count(), 1, "{}", tail(&log));
    assert!(log.contains("start hook not run again"), "{}", tail(&log));
    // The hand-off was a planned close: no lost-connection warnings on either side.
    let holder_log = std::fs::read_to_string(f.agents[i].cfg.run_dir().join("clones").join("db.log")).unwrap();
    assert!(holder_log.contains("logged out of the source"), "{}", tail(&holder_log));
    let after = holder_log.split("logged out of the source").nth(1).unwrap_or_default();
    for bad in ["connection lost; reconnecting", "giving up on the session"] {
        assert!(!after.contains(bad), "after the hand-off the holder logged {bad:?}:\n{}", tail(&holder_log));
    }
    let source_log = f.agents[0].log();
    assert!(
        !source_log.contains("session fenced or export closed; dropping connection"),
        "the source found a session to drop when it closed its export:\n{}",
        tail(&source_log)
    );
}

#[test]
fn netns_holder_process_killed_is_restarted_from_its_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::new(tmp.path(), 3);
    let hook = f.start_hook();
    let out = f.agents[0].cli(&["volume", "create", "v", "--size", "24M", "--hook-start", &hook]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = pseudo_random(77, 24 << 20);
    std::fs::write(f.agents[0].pool().join("v.img"), &data).unwrap();
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(60), || !f.starts("v").is_empty(), || format!("v to start\n{}", f.logs()));
    let (holder, first_dev) = f.starts("v")[0].clone();
    let i = f.agents.iter().position(|a| a.name == holder).unwrap();
    wait_until(Duration::from_secs(30), || f.hydration("v").0 > 0, || "hydration to start".to_owned());
    assert_mid_hydration(&f, "v", "the holder's kill -9");
    let pid = f.holder_state(i, "v")["pid"].as_u64().unwrap();
    run("kill", &["-9", &pid.to_string()]);

    wait_until(
        Duration::from_secs(30),
        || {
            f.agents[i]
                .log()
                .contains("holder process killed by signal 9 (SIGKILL); restarting it from its clone metadata")
        },
        || format!("the agent to report the dead holder\n{}", tail(&f.agents[i].log())),
    );
    f.wait_drained(0, Duration::from_secs(90));
    let got = std::fs::read(f.agents[i].pool().join("v.img")).unwrap();
    assert_eq!(sha(&got), sha(&data), "bytes on {holder}");
    let new_pid = f.holder_state(i, "v")["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid, "a new holder process");
    // The device changed, so the workload was started again on the new one.
    let starts = f.starts("v");
    assert_eq!(starts.len(), 2, "the start hook ran again: {starts:?}");
    assert_eq!(starts[1].0, holder);
    let _ = first_dev;
    assert!(f.agents[i].log().contains("running the start hook again"), "{}", tail(&f.agents[i].log()));
}

#[test]
fn netns_holder_found_dead_when_its_agent_restarts_is_restarted_and_the_workload_started_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Fleet::new(tmp.path(), 3);
    let hook = f.start_hook();
    let out = f.agents[0].cli(&["volume", "create", "v", "--size", "24M", "--hook-start", &hook]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = pseudo_random(78, 24 << 20);
    std::fs::write(f.agents[0].pool().join("v.img"), &data).unwrap();
    let out = f.agents[0].cli(&["drain", "node1", "--rate-limit", "4M"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(60), || !f.starts("v").is_empty(), || format!("v to start\n{}", f.logs()));
    let holder = f.starts("v")[0].0.clone();
    let i = f.agents.iter().position(|a| a.name == holder).unwrap();
    wait_until(Duration::from_secs(30), || f.hydration("v").0 > 0, || "hydration to start".to_owned());
    assert_mid_hydration(&f, "v", "the node's crash");
    // The whole node goes down: agent and holder process.
    let pid = f.holder_state(i, "v")["pid"].as_u64().unwrap();
    f.agents[i].kill9();
    run("kill", &["-9", &pid.to_string()]);
    std::thread::sleep(Duration::from_secs(1));
    f.agents[i].start();

    f.wait_drained(0, Duration::from_secs(90));
    let got = std::fs::read(f.agents[i].pool().join("v.img")).unwrap();
    assert_eq!(sha(&got), sha(&data), "bytes on {holder}");
    let log = f.agents[i].log();
    assert!(log.contains("holder process found dead when the agent started"), "{}", tail(&log));
    assert_eq!(f.starts("v").len(), 2, "started again on the new device: {:?}", f.starts("v"));
    assert_ne!(f.holder_state(i, "v")["pid"].as_u64(), Some(pid), "a new holder process");

    // Down again after the hand-off: the holder comes back at the agent's start without
    // the source (the dest is the volume), and the workload is started on its device.
    let pid = f.holder_state(i, "v")["pid"].as_u64().unwrap();
    f.agents[i].kill9();
    run("kill", &["-9", &pid.to_string()]);
    std::thread::sleep(Duration::from_secs(1));
    f.agents[i].start();
    wait_until(Duration::from_secs(30), || f.starts("v").len() == 3, || format!("a third start\n{}", f.logs()));
    let state = f.holder_state(i, "v");
    assert_eq!(state["handed_off"], true, "{state}");
    let dev = f.starts("v")[2].1.clone();
    let mut on_device = std::fs::read(&dev).unwrap();
    on_device.truncate(data.len());
    assert_eq!(sha(&on_device), sha(&data), "the restarted holder serves the volume on {}", dev.display());
}
