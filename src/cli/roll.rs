//! `meshdrain roll`: drain each node in turn, run a command on it, bring it back, with at
//! most `--max-unavailable` nodes out at once fleet-wide (docs/roll.md). `roll status`,
//! `roll resume` and `roll cancel` act on a roll from any node.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::ControlTarget;
use super::exit::{DEADLINE, Exit, FAILURE, USAGE};
use crate::api::{ApiError, Request};
use crate::control::client::{Client, ClientError};
use crate::decide::model::NodeName;
use crate::decide::roll::{NodeProgress, RollAction, RollPhase, RollReport, Step};

/// Examples and exit codes shown at the end of `meshdrain roll --help`.
pub const EXAMPLES: &str = "\
Examples:
  meshdrain roll --all --dry-run                          # the order, and nothing started
  meshdrain roll --nodes n1,n2,n3 --exec 'apt-get -y upgrade && reboot' --wait
  meshdrain roll --all --exec ./upgrade.sh --undrain-after --pause 5m --wait --json
  meshdrain roll --all --exec ./upgrade.sh --exec-timeout 10m --undrain-after   # killed past 10m: the roll stops
  meshdrain roll status                                   # each node's step, its command's exit and output
  meshdrain roll resume 3f2a9c1e                          # after fixing what failed
  meshdrain roll cancel 3f2a9c1e

Exit codes: 0 started (with --wait: every node done); 1 the roll failed or was cancelled
(with --wait), or was refused; 2 usage error, an unknown node or roll; 3 agent
unreachable; 4 --deadline passed (the roll goes on).";

/// Examples at the end of `meshdrain roll status --help`.
pub const STATUS_EXAMPLES: &str = "\
Examples:
  meshdrain roll status
  meshdrain roll status 3f2a9c1e --json | jq '.nodes[] | {node, step}'

Exit codes: 0 shown; 2 unknown roll; 3 agent unreachable.";

/// Examples at the end of `meshdrain roll resume --help`.
pub const RESUME_EXAMPLES: &str = "\
Examples:
  meshdrain roll resume 3f2a9c1e        # the failed node runs --exec again, then the roll goes on

Exit codes: 0 published; 2 unknown roll; 3 agent unreachable.";

/// Examples at the end of `meshdrain roll cancel --help`.
pub const CANCEL_EXAMPLES: &str = "\
Examples:
  meshdrain roll cancel 3f2a9c1e        # nodes not started stay; the node in progress comes back

Exit codes: 0 published; 2 unknown roll; 3 agent unreachable.";

/// Roll the fleet: each node in turn is drained, runs `--exec`, is undrained
/// (`--undrain-after`), then the next one after `--pause`. At most `--max-unavailable`
/// nodes are out at once fleet-wide, even with several rolls started from several nodes
/// (a gossip lease granted by a majority of the fleet). A failed command stops the roll
/// until `roll resume` or `roll cancel`, from any node.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RollArgs {
    #[allow(missing_docs)] // documented on each subcommand
    #[command(subcommand)]
    pub command: Option<RollCommand>,
    #[allow(missing_docs)] // documented on `StartArgs`
    #[command(flatten)]
    pub start: StartArgs,
}

/// What to roll and how.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// The nodes, in this order (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NODES", conflicts_with = "all", required_unless_present = "all")]
    pub nodes: Vec<NodeName>,
    /// Every node of the fleet not declared lost, by name.
    #[arg(long)]
    pub all: bool,
    /// At most this many nodes cordoned, draining or drained by rolls at once.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: u32,
    /// A shell command run on each node once it is drained (`sh -c`, as the agent's user,
    /// with MESHDRAIN_NODE and MESHDRAIN_ROLL set); its exit status and the tail of its
    /// output are in `roll status`. A non-zero exit stops the roll.
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
    /// Kill --exec (its whole process group) if it is still running after this long; the
    /// roll then stops, failed, with the reason (e.g. 10m, 1h).
    #[arg(long, value_parser = parse_exec_timeout, value_name = "DURATION", default_value = "30m")]
    pub exec_timeout: Duration,
    /// Undrain each node after its command (else it stays drained, holding its slot, until
    /// someone undrains it).
    #[arg(long)]
    pub undrain_after: bool,
    /// With --undrain-after: also move back the volumes that left each node, copying only
    /// what was written since where the node kept its copy (docs/return.md).
    #[arg(long = "return", requires = "undrain_after")]
    pub return_after: bool,
    /// Wait this long after a node is back before the next one goes (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", default_value = "0s")]
    pub pause: Duration,
    /// Follow the roll until it is done, failed or cancelled.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit 4; the roll goes on).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", requires = "wait")]
    pub deadline: Option<Duration>,
    /// Print JSON (with --wait: one line per change).
    #[arg(long)]
    pub json: bool,
    /// Show the order and options; start nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[allow(missing_docs)] // documented on `ControlArg`
    #[command(flatten)]
    pub control: super::ControlArg,
}

