//! What a LUN reads from: positional reads with no lock (many commands read
//! in parallel) and an allocation map from SEEK_DATA/SEEK_HOLE so GET LBA
//! STATUS can tell a clone which ranges it may skip.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A read-only byte store behind a LUN. Implementations must allow
/// concurrent `read_exact_at` calls from many threads.
pub trait BlockStore: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; short reads past the end are an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The extent that starts at `offset`: whether it holds data, and where
    /// it ends (exclusive, at most `size()`). Stores without holes say
    /// "allocated to the end".
    fn extent_at(&self, offset: u64) -> io::Result<(bool, u64)> {
        let _ = offset;
        Ok((true, self.size()))
    }
    /// The open file behind the store, when there is one: the target then
    /// sends read data with sendfile(2), page cache to socket, never
    /// copying it through userspace. `None` (the default) means "copy".
    fn file_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A regular file or block device opened read-only.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    size: u64,
    path: PathBuf,
}

impl FileStore {
    /// Opens `path` read-only and measures it (works for block devices too).
    pub fn open(path: &Path) -> io::Result<FileStore> {
        let mut file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open LUN backing {}: {e}", path.display())))?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok(FileStore { file, size, path: path.to_path_buf() })
    }

    /// The path the store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: lseek on an fd we own; it only moves the file offset,
        // which our positional reads never use.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl BlockStore for FileStore {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn file_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }

    fn extent_at(&self, offset: u64) -> io::Result<(bool, u64)> {
        if offset >= self.size {
            return Ok((true, self.size));
        }
        match self.seek(offset, libc::SEEK_DATA) {
            Ok(Some(d)) if d > offset => Ok((false, d.min(self.size))),
            Ok(Some(_)) => {
                let h = self.seek(offset, libc::SEEK_HOLE)?.unwrap_or(self.size);
                Ok((true, h.min(self.size).max(offset + 1)))
            }
            Ok(None) => Ok((false, self.size)),
            // Filesystems or devices without SEEK_DATA: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((true, self.size)),
            Err(e) => Err(e),
        }
    }
}

/// An in-memory store, for tests and fuzzing.
#[derive(Debug, Clone)]
pub struct MemStore(pub bytes::Bytes);

impl BlockStore for MemStore {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self.0.get(o..o + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn holes_are_reported() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4 << 20).unwrap();
        f.as_file_mut().seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 65536]).unwrap();
        f.flush().unwrap();
        let s = FileStore::open(f.path()).unwrap();
        let (a, end) = s.extent_at(0).unwrap();
        if a {
            // tmpfs or a filesystem without hole tracking: nothing to assert.
            return;
        }
        assert_eq!(end, 1 << 20);
        let (a, end) = s.extent_at(1 << 20).unwrap();
        assert!(a);
        assert!(end >= (1 << 20) + 65536);
        let mut b = [0u8; 4];
        s.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(b, [7; 4]);
    }
}
