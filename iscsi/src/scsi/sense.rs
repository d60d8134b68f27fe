//! SCSI status codes and fixed-format sense data (SPC-4 §4.5.3).

/// GOOD status.
pub const GOOD: u8 = 0x00;
/// CHECK CONDITION status: sense data follows.
pub const CHECK_CONDITION: u8 = 0x02;

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key (e.g. 0x05 ILLEGAL REQUEST).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense { key: 0x05, asc: 0x20, ascq: 0x00 };
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense { key: 0x05, asc: 0x24, ascq: 0x00 };
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense { key: 0x05, asc: 0x21, ascq: 0x00 };
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Sense = Sense { key: 0x05, asc: 0x25, ascq: 0x00 };
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense { key: 0x05, asc: 0x39, ascq: 0x00 };
    /// DATA PROTECT / WRITE PROTECTED: the export is read-only, always.
    pub const WRITE_PROTECTED: Sense = Sense { key: 0x07, asc: 0x27, ascq: 0x00 };
    /// MEDIUM ERROR / UNRECOVERED READ ERROR: the backing file failed a read.
    pub const READ_ERROR: Sense = Sense { key: 0x03, asc: 0x11, ascq: 0x00 };
    /// ABORTED COMMAND / no additional code: task aborted by TMF.
    pub const ABORTED: Sense = Sense { key: 0x0b, asc: 0x00, ascq: 0x00 };

    /// Fixed-format sense bytes (response code 0x70, 18 bytes).
    pub fn fixed(self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}