/// `roll status`, `roll resume`, `roll cancel`.
#[derive(Debug, clap::Subcommand)]
pub enum RollCommand {
    /// Every roll this node knows, with each node's step.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(IdArgs),
    /// Run a failed roll's failed step again and go on.
    #[command(after_help = RESUME_EXAMPLES)]
    Resume(IdArgs),
    /// Stop a roll: nodes not started stay untouched, the node in progress comes back.
    #[command(after_help = CANCEL_EXAMPLES)]
    Cancel(IdArgs),
}

/// A roll id (optional for `status`).
#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    /// The roll's id (as `roll` printed it).
    pub id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)] // documented on `ControlArg`
    #[command(flatten)]
    pub control: super::ControlArg,
}

impl RollArgs {
    /// The command's `--control` flag.
    pub fn control(&self) -> &Option<std::path::PathBuf> {
        match &self.command {
            Some(RollCommand::Status(a) | RollCommand::Resume(a) | RollCommand::Cancel(a)) => &a.control.control,
            None => &self.start.control.control,
        }
    }
}

/// `--exec-timeout`: a duration of at least 1 ms (exectimeout).
fn parse_exec_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0 (e.g. 30m)".into());
    }
    Ok(d)
}

fn refused(err: ClientError) -> anyhow::Error {
    if let ClientError::Refused(ApiError::Roll { .. }) = &err {
        return anyhow::Error::new(Exit(USAGE)).context(err);
    }
    super::unreachable(err)
}

/// Runs `roll` and its subcommands.
pub async fn run(args: RollArgs, control: &ControlTarget) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&control.socket).await.map_err(super::unreachable)?;
    match args.command {
        None => start(args.start, &mut client).await,
        Some(RollCommand::Status(a)) => status(a, &mut client).await,
        Some(RollCommand::Resume(a)) => ctl(a, RollAction::Resume, &mut client).await,
        Some(RollCommand::Cancel(a)) => ctl(a, RollAction::Cancel, &mut client).await,
    }
}

