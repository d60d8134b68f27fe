//! The I/O boundary of the userspace engine: what it reads from (a [`BlockSource`]),
//! writes to (a [`Dest`]) and records in (a [`MetaStore`]). Tests put fault-injecting
//! fakes here, like crucible's fake downstairs; production uses files, block devices
//! and the iSCSI initiator.
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::identity::{CLONE_ID_LEN, DestIdentity};

/// Which queue a source read joins. A workload waits on `Foreground` reads, so a source
/// with more than one connection keeps them off the connection that carries the
/// `Background` hydration batches (where they would wait behind megabytes of reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// On-demand fetches for workload I/O: latency matters.
    Foreground,
    /// Background hydration: throughput matters.
    Background,
}

/// Receives the bytes of [`BlockSource::read_runs`] as they arrive: `(offset, pieces)`,
/// the pieces contiguous from `offset` (an iSCSI read's Data-In segments, so the dest
/// can take them in one vectored write). Calls may come in any order (reads complete as
/// the source answers); a run that succeeds was covered exactly once. An error from the
/// sink fails that run.
pub type RunSink<'a> = dyn FnMut(u64, &[&[u8]]) -> io::Result<()> + 'a;

thread_local! {
    /// One reusable read buffer per thread for sources without a pipelined `read_runs`,
    /// so a hydration batch does not allocate per region.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Anything that reads blocks: the iSCSI initiator, a local file or block device.
pub trait BlockSource: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// A stable name of the source (path, or target IQN + LUN), recorded in the
    /// metadata so a resume never mixes two volumes.
    fn identity(&self) -> String;
    /// Fill `buf` from byte `offset` (region-aligned; the last region may be short).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Byte ranges known to be deallocated (read as zeros), if the source can tell
    /// (GET LBA STATUS, SEEK_HOLE). They are never fetched.
    fn deallocated(&self) -> io::Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }
    /// Reads several byte ranges on `lane`, handing the bytes to `sink` as they arrive;
    /// one result per run. Pipelined sources (iSCSI) keep all of them in flight at once
    /// and pass their receive buffers through without a copy; the default reads them
    /// one by one into a per-thread buffer.
    fn read_runs(&self, lane: Lane, runs: &[Range<u64>], sink: &mut RunSink<'_>) -> Vec<io::Result<()>> {
        let _ = lane;
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            runs.iter()
                .map(|run| {
                    let n = (run.end - run.start) as usize;
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    self.read_at(run.start, &mut buf[..n])?;
                    sink(run.start, &[&buf[..n]])
                })
                .collect()
        })
    }
    /// The smallest read this source accepts at any offset (bytes), if reads need not be
    /// whole regions. With it, an on-demand read fetches the bytes the workload asked
    /// for first and answers at once, then the rest of the region (still once each).
    /// `None`: only whole regions are read.
    fn read_granularity(&self) -> Option<u64> {
        None
    }
}

/// A dest write that failed inside a source read's sink: carried through
/// [`BlockSource::read_runs`] as the run's error, so the engine (and a source that
/// reconnects on errors) can tell a full or broken dest from a source that does not
/// answer.
#[derive(Debug, thiserror::Error)]
#[error("write at byte {offset}: {source}")]
pub struct DestWriteFailed {
    /// First byte of the failed write.
    pub offset: u64,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl DestWriteFailed {
    /// Wraps a dest error for a sink's return value (same kind, so retry logic sees it).
    pub fn wrap(offset: u64, source: io::Error) -> io::Error {
        io::Error::new(source.kind(), DestWriteFailed { offset, source })
    }

    /// Whether `e` is a dest failure rather than the source's.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<DestWriteFailed>())
    }
}

