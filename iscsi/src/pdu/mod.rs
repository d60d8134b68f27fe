//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment with named
//! field accessors, plus typed constructors for every PDU the target and the
//! initiator send. Framing, digests and padding live in [`codec`].

pub mod codec;

use bytes::Bytes;

pub use codec::{Codec, PduError};

/// Length of the Basic Header Segment; every PDU starts with one.
pub const BHS_LEN: usize = 48;

/// The "reserved" tag value (RFC 7143 §11.2.1.7): no task / no transfer.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Every opcode of RFC 7143 §11.2.1.2, so decode can refuse anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Initiator ping / reply to a target ping.
    NopOut = 0x00,
    /// A SCSI command with its CDB.
    ScsiCommand = 0x01,
    /// Abort task, LUN reset and friends.
    TaskMgmtRequest = 0x02,
    /// One step of login negotiation.
    LoginRequest = 0x03,
    /// Full-feature text negotiation (SendTargets).
    TextRequest = 0x04,
    /// Write data from the initiator.
    DataOut = 0x05,
    /// Close the session or a connection.
    LogoutRequest = 0x06,
    /// Retransmission request (ERL > 0 only).
    Snack = 0x10,
    /// Target ping / reply to an initiator ping.
    NopIn = 0x20,
    /// Status (and sense) of a SCSI command.
    ScsiResponse = 0x21,
    /// Answer to a task management request.
    TaskMgmtResponse = 0x22,
    /// One step of login negotiation, target side.
    LoginResponse = 0x23,
    /// Answer to a text request.
    TextResponse = 0x24,
    /// Read data to the initiator.
    DataIn = 0x25,
    /// Answer to a logout request.
    LogoutResponse = 0x26,
    /// Target asks for write data.
    ReadyToTransfer = 0x31,
    /// Unsolicited target event.
    AsyncMessage = 0x32,
    /// Target refuses a PDU it cannot process.
    Reject = 0x3f,
}

impl Opcode {
    /// Maps the low six bits of byte 0 to an opcode; `None` for unassigned values.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    /// All opcodes, for tests that must cover every PDU type.
    pub const ALL: [Opcode; 18] = [
        Opcode::NopOut,
        Opcode::ScsiCommand,
        Opcode::TaskMgmtRequest,
        Opcode::LoginRequest,
        Opcode::TextRequest,
        Opcode::DataOut,
        Opcode::LogoutRequest,
        Opcode::Snack,
        Opcode::NopIn,
        Opcode::ScsiResponse,
        Opcode::TaskMgmtResponse,
        Opcode::LoginResponse,
        Opcode::TextResponse,
        Opcode::DataIn,
        Opcode::LogoutResponse,
        Opcode::ReadyToTransfer,
        Opcode::AsyncMessage,
        Opcode::Reject,
    ];
}

/// Reject reasons (RFC 7143 §11.17.1) the target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// Data digest did not match; the PDU was discarded.
    DataDigestError = 0x02,
    /// SNACK on a session that does not support it (ERL 0).
    SnackReject = 0x03,
    /// A field violated the protocol.
    ProtocolError = 0x04,
    /// Opcode not supported here.
    CommandNotSupported = 0x05,
    /// A field value is out of range.
    InvalidPduField = 0x09,
}

/// One PDU: the raw BHS with accessors, optional AHS and the data segment
/// (without padding or digests). Cheap to clone: segments are `Bytes`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The 48-byte Basic Header Segment as on the wire (lengths are filled by encode).
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments, a multiple of 4 bytes.
    pub ahs: Bytes,
    /// The data segment, unpadded.
    pub data: Bytes,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &self.opcode())
            .field("itt", &format_args!("{:#x}", self.itt()))
            .field("flags", &format_args!("{:#04x}", self.bhs[1]))
            .field("data_len", &self.data.len())
            .finish()
    }
}

macro_rules! u32_field {
    ($get:ident, $set:ident, $off:expr, $doc:expr) => {
        #[doc = $doc]
        pub fn $get(&self) -> u32 {
            self.u32_at($off)
        }
        #[doc = $doc]
        pub fn $set(&mut self, v: u32) {
            self.set_u32_at($off, v)
        }
    };
}

impl Pdu {
    /// An all-zero PDU of one opcode; constructors below fill the fields.
    pub fn new(op: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = op as u8;
        Pdu { bhs, ahs: Bytes::new(), data: Bytes::new() }
    }

