//! Who a dest is, so clone metadata is bound to the dest it describes as well as to
//! its source (see the binding rules in [`crate::metadata`]). A bitmap says "these
//! regions are on the dest"; read against another dest, or the same path recreated,
//! it would serve zeros as data and never fetch them.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// What kind of object the dest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestKind {
    /// A regular file: identified by inode number and birth time (and the marker).
    File,
    /// A block device: identified by its device number and size.
    Block,
}

/// The identity of a dest as found when it was opened (before any extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestIdentity {
    /// File or block device.
    pub kind: DestKind,
    /// `st_dev` of a file (compared only when nothing better is known, see
    /// [`DestIdentity::mismatch`]); `st_rdev` of a block device.
    pub dev: u64,
    /// Inode number of a file (0 for a block device).
    pub ino: u64,
    /// Birth time of a file (seconds, nanoseconds), where the filesystem reports it.
    pub born: Option<(i64, u32)>,
    /// Size in bytes when opened.
    pub size: u64,
}

impl DestIdentity {
    /// Reads the identity of an open dest; `size` is its size before any extension.
    pub fn of(file: &File, size: u64) -> io::Result<Self> {
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            return Ok(Self { kind: DestKind::Block, dev: meta.rdev(), ino: 0, born: None, size });
        }
        let born = meta.created().ok().and_then(|t| {
            let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some((d.as_secs() as i64, d.subsec_nanos()))
        });
        Ok(Self { kind: DestKind::File, dev: meta.dev(), ino: meta.ino(), born, size })
    }

    /// Why `found` is not the dest recorded as `self` (`None`: the same dest).
    /// `marker`: whether a marker carrying the clone id vouches for the file.
    ///
    /// A file's `st_dev` is not compared when its birth time or the marker is known:
    /// btrfs, overlayfs and NFS number their devices at mount time, so it changes across
    /// a reboot while the file stays the same; inode number + birth time do not.
    pub fn mismatch(&self, found: &DestIdentity, marker: bool) -> Option<String> {
        if self.kind != found.kind {
            return Some(format!("it was a {}, now a {}", self.kind.name(), found.kind.name()));
        }
        if self.size != found.size {
            return Some(format!("it held {} bytes, now {}", self.size, found.size));
        }
        match self.kind {
            DestKind::Block if self.dev != found.dev => Some(format!(
                "it was device {}:{}, now {}:{}",
                libc::major(self.dev),
                libc::minor(self.dev),
                libc::major(found.dev),
                libc::minor(found.dev)
            )),
            DestKind::Block => None,
            DestKind::File if self.ino != found.ino => {
                Some(format!("it was inode {}, now inode {} (another or a recreated file)", self.ino, found.ino))
            }
            DestKind::File if self.born != found.born => Some(format!(
                "it was born at {}, this file at {} (a recreated file)",
                born_text(self.born),
                born_text(found.born)
            )),
            DestKind::File if self.born.is_none() && !marker && self.dev != found.dev => {
                Some(format!("it was on device {:#x}, now {:#x}", self.dev, found.dev))
            }
            DestKind::File => None,
        }
    }
}

impl DestKind {
    fn name(self) -> &'static str {
        match self {
            Self::File => "regular file",
            Self::Block => "block device",
        }
    }

    /// The on-disk code (0 is "unknown": a dest that cannot name itself).
    pub(crate) fn code(kind: Option<Self>) -> u32 {
        match kind {
            None => 0,
            Some(Self::File) => 1,
            Some(Self::Block) => 2,
        }
    }

    /// Inverse of [`DestKind::code`]; `Err` for a code this build does not know.
    pub(crate) fn from_code(code: u32) -> Result<Option<Self>, u32> {
        match code {
            0 => Ok(None),
            1 => Ok(Some(Self::File)),
            2 => Ok(Some(Self::Block)),
            c => Err(c),
        }
    }
}

fn born_text(born: Option<(i64, u32)>) -> String {
    born.map_or_else(|| "an unknown time".into(), |(s, ns)| format!("{s}.{ns:09}"))
}

/// Bytes of a clone id.
pub const CLONE_ID_LEN: usize = 16;

/// A fresh random clone id (getrandom(2)).
pub fn new_clone_id() -> io::Result<[u8; CLONE_ID_LEN]> {
    let mut id = [0u8; CLONE_ID_LEN];
    let mut got = 0;
    // Bounded: each turn fills at least one byte or returns an error (EINTR retries).
    while got < id.len() {
        // SAFETY: getrandom writes at most `len - got` bytes into the rest of `id`.
        let n = unsafe { libc::getrandom(id[got..].as_mut_ptr().cast(), id.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(id)
}

/// The extended attribute that carries the clone id on a dest file.
pub const MARKER_XATTR: &std::ffi::CStr = c"user.meshdrain.clone-id";

/// Sets the marker on `file` and makes it durable; `Ok(false)` where the filesystem
/// keeps no user xattrs (the binding then rests on inode number and birth time).
pub fn set_marker(file: &File, id: &[u8; CLONE_ID_LEN]) -> io::Result<bool> {
    // SAFETY: fsetxattr reads `id.len()` bytes from `id` and the NUL-terminated name.
    let rc = unsafe { libc::fsetxattr(file.as_raw_fd(), MARKER_XATTR.as_ptr(), id.as_ptr().cast(), id.len(), 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP | libc::EPERM | libc::EACCES) => Ok(false),
            _ => Err(e),
        };
    }
    file.sync_all()?;
    Ok(true)
}

/// The marker on `file`, if it has one of the right length.
pub fn marker(file: &File) -> io::Result<Option<[u8; CLONE_ID_LEN]>> {
    let mut id = [0u8; CLONE_ID_LEN];
    // SAFETY: fgetxattr writes at most `id.len()` bytes into `id`.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), MARKER_XATTR.as_ptr(), id.as_mut_ptr().cast(), id.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP | libc::ERANGE) => Ok(None),
            _ => Err(e),
        };
    }
    Ok((n as usize == CLONE_ID_LEN).then_some(id))
}
