//! Drain on shutdown (`[drain] on_shutdown = "self"`, docs/drain-on-shutdown.md): on
//! SIGTERM, when the machine is going down (not when only the agent restarts), the agent
//! drains its own node before it exits, within `[drain] shutdown_deadline`, and logs
//! what it left behind. Gossip, the mesh and the data plane stay up until it ends: the
//! agent stops them only afterwards, and the unit orders it before the network stops.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::AgentHandle;
use crate::api::{Outcome, Request, VolumeStatus};
use crate::decide::model::NodeName;
use crate::decide::node::{NodeAction, NodeState};

/// Targets whose queued job means the machine is going down.
const SHUTDOWN_TARGETS: [&str; 5] =
    ["shutdown.target", "reboot.target", "poweroff.target", "halt.target", "kexec.target"];

/// Whether the machine is shutting down, from the output of `systemctl
/// is-system-running` and `systemctl list-jobs --no-legend` (`JOB UNIT TYPE STATE`).
pub fn machine_stopping(is_system_running: &str, list_jobs: &str) -> bool {
    is_system_running.trim() == "stopping"
        || list_jobs.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|u| SHUTDOWN_TARGETS.contains(&u)))
}

/// Asks systemd whether the machine is shutting down. The `systemctl` run is
/// `MESHDRAIN_SYSTEMCTL` when set (the seam tests use to say "stopping" or "running");
/// a systemctl that is missing or does not answer within 5 s means "not shutting down".
pub async fn probe() -> bool {
    let systemctl = std::env::var("MESHDRAIN_SYSTEMCTL").unwrap_or_else(|_| "systemctl".to_owned());
    let run = |args: &'static [&'static str]| {
        let systemctl = systemctl.clone();
        async move {
            let out = tokio::process::Command::new(&systemctl).args(args).kill_on_drop(true).output();
            match tokio::time::timeout(Duration::from_secs(5), out).await {
                Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Ok(Err(e)) => {
                    warn!("cannot run {systemctl} {}: {e}; taking this for a restart", args.join(" "));
                    String::new()
                }
                Err(_) => String::new(),
            }
        }
    };
    let state = run(&["is-system-running"]).await;
    let jobs = if state.trim() == "stopping" { String::new() } else { run(&["list-jobs", "--no-legend"]).await };
    machine_stopping(&state, &jobs)
}

/// Drains `me` and waits for `drained`, at most `bound`; logs what is left behind.
/// Returns whether the node drained.
pub async fn drain_self(handle: &AgentHandle, me: &NodeName, bound: Duration) -> bool {
    let started = Instant::now();
    info!(bound = %humantime::format_duration(bound), "the machine is shutting down: draining this node first ([drain] on_shutdown = \"self\")");
    if let Err(e) = handle.node_action(me, NodeAction::Drain, false).await {
        warn!("cannot drain before shutdown: {e}; stopping with every volume here");
        return false;
    }
    while started.elapsed() < bound {
        let state = handle.status().await.ok().and_then(|s| s.nodes.into_iter().find(|n| n.name == me.as_str()));
        if state.and_then(|n| n.state) == Some(NodeState::Drained) {
            info!(elapsed = ?started.elapsed(), "drained before shutdown: every volume was handed off");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<VolumeStatus> = match handle.ask(Request::Volumes).await {
        Ok(Outcome::Volumes { volumes }) => volumes.into_iter().filter(|v| v.owner == me.as_str()).collect(),
        _ => vec![],
    };
    warn!(
        bound = %humantime::format_duration(bound),
        left = left.len(),
        "the drain before shutdown did not finish within [drain] shutdown_deadline; stopping anyway"
    );
    for v in &left {
        let holder = v.holder.as_deref().unwrap_or("none");
        warn!(volume = %v.id, phase = %v.phase, holder, "left behind on this node: not handed off");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_or_a_queued_shutdown_job_is_a_shutdown_and_anything_else_a_restart() {
        assert!(machine_stopping("stopping\n", ""));
        assert!(machine_stopping("running\n", "1234 reboot.target start waiting\n"));
        assert!(machine_stopping("degraded\n", "7 poweroff.target start waiting\n88 foo.service stop running\n"));
        assert!(!machine_stopping("running\n", "88 meshdrain.service restart running\n"));
        assert!(!machine_stopping("degraded\n", ""));
        assert!(!machine_stopping("", ""));
    }
}
