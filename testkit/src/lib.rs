//! meshdrain-testkit: privileged test fixtures (network namespaces, veth, bridges, QEMU VMs, tgtd)
//! shared by the netns and vm test tiers. Every fixture cleans up on drop, also on panic.
pub mod netns;
pub mod tgtd;
pub mod vm;

use std::path::{Path, PathBuf};

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
