//! Fixed mesh identities and clock (also included by fuzz/seedgen, which writes the
//! seed corpora with them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshdrain_mesh::{Certificate, FleetCa, NodeKey, SigningRequest};

/// The fleet CA every mesh target checks against (secret = 32 bytes of 0x01).
pub fn ca() -> FleetCa {
    FleetCa::from_base64("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").expect("fixed CA key")
}

/// The seed node that receives join datagrams (secret = 32 bytes of 0x02).
pub fn seed_key() -> NodeKey {
    NodeKey::from_base64("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=").expect("fixed seed key")
}

/// A node that joins (secret = 32 bytes of 0x03).
pub fn joiner_key() -> NodeKey {
    NodeKey::from_base64("AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=").expect("fixed joiner key")
}

/// The fixed "now" of every check (2027-01-15), so certificates and joins never go stale.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// The joiner's certificate, valid a year past [`now`].
pub fn joiner_certificate() -> Certificate {
    let req = SigningRequest { name: "joiner".into(), public_key: joiner_key().public().to_base64() };
    ca().sign(&req, now() + Duration::from_secs(365 * 86_400)).expect("fixed request signs")
}
