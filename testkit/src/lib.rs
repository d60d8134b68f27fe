//! meshdrain-testkit: privileged test fixtures (network namespaces, veth, bridges, QEMU VMs, tgtd)
//! shared by the netns and vm test tiers. Every fixture cleans up on drop, also on panic.
pub mod netns;
pub mod tgtd;
pub mod vm;

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes for a seed (xorshift64, 8 bytes a step): volume and
/// source contents every test tier writes and then compares by checksum.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// Path of an external program a test needs; panics naming the Debian package to install.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: this test needs it. Install it with `apt-get install {package}` (or `scripts/install-deps test`)."
            )
        })
}
