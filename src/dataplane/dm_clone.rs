//! The holder side of the real data path on kernels with dm-clone (`dataplane.clone =
//! "dm"`): log in to the source's export with open-iscsi (one iface record per volume, so
//! the lease's per-epoch initiator name is the one the source's ACL sees), stack dm-clone
//! on the remote disk with the dest and metadata files on loop devices, hand the
//! `/dev/mapper` device to the workload, hydrate in the kernel. Hand-off reloads the table
//! as `linear` on the dest (the poller of [`DmClone`] does it when every region is there);
//! finalize flushes and logs out, so the source is no longer referenced at all.
//!
//! Unlike the userspace engine, the clone lives in the kernel: an agent restart does not
//! interrupt the workload's I/O, and `prepare` adopts the device, the loops and the session
//! it finds. A source outage queues I/O (the session's replacement timeout is infinite)
//! and dm-clone retries forever; [`DmClone`] reports `stalled` when hydration stops moving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshdrain_clone::dm::{DmClone, DmConfig};
use meshdrain_clone::loopdev;
use meshdrain_clone::{CloneBackend, Phase};
use tracing::{info, warn};

use super::executor::{CloneService, CloneSpec};
use super::remove_files;
use crate::decide::model::{CloneProgress, Hydration};

/// Bound on one external command (iscsiadm retries its login inside this).
const COMMAND_LIMIT: Duration = Duration::from_secs(90);
/// How long the SCSI disk may take to appear after login.
const DISK_WAIT: Duration = Duration::from_secs(30);
/// No hydration progress for this long reports `stalled`.
const STALL_AFTER: Duration = Duration::from_secs(10);
/// dm-clone status poll period.
const POLL: Duration = Duration::from_millis(500);
/// Bound on asking the source which ranges it does not hold (then everything is copied).
const SKIP_SCAN_LIMIT: Duration = Duration::from_secs(60);

struct Running {
    epoch: u64,
    /// The status poller; `None` once finalized (the device is linear on the dest).
    clone: Option<DmClone>,
    device: PathBuf,
    iface: String,
    metadata: PathBuf,
    last: CloneProgress,
}

/// dm-clone devices over open-iscsi sessions, one per incoming volume.
pub struct DmClones {
    region_size: u64,
    clones: Mutex<BTreeMap<String, Running>>,
}

impl std::fmt::Debug for DmClones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmClones").field("region_size", &self.region_size).finish()
    }
}

