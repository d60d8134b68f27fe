//! The owner loop's side of rolls (docs/roll.md): builds the roll machine's input from
//! gossip, persists its state (`roll.json`) before acting, drains and undrains this node
//! through its own node requests, runs `--exec` and publishes the `roll*` keys.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Agent, now_ms};
use crate::api::{ApiError, Outcome, Request};
use crate::cluster::gossip::Gossip;
use crate::cluster::view::RawSnapshot;
use crate::decide::model::NodeName;
use crate::decide::node::NodeAction;
use crate::decide::request::{DrainOptions, next_seq};
use crate::decide::roll::{
    self, MAX_OUTPUT_TAIL, RollCtl, RollEffect, RollEvent, RollInput, RollMachine, RollReport, RollSpec, RollState,
    RollTiming,
};
use crate::store::{StateDir, StoreError};

/// File name of the roll machine's durable state in the state dir.
pub const ROLL_FILE: &str = "roll.json";
/// File name of the volumes a roll's `--return` is to move back here, with the nonce of
/// the request sent for each (src/agent/returns.rs, docs/return.md): an agent restarted
/// before every return was adopted resumes them.
pub const ROLL_RETURNS_FILE: &str = "roll-returns.json";

/// `--return`'s volumes to move back here, with the nonce of the move request sent for each.
pub(super) type Returns = BTreeMap<crate::decide::model::VolumeId, Option<String>>;

/// The roll machine and the channel its commands report on.
pub(super) struct RollSide {
    machine: RollMachine,
    tx: mpsc::UnboundedSender<RollEvent>,
    pub(super) rx: mpsc::UnboundedReceiver<RollEvent>,
    /// Commands running now, by (roll, attempt): one run each.
    running: BTreeSet<(String, u32)>,
    /// `--return`: volumes to move back here once undrained, with the nonce of the move
    /// request sent for each (src/agent/returns.rs); kept in [`ROLL_RETURNS_FILE`].
    pub(super) returns: Returns,
}

impl RollSide {
    /// Restores the roll state of `me`; a node is dead to rolls after 20 gossip intervals
    /// without a heartbeat (at least 2 s).
    pub(super) fn load(store: &StateDir, me: NodeName, interval: Duration) -> Result<Self, StoreError> {
        let state = store.load::<RollState>(ROLL_FILE)?.unwrap_or_default();
        let timing = RollTiming { dead_after_ms: (interval.as_millis() as u64 * 20).max(2000) };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(RollSide {
            machine: RollMachine { me, timing, state },
            tx,
            rx,
            running: BTreeSet::new(),
            returns: load_returns(store),
        })
    }

    /// Every roll spec this node knows.
    pub(super) fn machine_specs(&self) -> impl Iterator<Item = &RollSpec> {
        self.machine.state.specs.values()
    }

    /// The `roll*` keys this node publishes.
    pub(super) fn keys(&self) -> BTreeMap<String, String> {
        roll::view::keys(&self.machine.state)
    }
}

