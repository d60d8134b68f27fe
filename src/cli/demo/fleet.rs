//! The demo's fleet: one network namespace per node on a shared bridge (underlay
//! 198.18.0.0/24), each running a real `meshdrain agent` process (this binary) with the
//! iSCSI data plane. Agents enter only the network namespace (nsenter --net), so their
//! clone devices and mounts are visible to the demo and to the operator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshdrain_netns::Lan;

use crate::api::{Answer, Outcome, Request, StatusReport, VolumeStatus};
use crate::config::{
    AgentConfig, CloneEngineChoice, DataplaneBackend, DataplaneConfig, MeshBackendChoice, MeshConfig, MeshSeed,
};
use crate::control::client::Client;

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
    /// Its agent's run dir: holder processes (docs/holder-process.md) keep their files
    /// under `clones/` and outlive the agent, so the teardown stops them itself.
    pub run_dir: PathBuf,
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

/// `dataplane` with the keys of `extra` (TOML, e.g. `clone_in_flight = 16777216`) set on
/// top; an unknown key or a bad value is refused naming it.
fn with_keys(dataplane: DataplaneConfig, extra: &str) -> anyhow::Result<DataplaneConfig> {
    if extra.trim().is_empty() {
        return Ok(dataplane);
    }
    let mut table = toml::Table::try_from(&dataplane).context("the demo's [dataplane] section")?;
    let keys: toml::Table = toml::from_str(extra).context("MESHDRAIN_DEMO_DATAPLANE is not TOML keys")?;
    table.extend(keys);
    table.try_into().context("MESHDRAIN_DEMO_DATAPLANE holds a key or value [dataplane] does not take")
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
        let meshes: Vec<Option<MeshConfig>> =
            if mesh { enrol(dir, n)?.into_iter().map(Some).collect() } else { vec![None; n] };
        // Without a mesh the agents gossip on the demo LAN, which an agent accepts only with a
        // fleet secret (docs/threat-model.md): one for the whole demo fleet.
        let secret = if mesh { None } else { Some(fleet_secret(dir)?) };
        // Benchmarks tune the data path with extra `[dataplane]` keys (e.g. clone_in_flight).
        let extra = std::env::var("MESHDRAIN_DEMO_DATAPLANE").unwrap_or_default();
        // And read the agents' logs finer (e.g. `info,meshdrain_clone=trace`).
        let log_filter = std::env::var("MESHDRAIN_DEMO_LOG").unwrap_or_else(|_| "info".to_owned());
        let mut nodes = Vec::with_capacity(n);
        for (i, mesh_section) in meshes.into_iter().enumerate() {
            let name = format!("node{}", i + 1);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home)?;
            let ip = Lan::underlay(i);
            let seed = Lan::underlay(if i == 0 { 1 } else { 0 });
            let socket = home.join("control.sock");
            let config = home.join("agent.toml");
            let mut cfg = AgentConfig::new(name.parse()?, home.join("state"), format!("{ip}:7946"));
            cfg.cluster_id = "demo".to_owned();
            // With a mesh, gossip seeds come from the mesh seeds (their mesh addresses).
            if mesh_section.is_none() {
                cfg.gossip.seeds = vec![format!("{seed}:7946")];
            }
            cfg.gossip.interval_ms = interval_ms;
            cfg.gossip.secret_file = secret.clone();
            cfg.control.socket = socket.clone();
            cfg.mesh = mesh_section.unwrap_or_default();
            cfg.pool.capacity_bytes = Some(64 << 30);
            let dataplane = DataplaneConfig {
                backend: DataplaneBackend::Iscsi,
                clone: CloneEngineChoice::Userspace,
                progress_ms: 200,
                ..DataplaneConfig::default()
            };
            cfg.dataplane = with_keys(dataplane, &extra)?;
            std::fs::write(&config, cfg.to_toml().context("writing the demo agent's config")?)
                .with_context(|| format!("writing {}", config.display()))?;
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
                run_dir: cfg.run_dir(),
                child: Some(child),
            });
        }
        Ok(Self { nodes, lan: Some(lan) })
    }

    /// Sends one request to node `i`'s agent.
    pub async fn call(&self, i: usize, req: &Request) -> anyhow::Result<Outcome> {
        Ok(self.client(i).await?.call(req).await?)
    }

    /// Sends one request to node `i`'s agent and returns the payload of its answer.
    async fn get<T: Answer>(&self, i: usize, req: &Request) -> anyhow::Result<T> {
        Ok(self.client(i).await?.get(req).await?)
    }

    /// A control connection to node `i`.
    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let node = &self.nodes[i];
        Client::connect(&node.socket).await.with_context(|| format!("reaching {}", node.name))
    }

    /// Node `i`'s status.
    pub async fn status(&self, i: usize) -> anyhow::Result<StatusReport> {
        self.get(i, &Request::Status).await
    }

    /// The fleet's volumes as node `i` sees them.
    pub async fn volumes(&self, i: usize) -> anyhow::Result<Vec<VolumeStatus>> {
        self.get(i, &Request::Volumes).await
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

    /// Leaves the fleet running; returns the commands that tear it down, as an operator
    /// types them: stop the agents, delete the namespaces, then remove `state_dir` (when the
    /// demo made it; `--dir` is the operator's).
    pub fn keep(mut self, state_dir: Option<&Path>) -> Vec<String> {
        let pids: Vec<u32> = self.nodes.iter_mut().filter_map(|n| n.child.take()).map(|c| c.id()).collect();
        let netns: Vec<String> = match self.lan.take() {
            Some(lan) => {
                std::mem::forget(lan);
                self.nodes.iter().map(|n| n.netns.clone()).collect()
            }
            None => Vec::new(),
        };
        let run_dirs: Vec<PathBuf> = self.nodes.iter().map(|n| n.run_dir.clone()).collect();
        teardown_commands(&pids, &run_dirs, &netns, std::process::id(), state_dir)
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
        // An agent that stops leaves its holders serving: stop them (each commits and
        // tears its device down) before the namespaces and the state dir go.
        for n in &self.nodes {
            crate::dataplane::clone_process::stop_all(&n.run_dir);
        }
        self.lan.take();
    }
}

