//! `meshdrain demo`: a real fleet on this machine for a first look.
//!
//! Three `meshdrain agent` processes, each in its own network namespace on a bridge, with
//! the real data path: node 1's volume (ext4, files, a workload writing and re-reading
//! them) is exported read-only over our iSCSI target; the new node logs in, stacks the
//! userspace clone engine (a loop device over FUSE), the workload restarts there at once
//! and keeps running while the volume hydrates in the background; at the end every record
//! the workload ever wrote is read back and checked, and the filesystem is fsck'ed.

pub mod fleet;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::units::{format_bytes, format_rate, parse_bytes};
use crate::api::{NewVolume, Request};
use crate::decide::model::Hooks;
use crate::decide::node::{NodeAction, NodeState};
use crate::decide::request::DrainOptions;
use fleet::DemoFleet;
use workload::{Counts, Ledger, Mounted, Workload};

/// Examples shown at the end of `meshdrain demo --help`.
pub const EXAMPLES: &str = "\
Examples:
  sudo meshdrain demo                          # 3 agents, drain node1, verify every record
  sudo meshdrain demo --size 1G --fill 50 --rate-limit 64M --verify
  sudo meshdrain demo --keep                   # leave the fleet up: prints each node's CLI
                                               # and the commands that tear it down
  sudo meshdrain demo --json | jq .cutover_s   # progress on stderr, one object on stdout

Needs root, ip, nsenter, mkfs.ext4 and FUSE (scripts/demo installs what it needs).";

/// Run a demo fleet in network namespaces and drain a node holding a live ext4 volume.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Number of agents (each in its own network namespace).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=16))]
    pub nodes: u16,
    /// Size of the demo volume.
    #[arg(long, default_value = "512M", value_parser = parse_bytes)]
    pub size: u64,
    /// How full the filesystem starts, in percent of the volume (1 MiB files).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=80))]
    pub fill: u8,
    /// Hydration bandwidth, so there is time to watch the workload run on an unhydrated
    /// clone; 0 = unlimited.
    #[arg(long, default_value = "32M", value_parser = parse_bytes, value_name = "BYTES_PER_S")]
    pub rate_limit: u64,
    /// Gossip interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Where the nodes' state, logs and mounts go [default: a new /tmp/meshdrain-demo-*].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run without the WireGuard mesh (gossip and iSCSI straight on the namespaces' veth
    /// addresses).
    #[arg(long)]
    pub no_mesh: bool,
    /// Drain with `--verify`: the new node digests every byte it reads from node1, and
    /// node1 checks the digest against its copy before it lets go of it.
    #[arg(long)]
    pub verify: bool,
    /// Leave the fleet running at the end and print how to reach each node's CLI.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON summary object as the last line (progress goes to stderr).
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
    /// Where the cut-over went, each since the drain was issued.
    cutover_phases: CutoverPhases,
    hydration_s: f64,
    hydration_mb_per_s: f64,
    rate_limit_bytes_per_s: Option<u64>,
    drained_s: f64,
    new_owner: String,
    records_checked: usize,
    records_corrupt: usize,
    workload_records_written: u64,
    fsck_clean: bool,
    data_plane: &'static str,
    dir: PathBuf,
    /// With `--keep`: each node's name, network namespace and control socket.
    kept: Vec<KeptNode>,
    /// With `--keep`: the commands that tear the fleet down.
    cleanup: Vec<String>,
}

/// Cut-over milestones in seconds since the drain was issued: the share that is
/// meshdrain's (request to stop hook, export to start hook) and the workload's own
/// (quiesce and unmount on the source, mount and start on the target).
#[derive(Debug, Default, serde::Serialize)]
struct CutoverPhases {
    /// The source's stop hook ran (lease granted, the source quiesces its workload).
    stop_hook_s: f64,
    /// The workload was stopped and its filesystem unmounted on the source.
    source_unmounted_s: f64,
    /// The target's start hook ran: the clone device exists.
    start_hook_s: f64,
    /// The filesystem was mounted on the clone device (the workload starts next).
    mounted_s: f64,
}

