//! Loop devices through the kernel's own interface (loop(4)): a free device from
//! `/dev/loop-control`, one `LOOP_CONFIGURE` to bind a file (with `LOOP_SET_FD` +
//! `LOOP_SET_STATUS64` on kernels before 5.8), `LOOP_CLR_FD` to unbind, and sysfs to find
//! the device over a file. The product used to spawn `losetup` and parse its output;
//! both the clone exposure ([`crate::expose`]) and the agent's dm-clone plane use this.
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the kernel lists loop devices and what they are bound to.
const SYS_BLOCK: &str = "/sys/block";
/// The loop control device (hands out free device numbers).
const LOOP_CONTROL: &str = "/dev/loop-control";
/// How many times a free device taken by someone else between asking and binding is retried.
const BUSY_RETRIES: usize = 16;

// ioctl numbers and flags of include/uapi/linux/loop.h (the "bad" kind: no size encoded).
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device operation that failed: names the device or file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source} ({})", path.display(), fix(source))]
pub struct LoopError {
    /// What was being done ("bind", "detach", ...).
    pub what: &'static str,
    /// The loop device or backing file.
    pub path: PathBuf,
    /// The kernel's answer.
    #[source]
    pub source: std::io::Error,
}

/// The operator's next step for a kernel answer.
fn fix(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "loop devices need root (CAP_SYS_ADMIN)",
        Some(libc::ENOENT | libc::ENODEV) => "no such loop device: is loop support loaded (`modprobe loop`)?",
        Some(libc::ENXIO) => "the loop device is not bound to a file",
        Some(libc::EBUSY) => "every free loop device was taken meanwhile: retry, or raise max_loop",
        Some(libc::ENOSPC) => "no free loop device: detach unused ones or raise max_loop",
        _ => "are loop devices available here?",
    }
}

fn err(what: &'static str, path: &Path, source: std::io::Error) -> LoopError {
    LoopError { what, path: path.to_path_buf(), source }
}

/// A file bound to a loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// Whether the kernel runs it with direct I/O (read back from sysfs: asked for is not granted).
    pub direct_io: bool,
}

/// Binds `file` to a free loop device, read-write (read-only when the file is), with
/// direct I/O when `direct_io` is asked for and the kernel and file allow it (else
/// buffered, as `losetup --direct-io=on` falls back).
pub fn attach(file: &Path, direct_io: bool) -> Result<Attached, LoopError> {
    attach_flags(file, direct_io, 0).map(|(a, _)| a)
}

/// Binds `file` (buffered) to a free loop device that the kernel unbinds by itself once
/// nothing holds it open, as `mount -o loop` does: the returned handle holds it until a
/// mount (or another opener) takes over, so drop it only after mounting.
pub fn attach_autoclear(file: &Path) -> Result<(Attached, File), LoopError> {
    attach_flags(file, false, LO_FLAGS_AUTOCLEAR)
}

