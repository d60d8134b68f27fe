//! The SCSI command set of a read-only disk (SBC-3/SPC-4), as a pure
//! function of the CDB and a [`BlockStore`]: data and status out, no
//! sockets. Every write-type command fails WRITE PROTECTED.

pub mod inquiry;
pub mod mode;
pub mod opcodes;
pub mod sense;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::store::BlockStore;
pub use sense::{CHECK_CONDITION, GOOD, Sense};

/// Logical block size we present.
pub const BLOCK_SIZE: u32 = 512;
/// Most blocks one READ may ask for (8 MiB): bounds per-command memory.
pub const MAX_TRANSFER_BLOCKS: u32 = 16_384;

/// A command failed with CHECK CONDITION and this sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiError(pub Sense);

impl From<Sense> for ScsiError {
    fn from(s: Sense) -> Self {
        ScsiError(s)
    }
}

/// The outcome of one SCSI command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status byte.
    pub status: u8,
    /// Fixed-format sense on CHECK CONDITION, empty otherwise.
    pub sense: Vec<u8>,
    /// Data-In bytes the command produced (before truncation to EDTL).
    pub data: Bytes,
}

impl ScsiResult {
    fn good(data: Bytes) -> ScsiResult {
        ScsiResult { status: GOOD, sense: Vec::new(), data }
    }
    /// CHECK CONDITION with a sense.
    pub fn check(s: Sense) -> ScsiResult {
        ScsiResult { status: CHECK_CONDITION, sense: s.fixed().to_vec(), data: Bytes::new() }
    }
}

/// One read-only logical unit.
pub struct Lun {
    /// Where the blocks come from.
    pub store: Arc<dyn BlockStore>,
    /// Unit serial number (VPD 80), derived from the target IQN.
    pub serial: String,
    /// NAA identifier bytes (VPD 83).
    pub naa: [u8; 16],
    /// Block limits advertised and enforced.
    pub max_transfer_blocks: u32,
}

impl std::fmt::Debug for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lun").field("serial", &self.serial).field("blocks", &self.blocks()).finish()
    }
}

/// Opcodes that modify the medium or its metadata: all fail WRITE PROTECTED.
pub const WRITE_OPCODES: &[u8] = &[
    0x04, // FORMAT UNIT
    0x0a, // WRITE(6)
    0x2a, // WRITE(10)
    0x2e, // WRITE AND VERIFY(10)
    0x3b, // WRITE BUFFER
    0x41, // WRITE SAME(10)
    0x42, // UNMAP
    0x48, // SANITIZE
    0x53, // XDWRITEREAD(10)
    0x7f, // variable length (WRITE(32), ...)
    0x89, // COMPARE AND WRITE
    0x8a, // WRITE(16)
    0x8b, // ORWRITE(16)
    0x8e, // WRITE AND VERIFY(16)
    0x93, // WRITE SAME(16)
    0x9c, // WRITE ATOMIC(16)
    0xaa, // WRITE(12)
    0xae, // WRITE AND VERIFY(12)
];

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, x| (a << 8) | *x as u64)
}

fn alloc_trim(mut v: Vec<u8>, alloc: usize) -> Bytes {
    v.truncate(alloc);
    Bytes::from(v)
}

impl Lun {
    /// Number of whole blocks (a trailing partial block is not exported).
    pub fn blocks(&self) -> u64 {
        self.store.size() / BLOCK_SIZE as u64
    }

    /// Executes one CDB. Blocking (reads the store): run it off the reactor.
    pub fn execute(&self, cdb: &[u8]) -> ScsiResult {
        match self.dispatch(cdb) {
            Ok(d) => ScsiResult::good(d),
            Err(ScsiError(s)) => ScsiResult::check(s),
        }
    }

