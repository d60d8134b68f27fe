//! `drain --wait`: follow a drain and say only what is true (issue 19). While the node's
//! agent is down the request stays published and nothing is cancelled, so the command says
//! that and waits; a drain is "cancelled" only when the node adopted it and then left
//! `draining` for another state. Three outputs: bars on a terminal, one plain line per
//! change (and every few seconds) otherwise, JSON lines with `--json` (events, then one
//! final object; nothing else on stdout).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::drain::{DrainArgs, no_target_note};
use super::exit::{DEADLINE, FAILURE};
use super::progress::{Moved, RateMeter, eta, is_moving};
use super::units::{format_bytes, format_eta, format_rate};
use crate::api::{ActionReport, PlanLine, Request, StatusReport, VolumeFault, VolumeStatus};
use crate::control::client::Client;
use crate::decide::node::NodeState;

/// How often a line is repeated for a volume that moves without changing phase.
const LINE_EVERY: Duration = Duration::from_secs(3);
/// How often placement is asked why an offered volume has no holder.
const PLAN_EVERY: Duration = Duration::from_secs(2);

/// Where progress goes.
pub(super) enum Sink {
    /// indicatif bars on stderr (stdout and stderr are terminals); log lines go around them.
    Bars {
        multi: MultiProgress,
        node: ProgressBar,
        volumes: BTreeMap<String, ProgressBar>,
        _shown: super::logging::BarsShown,
    },
    /// Plain lines on stdout.
    Lines,
    /// JSON lines on stdout.
    Json,
}

impl Sink {
    pub(super) fn new(json: bool, node: &str) -> Self {
        if json {
            return Self::Json;
        }
        if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
            return Self::Lines;
        }
        let multi = MultiProgress::new();
        let bar = multi.add(ProgressBar::new(1));
        bar.set_style(style());
        bar.set_prefix(node.to_owned());
        let shown = super::logging::show_bars(&multi);
        Self::Bars { multi, node: bar, volumes: BTreeMap::new(), _shown: shown }
    }

    /// An event: its JSON, or its text line.
    pub(super) fn event(&self, value: Value, text: &str) {
        match self {
            Self::Json => println!("{value}"),
            Self::Lines => println!("{text}"),
            Self::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} [{bar:25}] {msg}").expect("valid template").progress_chars("=> ")
}

/// One volume's line as last shown.
#[derive(Default)]
struct Shown {
    key: String,
    at: Option<Instant>,
}

/// What each followed volume's line last showed, and its rate meter: the per-volume part
/// of the progress output, shared by `drain --wait` and `volume move --wait`.
#[derive(Default)]
pub(super) struct VolumeLines {
    meters: BTreeMap<(String, u64), RateMeter>,
    least_to_move: BTreeMap<(String, u64), u64>,
    shown: BTreeMap<String, Shown>,
}

