//! `meshdrain clone run`: post-copy clone one volume from an iSCSI URL or a path onto
//! a dest, with a progress bar (or `--json` lines), resuming from the metadata if it
//! exists (refusing, exit 2, metadata it cannot trust: see meshdrain_clone::metadata;
//! `--start-over` recopies); exits 0 once every region is on the dest. Operators use it for one-off
//! moves; tests and benchmarks use it too. `--backend dm` drives the kernel's
//! dm-clone instead (block devices only).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use meshdrain_clone::dm::{DmClone, DmConfig};
use meshdrain_clone::expose::Exposed;
use meshdrain_clone::ublk::UblkExposed;
use meshdrain_clone::{
    BlockSource, CloneBackend, CloneError, Engine, EngineConfig, FileDest, FileMeta, FileSource, IscsiSource, Phase,
    Progress, START_OVER, UserspaceClone, parse_rate,
};

use super::exit::{Exit, USAGE};

/// Subcommands of `meshdrain clone`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = "\
Examples:
  meshdrain clone run --source 'iscsi://[fd00::1]:3260/iqn.2026-11.dev.meshdrain:db1/1' \\
      --dest /dev/nvme1n1p2 --metadata /var/lib/meshdrain/db1.meta --expose /run/db1 --hold
      # the workload can start on /run/db1 at once; run it again to resume")]
pub enum Command {
    /// Clone SOURCE onto DEST until every region is there (resumes from METADATA).
    #[command(after_help = "\
Examples:
  meshdrain clone run --source 'iscsi://[fd00::1]:3260/iqn.2026-11.dev.meshdrain:db1/1' \\
      --dest /dev/nvme1n1p2 --metadata /var/lib/meshdrain/db1.meta --rate-limit 200M \\
      --expose /run/db1 --hold       # the workload can start on /run/db1 (a loop device) at once
  meshdrain clone run --source db1.img --dest db1.copy --metadata db1.meta --json
      # one JSON progress line per second; exit 0 once every region is on the dest
  meshdrain clone run --source db1.img --dest db1.copy --metadata db1.meta --start-over
      # metadata refused (exit 2): recopy everything, overwriting the dest")]
    Run(RunArgs),
    /// A holder process: serves one clone for the agent that started it and outlives it
    /// (docs/holder-process.md). Started by the agent only.
    #[command(hide = true)]
    Hold(HoldArgs),
}

/// Arguments of `meshdrain clone hold`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// The spec file the agent wrote (`<run dir>/clones/<volume>.json`).
    #[arg(long)]
    pub spec: PathBuf,
}

/// Which engine copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// dm-clone when the kernel has it and every path is a block device; else userspace.
    Auto,
    /// Our userspace engine (works on any kernel; `--expose` gives a loop device).
    Userspace,
    /// The kernel's dm-clone (block devices; the device stays as linear on the dest).
    Dm,
}

/// Arguments of `meshdrain clone run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// `iscsi://host:port/<iqn>/<lun>`, or a file or block device path.
    #[arg(long)]
    pub source: String,
    /// Dest file (created sparse if missing) or block device, at least the source's size.
    #[arg(long)]
    pub dest: PathBuf,
    /// Metadata file or device: created if missing, else resumed, and refused (nothing
    /// touched) when empty, damaged or recorded for another source, epoch or dest.
    #[arg(long)]
    pub metadata: PathBuf,
    /// Discard the progress record in METADATA and recopy everything from the source;
    /// the dest is overwritten (userspace). The only way past refused metadata.
    #[arg(long)]
    pub start_over: bool,
    /// Background bandwidth limit in bytes/s, e.g. 200M (default: unlimited).
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Expose the clone as a loop device and point this symlink at it (userspace).
    #[arg(long, value_name = "SYMLINK")]
    pub expose: Option<PathBuf>,
    /// Keep serving the exposed device after hydration until SIGINT/SIGTERM.
    #[arg(long, requires = "expose")]
    pub hold: bool,
    /// Engine.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Region size (multiple of 4K), e.g. 64K.
    #[arg(long, default_value = "64K")]
    pub region_size: String,
    /// Lease epoch recorded in the metadata (metadata of another epoch is refused).
    #[arg(long, default_value_t = 1)]
    pub epoch: u64,
    /// Background hydration threads, each with a whole batch of reads in flight (userspace).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Regions per background batch, read in pieces of up to 1 MiB all at once (userspace).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Fetch a missing region whole before answering the first read within it
    /// (userspace). By default that read takes just its bytes from the source and puts
    /// the region first in line for hydration, as dm-clone does (a second read there, or
    /// a sequential one, fetches whole regions): the lower first-read latency.
    #[arg(long)]
    pub no_read_through: bool,
    /// Report `stalled` after fetches fail this many seconds (source unreachable, dest full).
    #[arg(long, default_value_t = 10)]
    pub stall_after: u64,
    /// dm device name for `--backend dm` [default: meshdrain-clone-<dest file name>].
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON progress line per second instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    /// Serve the clone as /dev/ublkbN (ublk_drv) instead of FUSE + loop and hold it until
    /// SIGINT/SIGTERM; prints `ublk: /dev/ublkbN (dev id N)` (userspace; the VM tier's
    /// vm_ublk_exposure drives it; the agent's choice is `[dataplane] expose`).
    #[arg(long, hide = true, conflicts_with = "expose")]
    pub ublk: bool,
    /// Re-attach to ublk device N whose serving process died (kill -9) and serve it again.
    #[arg(long, hide = true, value_name = "N", conflicts_with_all = ["expose", "ublk"])]
    pub ublk_recover: Option<u32>,
}

