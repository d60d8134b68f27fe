//! The workload on each moving volume: a writer on its ext4 filesystem appending records
//! (64 KiB of pseudo-random bytes each), each acknowledged only once the file and its
//! directory are fsynced; the acknowledged list, with each record's sha256 and the node
//! and stint it was written in, lives in this process (outside the volume). The volume's
//! hooks tell the driver when to quiesce it (stop) and where it runs next (start), through
//! files under the run's `hooks/` directory (docs/chaos.md, "The workload").

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshdrain::cli::demo::workload::{Mounted, pseudo_random, sha};

/// One acknowledged record.
#[derive(Debug, Clone)]
pub struct Record {
    /// sha256 of its bytes.
    pub sha: String,
    /// The node it was written on.
    pub node: String,
}

/// Acknowledged records by file name, kept outside the volume.
pub type Ledger = Arc<Mutex<BTreeMap<String, Record>>>;

/// Bytes per record.
const RECORD: usize = 16 * 1024;
/// Records kept per volume: past this the oldest is deleted (un-acknowledged first), so
/// a long run never fills the filesystem.
const KEPT: usize = 400;

/// What the writers of one volume share across stints.
#[derive(Default)]
struct Shared {
    /// Record numbers.
    seq: AtomicU64,
    /// Records written, oldest first (seed records are never deleted).
    order: Mutex<std::collections::VecDeque<String>>,
    /// Nodes whose writes were given up (`node lost --accept-data-loss`): not re-read.
    forfeited: Mutex<BTreeSet<String>>,
}

/// A writer running on one mount.
struct Stint {
    node: String,
    device: PathBuf,
    stop: Arc<AtomicBool>,
    /// Mounts, then writes; hands the mount back when it ends (none if the mount failed).
    thread: Option<JoinHandle<Ended>>,
}

/// How a stint's writer ended, and its mount.
type Ended = (Result<(), String>, Option<Mounted>);

/// The workload of one volume across its mounts.
pub struct VolumeWork {
    /// Volume id.
    pub id: String,
    /// The acknowledged records.
    pub ledger: Ledger,
    hooks: PathBuf,
    mnt: PathBuf,
    shared: Arc<Shared>,
    stints: u32,
    current: Option<Stint>,
    seen_starts: BTreeSet<String>,
    /// What happened, in order (for the run's report).
    pub events: Vec<String>,
    /// Stints that ended in an I/O error.
    pub io_errors: u32,
    /// Start hooks that ran on one node while the workload still ran on another live one.
    pub double_starts: Vec<String>,
    /// The last device the workload was started on.
    pub last_device: Option<(String, PathBuf)>,
}

/// Writes the stop and start hook scripts into `hooks`; returns their paths.
pub fn write_hooks(hooks: &Path) -> anyhow::Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(hooks)?;
    let d = hooks.display();
    let stop = hooks.join("stop.sh");
    std::fs::write(
        &stop,
        format!(
            "#!/bin/sh\n# chaos: ask the driver to quiesce the workload, wait for its ack\n\
             t=$(date +%s%N); f={d}/$MESHDRAIN_VOLUME.stop.$t\n\
             echo \"$MESHDRAIN_NODE\" > $f.tmp && mv $f.tmp $f\n\
             for i in $(seq 3000); do [ -e $f.ack ] && exit 0; sleep 0.01; done\n\
             echo 'chaos: the workload did not stop within 30 s' >&2; exit 1\n"
        ),
    )?;
    let start = hooks.join("start.sh");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\n# chaos: tell the driver where the workload runs now\n\
             t=$(date +%s%N); f={d}/$MESHDRAIN_VOLUME.start.$t\n\
             echo \"$MESHDRAIN_NODE $MESHDRAIN_DEVICE\" > $f.tmp && mv $f.tmp $f\n"
        ),
    )?;
    for p in [&stop, &start] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((stop.display().to_string(), start.display().to_string()))
}

