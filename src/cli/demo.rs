//! `meshdrain demo`: a local fleet on an embedded default, for a first look.
//!
//! This version starts three agents in this process, gossiping over UDP on 127.0.0.1,
//! with the local development data plane (exports are ACL files, clones copy regions
//! with a durable bitmap). Node 1 gets a volume holding an ext4 filesystem with files;
//! node 3 drains node 1; the demo follows the move and checks every byte. The network
//! SAN (WireGuard mesh, iSCSI export, FUSE + loop clone device with the workload running
//! during hydration) replaces the local data plane when those engines land.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chitchat::transport::UdpTransport;
use sha2::{Digest, Sha256};

use super::units::format_bytes;
use crate::agent::AgentSetup;
use crate::agent::core::CoreConfig;
use crate::agent::dataplane::local::{LocalClones, LocalExports};
use crate::agent::dataplane::real::{RealDataPlane, SharedVolumes};
use crate::agent::meshport::NoMesh;
use crate::agent::run::{RunningAgent, spawn};
use crate::cluster::gossip::GossipSettings;
use crate::control::protocol::NewVolume;
use crate::drain::node::{NodeAction, NodeState};
use crate::drain::request::DrainOptions;
use crate::lease::Timing;

/// Run a local demo fleet and drain a node holding an ext4 volume.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=16))]
    pub nodes: u16,
    /// Size of the demo volume.
    #[arg(long, default_value = "64M", value_parser = super::units::parse_bytes)]
    pub size: u64,
    /// How full the filesystem is, in percent of the volume (files of random bytes).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=80))]
    pub fill: u8,
    /// Gossip interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Print one JSON summary object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Summary printed with `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    verified: bool,
    nodes: u16,
    volume_bytes: u64,
    bytes_copied: u64,
    cutover_s: f64,
    hydration_s: f64,
    hydration_mb_per_s: f64,
    drained_s: f64,
    new_owner: String,
    data_plane: &'static str,
}

