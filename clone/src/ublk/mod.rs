//! Presents a userspace clone as `/dev/ublkbN` through the kernel's ublk driver: the
//! block layer hands each request to this process over io_uring and takes the answer
//! back, with no FUSE file and no loop device in between (docs/exposures.md).
//!
//! The driver is driven directly (our own small io_uring driver: control commands on
//! `/dev/ublk-control`, one queue on `/dev/ublkcN`) with the legacy command opcodes, so it
//! works on Linux 6.0 and 6.1 (Debian 12), whose ublk predates the ioctl-encoded ones.
//!
//! Devices are added with user recovery (UBLK_F_USER_RECOVERY and _REISSUE): when the
//! serving process dies (kill -9), `/dev/ublkbN` stays, requests wait, and those the dead
//! process held are requeued; a new process calls [`UblkExposed::recover`] with the same
//! device id and serves them. The workload sees a pause, not an error.
//!
//! Every request is answered only once the [`Engine`] is done with it; FLUSH and FUA
//! writes only after the engine made the workload's writes durable. Memory is bounded:
//! [`DEPTH`] tags of [`MAX_IO_BYTES`] each.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ctrl;
mod queue;
pub mod sys;

use crate::engine::Engine;
use crate::error::{CloneError, Result};
use ctrl::{Control, err, wait_node};
use queue::{Geometry, Queue};

/// Tags of the device's one queue: requests in flight at once.
pub const DEPTH: u16 = 32;
/// Largest request in bytes, and the buffer each tag holds (so DEPTH x this is the bound).
pub const MAX_IO_BYTES: u32 = 512 << 10;
/// Threads answering requests through the engine (an on-demand read blocks one).
pub const WORKERS: usize = 4;
/// How long [`UblkExposed::recover`] waits for the driver to quiesce a dead server's
/// device (it checks every 5 s) before giving up.
pub const RECOVER_WAIT: Duration = Duration::from_secs(30);

/// Whether this kernel offers ublk (the control device exists).
pub fn available() -> bool {
    Path::new(ctrl::CONTROL).exists()
}

/// A clone served as `/dev/ublkbN`. Dropping it stops and deletes the device (as
/// [`UblkExposed::stop`]); a process that dies instead leaves it for [`UblkExposed::recover`].
#[derive(Debug)]
pub struct UblkExposed {
    dev_id: u32,
    device: PathBuf,
    queue: Option<Queue>,
    symlink: Option<PathBuf>,
    reattached: bool,
}

/// The block device node of device `dev_id`.
pub fn block_dev(dev_id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{dev_id}"))
}

fn params(engine: &Engine) -> sys::Params {
    sys::Params {
        len: std::mem::size_of::<sys::Params>() as u32,
        types: sys::PARAM_TYPE_BASIC | sys::PARAM_TYPE_DISCARD,
        basic: sys::ParamBasic {
            // A volatile cache with FUA: the kernel sends FLUSH and FUA, and the engine
            // answers them only once durable.
            attrs: sys::ATTR_VOLATILE_CACHE | sys::ATTR_FUA,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors: MAX_IO_BYTES >> 9,
            chunk_sectors: 0,
            dev_sectors: engine.size() >> 9,
            virt_boundary_mask: 0,
        },
        discard: sys::ParamDiscard {
            discard_alignment: 0,
            discard_granularity: 4096,
            max_discard_sectors: 1 << 21,
            max_write_zeroes_sectors: 1 << 16,
            max_discard_segments: 1,
            reserved0: 0,
        },
    }
}

/// The device id of `/dev/ublkbN`.
fn dev_id_of(device: &Path) -> Option<u32> {
    device.to_str()?.strip_prefix("/dev/ublkb")?.parse().ok()
}

