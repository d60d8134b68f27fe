//! One node's side of every roll: its votes, its claim, its step (docs/roll.md).
//!
//! ```text
//! pending ─turn, slot free─▶ claiming ─majority─▶ draining ─drained─▶ exec ─ok─▶ undraining ─active─▶ pausing ─▶ done
//!    ▲                          │                                       │ └─ok, no --undrain-after─▶ wait_active ─active─┘
//!    └──────lower claim seen────┘     └─a volume failed─▶ failed ─resume─▶ draining  └─fail─▶ failed ─resume─▶ exec
//!  cancel: pending/claiming ─▶ cancelled;  draining/exec/failed ─▶ undraining/wait_active ─active─▶ cancelled
//! ```
//! The slot is given up only from `claiming` (not cordoned yet) or once the node is
//! `active` again, so a node counts against `max_unavailable` for as long as it is not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lease::{self, Claim, Vote};
use super::{MAX_ROLLS, RollAction, RollCtl, RollInput, RollSpec, RollTiming, Step, StepRecord, tail};
use crate::decide::model::NodeName;
use crate::decide::node::NodeState;

/// Appended to the output of a command the agent's restart interrupted ([`RollMachine::restart`]).
pub const RESTARTED_NOTE: &str =
    "[meshdrain: the agent restarted while this command ran (a reboot?): taken as done, exit status unknown]\n";

/// What a node keeps durably about rolls (`roll.json` in its state dir), and publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollState {
    /// Its claim on a slot, while it wants or holds one.
    #[serde(default)]
    pub claim: Option<Claim>,
    /// Its votes, by slot.
    #[serde(default)]
    pub votes: BTreeMap<u32, Vote>,
    /// Every roll it knows (republished as `roll/<id>`).
    #[serde(default)]
    pub specs: BTreeMap<String, RollSpec>,
    /// Its step in each roll that names it (`rollstep/<id>`).
    #[serde(default)]
    pub steps: BTreeMap<String, StepRecord>,
    /// The latest control of each roll it saw (`rollctl/<id>`).
    #[serde(default)]
    pub ctls: BTreeMap<String, RollCtl>,
}

/// Inputs besides gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollEvent {
    /// A gossip round (or change).
    Tick,
    /// An operator started a roll here.
    Start {
        /// Its id.
        id: String,
        /// The spec.
        spec: RollSpec,
    },
    /// An operator resumed or cancelled a roll here.
    Ctl {
        /// The roll.
        id: String,
        /// The control.
        ctl: RollCtl,
    },
    /// A gossip round, while a volume of this node failed to move (its reason): a roll
    /// draining this node fails visibly rather than wait for ever.
    DrainFailed {
        /// Which volume, and why.
        reason: String,
    },
    /// The command of `roll`, run `attempt`, ended.
    ExecDone {
        /// The roll.
        roll: String,
        /// Which run.
        attempt: u32,
        /// Exit status (`None`: killed by a signal, timed out or not run).
        exit: Option<i32>,
        /// Its output.
        output: String,
        /// Why it could not run, if so.
        error: Option<String>,
    },
}

/// What the owner loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollEffect {
    /// Drain this node (a node request to itself).
    Drain,
    /// Undrain this node.
    Undrain,
    /// Run `command` on this node and report [`RollEvent::ExecDone`].
    Exec {
        /// The roll.
        roll: String,
        /// Which run.
        attempt: u32,
        /// The command.
        command: String,
    },
}

/// The machine: this node's name, its timing and its durable state.
#[derive(Debug, Clone)]
pub struct RollMachine {
    /// This node.
    pub me: NodeName,
    /// Timeouts.
    pub timing: RollTiming,
    /// Durable state.
    pub state: RollState,
}

