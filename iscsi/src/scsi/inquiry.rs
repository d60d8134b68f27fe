//! INQUIRY: standard data and the VPD pages SBC-3 asks a disk to carry
//! (00, 80, 83, B0, B1, B2).

use super::{Lun, ScsiError};
use crate::scsi::sense::Sense;

/// Vendor identification (8 bytes, space padded).
pub const VENDOR: &[u8; 8] = b"MESHDRN ";
/// Product identification (16 bytes).
pub const PRODUCT: &[u8; 16] = b"READ-ONLY EXPORT";

/// Builds the INQUIRY response for a CDB (already checked to be INQUIRY).
pub fn inquiry(lun: &Lun, cdb: &[u8]) -> Result<Vec<u8>, ScsiError> {
    let evpd = cdb[1] & 1 != 0;
    let page = cdb[2];
    if !evpd {
        if page != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB.into());
        }
        return Ok(standard());
    }
    let body: Vec<u8> = match page {
        0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
        0x80 => lun.serial.as_bytes().to_vec(),
        0x83 => designators(lun),
        0xb0 => block_limits(lun),
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[1] = 1; // medium rotation rate: non-rotating
            b
        }
        0xb2 => {
            // Thin provisioned (holes), unmapped blocks read as zeros; no
            // UNMAP or WRITE SAME unmapping: the export is read-only.
            vec![0, 0x04, 0x02, 0]
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.into()),
    };
    let mut v = Vec::with_capacity(4 + body.len());
    v.push(0x00);
    v.push(page);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(&body);
    Ok(v)
}

fn standard() -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected direct-access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(b"0001");
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn designators(lun: &Lun) -> Vec<u8> {
    let mut v = Vec::new();
    // NAA 6 (IEEE registered extended), 16 bytes, from the LU identity.
    v.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    naa[1..16].copy_from_slice(&lun.naa[..15]);
    v.extend_from_slice(&naa);
    // T10 vendor ID based, ASCII.
    let t10: Vec<u8> = VENDOR.iter().copied().chain(lun.serial.bytes()).collect();
    v.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    v.extend_from_slice(&t10);
    // Relative target port 1, iSCSI (protocol 5), PIV.
    v.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0, 0, 1]);
    v
}

fn block_limits(lun: &Lun) -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    b[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer granularity
    b[4..8].copy_from_slice(&lun.max_transfer_blocks.to_be_bytes());
    b[8..12].copy_from_slice(&lun.max_transfer_blocks.to_be_bytes()); // optimal transfer length
    b
}
