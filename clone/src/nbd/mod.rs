//! Presents a userspace clone as `/dev/nbdN` (docs/exposures.md): the kernel's nbd
//! driver talks to our [`server`] over one end of a unix socketpair that we hand it over
//! generic netlink ([`netlink`]). There is no loop device and no FUSE in the path.
//!
//! The device outlives its server process: when the process dies, the kernel holds new
//! requests for the dead-connection timeout, and a restarted process gives the same
//! device a new socket (RECONFIGURE), so the workload's device path never changes and
//! it sees no error. Requests that were in flight on the dead socket are resent by the
//! kernel once the new socket is in (within its 30 s request timer).
pub mod netlink;
pub mod server;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{CloneError, Result};

/// How an NBD exposure starts.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// The symlink the workload uses, pointed at `/dev/nbdN`.
    pub symlink: Option<PathBuf>,
    /// A device an earlier process of this clone configured: reconfigured with our socket
    /// (so the workload keeps its device) instead of a new device.
    pub reattach: Option<u32>,
    /// Names the clone to the kernel: a reconfigure naming another is refused.
    pub backend: String,
    /// How long the device waits for a restarted server before failing I/O.
    pub dead_conn_timeout: Duration,
    /// Requests served at once.
    pub workers: usize,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self {
            symlink: None,
            reattach: None,
            backend: String::new(),
            dead_conn_timeout: Duration::from_secs(120),
            workers: server::WORKERS,
        }
    }
}

/// A clone exposed as `/dev/nbdN`. Stopping (or dropping) it disconnects the device and
/// removes the symlink; a process killed outright leaves the device waiting for the next.
pub struct NbdExposed {
    index: u32,
    device: PathBuf,
    symlink: Option<PathBuf>,
    reattached: bool,
    server: Option<std::thread::JoinHandle<()>>,
    /// Our end of the socket, shut down at stop so the server thread always ends.
    sock: Option<UnixStream>,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for NbdExposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdExposed").field("device", &self.device).field("reattached", &self.reattached).finish()
    }
}

fn nbd_err(path: &Path, reason: impl Into<String>) -> CloneError {
    CloneError::Expose { path: path.to_path_buf(), reason: reason.into() }
}

/// The nbd index `link` points at (`/dev/nbdN`), if it does: what a restarted process
/// of the same clone reconfigures.
pub fn linked_index(link: &Path) -> Option<u32> {
    let target = std::fs::read_link(link).ok()?;
    target.to_str()?.strip_prefix("/dev/nbd")?.parse().ok()
}

impl NbdExposed {
    /// Serves `engine` on a socketpair and configures the kernel with its other end:
    /// reconfiguring `opts.reattach` when given and still configured, else a new device.
    /// Needs root (CAP_SYS_ADMIN) and the nbd module.
    pub fn start(engine: Arc<Engine>, opts: &NbdOptions) -> Result<Self> {
        let control = Path::new("/dev/nbd");
        let (ours, index, reattached) = configure(&engine, opts)?;
        let sock = ours.try_clone().ok();
        let server = {
            let engine = engine.clone();
            let workers = opts.workers.max(1);
            std::thread::Builder::new()
                .name("nbd-server".into())
                .spawn(move || match server::serve(engine.clone(), ours, workers) {
                    Ok(()) => tracing::info!(parent: &engine.span, "NBD connection closed by the kernel"),
                    Err(e) => tracing::error!(parent: &engine.span, error = %e, "NBD connection ended"),
                })
                .map_err(|e| nbd_err(control, format!("start the NBD server thread: {e}")))?
        };
        let device = PathBuf::from(format!("/dev/nbd{index}"));
        let mut me =
            Self { index, device: device.clone(), symlink: None, reattached, server: Some(server), sock, engine };
        wait_sized(index, me.engine.size())?;
        set_io_timeout(index);
        if let Some(link) = &opts.symlink {
            point(link, &device)?;
            me.symlink = Some(link.clone());
        }
        tracing::info!(parent: &me.engine.span, device = %device.display(), reattached, "clone exposed over NBD");
        Ok(me)
    }

    /// `/dev/nbdN`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// N of `/dev/nbdN` (recorded so a restarted process reconfigures this device).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether this process took over a device an earlier one configured.
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// Leaves the device to a successor: no disconnect, the symlink stays, the server
    /// thread answers until this process exits. The kernel then holds the workload's
    /// requests for the dead-connection timeout, and the next process reconfigures the
    /// device with its own socket, as after a crash (docs/exposures.md).
    pub fn leave_for_successor(mut self) {
        self.symlink = None;
        drop(self.server.take());
        tracing::info!(parent: &self.engine.span, device = %self.device.display(), "NBD device left for the next process");
    }

    /// Disconnects the device (the workload's I/O fails from then on), waits for the
    /// server to end, removes the symlink.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(server) = self.server.take() else { return Ok(()) };
        if let Some(link) = self.symlink.take() {
            let _ = std::fs::remove_file(link);
        }
        let res = netlink::Nbd::open().and_then(|mut nl| nl.disconnect(self.index));
        // The kernel shuts the socket down at disconnect; ours too, so the server thread
        // ends even when the disconnect failed.
        if let Some(s) = self.sock.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = server.join();
        res.map_err(|e| nbd_err(&self.device, format!("disconnect: {e}")))
    }
}

impl Drop for NbdExposed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "NBD exposure teardown");
        }
    }
}

