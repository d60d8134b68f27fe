//! The demo's fleet: one network namespace per node on a shared bridge (underlay
//! 198.18.0.0/24), each running a real `meshdrain agent` process (this binary) with the
//! iSCSI data plane. Agents enter only the network namespace (nsenter --net), so their
//! clone devices and mounts are visible to the demo and to the operator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshdrain_testkit::netns::Lan;

use crate::control::client::Client;
use crate::control::protocol::{Request, Response, StatusReport, VolumeStatus};

/// One agent of the demo fleet.
pub struct DemoNode {
    /// `node1`, `node2`, ...
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its control socket (reachable from the host: it is a file).
    pub socket: PathBuf,
    /// Where its volumes live.
    pub pool: PathBuf,
    /// Its agent's log.
    pub log: PathBuf,
    child: Option<Child>,
}

/// A running demo fleet; dropping it stops the agents and deletes the namespaces unless
/// [`DemoFleet::keep`] was called.
pub struct DemoFleet {
    /// The nodes, in order.
    pub nodes: Vec<DemoNode>,
    lan: Option<Lan>,
}

impl DemoFleet {
    /// Builds the namespaces and starts `n` agents under `dir`.
    pub fn start(dir: &Path, n: usize, interval_ms: u64) -> anyhow::Result<Self> {
        for tool in ["ip", "nsenter", "mkfs.ext4", "losetup", "mount", "fsck.ext4"] {
            which(tool).with_context(|| {
                format!("the demo needs `{tool}`: run scripts/demo (it installs what the demo needs) or apt-get install iproute2 util-linux e2fsprogs")
            })?;
        }
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "the demo builds network namespaces, loop devices and FUSE mounts: run it as root"
        );
        let lan = Lan::new(n).context("building the demo network (network namespaces on a bridge)")?;
        let exe = std::env::current_exe().context("finding the meshdrain binary")?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home)?;
            let ip = Lan::underlay(i);
            let seed = Lan::underlay(if i == 0 { 1 } else { 0 });
            let socket = home.join("control.sock");
            let config = home.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "name = \"{name}\"\nstate_dir = \"{state}\"\ncluster_id = \"demo\"\n\n\
                     [gossip]\nlisten = \"{ip}:7946\"\nseeds = [\"{seed}:7946\"]\ninterval_ms = {interval_ms}\n\n\
                     [control]\nsocket = \"{sock}\"\n\n[mesh]\nbackend = \"none\"\n\n\
                     [pool]\ncapacity_bytes = 68719476736\n\n\
                     [dataplane]\nbackend = \"iscsi\"\nclone = \"userspace\"\nprogress_ms = 200\n",
                    state = home.join("state").display(),
                    sock = socket.display(),
                ),
            )?;
            let log = home.join("agent.log");
            let stderr = std::fs::File::create(&log)?;
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", lan.nodes[i].name()))
                .arg(&exe)
                .arg("agent")
                .arg("--config")
                .arg(&config)
                .env("MESHDRAIN_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .context("starting an agent")?;
            nodes.push(DemoNode {
                name,
                netns: lan.nodes[i].name().to_owned(),
                socket,
                pool: home.join("state").join("pool"),
                log,
                child: Some(child),
            });
        }
        Ok(Self { nodes, lan: Some(lan) })
    }

    /// Sends one request to node `i`'s agent.
    pub async fn call(&self, i: usize, req: &Request) -> anyhow::Result<Response> {
        let node = &self.nodes[i];
        let mut client = Client::connect(&node.socket).await.with_context(|| format!("reaching {}", node.name))?;
        Ok(client.call(req).await?)
    }

    /// Node `i`'s status.
    pub async fn status(&self, i: usize) -> anyhow::Result<StatusReport> {
        match self.call(i, &Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    }

    /// The fleet's volumes as node `i` sees them.
    pub async fn volumes(&self, i: usize) -> anyhow::Result<Vec<VolumeStatus>> {
        match self.call(i, &Request::Volumes).await? {
            Response::Volumes { volumes } => Ok(volumes),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    }

    /// Waits until every agent answers and sees every node alive.
    pub async fn wait_joined(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let n = self.nodes.len();
        loop {
            let mut all = true;
            for i in 0..n {
                match self.status(i).await {
                    Ok(s) if s.nodes.len() == n && s.nodes.iter().all(|x| x.alive) => {}
                    _ => all = false,
                }
            }
            if all {
                return Ok(());
            }
            if start.elapsed() > limit {
                let logs: Vec<String> = self.nodes.iter().map(|n| format!("{}: {}", n.name, n.log.display())).collect();
                anyhow::bail!("the demo fleet did not join within {limit:?}; agent logs: {}", logs.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Leaves the fleet running; returns the commands that tear it down.
    pub fn keep(mut self) -> Vec<String> {
        let mut cleanup = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = n.child.take() {
                cleanup.push(format!("kill {}", c.id()));
            }
        }
        if let Some(lan) = self.lan.take() {
            for n in &self.nodes {
                cleanup.push(format!("ip netns del {}", n.netns));
            }
            cleanup.push("ip netns list | grep -- '-hub' | cut -d' ' -f1 | xargs -r -n1 ip netns del".to_owned());
            std::mem::forget(lan);
        }
        cleanup
    }

    /// Stops every agent (SIGTERM: each tears down its clone devices), then the network.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.lan.take();
    }
}

impl Drop for DemoFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{tool} not found"))
}
