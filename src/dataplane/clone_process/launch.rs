//! Starting, finding and stopping holder processes (docs/holder-process.md): a holder
//! is `meshdrain clone hold --spec <volume>.json`, detached from the agent (its own
//! session, stdin closed, stderr to its log), so it outlives the agent's process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::holder::open_log;
use super::protocol::{HolderFiles, HolderSpec, HolderState, PROTOCOL, Request, call, read_json, write_json};

/// How long a holder may take to log in, open its metadata and expose its device
/// (two logins of at most 15 s each, the engine open, the FUSE mount and loop attach).
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long a stopping holder may take to commit and tear its device down.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A holder process as the agent knows it.
#[derive(Debug)]
pub(crate) struct Live {
    /// Its pid.
    pub pid: u32,
    /// The workload's device.
    pub device: PathBuf,
    /// The holder took over the device of a dead predecessor (NBD reconfigured): the
    /// workload kept it.
    pub reattached: bool,
    /// The exposure running (`fuse-loop`, `nbd`, `ublk`), as the holder reported it.
    pub exposure: Option<meshdrain_clone::exposure::Chosen>,
    /// Our child (started by this agent process), to learn how it ended; `None` for a
    /// holder adopted from an earlier agent process (not our child).
    pub child: Option<Child>,
}

impl Live {
    /// `None` while the holder runs, else how it ended.
    pub fn ended(&mut self) -> Option<String> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(describe(status)),
                Err(e) => Some(format!("cannot be waited for: {e}")),
            },
            None if is_holder(self.pid) => None,
            None => Some("gone (it was not this agent process's child: its log says how it ended)".to_owned()),
        }
    }
}

/// "killed by signal 9 (SIGKILL)" or "exited with status 1".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
            format!("killed by signal {sig} ({name})")
        }
        _ => format!("ended: {status}"),
    }
}

/// Whether `pid` is a live `meshdrain clone hold` process (not a pid reused by another
/// program; a zombie has no command line and counts as gone).
pub(crate) fn is_holder(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"clone" && w[1] == b"hold")
}

/// Whether process `pid` runs another executable than this one: after a package upgrade
/// a holder started before it still runs the old file (compared by device and inode, so
/// a replaced file at the same path counts as another).
pub(crate) fn runs_other_binary(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    match (id(&format!("/proc/{pid}/exe")), id("/proc/self/exe")) {
        (Ok(theirs), Ok(ours)) => theirs != ours,
        _ => false,
    }
}

/// Writes `spec`, starts its holder and waits until it serves (or says why it cannot).
pub(crate) fn launch(exe: &Path, files: &HolderFiles, spec: &HolderSpec) -> Result<Live, String> {
    write_json(&files.spec, spec).map_err(|e| format!("holder spec {}: {e}", files.spec.display()))?;
    let _ = std::fs::remove_file(&files.socket);
    let log = open_log(&files.log).map_err(|e| format!("holder log {}: {e}", files.log.display()))?;
    let mut child = Command::new(exe)
        .args(["clone", "hold", "--spec"])
        .arg(&files.spec)
        .current_dir("/")
        // systemd's notification and watchdog are the agent's, not the holder's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the holder process {}: {e}", exe.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + READY_WITHIN + Duration::from_millis(spec.prepare_delay_ms);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let state: HolderState = read_json(&files.state).unwrap_or_default();
            let why =
                state.error.filter(|_| state.pid == pid).unwrap_or_else(|| format!("see {}", files.log.display()));
            return Err(format!("holder process of {} {}: {why}", spec.clone_spec.volume, describe(status)));
        }
        if let Ok(reply) = call(&files.socket, &Request::Hello, Duration::from_secs(2))
            && let Some(state) = reply.state
            && state.pid == pid
        {
            let exposure = state.exposure.map(|c| c.as_str()).unwrap_or("-");
            info!(volume = %spec.clone_spec.volume, pid, device = %state.device.display(), exposure, reattached = state.reattached, "holder process started");
            return Ok(Live {
                pid,
                device: state.device,
                reattached: state.reattached,
                exposure: state.exposure,
                child: Some(child),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "holder process of {} did not serve within {:?}; see {}",
                spec.clone_spec.volume,
                READY_WITHIN,
                files.log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The holder of `files` if one runs and speaks our protocol: adopted as it is.
pub(crate) fn find(files: &HolderFiles, epoch: u64) -> Result<Option<Live>, String> {
    let Ok(reply) = call(&files.socket, &Request::Hello, Duration::from_secs(5)) else {
        return Ok(None);
    };
    let state = reply.state.unwrap_or_default();
    if reply.protocol != Some(PROTOCOL) || state.epoch != epoch || !is_holder(state.pid) {
        return Err(format!(
            "holder pid {} speaks protocol {:?} for epoch {} (want {PROTOCOL} for epoch {epoch})",
            state.pid, reply.protocol, state.epoch
        ));
    }
    Ok(Some(Live { pid: state.pid, device: state.device, reattached: false, exposure: state.exposure, child: None }))
}

/// Stops a holder: asks it (it commits and tears its device down), then waits; kills it
/// if it does not end within [`STOP_WITHIN`].
pub(crate) fn stop(volume: &str, files: &HolderFiles, live: Option<&mut Live>) {
    let pid = match &live {
        Some(l) => Some(l.pid),
        None => read_json::<HolderState>(&files.state).ok().map(|s| s.pid).filter(|p| *p > 0 && is_holder(*p)),
    };
    let Some(pid) = pid else { return };
    if let Err(e) = call(&files.socket, &Request::Stop, STOP_WITHIN) {
        warn!(%volume, pid, "holder did not take the stop request ({e}); killing it");
        kill(pid);
    }
    let deadline = Instant::now() + STOP_WITHIN;
    let mut live = live;
    loop {
        let gone = match live.as_deref_mut() {
            Some(l) => l.ended().is_some(),
            None => !is_holder(pid),
        };
        if gone {
            info!(%volume, pid, "holder process stopped");
            return;
        }
        if Instant::now() > deadline {
            warn!(%volume, pid, "holder process did not end within {STOP_WITHIN:?}; killed");
            kill(pid);
            if let Some(Live { child: Some(c), .. }) = live {
                let _ = c.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// Stops every holder process under `run_dir` (the agent's run dir) and waits for them:
/// for test harnesses and demo teardown, since an agent that stops leaves its holders
/// serving (docs/holder-process.md). Returns the pids stopped.
pub fn stop_all(run_dir: &Path) -> Vec<u32> {
    let dir = run_dir.join("clones");
    let mut stopped = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(volume) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        let files = HolderFiles::new(&dir, volume);
        if let Ok(state) = read_json::<HolderState>(&files.state)
            && state.pid > 0
            && is_holder(state.pid)
        {
            stop(volume, &files, None);
            stopped.push(state.pid);
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::runs_other_binary;

    #[test]
    fn another_executable_is_told_from_this_one_by_its_file() {
        assert!(!runs_other_binary(std::process::id()), "this process runs this binary");
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let other = runs_other_binary(sleeper.id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(other, "sleep runs another binary");
        // A process that is gone cannot be told: no move is attempted.
        assert!(!runs_other_binary(u32::MAX));
    }
}
