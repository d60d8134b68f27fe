//! Skipping what the source does not hold on the dm-clone path (docs/architecture.md,
//! "dm-clone skips what the source does not hold"): dm-clone marks every whole region a
//! discard to the clone device covers as hydrated without copying it (its
//! `process_discard_bio`: the covered regions are the bio's start rounded up to the end
//! rounded down, so a partial region is never marked and a short last region never
//! is). Before hydration starts we ask the source for its deallocated ranges (GET LBA
//! STATUS, [`super::sg`]) and discard the whole regions inside them on the clone device.
//!
//! Only sound while the dest reads zeros in those regions and nothing was written to
//! the clone yet ([`super::DmClone::skip_unallocated`] checks the second; the caller
//! vouches for the first: a freshly created sparse dest file).
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::sg::{LbaStatusError, ScsiDisk};

/// BLKDISCARD: `_IO(0x12, 119)`, argument `[start, len]` in bytes.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// Largest discard per ioctl: bounded work per call, under the block layer's 4 GiB
/// split (a split inside a region would leave that region to be copied).
const MAX_BATCH: u64 = 1 << 30;

/// Folds provisioning extents (in order, byte offsets) into runs of whole regions
/// inside deallocated space: adjacent deallocated extents merge first, so a region
/// that two answers split between them is still whole.
#[derive(Debug)]
pub struct WholeRegions {
    region: u64,
    run: Option<(u64, u64)>,
}

impl WholeRegions {
    /// Runs of `region`-byte regions (a power of two).
    pub fn new(region: u64) -> Self {
        Self { region: region.max(1), run: None }
    }

    /// Adds the extent `[start, end)`; returns the run of whole regions `[s, e)` it
    /// closed, if any.
    pub fn push(&mut self, start: u64, end: u64, deallocated: bool) -> Option<(u64, u64)> {
        match (&mut self.run, deallocated) {
            (Some((_, e)), true) if *e == start => {
                *e = end;
                None
            }
            (_, true) => self.run.replace((start, end)).and_then(|(s, e)| self.whole(s, e)),
            (_, false) => self.finish(),
        }
    }

    /// Closes the open run.
    pub fn finish(&mut self) -> Option<(u64, u64)> {
        self.run.take().and_then(|(s, e)| self.whole(s, e))
    }

    /// The whole regions inside `[start, end)`, as bytes.
    fn whole(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let s = start.div_ceil(self.region).checked_mul(self.region)?;
        let e = end / self.region * self.region;
        (s < e).then_some((s, e))
    }
}

/// `[start, end)` cut into discards of at most `max` bytes (`max` a multiple of the
/// region size, so every piece stays whole regions).
pub fn batches(start: u64, end: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let max = max.max(1);
    let mut at = start;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let len = (end - at).min(max);
            let piece = (at, len);
            at += len;
            piece
        })
    })
}

/// What a skip pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Bytes the source reported deallocated.
    pub deallocated: u64,
    /// Bytes discarded on the clone device (whole regions).
    pub discarded: u64,
    /// GET LBA STATUS commands sent.
    pub commands: u64,
}

/// Why skipping did not happen (the clone then copies everything).
#[derive(Debug, thiserror::Error)]
pub enum SkipError {
    /// The source's allocation is unknown.
    #[error("cannot read the source's allocation: {0}")]
    Source(#[from] LbaStatusError),
    /// The scan did not finish in time (the source is slow or gone).
    #[error("the source's allocation scan took longer than {0:?}")]
    Timeout(Duration),
    /// The clone device takes no discards.
    #[error("{0}")]
    Discard(String),
    /// The clone is not in a state where marking regions is safe.
    #[error("{0}")]
    Refused(String),
}

/// Scans the source (in a thread, bounded by `limit`: an SG_IO to a session that went
/// away may block until it comes back) into whole-region byte runs.
fn scan(source: &Path, region: u64, limit: Duration) -> Result<(Vec<(u64, u64)>, Skipped), SkipError> {
    let (tx, rx) = mpsc::channel();
    let source = source.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(scan_now(&source, region));
    });
    rx.recv_timeout(limit).map_err(|_| SkipError::Timeout(limit))?
}

fn scan_now(source: &Path, region: u64) -> Result<(Vec<(u64, u64)>, Skipped), SkipError> {
    let disk = ScsiDisk::open(source)?;
    let mut folder = WholeRegions::new(region);
    let (mut runs, mut stats) = (Vec::new(), Skipped::default());
    let mut lba = 0;
    // Every answer moves forward by at least one block (parse checks), so this ends;
    // the runs held are at most one per two regions of the volume.
    while lba < disk.blocks {
        let extents = disk.lba_status(lba)?;
        stats.commands += 1;
        for x in &extents {
            if x.deallocated {
                stats.deallocated += x.end - x.start;
            }
            runs.extend(folder.push(x.start, x.end, x.deallocated));
        }
        lba = extents.last().map_or(disk.blocks, |x| x.end / disk.block_size);
    }
    runs.extend(folder.finish());
    Ok((runs, stats))
}