impl DmClones {
    /// Clones with `region_size`-byte regions (a power of two, at least 4 KiB).
    pub fn new(region_size: u64) -> Self {
        Self { region_size, clones: Mutex::new(BTreeMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.clones.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, spec: &CloneSpec) -> Result<Running, String> {
        let (dm_name, iface) = (dm_name(&spec.volume), iface_name(&spec.volume));
        let epoch_file = epoch_path(&spec.metadata);
        let recorded = std::fs::read_to_string(&epoch_file).ok().and_then(|s| s.trim().parse::<u64>().ok());
        if recorded.is_some_and(|e| e != spec.epoch) || (recorded.is_none() && dm_exists(&dm_name)) {
            // A partial clone of another lease: its bytes may be behind. Start over.
            info!(volume = %spec.volume, recorded = recorded.unwrap_or_default(), epoch = spec.epoch, "dm-clone of another lease: starting over");
            teardown(&spec.volume, &spec.dest, &spec.metadata);
        }
        if let Some(dir) = spec.dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let regions = spec.size.div_ceil(self.region_size);
        let fresh = !spec.metadata.exists();
        let dest_fresh = !spec.dest.exists();
        sized_file(&spec.dest, spec.size)?;
        // dm-clone formats a zeroed metadata device; its bitmap needs a bit per region.
        sized_file(&spec.metadata, ((4 << 20) + regions / 2).next_multiple_of(4096))?;
        std::fs::write(&epoch_file, format!("{}\n", spec.epoch))
            .map_err(|e| format!("{}: {e}", epoch_file.display()))?;
        let dest = loop_device(&spec.dest)?;
        let meta = loop_device(&spec.metadata)?;
        let disk = login(spec, &iface)?;
        let size = block_size(&disk)?;
        if size < spec.size {
            return Err(format!("export {} is {size} bytes, the lease says {}", spec.export.iqn, spec.size));
        }
        let cfg = DmConfig {
            name: dm_name.clone(),
            source: disk.clone(),
            dest,
            metadata: meta,
            region_size: self.region_size,
            rate_limit: spec.rate_limit,
            stall_after: STALL_AFTER,
            poll: POLL,
        };
        let clone = DmClone::start_paused(cfg).map_err(|e| e.to_string())?;
        // No udev in minimal hosts: make /dev/mapper/<name> ourselves (a no-op with udev).
        let _ = run("dmsetup", &["mknodes", &dm_name]);
        let device = PathBuf::from(format!("/dev/mapper/{dm_name}"));
        if !device.exists() {
            return Err(format!("{} did not appear after creating the dm-clone device", device.display()));
        }
        if fresh && dest_fresh {
            // Before the workload or hydration touch it: regions the source does not hold
            // are marked hydrated (the new sparse dest reads zeros there), never copied.
            // docs/architecture.md, "dm-clone skips what the source does not hold".
            match clone.skip_unallocated(SKIP_SCAN_LIMIT) {
                Ok(s) => info!(
                    volume = %spec.volume,
                    deallocated = s.deallocated,
                    skipped = s.discarded,
                    "dm-clone skips what the source does not hold"
                ),
                Err(e) => warn!(volume = %spec.volume, "dm-clone copies every region: {e}"),
            }
        }
        info!(volume = %spec.volume, fresh, disk = %disk.display(), device = %device.display(), "dm-clone ready over open-iscsi");
        let last =
            CloneProgress { hydration: Hydration { total: regions, ..Default::default() }, ..Default::default() };
        Ok(Running { epoch: spec.epoch, clone: Some(clone), device, iface, metadata: spec.metadata.clone(), last })
    }

    /// Waits for the poller's hand-off to linear and drops the clone's bookkeeping.
    fn finalize_dm(&self, volume: &str) -> Result<(), String> {
        // The poller reloads the table as linear once every region is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let clones = self.lock();
            let Some(r) = clones.get(volume) else {
                return Ok(()); // finalized before a restart
            };
            let Some(c) = &r.clone else { return Ok(()) };
            let p = c.progress();
            if p.phase == Phase::Complete {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{volume} is not handed off yet ({}/{} regions, {:?})",
                    p.hydrated, p.total, p.phase
                ));
            }
            drop(clones);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut clones = self.lock();
        let Some(r) = clones.get_mut(volume) else { return Ok(()) };
        std::fs::File::open(&r.device)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("flush {}: {e}", r.device.display()))?;
        if let Some(c) = r.clone.take() {
            c.stop();
        }
        logout(&r.iface);
        if let Some(meta) = loop_of(&r.metadata) {
            let _ = loopdev::detach(&meta);
        }
        remove_files(volume, &[&r.metadata, &epoch_path(&r.metadata)]);
        r.last.hydration.hydrated = r.last.hydration.total;
        r.last.stalled = false;
        info!(%volume, device = %r.device.display(), "dm-clone handed off: linear on the dest, logged out");
        Ok(())
    }
}

impl Drop for DmClones {
    fn drop(&mut self) {
        // Stop the pollers only: the devices and sessions outlive the agent (the workload
        // keeps running on them, and the next agent adopts them).
        for (_, r) in std::mem::take(&mut *self.lock()) {
            if let Some(c) = r.clone {
                c.stop();
            }
        }
    }
}

impl CloneService for DmClones {
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String> {
        if let Some(r) = self.lock().get(&spec.volume)
            && r.epoch == spec.epoch
        {
            return Ok(r.device.clone());
        }
        if let Some(old) = self.lock().remove(&spec.volume)
            && let Some(c) = old.clone
        {
            c.stop();
        }
        let running = self.open(spec)?;
        let device = running.device.clone();
        self.lock().insert(spec.volume.clone(), running);
        Ok(device)
    }

    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        let clones = self.lock();
        let r = clones.get(volume).ok_or_else(|| format!("no clone of {volume} on this node"))?;
        match &r.clone {
            Some(c) => c.resume().map_err(|e| e.to_string()),
            None => Ok(()), // already handed off
        }
    }

    fn progress(&self, volume: &str) -> Option<CloneProgress> {
        let mut clones = self.lock();
        let r = clones.get_mut(volume)?;
        if let Some(c) = &r.clone {
            let p = c.progress();
            r.last = CloneProgress {
                hydration: Hydration {
                    // The kernel does not count source reads: regions copied (not those
                    // skipped as unallocated) is the estimate.
                    fetched_bytes: p.fetched_bytes,
                    // dm-clone passes such reads to the source without counting them.
                    read_through_bytes: 0,
                    ..(&p).into()
                },
                stalled: p.phase == Phase::Stalled,
                error: p.last_error,
            };
        }
        Some(r.last.clone())
    }

    fn set_rate_limit(&self, volume: &str, rate: Option<u64>) {
        if let Some(c) = self.lock().get(volume).and_then(|r| r.clone.as_ref())
            && let Err(e) = c.set_rate_limit(rate)
        {
            warn!(%volume, "cannot change the dm-clone rate: {e}");
        }
    }

    fn finalize(&self, volume: &str) -> Result<Option<String>, String> {
        // dm-clone copies inside the kernel: there is nothing to digest (`--verify` fails
        // at the source with a message saying so).
        self.finalize_dm(volume).map(|()| None)
    }

    fn discard(&self, volume: &str, dest: &Path, metadata: &Path) {
        if let Some(r) = self.lock().remove(volume)
            && let Some(c) = r.clone
        {
            c.stop();
        }
        teardown(volume, dest, metadata);
    }
}