/// Where hydrated regions land: a file or block device at least the source's size.
pub trait Dest: Send + Sync {
    /// Size in bytes (must be at least the source's).
    fn size(&self) -> io::Result<u64>;
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `offset` (not yet durable).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Write `pieces` back to back from `offset` (one system call where the dest can).
    fn write_vectored_at(&self, offset: u64, pieces: &[&[u8]]) -> io::Result<()> {
        let mut at = offset;
        for p in pieces {
            self.write_at(at, p)?;
            at += p.len() as u64;
        }
        Ok(())
    }
    /// Make every completed write durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Make `[offset, offset+len)` read as zeros, freeing space where possible.
    fn punch(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Where it lives, for error messages (`None`: not a file).
    fn path(&self) -> Option<PathBuf> {
        None
    }
    /// Who the dest is, as found when opened (before any extension): recorded in the
    /// metadata so a resume onto another or a recreated dest is refused. `None`: the
    /// dest cannot tell (then only its size binds it).
    fn identity(&self) -> Option<DestIdentity> {
        None
    }
    /// Writes the clone id onto the dest as a marker a resume checks (an xattr on a
    /// file), durably; `Ok(false)` where the dest cannot hold one.
    fn set_marker(&self, id: &[u8; CLONE_ID_LEN]) -> io::Result<bool> {
        let _ = id;
        Ok(false)
    }
    /// The marker [`Dest::set_marker`] wrote, if any.
    fn marker(&self) -> io::Result<Option<[u8; CLONE_ID_LEN]>> {
        Ok(None)
    }
}

/// The metadata file's storage.
pub trait MetaStore: Send + Sync {
    /// Current length in bytes (0 for a fresh file).
    fn len(&self) -> io::Result<u64>;
    /// Whether the store holds nothing yet (a fresh clone).
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make writes durable.
    fn sync(&self) -> io::Result<()>;
    /// Where it lives, for error messages.
    fn path(&self) -> PathBuf;
    /// Makes freshly written (and synced) metadata the store's content in one step:
    /// [`FileMeta::create`] renames its new file over the old one, so a crash while a
    /// clone is created leaves the old metadata or none, never a half-written file.
    fn publish(&self) -> io::Result<()> {
        Ok(())
    }
}

fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A local file or block device as a source (tests, one-off local moves).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileSource {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = size_of(&file)?;
        Ok(Self { file, path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()), size })
    }
}

impl BlockSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn identity(&self) -> String {
        format!("file:{}", self.path.display())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn read_granularity(&self) -> Option<u64> {
        Some(512)
    }
    fn deallocated(&self) -> io::Result<Option<Vec<Range<u64>>>> {
        if self.file.metadata()?.file_type().is_block_device() {
            return Ok(None);
        }
        let fd = self.file.as_raw_fd();
        let mut holes = Vec::new();
        let mut pos: i64 = 0;
        let end = self.size as i64;
        // Bounded: each turn moves `pos` forward past one data extent.
        while pos < end {
            // SAFETY: lseek on an fd we own; no memory is passed.
            let hole = unsafe { libc::lseek(fd, pos, libc::SEEK_HOLE) };
            if hole < 0 || hole >= end {
                break;
            }
            // SAFETY: as above.
            let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
            let data_at = if data < 0 { end } else { data.min(end) };
            holes.push(hole as u64..data_at as u64);
            pos = data_at;
        }
        Ok(Some(holes))
    }
}

/// A dest file or block device.
#[derive(Debug)]
pub struct FileDest {
    file: File,
    path: PathBuf,
    /// The same file opened with O_DIRECT, if asked for ([`FileDest::with_direct_io`]):
    /// hydration's page-aligned vectored writes go there, skipping the page cache copy.
    direct: Option<File>,
    block: bool,
    size: u64,
    /// Who the dest was when opened (size before extension).
    identity: DestIdentity,
    /// Serializes buffered writes to a regular file (hydration's and the workload's).
    /// The kernel takes the inode's lock
    /// for each anyway, and hydration workers contending for it spun on it: 9 % of a
    /// hydration's CPU to tmpfs went to the spin, and waiting here instead cut the CPU
    /// per GiB 16 % (bench: 9 rounds, 0.96 vs 1.15 s median).
    writing: std::sync::Mutex<()>,
}

/// Memory and offset alignment for O_DIRECT writes (a page: every logical block size).
const DIRECT_ALIGN: usize = 4096;

impl FileDest {
    /// Opens (creating a sparse file of `size` bytes if missing) a dest for `size` bytes:
    /// for a fresh clone.
    pub fn open(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Self::with_file(file, path, Some(size))
    }

    /// Opens an existing dest as it is (never created, never extended): for a resume,
    /// which must find the dest its metadata describes and leaves it untouched if not.
    pub fn open_existing(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::with_file(file, path, None)
    }

    fn with_file(file: File, path: &Path, grow_to: Option<u64>) -> io::Result<Self> {
        let block = file.metadata()?.file_type().is_block_device();
        let have = size_of(&file)?;
        let identity = DestIdentity::of(&file, have)?;
        if let Some(size) = grow_to
            && !block
            && have < size
        {
            file.set_len(size)?;
        }
        let size = size_of(&file)?;
        let writing = std::sync::Mutex::new(());
        Ok(Self { file, path: path.to_path_buf(), direct: None, block, size, identity, writing })
    }