/// Whether device `dev_id` waits for a new server: quiesced, or still live but its
/// server process is gone or a zombie (the driver notices within 5 s).
fn orphaned(ctl: &mut Control, dev_id: u32) -> bool {
    match ctl.info(dev_id) {
        Ok(i) if i.state == sys::S_DEV_QUIESCED => true,
        Ok(i) if i.state == sys::S_DEV_LIVE && i.flags & sys::F_USER_RECOVERY != 0 => {
            i.ublksrv_pid > 0 && !process_alive(i.ublksrv_pid)
        }
        _ => false,
    }
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// The exposure a (re)started holder wants: when `link` points at a `/dev/ublkbN` whose
/// server died (a kill -9 of the previous holder), recover it, so the workload keeps its
/// device and sees no error; otherwise add a new device. `link` then points at the device.
pub fn start_or_recover(engine: Arc<Engine>, link: Option<&Path>) -> Result<UblkExposed> {
    let previous = link.and_then(|l| std::fs::read_link(l).ok()).and_then(|d| dev_id_of(&d));
    let exposed = match previous {
        Some(id) if Control::open().map(|mut c| orphaned(&mut c, id)).unwrap_or(false) => {
            UblkExposed::recover(engine, id)?
        }
        _ => UblkExposed::start(engine, None)?,
    };
    match link {
        Some(l) => exposed.with_symlink(l),
        None => Ok(exposed),
    }
}

impl UblkExposed {
    /// Adds a ublk device (id `dev_id`, or the next free one), serves `engine` on it and
    /// returns once `/dev/ublkbN` exists. Needs root and the `ublk_drv` module.
    pub fn start(engine: Arc<Engine>, dev_id: Option<u32>) -> Result<Self> {
        if !engine.size().is_multiple_of(512) || engine.size() == 0 {
            return Err(CloneError::Config(format!(
                "a ublk device needs a size that is a non-zero multiple of 512 bytes, not {}",
                engine.size()
            )));
        }
        let mut ctl = Control::open()?;
        let want = sys::DevInfo {
            nr_hw_queues: 1,
            queue_depth: DEPTH,
            max_io_buf_bytes: MAX_IO_BYTES,
            dev_id: dev_id.unwrap_or(u32::MAX),
            flags: sys::F_USER_RECOVERY | sys::F_USER_RECOVERY_REISSUE,
            ..Default::default()
        };
        let info = ctl.add(want)?;
        let id = info.dev_id;
        let recovery = sys::F_USER_RECOVERY | sys::F_USER_RECOVERY_REISSUE;
        if info.flags & recovery != recovery {
            tracing::warn!(parent: &engine.span, dev_id = id, flags = info.flags,
                "this kernel's ublk lacks user recovery (Linux < 6.0): a restart of the serving process fails in-flight I/O");
        }
        let mut me = Self { dev_id: id, device: block_dev(id), queue: None, symlink: None, reattached: false };
        // On any error below, Drop stops and deletes the half-made device.
        ctl.set_params(id, &params(&engine))?;
        wait_node(&queue::char_dev(id), Duration::from_secs(5))?;
        let geometry =
            Geometry { dev_id: id, depth: info.queue_depth, buf_bytes: info.max_io_buf_bytes, workers: WORKERS };
        me.queue = Some(Queue::spawn(engine.clone(), geometry)?);
        ctl.start(id)?;
        wait_node(&me.device, Duration::from_secs(5))?;
        tracing::info!(parent: &engine.span, device = %me.device.display(), depth = DEPTH, max_io = MAX_IO_BYTES,
            "clone exposed through ublk");
        Ok(me)
    }

    /// Re-attaches to device `dev_id` whose serving process died: waits (up to
    /// [`RECOVER_WAIT`]) for the driver to quiesce it, checks it has `engine`'s size, serves
    /// it again. Requests that waited, and those the dead process held, are answered now.
    pub fn recover(engine: Arc<Engine>, dev_id: u32) -> Result<Self> {
        let mut ctl = Control::open()?;
        let info = ctl.info(dev_id)?;
        let dev = block_dev(dev_id);
        if info.flags & sys::F_USER_RECOVERY == 0 {
            return Err(err(&dev, "was added without user recovery: it cannot take a new server (stop and re-add it)"));
        }
        let sectors = ctl.params(dev_id)?.basic.dev_sectors;
        if sectors != engine.size() >> 9 {
            return Err(err(
                &dev,
                format!("holds {} bytes, the clone {}: not this clone's device", sectors << 9, engine.size()),
            ));
        }
        let t0 = Instant::now();
        while !ctl.start_recovery(dev_id)? {
            if t0.elapsed() >= RECOVER_WAIT {
                let info = ctl.info(dev_id)?;
                let why = match info.state {
                    sys::S_DEV_LIVE => format!("is still served by pid {}: stop that process first", info.ublksrv_pid),
                    sys::S_DEV_DEAD => "was stopped: it cannot be recovered, add a new one".to_string(),
                    _ => "its old server's commands are still open".to_string(),
                };
                return Err(err(&dev, format!("not recoverable after {RECOVER_WAIT:?}: {why}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let geometry = Geometry { dev_id, depth: info.queue_depth, buf_bytes: info.max_io_buf_bytes, workers: WORKERS };
        // Until END_USER_RECOVERY succeeds nothing here may stop the device (a Drop would):
        // the workload's device stays for the next attempt, which this process's exit allows.
        let queue = Queue::spawn(engine.clone(), geometry)?;
        ctl.end_recovery(dev_id)?;
        let me = Self { dev_id, device: dev, queue: Some(queue), symlink: None, reattached: true };
        tracing::info!(parent: &engine.span, device = %me.device.display(), waited = ?t0.elapsed(),
            "ublk device recovered: serving again");
        Ok(me)
    }

    /// The block device the workload uses (`/dev/ublkbN`).
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The ublk device id (N), what [`UblkExposed::recover`] takes.
    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// Whether this process took the device over from a dead one ([`UblkExposed::recover`]).
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// Points `link` at the device (atomically, by rename); removed again by [`UblkExposed::stop`].
    pub fn with_symlink(mut self, link: &Path) -> Result<Self> {
        let tmp = link.with_extension("tmp-link");
        let _ = std::fs::remove_file(&tmp);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("create symlink dir: {e}")))?;
        }
        std::os::unix::fs::symlink(&self.device, &tmp).map_err(|e| err(link, format!("symlink: {e}")))?;
        std::fs::rename(&tmp, link).map_err(|e| err(link, format!("rename symlink: {e}")))?;
        self.symlink = Some(link.to_path_buf());
        Ok(self)
    }

    /// Leaves the device to a successor (a holder upgrade): nothing is stopped or removed,
    /// this process only must exit soon after. The driver then quiesces the device as for a
    /// crash (within 5 s) and the next process takes it with [`UblkExposed::recover`] (or
    /// [`start_or_recover`] through the symlink); the workload sees a pause, not an error.
    pub fn leave_for_recovery(mut self) {
        self.device = PathBuf::new();
        std::mem::forget(self.queue.take());
    }

    /// Stops serving and deletes the device (STOP_DEV, then DEL_DEV once our queue closed).
    /// DEL_DEV waits until nothing holds `/dev/ublkbN` open: unmount first.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.device.as_os_str().is_empty() {
            return Ok(());
        }
        if let Some(link) = self.symlink.take() {
            let _ = std::fs::remove_file(link);
        }
        let mut ctl = Control::open()?;
        let stopped = ctl.stop(self.dev_id);
        if let Some(q) = self.queue.take() {
            if stopped.is_ok() {
                q.join();
            } else {
                // The queue still serves: leave its thread running rather than wait forever.
                std::mem::forget(q);
            }
        }
        stopped?;
        self.device = PathBuf::new();
        ctl.delete(self.dev_id)
    }
}

impl Drop for UblkExposed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "ublk exposure teardown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_or_zombie_server_is_not_alive() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: a zombie once it exited.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid), "pid {pid} (exited, unreaped) counted as alive");
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert_eq!(dev_id_of(Path::new("/dev/ublkb12")), Some(12));
        assert_eq!(dev_id_of(Path::new("/dev/nbd1")), None);
    }
}
