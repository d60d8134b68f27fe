//! CHAP with MD5 (RFC 1994 as profiled by RFC 7143 §12.1.3): the only
//! authentication iSCSI initiators commonly speak. Pure math and encoding.

use md5::{Digest, Md5};

/// CHAP algorithm number for MD5.
pub const CHAP_MD5: &str = "5";

/// Credentials an initiator must prove (target side) or presents (initiator side).
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// CHAP_N, the user name.
    pub user: String,
    /// Shared secret (RFC 7143 asks for at least 12 bytes).
    pub secret: String,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials").field("user", &self.user).field("secret", &"<redacted>").finish()
    }
}

/// CHAP_R = MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Encodes binary as the `0x...` hex form CHAP values use.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a `0x...` hex CHAP value (`0b...` base64 is not supported).
/// Anything but an even number of ASCII hex digits is `None`, never a panic:
/// the value comes from an unauthenticated peer, so a multi-byte character
/// must never reach a string slice.
pub fn from_hex(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?.as_bytes();
    if h.len() % 2 != 0 || h.is_empty() {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    h.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_response_is_deterministic() {
        let c = [1u8, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&c)).unwrap(), c);
        assert_eq!(response(7, b"secret", &c), response(7, b"secret", &c));
        assert_ne!(response(7, b"secret", &c), response(8, b"secret", &c));
        assert!(from_hex("0xabc").is_none());
    }

    #[test]
    fn non_ascii_odd_or_non_hex_values_are_none_not_a_panic() {
        for bad in ["0x0\u{e9}0", "0x\u{e9}", "0x\u{e9}\u{e9}", "0x0", "0x", "0xzz", "abcd", "0x+1", "0x 1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(from_hex("0XaBcD"), Some(vec![0xab, 0xcd]));
    }
}
