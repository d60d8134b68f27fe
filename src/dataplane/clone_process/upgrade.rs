//! Moving holders onto a new meshdrain binary after a package upgrade (docs/holder-process.md,
//! "Upgrades"): an agent that adopts holders running another build asks each, one at a
//! time, to exit leaving its device; its supervisor starts the next holder on this
//! binary, which takes the device over (ublk user recovery, NBD reconfigure).

use std::sync::atomic::Ordering;
use std::time::Duration;

use meshdrain_clone::exposure::Chosen;
use tracing::{info, warn};

use super::protocol::{Request, call};
use super::{ProcessClones, QUICK, Tracked};

impl ProcessClones {
    /// Moves adopted holders that run another build of meshdrain (the package was
    /// upgraded under them) onto this agent's binary, one at a time: each exits leaving
    /// its device, and its supervisor starts the new holder, which takes the device over
    /// while the workload pauses (docs/holder-process.md, "Upgrades"). A holder exposed
    /// through FUSE + loop cannot hand its device over and keeps running its binary
    /// until its volume moves.
    pub(super) fn upgrade(&self, older: Vec<(String, u32, Option<Chosen>)>) {
        let mut movable = Vec::new();
        for (volume, pid, exposure) in older {
            match exposure {
                Some(Chosen::Ublk | Chosen::Nbd) => movable.push((volume, pid)),
                _ => {
                    info!(%volume, pid, "holder runs another meshdrain binary and is exposed through FUSE + loop, which cannot hand its device over: it keeps that binary until its volume moves")
                }
            }
        }
        if movable.is_empty() {
            return;
        }
        let clones: Vec<_> = movable.into_iter().filter_map(|(v, pid)| self.get(&v).map(|t| (t, pid))).collect();
        let spawned = std::thread::Builder::new().name("holder-upgrade".into()).spawn(move || {
            // The lease re-issues its commands to adopted holders as the agent starts;
            // the moves wait for that (a holder between processes cannot answer them).
            std::thread::sleep(SETTLE);
            for (t, pid) in clones {
                upgrade_one(&t, pid);
            }
        });
        if let Err(e) = spawned {
            warn!("cannot move holders onto the new binary: {e}");
        }
    }
}

/// Asks the holder `pid` of `t` to exit leaving its device, then waits (bounded) until its
/// supervisor has started the next holder on this binary.
fn upgrade_one(t: &Tracked, pid: u32) {
    let volume = t.volume();
    if t.quiet.load(Ordering::Acquire) {
        return; // the agent is stopping, or the holder was stopped meanwhile
    }
    info!(%volume, pid, "holder runs another meshdrain binary: handing its device to a holder on this one");
    t.moving.store(true, Ordering::Release);
    if let Err(e) = call(&t.files.socket, &Request::ExitKeepingDevice, QUICK) {
        t.moving.store(false, Ordering::Release);
        warn!(%volume, pid, "the holder would not hand its device over (it keeps running its binary): {e}");
        return;
    }
    let deadline = std::time::Instant::now() + UPGRADE_WITHIN;
    while std::time::Instant::now() < deadline && !t.quiet.load(Ordering::Acquire) {
        if t.live.lock().expect("live lock").pid != pid {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    warn!(%volume, pid, "no new holder within {UPGRADE_WITHIN:?}; moving on to the next one");
}

/// How long after the agent's start the first move waits.
const SETTLE: Duration = Duration::from_secs(10);

/// How long one holder's move onto a new binary may take (its exit, the new holder's
/// login and takeover) before the next one starts anyway.
const UPGRADE_WITHIN: Duration = Duration::from_secs(120);