/// Runs the demo and tears it down.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let exports = dir.path().join("exports");
    let interval = Duration::from_millis(args.interval_ms);
    let addrs: Vec<SocketAddr> = (0..args.nodes)
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()))
        .collect::<Result<_, _>>()?;
    say(&args, &format!("starting {} agents on 127.0.0.1 (gossip every {interval:?}, local data plane)", args.nodes));
    let mut agents: Vec<RunningAgent> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let settings = GossipSettings {
            name: name.clone(),
            generation: 1,
            cluster_id: "demo".into(),
            listen: *addr,
            advertise: *addr,
            seeds: vec![addrs[if i == 0 { 1 } else { 0 }].to_string()],
            interval,
            phi_threshold: 8.0,
            dead_node_grace: Duration::from_secs(3600),
        };
        let pool = dir.path().join(&name).join("pool");
        let shared: SharedVolumes = Default::default();
        let dataplane = RealDataPlane::new(
            &name,
            &pool,
            shared.clone(),
            Arc::new(LocalExports::new(&exports)),
            Arc::new(LocalClones::new(&exports)),
            Duration::from_millis(100),
        );
        let config = CoreConfig {
            name: name.clone(),
            gossip_addr: *addr,
            labels: Default::default(),
            mesh_addr: None,
            mesh_backend: Some("none".into()),
            free_bytes: 64 << 30,
            export_addr: "local".into(),
            timing: Timing::for_interval(args.interval_ms),
            wireguard: None,
        };
        let setup = AgentSetup {
            config,
            interval,
            pool_dir: pool,
            dataplane: Box::new(dataplane),
            shared_volumes: shared,
            mesh: Box::new(NoMesh),
        };
        agents.push(spawn(&settings, setup, &dir.path().join(&name), &UdpTransport).await?);
    }
    let n = agents.len();
    wait_all(&agents, Duration::from_secs(30), |r| r.nodes.len() == n && r.nodes.iter().all(|x| x.alive)).await?;

    // node1's volume: an ext4 filesystem with files, made without mounting (mkfs.ext4 -d).
    let content = dir.path().join("content");
    let files = write_demo_files(&content, args.size * u64::from(args.fill) / 100)?;
    agents[0]
        .handle
        .add_volume(NewVolume {
            id: "demo-vol".into(),
            size: Some(args.size),
            path: None,
            requires: Default::default(),
            hooks: Default::default(),
        })
        .await
        .map_err(anyhow::Error::msg)?;
    let image = dir.path().join("node1/pool/demo-vol.img");
    mkfs_with(&image, &content)?;
    let before = sha256_file(&image)?;
    say(
        &args,
        &format!(
            "node1 holds demo-vol: ext4, {} ({}% full, {files} files), sha256 {}",
            format_bytes(args.size),
            args.fill,
            &before[..16]
        ),
    );

    let last = n - 1;
    say(&args, &format!("node{} runs `meshdrain drain node1`", last + 1));
    let t0 = Instant::now();
    agents[last]
        .handle
        .node_action_with("node1", NodeAction::Drain, false, DrainOptions::default())
        .await
        .map_err(anyhow::Error::msg)?;
    let (mut cutover, mut hydrated_at, mut owner) = (None, None, String::new());
    let mut copied = 0;
    let bar = indicatif::ProgressBar::new(args.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "demo: hydrating demo-vol [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let volumes = agents[1].handle.volumes().await.context("agent stopped")?;
        if let Some(v) = volumes.iter().find(|v| v.id == "demo-vol") {
            if cutover.is_none() && v.holder_phase.as_deref() == Some("running") {
                cutover = Some(t0.elapsed());
                let line = format!(
                    "cut over to {} after {:.2?}: the workload may start there now",
                    v.holder.as_deref().unwrap_or("?"),
                    t0.elapsed()
                );
                if bar.is_hidden() { say(&args, &line) } else { bar.println(format!("demo: {line}")) }
            }
            if let Some(pos) = (args.size * v.hydrated).checked_div(v.total) {
                bar.set_position(pos);
            }
            if v.owner != "node1" && v.phase == "held" {
                hydrated_at.get_or_insert(t0.elapsed());
                owner = v.owner.clone();
                copied = v.fetched_bytes;
                bar.finish();
            }
        }
        let status = agents[1].handle.status().await.context("agent stopped")?;
        let drained = status.nodes.iter().any(|x| x.name == "node1" && x.state == Some(NodeState::Drained));
        if drained && !owner.is_empty() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the demo drain did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_s = t0.elapsed();
    let after = sha256_file(&dir.path().join(&owner).join("pool/demo-vol.img"))?;
    let verified = after == before;
    let cutover_s = cutover.map_or(0.0, |c| c.as_secs_f64());
    let hydration_s = hydrated_at.unwrap_or(drained_s).as_secs_f64() - cutover_s;
    say(
        &args,
        &format!(
            "node1 drained after {drained_s:.2?}; demo-vol lives on {owner}; sha256 {} ({})",
            &after[..16],
            if verified { "verified: every byte equal" } else { "MISMATCH" }
        ),
    );
    for a in agents {
        a.stop().await;
    }
    let summary = Summary {
        verified,
        nodes: args.nodes,
        volume_bytes: args.size,
        bytes_copied: copied.min(args.size),
        cutover_s,
        hydration_s,
        hydration_mb_per_s: args.size as f64 / 1e6 / hydration_s.max(1e-3),
        drained_s: drained_s.as_secs_f64(),
        new_owner: owner,
        data_plane: "local",
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "summary: cut-over {:.2}s, hydration {:.1} MB/s, {} copied of {}, {}",
            summary.cutover_s,
            summary.hydration_mb_per_s,
            format_bytes(summary.bytes_copied),
            format_bytes(summary.volume_bytes),
            if verified { "verified" } else { "NOT verified" }
        );
    }
    Ok(if verified { ExitCode::SUCCESS } else { ExitCode::from(super::exit::FAILURE) })
}

/// Writes 32 files of pseudo-random bytes totalling about `bytes`.
fn write_demo_files(dir: &Path, bytes: u64) -> anyhow::Result<usize> {
    use std::io::Write;
    std::fs::create_dir_all(dir.join("data"))?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let per_file = (bytes / 32).max(4096);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..32 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("data").join(format!("file-{i:02}.bin")))?);
        let mut left = per_file + i * 997;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            for chunk in buf[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = x.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
    }
    Ok(32)
}

fn mkfs_with(image: &Path, content: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(content)
        .arg(image)
        .output()
        .context("running mkfs.ext4 (install e2fsprogs: scripts/install-deps test)")?;
    anyhow::ensure!(out.status.success(), "mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

async fn wait_all(
    agents: &[RunningAgent],
    limit: Duration,
    cond: impl Fn(&crate::control::protocol::StatusReport) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for a in agents {
            match a.handle.status().await {
                Some(r) if cond(&r) => {}
                _ => all = false,
            }
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() <= limit, "the demo fleet did not converge within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn say(args: &Args, line: &str) {
    if args.json {
        eprintln!("demo: {line}");
    } else {
        println!("demo: {line}");
    }
}
