//! MODE SENSE(6/10) with the write-protect bit set, and MODE SELECT, which
//! a read-only export refuses.

use bytes::Bytes;

use super::{BLOCK_SIZE, Lun, ScsiError};
use crate::scsi::sense::Sense;

/// Device-specific parameter: WP (write protected) | DPOFUA (DPO/FUA accepted).
const DEVICE_SPECIFIC: u8 = 0x80 | 0x10;

fn page(code: u8, changeable: bool) -> Option<Vec<u8>> {
    let mut p = match code {
        0x08 => {
            let mut p = vec![0u8; 0x14];
            p[2] = 0x01; // RCD: no write cache (reads only)
            p
        }
        0x0a => {
            let mut p = vec![0u8; 0x0c];
            p[3] = 0x10; // queue algorithm modifier: unrestricted reordering
            p[4] = 0x08; // SWP: software write protect
            p[8] = 0xff; // busy timeout period: unlimited
            p[9] = 0xff;
            p
        }
        0x1c => vec![0u8; 0x0c],
        _ => return None,
    };
    if changeable {
        p[2..].iter_mut().for_each(|b| *b = 0);
    }
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    Some(p)
}

/// MODE SENSE(6) (0x1a) and MODE SENSE(10) (0x5a).
pub fn mode_sense(lun: &Lun, cdb: &[u8]) -> Result<Bytes, ScsiError> {
    let ten = cdb[0] == 0x5a;
    if ten && cdb.len() < 10 {
        return Err(Sense::INVALID_FIELD_IN_CDB.into());
    }
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = cdb[2] >> 6;
    let code = cdb[2] & 0x3f;
    let subpage = cdb[3];
    let alloc = if ten { u16::from_be_bytes([cdb[7], cdb[8]]) as usize } else { cdb[4] as usize };
    if pc == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED.into());
    }
    if subpage != 0 && subpage != 0xff {
        return Err(Sense::INVALID_FIELD_IN_CDB.into());
    }
    let changeable = pc == 1;
    let mut pages = Vec::new();
    if code == 0x3f {
        for c in [0x08, 0x0a, 0x1c] {
            pages.extend(page(c, changeable).unwrap_or_default());
        }
    } else {
        pages = page(code, changeable).ok_or(ScsiError(Sense::INVALID_FIELD_IN_CDB))?;
    }
    let mut bd = Vec::new();
    if !dbd {
        let blocks = lun.blocks();
        if llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
        } else {
            bd.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&BLOCK_SIZE.to_be_bytes()[1..]);
        }
    }
    let mut v = Vec::new();
    if ten {
        let len = (6 + bd.len() + pages.len()) as u16;
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&[0, DEVICE_SPECIFIC, if llbaa { 1 } else { 0 }, 0]);
        v.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let len = (3 + bd.len() + pages.len()).min(255) as u8;
        v.extend_from_slice(&[len, 0, DEVICE_SPECIFIC, bd.len() as u8]);
    }
    v.extend_from_slice(&bd);
    v.extend_from_slice(&pages);
    v.truncate(alloc);
    Ok(Bytes::from(v))
}

/// MODE SELECT(6/10): no page is changeable on a read-only export.
pub fn mode_select(cdb: &[u8]) -> Result<Bytes, ScsiError> {
    let plen = if cdb[0] == 0x15 { cdb[4] as usize } else { u16::from_be_bytes([cdb[7], cdb[8]]) as usize };
    if plen == 0 {
        return Ok(Bytes::new());
    }
    Err(Sense::WRITE_PROTECTED.into())
}
