//! The pure controller of a dm-clone device: from the bandwidth limit it derives
//! `hydration_threshold` / `hydration_batch_size`, from each status poll (with `now`)
//! it decides the messages to send (duty-cycling hydration to hold the rate, since the
//! kernel has no rate limit), detects stalls (the kernel retries source errors forever)
//! and says when to hand off (reload as `linear` on the dest).
use std::time::Duration;

use super::params::{CloneMessage, CloneStatus, MetadataMode};

/// Derives (threshold, batch) in regions from the limit: a batch is about 100 ms of
/// the limit (16 MiB when unlimited), the threshold four batches.
pub fn tuning(rate_limit: Option<u64>, region_bytes: u64) -> (u64, u64) {
    let region_bytes = region_bytes.max(512);
    let batch_bytes = rate_limit.map_or(16 << 20, |r| r / 10);
    let batch = (batch_bytes / region_bytes).clamp(1, 1024);
    (batch.saturating_mul(4).clamp(1, 65536), batch)
}

/// What the shell must do after a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmAction {
    /// Send this message to the device.
    Send(CloneMessage),
    /// Every region is hydrated: suspend, reload as `linear` on the dest, resume.
    Handoff,
}

/// Controller state.
#[derive(Debug)]
pub struct DmController {
    rate_limit: Option<u64>,
    region_bytes: u64,
    paused: bool,
    enabled: bool,
    start: Option<(Duration, u64)>,
    last_change: Option<(Duration, u64)>,
    stall_after: Duration,
    handed_off: bool,
    pending: Vec<CloneMessage>,
    /// Hydration was enabled at least once.
    ever: bool,
}

impl DmController {
    /// A controller for a device created with `no_hydration` (hydration starts on the
    /// first poll, once tuned).
    pub fn new(rate_limit: Option<u64>, region_bytes: u64, stall_after: Duration) -> Self {
        let mut me = Self {
            rate_limit,
            region_bytes,
            paused: false,
            enabled: false,
            start: None,
            last_change: None,
            stall_after,
            handed_off: false,
            pending: Vec::new(),
            ever: false,
        };
        me.retune();
        me
    }

    fn retune(&mut self) {
        let (t, b) = tuning(self.rate_limit, self.region_bytes);
        self.pending.push(CloneMessage::HydrationThreshold(t));
        self.pending.push(CloneMessage::HydrationBatchSize(b));
    }

    /// Changes the limit; the next poll retunes and restarts the rate window.
    pub fn set_rate_limit(&mut self, rate: Option<u64>) {
        self.rate_limit = rate;
        self.start = None;
        self.retune();
    }

    /// Pauses or resumes background hydration.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether background hydration was switched on (marking regions by discard is only
    /// sound before it ever was).
    pub fn ever_enabled(&self) -> bool {
        self.ever
    }

    /// Restarts the rate window from the next poll: regions marked without copying
    /// (skipped as unallocated) are not bytes the limit must pay back.
    pub fn restart_window(&mut self) {
        self.start = None;
    }

    /// Whether the device made no progress for the stall bound while it should have.
    pub fn stalled(&self, now: Duration, status: &CloneStatus) -> bool {
        status.mode != MetadataMode::ReadWrite
            || (self.enabled
                && status.hydrated < status.total
                && self.last_change.is_some_and(|(t, _)| now.saturating_sub(t) >= self.stall_after))
    }

    /// One poll: returns what to do.
    pub fn poll(&mut self, now: Duration, status: &CloneStatus) -> Vec<DmAction> {
        let mut out: Vec<DmAction> = self.pending.drain(..).map(DmAction::Send).collect();
        if self.handed_off {
            return out;
        }
        if status.hydrated >= status.total {
            self.handed_off = true;
            out.push(DmAction::Handoff);
            return out;
        }
        match self.last_change {
            Some((_, h)) if h == status.hydrated => {}
            _ => self.last_change = Some((now, status.hydrated)),
        }
        let (t0, h0) = *self.start.get_or_insert((now, status.hydrated));
        let ahead = self.rate_limit.is_some_and(|r| {
            let allowed = r as f64 * now.saturating_sub(t0).as_secs_f64();
            (status.hydrated.saturating_sub(h0) * self.region_bytes) as f64 > allowed
        });
        let want = !self.paused && !ahead;
        if want != self.enabled {
            self.enabled = want;
            if want {
                self.ever = true;
                // Progress is measured from when hydration (re)starts.
                self.last_change = Some((now, status.hydrated));
            }
            out.push(DmAction::Send(if want { CloneMessage::EnableHydration } else { CloneMessage::DisableHydration }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(h: u64, t: u64) -> CloneStatus {
        format!("8 72/4096 8 {h}/{t} 0 1 no_hydration 0 rw").parse().unwrap()
    }

    #[test]
    fn tuning_follows_the_limit() {
        assert_eq!(tuning(None, 64 << 10), (1024, 256));
        assert_eq!(tuning(Some(100 << 20), 64 << 10), (640, 160));
        assert_eq!(tuning(Some(1), 4096), (4, 1));
    }

    #[test]
    fn duty_cycles_to_the_limit_and_hands_off() {
        let s = Duration::from_secs;
        let mut c = DmController::new(Some(64 << 10), 64 << 10, s(5)); // one region per second
        let a = c.poll(s(0), &st(0, 100));
        assert!(a.contains(&DmAction::Send(CloneMessage::EnableHydration)), "{a:?}");
        assert!(a.iter().any(|x| matches!(x, DmAction::Send(CloneMessage::HydrationBatchSize(1)))));
        assert_eq!(c.poll(s(1), &st(10, 100)), vec![DmAction::Send(CloneMessage::DisableHydration)]);
        assert_eq!(c.poll(s(11), &st(10, 100)), vec![DmAction::Send(CloneMessage::EnableHydration)]);
        assert_eq!(c.poll(s(12), &st(100, 100)), vec![DmAction::Handoff]);
        assert!(c.poll(s(13), &st(100, 100)).is_empty());
    }

    #[test]
    fn stall_when_enabled_without_progress() {
        let s = Duration::from_secs;
        let mut c = DmController::new(None, 4096, s(5));
        c.poll(s(0), &st(3, 100));
        c.poll(s(3), &st(3, 100));
        assert!(!c.stalled(s(3), &st(3, 100)));
        c.poll(s(6), &st(3, 100));
        assert!(c.stalled(s(6), &st(3, 100)));
        c.poll(s(7), &st(4, 100));
        assert!(!c.stalled(s(7), &st(4, 100)));
        c.set_paused(true);
        c.poll(s(8), &st(4, 100));
        assert!(!c.stalled(s(20), &st(4, 100)), "paused is not stalled");
    }

    #[test]
    fn regions_skipped_while_paused_do_not_count_against_the_limit() {
        let s = Duration::from_secs;
        let mut c = DmController::new(Some(64 << 10), 64 << 10, s(5)); // one region per second
        c.set_paused(true);
        assert!(!c.poll(s(0), &st(0, 100)).contains(&DmAction::Send(CloneMessage::EnableHydration)));
        assert!(!c.ever_enabled(), "paused from the start: skipping is still allowed");
        // 90 regions marked by discard; the window restarts, so hydration is not held off
        // for 90 s as if they had been copied.
        c.restart_window();
        c.set_paused(false);
        assert_eq!(c.poll(s(1), &st(90, 100)), vec![DmAction::Send(CloneMessage::EnableHydration)]);
        assert!(c.ever_enabled());
        assert!(c.poll(s(2), &st(91, 100)).is_empty(), "within the limit: stays enabled");
    }
}