impl<G: Gossip> Agent<G> {
    /// Feeds one event to the roll machine: persists its new state first, then acts (a
    /// state the disk refuses is undone and nothing is done).
    pub(super) async fn roll_step(&mut self, event: RollEvent) -> Result<(), StoreError> {
        let raw = self.gossip.snapshot().await;
        let lost: BTreeSet<NodeName> = self.core.state.lost.keys().cloned().collect();
        let inp = heard_input(&raw, &self.heartbeats, &lost, now_ms());
        let before = self.roll.machine.state.clone();
        // A volume that failed to move (docs/lease-protocol.md, `failed`) fails a roll that
        // drains this node, visibly, instead of leaving it draining for ever.
        let failed = self.core.state.volumes.iter().find_map(|(id, v)| match &v.lease.phase {
            crate::decide::lease::SourcePhase::Failed { reason } => Some(format!("volume {id}: {reason}")),
            _ => None,
        });
        let event = match (event, failed) {
            (RollEvent::Tick, Some(reason)) => RollEvent::DrainFailed { reason },
            (event, _) => event,
        };
        let fx = self.roll.machine.step(event, &inp, self.core.state.node_state, now_ms());
        if self.roll.machine.state != before
            && let Err(e) = self.store.save(ROLL_FILE, &self.roll.machine.state)
        {
            self.roll.machine.state = before;
            warn!("cannot persist the roll state, so no roll step is taken: {e}");
            return Err(e);
        }
        // Metrics (docs/roll.md, "Metrics"): turns finished here, every roll's steps.
        let done = |st: &RollState, id: &str| st.steps.get(id).is_some_and(|r| r.step == roll::Step::Done);
        for id in self.roll.machine.state.steps.keys() {
            if done(&self.roll.machine.state, id) && !done(&before, id) {
                self.metrics.roll_node_done();
            }
        }
        self.roll_effects(fx).await;
        self.returns_tick().await; // --return, docs/return.md
        self.publish().await;
        let mut own = inp;
        let me = self.core.config.name.clone();
        let mine = own.peers.entry(me.clone()).or_default();
        mine.steps = self.roll.machine.state.steps.clone();
        mine.ctls = self.roll.machine.state.ctls.clone();
        let reports: Vec<RollReport> = self
            .roll
            .machine
            .state
            .specs
            .iter()
            .map(|(id, spec)| roll::report(id, spec, &own, &me, now_ms(), self.roll.machine.timing))
            .collect();
        self.metrics.observe_rolls(&reports);
        Ok(())
    }

    /// A command that was running when the agent stopped is taken as done
    /// (`RollMachine::restart`: it was most likely what restarted the agent).
    pub(super) async fn roll_restart(&mut self) {
        let before = self.roll.machine.state.clone();
        let fx = self.roll.machine.restart(now_ms());
        if self.roll.machine.state != before
            && let Err(e) = self.store.save(ROLL_FILE, &self.roll.machine.state)
        {
            self.roll.machine.state = before;
            warn!("cannot persist the roll state, so the interrupted --exec stays as it was: {e}");
            return;
        }
        if !fx.is_empty() {
            warn!("the agent restarted while a roll's --exec ran: taken as done, exit status unknown");
        }
        self.roll_effects(fx).await;
    }

    async fn roll_effects(&mut self, fx: Vec<RollEffect>) {
        let me = self.core.config.name.clone();
        for e in fx {
            match e {
                RollEffect::Drain | RollEffect::Undrain => {
                    let action = if e == RollEffect::Drain { NodeAction::Drain } else { NodeAction::Undrain };
                    info!(%action, "roll: node request to self");
                    match self.node_action(&me, action, false, DrainOptions::default()).await {
                        Ok(r) if r.rejected.is_some() => warn!(%action, "roll: refused: {:?}", r.rejected),
                        Ok(_) if e == RollEffect::Undrain => self.want_returns(), // --return, docs/return.md
                        Ok(_) => {}
                        Err(err) => warn!(%action, "roll: {err}"),
                    }
                }
                RollEffect::Exec { roll, attempt, command } => {
                    if !self.roll.running.insert((roll.clone(), attempt)) {
                        continue;
                    }
                    let timeout = Duration::from_millis(
                        self.roll
                            .machine
                            .state
                            .specs
                            .get(&roll)
                            .map_or(roll::DEFAULT_EXEC_TIMEOUT_MS, |s| s.exec_timeout_ms),
                    );
                    info!(roll, attempt, command, ?timeout, "roll: running --exec");
                    let run = Exec { command, node: me.to_string(), roll, attempt, timeout };
                    tokio::spawn(exec(run, self.roll.tx.clone()));
                }
            }
        }
    }

    /// A command ended: record it.
    pub(super) async fn roll_exec_done(&mut self, ev: RollEvent) {
        if let RollEvent::ExecDone { roll, attempt, exit, error, .. } = &ev {
            info!(roll, attempt, exit, "roll: --exec ended");
            self.roll.running.remove(&(roll.clone(), *attempt));
            if let Some(reason) = failure_reason(*exit, error.as_deref()) {
                self.metrics.roll_exec_failed(reason);
            }
        }
        if self.roll_step(ev.clone()).await.is_err() {
            // Not recorded: it runs again after a restart (RollMachine::restart).
        }
    }

