//! One run of the campaign: a 4-node fleet, volumes with a live workload on node1, a drain
//! issued from another node, one fault at the plan's moment, then the checks: every
//! acknowledged record reads back, fsck clean, never two writers of a volume, and the
//! drain `drained` or stuck with a visible reason (docs/chaos.md, "What is checked").

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::fault::{self, Fault, Moment, Plan, Role};
use crate::fleet::Fleet;
use crate::sample::{Sampler, visible_reason};
use crate::workload::{self, VolumeWork};

/// Nodes per fleet.
pub const NODES: usize = 4;

/// What a campaign run is given.
pub struct Settings {
    /// The meshdrain binary the agents run.
    pub bin: PathBuf,
    /// The run's directory (state, logs, mounts).
    pub dir: PathBuf,
    /// Moving volumes.
    pub volumes: usize,
    /// Each volume's size in MiB.
    pub size_mib: u64,
    /// MiB of seed records written on each volume before the drain.
    pub seed_mib: usize,
    /// Hydration rate limit per volume (`drain --rate-limit`).
    pub rate: String,
    /// How long after the drain request a run may take before it counts as stuck.
    pub deadline: Duration,
}

/// One run's result: a JSON line of the campaign's results file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// The fault's name.
    pub fault: String,
    /// The run's seed.
    pub seed: u64,
    /// The plan drawn from the seed.
    pub plan: Value,
    /// The node was drained (and the fault over) within the deadline.
    pub completed: bool,
    /// Not drained at the end (deadline, or settled in a state that no longer moves).
    pub stuck: bool,
    /// The reason the fleet shows for a stuck run (None: stuck without a reason).
    pub stuck_reason: Option<String>,
    /// The state at the end, as a live node saw it.
    pub state: String,
    /// Drain request to `drained`.
    pub drain_s: Option<f64>,
    /// Records acknowledged (fsynced) over the run, seed records included.
    pub records_acked: usize,
    /// Acknowledged records that did not read back (beyond an accepted loss).
    pub records_lost: usize,
    /// Their names (first 10).
    pub lost_names: Vec<String>,
    /// Records lost as accepted with `node lost --accept-data-loss` (the holder's writes).
    pub accepted_loss: usize,
    /// Records the lost holder wrote that still read back after an accepted loss.
    pub accepted_but_present: usize,
    /// Records unreadable after the source was declared lost mid-hydration.
    pub gone_with_source: usize,
    /// Records that could not be checked at all (stuck run, no device to read).
    pub unverified: usize,
    /// Every fsck ran clean.
    pub fsck_clean: bool,
    /// fsck failures, named.
    pub fsck_errors: Vec<String>,
    /// A volume served by two nodes (gossip claims or start hooks), named.
    pub two_writers: Vec<String>,
    /// Workload stints that ended in an I/O error.
    pub io_errors: u32,
    /// Seconds after the drain request the fault hit.
    pub injected_at_s: Option<f64>,
    /// The first volume's phase when the fault hit.
    pub injected_phase: String,
    /// The target node.
    pub target: String,
    /// What `node lost` did (lose faults).
    pub node_lost: String,
    /// A harness error (the run could not be carried out).
    pub error: Option<String>,
    /// What happened, in order.
    pub events: Vec<String>,
}

/// Where the fault is.
enum FaultState {
    Pending,
    Active { target: usize, holder: usize, until: Instant },
    Lost { target: usize, tried_accept: bool, next: Instant },
    Done,
}

/// Runs one fault with one seed; never panics on a product failure (it is the outcome).
pub fn run(s: &Settings, fault: Fault, seed: u64) -> Outcome {
    let plan = fault::plan(fault, seed, NODES);
    let mut out = Outcome {
        fault: fault.name().to_owned(),
        seed,
        plan: serde_json::to_value(&plan).unwrap_or_default(),
        fsck_clean: true,
        ..Outcome::default()
    };
    if let Err(e) = run_inner(s, fault, &plan, &mut out) {
        out.error = Some(format!("{e:#}"));
    }
    out
}