impl VolumeWork {
    /// The workload of volume `id`, mounting under `mnt`, hooks talking through `hooks`.
    pub fn new(id: &str, hooks: &Path, mnt: &Path) -> Self {
        Self {
            id: id.to_owned(),
            ledger: Ledger::default(),
            hooks: hooks.to_owned(),
            mnt: mnt.to_owned(),
            shared: Arc::default(),
            stints: 0,
            current: None,
            seen_starts: BTreeSet::new(),
            events: Vec::new(),
            io_errors: 0,
            double_starts: Vec::new(),
            last_device: None,
        }
    }

    /// Writes `count` seed records of `size` bytes into the filesystem on `image`
    /// (node1's pool file), acknowledged once synced.
    pub fn seed(&mut self, image: &Path, count: usize, size: usize) -> anyhow::Result<()> {
        let dir = self.mnt.join(format!("{}-seed", self.id));
        let m = Mounted::new(image, &dir)?;
        std::fs::create_dir_all(dir.join("data"))?;
        let mut names = Vec::new();
        for i in 0..count {
            let name = format!("data/seed-{i:03}.bin");
            let data = pseudo_random(0x5EED ^ (i as u64) << 8 ^ self.id.len() as u64, size);
            std::fs::write(dir.join(&name), &data)?;
            names.push((name, sha(&data)));
        }
        let f = std::fs::File::open(&dir)?;
        nix::unistd::syncfs(&f)?;
        drop(f);
        m.unmount()?;
        let mut l = self.ledger.lock().expect("ledger lock");
        for (name, sha) in names {
            l.insert(name, Record { sha, node: "node1".to_owned() });
        }
        Ok(())
    }

    /// Starts the workload on `device` (a file goes through a loop device) on `node`.
    pub fn start_on(&mut self, node: &str, device: &Path) {
        self.stints += 1;
        let stint = self.stints;
        let dir = self.mnt.join(format!("{}-{stint}", self.id));
        self.last_device = Some((node.to_owned(), device.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, ledger, shared, node2) = (stop.clone(), self.ledger.clone(), self.shared.clone(), node.to_owned());
        let dev = device.to_owned();
        // The mount reads through the clone (slow under packet loss, hanging while the
        // source is unreachable): on the writer's thread, never on the driver's loop.
        let thread = std::thread::spawn(move || -> Ended {
            let mount = match Mounted::new(&dev, &dir) {
                Ok(m) => m,
                Err(e) => return (Err(format!("mount {} failed: {e:#}", dev.display())), None),
            };
            (write_records(&dir, &ledger, &shared, &node2, stint, &stop2), Some(mount))
        });
        self.note(format!("stint {stint}: workload starting on {node} ({})", device.display()));
        self.current = Some(Stint { node: node.to_owned(), device: device.to_owned(), stop, thread: Some(thread) });
    }

    /// Whether the workload runs on `node` now.
    pub fn runs_on(&self, node: &str) -> bool {
        self.current.as_ref().is_some_and(|s| s.node == node)
    }

    /// Stops the current stint: `sync` syncs the filesystem (a quiesce), else it is a crash
    /// (the node is gone: writes in flight were never acknowledged). Unmounts lazily.
    pub fn stop(&mut self, sync: bool) {
        let Some(mut s) = self.current.take() else { return };
        s.stop.store(true, Ordering::Relaxed);
        let Some((res, mount)) = s.thread.take().and_then(|t| join_within(t, Duration::from_secs(10))) else {
            // A writer (or mount) stuck in the kernel: its device does not answer; syncfs
            // and umount would hang the same way. The thread keeps the mount and detaches
            // it lazily when it ends (the teardown unsticks it).
            self.note(format!("{} on {}: the workload did not stop within 10 s", self.id, s.node));
            return;
        };
        if let Err(e) = res {
            self.io_errors += 1;
            self.note(format!("{} on {}: workload stopped by an I/O error: {e}", self.id, s.node));
        }
        let Some(m) = mount else { return };
        let dir = m.0.clone();
        let done = bounded(Duration::from_secs(20), move || -> Result<(), String> {
            if sync {
                let f = std::fs::File::open(&dir).map_err(|e| e.to_string())?;
                nix::unistd::syncfs(&f).map_err(|e| format!("syncfs: {e}"))?;
            }
            m.unmount().map_err(|e| format!("{e:#}"))
        });
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => self.note(format!("{} on {}: quiesce failed ({e}); detached lazily", self.id, s.node)),
            None => {
                self.note(format!("{} on {}: sync and unmount hung for 20 s; left to the teardown", self.id, s.node))
            }
        }
    }

