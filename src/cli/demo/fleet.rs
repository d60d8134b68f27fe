//! The demo's fleet: one network namespace per node on a shared bridge (underlay
//! 198.18.0.0/24), each running a real `meshdrain agent` process (this binary) with the
//! iSCSI data plane. Agents enter only the network namespace (nsenter --net), so their
//! clone devices and mounts are visible to the demo and to the operator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshdrain_netns::Lan;

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

/// Writes a fresh 32-byte fleet secret (0600) for a demo fleet without a mesh.
fn fleet_secret(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("fleet.secret");
    let secret: [u8; 32] = rand::random();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&secret))
        .with_context(|| format!("writing the demo's fleet secret {}", path.display()))?;
    Ok(path)
}

impl DemoFleet {
    /// Builds the namespaces and starts `n` agents under `dir`; with `mesh`, a fleet CA
    /// enrols every node and all agent traffic rides the userspace WireGuard mesh.
    pub fn start(dir: &Path, n: usize, interval_ms: u64, mesh: bool) -> anyhow::Result<Self> {
        for tool in ["ip", "nsenter", "mkfs.ext4", "fsck.ext4"] {
            crate::host::find_program(tool).with_context(|| {
                format!("the demo needs `{tool}`: run scripts/demo (it installs what the demo needs) or apt-get install iproute2 util-linux e2fsprogs")
            })?;
        }
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "the demo builds network namespaces, loop devices and FUSE mounts: run it as root"
        );
        let lan = Lan::new(n).context("building the demo network (network namespaces on a bridge)")?;
        let exe = std::env::current_exe().context("finding the meshdrain binary")?;
        let mesh_sections: Vec<Option<String>> =
            if mesh { enrol(dir, n)?.into_iter().map(Some).collect() } else { vec![None; n] };
        // Without a mesh the agents gossip on the demo LAN, which an agent accepts only with a
        // fleet secret (docs/threat-model.md): one for the whole demo fleet.
        let secret_line = if mesh { String::new() } else { format!("secret_file = \"{}\"\n", fleet_secret(dir)?.display()) };
        let mut nodes = Vec::with_capacity(n);
        for (i, mesh_section) in mesh_sections.into_iter().enumerate() {
            let name = format!("node{}", i + 1);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home)?;
            let ip = Lan::underlay(i);
            let seed = Lan::underlay(if i == 0 { 1 } else { 0 });
            // With a mesh, gossip seeds come from the mesh seeds (their mesh addresses).
            let gossip_seeds = if mesh_section.is_some() { String::new() } else { format!("\"{seed}:7946\"") };
            let mesh_section = mesh_section.unwrap_or_else(|| "[mesh]\nbackend = \"none\"\n".to_owned());
            let socket = home.join("control.sock");
            let config = home.join("agent.toml");
            // Benchmarks tune the data path with extra `[dataplane]` keys (e.g. clone_in_flight).
            let extra = std::env::var("MESHDRAIN_DEMO_DATAPLANE").unwrap_or_default();
            // And read the agents' logs finer (e.g. `info,meshdrain_clone=trace`).
            let log_filter = std::env::var("MESHDRAIN_DEMO_LOG").unwrap_or_else(|_| "info".to_owned());
            std::fs::write(
                &config,
                format!(
                    "name = \"{name}\"\nstate_dir = \"{state}\"\ncluster_id = \"demo\"\n\n\
                     [gossip]\nlisten = \"{ip}:7946\"\nseeds = [{gossip_seeds}]\ninterval_ms = {interval_ms}\n{secret_line}\n\
                     [control]\nsocket = \"{sock}\"\n\n{mesh_section}\n\
                     [pool]\ncapacity_bytes = 68719476736\n\n\
                     [dataplane]\nbackend = \"iscsi\"\nclone = \"userspace\"\nprogress_ms = 200\n{extra}\n",
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
                .env("MESHDRAIN_LOG", &log_filter)
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
        Ok(self.client(i).await?.call(req).await?)
    }

    /// A control connection to node `i`.
    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let node = &self.nodes[i];
        Client::connect(&node.socket).await.with_context(|| format!("reaching {}", node.name))
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
        Ok(self.client(i).await?.volumes().await?)
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
        let pids: Vec<String> =
            self.nodes.iter_mut().filter_map(|n| n.child.take()).map(|c| c.id().to_string()).collect();
        if !pids.is_empty() {
            let pids = pids.join(" ");
            // SIGTERM, then wait (bounded) while each agent tears its clone devices down.
            cleanup.push(format!("kill {pids}"));
            cleanup.push(format!(
                "timeout 15 sh -c 'for p in {pids}; do while kill -0 $p 2>/dev/null; do sleep 0.1; done; done'"
            ));
        }
        if let Some(lan) = self.lan.take() {
            for n in &self.nodes {
                cleanup.push(format!("ip netns del {}", n.netns));
            }
            // The bridge's namespace: named by this process like the nodes' (meshdrain-netns's Lan).
            cleanup.push(format!(
                "ip netns list | grep -o '^md{}-[0-9]*-hub' | xargs -r -n1 ip netns del",
                std::process::id()
            ));
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

/// WireGuard port of every demo node (each has its own namespace).
const WG_PORT: u16 = 51820;

/// Creates a fleet CA under `dir/ca`, a key (in `dir/node<i>/state`) and certificate per
/// node, and returns each node's `[mesh]` section: userspace backend, node `i` on the
/// demo LAN's underlay address, node 1 seeding every other node and node 2 seeding node 1.
/// The netns tests enrol their fleets with it too.
pub fn enrol(dir: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    use meshdrain_mesh::SigningRequest;
    use meshdrain_mesh::files::{create_ca, save_json};
    use meshdrain_mesh::keys::NodeKey;
    anyhow::ensure!(
        Path::new("/dev/net/tun").exists(),
        "the demo mesh needs /dev/net/tun (userspace WireGuard); or run with --no-mesh"
    );
    let (ca, _, ca_pub) = create_ca(&dir.join("ca")).context("creating the demo fleet CA")?;
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("node{}", i + 1);
        let home = dir.join(&name);
        let key = NodeKey::load_or_create(&home.join("state")).context("creating a node key")?;
        let req = SigningRequest { name: name.clone(), public_key: key.public().to_base64() };
        let cert = ca.sign(&req, std::time::SystemTime::now() + Duration::from_secs(30 * 86400))?;
        save_json(&home.join("node.cert.json"), &cert)?;
        keys.push(req.public_key);
    }
    let tag = std::process::id() % 100_000;
    Ok((0..n)
        .map(|i| {
            let seed = if i == 0 { 1 } else { 0 };
            format!(
                "[mesh]\nbackend = \"userspace\"\ninterface = \"mdd{tag}n{i}\"\nlisten_port = {WG_PORT}\n\
                 endpoint = \"{ip}:{WG_PORT}\"\ncertificate = \"{cert}\"\nfleet_ca = \"{ca}\"\n\
                 seeds = [{{ public_key = \"{key}\", endpoint = \"{seed_ip}:{WG_PORT}\" }}]\n",
                ip = Lan::underlay(i),
                cert = dir.join(format!("node{}", i + 1)).join("node.cert.json").display(),
                ca = ca_pub.display(),
                key = keys[seed],
                seed_ip = Lan::underlay(seed),
            )
        })
        .collect())
}
