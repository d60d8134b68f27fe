//! A token bucket for the background hydration bandwidth (pure: `now` comes in).
//! Workload-driven fetches bypass it: the workload never waits for the budget.
use std::time::Duration;

/// Bandwidth limit as a token bucket of bytes.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Option<u64>,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A bucket refilling at `rate` bytes/s (`None`: unlimited).
    pub fn new(rate: Option<u64>, now: Duration) -> Self {
        Self { rate, tokens: 0.0, last: now }
    }

    /// The current limit.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Changes the limit while running; the bucket restarts empty.
    pub fn set_rate(&mut self, rate: Option<u64>, now: Duration) {
        self.rate = rate;
        self.tokens = 0.0;
        self.last = now;
    }

    fn refill(&mut self, now: Duration) {
        if let Some(rate) = self.rate {
            let dt = now.saturating_sub(self.last).as_secs_f64();
            // Burst: a quarter second of traffic, at least one max-size read (8 MiB).
            let cap = (rate as f64 / 4.0).max(8.0 * 1024.0 * 1024.0);
            self.tokens = (self.tokens + dt * rate as f64).min(cap);
        }
        self.last = now;
    }

    /// Takes `bytes` (going into debt) and says how long to wait before using them.
    pub fn take(&mut self, bytes: u64, now: Duration) -> Duration {
        let Some(rate) = self.rate else { return Duration::ZERO };
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 || rate == 0 {
            return if rate == 0 { Duration::from_secs(1) } else { Duration::ZERO };
        }
        Duration::from_secs_f64(-self.tokens / rate as f64)
    }
}

/// Parses "200M", "1.5G", "500k", "0" (bytes per second, powers of 1024); "0" or
/// "unlimited" means no limit.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "0" {
        return Ok(None);
    }
    let t = t.trim_end_matches(['B', 'b']).trim_end_matches("/s");
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("rate {s:?}: expected a number like 200M"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("rate {s:?} must be positive"));
    }
    Ok(Some((v * mult as f64) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_rate() {
        let mut b = TokenBucket::new(Some(1000), Duration::ZERO);
        assert_eq!(b.take(500, Duration::ZERO), Duration::from_millis(500));
        b.set_rate(None, Duration::from_secs(1));
        assert_eq!(b.take(1 << 30, Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("200M").unwrap(), Some(200 << 20));
        assert_eq!(parse_rate("1.5G").unwrap(), Some(3 << 29));
        assert_eq!(parse_rate("0").unwrap(), None);
        assert!(parse_rate("fast").is_err());
    }
}