impl Drop for DemoFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shell commands that tear down a kept demo fleet: SIGTERM the agents and wait
/// (bounded); SIGTERM the holder processes they leave serving (their pids are in
/// `<run_dir>/clones/*.state`, docs/holder-process.md) and wait (bounded) until no mount
/// is left under a run dir; delete the nodes' namespaces and the bridge's (named by the demo
/// process `demo_pid`, meshdrain-netns's `Lan`); then remove `state_dir` without crossing
/// into a mount left behind.
pub fn teardown_commands(
    pids: &[u32],
    run_dirs: &[PathBuf],
    netns: &[String],
    demo_pid: u32,
    state_dir: Option<&Path>,
) -> Vec<String> {
    let mut cleanup = Vec::new();
    if !pids.is_empty() {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let pids = pids.join(" ");
        cleanup.push(format!("kill {pids}"));
        cleanup.push(format!(
            "timeout 15 sh -c 'for p in {pids}; do while kill -0 $p 2>/dev/null; do sleep 0.1; done; done'"
        ));
    }
    if !run_dirs.is_empty() {
        let states: Vec<String> =
            run_dirs.iter().map(|d| format!("{}/*.state", sh_quote(&d.join("clones").display().to_string()))).collect();
        // Only a pid that is still a holder (a state file may outlive its process).
        cleanup.push(format!(
            "for p in $(cat {} 2>/dev/null | grep -o '\"pid\": *[0-9]*' | grep -o '[0-9]*$'); \
             do if ps -o args= -p $p | grep -q ' clone hold '; then kill $p; fi; done",
            states.join(" ")
        ));
        // A holder is gone once its FUSE mount under the run dir is; a bounded wait at the
        // top level, so that a path needs one level of quoting only.
        let mounts: Vec<String> =
            run_dirs.iter().map(|d| format!("-e {}", sh_quote(&format!(" {}/", d.display())))).collect();
        cleanup.push(format!(
            "for i in $(seq 150); do grep -qF {} /proc/mounts || break; sleep 0.1; done",
            mounts.join(" ")
        ));
    }
    if !netns.is_empty() {
        cleanup.extend(netns.iter().map(|n| format!("ip netns del {n}")));
        cleanup.push(format!("ip netns list | grep -o '^md{demo_pid}-[0-9]*-hub' | xargs -r -n1 ip netns del"));
    }
    if let Some(dir) = state_dir {
        cleanup.push(format!("rm -rf --one-file-system {}", sh_quote(&dir.display().to_string())));
    }
    cleanup
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
pub fn sh_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// WireGuard port of every demo node (each has its own namespace).
const WG_PORT: u16 = 51820;

/// Creates a fleet CA under `dir/ca`, a key (in `dir/node<i>/state`) and certificate per
/// node, and returns each node's `[mesh]` section: userspace backend, node `i` on the
/// demo LAN's underlay address, node 1 seeding every other node and node 2 seeding node 1.
/// The netns tests enrol their fleets with it too.
pub fn enrol(dir: &Path, n: usize) -> anyhow::Result<Vec<MeshConfig>> {
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
            MeshConfig {
                backend: MeshBackendChoice::Userspace,
                interface: Some(format!("mdd{tag}n{i}")),
                listen_port: Some(WG_PORT),
                endpoint: Some(format!("{}:{WG_PORT}", Lan::underlay(i))),
                certificate: Some(dir.join(format!("node{}", i + 1)).join("node.cert.json")),
                fleet_ca: Some(ca_pub.clone()),
                seeds: vec![MeshSeed {
                    public_key: keys[seed].clone(),
                    endpoint: format!("{}:{WG_PORT}", Lan::underlay(seed)),
                }],
                revocations: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teardown_of_a_kept_fleet_stops_agents_deletes_namespaces_and_the_state_dir() {
        let netns = vec!["md42-1-n0".to_owned(), "md42-2-n1".to_owned()];
        let runs = [PathBuf::from("/tmp/d/node1/state/run"), PathBuf::from("/tmp/d/node2/state/run")];
        assert_eq!(
            teardown_commands(&[101, 102], &runs, &netns, 42, Some(Path::new("/tmp/d"))),
            [
                "kill 101 102",
                "timeout 15 sh -c 'for p in 101 102; do while kill -0 $p 2>/dev/null; do sleep 0.1; done; done'",
                "for p in $(cat /tmp/d/node1/state/run/clones/*.state /tmp/d/node2/state/run/clones/*.state \
                 2>/dev/null | grep -o '\"pid\": *[0-9]*' | grep -o '[0-9]*$'); \
                 do if ps -o args= -p $p | grep -q ' clone hold '; then kill $p; fi; done",
                "for i in $(seq 150); do grep -qF -e ' /tmp/d/node1/state/run/' -e ' /tmp/d/node2/state/run/' \
                 /proc/mounts || break; sleep 0.1; done",
                "ip netns del md42-1-n0",
                "ip netns del md42-2-n1",
                "ip netns list | grep -o '^md42-[0-9]*-hub' | xargs -r -n1 ip netns del",
                "rm -rf --one-file-system /tmp/d",
            ]
        );
        // An operator's --dir stays; a path with a space or quote is one shell word.
        assert_eq!(teardown_commands(&[7], &[], &[], 1, None).len(), 2);
        assert_eq!(sh_quote("/tmp/my demo/it's"), r"'/tmp/my demo/it'\''s'");
    }
}