    /// Answers `roll`, `roll status`, `roll resume` and `roll cancel`.
    pub(super) async fn roll_answer(&mut self, request: Request) -> Result<Outcome, ApiError> {
        let me = self.core.config.name.clone();
        let now = now_ms();
        match request {
            Request::RollStart {
                nodes,
                max_unavailable,
                exec,
                undrain_after,
                return_after,
                pause_ms,
                exec_timeout_ms,
                dry_run,
            } => {
                let lost = &self.core.state.lost;
                let nodes = match nodes {
                    Some(nodes) => {
                        if let Some(unknown) = nodes.iter().find(|n| !self.view.nodes.contains_key(*n)) {
                            return Err(ApiError::UnknownNode {
                                node: unknown.clone(),
                                known: self.view.nodes.keys().cloned().collect(),
                            });
                        }
                        nodes
                    }
                    None => self.view.nodes.keys().filter(|n| !lost.contains_key(*n)).cloned().collect(),
                };
                let exec_timeout_ms = exec_timeout_ms.unwrap_or(roll::DEFAULT_EXEC_TIMEOUT_MS);
                let spec = RollSpec {
                    nodes,
                    max_unavailable,
                    exec,
                    undrain_after,
                    return_after,
                    pause_ms,
                    exec_timeout_ms,
                    started_ms: now,
                    started_by: me,
                };
                spec.check().map_err(|message| ApiError::Roll { message })?;
                let id = format!("{:08x}", rand::random::<u32>());
                if !dry_run {
                    self.roll_step(RollEvent::Start { id: id.clone(), spec: spec.clone() })
                        .await
                        .map_err(|e| ApiError::NotRecorded { what: format!("roll {id}"), reason: e.to_string() })?;
                    info!(roll = id, nodes = spec.nodes.len(), "roll started");
                }
                let rolls = vec![self.roll_report(&id, &spec).await];
                Ok(Outcome::Rolls { id: (!dry_run).then_some(id), rolls })
            }
            Request::RollCtl { id, action } => {
                let Some(spec) = self.roll.machine.state.specs.get(&id).cloned() else {
                    let known: Vec<&String> = self.roll.machine.state.specs.keys().collect();
                    return Err(ApiError::Roll {
                        message: format!("no roll {id} is known here (known: {known:?}); see `meshdrain roll status`"),
                    });
                };
                let seen = self.roll.machine.state.ctls.get(&id).map_or(0, |c| c.seq);
                let ctl = RollCtl {
                    seq: next_seq(now, seen),
                    nonce: format!("{:016x}", rand::random::<u64>()),
                    action,
                    issued_by: me,
                };
                self.roll_step(RollEvent::Ctl { id: id.clone(), ctl })
                    .await
                    .map_err(|e| ApiError::NotRecorded { what: format!("roll {id}"), reason: e.to_string() })?;
                Ok(Outcome::Rolls { id: Some(id.clone()), rolls: vec![self.roll_report(&id, &spec).await] })
            }
            Request::RollStatus => {
                let mut specs: Vec<(String, RollSpec)> =
                    self.roll.machine.state.specs.iter().map(|(i, s)| (i.clone(), s.clone())).collect();
                specs.sort_by_key(|(i, s)| (s.started_ms, i.clone()));
                let mut rolls = Vec::new();
                for (id, spec) in specs {
                    rolls.push(self.roll_report(&id, &spec).await);
                }
                Ok(Outcome::Rolls { id: None, rolls })
            }
            other => unreachable!("roll_answer is only given roll requests, not {other:?}"),
        }
    }

    async fn roll_report(&mut self, id: &str, spec: &RollSpec) -> RollReport {
        let raw = self.gossip.snapshot().await;
        let lost: BTreeSet<NodeName> = self.core.state.lost.keys().cloned().collect();
        let mut inp = heard_input(&raw, &self.heartbeats, &lost, now_ms());
        // What this node decided is newer than what its gossip state shows yet.
        let me = self.core.config.name.clone();
        let own = inp.peers.entry(me.clone()).or_default();
        own.steps = self.roll.machine.state.steps.clone();
        own.ctls = self.roll.machine.state.ctls.clone();
        roll::report(id, spec, &inp, &me, now_ms(), self.roll.machine.timing)
    }
}

