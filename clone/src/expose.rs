//! Presents a userspace clone as a block device: a FUSE file (fuser) whose reads and
//! writes go through the [`Engine`], attached to a loop device (direct I/O where the
//! kernel allows it, so pages are not cached twice), with a stable symlink to
//! `/dev/loopN` for the workload. The workload never sees the engine's API.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::engine::Engine;
use crate::error::{CloneError, Result};

/// Name of the one file in the FUSE mount.
pub const FILE_NAME: &str = "volume";
const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(3600);

struct VolumeFs {
    engine: Arc<Engine>,
    uid: u32,
    gid: u32,
}

/// loop passes ENOSPC up as BLK_STS_NOSPC: the filesystem reports a full disk, not EIO.
fn errno(e: &CloneError) -> Errno {
    Errno::from_i32(e.errno())
}

impl VolumeFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let dir = ino == INodeNo::ROOT;
        let size = if dir { 0 } else { self.engine.size() };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir { FileType::Directory } else { FileType::RegularFile },
            perm: if dir { 0o755 } else { 0o600 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn clip(&self, offset: u64, len: u64) -> u64 {
        len.min(self.engine.size().saturating_sub(offset))
    }
}

impl Filesystem for VolumeFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.attr(FILE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT | FILE_INO => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The volume's size is fixed; other attribute changes are accepted and ignored.
        if size.is_some_and(|s| s != self.engine.size()) {
            reply.error(Errno::EINVAL);
        } else {
            reply.attr(&TTL, &self.attr(ino));
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Direct I/O: the loop device's page cache is the only cache.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; self.clip(offset, size as u64) as usize];
        let t0 = Instant::now();
        let res = self.engine.read(offset, &mut buf);
        tracing::trace!(parent: &self.engine.span, offset, size, took = ?t0.elapsed(), "fuse read");
        match res {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::warn!(parent: &self.engine.span, error = %e, offset, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let n = self.clip(offset, data.len() as u64) as usize;
        if n < data.len() {
            return reply.error(Errno::from_i32(libc::ENOSPC));
        }
        match self.engine.write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                tracing::warn!(parent: &self.engine.span, error = %e, offset, "write failed");
                reply.error(errno(&e))
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let t0 = Instant::now();
        let res = self.engine.flush();
        tracing::trace!(parent: &self.engine.span, took = ?t0.elapsed(), "fuse fsync");
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let length = self.clip(offset, length);
        let res = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            self.engine.discard(offset, length)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            self.engine.write_zeroes(offset, length)
        } else {
            Ok(()) // plain allocation: the dest is already sized
        };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A clone exposed as `/dev/loopN`. Dropping it detaches the loop device, removes the
/// symlink and unmounts the FUSE file (the engine keeps running).
pub struct Exposed {
    device: PathBuf,
    file: PathBuf,
    symlink: Option<PathBuf>,
    direct_io: bool,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposed")
            .field("device", &self.device)
            .field("file", &self.file)
            .field("direct_io", &self.direct_io)
            .finish()
    }
}

fn expose_err(path: &Path, reason: impl Into<String>) -> CloneError {
    CloneError::Expose { path: path.to_path_buf(), reason: reason.into() }
}

impl Exposed {
    /// Mounts the FUSE file under `mountpoint` (created if missing), attaches a loop
    /// device to it and points `symlink` (if given) at the device. Needs root (loop).
    pub fn start(engine: Arc<Engine>, mountpoint: &Path, symlink: Option<&Path>) -> Result<Self> {
        std::fs::create_dir_all(mountpoint).map_err(|e| expose_err(mountpoint, format!("create mount point: {e}")))?;
        let fs = VolumeFs {
            engine: engine.clone(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![MountOption::FSName("meshdrain-clone".into()), MountOption::DefaultPermissions];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
            expose_err(mountpoint, format!("FUSE mount failed: {e} (is /dev/fuse present and are we root?)"))
        })?;
        let file = mountpoint.join(FILE_NAME);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) != engine.size() {
            if Instant::now() >= deadline {
                return Err(expose_err(&file, "FUSE file did not appear within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut me = Self {
            device: PathBuf::new(),
            file: file.clone(),
            symlink: None,
            direct_io: false,
            session: Some(session),
        };
        let (device, direct_io) = attach_loop(&file)?;
        me.device = device;
        me.direct_io = direct_io;
        if let Some(link) = symlink {
            let tmp = link.with_extension("tmp-link");
            let _ = std::fs::remove_file(&tmp);
            if let Some(dir) = link.parent() {
                std::fs::create_dir_all(dir).map_err(|e| expose_err(dir, format!("create symlink dir: {e}")))?;
            }
            std::os::unix::fs::symlink(&me.device, &tmp).map_err(|e| expose_err(link, format!("symlink: {e}")))?;
            std::fs::rename(&tmp, link).map_err(|e| expose_err(link, format!("rename symlink: {e}")))?;
            me.symlink = Some(link.to_path_buf());
        }
        tracing::info!(parent: &engine.span, device = %me.device.display(), direct_io, "clone exposed");
        Ok(me)
    }

    /// The loop device the workload uses (`/dev/loopN`).
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The FUSE file behind the loop device.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether the loop device runs with direct I/O.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// Detaches the loop device, removes the symlink, unmounts.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first = None;
        if let Some(link) = self.symlink.take() {
            let _ = std::fs::remove_file(link);
        }
        if !self.device.as_os_str().is_empty() {
            if let Err(e) = crate::loopdev::detach(&self.device) {
                first = Some(expose_err(&self.device, e.to_string()));
            }
            self.device = PathBuf::new();
        }
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            first.get_or_insert(expose_err(&self.file, format!("unmount: {e}")));
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "exposure teardown");
        }
    }
}

/// Attaches `file` to a free loop device, trying direct I/O first.
fn attach_loop(file: &Path) -> Result<(PathBuf, bool)> {
    let a = crate::loopdev::attach(file, true).map_err(|e| expose_err(file, e.to_string()))?;
    Ok((a.device, a.direct_io))
}