/// The largest discard the device at `dev` takes in one bio, from sysfs.
fn discard_max(dev: &File, path: &Path) -> Result<u64, SkipError> {
    let meta = dev.metadata().map_err(|e| SkipError::Discard(format!("stat {}: {e}", path.display())))?;
    if !meta.file_type().is_block_device() {
        return Err(SkipError::Discard(format!("{} is not a block device", path.display())));
    }
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let sys = format!("/sys/dev/block/{}:{}/queue/discard_max_bytes", libc::major(rdev), libc::minor(rdev));
    let text = std::fs::read_to_string(&sys).map_err(|e| SkipError::Discard(format!("{sys}: {e}")))?;
    text.trim().parse().map_err(|_| SkipError::Discard(format!("{sys}: {text:?}")))
}

/// Asks `source` which ranges it does not hold and discards the whole `region`-byte
/// regions inside them on the clone device `device`; returns what it did. Callers make
/// sure hydration has not started and nothing wrote to the clone.
pub fn discard_unallocated(device: &Path, source: &Path, region: u64, limit: Duration) -> Result<Skipped, SkipError> {
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| SkipError::Discard(format!("open {}: {e}", device.display())))?;
    let max = discard_max(&dev, device)? / region * region;
    if max == 0 {
        return Err(SkipError::Discard(format!(
            "{} takes no discards of a whole {region}-byte region",
            device.display()
        )));
    }
    let start = Instant::now();
    let (runs, mut stats) = scan(source, region, limit)?;
    for (s, e) in runs {
        for (at, len) in batches(s, e, max.min(MAX_BATCH)) {
            let range: [u64; 2] = [at, len];
            // SAFETY: BLKDISCARD reads two u64 from the pointer.
            let rc = unsafe { libc::ioctl(dev.as_raw_fd(), BLKDISCARD, &range) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(SkipError::Discard(format!(
                    "BLKDISCARD {}+{len} on {}: {e} ({} bytes marked before it)",
                    at,
                    device.display(),
                    stats.discarded
                )));
            }
            stats.discarded += len;
        }
    }
    // A flush commits dm-clone's metadata with the marks.
    dev.sync_all().map_err(|e| SkipError::Discard(format!("flush {}: {e}", device.display())))?;
    tracing::info!(
        device = %device.display(),
        deallocated = stats.deallocated,
        discarded = stats.discarded,
        commands = stats.commands,
        ms = start.elapsed().as_millis() as u64,
        "regions the source does not hold marked hydrated without copying"
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u64 = 64 << 10;

    fn fold(r: u64, extents: &[(u64, u64, bool)]) -> Vec<(u64, u64)> {
        let mut f = WholeRegions::new(r);
        let mut v: Vec<_> = extents.iter().filter_map(|&(s, e, d)| f.push(s, e, d)).collect();
        v.extend(f.finish());
        v
    }

    #[test]
    fn partial_regions_at_both_ends_are_not_discarded() {
        // Hole from inside region 1 to inside region 5: regions 2, 3, 4 only.
        assert_eq!(fold(R, &[(0, R + 7, false), (R + 7, 5 * R + 1, true)]), vec![(2 * R, 5 * R)]);
        // Exactly aligned: all of it.
        assert_eq!(fold(R, &[(R, 3 * R, true)]), vec![(R, 3 * R)]);
        // Inside one region: nothing.
        assert_eq!(fold(R, &[(R + 1, 2 * R - 1, true)]), vec![]);
        // Allocated extents are never discarded.
        assert_eq!(fold(R, &[(0, 8 * R, false)]), vec![]);
    }

    #[test]
    fn adjacent_deallocated_extents_merge_before_rounding() {
        // Split inside region 1 (two GET LBA STATUS answers): region 1 is still whole.
        assert_eq!(fold(R, &[(0, R + 4096, true), (R + 4096, 3 * R, true)]), vec![(0, 3 * R)]);
        // An allocated block between them splits the run.
        assert_eq!(
            fold(R, &[(0, R + 4096, true), (R + 4096, R + 8192, false), (R + 8192, 4 * R, true)]),
            vec![(0, R), (2 * R, 4 * R)]
        );
        // Two holes separated by a gap in the answer (not adjacent) do not merge.
        assert_eq!(fold(R, &[(0, R + 4096, true), (R + 8192, 3 * R, true)]), vec![(0, R), (2 * R, 3 * R)]);
    }

    #[test]
    fn a_short_last_region_is_not_discarded() {
        // 10.5 regions, all a hole: dm-clone's range rounds the end down, so do we.
        let size = 10 * R + R / 2;
        assert_eq!(fold(R, &[(0, size, true)]), vec![(0, 10 * R)]);
        // A volume smaller than one region: nothing.
        assert_eq!(fold(R, &[(0, R / 2, true)]), vec![]);
    }

    #[test]
    fn batches_keep_whole_regions_and_cover_the_run() {
        let got: Vec<_> = batches(2 * R, 9 * R, 3 * R).collect();
        assert_eq!(got, vec![(2 * R, 3 * R), (5 * R, 3 * R), (8 * R, R)]);
        assert!(got.iter().all(|&(a, l)| a % R == 0 && l % R == 0));
        assert_eq!(batches(R, R, 3 * R).count(), 0);
    }

    #[test]
    fn a_missing_device_names_itself() {
        let e =
            discard_unallocated(Path::new("/nonexistent/dm"), Path::new("/nonexistent/sd"), R, Duration::from_secs(1))
                .unwrap_err();
        assert!(e.to_string().starts_with("open /nonexistent/dm: "), "{e}");
    }
}
