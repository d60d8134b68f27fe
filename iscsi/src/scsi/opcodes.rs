//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): the commands this
//! read-only LUN implements, with CDB usage maps and timeouts.

use bytes::Bytes;

use super::ScsiError;
use crate::scsi::sense::Sense;

/// (opcode, service action or None, CDB length).
const SUPPORTED: &[(u8, Option<u16>, u16)] = &[
    (0x00, None, 6),        // TEST UNIT READY
    (0x03, None, 6),        // REQUEST SENSE
    (0x08, None, 6),        // READ(6)
    (0x12, None, 6),        // INQUIRY
    (0x1a, None, 6),        // MODE SENSE(6)
    (0x25, None, 10),       // READ CAPACITY(10)
    (0x28, None, 10),       // READ(10)
    (0x34, None, 10),       // PRE-FETCH(10)
    (0x35, None, 10),       // SYNCHRONIZE CACHE(10)
    (0x5a, None, 10),       // MODE SENSE(10)
    (0x88, None, 16),       // READ(16)
    (0x90, None, 16),       // PRE-FETCH(16)
    (0x91, None, 16),       // SYNCHRONIZE CACHE(16)
    (0x9e, Some(0x10), 16), // READ CAPACITY(16)
    (0x9e, Some(0x12), 16), // GET LBA STATUS
    (0xa0, None, 12),       // REPORT LUNS
    (0xa3, Some(0x0c), 12), // REPORT SUPPORTED OPERATION CODES
    (0xa8, None, 12),       // READ(12)
];

fn usage(op: u8, sa: Option<u16>, len: u16) -> Vec<u8> {
    let mut u = vec![0xffu8; len as usize];
    u[0] = op;
    if let Some(sa) = sa {
        u[1] = (sa as u8) | 0xe0;
    }
    // Control byte: only NACA/link bits are defined; we honour none.
    let last = u.len() - 1;
    u[last] = 0x00;
    u
}

fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a; // descriptor length 10
    t[4..8].copy_from_slice(&30u32.to_be_bytes()); // nominal
    t[8..12].copy_from_slice(&60u32.to_be_bytes()); // recommended
    t
}

/// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
pub fn report(cdb: &[u8]) -> Result<Bytes, ScsiError> {
    if cdb.len() < 12 {
        return Err(Sense::INVALID_FIELD_IN_CDB.into());
    }
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = u16::from_be_bytes([cdb[4], cdb[5]]);
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
    let mut v = Vec::new();
    match options {
        0 => {
            v.extend_from_slice(&[0, 0, 0, 0]);
            for &(op, sa, len) in SUPPORTED {
                let mut d = [0u8; 8];
                d[0] = op;
                d[2..4].copy_from_slice(&sa.unwrap_or(0).to_be_bytes());
                d[5] = if sa.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&len.to_be_bytes());
                v.extend_from_slice(&d);
                if rctd {
                    v.extend_from_slice(&timeouts());
                }
            }
            let n = (v.len() - 4) as u32;
            v[0..4].copy_from_slice(&n.to_be_bytes());
        }
        1 | 2 => {
            let has_sa = SUPPORTED.iter().any(|&(op, sa, _)| op == req_op && sa.is_some());
            if (options == 1 && has_sa) || (options == 2 && !has_sa && SUPPORTED.iter().any(|&(op, _, _)| op == req_op))
            {
                return Err(Sense::INVALID_FIELD_IN_CDB.into());
            }
            let found = SUPPORTED.iter().find(|&&(op, sa, _)| op == req_op && (options == 1 || sa == Some(req_sa)));
            match found {
                Some(&(op, sa, len)) => {
                    v.extend_from_slice(&[0, 0x03 | if rctd { 0x80 } else { 0 }]);
                    v.extend_from_slice(&len.to_be_bytes());
                    v.extend_from_slice(&usage(op, sa, len));
                    if rctd {
                        v.extend_from_slice(&timeouts());
                    }
                }
                None => v.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.into()),
    }
    v.truncate(alloc);
    Ok(Bytes::from(v))
}