impl RollMachine {
    /// What a restart does with a command that was running when the agent stopped. Its
    /// outcome was never recorded, and the usual reason is the command itself (it
    /// rebooted the machine or restarted the agent, as an upgrade does): running it again
    /// would loop. So it is taken as done, exit status unknown, and said so in the
    /// record's output; the roll goes on (undrain, pause, next). An operator who doubts it
    /// reads `roll status`.
    pub fn restart(&mut self, now_ms: u64) -> Vec<RollEffect> {
        let mut fx = Vec::new();
        for (id, r) in self.state.steps.iter_mut().filter(|(_, r)| r.step == Step::Exec) {
            let undrain = self.state.specs.get(id).is_some_and(|s| s.undrain_after);
            r.exit = None;
            r.output = tail(&format!("{}{RESTARTED_NOTE}", r.output));
            r.since_ms = now_ms;
            r.step = if undrain { Step::Undraining } else { Step::WaitActive };
            if undrain {
                fx.push(RollEffect::Undrain);
            }
        }
        fx
    }

    /// Applies one event; `node` is this node's lifecycle state now.
    pub fn step(&mut self, event: RollEvent, input: &RollInput, node: NodeState, now_ms: u64) -> Vec<RollEffect> {
        let mut fx = Vec::new();
        match event {
            RollEvent::Start { id, spec } => {
                self.state.specs.insert(id, spec);
            }
            RollEvent::Ctl { id, ctl } => {
                let later = RollCtl::later(self.state.ctls.get(&id), Some(&ctl)).cloned();
                self.state.ctls.insert(id, later.unwrap_or(ctl));
            }
            RollEvent::ExecDone { roll, attempt, exit, output, error } => {
                let undrain = self.state.specs.get(&roll).is_some_and(|s| s.undrain_after);
                if let Some(rec) = self.state.steps.get_mut(&roll)
                    && rec.step == Step::Exec
                    && rec.attempt == attempt
                {
                    rec.exit = exit;
                    rec.output = tail(&output);
                    rec.since_ms = now_ms;
                    if exit == Some(0) && error.is_none() {
                        rec.error = None;
                        rec.step = if undrain { Step::Undraining } else { Step::WaitActive };
                        if undrain {
                            fx.push(RollEffect::Undrain);
                        }
                    } else {
                        rec.error = Some(error.unwrap_or_else(|| match exit {
                            Some(c) => format!("--exec exited with status {c}"),
                            None => "--exec was killed by a signal".to_owned(),
                        }));
                        rec.step = Step::Failed;
                    }
                }
            }
            RollEvent::DrainFailed { reason } => {
                if let Some(rec) = self.state.steps.values_mut().find(|r| r.step == Step::Draining) {
                    rec.step = Step::Failed;
                    rec.since_ms = now_ms;
                    rec.error = Some(format!("the drain failed: {reason}"));
                }
            }
            RollEvent::Tick => {}
        }
        self.merge(input);
        let claims = lease::live_claims(input, &self.me, self.state.claim, now_ms, self.timing);
        self.state.votes = lease::vote(&self.state.votes, &claims);
        if let Some(id) = self.active() {
            fx.extend(self.advance(&id, input, node, now_ms));
        }
        fx
    }

    /// Takes in specs and controls others publish; forgets the oldest finished rolls
    /// beyond [`MAX_ROLLS`].
    fn merge(&mut self, input: &RollInput) {
        for (id, spec) in input.specs() {
            if spec.check().is_ok() {
                self.state.specs.entry(id).or_insert(spec);
            }
        }
        let ids: Vec<String> = self.state.specs.keys().cloned().collect();
        for id in ids {
            if let Some(c) = input.ctl(&id) {
                let later = RollCtl::later(self.state.ctls.get(&id), Some(c)).cloned();
                self.state.ctls.insert(id, later.unwrap_or_else(|| c.clone()));
            }
        }
        while self.state.specs.len() > MAX_ROLLS {
            let oldest = self
                .state
                .specs
                .iter()
                .filter(|(id, s)| {
                    !s.nodes.contains(&self.me) || self.state.steps.get(*id).is_some_and(|r| r.step.finished())
                })
                .min_by_key(|(id, s)| (s.started_ms, (*id).clone()))
                .map(|(id, _)| id.clone());
            let Some(id) = oldest else { break };
            self.state.specs.remove(&id);
            self.state.steps.remove(&id);
            self.state.ctls.remove(&id);
        }
    }

