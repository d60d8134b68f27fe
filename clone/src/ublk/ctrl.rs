//! Control commands on `/dev/ublk-control`: `IORING_OP_URING_CMD` on a 128-byte SQE ring,
//! one command at a time, each waited for with a time limit (a command that blocks, such as
//! DEL_DEV while the device is still open, is reported rather than waited for forever).
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::sys::{self, CtrlCmd, DevInfo, Params};
use crate::error::{CloneError, Result};

/// The control device the ublk driver registers.
pub const CONTROL: &str = "/dev/ublk-control";

/// An open `/dev/ublk-control` with its ring.
pub struct Control {
    file: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    seq: u64,
}

pub(super) fn err(path: impl Into<PathBuf>, reason: impl Into<String>) -> CloneError {
    CloneError::Expose { path: path.into(), reason: reason.into() }
}

fn cmd_name(op: u32) -> &'static str {
    match op {
        sys::CMD_GET_DEV_INFO => "GET_DEV_INFO",
        sys::CMD_ADD_DEV => "ADD_DEV",
        sys::CMD_DEL_DEV => "DEL_DEV",
        sys::CMD_START_DEV => "START_DEV",
        sys::CMD_STOP_DEV => "STOP_DEV",
        sys::CMD_SET_PARAMS => "SET_PARAMS",
        sys::CMD_GET_PARAMS => "GET_PARAMS",
        sys::CMD_START_USER_RECOVERY => "START_USER_RECOVERY",
        sys::CMD_END_USER_RECOVERY => "END_USER_RECOVERY",
        _ => "unknown command",
    }
}