impl VolumeLines {
    /// Shows `v`'s line (bar, text or JSON) if due; its bytes moved and rate.
    pub(super) fn show(
        &mut self,
        sink: &mut Sink,
        v: &VolumeStatus,
        plan: &[PlanLine],
        now: Instant,
    ) -> (Option<Moved>, u64) {
        let meter = self.meters.entry((v.id.clone(), v.epoch)).or_default();
        let rate = meter.sample(now, v.hydration.fetched_bytes);
        // The holder counts fetched bytes before it marks their regions on the dest, so a
        // batch in flight is counted twice (fetched and left): every sample is at least the
        // truth, and the least one seen is the best (it also follows workload writes down).
        let moved = Moved::of(v).map(|m| {
            let least = self.least_to_move.entry((v.id.clone(), v.epoch)).or_insert(u64::MAX);
            *least = (*least).min(m.to_move).max(m.moved);
            Moved { to_move: *least, ..m }
        });
        let note = if v.stranded {
            "STRANDED: the holder is dead; the source keeps its copy".to_owned()
        } else if v.stalled {
            format!(
                "STALLED: {}",
                v.error.as_ref().map_or("the source does not answer".to_owned(), ToString::to_string)
            )
        } else if v.phase == "offered" && v.holder.is_none() {
            plan.iter().find(|p| p.volume == v.id).and_then(no_target_note).unwrap_or_default()
        } else if meter.resumed {
            "resumed from the holder's metadata".to_owned()
        } else {
            String::new()
        };
        let phase = v.holder_phase.as_deref().unwrap_or(&v.phase);
        let who = v.holder.as_deref().map(|h| format!(" -> {h}")).unwrap_or_default();
        let bytes = moved.map_or_else(String::new, |m| {
            format!(
                " {}% {} / {} {} eta {}",
                m.percent(),
                format_bytes(m.moved),
                format_bytes(m.to_move),
                format_rate(rate),
                format_eta(eta(m.to_move - m.moved, rate))
            )
        });
        let sep = if note.is_empty() { "" } else { "; " };
        let text = format!("{}: {phase}{who}{bytes}{sep}{note}", v.id);
        let key = format!("{phase}{who}|{note}");
        let last = self.shown.entry(v.id.clone()).or_default();
        // A line per change; a moving volume's again every few seconds (a held one only once).
        let due = last.key != key || (is_moving(&v.phase) && last.at.is_none_or(|at| at.elapsed() >= LINE_EVERY));
        match sink {
            Sink::Bars { multi, volumes: bars, .. } => {
                let bar = bars.entry(v.id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(1));
                    b.set_style(style());
                    b.set_prefix(v.id.clone());
                    b
                });
                let m = moved.unwrap_or_default();
                bar.set_length(m.to_move.max(1));
                bar.set_position(m.moved);
                bar.set_message(text.split_once(": ").map_or(text.clone(), |(_, t)| t.to_owned()));
            }
            _ if due => {
                let m = moved.unwrap_or_default();
                sink.event(
                    json!({ "event": "volume", "volume": v.id, "phase": phase, "holder": v.holder,
                        "moved_bytes": m.moved, "to_move_bytes": m.to_move, "bytes_per_s": rate,
                        "eta_s": eta(m.to_move - m.moved, rate).map(|d| d.as_secs()),
                        "resumed": meter.resumed, "note": (!note.is_empty()).then_some(&note) }),
                    &text,
                );
            }
            _ => {}
        }
        if due {
            *last = Shown { key, at: Some(now) };
        }
        (moved, rate)
    }
}

pub(super) async fn fetch(
    client: &mut Client,
) -> Result<(StatusReport, Vec<VolumeStatus>), crate::control::client::ClientError> {
    Ok((client.get(&Request::Status).await?, client.get(&Request::Volumes).await?))
}

