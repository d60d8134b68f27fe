//! `key=value\0` text parsing and encoding (RFC 7143 §6.1) with hard limits,
//! so a hostile peer cannot make us allocate without bound.

use bytes::Bytes;

/// Longest key name the RFC allows (§6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept: long enough for a 1024-byte CHAP challenge in hex.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most pairs one text exchange may carry.
pub const MAX_PAIRS: usize = 256;
/// Most bytes of text accumulated across continued (C bit) PDUs.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Why a text segment was refused; each maps to a login "initiator error".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    /// An entry had no `=`.
    #[error("text entry {0:?} has no '=': peer sent malformed key=value text")]
    MissingEquals(String),
    /// Key or value is not UTF-8.
    #[error("text key/value is not UTF-8: peer sent malformed text")]
    NotUtf8,
    /// Key empty or longer than 63 bytes.
    #[error("text key {0:?} is empty or longer than {MAX_KEY_LEN} bytes")]
    BadKey(String),
    /// Value longer than the limit.
    #[error("value of {key} is {len} bytes, more than the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLong {
        /// The key.
        key: String,
        /// Length received.
        len: usize,
    },
    /// Too many pairs.
    #[error("more than {MAX_PAIRS} key=value pairs in one exchange")]
    TooManyPairs,
    /// The same key twice in one exchange (§6.2: a protocol error).
    #[error("key {0} sent twice in one exchange")]
    Duplicate(String),
}

/// Parses a text data segment (NUL-separated `key=value` entries; padding
/// and empty entries are ignored) into pairs in wire order.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in data.split(|b| *b == 0) {
        if entry.is_empty() {
            continue;
        }
        let eq = entry.iter().position(|b| *b == b'=').ok_or_else(|| {
            TextError::MissingEquals(String::from_utf8_lossy(&entry[..entry.len().min(64)]).into_owned())
        })?;
        let key = std::str::from_utf8(&entry[..eq]).map_err(|_| TextError::NotUtf8)?;
        let value = std::str::from_utf8(&entry[eq + 1..]).map_err(|_| TextError::NotUtf8)?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(TextError::BadKey(key.chars().take(64).collect()));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong { key: key.to_string(), len: value.len() });
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(TextError::Duplicate(key.to_string()));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as `key=value\0` entries.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_ref().as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_ref().as_bytes());
        v.push(0);
    }
    Bytes::from(v)
}

/// Looks a key up in parsed pairs.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let b = encode(&[("A", "1"), ("B", "x=y")]);
        let mut padded = b.to_vec();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(parse(&padded).unwrap(), vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
    }

    #[test]
    fn limits() {
        assert!(matches!(parse(b"noequals\0"), Err(TextError::MissingEquals(_))));
        assert!(matches!(parse(b"=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        let long = format!("K={}\0", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(parse(long.as_bytes()), Err(TextError::ValueTooLong { .. })));
        assert_eq!(parse(&[0xff, b'=', b'1']), Err(TextError::NotUtf8));
    }
}
