//! Facts about this machine that the agent and the CLI check before relying on them.

use std::path::PathBuf;

/// Where `program` is installed, looked up like a root shell would: `PATH`, then
/// /usr/sbin and /sbin (systemd units and sudo often leave those out of `PATH`).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