/// Why a command's run failed, as the `reason` label of `roll_exec_failures` (`None`: it
/// succeeded).
fn failure_reason(exit: Option<i32>, error: Option<&str>) -> Option<&'static str> {
    match (exit, error) {
        (Some(0), None) => None,
        (_, Some(e)) if e.contains("(--exec-timeout)") => Some("timeout"),
        (_, Some(_)) => Some("not_run"),
        (Some(_), None) => Some("exit"),
        (None, None) => Some("signal"),
    }
}

/// The roll input of a snapshot, with when each heartbeat last moved from `heartbeats`.
fn heard_input(
    raw: &RawSnapshot,
    heartbeats: &std::collections::HashMap<String, (u64, Instant)>,
    lost: &BTreeSet<NodeName>,
    now: u64,
) -> RollInput {
    let heard = |name: &str| heartbeats.get(name).map(|(_, at)| now.saturating_sub(at.elapsed().as_millis() as u64));
    roll::view::input_from_raw(raw, heard, lost, now)
}

/// One run of a roll's `--exec` on this node.
pub(super) struct Exec {
    /// The shell command.
    pub command: String,
    /// This node (`MESHDRAIN_NODE`).
    pub node: String,
    /// The roll (`MESHDRAIN_ROLL`).
    pub roll: String,
    /// Which run.
    pub attempt: u32,
    /// Killed (its whole process group) after this long (`--exec-timeout`).
    pub timeout: Duration,
}

/// The error recorded for a command killed at its `--exec-timeout` (docs/roll.md).
pub fn timed_out(timeout: Duration) -> String {
    format!(
        "--exec did not finish within {} (--exec-timeout): killed with its process group",
        humantime::format_duration(timeout)
    )
}

/// Runs one `--exec` with `sh -c` in a process group of its own and reports its status
/// and the tail of its output. The run is over when the process exits; its pipes are read
/// for one more second (a daemon it started may hold them open). Past its timeout the
/// whole group is killed (SIGKILL: the command and what it started in the group) and the
/// run is a failure that says so.
pub(super) async fn exec(run: Exec, tx: mpsc::UnboundedSender<RollEvent>) {
    let Exec { command, node, roll, attempt, timeout } = run;
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("MESHDRAIN_NODE", &node)
        .env("MESHDRAIN_ROLL", &roll)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let error = Some(format!("--exec of roll {roll}: cannot run sh: {e}"));
            let _ = tx.send(RollEvent::ExecDone { roll, attempt, exit: None, output: String::new(), error });
            return;
        }
    };
    let group = child.id();
    let out = tokio::spawn(read_tail(child.stdout.take()));
    let err = tokio::spawn(read_tail(child.stderr.take()));
    let (status, killed) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status, false),
        Err(_) => {
            if let Some(pgid) = group.and_then(|p| i32::try_from(p).ok()) {
                // The group's id is the shell's pid (process_group(0)); it is still ours:
                // the shell has not been reaped.
                if let Err(e) = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL) {
                    warn!(roll, attempt, "--exec timed out; killing its process group {pgid}: {e}");
                }
            }
            warn!(roll, attempt, ?timeout, "--exec timed out: killed with its process group");
            (child.wait().await, true)
        }
    };
    let grace = Duration::from_secs(1);
    let mut output = String::new();
    for h in [out, err] {
        if let Ok(Ok(s)) = tokio::time::timeout(grace, h).await {
            output.push_str(&s);
        }
    }
    let (exit, error) = match status {
        _ if killed => (None, Some(timed_out(timeout))),
        Ok(s) => (s.code(), None),
        Err(e) => (None, Some(format!("--exec of roll {roll}: {e}"))),
    };
    let _ = tx.send(RollEvent::ExecDone { roll, attempt, exit, output: roll::tail(&output), error });
}

/// Reads a pipe to its end, keeping at most the last 2 × [`MAX_OUTPUT_TAIL`] bytes.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * MAX_OUTPUT_TAIL {
            kept.drain(..kept.len() - MAX_OUTPUT_TAIL);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The returns a roll left to send (docs/return.md). A file that cannot be read is
