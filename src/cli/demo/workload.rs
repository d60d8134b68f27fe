//! The demo's workload: a toy database on the volume's ext4 filesystem that keeps
//! appending records (files of pseudo-random bytes, fsynced) and re-reading old ones,
//! checking every byte against a ledger of checksums kept outside the volume. It runs on
//! node 1 until the stop hook asks it to quiesce, and again on the new node as soon as the
//! start hook names the clone device, while hydration is still running.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// File name → sha256 of every record the workload wrote (outside the volume).
pub type Ledger = Arc<Mutex<BTreeMap<String, String>>>;

/// What one run of the workload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Records written (and fsynced).
    pub written: u64,
    /// Records read back and found intact.
    pub verified: u64,
    /// Records read back and found different: must stay 0.
    pub corrupt: u64,
}

/// A running workload on a mounted filesystem.
pub struct Workload {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Counts>>>,
    mount: PathBuf,
}

/// Most records one run writes (the loop is bounded whatever happens).
const MAX_RECORDS: u64 = 20_000;
/// Bytes per record.
const RECORD: usize = 64 * 1024;

/// Pseudo-random bytes from `seed` (xorshift; the demo needs incompressible data, not
/// secrecy).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// sha256 as hex.
pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The file system the demo makes on its volume (`mkfs.ext4` in the demo's setup).
const FS_TYPE: &str = "ext4";

/// Mounts `device` (a file is mounted through a loop device) at `dir`.
pub fn mount(device: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A file goes through a loop device the kernel unbinds at unmount (as `mount -o
    // loop`); the handle holds it until the mount does, and unbinds it if the mount fails.
    let (source, _held) = if device.is_file() {
        let (a, held) = meshdrain_clone::loopdev::attach_autoclear(device)?;
        (a.device, Some(held))
    } else {
        (device.to_owned(), None)
    };
    nix::mount::mount(Some(&source), dir, Some(FS_TYPE), nix::mount::MsFlags::empty(), None::<&str>).with_context(
        || format!("mount {} ({FS_TYPE}) at {}: is it formatted, and are we root?", source.display(), dir.display()),
    )
}

/// Unmounts `dir`.
pub fn umount(dir: &Path) -> anyhow::Result<()> {
    nix::mount::umount(dir).with_context(|| format!("unmount {}: is something still using it?", dir.display()))
}

/// Writes `count` records of `size` bytes into `dir` and the ledger (the initial data).
pub fn seed_records(dir: &Path, ledger: &Ledger, count: usize, size: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    for i in 0..count {
        let name = format!("data/seed-{i:04}.bin");
        let data = pseudo_random(0x5EED + i as u64, size);
        std::fs::write(dir.join(&name), &data)?;
        ledger.lock().expect("ledger lock").insert(name, sha(&data));
    }
    nix::unistd::sync();
    Ok(())
}

/// Reads every record of the ledger from `dir`; returns (intact, differing) names.
pub fn verify_all(dir: &Path, ledger: &Ledger) -> (usize, Vec<String>) {
    let ledger = ledger.lock().expect("ledger lock").clone();
    let mut bad = Vec::new();
    for (name, want) in &ledger {
        match std::fs::read(dir.join(name)) {
            Ok(d) if &sha(&d) == want => {}
            _ => bad.push(name.clone()),
        }
    }
    (ledger.len() - bad.len(), bad)
}

impl Workload {
    /// Starts writing and re-reading records under `dir` (already mounted). `tag` keeps
    /// record names of different runs apart.
    pub fn start(dir: &Path, ledger: Ledger, tag: &str, seq: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, dir2, tag) = (stop.clone(), dir.to_owned(), tag.to_owned());
        let thread = std::thread::spawn(move || -> anyhow::Result<Counts> {
            let mut counts = Counts::default();
            std::fs::create_dir_all(dir2.join("data"))?;
            while !stop2.load(Ordering::Relaxed) && counts.written < MAX_RECORDS {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let name = format!("data/{tag}-{n:05}.bin");
                let data = pseudo_random(0xDA7A + n, RECORD);
                let mut f = std::fs::File::create(dir2.join(&name))?;
                f.write_all(&data)?;
                f.sync_all()?;
                ledger.lock().expect("ledger lock").insert(name, sha(&data));
                counts.written += 1;
                // Re-read an older record: on the new node it may not be hydrated yet,
                // so this read is served from the source on demand.
                let old = {
                    let l = ledger.lock().expect("ledger lock");
                    l.iter().nth((n as usize * 7919) % l.len()).map(|(k, v)| (k.clone(), v.clone()))
                };
                if let Some((name, want)) = old {
                    match std::fs::read(dir2.join(&name)) {
                        Ok(d) if sha(&d) == want => counts.verified += 1,
                        _ => counts.corrupt += 1,
                    }
                }
                // Woken early by `stop`: a quiesce should not wait out the pause.
                std::thread::park_timeout(Duration::from_millis(20));
            }
            Ok(counts)
        });
        Self { stop, thread: Some(thread), mount: dir.to_owned() }
    }

    /// Stops the loop, syncs and returns what it did.
    pub fn stop(mut self) -> anyhow::Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.thread().unpark();
        let counts = thread.join().map_err(|_| anyhow::anyhow!("workload panicked"))??;
        let fs = std::fs::File::open(&self.mount).with_context(|| format!("open {}", self.mount.display()))?;
        nix::unistd::syncfs(&fs).with_context(|| format!("syncfs {}", self.mount.display()))?;
        Ok(counts)
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

/// The hook scripts the demo's volume carries. The stop hook asks the demo to quiesce the
/// workload and waits (bounded) for it; the start hook tells the demo where the clone
/// device is. Returns (stop, start) commands.
pub fn write_hooks(dir: &Path) -> anyhow::Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display();
    let stop = dir.join("hook-stop.sh");
    std::fs::write(
        &stop,
        format!(
            "#!/bin/sh\n# meshdrain demo: quiesce the workload before the export opens\n\
             touch {d}/stop-$MESHDRAIN_VOLUME\n\
             for i in $(seq 6000); do [ -e {d}/stopped-$MESHDRAIN_VOLUME ] && exit 0; sleep 0.01; done\n\
             echo 'the demo workload did not stop within 60 s' >&2; exit 1\n"
        ),
    )?;
    let start = dir.join("hook-start.sh");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\n# meshdrain demo: the clone device exists; start the workload on it\n\
             echo \"$MESHDRAIN_NODE $MESHDRAIN_DEVICE\" > {d}/started-$MESHDRAIN_VOLUME.tmp\n\
             mv {d}/started-$MESHDRAIN_VOLUME.tmp {d}/started-$MESHDRAIN_VOLUME\n"
        ),
    )?;
    for p in [&stop, &start] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((stop.display().to_string(), start.display().to_string()))
}

/// A mount that is undone when dropped (lazily, so an error path never hangs on a busy
/// filesystem).
pub struct Mounted(pub PathBuf);

impl Mounted {
    /// Mounts `device` at `dir`.
    pub fn new(device: &Path, dir: &Path) -> anyhow::Result<Self> {
        mount(device, dir)?;
        Ok(Self(dir.to_owned()))
    }

    /// Unmounts now, reporting failure.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        let dir = std::mem::take(&mut self.0);
        umount(&dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