/// Runs one `meshdrain clone` subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_clone(args).await,
        Command::Hold(args) => {
            crate::dataplane::clone_process::holder::run(&args.spec).await.map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn region_bytes(s: &str) -> anyhow::Result<u64> {
    let v =
        parse_rate(s).map_err(|e| anyhow::anyhow!("--region-size {e}"))?.context("--region-size must be positive")?;
    anyhow::ensure!(v % 4096 == 0, "--region-size {s} must be a multiple of 4K");
    Ok(v)
}

fn is_block(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

fn pick_backend(args: &RunArgs) -> Backend {
    match args.backend {
        Backend::Auto => {
            let kernel = Path::new("/dev/mapper/control").exists() && Path::new("/sys/module/dm_clone").exists();
            let blocks = !args.source.starts_with("iscsi://")
                && [Path::new(&args.source), &args.dest, &args.metadata].iter().all(|p| is_block(p));
            if kernel && blocks && args.expose.is_none() { Backend::Dm } else { Backend::Userspace }
        }
        b => b,
    }
}

async fn run_clone(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rate = match &args.rate_limit {
        Some(r) => parse_rate(r).map_err(|e| anyhow::anyhow!("--rate-limit {e}"))?,
        None => None,
    };
    let region_size = region_bytes(&args.region_size)?;
    let stall_after = Duration::from_secs(args.stall_after);
    match pick_backend(&args) {
        Backend::Dm => {
            anyhow::ensure!(args.expose.is_none(), "--expose is for the userspace backend; dm-clone is its own device");
            if args.start_over {
                return Err(anyhow::Error::new(Exit(USAGE)).context(
                    "--start-over discards the userspace engine's metadata; dm-clone keeps its own (zero the metadata device to start over, or pass --backend userspace)",
                ));
            }
            let name = args.name.clone().unwrap_or_else(|| {
                format!(
                    "meshdrain-clone-{}",
                    args.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                )
            });
            let cfg = DmConfig {
                name,
                source: PathBuf::from(&args.source),
                dest: args.dest.clone(),
                metadata: args.metadata.clone(),
                region_size,
                rate_limit: rate,
                stall_after,
                poll: Duration::from_millis(500),
            };
            let clone = tokio::task::spawn_blocking(move || DmClone::start(cfg)).await??;
            if let Some(dev) = clone.device() {
                eprintln!("dm-clone device: {}", dev.display());
            }
            let code = watch(&clone, args.json, false).await;
            clone.stop();
            Ok(code)
        }
        _ => run_userspace(args, rate, region_size, stall_after).await,
    }
}

async fn run_userspace(
    args: RunArgs,
    rate: Option<u64>,
    region_size: u64,
    stall_after: Duration,
) -> anyhow::Result<ExitCode> {
    let cfg = EngineConfig {
        region_size,
        epoch: args.epoch,
        rate_limit: rate,
        parallelism: args.parallel,
        batch_regions: args.batch,
        read_through: !args.no_read_through,
        core: meshdrain_clone::core::CoreConfig { stall_after, ..Default::default() },
        ..Default::default()
    };
    let (source_arg, dest, metadata, expose, start_over) =
        (args.source.clone(), args.dest.clone(), args.metadata.clone(), args.expose.clone(), args.start_over);
    let (ublk, ublk_recover) = (args.ublk, args.ublk_recover);
    type Started = (UserspaceClone, Option<Exposed>, Option<UblkExposed>);
    let (clone, exposed, ublk_exposed) = tokio::task::spawn_blocking(move || -> anyhow::Result<Started> {
        let source: std::sync::Arc<dyn BlockSource> = if source_arg.starts_with("iscsi://") {
            std::sync::Arc::new(
                IscsiSource::connect(&source_arg, Duration::from_secs(10))
                    .with_context(|| format!("connect {source_arg}"))?,
            )
        } else {
            std::sync::Arc::new(
                FileSource::open(Path::new(&source_arg)).with_context(|| format!("open source {source_arg}"))?,
            )
        };
        let engine = open_engine(source, &dest, &metadata, start_over, cfg)?;
        let exposed = match &expose {
            Some(link) => {
                let mnt = link.with_extension("fuse");
                Some(Exposed::start(engine.clone(), &mnt, Some(link))?)
            }
            None => None,
        };
        let ublk_exposed = match ublk_recover {
            Some(id) => Some(UblkExposed::recover(engine.clone(), id)?),
            None if ublk => Some(UblkExposed::start(engine.clone(), None)?),
            None => None,
        };
        Ok((UserspaceClone::start(engine), exposed, ublk_exposed))
    })
    .await??;
    if let Some(u) = &ublk_exposed {
        eprintln!("ublk: {} (dev id {})", u.device().display(), u.dev_id());
    }
    if let Some(x) = &exposed {
        eprintln!(
            "exposed: {} -> {} (direct I/O {})",
            args.expose.as_deref().unwrap_or(Path::new("")).display(),
            x.device().display(),
            x.direct_io()
        );
    }
    let code = watch(&clone, args.json, args.hold || ublk_exposed.is_some()).await;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if let Some(x) = exposed {
            x.stop()?;
        }
        if let Some(u) = ublk_exposed {
            u.stop()?;
        }
        clone.stop()?;
        Ok(())
    })
    .await??;
    Ok(code)
}