impl Control {
    /// Opens the control device; a missing one names the module to load.
    pub fn open() -> Result<Self> {
        let file = File::options().read(true).write(true).open(CONTROL).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err(
                    CONTROL,
                    "no /dev/ublk-control: load ublk_drv (modprobe ublk_drv; Ubuntu's and Fedora's kernels ship \
                     it, Debian 12's does not: build it from linux-source as tests/vm/ublk/Kbuild does)",
                )
            } else {
                err(CONTROL, format!("open: {e} (needs root: CAP_SYS_ADMIN)"))
            }
        })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4).map_err(|e| {
            err(CONTROL, format!("io_uring_setup with 128-byte SQEs: {e} (ublk needs io_uring: Linux >= 6.0)"))
        })?;
        Ok(Self { file, ring, seq: 0 })
    }

    /// Sends one command and waits up to `limit` for its result (>= 0, or the errno).
    fn run(&mut self, op: u32, cmd: CtrlCmd, limit: Duration) -> Result<i32> {
        self.seq += 1;
        let seq = self.seq;
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(sys::bytes_of(&cmd))
            .build()
            .user_data(seq);
        // SAFETY: the buffer `cmd.addr` points at (if any) lives on the caller's stack until
        // `run` returns. Only the buffer-less START/STOP/DEL/END commands block in the
        // driver, so only they can time out and leave a command behind; its late CQE is
        // skipped by its sequence number.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| err(CONTROL, "control ring full"))?;
        let ts = types::Timespec::new().sec(limit.as_secs()).nsec(limit.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        loop {
            if let Some(cqe) = self.ring.completion().find(|c| c.user_data() == seq) {
                return Ok(cqe.result());
            }
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    if let Some(cqe) = self.ring.completion().find(|c| c.user_data() == seq) {
                        return Ok(cqe.result());
                    }
                    return Err(err(
                        format!("/dev/ublkb{}", cmd.dev_id),
                        format!("{} did not finish within {limit:?}", cmd_name(op)),
                    ));
                }
                Err(e) => return Err(err(CONTROL, format!("io_uring_enter for {}: {e}", cmd_name(op)))),
            }
        }
    }

    /// `run` with a negative result turned into an error naming the device and command.
    fn run_ok(&mut self, op: u32, cmd: CtrlCmd, limit: Duration, hint: &str) -> Result<i32> {
        let res = self.run(op, cmd, limit)?;
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            return Err(err(format!("/dev/ublkb{}", cmd.dev_id), format!("{}: {e}{hint}", cmd_name(op))));
        }
        Ok(res)
    }

    /// ADD_DEV: creates a device with `info`'s geometry; returns what the driver kept
    /// (its id, and the features it offers: it clears the ones it lacks).
    pub fn add(&mut self, mut info: DevInfo) -> Result<DevInfo> {
        let cmd = CtrlCmd {
            dev_id: info.dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: &mut info as *mut DevInfo as u64,
            data: [0; 2],
        };
        let hint = if info.dev_id != u32::MAX { " (is that device id taken? see /dev/ublkc*)" } else { "" };
        self.run_ok(sys::CMD_ADD_DEV, cmd, Duration::from_secs(10), hint)?;
        Ok(info)
    }

    /// GET_DEV_INFO of device `dev_id`.
    pub fn info(&mut self, dev_id: u32) -> Result<DevInfo> {
        let mut info = DevInfo::default();
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: &mut info as *mut DevInfo as u64,
            data: [0; 2],
        };
        self.run_ok(sys::CMD_GET_DEV_INFO, cmd, Duration::from_secs(10), " (no such ublk device?)")?;
        Ok(info)
    }

    /// SET_PARAMS: the block device's limits.
    pub fn set_params(&mut self, dev_id: u32, params: &Params) -> Result<()> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<Params>() as u16,
            addr: params as *const Params as u64,
            data: [0; 2],
        };
        self.run_ok(sys::CMD_SET_PARAMS, cmd, Duration::from_secs(10), "").map(drop)
    }

    /// GET_PARAMS of device `dev_id` (its size, to check a recovering server serves the same volume).
    pub fn params(&mut self, dev_id: u32) -> Result<Params> {
        let mut params = Params { len: std::mem::size_of::<Params>() as u32, ..Default::default() };
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<Params>() as u16,
            addr: &mut params as *mut Params as u64,
            data: [0; 2],
        };
        self.run_ok(sys::CMD_GET_PARAMS, cmd, Duration::from_secs(10), "")?;
        Ok(params)
    }

    fn simple(&mut self, op: u32, dev_id: u32, pid: i32, limit: Duration, hint: &str) -> Result<i32> {
        let cmd = CtrlCmd { dev_id, queue_id: u16::MAX, len: 0, addr: 0, data: [pid as u64, 0] };
        self.run_ok(op, cmd, limit, hint)
    }

    /// START_DEV: adds /dev/ublkbN once every tag was fetched (it waits for that).
    pub fn start(&mut self, dev_id: u32) -> Result<()> {
        self.simple(sys::CMD_START_DEV, dev_id, std::process::id() as i32, Duration::from_secs(30), "").map(drop)
    }

    /// STOP_DEV: removes /dev/ublkbN; the queue's commands end with IO_RES_ABORT.
    pub fn stop(&mut self, dev_id: u32) -> Result<()> {
        self.simple(sys::CMD_STOP_DEV, dev_id, 0, Duration::from_secs(30), "").map(drop)
    }

    /// DEL_DEV: forgets the device; it waits until /dev/ublkcN is closed and the block
    /// device released, so a device still mounted makes it time out.
    pub fn delete(&mut self, dev_id: u32) -> Result<()> {
        let hint = " (is /dev/ublkb still open or mounted?)";
        self.simple(sys::CMD_DEL_DEV, dev_id, 0, Duration::from_secs(30), hint).map(drop)
    }

    /// START_USER_RECOVERY; `Ok(false)` when the driver is not ready for it yet (EBUSY:
    /// the dead server's queues are not quiesced, or a server is still alive).
    pub fn start_recovery(&mut self, dev_id: u32) -> Result<bool> {
        let cmd = CtrlCmd { dev_id, queue_id: u16::MAX, ..Default::default() };
        let res = self.run(sys::CMD_START_USER_RECOVERY, cmd, Duration::from_secs(10))?;
        match res {
            r if r >= 0 => Ok(true),
            r if r == -libc::EBUSY => Ok(false),
            r => Err(err(
                format!("/dev/ublkb{dev_id}"),
                format!(
                    "START_USER_RECOVERY: {} (was the device added with user recovery, and started?)",
                    std::io::Error::from_raw_os_error(-r)
                ),
            )),
        }
    }

    /// END_USER_RECOVERY: waits until every tag was fetched again, then unquiesces.
    pub fn end_recovery(&mut self, dev_id: u32) -> Result<()> {
        let pid = std::process::id() as i32;
        self.simple(sys::CMD_END_USER_RECOVERY, dev_id, pid, Duration::from_secs(30), "").map(drop)
    }
}

/// Waits (bounded) for a device node to appear (devtmpfs/udev create it after the driver).
pub fn wait_node(path: &Path, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return Err(err(path, format!("did not appear within {limit:?} (is devtmpfs mounted on /dev?)")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_control_device_names_the_module_to_load() {
        if Path::new(CONTROL).exists() {
            return; // this kernel has ublk: the VM tier (vm_ublk_exposure) covers it
        }
        let e = Control::open().err().expect("no control device, no Control").to_string();
        assert!(
            e.starts_with("expose /dev/ublk-control: no /dev/ublk-control: load ublk_drv (modprobe ublk_drv;"),
            "{e}"
        );
        assert!(e.contains("Debian 12's does not"), "{e}");
    }
}