async fn start(a: StartArgs, client: &mut Client) -> anyhow::Result<ExitCode> {
    let req = Request::RollStart {
        nodes: (!a.all).then(|| a.nodes.clone()),
        max_unavailable: a.max_unavailable,
        exec: a.exec.clone(),
        undrain_after: a.undrain_after,
        return_after: a.return_after,
        pause_ms: a.pause.as_millis() as u64,
        exec_timeout_ms: Some(a.exec_timeout.as_millis() as u64),
        dry_run: a.dry_run,
    };
    let (id, rolls): (Option<String>, Vec<RollReport>) = client.get(&req).await.map_err(refused)?;
    let report = rolls.into_iter().next().ok_or_else(|| anyhow::anyhow!("the agent answered no roll"))?;
    if a.dry_run || !a.wait {
        if a.json {
            println!("{}", serde_json::json!({ "id": id, "dry_run": a.dry_run, "roll": report }));
        } else {
            print!("{}", render_start(id.as_deref(), &report));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = id.ok_or_else(|| anyhow::anyhow!("the agent started a roll without an id"))?;
    if !a.json {
        print!("{}", render_start(Some(&id), &report));
    }
    follow(&id, a.json, a.deadline, client).await
}

/// Polls the roll until it ends, printing each node's step changes.
async fn follow(id: &str, json: bool, deadline: Option<Duration>, client: &mut Client) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, (Step, bool)> = BTreeMap::new();
    loop {
        let (_, rolls): (Option<String>, Vec<RollReport>) =
            client.get(&Request::RollStatus).await.map_err(super::unreachable)?;
        let Some(r) = rolls.into_iter().find(|r| r.id == id) else {
            anyhow::bail!("roll {id} is no longer known to this agent");
        };
        for n in &r.nodes {
            let now = (n.step, n.skipped);
            if seen.get(n.node.as_str()) != Some(&now) {
                seen.insert(n.node.to_string(), now);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "event": "step", "roll": id, "node": n.node, "step": n.step, "skipped": n.skipped, "record": n.record })
                    );
                } else {
                    println!("  {}", node_line(n));
                }
            }
        }
        let code = match r.phase {
            RollPhase::Running => None,
            RollPhase::Done => Some(ExitCode::SUCCESS),
            RollPhase::Failed | RollPhase::Cancelled => Some(ExitCode::from(FAILURE)),
        };
        if let Some(code) = code {
            if json {
                println!("{}", serde_json::json!({ "event": "end", "roll": id, "phase": r.phase, "nodes": r.nodes }));
            } else {
                println!("roll {id}: {}", phase_name(r.phase));
                if r.phase == RollPhase::Failed {
                    println!("fix it, then `meshdrain roll resume {id}` (or `meshdrain roll cancel {id}`)");
                }
            }
            return Ok(code);
        }
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            return Err(anyhow::Error::new(Exit(DEADLINE))
                .context(format!("--deadline passed; roll {id} goes on (`meshdrain roll status {id}`)")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn status(a: IdArgs, client: &mut Client) -> anyhow::Result<ExitCode> {
    let (_, mut rolls): (Option<String>, Vec<RollReport>) =
        client.get(&Request::RollStatus).await.map_err(super::unreachable)?;
    if let Some(id) = &a.id {
        rolls.retain(|r| &r.id == id);
        if rolls.is_empty() {
            return Err(anyhow::Error::new(Exit(USAGE))
                .context(format!("no roll {id} is known here; `meshdrain roll status` lists them")));
        }
    }
    if a.json {
        let v = if a.id.is_some() { serde_json::to_value(&rolls[0])? } else { serde_json::to_value(&rolls)? };
        println!("{v}");
    } else if rolls.is_empty() {
        println!("no rolls");
    } else {
        for r in &rolls {
            print!("{}", render_status(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ctl(a: IdArgs, action: RollAction, client: &mut Client) -> anyhow::Result<ExitCode> {
    let Some(id) = a.id else {
        return Err(anyhow::Error::new(Exit(USAGE)).context("give the roll's id (`meshdrain roll status` lists them)"));
    };
    let (_, rolls): (Option<String>, Vec<RollReport>) =
        client.get(&Request::RollCtl { id: id.clone(), action }).await.map_err(refused)?;
    let verb = match action {
        RollAction::Resume => "resume",
        RollAction::Cancel => "cancel",
    };
    if a.json {
        println!("{}", serde_json::json!({ "id": id, "action": verb, "roll": rolls.first() }));
    } else {
        println!(
            "roll {id}: {verb} published; every node acts on it as gossip brings it (`meshdrain roll status {id}`)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn phase_name(p: RollPhase) -> &'static str {
    match p {
        RollPhase::Running => "running",
        RollPhase::Failed => "failed",
        RollPhase::Cancelled => "cancelled",
        RollPhase::Done => "done",
    }
}

fn step_name(s: Step) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// One node's line: `n2: failed (attempt 1, exit 3): <last output line>`.
pub fn node_line(n: &NodeProgress) -> String {
    let mut s = format!("{}: {}", n.node, step_name(n.step));
    if let Some(r) = &n.record
        && (r.attempt > 0 || r.exit.is_some())
    {
        s.push_str(&format!(" (attempt {}", r.attempt));
        if let Some(e) = r.exit {
            s.push_str(&format!(", exit {e}"));
        }
        s.push(')');
    }
    if let Some(err) = n.record.as_ref().and_then(|r| r.error.as_ref()) {
        s.push_str(&format!(": {err}"));
    }
    if n.skipped {
        s.push_str(" — not heard from: skipped, the roll goes on without it");
    }
    s
}

/// The human form of a started (or dry-run) roll.
pub fn render_start(id: Option<&str>, r: &RollReport) -> String {
    let order: Vec<&str> = r.spec.nodes.iter().map(NodeName::as_str).collect();
    let head = match id {
        Some(id) => format!("roll {id} started from {}", r.spec.started_by),
        None => "roll (dry run: nothing started)".to_owned(),
    };
    let mut s = format!("{head}: {}\n", order.join(" -> "));
    s.push_str(&format!("  at most {} node(s) unavailable at once, fleet-wide\n", r.spec.max_unavailable));
    match &r.spec.exec {
        Some(c) => {
            s.push_str(&format!("  on each node once drained: {c}\n"));
            s.push_str(&format!(
                "  killed (its process group) if still running after {}: the roll then fails\n",
                humantime::format_duration(Duration::from_millis(r.spec.exec_timeout_ms))
            ));
        }
        None => s.push_str("  no --exec: each node is drained, then goes on\n"),
    }
    s.push_str(if r.spec.undrain_after && r.spec.return_after {
        "  then undrained, and the volumes that left it move back (only what was written since, where it kept its copy)\n"
    } else if r.spec.undrain_after {
        "  then undrained\n"
    } else {
        "  then left drained until someone undrains it (its slot stays taken)\n"
    });
    if r.spec.pause_ms > 0 {
        s.push_str(&format!(
            "  then a pause of {}\n",
            humantime::format_duration(Duration::from_millis(r.spec.pause_ms))
        ));
    }
    s
}

/// The human form of `roll status`.
pub fn render_status(r: &RollReport) -> String {
    let mut s = format!("roll {} ({}), started by {}\n", r.id, phase_name(r.phase), r.spec.started_by);
    for n in &r.nodes {
        s.push_str(&format!("  {}\n", node_line(n)));
        if let Some(rec) = &n.record
            && !rec.output.is_empty()
            && matches!(n.step, Step::Failed | Step::Exec)
        {
            for line in rec.output.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
                s.push_str(&format!("      | {line}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::roll::{RollSpec, StepRecord};
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: RollArgs,
    }

    #[test]
    fn return_passes_through_and_needs_undrain_after() {
        let t = T::try_parse_from(["t", "--all", "--undrain-after", "--return"]).unwrap();
        assert!(t.args.start.undrain_after && t.args.start.return_after);
        let err = T::try_parse_from(["t", "--all", "--return"]).err().unwrap();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "docs/return.md: --return needs --undrain-after"
        );
    }

    #[test]
    fn shapes_parse_and_bad_ones_are_refused() {
        let t = T::try_parse_from(["t", "--nodes", "a,b", "--pause", "5m", "--undrain-after"]).unwrap();
        assert_eq!(t.args.start.nodes.len(), 2);
        assert_eq!(t.args.start.pause, Duration::from_secs(300));
        assert_eq!(t.args.start.max_unavailable, 1);
        assert_eq!(t.args.start.exec_timeout, Duration::from_secs(30 * 60), "the default --exec-timeout");
        let t = T::try_parse_from(["t", "--all", "--exec", "x", "--exec-timeout", "90s"]).unwrap();
        assert_eq!(t.args.start.exec_timeout, Duration::from_secs(90));
        let err = T::try_parse_from(["t", "--all", "--exec-timeout", "0s"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("must be longer than 0 (e.g. 30m)"), "{err}");
        let t = T::try_parse_from(["t", "status", "abc"]).unwrap();
        assert!(matches!(t.args.command, Some(RollCommand::Status(IdArgs { id: Some(ref i), .. })) if i == "abc"));
        let err = T::try_parse_from(["t", "--all", "--max-unavailable", "0"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let err = T::try_parse_from(["t", "--all", "--nodes", "a"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = T::try_parse_from(["t", "--exec", "x"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn a_failed_node_shows_its_exit_and_output() {
        let mut rec = StepRecord::at(Step::Failed, 0);
        rec.attempt = 1;
        rec.exit = Some(3);
        rec.error = Some("--exec exited with status 3".into());
        rec.output = "one\ntwo\n".into();
        let r = RollReport {
            id: "r1".into(),
            spec: RollSpec { pause_ms: 0, ..RollSpec::for_tests(&["a", "b"], Some("x"), true) },
            phase: RollPhase::Failed,
            nodes: vec![
                NodeProgress { node: "a".parse().unwrap(), step: Step::Failed, skipped: false, record: Some(rec) },
                NodeProgress { node: "b".parse().unwrap(), step: Step::Pending, skipped: true, record: None },
            ],
        };
        assert_eq!(
            render_status(&r),
            "roll r1 (failed), started by a\n  a: failed (attempt 1, exit 3): --exec exited with status 3\n      | one\n      | two\n  b: pending — not heard from: skipped, the roll goes on without it\n"
        );
        // The start (and --dry-run) says how long the command may run (exectimeout).
        let mut r = r;
        r.spec.exec_timeout_ms = 600_000;
        assert_eq!(
            render_start(None, &r),
            "roll (dry run: nothing started): a -> b\n  at most 1 node(s) unavailable at once, fleet-wide\n  on each node once drained: x\n  killed (its process group) if still running after 10m: the roll then fails\n  then undrained\n"
        );
    }
}