fn attach_flags(file: &Path, direct_io: bool, extra: u32) -> Result<(Attached, File), LoopError> {
    let mut last = None;
    for direct in [true, false] {
        if direct && !direct_io {
            continue;
        }
        match attach_once(file, direct, extra) {
            Ok((device, handle)) => {
                let direct_io = sys_loop_attr(&device, "dio").is_some_and(|s| s == "1");
                tracing::debug!(device = %device.display(), file = %file.display(), direct_io, "loop device bound");
                return Ok((Attached { device, direct_io }, handle));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

fn open_backing(file: &Path, direct: bool) -> Result<(File, bool), LoopError> {
    let custom = if direct { libc::O_DIRECT } else { 0 };
    match OpenOptions::new().read(true).write(true).custom_flags(custom).open(file) {
        Ok(f) => Ok((f, false)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(custom)
                .open(file)
                .map_err(|e| err("open backing file", file, e))?;
            Ok((f, true))
        }
        Err(e) => Err(err("open backing file", file, e)),
    }
}

fn attach_once(file: &Path, direct: bool, extra: u32) -> Result<(PathBuf, File), LoopError> {
    let (backing, read_only) = open_backing(file, direct)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|e| err("open", Path::new(LOOP_CONTROL), e))?;
    let mut flags = extra | if direct { LO_FLAGS_DIRECT_IO } else { 0 };
    if read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    let mut busy = None;
    for _ in 0..BUSY_RETRIES {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(err("find a free loop device via", Path::new(LOOP_CONTROL), std::io::Error::last_os_error()));
        }
        let device = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).write(!read_only).open(&device).map_err(|e| err("open", &device, e))?;
        match bind(&dev, &backing, file, flags) {
            Ok(()) => return Ok((device, dev)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = Some(err("bind", &device, e)),
            Err(e) => {
                return Err(LoopError {
                    what: "bind",
                    path: device,
                    source: std::io::Error::new(e.kind(), format!("{e} while binding {}", file.display())),
                });
            }
        }
    }
    Err(busy.expect("retried"))
}

/// Binds `backing` to the open loop device `dev`: LOOP_CONFIGURE, or the older pair.
fn bind(dev: &File, backing: &File, name: &Path, flags: u32) -> std::io::Result<()> {
    let fd = dev.as_raw_fd();
    // SAFETY: both structs are plain integers and byte arrays, valid all-zero.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.lo_flags = flags;
    // The name `losetup -l` shows (informational; at most 63 bytes and a NUL).
    let name = name.as_os_str().as_encoded_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig { fd: backing.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` that outlives the call.
    if unsafe { libc::ioctl(fd, LOOP_CONFIGURE, &config as *const LoopConfig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(e);
    }
    // Kernels before 5.8 (or a refused flag): bind, then set the status and direct I/O.
    // SAFETY: LOOP_SET_FD takes the backing descriptor by value.
    if unsafe { libc::ioctl(fd, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    info.lo_flags = flags & !LO_FLAGS_DIRECT_IO;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64` that outlives the call.
    let mut rc = unsafe { libc::ioctl(fd, LOOP_SET_STATUS64, &info as *const LoopInfo64) };
    if rc == 0 && flags & LO_FLAGS_DIRECT_IO != 0 {
        // SAFETY: LOOP_SET_DIRECT_IO takes 0 or 1 by value.
        rc = unsafe { libc::ioctl(fd, LOOP_SET_DIRECT_IO, 1 as libc::c_ulong) };
    }
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(fd, LOOP_CLR_FD) };
        return Err(e);
    }
    Ok(())
}

/// Unbinds the loop device `device` from its file. A device still open (a mounted file
/// system) is unbound by the kernel at its last close, as `losetup -d` does.
pub fn detach(device: &Path) -> Result<(), LoopError> {
    let dev = File::open(device).map_err(|e| err("open", device, e))?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) } != 0 {
        return Err(err("detach", device, std::io::Error::last_os_error()));
    }
    tracing::debug!(device = %device.display(), "loop device detached");
    Ok(())
}

/// `/sys/block/<loopN>/loop/<attr>`, trimmed; `None` for an unbound device.
fn sys_loop_attr(device: &Path, attr: &str) -> Option<String> {
    let name = device.file_name()?;
    let text = std::fs::read_to_string(Path::new(SYS_BLOCK).join(name).join("loop").join(attr)).ok()?;
    Some(text.trim_end_matches('\n').to_owned())
}

/// Every bound loop device with its backing file, ordered by device number.
pub fn list() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(SYS_BLOCK) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("loop")?.parse::<u32>().ok()?;
            let device = PathBuf::from("/dev").join(&name);
            let backing = sys_loop_attr(&device, "backing_file")?;
            Some((n, device, PathBuf::from(backing)))
        })
        .collect();
    found.sort_by_key(|(n, ..)| *n);
    found.into_iter().map(|(_, d, b)| (d, b)).collect()
}

/// The loop devices bound to `file` (as `losetup -j` finds them; the path is compared
/// after resolving symlinks, as the kernel reports it).
pub fn backed_by(file: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    list().into_iter().filter(|(_, b)| *b == want).map(|(d, _)| d).collect()
}

/// The loop devices whose backing file lies under `dir` (what a killed process left over
/// its mount).
pub fn backed_under(dir: &Path) -> Vec<PathBuf> {
    list().into_iter().filter(|(_, b)| b.starts_with(dir)).map(|(d, _)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_structs_have_the_kernel_sizes() {
        // include/uapi/linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn errors_name_the_device_and_the_fix() {
        let e = err("detach", Path::new("/dev/loop7"), std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            e.to_string(),
            "detach /dev/loop7: Operation not permitted (os error 1) (loop devices need root (CAP_SYS_ADMIN))"
        );
        let e = err("open", Path::new(LOOP_CONTROL), std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.to_string().ends_with("(no such loop device: is loop support loaded (`modprobe loop`)?)"), "{e}");
    }

    #[test]
    fn a_file_with_no_loop_device_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, [0u8; 4096]).unwrap();
        assert_eq!(backed_by(&f), Vec::<PathBuf>::new());
        assert_eq!(backed_under(dir.path()), Vec::<PathBuf>::new());
    }
}