    fn dispatch(&self, cdb: &[u8]) -> Result<Bytes, ScsiError> {
        if cdb.len() < 6 {
            return Err(Sense::INVALID_FIELD_IN_CDB.into());
        }
        let op = cdb[0];
        if WRITE_OPCODES.contains(&op) {
            return Err(Sense::WRITE_PROTECTED.into());
        }
        match op {
            0x00 => Ok(Bytes::new()), // TEST UNIT READY
            0x03 => {
                // REQUEST SENSE: nothing pending.
                let v = if cdb[1] & 1 != 0 {
                    vec![0x72, 0, 0, 0, 0, 0, 0, 0]
                } else {
                    Sense { key: 0, asc: 0, ascq: 0 }.fixed().to_vec()
                };
                Ok(alloc_trim(v, cdb[4] as usize))
            }
            0x12 => {
                let alloc = be(&cdb[3..5]) as usize;
                Ok(alloc_trim(inquiry::inquiry(self, cdb)?, alloc))
            }
            0x1a | 0x5a => mode::mode_sense(self, cdb),
            0x15 | 0x55 => mode::mode_select(cdb),
            0x25 => {
                // READ CAPACITY(10)
                let last = self.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
                let mut v = last.to_be_bytes().to_vec();
                v.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
                Ok(Bytes::from(v))
            }
            0x08 => {
                let lba = be(&cdb[1..4]) & 0x1f_ffff;
                let n = if cdb[4] == 0 { 256 } else { cdb[4] as u64 };
                self.read(lba, n)
            }
            0x28 | 0xa8 | 0x88 => {
                if cdb[1] & 0xe0 != 0 {
                    // RDPROTECT without protection information formatted.
                    return Err(Sense::INVALID_FIELD_IN_CDB.into());
                }
                let (lba, n) = match op {
                    0x28 => (be(&cdb[2..6]), be(&cdb[7..9])),
                    0xa8 => (be(&cdb[2..6]), be(&cdb[6..10])),
                    _ => (be(&cdb[2..10]), be(&cdb[10..14])),
                };
                self.read(lba, n)
            }
            0x35 | 0x91 | 0x34 | 0x90 => {
                // SYNCHRONIZE CACHE / PRE-FETCH: nothing cached to write back.
                let (lba, n) = if op == 0x35 || op == 0x34 {
                    (be(&cdb[2..6]), be(&cdb[7..9]))
                } else {
                    (be(&cdb[2..10]), be(&cdb[10..14]))
                };
                self.check_range(lba, n)?;
                Ok(Bytes::new())
            }
            0x9e => match cdb[1] & 0x1f {
                0x10 => Ok(alloc_trim(self.read_capacity16(), be(&cdb[10..14]) as usize)),
                0x12 => {
                    Ok(alloc_trim(self.get_lba_status(be(&cdb[2..10]), be(&cdb[10..14]))?, be(&cdb[10..14]) as usize))
                }
                _ => Err(Sense::INVALID_FIELD_IN_CDB.into()),
            },
            0xa0 => {
                let alloc = be(&cdb[6..10]) as usize;
                if alloc < 16 {
                    return Err(Sense::INVALID_FIELD_IN_CDB.into());
                }
                let mut v = vec![0u8; 16];
                v[3] = 8;
                v[9] = 1; // LUN 1, peripheral addressing
                Ok(alloc_trim(v, alloc))
            }
            0xa3 if cdb[1] & 0x1f == 0x0c => opcodes::report(cdb),
            _ => Err(Sense::INVALID_OPCODE.into()),
        }
    }

    /// For a READ(6/10/12/16) CDB, the validated byte range it asks for,
    /// without reading anything: the connection's writer then streams it
    /// straight from the store (sendfile when it can). `Ok(None)` for any
    /// other opcode; `Err` carries the sense [`Lun::execute`] would report.
    pub fn read_range(&self, cdb: &[u8]) -> Result<Option<(u64, u64)>, ScsiError> {
        if cdb.len() < 16 {
            return Ok(None);
        }
        let (lba, n) = match cdb[0] {
            0x08 => (be(&cdb[1..4]) & 0x1f_ffff, if cdb[4] == 0 { 256 } else { cdb[4] as u64 }),
            op @ (0x28 | 0xa8 | 0x88) => {
                if cdb[1] & 0xe0 != 0 {
                    return Err(Sense::INVALID_FIELD_IN_CDB.into());
                }
                match op {
                    0x28 => (be(&cdb[2..6]), be(&cdb[7..9])),
                    0xa8 => (be(&cdb[2..6]), be(&cdb[6..10])),
                    _ => (be(&cdb[2..10]), be(&cdb[10..14])),
                }
            }
            _ => return Ok(None),
        };
        self.check_range(lba, n)?;
        if n > self.max_transfer_blocks as u64 {
            return Err(Sense::INVALID_FIELD_IN_CDB.into());
        }
        Ok(Some((lba * BLOCK_SIZE as u64, n * BLOCK_SIZE as u64)))
    }

