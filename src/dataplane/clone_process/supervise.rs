//! Following each holder for the agent's life (docs/holder-process.md, "When a holder
//! dies"): its progress from a `watch` stream, and when the holder ends, its successor
//! started from the clone metadata and brought back to where it was.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::protocol::{Conn, Request, call};
use super::{QUICK, RESTARTS, Relaunched, Shared, Tracked, launch};

/// Brings a (re)started holder back to where its predecessor was: its source declared
/// lost if it was, hydrating if it was.
pub(super) fn resume(t: &Tracked) {
    let (hydrating, source_lost, volume) = {
        let s = t.spec.lock().expect("spec lock");
        (s.hydrating, s.source_lost, s.clone_spec.volume.clone())
    };
    if source_lost && let Err(e) = call(&t.files.socket, &Request::SourceLost, QUICK) {
        warn!(%volume, "restarted holder: cannot declare its source lost again: {e}");
    }
    if hydrating {
        match call(&t.files.socket, &Request::Hydrate, QUICK) {
            Ok(r) => {
                if let Some(p) = r.progress {
                    t.set_progress(p);
                }
            }
            Err(e) => warn!(%volume, "restarted holder: cannot resume hydration: {e}"),
        }
    }
}

/// Follows one holder for the agent's life: keeps its progress current from a `watch`
/// stream and, when the stream ends because the holder died, restarts it from its
/// metadata and tells the executor (its device changed).
pub(super) fn supervise(shared: &Shared, t: &Arc<Tracked>) {
    let volume = t.volume();
    loop {
        if t.quiet.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut conn) = Conn::connect(&t.files.socket, Duration::from_secs(10)) {
            *t.watch_conn.lock().expect("watch lock") = conn.handle().ok();
            if conn.send(&Request::Watch).is_ok() {
                while let Ok(Some(reply)) = conn.recv() {
                    if let Some(p) = reply.progress {
                        t.set_progress(p);
                    }
                }
            }
        }
        if t.quiet.load(Ordering::Acquire) {
            return;
        }
        let ended = t.live.lock().expect("live lock").ended();
        let Some(how) = ended else {
            std::thread::sleep(Duration::from_secs(1)); // alive: the stream broke; again
            continue;
        };
        if t.moving.swap(false, Ordering::AcqRel) {
            info!(%volume, "the holder exited leaving its device; starting its successor on this binary");
        } else {
            warn!(%volume, log = %t.files.log.display(), "holder process {how}; restarting it from its clone metadata (with FUSE + loop the workload's device changes and its start hook runs again; with nbd or ublk the new holder takes the device over)");
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            RESTARTS.fetch_add(1, Ordering::Relaxed);
        }
        let live = loop {
            if t.quiet.load(Ordering::Acquire) {
                return;
            }
            let spec = t.spec.lock().expect("spec lock").clone();
            match launch::launch(&shared.exe, &t.files, &spec) {
                Ok(live) => break live,
                Err(e) => {
                    warn!(%volume, "cannot restart the holder process (again in 5 s): {e}");
                    std::thread::sleep(Duration::from_secs(5));
                }
            }
        };
        let (device, reattached) = (live.device.clone(), live.reattached);
        *t.live.lock().expect("live lock") = live;
        resume(t);
        let spec = t.spec.lock().expect("spec lock").clone();
        if reattached {
            info!(%volume, device = %device.display(), "the restarted holder took over the same device: the workload kept running on it (no start hook)");
        }
        let start_hook = (spec.workload_started && !reattached).then_some(spec.start_hook);
        let _ = shared.relaunched.send(Relaunched { volume: volume.clone(), device, start_hook });
    }
}
