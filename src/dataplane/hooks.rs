//! Workload hooks: the operator's commands that stop a workload on the source and start
//! it on the clone. Run with `sh -c`, a bounded time, and the volume, device and node in
//! the environment; a failure comes back as text naming the hook, its exit and the tail of
//! its stderr, so `volume list` says what to fix.
//!
//! A hook `unit:<name>` names a systemd unit instead: `systemctl stop` on the source,
//! `systemctl start` on the target, `systemctl try-reload-or-restart` after hand-off. The
//! unit finds the volume's device at `<state_dir>/run/dev/<volume>` (a link the clone
//! keeps current).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

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

/// Runs `command` for `volume`; `Ok` on exit 0, else why not.
pub async fn run_hook(
    kind: HookKind,
    command: &str,
    volume: &str,
    device: &Path,
    node: &str,
    timeout: Duration,
) -> Result<(), String> {
    let command = &hook_command(kind, command).map_err(|e| format!("volume {volume}: {e}"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("MESHDRAIN_VOLUME", volume)
        .env("MESHDRAIN_DEVICE", device)
        .env("MESHDRAIN_NODE", node)
        .env("MESHDRAIN_HOOK", kind.name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} hook of volume {volume}: cannot run sh: {e}", kind.name()))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let waited = tokio::time::timeout(timeout, async {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        (child.wait().await, err)
    })
    .await;
    let (status, err) = match waited {
        Ok((status, err)) => (status, err),
        Err(_) => {
            return Err(format!(
                "{} hook of volume {volume} did not finish within {} (it was killed): `{command}`",
                kind.name(),
                humantime::format_duration(timeout)
            ));
        }
    };
    let status = status.map_err(|e| format!("{} hook of volume {volume}: {e}", kind.name()))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&err);
    let tail: Vec<&str> = text.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!(
        "{} hook of volume {volume} failed ({status}): `{command}`{}{}",
        kind.name(),
        if tail.is_empty() { "" } else { ": " },
        tail.join(" / ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hook_sees_its_volume_and_reports_failure_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let cmd =
            format!("echo \"$MESHDRAIN_VOLUME $MESHDRAIN_DEVICE $MESHDRAIN_NODE $MESHDRAIN_HOOK\" > {}", out.display());
        run_hook(HookKind::Start, &cmd, "db1", Path::new("/dev/loop7"), "n2", Duration::from_secs(5)).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "db1 /dev/loop7 n2 start\n");

        let err = run_hook(
            HookKind::Stop,
            "echo 'pg_ctl: server busy' >&2; exit 3",
            "db1",
            Path::new("/x"),
            "n1",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            "stop hook of volume db1 failed (exit status: 3): `echo 'pg_ctl: server busy' >&2; exit 3`: pg_ctl: server busy"
        );
    }

    #[test]
    fn a_unit_hook_becomes_systemctl_and_a_bad_unit_name_is_refused() {
        assert_eq!(
            hook_command(HookKind::Stop, "unit:postgresql@db1.service").unwrap(),
            "systemctl stop -- 'postgresql@db1.service'"
        );
        assert_eq!(hook_command(HookKind::Start, "unit:pg.service").unwrap(), "systemctl start -- 'pg.service'");
        assert_eq!(hook_command(HookKind::Done, "unit:pg").unwrap(), "systemctl try-reload-or-restart -- 'pg'");
        assert_eq!(
            hook_command(HookKind::Start, "mount $MESHDRAIN_DEVICE /srv").unwrap(),
            "mount $MESHDRAIN_DEVICE /srv"
        );
        let err = hook_command(HookKind::Start, "unit:pg'; rm -rf /").unwrap_err();
        assert!(err.contains("is not a systemd unit name"), "{err}");
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_after_its_timeout() {
        let err = run_hook(HookKind::Stop, "sleep 30", "v", Path::new("/x"), "n", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish within 200ms (it was killed)"), "{err}");
    }
}