/// reported and ignored: the returns are an optimisation `undrain <node> --return` redoes,
/// and must not keep the agent from starting.
fn load_returns(store: &StateDir) -> Returns {
    store.load::<Returns>(ROLL_RETURNS_FILE).unwrap_or_else(|e| {
        warn!("{e}: the volumes a roll's --return was moving back here are forgotten; `meshdrain undrain <this node> --return` sends them again");
        None
    }).unwrap_or_default()
}

/// Writes the returns still to send (removes nothing: an empty map is written as such).
pub(super) fn save_returns(store: &StateDir, returns: &Returns) {
    if let Err(e) = store.save(ROLL_RETURNS_FILE, returns) {
        warn!("cannot persist the roll's returns (an agent restart would forget them): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/return.md: the returns a roll left to send outlive an agent restart, nonces
    /// included (an adopted one is recognised by it); a damaged file starts the agent with
    /// none rather than not at all.
    #[test]
    fn a_rolls_returns_survive_an_agent_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(&dir.path().join("state")).unwrap();
        let me: NodeName = "n1".parse().unwrap();
        let interval = Duration::from_millis(100);
        assert!(RollSide::load(&store, me.clone(), interval).unwrap().returns.is_empty());
        let mut side = RollSide::load(&store, me.clone(), interval).unwrap();
        side.returns.insert("a".parse().unwrap(), None);
        side.returns.insert("b".parse().unwrap(), Some("nonce-b".into()));
        save_returns(&store, &side.returns);
        let again = RollSide::load(&store, me.clone(), interval).unwrap();
        assert_eq!(again.returns, side.returns);
        side.returns.clear();
        save_returns(&store, &side.returns);
        assert!(RollSide::load(&store, me.clone(), interval).unwrap().returns.is_empty());
        std::fs::write(store.root().join(ROLL_RETURNS_FILE), b"{not json").unwrap();
        assert!(RollSide::load(&store, me, interval).unwrap().returns.is_empty());
    }

    /// `--exec-timeout`: a command still running at its timeout is killed with everything
    /// in its process group (a background child too), and the run is a failure saying so.
    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let command = format!("echo started; sleep 30 & echo $! > {}; wait", pidfile.display());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let timeout = Duration::from_millis(400);
        let t = Instant::now();
        exec(Exec { command, node: "n1".into(), roll: "r1".into(), attempt: 1, timeout }, tx).await;
        let ev = rx.recv().await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "killed at the timeout, took {:?}", t.elapsed());
        let RollEvent::ExecDone { roll, attempt, exit, output, error } = ev else { panic!("{ev:?}") };
        assert_eq!((roll.as_str(), attempt, exit), ("r1", 1, None));
        assert_eq!(output, "started\n");
        assert_eq!(
            error.as_deref(),
            Some("--exec did not finish within 400ms (--exec-timeout): killed with its process group")
        );
        assert_eq!(failure_reason(exit, error.as_deref()), Some("timeout"));
        // The background `sleep 30` was in the group: gone too (reaped by init).
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let gone = (0..50).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
            if alive {
                std::thread::sleep(Duration::from_millis(50));
            }
            !alive
        });
        assert!(gone, "the background child {pid} outlived the timeout");
    }

    /// A command that ends within its timeout reports its exit as before.
    #[tokio::test]
    async fn a_command_within_its_timeout_reports_its_exit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = Exec {
            command: "echo out; echo err >&2; exit 3".into(),
            node: "n1".into(),
            roll: "r1".into(),
            attempt: 2,
            timeout: Duration::from_secs(30),
        };
        exec(run, tx).await;
        let ev = rx.recv().await.unwrap();
        let RollEvent::ExecDone { exit, output, error, .. } = ev else { panic!("{ev:?}") };
        assert_eq!((exit, output.as_str(), error), (Some(3), "out\nerr\n", None));
        assert_eq!(failure_reason(exit, None), Some("exit"));
        assert_eq!(failure_reason(None, None), Some("signal"));
        assert_eq!(failure_reason(Some(0), None), None);
    }
}
