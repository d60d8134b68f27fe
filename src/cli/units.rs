//! Byte sizes as operators type and read them (`200M`, `1G`, `4GiB`). One unit family
//! everywhere (binary IEC: KiB, MiB, MiB/s), so a bar and a summary never disagree.

use std::time::Duration;

/// Formats bytes with binary units (`1.5 GiB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Formats a rate in the same units (`12.5 MiB/s`).
pub fn format_rate(bytes_per_s: u64) -> String {
    format!("{}/s", format_bytes(bytes_per_s))
}

/// Formats a time left, to the second (`1m 5s`), or `-` when unknown.
pub fn format_eta(eta: Option<Duration>) -> String {
    eta.map_or_else(|| "-".to_owned(), |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
}

/// Parses `123`, `64K`, `200M`, `1G`, `2T` (binary multiples; an optional `iB`/`B` suffix is
/// accepted) into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 512M, 1G)"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("{s:?} is not a size (e.g. 512M, 1G)"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("200M"), Ok(200 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert!(parse_bytes("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(10), "10 B");
        assert_eq!(format_rate(5 << 20), "5.0 MiB/s");
        assert_eq!(format_eta(Some(Duration::from_millis(65_400))), "1m 5s");
        assert_eq!(format_eta(None), "-");
    }
}