    fn check_range(&self, lba: u64, n: u64) -> Result<(), ScsiError> {
        match lba.checked_add(n) {
            Some(end) if end <= self.blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE.into()),
        }
    }

    fn read(&self, lba: u64, n: u64) -> Result<Bytes, ScsiError> {
        self.check_range(lba, n)?;
        if n > self.max_transfer_blocks as u64 {
            return Err(Sense::INVALID_FIELD_IN_CDB.into());
        }
        if n == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::zeroed((n * BLOCK_SIZE as u64) as usize);
        self.store.read_exact_at(&mut buf, lba * BLOCK_SIZE as u64).map_err(|e| {
            tracing::error!(lba, blocks = n, error = %e, "read of the backing store failed");
            ScsiError(Sense::READ_ERROR)
        })?;
        Ok(buf.freeze())
    }

    fn read_capacity16(&self) -> Vec<u8> {
        let mut v = vec![0u8; 32];
        v[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        v[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
        v[14] = 0x80 | 0x40; // LBPME (thin: holes), LBPRZ (holes read zero)
        v
    }

    /// GET LBA STATUS (SBC-3 §5.6): mapped/deallocated extents from `lba`.
    fn get_lba_status(&self, lba: u64, alloc: u64) -> Result<Vec<u8>, ScsiError> {
        if lba >= self.blocks() {
            return Err(Sense::LBA_OUT_OF_RANGE.into());
        }
        let bs = BLOCK_SIZE as u64;
        // Up to 1024 descriptors (16 KiB) per command: a fragmented volume's scan is one
        // round trip per answer, and it sits on the drain's cut-over path.
        let max_desc = ((alloc.saturating_sub(8)) / 16).clamp(1, 1024);
        let mut v = vec![0u8; 8];
        let mut pos = lba;
        let end = self.blocks();
        while pos < end && (v.len() as u64 - 8) / 16 < max_desc {
            let (allocated, ext_end) = self.store.extent_at(pos * bs).map_err(|e| {
                tracing::error!(lba = pos, error = %e, "SEEK_DATA/SEEK_HOLE failed on the backing store");
                ScsiError(Sense::READ_ERROR)
            })?;
            // Deallocated only for whole blocks; a partial block is mapped.
            let mut next = if allocated { ext_end.div_ceil(bs) } else { ext_end / bs };
            if next <= pos {
                next = pos + 1;
            }
            let next = next.min(end).min(pos + 0xffff_ffff);
            let status = if allocated { 0u8 } else { 1u8 };
            // Merge with the previous descriptor if same status and adjacent.
            let nd = (v.len() - 8) / 16;
            if nd > 0 && v[8 + (nd - 1) * 16 + 12] == status {
                let o = 8 + (nd - 1) * 16;
                let prev = be(&v[o + 8..o + 12]);
                if prev + (next - pos) <= 0xffff_ffff {
                    v[o + 8..o + 12].copy_from_slice(&((prev + next - pos) as u32).to_be_bytes());
                    pos = next;
                    continue;
                }
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&pos.to_be_bytes());
            d[8..12].copy_from_slice(&((next - pos) as u32).to_be_bytes());
            d[12] = status;
            v.extend_from_slice(&d);
            pos = next;
        }
        let plen = (v.len() - 4) as u32;
        v[0..4].copy_from_slice(&plen.to_be_bytes());
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