/// Removes everything a clone of `volume` may have left, also by an earlier process: the
/// dm device, the iSCSI session and records, the loop devices, the files.
fn teardown(volume: &str, dest: &Path, metadata: &Path) {
    let name = dm_name(volume);
    if dm_exists(&name)
        && let Err(e) = run("dmsetup", &["remove", "--retry", &name])
    {
        warn!(%volume, "cannot remove dm device {name}: {e}");
    }
    logout(&iface_name(volume));
    for f in [dest, metadata] {
        while let Some(dev) = loop_of(f) {
            if let Err(e) = loopdev::detach(&dev) {
                warn!(%volume, "cannot detach {}: {e}", dev.display());
                break;
            }
        }
    }
    remove_files(volume, &[dest, metadata, &epoch_path(metadata)]);
}

/// A name safe for dm and iscsiadm iface records.
fn safe(volume: &str) -> String {
    volume.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn dm_name(volume: &str) -> String {
    format!("meshdrain-{}", safe(volume))
}

fn iface_name(volume: &str) -> String {
    format!("md-{}", safe(volume))
}

fn epoch_path(metadata: &Path) -> PathBuf {
    let mut s = metadata.as_os_str().to_owned();
    s.push(".epoch");
    PathBuf::from(s)
}

/// Runs a command to completion within [`COMMAND_LIMIT`]; `Err` carries its output.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < COMMAND_LIMIT => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown}: no answer in {COMMAND_LIMIT:?}"));
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    let out = child.wait_with_output().map_err(|e| format!("{shown}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("{shown}: {}: {}", out.status, text.trim())) }
}

fn dm_exists(name: &str) -> bool {
    run("dmsetup", &["info", name]).is_ok()
}

/// Creates `path` (sparse) or grows it to `size`.
fn sized_file(path: &Path, size: u64) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
    if len < size {
        f.set_len(size).map_err(|e| format!("size {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The loop device already over `file`, if any.
fn loop_of(file: &Path) -> Option<PathBuf> {
    loopdev::backed_by(file).into_iter().next()
}

/// The loop device over `file`, attaching one when there is none (adopted on restart).
fn loop_device(file: &Path) -> Result<PathBuf, String> {
    if let Some(dev) = loop_of(file) {
        return Ok(dev);
    }
    loopdev::attach(file, false).map(|a| a.device).map_err(|e| e.to_string())
}

fn block_size(dev: &Path) -> Result<u64, String> {
    let out = run("blockdev", &["--getsize64", &dev.display().to_string()])?;
    out.trim().parse().map_err(|_| format!("blockdev --getsize64 {}: {out:?}", dev.display()))
}

/// iscsiadm's portal syntax: `ip:port`, IPv6 in brackets.
fn portal(addr: &str) -> Result<String, String> {
    let a: SocketAddr = addr.parse().map_err(|_| format!("export address {addr:?} is not ip:port"))?;
    Ok(a.to_string())
}

/// Logs in to the export with `iface` carrying the lease's initiator name; returns the
/// SCSI disk. An existing session (agent restart) is reused.
fn login(spec: &CloneSpec, iface: &str) -> Result<PathBuf, String> {
    let portal = portal(&spec.export.addr)?;
    let iqn = spec.export.iqn.as_str();
    if let Some(disk) = session_disk(iqn, &spec.initiator_iqn) {
        return Ok(disk);
    }
    if run("iscsiadm", &["-m", "iface", "-I", iface]).is_err() {
        run("iscsiadm", &["-m", "iface", "-I", iface, "-o", "new"])?;
    }
    run(
        "iscsiadm",
        &["-m", "iface", "-I", iface, "-o", "update", "-n", "iface.initiatorname", "-v", &spec.initiator_iqn],
    )?;
    run("iscsiadm", &["-m", "node", "-o", "new", "-T", iqn, "-p", &portal, "-I", iface])?;
    // A source that goes away must stall the clone, never fail the workload's reads: keep
    // I/O queued until the session is back (open-iscsi fails it after 120 s by default).
    let node = ["-m", "node", "-T", iqn, "-p", &portal, "-I", iface, "-o", "update", "-n"];
    run("iscsiadm", &[&node[..], &["node.session.timeo.replacement_timeout", "-v", "-1"]].concat())?;
    run("iscsiadm", &["-m", "node", "-T", iqn, "-p", &portal, "-I", iface, "--login"])
        .map_err(|e| format!("open-iscsi login to {iqn} at {portal} as {}: {e}", spec.initiator_iqn))?;
    let start = Instant::now();
    while start.elapsed() < DISK_WAIT {
        if let Some(disk) = session_disk(iqn, &spec.initiator_iqn) {
            info!(volume = %spec.volume, %portal, disk = %disk.display(), "open-iscsi logged in");
            return Ok(disk);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    logout(iface);
    Err(format!("logged in to {iqn} at {portal} but no SCSI disk appeared in {DISK_WAIT:?}"))
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The iSCSI sessions in sysfs as (session dir, target name, initiator name, iface name).
fn sessions() -> Vec<(PathBuf, String, String, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/iscsi_session") else { return Vec::new() };
    dir.flatten()
        .map(|e| {
            let p = e.path();
            let (t, i, f) = (
                read_trim(&p.join("targetname")),
                read_trim(&p.join("initiatorname")),
                read_trim(&p.join("ifacename")),
            );
            (p, t, i, f)
        })
        .collect()
}

/// The block device of LUN 1 of the session to `iqn` as `initiator` (found in sysfs:
/// hosts without udev have no /dev/disk/by-path).
fn session_disk(iqn: &str, initiator: &str) -> Option<PathBuf> {
    let (session, ..) = sessions().into_iter().find(|(_, t, i, _)| t == iqn && i == initiator)?;
    for target in std::fs::read_dir(session.join("device")).ok()?.flatten() {
        if !target.file_name().to_string_lossy().starts_with("target") {
            continue;
        }
        for lun in std::fs::read_dir(target.path()).ok()?.flatten() {
            if !lun.file_name().to_string_lossy().ends_with(":1") {
                continue;
            }
            let block = std::fs::read_dir(lun.path().join("block")).ok()?.flatten().next()?;
            let dev = PathBuf::from("/dev").join(block.file_name());
            return dev.exists().then_some(dev);
        }
    }
    None
}

/// Logs out every session through `iface` and forgets its records.
fn logout(iface: &str) {
    for (session, _, _, f) in sessions() {
        if f != iface {
            continue;
        }
        let id = session.file_name().map(|n| n.to_string_lossy().trim_start_matches("session").to_owned());
        if let Some(id) = id
            && let Err(e) = run("iscsiadm", &["-m", "session", "-r", &id, "--logout"])
        {
            warn!(%iface, "iSCSI logout: {e}");
        }
    }
    let _ = run("iscsiadm", &["-m", "node", "-I", iface, "-o", "delete"]);
    let _ = run("iscsiadm", &["-m", "iface", "-I", iface, "-o", "delete"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_dm_and_iscsiadm() {
        assert_eq!(dm_name("db/0 x"), "meshdrain-db_0_x");
        assert_eq!(iface_name("vol-1"), "md-vol-1");
        assert_eq!(epoch_path(Path::new("/p/v.clone-meta")), Path::new("/p/v.clone-meta.epoch"));
    }

    #[test]
    fn portals_bracket_ipv6() {
        assert_eq!(portal("[fd42:8::1]:3260").unwrap(), "[fd42:8::1]:3260");
        assert_eq!(portal("198.18.0.1:3260").unwrap(), "198.18.0.1:3260");
        assert!(portal("node1:3260").unwrap_err().contains("not ip:port"));
    }
}
