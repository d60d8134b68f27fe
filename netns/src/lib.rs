//! meshdrain-netns: RAII network namespaces, veth pairs and a bridge, all removed on drop
//! (also on panic). `meshdrain demo` runs its fleet on a [`Lan`]; the netns test tier
//! builds its fleets with it too (through meshdrain-testkit). Names carry the pid and a
//! counter so parallel users never clash. Underlay addresses are taken from 198.18.0.0/15
//! only.
//!
//! Topology of a [`Lan`]: one hidden hub namespace holds bridge `br0`; each node namespace
//! gets `eth0` (198.18.0.N/24) whose veth peer is enslaved to the bridge. Nothing is created
//! in the caller's namespace.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a namespace, link or address could not be made; callers fail with this message.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A prerequisite is missing.
    #[error("network namespace prerequisite missing: {0}")]
    Prerequisite(String),
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> Result<Output, NetnsError> {
    let out = cmd.output().map_err(|e| NetnsError::Command { command: format!("{cmd:?}"), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: format!("{cmd:?}"),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    run(Command::new("ip").args(args))
}

/// A network namespace, deleted on drop together with every process spawned through it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: std::sync::Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates `md<pid>-<counter>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Result<Self, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("md{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name, children: Default::default() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command<S: AsRef<OsStr>>(&self, program: S) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a command to completion inside the namespace; non-zero exit is an error.
    pub fn exec<S: AsRef<OsStr>>(&self, program: S, args: &[&str]) -> Result<Output, NetnsError> {
        run(self.command(program).args(args))
    }

    /// Spawns a process inside the namespace; it is killed when the namespace drops.
    /// Returns its pid.
    pub fn spawn(&self, mut command: Command) -> Result<u32, NetnsError> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| NetnsError::Command { command: format!("{command:?}"), detail: e.to_string() })?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        Ok(pid)
    }

    /// Kills one spawned process (SIGKILL) and reaps it.
    pub fn kill(&self, pid: u32) {
        let mut kids = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = kids.iter().position(|c| c.id() == pid) {
            let mut c = kids.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Threads and sockets `f`
    /// creates stay in the namespace (a TUN device, a UDP socket, worker threads).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
        let path = Path::new("/run/netns").join(&self.name);
        let file = std::fs::File::open(&path)
            .map_err(|e| NetnsError::Command { command: format!("open {}", path.display()), detail: e.to_string() })?;
        std::thread::spawn(move || {
            // SAFETY: setns only changes this thread's network namespace; the fd is valid.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NetnsError::Command {
                    command: "setns".into(),
                    detail: std::io::Error::last_os_error().to_string(),
                });
            }
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Command { command: "run_in".into(), detail: "closure panicked".into() })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let kids = std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for mut c in kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "netns cleanup");
        }
    }
}

/// Namespaces joined by one bridge (in a hidden hub namespace), each with `eth0` on
/// 198.18.0.N/24, N = index + 1.
#[derive(Debug)]
pub struct Lan {
    /// The node namespaces, in order.
    pub nodes: Vec<Netns>,
    hub: Netns,
}

impl Lan {
    /// Builds a LAN of `n` namespaces (at most 250).
    pub fn new(n: usize) -> Result<Self, NetnsError> {
        assert!(n <= 250, "Lan supports at most 250 nodes");
        let hub = Netns::new("hub")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let ns = Netns::new(&format!("n{i}"))?;
            let port = format!("p{i}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                hub.name(),
            ])?;
            hub.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", Self::underlay(i));
            ns.ip(&["addr", "add", &addr, "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            nodes.push(ns);
        }
        Ok(Self { nodes, hub })
    }

    /// The underlay address of node `i`.
    pub fn underlay(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, (i + 1) as u8)
    }

    /// Cuts or restores node `i`'s link to the bridge (a partition).
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), NetnsError> {
        self.hub.ip(&["link", "set", &format!("p{i}"), if up { "up" } else { "down" }]).map(drop)
    }
}
