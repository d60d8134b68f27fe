//! The ublk driver's userspace ABI as Linux 6.1 defines it (include/uapi/linux/ublk_cmd.h):
//! the legacy (non ioctl-encoded) command opcodes, which every kernel since 6.0 accepts
//! (the ioctl encoding, UBLK_F_CMD_IOCTL_ENCODE, only arrived in 6.2), and the structs the
//! commands carry. Layouts are `repr(C)` and their sizes are checked by the tests below.

/// Control command: read the device's info (depth, buffer size, state, server pid).
pub const CMD_GET_DEV_INFO: u32 = 0x02;
/// Control command: create a device (`/dev/ublkcN` appears; no block device yet).
pub const CMD_ADD_DEV: u32 = 0x04;
/// Control command: delete a stopped device (waits until `/dev/ublkcN` is closed).
pub const CMD_DEL_DEV: u32 = 0x05;
/// Control command: add `/dev/ublkbN` once every queue fetched (blocks until then).
pub const CMD_START_DEV: u32 = 0x06;
/// Control command: remove `/dev/ublkbN` and abort the queues' commands.
pub const CMD_STOP_DEV: u32 = 0x07;
/// Control command: set the block device's limits (before START_DEV).
pub const CMD_SET_PARAMS: u32 = 0x08;
/// Control command: read the block device's limits back.
pub const CMD_GET_PARAMS: u32 = 0x09;
/// Control command: a quiesced device (its server died) takes a new server.
pub const CMD_START_USER_RECOVERY: u32 = 0x10;
/// Control command: the new server fetched every tag: unquiesce, requeued I/O flows again.
pub const CMD_END_USER_RECOVERY: u32 = 0x11;

/// Queue command: hand a tag (and its buffer) to the driver, the first time.
pub const IO_FETCH_REQ: u32 = 0x20;
/// Queue command: complete the tag's request and hand the tag back.
pub const IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;

/// The driver's answer to a fetch when it has a request for us.
pub const IO_RES_OK: i32 = 0;
/// The driver's answer to a fetch when the device stops (or our server is declared dead).
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

/// Most tags a queue may have.
pub const MAX_QUEUE_DEPTH: u16 = 4096;

/// The server may die and a new one take over the same device (6.0+).
pub const F_USER_RECOVERY: u64 = 1 << 3;
/// With [`F_USER_RECOVERY`]: requests the dead server held are requeued, not failed (6.0+).
pub const F_USER_RECOVERY_REISSUE: u64 = 1 << 4;

/// Device state: no server (never started, or stopped).
pub const S_DEV_DEAD: u16 = 0;
/// Device state: served.
pub const S_DEV_LIVE: u16 = 1;
/// Device state: its server died; I/O waits for a recovering one.
pub const S_DEV_QUIESCED: u16 = 2;

/// Request operation codes (low 8 bits of `op_flags`).
pub const OP_READ: u8 = 0;
/// Write.
pub const OP_WRITE: u8 = 1;
/// Flush the volatile cache.
pub const OP_FLUSH: u8 = 2;
/// Discard.
pub const OP_DISCARD: u8 = 3;
/// Write zeroes.
pub const OP_WRITE_ZEROES: u8 = 5;
/// Request flag (`op_flags`): forced unit access, durable before the reply.
pub const IO_F_FUA: u32 = 1 << 13;

/// Block device attribute: has a volatile write cache (the kernel sends FLUSH).
pub const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
/// Block device attribute: honours FUA (the kernel sends FUA writes, not write + flush).
pub const ATTR_FUA: u32 = 1 << 3;
/// `ublk_params.types`: basic limits present (required).
pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
/// `ublk_params.types`: discard limits present.
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;

/// `struct ublksrv_ctrl_cmd`: the payload of a control command (in the SQE's command area).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CtrlCmd {
    /// Device id (`u32::MAX`: let ADD_DEV pick one).
    pub dev_id: u32,
    /// Queue, or `u16::MAX` when the command is not for one.
    pub queue_id: u16,
    /// Bytes at `addr`.
    pub len: u16,
    /// In/out buffer of the command.
    pub addr: u64,
    /// Inline data (START_DEV, END_USER_RECOVERY: the server's pid).
    pub data: [u64; 2],
}