    /// Handles the hook files: acks stop requests after quiescing, (re)starts the
    /// workload where a start hook says. `dead` names nodes that are down (their
    /// workload is crashed, not reported as a second writer).
    pub fn poll_hooks(&mut self, dead: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.hooks) else { return };
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let prefix_stop = format!("{}.stop.", self.id);
        let prefix_start = format!("{}.start.", self.id);
        for name in &names {
            if name.ends_with(".tmp") || name.ends_with(".ack") {
                continue;
            }
            if name.starts_with(&prefix_stop) && !names.contains(&format!("{name}.ack")) {
                let node = std::fs::read_to_string(self.hooks.join(name)).unwrap_or_default().trim().to_owned();
                self.note(format!("stop hook on {node}"));
                if self.current.as_ref().is_some_and(|s| s.node == node) {
                    self.stop(true);
                }
                let _ = std::fs::write(self.hooks.join(format!("{name}.ack")), b"");
            }
            if name.starts_with(&prefix_start) && self.seen_starts.insert(name.clone()) {
                let line = std::fs::read_to_string(self.hooks.join(name)).unwrap_or_default();
                let Some((node, device)) = line.trim().split_once(' ') else { continue };
                self.note(format!("start hook on {node}: {device}"));
                if let Some(s) = &self.current {
                    if s.node != node && !dead.contains(&s.node) {
                        self.double_starts.push(format!(
                            "{}: start hook on {node} while the workload still ran on live {} ({})",
                            self.id,
                            s.node,
                            s.device.display()
                        ));
                    }
                    let sync = s.node == node;
                    self.stop(sync);
                }
                self.start_on(node, Path::new(device));
            }
        }
    }

    /// If the current stint's writer died (an I/O error), ends the stint and records why.
    pub fn reap(&mut self) {
        if self.current.as_ref().is_some_and(|s| s.thread.as_ref().is_some_and(JoinHandle::is_finished)) {
            self.stop(false);
        }
    }

    /// Crashes the workload if it runs on `node` (the node is gone).
    pub fn crash_on(&mut self, node: &str) {
        if self.runs_on(node) {
            self.note(format!("{}: {node} is gone, its workload with it", self.id));
            let errors = self.io_errors;
            self.stop(false);
            // The node died under it: an error of that stint is the fault, not a finding.
            self.io_errors = errors;
        }
    }

    /// The writes made on `node` were given up (`node lost --accept-data-loss`): the
    /// writer no longer re-reads them; the final check still counts them.
    pub fn forfeit(&mut self, node: &str) {
        self.shared.forfeited.lock().expect("forfeited lock").insert(node.to_owned());
    }

    /// Ends the run: stops the writer (synced), checks every acknowledged record through
    /// the live mount, unmounts and fsck's the device. Returns (records checked, records
    /// missing or different by name, fsck clean or the reason not).
    pub fn finish(&mut self) -> (usize, Vec<String>, Result<(), String>) {
        let Some(mut s) = self.current.take() else {
            let n = self.ledger.lock().expect("ledger lock").len();
            let all = self.ledger.lock().expect("ledger lock").keys().cloned().collect();
            return (n, all, Err("the workload was not running at the end: nothing to check".to_owned()));
        };
        s.stop.store(true, Ordering::Relaxed);
        let ledger = self.ledger.clone();
        let all = move || -> Vec<String> { ledger.lock().expect("ledger lock").keys().cloned().collect() };
        let Some((res, mount)) = s.thread.take().and_then(|t| join_within(t, Duration::from_secs(10))) else {
            // Its device does not answer (a clone whose source is gone): reads would hang too.
            let all = all();
            self.note(format!("{} on {}: the workload hangs on its device: records not checked", self.id, s.node));
            return (all.len(), all, Err("the device hangs: not checked".to_owned()));
        };
        if let Err(e) = &res {
            self.io_errors += 1;
            self.note(format!("{} on {}: workload stopped by an I/O error: {e}", self.id, s.node));
        }
        let Some(mount) = mount else {
            let all = all();
            return (all.len(), all, Err("the final mount failed: not checked".to_owned()));
        };
        let (dir, ledger) = (mount.0.clone(), self.ledger.clone());
        // Reads of a clone whose source is gone may hang: bounded, and then unverified.
        let Some((n, bad)) = bounded(Duration::from_secs(30), move || check(&dir, &ledger)) else {
            let all: Vec<String> = self.ledger.lock().expect("ledger lock").keys().cloned().collect();
            self.note(format!("{}: reading the records back hung for 30 s", self.id));
            drop(mount);
            return (all.len(), all, Err("reads hung: not checked".to_owned()));
        };
        let device = s.device.clone();
        let fsck = bounded(Duration::from_secs(90), move || match mount.unmount() {
            Ok(()) => fsck(&device),
            Err(e) => Err(format!("unmount before fsck: {e:#}")),
        })
        .unwrap_or_else(|| Err("unmount or fsck hung: not checked".to_owned()));
        (n, bad, fsck)
    }
}

