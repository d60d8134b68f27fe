//! A development data plane for fleets on one machine (tests, `demo` without a network):
//! an export is a small ACL file in a directory every agent shares, and a clone copies
//! regions straight from the source's file, checking the ACL on every batch (so closing
//! an export fences the holder), keeping a durable region bitmap (so a killed holder
//! resumes), honouring the rate limit, and reporting a stall when the export disappears.
//!
//! It has the lease semantics of the real path, not its data path: there is no block
//! device in between, so the workload must not write while hydration runs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::executor::{CloneService, CloneSpec, ExportGrant, ExportService};
use crate::decide::model::{CloneProgress, Hydration};

/// Copy unit.
const REGION: u64 = 64 * 1024;
/// Regions copied between two syncs of the dest and the bitmap: a 32nd of the volume,
/// between 1 MiB and 16 MiB, so small volumes still show progress and large ones sync
/// rarely.
fn batch_for(regions: usize) -> usize {
    (regions / 32).clamp(16, 256)
}

#[derive(Debug, Serialize, Deserialize)]
struct AclFile {
    path: PathBuf,
    initiator: String,
}

/// Exports as ACL files in a shared directory. Each open export also holds an exclusive
/// lock on `<iqn>.alive` for as long as this process lives, so a killed source stalls its
/// holders the way a dead iSCSI target does.
#[derive(Debug)]
pub struct LocalExports {
    dir: PathBuf,
    volumes: Mutex<BTreeMap<String, (String, File)>>,
}

impl LocalExports {
    /// Exports published under `dir` (shared by every agent of the local fleet).
    pub fn new(dir: &Path) -> Self {
        let _ = std::fs::create_dir_all(dir);
        Self { dir: dir.to_owned(), volumes: Mutex::new(BTreeMap::new()) }
    }
}

fn acl_path(dir: &Path, iqn: &str) -> PathBuf {
    dir.join(format!("{iqn}.json"))
}

