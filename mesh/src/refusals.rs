//! Bounded bookkeeping of refused peers and join datagrams, and the rate limit on their log
//! lines (docs/threat-model.md: everything from the network is hostile until authenticated).
//!
//! A refused join is keyed by its source IP, which anyone can spoof, so nothing here may grow
//! with the number of sources: at most [`MAX_REFUSALS_SHOWN`] recent entries are kept (the
//! least recently refused is evicted) with every string clipped, and the totals are counters.
//! Logging: the first new refusal of a kind (see [`RefusalKind`]) in a
//! [`REFUSAL_LOG_INTERVAL`] is logged at WARN with its source and reason; further new ones in
//! that interval are only counted, and one summary line reports them when it ends. A refusal
//! repeating the same source and reason is never logged again while it stays listed (as
//! before: "logged once").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How many refused sources `meshdrain mesh status` lists (the most recent).
pub const MAX_REFUSALS_SHOWN: usize = 64;
/// At most one WARN line per kind of refusal per interval, plus one summary line.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Longest source (peer key or `join from <ip>`) kept, in characters.
pub const MAX_SOURCE_CHARS: usize = 64;
/// Longest reason kept, in characters (reasons quote peer-supplied text).
pub const MAX_REASON_CHARS: usize = 240;

/// What kind of refusal: the unit of the log rate limit (a fixed, small set).
pub type RefusalKind = &'static str;

/// A refusal as shown by `meshdrain mesh status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedPeer {
    /// The public key claimed, or `join from <ip>` for a refused join datagram.
    pub peer: String,
    /// Why (the latest reason).
    pub reason: String,
    /// How many times this source was refused while listed.
    pub count: u64,
    /// Seconds since its latest refusal.
    pub last_secs_ago: u64,
}

/// Totals since start, for `meshdrain mesh status` next to the bounded list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefusalTotals {
    /// Every refusal (joins and gossip adverts), repeats included.
    pub refusals: u64,
    /// Refusals of a source not listed at the time (new source or new reason).
    pub new_refusals: u64,
    /// Sources dropped from the list to keep it at [`MAX_REFUSALS_SHOWN`].
    pub evicted: u64,
    /// WARN lines written about refusals (first lines plus summaries).
    pub log_lines: u64,
}

struct Entry {
    reason: String,
    count: u64,
    last: Instant,
}

/// One kind's log interval.
struct Window {
    started: Instant,
    /// Whether this interval's one full line was written.
    logged: bool,
    /// New refusals counted but not logged in this interval.
    suppressed: u64,
    /// All refusals of this kind in this interval, repeats included.
    refusals: u64,
}

/// The bounded list of recent refusals with its counters and log rate limit.
#[derive(Default)]
pub struct Refusals {
    recent: BTreeMap<String, Entry>,
    windows: BTreeMap<RefusalKind, Window>,
    totals: RefusalTotals,
}

/// `s` with control characters escaped (peer text goes to logs), cut to `max` characters
/// plus a `…` when longer.
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 3));
    let mut len = 0;
    for c in s.chars() {
        let piece: String = if c.is_control() { c.escape_default().collect() } else { c.into() };
        let n = piece.chars().count();
        if len + n > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        len += n;
    }
    out
}