fn run_inner(s: &Settings, fault: Fault, plan: &Plan, out: &mut Outcome) -> anyhow::Result<()> {
    let hooks = s.dir.join("hooks");
    let mnt = s.dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mut fleet = Fleet::start(&s.dir, NODES, &s.bin)?;
    fleet.wait_joined(Duration::from_secs(60))?;
    let (stop_hook, start_hook) = workload::write_hooks(&hooks)?;
    let mut works = Vec::new();
    for v in 0..s.volumes {
        let id = format!("v{}", v + 1);
        let size = format!("{}M", s.size_mib);
        let o = fleet.cli(
            0,
            &["volume", "create", &id, "--size", &size, "--hook-stop", &stop_hook, "--hook-start", &start_hook],
        )?;
        anyhow::ensure!(o.status.success(), "volume create {id}: {}", String::from_utf8_lossy(&o.stderr));
        let image = meshdrain::dataplane::paths::volume_file(&fleet.nodes[0].pool, &id);
        let mk = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image)
            .output()?;
        anyhow::ensure!(mk.status.success(), "mkfs.ext4 {id}: {}", String::from_utf8_lossy(&mk.stderr));
        let mut w = VolumeWork::new(&id, &hooks, &mnt);
        w.seed(&image, s.seed_mib, 1 << 20).with_context(|| format!("seeding {id}"))?;
        w.start_on("node1", &image);
        works.push(w);
    }
    std::thread::sleep(Duration::from_secs(1));
    let issuer = plan.issuer;
    let o = fleet.cli(issuer, &["drain", "node1", "--rate-limit", &s.rate, "--json"])?;
    anyhow::ensure!(o.status.success(), "drain node1 from node{}: {}", issuer + 1, String::from_utf8_lossy(&o.stderr));
    let t0 = Instant::now();
    note(out, format!("drain node1 issued on node{}", issuer + 1));
    let lost_cli = fleet.cli(0, &["node", "lost", "--help"]).is_ok_and(|o| o.status.success());

    let seed_bytes = (s.seed_mib as u64) << 20;
    let mut sampler = Sampler::default();
    let mut state = FaultState::Pending;
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut accepted_holder: Option<String> = None;
    let mut source_declared = false;
    let mut last_progress = (String::new(), Instant::now());
    let mut tick = 0u64;
    let mut drained_at: Option<f64> = None;
    loop {
        for w in &mut works {
            w.reap();
            w.poll_hooks(&dead);
        }
        tick += 1;
        if !tick.is_multiple_of(10) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let target_now = match &state {
            FaultState::Active { target, .. } | FaultState::Lost { target, .. } => Some(*target),
            _ => None,
        };
        sampler.sample(&mut fleet, &dead);
        let observer = sampler.observer(issuer, target_now, &dead);
        let rows = observer.map(|i| sampler.rows(i)).unwrap_or_default();
        let v1 = rows.iter().find(|r| r["id"] == "v1").cloned().unwrap_or(Value::Null);
        let drained = observer.is_some_and(|i| sampler.node_state(i, "node1").as_deref() == Some("drained"))
            && works.iter().all(|w| {
                rows.iter().any(|r| r["id"] == w.id.as_str() && r["owner"] != "node1" && r["phase"] == "held")
            });

        match &mut state {
            FaultState::Pending => {
                let due = match plan.moment {
                    Moment::Early { ms } => t0.elapsed() >= Duration::from_millis(ms),
                    Moment::Hydrating { share } => {
                        let fetched = v1["fetched_bytes"].as_u64().unwrap_or(0) as f64;
                        let (h, t) = (v1["hydrated"].as_u64().unwrap_or(0), v1["total"].as_u64().unwrap_or(0));
                        drained
                            || (v1["phase"] == "cut_over"
                                && (fetched >= share * seed_bytes as f64 || (t > 0 && h * 100 >= t * 97)))
                    }
                };
                let holder = v1["holder"].as_str().and_then(|h| fleet.index(h));
                let holders: BTreeSet<usize> =
                    rows.iter().filter_map(|r| r["holder"].as_str().and_then(|h| fleet.index(h))).collect();
                let target = match fault.role() {
                    Role::Source => Some(0),
                    Role::Holder | Role::Pair => holder,
                    Role::Third => (1..NODES)
                        .find(|i| !holders.contains(i) && Some(*i) != holder)
                        .or_else(|| (1..NODES).find(|i| Some(*i) != holder)),
                };
                if due && let Some(target) = target {
                    out.injected_at_s = Some(t0.elapsed().as_secs_f64());
                    out.injected_phase = format!(
                        "{}/{}{}",
                        v1["phase"].as_str().unwrap_or("?"),
                        v1["holder_phase"].as_str().unwrap_or("-"),
                        if drained { " (already drained)" } else { "" }
                    );
                    out.target = fleet.nodes[target].name.clone();
                    let until = Instant::now() + Duration::from_millis(plan.duration_ms);
                    let name = fleet.nodes[target].name.clone();
                    note(
                        out,
                        format!(
                            "{:.1}s: {} on {name} ({})",
                            t0.elapsed().as_secs_f64(),
                            fault.name(),
                            out.injected_phase
                        ),
                    );
                    state = match fault {
                        Fault::KillSource | Fault::KillHolder | Fault::KillThird => {
                            fleet.nodes[target].kill9();
                            FaultState::Active { target, holder: target, until }
                        }
                        Fault::LoseSource | Fault::LoseHolder | Fault::LoseThird => {
                            fleet.kill_node(target);
                            dead.insert(name.clone());
                            for w in &mut works {
                                w.crash_on(&name);
                            }
                            FaultState::Lost { target, tried_accept: false, next: Instant::now() }
                        }
                        Fault::RestartHolder => {
                            fleet.nodes[target].terminate(Duration::from_secs(10));
                            fleet.nodes[target].start(&fleet.bin.clone())?;
                            FaultState::Done
                        }
                        Fault::Loss5 | Fault::Loss30 => {
                            let pct = if fault == Fault::Loss5 { 5 } else { 30 };
                            for i in [0, target] {
                                fleet.nft(i, &loss_rules(pct))?;
                            }
                            FaultState::Active { target: 0, holder: target, until }
                        }
                        Fault::Partition => {
                            fleet.nft(0, &partition_rules(&meshdrain_netns::Lan::underlay(target).to_string()))?;
                            fleet.nft(target, &partition_rules(&meshdrain_netns::Lan::underlay(0).to_string()))?;
                            FaultState::Active { target: 0, holder: target, until }
                        }
                    };
                }
            }
            FaultState::Active { target, holder, until } => {
                if Instant::now() >= *until {
                    let (target, holder) = (*target, *holder);
                    match fault {
                        Fault::KillSource | Fault::KillHolder | Fault::KillThird => {
                            fleet.nodes[target].start(&fleet.bin.clone())?;
                        }
                        _ => {
                            for i in [target, holder] {
                                let _ = fleet.nft(i, "delete table inet chaos\n");
                            }
                        }
                    }
                    note(out, format!("{:.1}s: {} over", t0.elapsed().as_secs_f64(), fault.name()));
                    state = FaultState::Done;
                }
            }
            FaultState::Lost { target, tried_accept, next } => {
                let name = fleet.nodes[*target].name.clone();
                let seen_dead = observer.is_some_and(|i| sampler.node_alive(i, &name) == Some(false));
                if !lost_cli {
                    out.node_lost = "`meshdrain node lost` not available in this build".to_owned();
                    state = FaultState::Done;
                } else if seen_dead && Instant::now() >= *next && t0.elapsed() < s.deadline {
                    let obs = observer.expect("seen dead by an observer");
                    let mut args = vec!["node", "lost", name.as_str()];
                    if *tried_accept {
                        args.push("--accept-data-loss");
                    }
                    let o = fleet.cli(obs, &args)?;
                    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
                    note(
                        out,
                        format!(
                            "{:.1}s: `{}` on node{}: exit {:?}: {}",
                            t0.elapsed().as_secs_f64(),
                            args.join(" "),
                            obs + 1,
                            o.status.code(),
                            text.trim()
                        ),
                    );
                    if o.status.success() {
                        out.node_lost = args[3..].iter().fold("declared".to_owned(), |a, f| format!("{a} {f}"));
                        if *tried_accept {
                            accepted_holder = Some(name.clone());
                            for w in &mut works {
                                w.forfeit(&name);
                            }
                        }
                        source_declared = *target == 0;
                        state = FaultState::Done;
                    } else if o.status.code() == Some(1) && !*tried_accept && fault == Fault::LoseHolder {
                        *tried_accept = true;
                    } else {
                        out.node_lost = format!("refused: {}", text.trim());
                        *next = Instant::now() + Duration::from_secs(2);
                    }
                }
            }
            FaultState::Done => {}
        }
        let done = matches!(state, FaultState::Done);
        if drained && drained_at.is_none() {
            drained_at = Some(t0.elapsed().as_secs_f64());
        }
        // Completed once drained and the fault is over (a node back, a window closed).
        if drained && done {
            out.completed = true;
            out.drain_s = drained_at;
            break;
        }
        // What moves: phases, holders, regions on the dest (not rates, which drift).
        let progress: String = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {} {} {};",
                    r["id"],
                    r["owner"],
                    r["phase"],
                    r["holder"],
                    r["holder_phase"],
                    r["hydrated"],
                    r["stalled"],
                    r["stranded"]
                )
            })
            .collect();
        if progress != last_progress.0 {
            last_progress = (progress, Instant::now());
        }
        let reason = visible_reason(observer.map(|i| sampler.status(i)).unwrap_or(&Value::Null), &rows);
        let settled =
            done && fault.permanent() && last_progress.1.elapsed() > Duration::from_secs(10) && reason.is_some();
        if t0.elapsed() > s.deadline || settled {
            out.stuck = true;
            out.stuck_reason = reason;
            note(
                out,
                format!(
                    "{:.1}s: stuck ({})",
                    t0.elapsed().as_secs_f64(),
                    if settled { "settled, not moving for 10 s" } else { "deadline passed" }
                ),
            );
            break;
        }
    }
    let observer = sampler.observer(issuer, None, &dead);
    out.state = observer.map(|i| sampler.describe(i)).unwrap_or_else(|| "no live node answers".to_owned());
    out.two_writers = sampler.violations.clone();

    // The checks: every acknowledged record, fsck of the device the workload ran on.
    let mut unreadable: Vec<String> = Vec::new();
    for w in &mut works {
        out.two_writers.extend(w.double_starts.iter().cloned());
        if !w.runs_on_any()
            && let Some((node, dev)) = w.last_device.clone()
            && !dead.contains(&node)
        {
            w.note(format!("{}: re-mounting {} on {node} to check it", w.id, dev.display()));
            w.start_on(&node, &dev);
        }
        let (n, bad, fsck) = w.finish();
        out.records_acked += n;
        out.io_errors += w.io_errors;
        let ledger = w.ledger.lock().expect("ledger lock").clone();
        match fsck {
            Ok(()) => {}
            Err(e) if out.completed || !(e.contains("not running") || e.contains("not checked")) => {
                out.fsck_clean = false;
                out.fsck_errors.push(format!("{}: {e}", w.id));
            }
            Err(_) => {}
        }
        for name in bad {
            let by_lost_holder = accepted_holder.as_deref().is_some_and(|h| ledger[&name].node == h);
            if by_lost_holder {
                out.accepted_loss += 1;
            } else {
                unreadable.push(format!("{}:{name}", w.id));
            }
        }
        if let Some(h) = &accepted_holder {
            let written_there = ledger.values().filter(|r| &r.node == h).count();
            out.accepted_but_present += written_there - out.accepted_loss.min(written_there);
        }
        out.events.append(&mut w.events);
    }
    if out.completed {
        out.records_lost = unreadable.len();
    } else if source_declared {
        out.gone_with_source = unreadable.len();
    } else {
        out.unverified = unreadable.len();
    }
    out.lost_names = unreadable.into_iter().take(10).collect();

    // A completed move must also be whole on the new owner's disk once its agent let go.
    if out.completed {
        let owners: Vec<(String, String)> = sampler
            .rows(observer.unwrap_or(issuer))
            .iter()
            .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r["owner"].as_str()?.to_owned())))
            .collect();
        // The clone device, read through the clone, against the dest file: equal once
        // the workload has unmounted (both before and after the agents stop).
        let mut before = Vec::new();
        for w in &works {
            let (Some((_, dev)), Some((_, owner))) = (&w.last_device, owners.iter().find(|(id, _)| *id == w.id)) else {
                continue;
            };
            let Some(i) = fleet.index(owner) else { continue };
            let file = meshdrain::dataplane::paths::volume_file(&fleet.nodes[i].pool, &w.id);
            let diff = workload::compare(dev, &file);
            if let Some(d) = &diff {
                note(out, format!("{}: before the agents stop: {d}", w.id));
            }
            before.push((w.id.clone(), dev.clone(), file, diff.is_some()));
        }
        fleet.teardown_agents();
        for (id, dev, file, differed) in before {
            if let Some(d) = workload::compare(&dev, &file) {
                note(out, format!("{id}: after the agents stopped: {d}"));
                if !differed {
                    out.fsck_errors.push(format!("{id}: the dest changed when the agents stopped: {d}"));
                }
            }
        }
        for w in &works {
            let Some((_, owner)) = owners.iter().find(|(id, _)| *id == w.id) else { continue };
            let Some(i) = fleet.index(owner) else { continue };
            let file = meshdrain::dataplane::paths::volume_file(&fleet.nodes[i].pool, &w.id);
            if let Err(e) = workload::fsck(&file) {
                out.fsck_clean = false;
                // Once more a little later, then after a global sync (which also writes back
                // dirty pages of the FUSE file under the clone device): a late flush, data
                // the clone never gave the dest, or a dest that really differs.
                std::thread::sleep(Duration::from_secs(3));
                let again = match workload::fsck(&file) {
                    Ok(()) => "clean 3 s later".to_owned(),
                    Err(_) => {
                        nix::unistd::sync();
                        match workload::fsck(&file) {
                            Ok(()) => "still not clean 3 s later; clean after a global sync".to_owned(),
                            Err(_) => "still not clean 3 s later, nor after a global sync".to_owned(),
                        }
                    }
                };
                out.fsck_errors.push(format!("{} on {owner}'s disk after the move: {e}; {again}", w.id));
                continue;
            }
            let dir = s.dir.join("mnt").join(format!("{}-final", w.id));
            match crate::workload::check_file(&file, &dir, &w.ledger) {
                Ok(bad) => {
                    let lost: Vec<String> = bad
                        .into_iter()
                        .filter(|n| {
                            let writer = w.ledger.lock().expect("ledger lock").get(n).map(|r| r.node.clone());
                            accepted_holder.is_none() || writer != accepted_holder
                        })
                        .collect();
                    if !lost.is_empty() && out.records_lost == 0 {
                        out.records_lost = lost.len();
                        out.lost_names =
                            lost.iter().take(10).map(|n| format!("{}:{n} (on {owner}'s disk)", w.id)).collect();
                    }
                }
                Err(e) => note(out, format!("{}: cannot check {owner}'s file: {e:#}", w.id)),
            }
        }
    }
    if out.stuck || !out.two_writers.is_empty() || out.records_lost > 0 || !out.fsck_clean {
        note(out, fleet.logs(25));
    }
    Ok(())
}

/// nftables: drop `pct` % of the packets in and out of `eth0` (the underlay).
fn loss_rules(pct: u32) -> String {
    format!(
        "table inet chaos {{\n chain in {{ type filter hook input priority -10; iifname \"eth0\" numgen random mod 100 < {pct} drop; }}\n chain out {{ type filter hook output priority -10; oifname \"eth0\" numgen random mod 100 < {pct} drop; }}\n}}\n"
    )
}

/// nftables: drop everything to and from `peer` (an underlay address).
fn partition_rules(peer: &str) -> String {
    format!(
        "table inet chaos {{\n chain in {{ type filter hook input priority -10; ip saddr {peer} drop; }}\n chain out {{ type filter hook output priority -10; ip daddr {peer} drop; }}\n}}\n"
    )
}

/// Records an event of the run and prints it (stderr: the script keeps it per run).
fn note(out: &mut Outcome, line: String) {
    eprintln!("chaos: {line}");
    out.events.push(line);
}