/// Runs `f` on a thread of its own and waits at most `limit` for it (a thread stuck in
/// the kernel on a device that does not answer is left behind; the teardown unsticks it).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    join_within(std::thread::spawn(f), limit)
}

/// Reads every record of `ledger` under `dir`; returns (count, names missing or different).
pub fn check(dir: &Path, ledger: &Ledger) -> (usize, Vec<String>) {
    let l = ledger.lock().expect("ledger lock").clone();
    let bad = l
        .iter()
        .filter(|(name, r)| std::fs::read(dir.join(name)).map(|d| sha(&d) != r.sha).unwrap_or(true))
        .map(|(name, _)| name.clone())
        .collect();
    (l.len(), bad)
}

/// `e2fsck -fn` of `device`: Ok if clean, else its output's tail.
pub fn fsck(device: &Path) -> Result<(), String> {
    let out = std::process::Command::new("e2fsck").arg("-fn").arg(device).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Pass ") && !l.starts_with("e2fsck "))
        .take(12)
        .collect();
    Err(format!("{}: {}", out.status, lines.join(" | ")))
}

/// Joins `t` if it ends within `limit` (a writer stuck in the kernel is left behind).
fn join_within<T>(t: JoinHandle<T>, limit: Duration) -> Option<T> {
    let start = Instant::now();
    while !t.is_finished() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    if t.is_finished() { t.join().ok() } else { None }
}