impl Refusals {
    /// Records one refusal of `source` for `reason`, logging it if the rate limit allows.
    pub fn record(&mut self, kind: RefusalKind, source: &str, reason: &str, now: Instant) {
        self.totals.refusals = self.totals.refusals.saturating_add(1);
        let source = clip(source, MAX_SOURCE_CHARS);
        let reason = clip(reason, MAX_REASON_CHARS);
        self.roll(kind, now);
        let window =
            self.windows.entry(kind).or_insert(Window { started: now, logged: false, suppressed: 0, refusals: 0 });
        window.refusals += 1;
        if let Some(e) = self.recent.get_mut(&source) {
            e.count = e.count.saturating_add(1);
            e.last = now;
            if e.reason == reason {
                return;
            }
            e.reason.clone_from(&reason);
        } else {
            if self.recent.len() >= MAX_REFUSALS_SHOWN {
                let oldest = self.recent.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.recent.remove(&k);
                    self.totals.evicted += 1;
                }
            }
            self.recent.insert(source.clone(), Entry { reason: reason.clone(), count: 1, last: now });
        }
        self.totals.new_refusals += 1;
        if window.logged {
            window.suppressed += 1;
            return;
        }
        window.logged = true;
        tracing::warn!(peer = %source, kind, "mesh peer refused: {reason}");
        self.totals.log_lines += 1;
    }

    /// Ends the log intervals that are over, writing their summary lines. Called every tick so
    /// a summary appears even when the refusals stop.
    pub fn tick(&mut self, now: Instant) {
        let over: Vec<RefusalKind> = self
            .windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.started) >= REFUSAL_LOG_INTERVAL)
            .map(|(k, _)| *k)
            .collect();
        for kind in over {
            self.roll(kind, now);
        }
    }

    /// Closes `kind`'s interval if it is over (summary line if anything was suppressed).
    fn roll(&mut self, kind: RefusalKind, now: Instant) {
        let Some(w) = self.windows.get(kind) else { return };
        if now.saturating_duration_since(w.started) < REFUSAL_LOG_INTERVAL {
            return;
        }
        if w.suppressed > 0 {
            tracing::warn!(
                kind,
                "mesh: {} more peers refused ({kind}) in the last {} s, {} refusals in all; \
                 `meshdrain mesh status` lists the latest {MAX_REFUSALS_SHOWN}",
                w.suppressed,
                REFUSAL_LOG_INTERVAL.as_secs(),
                w.refusals
            );
            self.totals.log_lines += 1;
        }
        self.windows.remove(kind);
    }

    /// The listed refusals, most recent first.
    pub fn list(&self, now: Instant) -> Vec<RefusedPeer> {
        let mut v: Vec<(&String, &Entry)> = self.recent.iter().collect();
        v.sort_by_key(|(_, e)| std::cmp::Reverse(e.last));
        v.into_iter()
            .map(|(k, e)| RefusedPeer {
                peer: k.clone(),
                reason: e.reason.clone(),
                count: e.count,
                last_secs_ago: now.saturating_duration_since(e.last).as_secs(),
            })
            .collect()
    }

    /// The counters since start.
    pub fn totals(&self) -> RefusalTotals {
        self.totals
    }

    /// How many sources are listed (at most [`MAX_REFUSALS_SHOWN`]).
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Whether nothing was refused (or everything listed was evicted, which cannot happen).
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_one_line_and_one_summary_per_kind_and_interval() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        // Ten minutes of 100 new sources a second, two kinds.
        for s in 0..600u64 {
            let now = t0 + Duration::from_secs(s);
            r.tick(now);
            for i in 0..100u64 {
                let kind = if i % 2 == 0 { "join malformed" } else { "join stale" };
                r.record(kind, &format!("join from 10.{}.{}.{}", s % 256, i / 256, i % 256), "bad", now);
            }
        }
        r.tick(t0 + Duration::from_secs(600));
        let t = r.totals();
        assert_eq!(r.len(), MAX_REFUSALS_SHOWN);
        assert_eq!((t.refusals, t.new_refusals, t.evicted), (60_000, 60_000, 60_000 - 64));
        // Per kind: a first line and a summary for each of the 10 intervals.
        assert_eq!(t.log_lines, 2 * 10 * 2);
    }

    #[test]
    fn repeats_are_silent_new_reasons_count_and_the_oldest_is_evicted() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        r.record("peer expired", "KEY1", "expired", t0);
        for s in 1..100 {
            r.record("peer expired", "KEY1", "expired", t0 + Duration::from_secs(s));
        }
        assert_eq!(r.totals().log_lines, 1, "the same refusal every tick is logged once");
        assert_eq!(r.totals().new_refusals, 1);
        let now = t0 + Duration::from_secs(100);
        r.record("peer revoked", "KEY1", "revoked", now);
        assert_eq!((r.totals().new_refusals, r.totals().log_lines), (2, 2));
        assert_eq!(
            r.list(now),
            vec![RefusedPeer { peer: "KEY1".into(), reason: "revoked".into(), count: 101, last_secs_ago: 0 }]
        );
        for i in 0..MAX_REFUSALS_SHOWN {
            r.record("peer forged", &format!("K{i}"), "forged", now + Duration::from_secs(1 + i as u64));
        }
        let list = r.list(now + Duration::from_secs(100));
        assert_eq!(list.len(), MAX_REFUSALS_SHOWN);
        assert!(list.iter().all(|p| p.peer != "KEY1"), "the least recent went first");
        assert_eq!(list[0].peer, format!("K{}", MAX_REFUSALS_SHOWN - 1));
        assert_eq!(r.totals().evicted, 1);
    }

    #[test]
    fn peer_text_is_clipped_and_escaped() {
        let mut r = Refusals::default();
        let now = Instant::now();
        r.record("join malformed", &"s".repeat(500), &format!("a\nb\u{1b}[31m{}", "r".repeat(5000)), now);
        let p = &r.list(now)[0];
        assert_eq!(p.peer, format!("{}…", "s".repeat(MAX_SOURCE_CHARS)));
        assert!(p.reason.starts_with("a\\nb\\u{1b}[31mrrr"), "{}", p.reason);
        assert_eq!(p.reason.chars().count(), MAX_REASON_CHARS + 1);
    }
}