/// A node left running by `--keep`, for scripts (the drain benchmark measures over it).
#[derive(Debug, serde::Serialize)]
struct KeptNode {
    name: String,
    netns: String,
    control: PathBuf,
}

const VOLUME: &str = "demo-vol";

/// Runs the demo and tears it down (unless `--keep`).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new().prefix("meshdrain-demo-").tempdir()?.keep(),
    };
    std::fs::create_dir_all(&dir)?;
    let n = usize::from(args.nodes);
    let mesh = if args.no_mesh { "no mesh" } else { "a userspace WireGuard mesh, fleet CA and all" };
    say(
        &args,
        &format!(
            "starting {n} agents, each in a network namespace on 198.18.0.0/24, {mesh} (state in {})",
            dir.display()
        ),
    );
    let fleet = DemoFleet::start(&dir, n, args.interval_ms, !args.no_mesh)?;
    fleet.wait_joined(Duration::from_secs(60)).await?;
    say(&args, "fleet joined: every node sees every other alive");

    let (stop_hook, start_hook) = workload::write_hooks(&dir)?;
    let volume = NewVolume {
        id: VOLUME.parse().expect("the demo volume id is plain"),
        size: Some(args.size),
        path: None,
        requires: Default::default(),
        hooks: Hooks { stop: Some(stop_hook), start: Some(start_hook), done: None },
    };
    // A refusal is an error of the call (the agent's message).
    fleet.call(0, &Request::VolumeAdd(volume)).await?;
    let image = crate::dataplane::paths::volume_file(&fleet.nodes[0].pool, VOLUME);
    // Inode tables and journal written now, as on a volume in service for a while (lazy
    // init would have the kernel zero them in the background during the drain).
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&image)
        .output()?;
    anyhow::ensure!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let ledger = Ledger::default();
    let seq = Arc::new(AtomicU64::new(0));
    let mnt1 = dir.join("mnt-node1");
    let files = ((args.size * u64::from(args.fill) / 100) >> 20).max(1) as usize;
    let seeding = Mounted::new(&image, &mnt1)?;
    workload::seed_records(&mnt1, &ledger, files, 1 << 20)?;
    seeding.unmount()?;
    // Mounted again, so the volume starts at rest like one in service for a while: the
    // seeding's journal is checkpointed now, not by the drain's unmount.
    let mounted1 = Mounted::new(&image, &mnt1)?;
    let mut running = Some(Workload::start(&mnt1, ledger.clone(), "node1", seq.clone()));
    let mut mounted1 = Some(mounted1);
    say(
        &args,
        &format!(
            "node1 holds {VOLUME}: ext4, {}, {files} MiB of files; a workload writes and re-reads records on it",
            format_bytes(args.size)
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let last = n - 1;
    let rate = (args.rate_limit > 0).then_some(args.rate_limit);
    let flag = if args.verify { " --verify" } else { "" };
    say(&args, &format!("node{} runs `meshdrain drain node1{flag}`", last + 1));
    let t0 = Instant::now();
    let options = DrainOptions { rate_limit: rate, parallel: None, verify: args.verify, ..Default::default() };
    let req = Request::NodeAction {
        node: "node1".parse().expect("a plain node name"),
        action: NodeAction::Drain,
        force: false,
        options,
    };
    fleet.call(last, &req).await?;

    let bar = progress_bar(&args);
    let mut counts = Counts::default();
    let (mut cutover, mut hydrated_at, mut owner, mut copied) = (None, None, String::new(), 0u64);
    let mut target: Option<(PathBuf, PathBuf, Mounted)> = None;
    let mut near_end = false;
    let mut phases = CutoverPhases::default();
    // The hook files are polled every 10 ms (they are on the cut-over path); the agents'
    // control sockets every 100 ms.
    for round in 0u64.. {
        if mounted1.is_some() && dir.join(format!("stop-{VOLUME}")).exists() {
            phases.stop_hook_s = t0.elapsed().as_secs_f64();
            let c = running.take().expect("running").stop()?;
            add(&mut counts, c);
            mounted1.take().expect("mounted").unmount()?;
            phases.source_unmounted_s = t0.elapsed().as_secs_f64();
            std::fs::write(dir.join(format!("stopped-{VOLUME}")), b"")?;
            note(
                &args,
                &bar,
                &format!("stop hook: workload on node1 quiesced after {} records; export opens", c.written),
            );
        }
        let started = std::fs::read_to_string(dir.join(format!("started-{VOLUME}"))).unwrap_or_default();
        if target.is_none()
            && let Some((node, dev)) = started.trim().split_once(' ')
        {
            phases.start_hook_s = t0.elapsed().as_secs_f64();
            let mnt = dir.join(format!("mnt-{node}"));
            let m = Mounted::new(Path::new(dev), &mnt).with_context(|| format!("mounting the clone device {dev}"))?;
            phases.mounted_s = t0.elapsed().as_secs_f64();
            running = Some(Workload::start(&mnt, ledger.clone(), node, seq.clone()));
            let at = t0.elapsed();
            cutover = Some(at);
            let v = fleet.volumes(1).await?.into_iter().find(|v| v.id == VOLUME);
            let left = match v {
                Some(v) if v.hydration.total > 0 => format!(
                    "{} still to hydrate",
                    format_bytes(
                        args.size * (v.hydration.total - v.hydration.hydrated.min(v.hydration.total))
                            / v.hydration.total
                    )
                ),
                _ => "hydration starting".to_owned(),
            };
            note(&args, &bar, &format!("workload running on {node} ({dev}) {at:.2?} after the drain; {left}"));
            owner = node.to_owned();
            target = Some((PathBuf::from(dev), mnt, m));
        }
        // Near the end every 10 ms too: the hand-off time is the hydration rate's end.
        if round % 10 != 0 && !near_end {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if let Some(v) = fleet.volumes(1).await?.into_iter().find(|v| v.id == VOLUME) {
            if let Some(pos) = (args.size * v.hydration.hydrated).checked_div(v.hydration.total) {
                bar.set_position(pos);
                near_end = v.hydration.hydrated * 10 >= v.hydration.total * 9;
            }
            if v.owner != "node1" && v.phase == "held" && hydrated_at.is_none() {
                hydrated_at = Some(t0.elapsed());
                copied = v.hydration.fetched_bytes;
                bar.finish();
                note(
                    &args,
                    &bar,
                    &format!("{VOLUME} hydrated on {}: hand-off done, node1 may delete its copy", v.owner),
                );
            }
        }
        let status = fleet.status(1).await?;
        if hydrated_at.is_some()
            && status.nodes.iter().any(|x| x.name == "node1" && x.state == Some(NodeState::Drained))
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the demo drain did not finish within 5 minutes; agent logs are under {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_s = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(w) = running.take() {
        add(&mut counts, w.stop()?);
    }
    let (dev, mnt, m) = target.context("the workload never started on the new node")?;
    let (ok, bad) = workload::verify_all(&mnt, &ledger);
    m.unmount()?;
    let fsck = std::process::Command::new("fsck.ext4").arg("-fn").arg(&dev).output()?;
    let verified = bad.is_empty() && counts.corrupt == 0 && fsck.status.success();
    say(
        &args,
        &format!(
            "node1 drained after {drained_s:.2?}; {VOLUME} lives on {owner}; {ok} records checked, {} corrupt, fsck {}",
            bad.len() + counts.corrupt as usize,
            if fsck.status.success() { "clean" } else { "FAILED" }
        ),
    );
    let cutover_s = cutover.map_or(0.0, |c| c.as_secs_f64());
    let hydration_s = (hydrated_at.unwrap_or(drained_s).as_secs_f64() - cutover_s).max(1e-3);
    let summary = Summary {
        verified,
        nodes: args.nodes,
        volume_bytes: args.size,
        bytes_copied: copied,
        cutover_s,
        cutover_phases: phases,
        hydration_s,
        hydration_mb_per_s: copied as f64 / 1e6 / hydration_s,
        rate_limit_bytes_per_s: rate,
        drained_s: drained_s.as_secs_f64(),
        new_owner: owner,
        records_checked: ok + bad.len(),
        records_corrupt: bad.len() + counts.corrupt as usize,
        workload_records_written: counts.written,
        fsck_clean: fsck.status.success(),
        data_plane: if args.no_mesh {
            "iscsi + userspace clone (FUSE + loop)"
        } else {
            "userspace WireGuard mesh + iscsi + userspace clone (FUSE + loop)"
        },
        dir: dir.clone(),
        kept: Vec::new(),
        cleanup: Vec::new(),
    };
    finish(&args, fleet, summary)?;
    Ok(if verified { ExitCode::SUCCESS } else { ExitCode::from(super::exit::FAILURE) })
}

fn finish(args: &Args, fleet: DemoFleet, mut summary: Summary) -> anyhow::Result<()> {
    if args.keep {
        summary.kept = fleet
            .nodes
            .iter()
            .map(|n| KeptNode { name: n.name.clone(), netns: n.netns.clone(), control: n.socket.clone() })
            .collect();
        // The binary's full path: the commands work as printed, meshdrain on PATH or not.
        let exe = std::env::current_exe().context("finding the meshdrain binary")?;
        let exe = fleet::sh_quote(binary_path(&exe.display().to_string()));
        let mut lines = vec!["the fleet stays up; each node's CLI:".to_owned()];
        for n in &fleet.nodes {
            lines.push(format!(
                "  {exe} --control {} status      # {} (netns {}, log {})",
                fleet::sh_quote(&n.socket.display().to_string()),
                n.name,
                n.netns,
                n.log.display()
            ));
        }
        lines.push("tear it down with:".to_owned());
        summary.cleanup = fleet.keep(args.dir.is_none().then_some(summary.dir.as_path()));
        lines.extend(summary.cleanup.iter().map(|c| format!("  {c}")));
        for l in lines {
            say(args, &l);
        }
    } else {
        drop(fleet);
        if args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&summary.dir);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            // The bar's unit family (MiB/s); the JSON keeps its decimal hydration_mb_per_s.
            "summary: cut-over {:.2}s, hydration {}{}, {} copied of {}, {}",
            summary.cutover_s,
            format_rate((summary.bytes_copied as f64 / summary.hydration_s) as u64),
            summary.rate_limit_bytes_per_s.map_or(String::new(), |r| format!(" (limited to {})", format_rate(r))),
            format_bytes(summary.bytes_copied),
            format_bytes(summary.volume_bytes),
            if summary.verified { "verified" } else { "NOT verified" }
        );
    }
    Ok(())
}

/// The binary's path to print: Linux names a binary replaced while it runs (an upgrade, a
/// rebuild) `<path> (deleted)`; the path itself holds the new binary, which is the one to run.
fn binary_path(exe: &str) -> &str {
    exe.strip_suffix(" (deleted)").unwrap_or(exe)
}

fn add(total: &mut Counts, c: Counts) {
    total.written += c.written;
    total.verified += c.verified;
    total.corrupt += c.corrupt;
}

fn progress_bar(args: &Args) -> indicatif::ProgressBar {
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
    bar
}

fn note(args: &Args, bar: &indicatif::ProgressBar, line: &str) {
    if bar.is_hidden() { say(args, line) } else { bar.println(format!("demo: {line}")) }
}

fn say(args: &Args, line: &str) {
    if args.json {
        eprintln!("demo: {line}");
    } else {
        println!("demo: {line}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_printed_binary_path_is_the_one_on_disk_even_after_an_upgrade() {
        assert_eq!(super::binary_path("/usr/bin/meshdrain (deleted)"), "/usr/bin/meshdrain");
        assert_eq!(super::binary_path("/work/main/target/debug/meshdrain"), "/work/main/target/debug/meshdrain");
    }
}