/// The writer: a record, fsync of the file and its directory, then the acknowledgement;
/// then a re-read of an older record (on an unhydrated clone it is fetched from the
/// source). Ends at `stop` or at the first error (named).
fn write_records(
    dir: &Path,
    ledger: &Ledger,
    shared: &Shared,
    node: &str,
    stint: u32,
    stop: &AtomicBool,
) -> Result<(), String> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("mkdir data: {e}"))?;
    let sync_dir =
        || std::fs::File::open(&data_dir).and_then(|d| d.sync_all()).map_err(|e| format!("fsync data/: {e}"));
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) && written < 20_000 {
        let n = shared.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("data/{node}-s{stint}-{n:05}.bin");
        let data = pseudo_random(0xDA7A + n, RECORD);
        let mut f = std::fs::File::create(dir.join(&name)).map_err(|e| format!("create {name}: {e}"))?;
        f.write_all(&data).map_err(|e| format!("write {name}: {e}"))?;
        f.sync_all().map_err(|e| format!("fsync {name}: {e}"))?;
        sync_dir()?;
        ledger.lock().expect("ledger lock").insert(name.clone(), Record { sha: sha(&data), node: node.to_owned() });
        written += 1;
        let oldest = {
            let mut order = shared.order.lock().expect("order lock");
            order.push_back(name);
            if order.len() > KEPT { order.pop_front() } else { None }
        };
        if let Some(oldest) = oldest {
            // No longer acknowledged, then gone.
            ledger.lock().expect("ledger lock").remove(&oldest);
            match std::fs::remove_file(dir.join(&oldest)) {
                Ok(()) => sync_dir()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("delete {oldest}: {e}")),
            }
        }
        let old = {
            let forfeited = shared.forfeited.lock().expect("forfeited lock").clone();
            let l = ledger.lock().expect("ledger lock");
            let live: Vec<(&String, &Record)> = l.iter().filter(|(_, r)| !forfeited.contains(&r.node)).collect();
            (!live.is_empty()).then(|| live[(n as usize * 7919) % live.len()]).map(|(k, r)| (k.clone(), r.sha.clone()))
        };
        if let Some((old, want)) = old {
            match std::fs::read(dir.join(&old)) {
                Ok(d) if sha(&d) == want => {}
                Ok(_) => return Err(format!("{old} read back different")),
                // Deleted meanwhile by this writer's rotation (not acknowledged any more).
                Err(_) if !ledger.lock().expect("ledger lock").contains_key(&old) => {}
                Err(e) => return Err(format!("read {old}: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl VolumeWork {
    /// Records an event and prints it (stderr).
    pub fn note(&mut self, line: String) {
        eprintln!("chaos: {line}");
        self.events.push(line);
    }

    /// Whether the workload runs anywhere now.
    pub fn runs_on_any(&self) -> bool {
        self.current.is_some()
    }
}

/// Mounts `file` read-only (through a loop device) at `dir` and returns the acknowledged
/// records of `ledger` that do not read back from it.
pub fn check_file(file: &Path, dir: &Path, ledger: &Ledger) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let out = std::process::Command::new("mount").args(["-o", "ro,loop"]).arg(file).arg(dir).output()?;
    anyhow::ensure!(out.status.success(), "mount {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let (_, bad) = check(dir, ledger);
    let out = std::process::Command::new("umount").arg(dir).output()?;
    anyhow::ensure!(out.status.success(), "umount {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Ok(bad)
}

/// Compares the clone device (its page cache dropped first, so reads go through the
/// clone) with the dest file on the owner's disk, 4 KiB block by block: `None` if equal,
/// else how many blocks differ and the first.
pub fn compare(device: &Path, file: &Path) -> Option<String> {
    use std::io::Read;
    let _ = std::process::Command::new("blockdev").arg("--flushbufs").arg(device).output();
    let (mut a, mut b) = match (std::fs::File::open(device), std::fs::File::open(file)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return Some(format!("cannot open: {:?} {:?}", a.err(), b.err())),
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let (mut differ, mut first, mut offset) = (0u64, None, 0u64);
    loop {
        let na = a.read(&mut ba).unwrap_or(0);
        let nb = b.read(&mut bb[..na.max(1)]).unwrap_or(0);
        if na == 0 || nb == 0 {
            break;
        }
        let n = na.min(nb);
        for (i, (x, y)) in ba[..n].chunks(4096).zip(bb[..n].chunks(4096)).enumerate() {
            if x != y {
                differ += 1;
                first.get_or_insert(offset / 4096 + i as u64);
            }
        }
        offset += n as u64;
    }
    first.map(|f| {
        format!(
            "{differ} blocks of 4 KiB differ between {} and {}, the first block {f}",
            device.display(),
            file.display()
        )
    })
}