/// `struct ublksrv_ctrl_dev_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DevInfo {
    /// Queues (we use one).
    pub nr_hw_queues: u16,
    /// Tags per queue.
    pub queue_depth: u16,
    /// `S_DEV_*`.
    pub state: u16,
    /// Padding.
    pub pad0: u16,
    /// Largest request in bytes: the buffer each tag needs.
    pub max_io_buf_bytes: u32,
    /// Device id (N of /dev/ublkbN).
    pub dev_id: u32,
    /// The serving process.
    pub ublksrv_pid: i32,
    /// Padding.
    pub pad1: u32,
    /// `F_*` features (the driver clears what it lacks).
    pub flags: u64,
    /// Server-private flags.
    pub ublksrv_flags: u64,
    /// Reserved.
    pub reserved: [u64; 3],
}

/// `struct ublksrv_io_desc`: one tag's request, in the read-only page the driver shares.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IoDesc {
    /// Operation (bits 0-7) and flags (8-31).
    pub op_flags: u32,
    /// Length in 512-byte sectors.
    pub nr_sectors: u32,
    /// First sector.
    pub start_sector: u64,
    /// Buffer address (ours).
    pub addr: u64,
}

/// `struct ublksrv_io_cmd`: the payload of a queue command.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IoCmd {
    /// Queue.
    pub q_id: u16,
    /// Tag.
    pub tag: u16,
    /// COMMIT: bytes done or -errno.
    pub result: i32,
    /// The tag's buffer.
    pub addr: u64,
}

/// `struct ublk_param_basic`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamBasic {
    /// `ATTR_*`.
    pub attrs: u32,
    /// log2 of the logical block size.
    pub logical_bs_shift: u8,
    /// log2 of the physical block size.
    pub physical_bs_shift: u8,
    /// log2 of the optimal I/O size.
    pub io_opt_shift: u8,
    /// log2 of the minimum I/O size.
    pub io_min_shift: u8,
    /// Largest request in sectors (at most `max_io_buf_bytes / 512`).
    pub max_sectors: u32,
    /// Requests never cross a multiple of this (0: no boundary).
    pub chunk_sectors: u32,
    /// Device size in sectors.
    pub dev_sectors: u64,
    /// Segment boundary mask (0: none).
    pub virt_boundary_mask: u64,
}

/// `struct ublk_param_discard`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamDiscard {
    /// Discard alignment in bytes.
    pub discard_alignment: u32,
    /// Discard granularity in bytes (non-zero).
    pub discard_granularity: u32,
    /// Largest discard in sectors.
    pub max_discard_sectors: u32,
    /// Largest write-zeroes in sectors (0: not offered).
    pub max_write_zeroes_sectors: u32,
    /// Segments per discard (the driver takes 1).
    pub max_discard_segments: u16,
    /// Reserved.
    pub reserved0: u16,
}

/// `struct ublk_params`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Params {
    /// Bytes of this struct.
    pub len: u32,
    /// `PARAM_TYPE_*` present.
    pub types: u32,
    /// Basic limits.
    pub basic: ParamBasic,
    /// Discard limits.
    pub discard: ParamDiscard,
}

/// Bytes of the io descriptor area of a queue of `depth` tags, as the driver maps it.
pub fn desc_area_bytes(depth: u16) -> usize {
    let page = 4096;
    (depth as usize * std::mem::size_of::<IoDesc>()).div_ceil(page) * page
}

/// The 16 (queue) or 32 (control) command bytes of a struct for the SQE's command area.
pub fn bytes_of<T: Copy, const N: usize>(v: &T) -> [u8; N] {
    let mut out = [0u8; N];
    let n = std::mem::size_of::<T>().min(N);
    // SAFETY: T is a plain repr(C) struct of integers; we copy at most its size.
    unsafe { std::ptr::copy_nonoverlapping(v as *const T as *const u8, out.as_mut_ptr(), n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_linux_6_1() {
        assert_eq!(size_of::<CtrlCmd>(), 32);
        assert_eq!(size_of::<DevInfo>(), 64);
        assert_eq!(size_of::<IoDesc>(), 24);
        assert_eq!(size_of::<IoCmd>(), 16);
        assert_eq!(size_of::<ParamBasic>(), 32);
        assert_eq!(size_of::<ParamDiscard>(), 20);
        assert_eq!(size_of::<Params>(), 64);
        assert_eq!(desc_area_bytes(32), 4096);
        assert_eq!(desc_area_bytes(200), 8192);
        let cmd = IoCmd { q_id: 1, tag: 2, result: -5, addr: 0x1122 };
        let b: [u8; 16] = bytes_of(&cmd);
        assert_eq!(&b[..8], &[1, 0, 2, 0, 0xfb, 0xff, 0xff, 0xff]);
        assert_eq!(&b[8..10], &[0x22, 0x11]);
    }
}