impl ExportService for LocalExports {
    fn open(&self, grant: &ExportGrant) -> Result<(), String> {
        let (volume, path, iqn, initiator_iqn) = (&grant.volume, &grant.path, &grant.iqn, &grant.initiator_iqn);
        let alive = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{iqn}.alive")))
            .map_err(|e| e.to_string())?;
        alive.lock().map_err(|e| format!("locking {iqn}.alive: {e}"))?;
        let acl = AclFile { path: path.to_owned(), initiator: initiator_iqn.to_owned() };
        let tmp = self.dir.join(format!(".{iqn}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&acl).expect("serializes")).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, acl_path(&self.dir, iqn)).map_err(|e| e.to_string())?;
        self.volumes.lock().expect("lock").insert(volume.to_owned(), (iqn.to_owned(), alive));
        Ok(())
    }

    fn close(&self, volume: &str) {
        if let Some((iqn, _alive)) = self.volumes.lock().expect("lock").remove(volume) {
            let _ = std::fs::remove_file(acl_path(&self.dir, &iqn));
        }
    }
}

struct Clone_ {
    spec: CloneSpec,
    bitmap: Mutex<Vec<bool>>,
    hydrated: AtomicU64,
    rate: Mutex<Option<u64>>,
    bytes_per_s: AtomicU64,
    fetched: AtomicU64,
    stalled: AtomicBool,
    error: Mutex<Option<String>>,
    running: AtomicBool,
}

/// Clones that copy from the source's file as the shared ACL allows.
pub struct LocalClones {
    exports_dir: PathBuf,
    clones: Mutex<BTreeMap<String, Arc<Clone_>>>,
    prepare_delay: Duration,
}

impl LocalClones {
    /// Clones reading exports published under `exports_dir`.
    pub fn new(exports_dir: &Path) -> Self {
        Self { exports_dir: exports_dir.to_owned(), clones: Mutex::new(BTreeMap::new()), prepare_delay: Duration::ZERO }
    }

    /// Fault injection for tests: preparing a clone takes this long after its files exist
    /// (a slow device setup), which leaves time to kill a holder between grant and cut-over.
    pub fn with_prepare_delay(mut self, delay: Duration) -> Self {
        self.prepare_delay = delay;
        self
    }

    fn get(&self, volume: &str) -> Option<Arc<Clone_>> {
        self.clones.lock().expect("lock").get(volume).cloned()
    }
}

/// Resolves the source path if `initiator` may read export `iqn`.
fn login(exports_dir: &Path, iqn: &str, initiator: &str) -> Result<PathBuf, String> {
    let raw = std::fs::read(acl_path(exports_dir, iqn))
        .map_err(|_| format!("no export {iqn} (closed, or the source is down)"))?;
    // The source holds `<iqn>.alive` exclusively while it lives.
    let alive = File::open(exports_dir.join(format!("{iqn}.alive"))).map_err(|e| format!("export {iqn}: {e}"))?;
    if alive.try_lock_shared().is_ok() {
        return Err(format!("the source of {iqn} does not answer (its agent is down)"));
    }
    let acl: AclFile = serde_json::from_slice(&raw).map_err(|e| format!("export {iqn}: {e}"))?;
    if acl.initiator != initiator {
        return Err(format!("login refused: export {iqn} is for {}, not {initiator}", acl.initiator));
    }
    Ok(acl.path)
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    epoch: u64,
    iqn: String,
    /// One bit per region, hex-encoded (a 1 TiB volume at 64 KiB regions: 4 MiB of text).
    #[serde(with = "bits")]
    bitmap: Vec<bool>,
}

/// Bitmaps as compact hex in the metadata file.
mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bits: &[bool], s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            if *b {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        s.serialize_str(&format!("{}:{}", bits.len(), hex::encode(bytes)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
        let s = String::deserialize(d)?;
        let (len, hex_bytes) = s.split_once(':').ok_or_else(|| serde::de::Error::custom("bitmap: no length"))?;
        let len: usize = len.parse().map_err(serde::de::Error::custom)?;
        let bytes = hex::decode(hex_bytes).map_err(serde::de::Error::custom)?;
        if bytes.len() != len.div_ceil(8) {
            return Err(serde::de::Error::custom("bitmap: length mismatch"));
        }
        Ok((0..len).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect())
    }
}

impl CloneService for LocalClones {
    fn prepare(&self, spec: &CloneSpec) -> Result<PathBuf, String> {
        let source = login(&self.exports_dir, &spec.export.iqn, &spec.initiator_iqn)?;
        let regions = spec.size.div_ceil(REGION) as usize;
        let bitmap = match std::fs::read(&spec.metadata).ok().and_then(|b| serde_json::from_slice::<Metadata>(&b).ok())
        {
            Some(m) if m.epoch == spec.epoch && m.iqn == spec.export.iqn && m.bitmap.len() == regions => m.bitmap,
            Some(m) => {
                info!(volume = %spec.volume, old_epoch = m.epoch, "clone metadata of another lease: starting over");
                vec![false; regions]
            }
            None => {
                // Unallocated source ranges read as zeros, which a fresh sparse dest already
                // holds: mark them hydrated and never copy them.
                let mut bm = vec![false; regions];
                if let Ok(f) = File::open(&source) {
                    for r in unallocated_regions(&f, spec.size) {
                        bm[r] = true;
                    }
                }
                bm
            }
        };
        if let Some(dir) = spec.dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let dest = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&spec.dest)
            .map_err(|e| format!("{}: {e}", spec.dest.display()))?;
        dest.set_len(spec.size).map_err(|e| e.to_string())?;
        let hydrated = bitmap.iter().filter(|b| **b).count() as u64;
        let c = Clone_ {
            spec: spec.clone(),
            bitmap: Mutex::new(bitmap),
            hydrated: AtomicU64::new(hydrated),
            rate: Mutex::new(spec.rate_limit),
            bytes_per_s: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            error: Mutex::new(None),
            running: AtomicBool::new(false),
        };
        save_metadata(&c)?;
        // A slow device setup, after the partial clone exists on disk.
        std::thread::sleep(self.prepare_delay);
        self.clones.lock().expect("lock").insert(spec.volume.clone(), Arc::new(c));
        Ok(spec.dest.clone())
    }

    fn start_hydration(&self, volume: &str) -> Result<(), String> {
        let c = self.get(volume).ok_or_else(|| format!("no clone of {volume}"))?;
        if c.running.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let dir = self.exports_dir.clone();
        std::thread::Builder::new()
            .name(format!("hydrate-{volume}"))
            .spawn(move || hydrate(&c, &dir))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn progress(&self, volume: &str) -> Option<CloneProgress> {
        let c = self.get(volume)?;
        let hydration = Hydration {
            hydrated: c.hydrated.load(Ordering::SeqCst),
            total: c.bitmap.lock().expect("lock").len() as u64,
            bytes_per_s: c.bytes_per_s.load(Ordering::SeqCst),
            fetched_bytes: c.fetched.load(Ordering::SeqCst),
            read_through_bytes: 0,
        };
        Some(CloneProgress {
            hydration,
            stalled: c.stalled.load(Ordering::SeqCst),
            error: c.error.lock().expect("lock").clone(),
        })
    }

    fn set_rate_limit(&self, volume: &str, rate: Option<u64>) {
        if let Some(c) = self.get(volume) {
            *c.rate.lock().expect("lock") = rate;
        }
    }

    fn finalize(&self, volume: &str) -> Result<Option<String>, String> {
        let Some(c) = self.clones.lock().expect("lock").remove(volume) else {
            return Ok(None); // already finalized before a restart
        };
        c.running.store(false, Ordering::SeqCst);
        if c.hydrated.load(Ordering::SeqCst) < c.bitmap.lock().expect("lock").len() as u64 {
            return Err(format!("{volume} is not fully hydrated"));
        }
        File::open(&c.spec.dest).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
        // No workload writes here while hydrating (see the module doc), so the dest holds
        // exactly what was copied from the source: its digest is what was read.
        let digest = if c.spec.verify {
            let d = meshdrain_clone::digest::digest_file(&c.spec.dest, c.spec.size, REGION)
                .map_err(|e| format!("digest of {}: {e}", c.spec.dest.display()))?;
            Some(d)
        } else {
            None
        };
        let _ = std::fs::remove_file(&c.spec.metadata);
        Ok(digest)
    }

    fn discard(&self, volume: &str, dest: &Path, metadata: &Path) {
        if let Some(c) = self.clones.lock().expect("lock").remove(volume) {
            c.running.store(false, Ordering::SeqCst);
        }
        for path in [dest, metadata] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(%volume, path = %path.display(), "cannot remove partial clone: {e}"),
            }
        }
    }
}

/// Regions that lie wholly in holes of `f` (SEEK_DATA/SEEK_HOLE). If the filesystem
/// cannot tell, every region counts as allocated (copying zeros is safe; skipping data
/// would not be).
fn unallocated_regions(f: &File, size: u64) -> Vec<usize> {
    use nix::errno::Errno;
    use nix::unistd::{Whence, lseek};
    let regions = size.div_ceil(REGION) as usize;
    let mut has_data = vec![false; regions];
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = match lseek(f, pos, Whence::SeekData) {
            Ok(start) => start,
            Err(Errno::ENXIO) => break, // no data past `pos`
            Err(_) => return vec![],    // cannot tell: copy everything
        };
        let end = lseek(f, start, Whence::SeekHole).unwrap_or(size as i64);
        let first = (start as u64 / REGION) as usize;
        let last = ((end as u64).min(size).saturating_sub(1) / REGION) as usize;
        for d in has_data.iter_mut().take(last + 1).skip(first) {
            *d = true;
        }
        pos = end.max(start + 1);
    }
    has_data.iter().enumerate().filter(|(_, d)| !**d).map(|(i, _)| i).collect()
}

