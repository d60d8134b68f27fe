//! Workload hooks: the operator's commands that stop a workload on the source and start
//! it on the clone. Run with `sh -c`, a bounded time, and the volume, device and node in
//! the environment; a failure comes back as text naming the hook, its exit and the tail of
//! its stderr, so `volume list` says what to fix.
//!
//! A hook is done when its process exits, not when its output closes: `mount ... && myserver &`
//! leaves a daemon holding the hook's stdout and stderr, and the move must not wait for it.
//! Each stream's last 64 KiB are kept and logged; what the daemon writes later is logged
//! too, line by line (docs/hooks.md). The timeout applies to the hook's own process.
//!
//! A hook `unit:<name>` names a systemd unit instead: `systemctl stop` on the source,
//! `systemctl start` on the target, `systemctl try-reload-or-restart` after hand-off. The
//! unit finds the volume's device at `<state_dir>/run/dev/<volume>` (a link the clone
//! keeps current).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tracing::info;

mod output;
#[cfg(test)]
mod tests;

pub use output::{Captured, TAIL_BYTES};
use output::{Forward, Stream};

/// Which hook (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Quiesce on the source.
    Stop,
    /// Start on the target (or on the source after a cancelled move).
    Start,
    /// After hand-off.
    Done,
}

impl HookKind {
    fn name(self) -> &'static str {
        match self {
            HookKind::Stop => "stop",
            HookKind::Start => "start",
            HookKind::Done => "done",
        }
    }
}

/// The shell command a hook runs: `unit:<name>` becomes the matching `systemctl` call;
/// a unit name with characters systemd does not allow is refused (no shell injection).
pub fn hook_command(kind: HookKind, hook: &str) -> Result<String, String> {
    let Some(unit) = hook.strip_prefix("unit:") else { return Ok(hook.to_owned()) };
    let ok = !unit.is_empty()
        && unit.len() <= 255
        && unit.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
    if !ok {
        return Err(format!(
            "{} hook `{hook}`: {unit:?} is not a systemd unit name (letters, digits, :-_.@\\ only)",
            kind.name()
        ));
    }
    let verb = match kind {
        HookKind::Stop => "stop",
        HookKind::Start => "start",
        HookKind::Done => "try-reload-or-restart",
    };
    Ok(format!("systemctl {verb} -- '{unit}'"))
}

/// How long a hook's pipes are still read after its process exits, for output that is
/// already written: then the hook is done, whoever still holds the pipes.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// How a hook ended, with its output.
#[derive(Debug)]
pub struct HookRun {
    /// The shell command run (a `unit:` hook's `systemctl` call).
    pub command: String,
    /// The exit status, or `None` when it was killed at its timeout.
    pub status: Option<ExitStatus>,
    /// What it wrote on stdout (bounded, see [`output::TAIL_BYTES`]).
    pub stdout: Captured,
    /// What it wrote on stderr (bounded).
    pub stderr: Captured,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Runs `command` for `volume`; `Ok` on exit 0, else why not. Its output goes to the log.
pub async fn run_hook(
    kind: HookKind,
    command: &str,
    volume: &str,
    device: &Path,
    node: &str,
    timeout: Duration,
) -> Result<(), String> {
    let run = run_hook_captured(kind, command, volume, device, node, timeout).await?;
    outcome(kind, volume, &run, timeout)
}

/// Runs `command` for `volume` and returns how it ended. The hook is done when its process
/// exits (or is killed at `timeout`): its pipes are read for [`OUTPUT_GRACE`] more, and
/// what a background process it started writes later is logged (docs/hooks.md). `Err` only
/// when the hook cannot be run at all.
pub async fn run_hook_captured(
    kind: HookKind,
    command: &str,
    volume: &str,
    device: &Path,
    node: &str,
    timeout: Duration,
) -> Result<HookRun, String> {
    let command = hook_command(kind, command).map_err(|e| format!("volume {volume}: {e}"))?;
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("MESHDRAIN_VOLUME", volume)
        .env("MESHDRAIN_DEVICE", device)
        .env("MESHDRAIN_NODE", node)
        .env("MESHDRAIN_HOOK", kind.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} hook of volume {volume}: cannot run sh: {e}", kind.name()))?;
    let stdout = Stream::start(child.stdout.take().expect("stdout is piped"));
    let stderr = Stream::start(child.stderr.take().expect("stderr is piped"));
    // Wait on the process, never on its pipes: a daemon it started may hold them open.
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status.map_err(|e| format!("{} hook of volume {volume}: {e}", kind.name()))?),
        Err(_) => {
            // The hook's own process only; what it started in the background stays.
            let _ = child.kill().await;
            None
        }
    };
    let elapsed = started.elapsed();
    let label = |stream: &str| Forward {
        label: format!("{} hook background {stream}", kind.name()),
        volume: volume.to_owned(),
    };
    let (stdout, stderr) =
        tokio::join!(stdout.finish(OUTPUT_GRACE, label("stdout")), stderr.finish(OUTPUT_GRACE, label("stderr")));
    let run = HookRun { command, status, stdout, stderr, elapsed };
    log_run(kind, volume, &run);
    Ok(run)
}

/// One log line for the hook's end, then one per line of its captured output.
fn log_run(kind: HookKind, volume: &str, run: &HookRun) {
    let ended = match run.status {
        Some(status) => status.to_string(),
        None => "killed at its timeout".to_owned(),
    };
    let elapsed = format!("{:.3}s", run.elapsed.as_secs_f64());
    let hook = kind.name();
    info!(
        %volume,
        "{hook} hook ended ({ended}) in {elapsed}: stdout {}, stderr {}",
        run.stdout.describe(),
        run.stderr.describe()
    );
    for (stream, captured) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        for line in captured.lines() {
            info!(%volume, "{hook} hook {stream}: {line}");
        }
    }
}

/// `Ok` on exit 0; else the text `volume list` shows: the hook, its exit, its stderr tail.
fn outcome(kind: HookKind, volume: &str, run: &HookRun, timeout: Duration) -> Result<(), String> {
    let command = &run.command;
    let Some(status) = run.status else {
        return Err(format!(
            "{} hook of volume {volume} did not finish within {} (it was killed): `{command}`",
            kind.name(),
            humantime::format_duration(timeout)
        ));
    };
    if status.success() {
        return Ok(());
    }
    let lines = run.stderr.lines();
    let tail: Vec<&str> = lines.iter().rev().take(3).rev().map(String::as_str).collect();
    Err(format!(
        "{} hook of volume {volume} failed ({status}): `{command}`{}{}",
        kind.name(),
        if tail.is_empty() { "" } else { ": " },
        tail.join(" / ")
    ))
}
