//! What the drain outputs count: bytes moved over the network against bytes left to move,
//! never regions. A region the source reported unallocated is on the dest without a byte
//! moved, so a percentage of regions starts at 89 % for a mostly empty volume; these
//! numbers start at 0 and say what the network still has to carry (README.md, "Exit codes"
//! and issue 19's "Progress numbers").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::api::VolumeStatus;

/// One volume's move in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Bytes the holder fetched from the source in this run of its clone.
    pub moved: u64,
    /// `moved` plus what the regions not on the dest yet hold (at most the volume's size).
    pub to_move: u64,
}

impl Moved {
    /// From a volume's line; `None` until its holder reports counters.
    pub fn of(v: &VolumeStatus) -> Option<Self> {
        let h = &v.hydration;
        if h.total == 0 {
            return None;
        }
        let region = v.size.div_ceil(h.total);
        let left = (h.total - h.hydrated.min(h.total)).saturating_mul(region).min(v.size);
        Some(Self { moved: h.fetched_bytes, to_move: h.fetched_bytes + left })
    }

    /// Whole percent moved (100 when nothing is left).
    pub fn percent(&self) -> u64 {
        self.moved.saturating_mul(100).checked_div(self.to_move).unwrap_or(100)
    }

    /// Adds another volume's numbers (node-level progress).
    pub fn plus(self, other: Self) -> Self {
        Self { moved: self.moved + other.moved, to_move: self.to_move + other.to_move }
    }
}

/// A node's moves together, from the volume list: counts, bytes, the holders' rates summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeProgress {
    /// Volumes owned by the node that are moving (offered, granted or cut over).
    pub moving: usize,
    /// Their bytes.
    pub bytes: Moved,
    /// The sum of the holders' recent rates, bytes/s.
    pub bytes_per_s: u64,
}

impl NodeProgress {
    /// The moves off `node` in `volumes`.
    pub fn of(node: &str, volumes: &[VolumeStatus]) -> Self {
        let mut p = Self::default();
        for v in volumes.iter().filter(|v| v.owner == node && is_moving(&v.phase)) {
            p.moving += 1;
            if let Some(m) = Moved::of(v) {
                p.bytes = p.bytes.plus(m);
            }
            p.bytes_per_s += v.hydration.bytes_per_s;
        }
        p
    }

    /// Time left at the summed rate.
    pub fn eta(&self) -> Option<Duration> {
        eta(self.bytes.to_move - self.bytes.moved, self.bytes_per_s)
    }

    /// `2 moving, 40% 12.0 MiB / 30.0 MiB, 5.0 MiB/s, eta 4s`; `None` when nothing moves.
    pub fn render(&self) -> Option<String> {
        use super::units::{format_bytes, format_eta, format_rate};
        (self.moving > 0).then(|| {
            format!(
                "{} moving, {}% {} / {}, {}, eta {}",
                self.moving,
                self.bytes.percent(),
                format_bytes(self.bytes.moved),
                format_bytes(self.bytes.to_move),
                format_rate(self.bytes_per_s),
                format_eta(self.eta())
            )
        })
    }
}

/// Offered, granted or cut over: the volume is on its way.
pub fn is_moving(phase: &str) -> bool {
    matches!(phase, "offered" | "granted" | "cut_over")
}

/// `left` bytes at `rate` bytes/s.
pub fn eta(left: u64, rate: u64) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs(left / rate))
}

/// A rate measured here from a volume's moved bytes over the last few seconds of this run:
/// a clone that resumed with most regions on the dest shows what it moves now, not its
/// regions over its run time. A counter that goes back means the holder's clone restarted
/// and resumed: the meter starts over and says so.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
    /// The counter went back at least once: the clone resumed from its metadata.
    pub resumed: bool,
}

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5);

impl RateMeter {
    /// Records `moved` at `now`; returns the rate over the window (0 until two samples).
    pub fn sample(&mut self, now: Instant, moved: u64) -> u64 {
        if self.samples.back().is_some_and(|(_, last)| moved < *last) {
            self.samples.clear();
            self.resumed = true;
        }
        self.samples.push_back((now, moved));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                ((b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()) as u64
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::model::Hydration;

    fn vol(owner: &str, phase: &str, size: u64, hydrated: u64, total: u64, fetched: u64, rate: u64) -> VolumeStatus {
        VolumeStatus {
            id: "v".into(),
            owner: owner.into(),
            size,
            epoch: 1,
            phase: phase.into(),
            holder: Some("node3".into()),
            holder_phase: Some("running".into()),
            hydration: Hydration { hydrated, total, bytes_per_s: rate, fetched_bytes: fetched, read_through_bytes: 0 },
            arrived_from: None,
            source_phase: None,
            return_mode: None,
            stranded: false,
            stalled: false,
            error: None,
            path: None,
        }
    }

    #[test]
    fn unallocated_regions_do_not_count_as_moved() {
        // 100 regions of 1 MiB, 89 on the dest because the source reported them unallocated,
        // 1 MiB fetched: 11 regions (11 MiB) still to fetch.
        let m = Moved::of(&vol("node2", "cut_over", 100 << 20, 89, 100, 1 << 20, 0)).unwrap();
        assert_eq!(m, Moved { moved: 1 << 20, to_move: 12 << 20 });
        assert_eq!(m.percent(), 8);
        assert_eq!(Moved::of(&vol("node2", "offered", 1 << 20, 0, 0, 0, 0)), None, "no counters yet");
        let done = Moved::of(&vol("node2", "cut_over", 4 << 20, 4, 4, 0, 0)).unwrap();
        assert_eq!(done.percent(), 100);
    }

    #[test]
    fn node_progress_sums_its_moving_volumes() {
        let volumes = vec![
            vol("node2", "cut_over", 10 << 20, 5, 10, 5 << 20, 1 << 20),
            vol("node2", "granted", 10 << 20, 0, 10, 0, 1 << 20),
            vol("node2", "held", 10 << 20, 0, 10, 0, 0),
            vol("node1", "cut_over", 10 << 20, 0, 10, 0, 9 << 20),
        ];
        let p = NodeProgress::of("node2", &volumes);
        assert_eq!(p.moving, 2);
        assert_eq!(p.render().unwrap(), "2 moving, 25% 5.0 MiB / 20.0 MiB, 2.0 MiB/s, eta 7s");
        assert_eq!(NodeProgress::of("node9", &volumes).render(), None);
    }

    #[test]
    fn a_resumed_clone_shows_this_runs_rate_and_is_marked() {
        let t = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.sample(t, 900 << 20), 0);
        assert_eq!(m.sample(t + Duration::from_secs(1), 910 << 20), 10 << 20);
        // The holder restarted: its counter starts over from 0.
        assert_eq!(m.sample(t + Duration::from_secs(2), 0), 0);
        assert!(m.resumed);
        assert_eq!(m.sample(t + Duration::from_secs(4), 4 << 20), 2 << 20);
        // The window drops samples older than 5 s.
        assert_eq!(m.sample(t + Duration::from_secs(12), 4 << 20), 0);
    }
}