    /// Sends hydration's page-aligned writes through O_DIRECT where the filesystem
    /// allows it (else they stay buffered). It saves the page cache copy, which pays
    /// where CPU is short and the dest is fast; on a slow disk the buffered path's
    /// deeper writeback queue wins (bench/clone.sh: 170-203 MB/s direct vs 267-289
    /// buffered on this machine's virtio disk), so it is off by default.
    pub fn with_direct_io(mut self, path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok();
        self
    }

    /// Whether aligned hydration writes bypass the page cache (O_DIRECT).
    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
    }

    /// Size of the dest in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The turn of a buffered write to a regular file (see `writing`); block devices
    /// take no inode lock for it, so their writes stay concurrent.
    fn one_writer(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        (!self.block).then(|| self.writing.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Dest for FileDest {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn path(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }
    fn identity(&self) -> Option<DestIdentity> {
        Some(self.identity)
    }
    fn set_marker(&self, id: &[u8; CLONE_ID_LEN]) -> io::Result<bool> {
        // A device node's xattrs live on /dev, not on the device: block devices are
        // bound by device number and size alone.
        if self.block { Ok(false) } else { crate::identity::set_marker(&self.file, id) }
    }
    fn marker(&self) -> io::Result<Option<[u8; CLONE_ID_LEN]>> {
        if self.block { Ok(None) } else { crate::identity::marker(&self.file) }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _one = self.one_writer();
        self.file.write_all_at(data, offset)
    }
    fn write_vectored_at(&self, offset: u64, pieces: &[&[u8]]) -> io::Result<()> {
        let aligned =
            |p: &&[u8]| (p.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && p.len().is_multiple_of(DIRECT_ALIGN);
        if let Some(direct) = &self.direct
            && (offset as usize).is_multiple_of(DIRECT_ALIGN)
            && pieces.iter().all(aligned)
        {
            match pwritev_all(direct, offset, pieces) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // not for this file after all: buffered
                other => return other,
            }
        }
        let _one = self.one_writer();
        pwritev_all(&self.file, offset, pieces)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        if self.block {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64 from the pointer we pass.
            if unsafe { libc::ioctl(fd, BLKZEROOUT, &range) } == 0 {
                return Ok(());
            }
        } else {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on an fd we own; no memory is passed.
            if unsafe { libc::fallocate(fd, mode, offset as i64, len as i64) } == 0 {
                return Ok(());
            }
        }
        // Fallback: write zeros in bounded chunks.
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Writes all of `pieces` at `offset` with as few pwritev calls as the kernel allows.
fn pwritev_all(file: &File, offset: u64, pieces: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = pieces.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut rest: &mut [std::io::IoSlice<'_>] = &mut slices;
    let mut at = offset;
    // Bounded: every turn writes at least one byte (0 is an error) or ends.
    while !rest.is_empty() {
        let n = nix::sys::uio::pwritev(file, rest, at as libc::off_t).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n as u64;
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// The metadata as a plain file (or a small block device).
#[derive(Debug)]
pub struct FileMeta {
    file: File,
    path: PathBuf,
    /// While a fresh file is written beside `path` ([`FileMeta::create`]): its name,
    /// renamed over `path` by [`MetaStore::publish`].
    pending: std::sync::Mutex<Option<PathBuf>>,
}

impl FileMeta {
    /// Opens existing metadata to resume from (`NotFound` if there is none).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file, path: path.to_path_buf(), pending: std::sync::Mutex::new(None) })
    }

    /// A store for fresh metadata at `path`. A file is written as `<path>.new` and
    /// renamed over `path` once complete and synced, so until then any old metadata
    /// stays as it was; a block device is written in place.
    pub fn create(path: &Path) -> io::Result<Self> {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Self::open(path);
        }
        let mut name = path.as_os_str().to_owned();
        name.push(".new");
        let tmp = PathBuf::from(name);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        Ok(Self { file, path: path.to_path_buf(), pending: std::sync::Mutex::new(Some(tmp)) })
    }
}

impl MetaStore for FileMeta {
    fn len(&self) -> io::Result<u64> {
        size_of(&self.file)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn path(&self) -> PathBuf {
        self.path.clone()
    }
    fn publish(&self) -> io::Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tmp) = pending.as_ref() else { return Ok(()) };
        self.file.sync_all()?;
        std::fs::rename(tmp, &self.path)?;
        // The rename is durable once the directory is.
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        *pending = None;
        Ok(())
    }
}