/// Ends a follow: clears the bars, prints the final line (or JSON object: `head`, the
/// elapsed time, the exit code and `extra`), returns the exit code.
pub(super) fn finish(
    sink: Sink,
    json: bool,
    started: Instant,
    head: Value,
    code: u8,
    text: &str,
    extra: Value,
) -> anyhow::Result<ExitCode> {
    let elapsed = started.elapsed().as_secs_f64();
    if let Sink::Bars { multi, node, volumes, .. } = &sink {
        for b in volumes.values() {
            b.finish();
        }
        node.finish();
        let _ = multi.clear();
    }
    drop(sink);
    if json {
        let mut v = head;
        if let Value::Object(o) = &mut v {
            o.insert("elapsed_s".into(), json!((elapsed * 10.0).round() / 10.0));
            o.insert("exit_code".into(), json!(code));
            if let Value::Object(x) = extra {
                o.extend(x);
            }
        }
        println!("{v}");
    } else if code == 0 {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    Ok(ExitCode::from(code))
}

/// Follows the drain of `args.common.node` whose request `report` the agent answered.
pub async fn follow(
    args: &DrainArgs,
    control: &super::ControlTarget,
    mut client: Client,
    report: ActionReport,
    retried: BTreeMap<String, u64>,
) -> anyhow::Result<ExitCode> {
    let node = args.common.node.as_str();
    let started = Instant::now();
    let mut sink = Sink::new(args.common.json, node);
    let end = |sink: Sink, result: &str, code: u8, text: String, extra: Value| {
        let head = json!({ "node": node, "result": result });
        finish(sink, args.common.json, started, head, code, &text, extra)
    };
    if let Some(why) = &report.rejected {
        return end(sink, "refused", FAILURE, format!("{node}: drain refused: {why}"), json!({ "error": why }));
    }
    let mut adopted = report.applied;
    let nonce = report.nonce.clone();
    let text = if adopted {
        format!("{node}: drain applied here (request {nonce})")
    } else {
        format!("{node}: drain request {nonce} published; waiting for {node} to adopt it")
    };
    sink.event(json!({ "event": "published", "node": node, "nonce": nonce, "adopted": adopted }), &text);
    let mut last_alive: Option<bool> = Some(true);
    let mut lines = VolumeLines::default();
    let mut tracked: BTreeSet<String> = BTreeSet::new();
    let mut plan: (Option<Instant>, Vec<PlanLine>) = (None, vec![]);
    let mut summary_at = Instant::now();
    loop {
        // The local agent restarting (an upgrade) does not end the wait: say so, reconnect.
        let (status, volumes) = match fetch(&mut client).await {
            Ok(answer) => answer,
            Err(e) => {
                sink.event(
                    json!({ "event": "local_agent_not_answering", "error": e.to_string() }),
                    &format!("the local agent is not answering ({e}); retrying every second"),
                );
                client = loop {
                    if let Some(d) = args.deadline.filter(|d| started.elapsed() > *d) {
                        let text = format!(
                            "{node}: deadline of {} passed while the local agent was not answering",
                            humantime::format_duration(d)
                        );
                        return end(sink, "deadline", DEADLINE, text, json!({}));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(c) = Client::connect(&control.socket).await {
                        break c;
                    }
                };
                continue;
            }
        };
        let n = status.nodes.iter().find(|n| n.name == node);
        let alive = n.map(|n| n.alive);
        if !adopted && let Some(last) = n.and_then(|n| n.last_request.as_ref()).filter(|l| l.nonce == nonce) {
            adopted = true;
            if let Some(why) = &last.rejected {
                return end(sink, "refused", FAILURE, format!("{node}: drain refused: {why}"), json!({ "error": why }));
            }
            sink.event(
                json!({ "event": "adopted", "node": node }),
                &format!("{node}: draining (request {nonce} adopted)"),
            );
        }
        if alive != last_alive {
            let age = n.and_then(|n| n.heartbeat_age_ms).map_or_else(String::new, |ms| {
                format!(" (last heartbeat {} ago)", format_eta(Some(Duration::from_millis(ms))))
            });
            match alive {
                Some(true) => sink.event(
                    json!({ "event": "agent_alive", "node": node }),
                    &format!("{node}: the node's agent answers again"),
                ),
                _ => {
                    let what = if adopted {
                        "the drain goes on when it returns"
                    } else {
                        "the drain request stays published and is adopted when it returns"
                    };
                    sink.event(
                        json!({ "event": "agent_not_answering", "node": node, "adopted": adopted }),
                        &format!("{node}: the node's agent is not answering{age}; {what}; waiting"),
                    );
                }
            }
            last_alive = alive;
        }
        let state = n.and_then(|n| n.state);
        let mine: Vec<&VolumeStatus> = volumes.iter().filter(|v| v.owner == node).collect();
        tracked.extend(mine.iter().map(|v| v.id.clone()));
        if adopted && state == Some(NodeState::Drained) {
            let moved: Vec<(&str, &str)> = volumes
                .iter()
                .filter(|v| tracked.contains(&v.id) && v.arrived_from.as_deref() == Some(node) && v.owner != node)
                .map(|v| (v.id.as_str(), v.owner.as_str()))
                .collect();
            let mut text = format!("{node}: drained in {:.1?}", started.elapsed());
            for (id, to) in &moved {
                text.push_str(&format!("\n  {id} -> {to}"));
                if args.verify {
                    text.push_str(&format!(": verified, the holder's digest matches {node}'s copy"));
                }
            }
            let list: Vec<Value> = moved
                .iter()
                .map(|(id, to)| json!({ "volume": id, "to": to, "verified": args.verify.then_some(true) }))
                .collect();
            return end(sink, "drained", 0, text, json!({ "volumes": list }));
        }
        if adopted && state.is_some_and(|s| s != NodeState::Draining) {
            let s = state.map(|s| s.to_string()).unwrap_or_default();
            let text = format!(
                "{node}: {s}: the drain was cancelled (an undrain was adopted); volumes not cut over stay on {node}"
            );
            return end(sink, "cancelled", FAILURE, text, json!({ "state": s }));
        }
        // Why offered volumes have no holder: placement's reasons, asked every few seconds.
        let unclaimed = mine.iter().any(|v| v.phase == "offered" && v.holder.is_none());
        if unclaimed && plan.0.is_none_or(|at| at.elapsed() >= PLAN_EVERY) {
            let lines: Vec<PlanLine> =
                client.get(&Request::Plan { node: args.common.node.clone() }).await.unwrap_or_default();
            plan = (Some(Instant::now()), lines);
        }
        let now = Instant::now();
        let mut total = (Moved::default(), 0u64, 0usize);
        for v in &mine {
            let (moved, rate) = lines.show(&mut sink, v, &plan.1, now);
            if is_moving(&v.phase) {
                total.0 = total.0.plus(moved.unwrap_or_default());
                total.1 += rate;
                total.2 += 1;
            }
        }
        let (m, rate, moving) = total;
        let summary = format!(
            "{moving} moving, {}% {} / {}, {}, eta {}",
            m.percent(),
            format_bytes(m.moved),
            format_bytes(m.to_move),
            format_rate(rate),
            format_eta(eta(m.to_move - m.moved, rate))
        );
        match &sink {
            Sink::Bars { node: bar, .. } => {
                bar.set_length(m.to_move.max(1));
                bar.set_position(m.moved);
                bar.set_message(summary);
            }
            _ if moving > 0 && summary_at.elapsed() >= LINE_EVERY => {
                summary_at = Instant::now();
                sink.event(
                    json!({ "event": "node", "node": node, "moving": moving, "moved_bytes": m.moved,
                        "to_move_bytes": m.to_move, "bytes_per_s": rate,
                        "eta_s": eta(m.to_move - m.moved, rate).map(|d| d.as_secs()) }),
                    &format!("{node}: {summary}"),
                );
            }
            _ => {}
        }
        // Failures count once the node adopted this request (before, they are the last drain's).
        if let Some(failed) = mine
            .iter()
            .filter(|_| adopted)
            .find(|v| v.phase == "failed" && retried.get(&v.id).is_none_or(|e| v.epoch > *e))
        {
            let why = failed.error.as_ref().map_or_else(|| "no reason given".to_owned(), VolumeFault::to_string);
            let text = format!(
                "{node}: volume {} failed: {why} (fix it, then run `meshdrain drain {node}` again to retry)",
                failed.id
            );
            return end(sink, "failed", FAILURE, text, json!({ "volume": failed.id, "error": why }));
        }
        // After `done` the holder owns the volume; a failed check shows on its line.
        let verify_failed = |v: &&VolumeStatus| {
            v.arrived_from.as_deref() == Some(node) && matches!(v.error, Some(VolumeFault::VerifyFailed { .. }))
        };
        if let Some(bad) = volumes.iter().filter(|_| adopted).find(verify_failed) {
            let why = bad.error.as_ref().map(VolumeFault::to_string).unwrap_or_default();
            let text = format!(
                "{node}: volume {} runs on {} but the copy on {node} is kept: --verify mismatch: {why}",
                bad.id, bad.owner
            );
            return end(
                sink,
                "verify_failed",
                FAILURE,
                text,
                json!({ "volume": bad.id, "on": bad.owner, "verified": false, "error": why }),
            );
        }
        if let Some(d) = args.deadline.filter(|d| started.elapsed() > *d) {
            let text = format!(
                "{node}: deadline of {} passed; the drain goes on (`meshdrain undrain {node}` cancels what has not cut over)",
                humantime::format_duration(d)
            );
            return end(sink, "deadline", DEADLINE, text, json!({}));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