/// Hands the kernel one end of a new socketpair: RECONFIGURE of `opts.reattach` when an
/// earlier process configured it, else CONNECT. Returns our end, the index and whether it
/// was a reconfigure.
fn configure(engine: &Engine, opts: &NbdOptions) -> Result<(UnixStream, u32, bool)> {
    let control = Path::new("/dev/nbd");
    let pair = || UnixStream::pair().map_err(|e| nbd_err(control, format!("socketpair: {e}")));
    let mut nl = netlink::Nbd::open().map_err(|e| nbd_err(control, e))?;
    let dead = opts.dead_conn_timeout.as_secs().max(1);
    if let Some(index) = opts.reattach.filter(|i| configured(*i)) {
        let dev = PathBuf::from(format!("/dev/nbd{index}"));
        // The kernel takes a new socket only in place of a dead one, and says nothing
        // when it has none dead (the earlier process's socket not noticed closed yet, or
        // that process still serving): our socket was taken iff its peer stays open once
        // we close our copy of it. Retried while the kernel catches up.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (ours, theirs) = pair()?;
            let res = nl.reconfigure(index, &opts.backend, dead, theirs.as_raw_fd());
            drop(theirs);
            match res {
                Ok(()) if peer_open(&ours) => return Ok((ours, index, true)),
                Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Ok(()) => {
                    return Err(nbd_err(
                        &dev,
                        "still served by another process (it has no dead connection to replace): stop that process first",
                    ));
                }
                Err(e) => {
                    tracing::info!(device = %dev.display(), error = %e, "cannot reconfigure the earlier device; connecting anew");
                    break;
                }
            }
        }
    }
    let mut c = netlink::Connect {
        index: opts.reattach.filter(|i| !configured(*i)),
        size: engine.size(),
        // 512 as loop and our iSCSI LUNs present: a filesystem made with 1 KiB blocks
        // (mkfs.ext4's choice for small volumes) does not mount on 4 KiB sectors.
        block_size: 512,
        dead_conn_timeout: dead,
        backend: opts.backend.clone(),
    };
    let (ours, theirs) = pair()?;
    let res = match nl.connect(&c, theirs.as_raw_fd()) {
        Err(e) if c.index.is_some() => {
            tracing::info!(error = %e, "the earlier nbd device is taken; the kernel picks another");
            c.index = None;
            nl.connect(&c, theirs.as_raw_fd())
        }
        r => r,
    };
    drop(theirs); // the kernel holds its own reference
    let index = res.map_err(|e| nbd_err(control, format!("connect: {e}")))?;
    Ok((ours, index, false))
}

/// Whether the other end of `sock` is still open (held by the kernel).
fn peer_open(sock: &UnixStream) -> bool {
    let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one pollfd of ours, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0 || (p.revents & (libc::POLLHUP | libc::POLLRDHUP) == 0)
}

/// Disconnects `/dev/nbdN` if it is still configured for `backend` and nobody serves it:
/// what a holder killed for good leaves when its volume leaves the node (its successor
/// never comes). Returns whether it disconnected one. A device of another backend is left
/// alone.
pub fn disconnect_orphan(index: u32, backend: &str) -> Result<bool> {
    let dev = PathBuf::from(format!("/dev/nbd{index}"));
    let theirs = std::fs::read_to_string(format!("/sys/block/nbd{index}/backend")).unwrap_or_default();
    if !configured(index) || theirs.trim_end() != backend {
        return Ok(false);
    }
    let mut nl = netlink::Nbd::open().map_err(|e| nbd_err(&dev, e))?;
    nl.disconnect(index).map_err(|e| nbd_err(&dev, format!("disconnect: {e}")))?;
    tracing::info!(device = %dev.display(), "disconnected an nbd device its dead server left");
    Ok(true)
}

/// The backend identifier a clone's NBD device carries (its dest names it).
pub fn backend_of(dest: &Path) -> String {
    format!("meshdrain:{}", dest.display())
}

/// Whether `/dev/nbdN` is configured (the kernel shows its server's pid until disconnected).
fn configured(index: u32) -> bool {
    Path::new(&format!("/sys/block/nbd{index}/pid")).exists()
}

/// How often the kernel looks at a request still unanswered. With nbd's own timeout at 0
/// it never fails one nor drops our socket; it only logs it and, when the socket it went
/// out on was replaced (a restarted server), sends it again on the new one. 10 s instead
/// of the block layer's 30 s: a restart costs the requests it caught at most that long.
const IO_TIMEOUT_MS: u32 = 10_000;

/// Best effort: sets the block queue's request timer (sysfs `queue/io_timeout`).
fn set_io_timeout(index: u32) {
    let path = format!("/sys/block/nbd{index}/queue/io_timeout");
    if let Err(e) = std::fs::write(&path, IO_TIMEOUT_MS.to_string()) {
        tracing::debug!(%path, error = %e, "cannot shorten the request timer (requests caught by a restart wait 30 s)");
    }
}

/// Waits (up to 5 s) until the kernel shows the device at its size.
fn wait_sized(index: u32, size: u64) -> Result<()> {
    let sysfs = PathBuf::from(format!("/sys/block/nbd{index}/size"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sectors: u64 = std::fs::read_to_string(&sysfs).ok().and_then(|s| s.trim().parse().ok()).unwrap_or_default();
        if sectors * 512 == size & !511 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(nbd_err(&sysfs, format!("the device shows {sectors} sectors, not {size} bytes, after 5 s")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Points `link` at `device` atomically (a new link renamed over the old).
fn point(link: &Path, device: &Path) -> Result<()> {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|e| nbd_err(dir, format!("create symlink dir: {e}")))?;
    }
    std::os::unix::fs::symlink(device, &tmp).map_err(|e| nbd_err(link, format!("symlink: {e}")))?;
    std::fs::rename(&tmp, link).map_err(|e| nbd_err(link, format!("rename symlink: {e}")))
}
