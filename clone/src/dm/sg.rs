//! GET LBA STATUS (SBC-3 §5.6) sent to a SCSI disk through SG_IO: on the dm-clone path
//! the source is a kernel SCSI disk (open-iscsi's session to the source's target), so the
//! clone asks the source which ranges it does not hold over the session the clone
//! already reads through, without a second login (docs/architecture.md, "dm-clone skips
//! what the source does not hold").
//!
//! The answer comes from the network: every descriptor is checked against the disk's
//! size, the buffer is fixed (16 KiB), and the scan must move forward at every step.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// SG_IO ioctl request (scsi/sg.h).
const SG_IO: libc::c_ulong = 0x2285;
/// `dxfer_direction`: data from the device.
const SG_DXFER_FROM_DEV: libc::c_int = -3;
/// Descriptors asked for per command (8-byte header + 16 bytes each: 16 KiB).
const DESCRIPTORS: usize = 1023;
/// Per-command timeout handed to the SCSI layer (milliseconds).
const TIMEOUT_MS: u32 = 30_000;
/// BLKSSZGET: logical block size.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// BLKGETSIZE64: size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// `struct sg_io_hdr` (scsi/sg.h).
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *mut u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: libc::c_int,
    duration: u32,
    info: u32,
}

/// Why the source's allocation could not be read (the caller copies everything).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LbaStatusError {
    /// The device is not a SCSI disk (no SG_IO) or cannot be opened.
    #[error("{0}")]
    Device(String),
    /// The target refused the command (ILLEGAL REQUEST): it does not report allocation.
    #[error("the source does not answer GET LBA STATUS (sense key {key:#x}, asc {asc:#x}/{ascq:#x})")]
    Unsupported {
        /// Sense key.
        key: u8,
        /// Additional sense code.
        asc: u8,
        /// Its qualifier.
        ascq: u8,
    },
    /// The command failed in transport or with another status.
    #[error("GET LBA STATUS failed: {0}")]
    Failed(String),
    /// The answer is malformed (past the end, not moving forward).
    #[error("GET LBA STATUS answer rejected: {0}")]
    Malformed(String),
}

/// One provisioning extent in bytes: `[start, end)`, deallocated or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteExtent {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Deallocated (reads as zeros, SBC-3 provisioning status 1).
    pub deallocated: bool,
}

/// Parses GET LBA STATUS parameter data starting at `lba` into byte extents, checked
/// against the disk (`blocks` of `block_size` bytes) and the request (the first must
/// start at `lba`, each at the end of the one before).
pub fn parse(data: &[u8], lba: u64, blocks: u64, block_size: u64) -> Result<Vec<ByteExtent>, LbaStatusError> {
    if data.len() < 8 {
        return Err(LbaStatusError::Malformed(format!("{} bytes, want at least the 8-byte header", data.len())));
    }
    let announced = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let n = announced.saturating_add(4).min(data.len());
    let mut out = Vec::new();
    let mut next = lba;
    for d in data[8..n].chunks_exact(16) {
        let start = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let count = u64::from(u32::from_be_bytes(d[8..12].try_into().expect("4 bytes")));
        let end = start.checked_add(count).filter(|&e| e <= blocks && count > 0).ok_or_else(|| {
            LbaStatusError::Malformed(format!("extent {start}+{count} past the disk's {blocks} blocks"))
        })?;
        if start != next {
            return Err(LbaStatusError::Malformed(format!("extent at block {start}, want {next}")));
        }
        out.push(ByteExtent { start: start * block_size, end: end * block_size, deallocated: d[12] & 0x0f == 1 });
        next = end;
    }
    if out.is_empty() && lba < blocks {
        return Err(LbaStatusError::Malformed(format!("no extent from block {lba}")));
    }
    Ok(out)
}

/// The source disk at `path`, opened for SG_IO.
pub struct ScsiDisk {
    file: File,
    /// Logical block size.
    pub block_size: u64,
    /// Number of logical blocks.
    pub blocks: u64,
}