/// A new clone where there is no metadata yet or `--start-over` asks for one, else the
/// resume of the recorded one: onto the dest as it is (never created or extended), so a
/// refusal leaves it untouched. A refusal exits [`USAGE`]: the operator decides.
fn open_engine(
    source: std::sync::Arc<dyn BlockSource>,
    dest: &Path,
    metadata: &Path,
    start_over: bool,
    cfg: EngineConfig,
) -> anyhow::Result<std::sync::Arc<Engine>> {
    let refused = |e: CloneError| match e {
        CloneError::BadMetadata { .. }
        | CloneError::DestMismatch { .. }
        | CloneError::ForeignMetadata { .. }
        | CloneError::GeometryMismatch { .. } => anyhow::Error::new(Exit(USAGE)).context(e),
        e => anyhow::Error::new(e),
    };
    if start_over || !metadata.exists() {
        if start_over {
            eprintln!(
                "--start-over: discarding {} and recopying every region onto {}",
                metadata.display(),
                dest.display()
            );
        }
        let d = FileDest::open(dest, source.size()).with_context(|| format!("open dest {}", dest.display()))?;
        let m = FileMeta::create(metadata).with_context(|| format!("create metadata {}", metadata.display()))?;
        return Engine::create(source, Box::new(d), Box::new(m), cfg).map_err(refused);
    }
    let d = match FileDest::open_existing(dest) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(anyhow::Error::new(Exit(USAGE)).context(format!(
                "metadata {} records progress on dest {}, which does not exist: {START_OVER}",
                metadata.display(),
                dest.display()
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("open dest {}", dest.display())),
    };
    let m = FileMeta::open(metadata).with_context(|| format!("open metadata {}", metadata.display()))?;
    Engine::open(source, Box::new(d), Box::new(m), cfg).map_err(refused)
}

fn json_line(p: &Progress) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

/// Watches progress until complete (or SIGINT/SIGTERM: exit 1, resumable).
async fn watch(clone: &dyn CloneBackend, json: bool, hold: bool) -> ExitCode {
    let mut rx = clone.subscribe();
    let p0 = rx.borrow().clone();
    let bar = (!json).then(|| {
        let bar = indicatif::ProgressBar::new(p0.total * p0.region_size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_json = std::time::Instant::now() - Duration::from_secs(2);
    let mut done = false;
    loop {
        let p = rx.borrow_and_update().clone();
        if let Some(bar) = &bar {
            bar.set_position((p.hydrated * p.region_size).min(p.total * p.region_size));
            let msg = match &p.phase {
                Phase::Stalled => format!("STALLED: {}", p.last_error.as_deref().unwrap_or("source unreadable")),
                Phase::Paused => "paused".into(),
                Phase::Complete => "complete".into(),
                Phase::Hydrating => String::new(),
            };
            bar.set_message(msg);
        } else if last_json.elapsed() >= Duration::from_secs(1) || p.phase == Phase::Complete {
            println!("{}", json_line(&p));
            last_json = std::time::Instant::now();
        }
        if p.phase == Phase::Complete && !done {
            done = true;
            if let Some(bar) = &bar {
                bar.finish_with_message("complete: every region is on the dest");
            }
            if !hold {
                return ExitCode::SUCCESS;
            }
            eprintln!("hydrated; holding the exposed device until SIGINT/SIGTERM");
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
        }
    }
    if let Some(bar) = &bar {
        bar.abandon_with_message("interrupted");
    }
    if done {
        ExitCode::SUCCESS
    } else {
        eprintln!("interrupted: rerun the same command to resume from the metadata");
        ExitCode::from(1)
    }
}