fn save_metadata(c: &Clone_) -> Result<(), String> {
    let m = Metadata {
        epoch: c.spec.epoch,
        iqn: c.spec.export.iqn.clone(),
        bitmap: c.bitmap.lock().expect("lock").clone(),
    };
    let tmp = c.spec.metadata.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&m).expect("serializes")).map_err(|e| e.to_string())?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &c.spec.metadata).map_err(|e| e.to_string())
}

/// Copies every missing region; a region's bit is set only after its bytes are synced.
fn hydrate(c: &Clone_, exports_dir: &Path) {
    let Ok(dest) = OpenOptions::new().write(true).open(&c.spec.dest) else { return };
    let mut buf = vec![0u8; REGION as usize];
    let batch = batch_for(c.bitmap.lock().expect("lock").len());
    let started = Instant::now();
    let mut copied = 0u64;
    while c.running.load(Ordering::SeqCst) {
        // Check the ACL on every batch: a closed export fences this holder.
        let source = match login(exports_dir, &c.spec.export.iqn, &c.spec.initiator_iqn)
            .and_then(|p| File::open(&p).map_err(|e| e.to_string()))
        {
            Ok(f) => {
                c.stalled.store(false, Ordering::SeqCst);
                f
            }
            Err(e) => {
                if !c.stalled.swap(true, Ordering::SeqCst) {
                    warn!(volume = %c.spec.volume, "hydration stalled: {e}");
                }
                *c.error.lock().expect("lock") = Some(e);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let batch: Vec<usize> = c
            .bitmap
            .lock()
            .expect("lock")
            .iter()
            .enumerate()
            .filter(|(_, b)| !**b)
            .map(|(i, _)| i)
            .take(batch)
            .collect();
        if batch.is_empty() {
            return;
        }
        for &r in &batch {
            let off = r as u64 * REGION;
            let len = REGION.min(c.spec.size - off) as usize;
            if source.read_exact_at(&mut buf[..len], off).is_err() || dest.write_all_at(&buf[..len], off).is_err() {
                c.stalled.store(true, Ordering::SeqCst);
                break;
            }
            copied += len as u64;
            c.fetched.fetch_add(len as u64, Ordering::SeqCst);
            if let Some(rate) = *c.rate.lock().expect("lock") {
                let due = Duration::from_secs_f64(copied as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if dest.sync_data().is_err() {
            continue;
        }
        {
            let mut bm = c.bitmap.lock().expect("lock");
            for &r in &batch {
                bm[r] = true;
            }
            c.hydrated.store(bm.iter().filter(|b| **b).count() as u64, Ordering::SeqCst);
        }
        let _ = save_metadata(c);
        c.bytes_per_s.store((copied as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn holes_are_found_and_data_is_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(16 * REGION).unwrap();
        f.seek(SeekFrom::Start(3 * REGION + 10)).unwrap();
        f.write_all(b"data").unwrap();
        f.seek(SeekFrom::Start(9 * REGION)).unwrap();
        f.write_all(&vec![1u8; REGION as usize + 1]).unwrap();
        f.sync_all().unwrap();
        let holes = unallocated_regions(&File::open(&path).unwrap(), 16 * REGION);
        for r in [3, 9, 10] {
            assert!(!holes.contains(&r), "region {r} holds data: {holes:?}");
        }
        // tmpfs and ext4 report holes at page/block granularity: most others are holes.
        assert!(holes.len() >= 10, "{holes:?}");
    }
}