    /// The roll this node works on: the one it holds a step in that is not finished, else
    /// the oldest naming it that it has not finished.
    fn active(&self) -> Option<String> {
        let open = |id: &String| !self.state.steps.get(id).is_some_and(|r| r.step.finished());
        let started = self.state.steps.iter().find(|(id, r)| r.step != Step::Pending && open(id)).map(|(id, _)| id);
        started.cloned().or_else(|| {
            self.state
                .specs
                .iter()
                .filter(|(id, s)| s.nodes.contains(&self.me) && open(id))
                .min_by_key(|(id, s)| (s.started_ms, (*id).clone()))
                .map(|(id, _)| id.clone())
        })
    }

    fn advance(&mut self, id: &str, input: &RollInput, node: NodeState, now_ms: u64) -> Vec<RollEffect> {
        let Some(spec) = self.state.specs.get(id).cloned() else { return vec![] };
        let named: std::collections::BTreeSet<NodeName> =
            self.state.specs.values().flat_map(|s| s.nodes.iter().cloned()).collect();
        let ctl = RollCtl::later(input.ctl(id), self.state.ctls.get(id)).cloned();
        let rec = self.state.steps.entry(id.to_owned()).or_insert_with(|| StepRecord::at(Step::Pending, now_ms));
        let newer = ctl.as_ref().filter(|c| c.seq > rec.ctl_seq).map(|c| (c.seq, c.action));
        let cancelling = ctl.as_ref().is_some_and(|c| c.action == RollAction::Cancel && c.seq <= rec.ctl_seq);
        let mut fx = Vec::new();
        let to = |rec: &mut StepRecord, step: Step| {
            rec.step = step;
            rec.since_ms = now_ms;
        };
        // Peers took this node for dead and gave its slot to another: come back now (the
        // volumes are gone already, so an undrain is instant) and queue again.
        if matches!(rec.step, Step::Draining | Step::Exec | Step::Failed | Step::WaitActive)
            && let Some(c) = self.state.claim
            && lease::taken_over(
                input,
                &lease::live_claims(input, &self.me, None, now_ms, self.timing),
                &self.me,
                c,
                &named,
            )
        {
            // Its command ran (or runs): it is not run again (a reboot would loop), the
            // node is done. Before the command (draining, or a failure), it queues again.
            let ran = matches!(rec.step, Step::Exec | Step::WaitActive);
            rec.error = Some(format!(
                "slot {} was given to another node while this one was not heard from: undrained, {}",
                c.slot,
                if ran { "its command taken as done" } else { "queued again" }
            ));
            to(rec, if ran { Step::Done } else { Step::Pending });
            self.state.claim = None;
            return vec![RollEffect::Undrain];
        }
        match (rec.step, newer) {
            (Step::Pending | Step::Claiming, Some((seq, RollAction::Cancel))) => {
                rec.ctl_seq = seq;
                to(rec, Step::Cancelled);
                self.state.claim = None;
            }
            (Step::Draining | Step::Exec | Step::Failed | Step::WaitActive, Some((seq, RollAction::Cancel))) => {
                rec.ctl_seq = seq;
                if spec.undrain_after || rec.step == Step::Draining {
                    to(rec, Step::Undraining);
                    fx.push(RollEffect::Undrain);
                } else {
                    to(rec, Step::WaitActive);
                }
            }
            (Step::Failed, Some((seq, RollAction::Resume))) if node != NodeState::Drained => {
                // The drain failed (a volume's stop hook, say): drain again, which retries
                // every failed volume (docs/lease-protocol.md).
                rec.ctl_seq = seq;
                rec.error = None;
                to(rec, Step::Draining);
                fx.push(RollEffect::Drain);
            }
            (Step::Failed, Some((seq, RollAction::Resume))) => {
                rec.ctl_seq = seq;
                rec.attempt += 1;
                rec.error = None;
                rec.exit = None;
                to(rec, Step::Exec);
                match &spec.exec {
                    Some(command) => fx.push(RollEffect::Exec {
                        roll: id.to_owned(),
                        attempt: rec.attempt,
                        command: command.clone(),
                    }),
                    None => to(rec, if spec.undrain_after { Step::Undraining } else { Step::WaitActive }),
                }
                if rec.step == Step::Undraining {
                    fx.push(RollEffect::Undrain);
                }
            }
            (_, Some((seq, _))) if !matches!(rec.step, Step::Pending | Step::Claiming) => rec.ctl_seq = seq,
            (Step::Pending, resume) => {
                if let Some((seq, _)) = resume {
                    rec.ctl_seq = seq;
                }
                let stopped = spec.nodes.iter().any(|n| {
                    n != &self.me
                        && input.alive(n, &self.me, now_ms, self.timing)
                        && input.peers.get(n).and_then(|p| p.steps.get(id)).is_some_and(|r| r.step == Step::Failed)
                });
                if !stopped && my_turn(&spec, id, input, &self.me, now_ms, self.timing) {
                    let claims = lease::live_claims(input, &self.me, None, now_ms, self.timing);
                    if let Some(slot) = lease::free_slot(&claims, &self.me, spec.max_unavailable) {
                        let claim = Claim { slot, epoch: lease::highest_epoch(input, self.state.claim) + 1 };
                        self.state.claim = Some(claim);
                        to(rec, Step::Claiming);
                        let claims = lease::live_claims(input, &self.me, Some(claim), now_ms, self.timing);
                        self.state.votes = lease::vote(&self.state.votes, &claims);
                    }
                }
            }
            (Step::Claiming, resume) => {
                if let Some((seq, _)) = resume {
                    rec.ctl_seq = seq;
                }
                let claims = lease::live_claims(input, &self.me, self.state.claim, now_ms, self.timing);
                match self.state.claim {
                    None => to(rec, Step::Pending),
                    Some(c) if lease::beaten(&claims, &self.me, c) => {
                        self.state.claim = None;
                        self.state.votes = lease::vote(
                            &self.state.votes,
                            &lease::live_claims(input, &self.me, None, now_ms, self.timing),
                        );
                        to(rec, Step::Pending);
                    }
                    Some(c) if lease::granted(input, &self.me, c, &self.state.votes, &named) => {
                        to(rec, Step::Draining);
                        fx.push(RollEffect::Drain);
                    }
                    Some(_) => {}
                }
            }
            (Step::Draining, None) if node == NodeState::Drained => match &spec.exec {
                Some(command) => {
                    rec.attempt += 1;
                    to(rec, Step::Exec);
                    fx.push(RollEffect::Exec { roll: id.to_owned(), attempt: rec.attempt, command: command.clone() });
                }
                None if spec.undrain_after => {
                    to(rec, Step::Undraining);
                    fx.push(RollEffect::Undrain);
                }
                None => to(rec, Step::WaitActive),
            },
            (Step::Undraining | Step::WaitActive, None) if node == NodeState::Active => {
                if cancelling {
                    to(rec, Step::Cancelled);
                    self.state.claim = None;
                } else {
                    to(rec, Step::Pausing);
                    rec.until_ms = now_ms.saturating_add(spec.pause_ms);
                }
            }
            (Step::Pausing, None) if now_ms >= rec.until_ms => {
                to(rec, Step::Done);
                self.state.claim = None;
            }
            _ => {}
        }
        fx
    }
}

/// Whether `me` is among the first `max_unavailable` nodes of the roll that are neither
/// finished nor dead (a dead node is skipped: the roll goes on without it).
fn my_turn(spec: &RollSpec, id: &str, input: &RollInput, me: &NodeName, now_ms: u64, timing: RollTiming) -> bool {
    spec.nodes
        .iter()
        .filter(|n| {
            *n == me
                || (input.alive(n, me, now_ms, timing)
                    && !input.peers.get(*n).and_then(|p| p.steps.get(id)).is_some_and(|r| r.step.finished()))
        })
        .position(|n| n == me)
        .is_some_and(|i| i < spec.max_unavailable as usize)
}
