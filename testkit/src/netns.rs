//! The netns tier's namespaces: the product's [`meshdrain_netns`] (also the LAN of
//! `meshdrain demo`) plus what only tests need: prerequisite checks that fail with the
//! fix, host-unique names and polling.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use meshdrain_netns::{Lan, Netns, NetnsError};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique on this host for this process: `<prefix><pid><counter>`, at most 15 bytes
/// (the kernel's interface-name limit), for names that live in a host-wide space such as
/// WireGuard UAPI sockets.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let s = format!("{prefix}{}x{n}", std::process::id());
    assert!(s.len() <= 15, "name {s} longer than 15 bytes: shorten the prefix");
    s
}

/// Fails with a clear reason unless we are root, `ip` exists and (optionally) other tools.
pub fn require(tools: &[&str]) -> Result<(), NetnsError> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetnsError::Prerequisite("must run as root (network namespaces need CAP_SYS_ADMIN)".into()));
    }
    for t in std::iter::once(&"ip").chain(tools) {
        let found =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file())).unwrap_or(false);
        if !found {
            return Err(NetnsError::Prerequisite(format!("`{t}` not found in PATH: run `scripts/install-deps test`")));
        }
    }
    Ok(())
}

/// Fails unless /dev/net/tun can be opened (userspace WireGuard needs it).
pub fn require_tun() -> Result<(), NetnsError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| NetnsError::Prerequisite(format!("/dev/net/tun: {e} (load the tun module)")))
}

/// Polls `check` every 100 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