fn ioctl_u64(f: &File, req: libc::c_ulong, what: &str, path: &Path) -> Result<u64, LbaStatusError> {
    let mut v: u64 = 0;
    // SAFETY: both requests write at most 8 bytes through the pointer (BLKSSZGET an int).
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req, &mut v) };
    if rc != 0 {
        return Err(LbaStatusError::Device(format!(
            "{what} of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(v)
}

impl ScsiDisk {
    /// Opens `path` read-only and reads its geometry.
    pub fn open(path: &Path) -> Result<Self, LbaStatusError> {
        let file = File::open(path).map_err(|e| LbaStatusError::Device(format!("open {}: {e}", path.display())))?;
        let block_size = ioctl_u64(&file, BLKSSZGET, "block size", path)? & 0xffff_ffff;
        let size = ioctl_u64(&file, BLKGETSIZE64, "size", path)?;
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(LbaStatusError::Device(format!("{}: block size {block_size}", path.display())));
        }
        Ok(Self { file, block_size, blocks: size / block_size })
    }

    /// One GET LBA STATUS from `lba`: the extents the target returned (at least one).
    pub fn lba_status(&self, lba: u64) -> Result<Vec<ByteExtent>, LbaStatusError> {
        let mut buf = vec![0u8; 8 + 16 * DESCRIPTORS];
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x12;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&(buf.len() as u32).to_be_bytes());
        let mut sense = [0u8; 32];
        let mut h = SgIoHdr {
            interface_id: b'S' as libc::c_int,
            dxfer_direction: SG_DXFER_FROM_DEV,
            cmd_len: cdb.len() as u8,
            mx_sb_len: sense.len() as u8,
            iovec_count: 0,
            dxfer_len: buf.len() as u32,
            dxferp: buf.as_mut_ptr().cast(),
            cmdp: cdb.as_mut_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: TIMEOUT_MS,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: the header points at buffers that outlive the call, with their lengths.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), SG_IO, &mut h) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(LbaStatusError::Device(format!("SG_IO: {e} (not a SCSI disk?)")));
        }
        if h.status == 0x02 {
            let (key, asc, ascq) = sense_of(&sense[..usize::from(h.sb_len_wr).min(sense.len())]);
            if key == 0x05 {
                return Err(LbaStatusError::Unsupported { key, asc, ascq });
            }
            return Err(LbaStatusError::Failed(format!("CHECK CONDITION, sense key {key:#x} asc {asc:#x}/{ascq:#x}")));
        }
        if h.status != 0 || h.host_status != 0 || (h.driver_status & 0x0f) != 0 {
            return Err(LbaStatusError::Failed(format!(
                "status {:#x}, host {:#x}, driver {:#x}",
                h.status, h.host_status, h.driver_status
            )));
        }
        let got = buf.len().saturating_sub(usize::try_from(h.resid.max(0)).unwrap_or(0));
        parse(&buf[..got], lba, self.blocks, self.block_size)
    }
}

/// (key, asc, ascq) of fixed or descriptor format sense data.
fn sense_of(s: &[u8]) -> (u8, u8, u8) {
    match s.first().map(|b| b & 0x7f) {
        Some(0x72 | 0x73) if s.len() >= 4 => (s[1] & 0x0f, s[2], s[3]),
        Some(0x70 | 0x71) if s.len() >= 14 => (s[2] & 0x0f, s[12], s[13]),
        _ => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(descs: &[(u64, u32, u8)]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v[0..4].copy_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        for &(lba, n, st) in descs {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[st, 0, 0, 0]);
        }
        v
    }

    #[test]
    fn descriptors_become_byte_extents() {
        let got = parse(&answer(&[(8, 8, 1), (16, 4, 0), (20, 12, 2)]), 8, 32, 512).unwrap();
        assert_eq!(
            got,
            vec![
                ByteExtent { start: 4096, end: 8192, deallocated: true },
                ByteExtent { start: 8192, end: 10240, deallocated: false },
                // Anchored is not deallocated: copied.
                ByteExtent { start: 10240, end: 16384, deallocated: false },
            ]
        );
    }

    #[test]
    fn hostile_answers_are_rejected() {
        let past = parse(&answer(&[(0, 40, 1)]), 0, 32, 512).unwrap_err();
        assert_eq!(past.to_string(), "GET LBA STATUS answer rejected: extent 0+40 past the disk's 32 blocks");
        let gap = parse(&answer(&[(0, 4, 1), (8, 4, 1)]), 0, 32, 512).unwrap_err();
        assert_eq!(gap.to_string(), "GET LBA STATUS answer rejected: extent at block 8, want 4");
        let empty = parse(&answer(&[]), 0, 32, 512).unwrap_err();
        assert_eq!(empty.to_string(), "GET LBA STATUS answer rejected: no extent from block 0");
        let zero = parse(&answer(&[(0, 0, 1)]), 0, 32, 512).unwrap_err();
        assert!(zero.to_string().contains("past the disk"), "{zero}");
        // A length field larger than the buffer reads only what is there.
        let mut long = answer(&[(0, 32, 1)]);
        long[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&long, 0, 32, 512).unwrap().len(), 1);
    }

    #[test]
    fn sense_formats() {
        assert_eq!(sense_of(&[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00]), (5, 0x20, 0));
        assert_eq!(sense_of(&[0x72, 0x05, 0x24, 0x01]), (5, 0x24, 1));
        assert_eq!(sense_of(&[]), (0, 0, 0));
    }
}