    /// Opcode of this PDU (`None` only for a hand-built invalid header).
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0])
    }
    /// The Immediate bit: the command is not numbered in the CmdSN window.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    /// Sets the Immediate bit.
    pub fn set_immediate(&mut self, on: bool) {
        if on { self.bhs[0] |= 0x40 } else { self.bhs[0] &= !0x40 }
    }
    /// Byte 1: the Final bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    /// The Final bit (byte 1, bit 7).
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    /// Reads a big-endian u32 at a BHS offset.
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.bhs[off..off + 4].try_into().expect("4 bytes"))
    }
    /// Writes a big-endian u32 at a BHS offset.
    pub fn set_u32_at(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    /// The 8-byte LUN field (bytes 8..16), as the SAM encoding.
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes(self.bhs[8..16].try_into().expect("8 bytes"))
    }
    /// Sets the 8-byte LUN field.
    pub fn set_lun(&mut self, lun: u64) {
        self.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    /// TotalAHSLength in bytes as it will be or was encoded.
    pub fn ahs_len(&self) -> usize {
        self.bhs[4] as usize * 4
    }
    /// DataSegmentLength from the header (24 bits).
    pub fn data_len_field(&self) -> usize {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]]) as usize
    }

    u32_field!(itt, set_itt, 16, "Initiator Task Tag (bytes 16..20).");
    u32_field!(ttt, set_ttt, 20, "Target Transfer Tag / referenced task tag / EDTL (bytes 20..24).");
    u32_field!(cmd_sn, set_cmd_sn, 24, "CmdSN in requests, StatSN in responses (bytes 24..28).");
    u32_field!(exp_stat_sn, set_exp_stat_sn, 28, "ExpStatSN in requests, ExpCmdSN in responses (bytes 28..32).");
    u32_field!(max_cmd_sn, set_max_cmd_sn, 32, "MaxCmdSN in responses (bytes 32..36).");
    u32_field!(data_sn, set_data_sn, 36, "DataSN / R2TSN / ExpDataSN (bytes 36..40).");
    u32_field!(buffer_offset, set_buffer_offset, 40, "Buffer offset (bytes 40..44).");
    u32_field!(residual, set_residual, 44, "Residual count / desired data length (bytes 44..48).");

    /// StatSN of a response (same bytes as CmdSN of a request).
    pub fn stat_sn(&self) -> u32 {
        self.cmd_sn()
    }
    /// ExpCmdSN of a response.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_stat_sn()
    }
    /// Expected Data Transfer Length of a SCSI command.
    pub fn edtl(&self) -> u32 {
        self.ttt()
    }
    /// The 16-byte CDB of a SCSI command.
    pub fn cdb(&self) -> &[u8] {
        &self.bhs[32..48]
    }

    /// Fills StatSN, ExpCmdSN and MaxCmdSN of a target response.
    pub fn stamp(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
        self.set_u32_at(24, stat_sn);
        self.set_u32_at(28, exp_cmd_sn);
        self.set_u32_at(32, max_cmd_sn);
    }

    // ---- constructors -------------------------------------------------

    /// SCSI Command (§11.3): `read` sets the R bit; EDTL is the buffer size.
    pub fn scsi_command(lun: u64, itt: u32, cmd_sn: u32, exp_stat_sn: u32, cdb: &[u8], edtl: u32, read: bool) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.bhs[1] = 0x80 | (if read { 0x40 } else { 0 }) | 0x01; // F, R, SIMPLE
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_ttt(edtl);
        p.set_cmd_sn(cmd_sn);
        p.set_exp_stat_sn(exp_stat_sn);
        let n = cdb.len().min(16);
        p.bhs[32..32 + n].copy_from_slice(&cdb[..n]);
        p
    }

    /// SCSI Response (§11.4) with status, sense (if any) and residual.
    pub fn scsi_response(itt: u32, status: u8, sense: &[u8], residual: Residual) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiResponse);
        p.bhs[1] = 0x80 | residual.flag_bits();
        p.bhs[2] = 0; // command completed at target
        p.bhs[3] = status;
        p.set_itt(itt);
        p.set_residual(residual.count());
        if !sense.is_empty() {
            let mut d = Vec::with_capacity(2 + sense.len());
            d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            d.extend_from_slice(sense);
            p.data = Bytes::from(d);
        }
        p
    }

    /// Data-In (§11.7); `status` puts the SCSI status in this (final) PDU.
    pub fn data_in(
        lun: u64,
        itt: u32,
        data_sn: u32,
        offset: u32,
        data: Bytes,
        fin: bool,
        status: Option<(u8, Residual)>,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::DataIn);
        let mut f = if fin { 0x80 } else { 0 };
        if let Some((st, res)) = status {
            f |= 0x01 | res.flag_bits();
            p.bhs[3] = st;
            p.set_residual(res.count());
        }
        p.bhs[1] = f;
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_ttt(RESERVED_TAG);
        p.set_data_sn(data_sn);
        p.set_buffer_offset(offset);
        p.data = data;
        p
    }

    /// Data-Out (§11.8), only used by tests and the fuzz corpus: we never write.
    pub fn data_out(lun: u64, itt: u32, ttt: u32, data_sn: u32, offset: u32, data: Bytes, fin: bool) -> Pdu {
        let mut p = Pdu::new(Opcode::DataOut);
        p.bhs[1] = if fin { 0x80 } else { 0 };
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_ttt(ttt);
        p.set_data_sn(data_sn);
        p.set_buffer_offset(offset);
        p.data = data;
        p
    }

    /// An immediate initiator request: the opcode's flag byte, the task tag and both
    /// sequence numbers, the part every such PDU shares (NOP-Out, TMF, login, text,
    /// logout).
    fn immediate_request(op: Opcode, flags: u8, itt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
        let mut p = Pdu::new(op);
        p.set_immediate(true);
        p.bhs[1] = flags;
        p.set_itt(itt);
        p.set_cmd_sn(cmd_sn);
        p.set_exp_stat_sn(exp_stat_sn);
        p
    }

    /// A target response with the final bit set, answering task `itt`.
    fn final_response(op: Opcode, itt: u32) -> Pdu {
        let mut p = Pdu::new(op);
        p.bhs[1] = 0x80;
        p.set_itt(itt);
        p
    }

    /// NOP-Out (§11.18): a ping (`ttt` reserved) or the answer to a NOP-In.
    pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, exp_stat_sn: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::immediate_request(Opcode::NopOut, 0x80, itt, cmd_sn, exp_stat_sn);
        p.set_ttt(ttt);
        p.data = data;
        p
    }

    /// NOP-In (§11.19): answer to a ping (`itt` set) or a target ping (`ttt` set).
    pub fn nop_in(lun: u64, itt: u32, ttt: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::final_response(Opcode::NopIn, itt);
        p.set_lun(lun);
        p.set_ttt(ttt);
        p.data = data;
        p
    }

    /// Task Management Function Request (§11.5).
    pub fn tmf_request(function: u8, lun: u64, itt: u32, rtt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
        let mut p = Pdu::immediate_request(Opcode::TaskMgmtRequest, 0x80 | (function & 0x7f), itt, cmd_sn, exp_stat_sn);
        p.set_lun(lun);
        p.set_ttt(rtt);
        p
    }

    /// Task Management Function Response (§11.6).
    pub fn tmf_response(itt: u32, response: u8) -> Pdu {
        let mut p = Pdu::final_response(Opcode::TaskMgmtResponse, itt);
        p.bhs[2] = response;
        p
    }

    /// Login Request (§11.12) from stage `csg` to `nsg` (transit if `transit`).
    #[allow(clippy::too_many_arguments)] // one parameter per BHS field of the PDU
    pub fn login_request(
        isid: [u8; 6],
        tsih: u16,
        itt: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
        csg: u8,
        nsg: u8,
        transit: bool,
        data: Bytes,
    ) -> Pdu {
        let stages = (if transit { 0x80 } else { 0 }) | ((csg & 3) << 2) | (nsg & 3);
        let mut p = Pdu::immediate_request(Opcode::LoginRequest, stages, itt, cmd_sn, exp_stat_sn);
        p.bhs[8..14].copy_from_slice(&isid);
        p.bhs[14..16].copy_from_slice(&tsih.to_be_bytes());
        p.data = data;
        p
    }

    /// Login Response (§11.13) echoing ISID, with status class and detail.
    #[allow(clippy::too_many_arguments)] // one parameter per BHS field of the PDU
    pub fn login_response(
        req: &Pdu,
        tsih: u16,
        csg: u8,
        nsg: u8,
        transit: bool,
        class: u8,
        detail: u8,
        data: Bytes,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        p.bhs[1] = (if transit { 0x80 } else { 0 }) | ((csg & 3) << 2) | (nsg & 3);
        p.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        p.bhs[14..16].copy_from_slice(&tsih.to_be_bytes());
        p.set_itt(req.itt());
        p.bhs[36] = class;
        p.bhs[37] = detail;
        p.data = data;
        p
    }

    /// Text Request (§11.10).
    pub fn text_request(itt: u32, ttt: u32, cmd_sn: u32, exp_stat_sn: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::immediate_request(Opcode::TextRequest, 0x80, itt, cmd_sn, exp_stat_sn);
        p.set_ttt(ttt);
        p.data = data;
        p
    }

    /// Text Response (§11.11), final (no continuation).
    pub fn text_response(itt: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::final_response(Opcode::TextResponse, itt);
        p.set_ttt(RESERVED_TAG);
        p.data = data;
        p
    }

    /// Logout Request (§11.14); reason 0 closes the session.
    pub fn logout_request(itt: u32, reason: u8, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
        Pdu::immediate_request(Opcode::LogoutRequest, 0x80 | (reason & 0x7f), itt, cmd_sn, exp_stat_sn)
    }

    /// Logout Response (§11.15).
    pub fn logout_response(itt: u32, response: u8) -> Pdu {
        let mut p = Pdu::final_response(Opcode::LogoutResponse, itt);
        p.bhs[2] = response;
        p
    }

    /// Reject (§11.17) carrying the offending header.
    pub fn reject(reason: RejectReason, rejected_bhs: &[u8]) -> Pdu {
        let mut p = Pdu::new(Opcode::Reject);
        p.bhs[1] = 0x80;
        p.bhs[2] = reason as u8;
        p.set_itt(RESERVED_TAG);
        p.data = Bytes::copy_from_slice(&rejected_bhs[..rejected_bhs.len().min(BHS_LEN)]);
        p
    }

    /// Async Message (§11.9), e.g. event 1 "target requests logout".
    pub fn async_message(event: u8, param3: u16) -> Pdu {
        let mut p = Pdu::new(Opcode::AsyncMessage);
        p.bhs[1] = 0x80;
        p.set_itt(RESERVED_TAG);
        p.bhs[36] = event;
        p.bhs[42..44].copy_from_slice(&param3.to_be_bytes());
        p
    }

    /// R2T (§11.16); never sent by our read-only target, kept for completeness.
    pub fn r2t(lun: u64, itt: u32, ttt: u32, r2t_sn: u32, offset: u32, len: u32) -> Pdu {
        let mut p = Pdu::new(Opcode::ReadyToTransfer);
        p.bhs[1] = 0x80;
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_ttt(ttt);
        p.set_data_sn(r2t_sn);
        p.set_buffer_offset(offset);
        p.set_residual(len);
        p
    }

    /// SNACK (§11.16), which an ERL 0 target rejects.
    pub fn snack(itt: u32, kind: u8, begrun: u32, runlength: u32) -> Pdu {
        let mut p = Pdu::new(Opcode::Snack);
        p.bhs[1] = 0x80 | (kind & 0x0f);
        p.set_itt(itt);
        p.set_ttt(RESERVED_TAG);
        p.set_buffer_offset(begrun);
        p.set_residual(runlength);
        p
    }

    /// Login stages of a login PDU: (transit, continue, CSG, NSG).
    pub fn login_stages(&self) -> (bool, bool, u8, u8) {
        let b = self.bhs[1];
        (b & 0x80 != 0, b & 0x40 != 0, (b >> 2) & 3, b & 3)
    }
    /// Login status class and detail of a login response.
    pub fn login_status(&self) -> (u8, u8) {
        (self.bhs[36], self.bhs[37])
    }
    /// TSIH of a login PDU.
    pub fn tsih(&self) -> u16 {
        u16::from_be_bytes([self.bhs[14], self.bhs[15]])
    }
    /// ISID of a login PDU.
    pub fn isid(&self) -> [u8; 6] {
        self.bhs[8..14].try_into().expect("6 bytes")
    }
    /// SCSI status byte of a SCSI Response or status-bearing Data-In.
    pub fn scsi_status(&self) -> u8 {
        self.bhs[3]
    }
    /// Sense bytes of a SCSI Response (the data segment minus its length prefix).
    pub fn sense(&self) -> &[u8] {
        if self.data.len() < 2 {
            return &[];
        }
        let n = u16::from_be_bytes([self.data[0], self.data[1]]) as usize;
        &self.data[2..(2 + n).min(self.data.len())]
    }
}

/// Residual of a command: what the initiator expected vs what was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    /// Exactly what was expected.
    #[default]
    None,
    /// Less data than expected; the count is the shortfall.
    Underflow(u32),
    /// More data than the buffer; the count is what did not fit.
    Overflow(u32),
}

impl Residual {
    /// Residual from expected and produced lengths.
    pub fn of(expected: u32, produced: u64) -> Residual {
        let e = expected as u64;
        if produced < e {
            Residual::Underflow((e - produced) as u32)
        } else if produced > e {
            Residual::Overflow((produced - e).min(u32::MAX as u64) as u32)
        } else {
            Residual::None
        }
    }
    fn flag_bits(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Underflow(_) => 0x02,
            Residual::Overflow(_) => 0x04,
        }
    }
    fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Underflow(n) | Residual::Overflow(n) => n,
        }
    }
}
