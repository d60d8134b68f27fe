//! Rolling the fleet: each node in turn drains, runs a command, comes back (docs/roll.md).
//!
//! Pure: [`RollMachine::step`] takes what gossip shows ([`RollInput`]), `now` and the
//! outcome of the last command, and returns effects for the owner loop. No coordinator:
//! the roll's spec (`roll/<id>`) is republished by every node that saw it, each node
//! publishes its own step (`rollstep/<id>`), and operators' `resume`/`cancel` travel as
//! `rollctl/<id>` (latest `(seq, nonce)` wins). Who may be unavailable is decided by the
//! fleet-wide availability lease in [`lease`]: at most `max_unavailable` slots, one holder
//! each, granted by a majority of votes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::NodeName;
use super::node::NodeState;

pub mod lease;
mod machine;
#[cfg(test)]
mod prop;
#[cfg(test)]
mod tests;
pub mod view;

pub use lease::{Claim, SlotRecord, Vote};
pub use machine::{RESTARTED_NOTE, RollEffect, RollEvent, RollMachine, RollState};

/// At most this many bytes of a command's output are kept and published (the tail).
pub const MAX_OUTPUT_TAIL: usize = 2048;
/// At most this many rolls are remembered; the oldest finished ones are forgotten first.
pub const MAX_ROLLS: usize = 16;
/// At most this many nodes in one roll (a spec is one gossip value).
pub const MAX_ROLL_NODES: usize = 256;
/// How long `--exec` may run by default before it is killed (`--exec-timeout`): 30 min.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 30 * 60 * 1000;

fn default_exec_timeout_ms() -> u64 {
    DEFAULT_EXEC_TIMEOUT_MS
}

/// A roll as its starter published it; every node that sees it republishes it unchanged,
/// so it outlives the node that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollSpec {
    /// The nodes, in the order they are rolled.
    pub nodes: Vec<NodeName>,
    /// At most this many nodes of the fleet unavailable by rolls at once (slots `0..n`).
    pub max_unavailable: u32,
    /// Run on each node once it is drained (`sh -c`); `None`: nothing.
    #[serde(default)]
    pub exec: Option<String>,
    /// Undrain each node after its command.
    #[serde(default)]
    pub undrain_after: bool,
    /// With `undrain_after`: and move back the volumes that left it (docs/return.md).
    #[serde(default, rename = "return", skip_serializing_if = "std::ops::Not::not")]
    pub return_after: bool,
    /// Wait this long after a node is back before the slot goes to the next one.
    #[serde(default)]
    pub pause_ms: u64,
    /// A command still running after this long is killed (its whole process group) and
    /// the roll fails visibly (docs/roll.md, step 3). Specs of earlier builds: the default.
    #[serde(default = "default_exec_timeout_ms")]
    pub exec_timeout_ms: u64,
    /// When it was started (ms since the epoch; orders rolls that share a node).
    pub started_ms: u64,
    /// The node it was started from.
    pub started_by: NodeName,
}

impl RollSpec {
    /// A spec started by `a` at time 0, one node at a time, a 1 s pause: the fixture every
    /// roll test varies (`RollSpec { pause_ms: 0, ..RollSpec::for_tests(..) }`).
    #[cfg(test)]
    pub(crate) fn for_tests(nodes: &[&str], exec: Option<&str>, undrain_after: bool) -> Self {
        let name = |s: &str| s.parse::<NodeName>().expect("a test node name");
        Self {
            nodes: nodes.iter().map(|x| name(x)).collect(),
            max_unavailable: 1,
            exec: exec.map(str::to_owned),
            undrain_after,
            return_after: false,
            pause_ms: 1000,
            exec_timeout_ms: DEFAULT_EXEC_TIMEOUT_MS,
            started_ms: 0,
            started_by: name("a"),
        }
    }

    /// Why the spec cannot be run, if so (it came from the network or the command line).
    pub fn check(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a roll needs at least one node (--nodes a,b or --all)".into());
        }
        if self.nodes.len() > MAX_ROLL_NODES {
            return Err(format!("a roll has at most {MAX_ROLL_NODES} nodes, not {}", self.nodes.len()));
        }
        if self.max_unavailable == 0 {
            return Err("--max-unavailable must be at least 1".into());
        }
        if self.exec_timeout_ms == 0 {
            return Err("--exec-timeout must be longer than 0 (e.g. 30m)".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.nodes.iter().find(|n| !seen.insert(*n)) {
            return Err(format!("node {dup} is listed twice"));
        }
        Ok(())
    }
}

/// An operator's word on a roll, from any node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollAction {
    /// Run the failed step again and go on.
    Resume,
    /// Stop: nodes not started stay untouched, the node in progress comes back.
    Cancel,
}

/// The latest `resume`/`cancel` of a roll (every node republishes the latest it saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollCtl {
    /// Ordering key (hybrid logical clock, ms, like node requests).
    pub seq: u64,
    /// Unique id, breaks ties.
    pub nonce: String,
    /// What to do.
    pub action: RollAction,
    /// Who asked.
    pub issued_by: NodeName,
}

impl RollCtl {
    /// The later of two.
    pub fn later<'a>(a: Option<&'a RollCtl>, b: Option<&'a RollCtl>) -> Option<&'a RollCtl> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if (b.seq, &b.nonce) > (a.seq, &a.nonce) { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// Where one node is in a roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Not its turn yet, or no slot free.
    Pending,
    /// Asked for a slot of the availability lease; not unavailable yet.
    Claiming,
    /// Holds a slot; draining.
    Draining,
    /// Drained; the command runs.
    Exec,
    /// The command failed (or could not run): the roll stops here until resume or cancel.
    Failed,
    /// Asked to come back (undrain).
    Undraining,
    /// Without `--undrain-after`: waits for someone to undrain it, holding its slot.
    WaitActive,
    /// Back; waits `--pause` before giving the slot up.
    Pausing,
    /// Finished; slot given up.
    Done,
    /// The roll was cancelled; this node is back (or was never touched).
    Cancelled,
}

impl Step {
    /// Whether this node is finished with the roll.
    pub fn finished(self) -> bool {
        matches!(self, Step::Done | Step::Cancelled)
    }
}

/// A node's `rollstep/<id>` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// How many times the command ran.
    #[serde(default)]
    pub attempt: u32,
    /// The command's exit status (`None`: not run, killed by a signal, or could not run).
    #[serde(default)]
    pub exit: Option<i32>,
    /// The tail of its output (stdout then stderr), at most [`MAX_OUTPUT_TAIL`] bytes.
    #[serde(default)]
    pub output: String,
    /// Why it failed, in words.
    #[serde(default)]
    pub error: Option<String>,
    /// The `seq` of the last `rollctl` this node acted on.
    #[serde(default)]
    pub ctl_seq: u64,
    /// When the step began (ms).
    #[serde(default)]
    pub since_ms: u64,
    /// Until when it pauses (ms), in `pausing`.
    #[serde(default)]
    pub until_ms: u64,
}

impl StepRecord {
    /// A fresh record at `step`.
    pub fn at(step: Step, now_ms: u64) -> Self {
        StepRecord {
            step,
            attempt: 0,
            exit: None,
            output: String::new(),
            error: None,
            ctl_seq: 0,
            since_ms: now_ms,
            until_ms: 0,
        }
    }
}

/// One peer as gossip shows it to the roll machine (the local node included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peer {
    /// When this node last heard its heartbeat advance (ms, local clock).
    pub last_heard_ms: u64,
    /// Its lifecycle state.
    pub state: Option<NodeState>,
    /// Its slot record (claim and votes).
    pub slot: Option<SlotRecord>,
    /// Roll specs it publishes.
    pub specs: BTreeMap<String, RollSpec>,
    /// Its steps, by roll id.
    pub steps: BTreeMap<String, StepRecord>,
    /// The latest control it publishes, by roll id.
    pub ctls: BTreeMap<String, RollCtl>,
    /// Declared lost (docs/failures.md): neither votes nor is waited for.
    pub lost: bool,
}

/// What gossip shows, for one step of the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollInput {
    /// Every known node, by name.
    pub peers: BTreeMap<NodeName, Peer>,
}

/// How the roll machine keeps time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollTiming {
    /// A peer whose heartbeat has not advanced for this long is dead: its votes and claim
    /// no longer count, and a roll goes on without it.
    pub dead_after_ms: u64,
}

impl Default for RollTiming {
    fn default() -> Self {
        RollTiming { dead_after_ms: 10_000 }
    }
}

impl RollInput {
    /// Whether `node` is heard from within the timeout (the local node always is).
    pub fn alive(&self, node: &NodeName, me: &NodeName, now_ms: u64, timing: RollTiming) -> bool {
        node == me
            || self
                .peers
                .get(node)
                .is_some_and(|p| !p.lost && now_ms.saturating_sub(p.last_heard_ms) <= timing.dead_after_ms)
    }

    /// The latest control of roll `id` anyone publishes.
    pub fn ctl(&self, id: &str) -> Option<&RollCtl> {
        self.peers.values().filter_map(|p| p.ctls.get(id)).fold(None, |a, c| RollCtl::later(a, Some(c)))
    }

    /// Every roll spec anyone publishes (the first seen of an id wins; they are identical).
    pub fn specs(&self) -> BTreeMap<String, RollSpec> {
        let mut out = BTreeMap::new();
        for p in self.peers.values() {
            for (id, s) in &p.specs {
                out.entry(id.clone()).or_insert_with(|| s.clone());
            }
        }
        out
    }
}

/// The whole roll's state, derived from every node's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollPhase {
    /// Nodes are being rolled.
    Running,
    /// A node's step failed: no other node starts until `resume` or `cancel`.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Every node is done, or was skipped because it is dead.
    Done,
}

/// One node's line in `roll status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// The node.
    pub node: NodeName,
    /// Its step (`pending` when it published none yet).
    pub step: Step,
    /// Dead (not heard within the timeout) before it finished: the roll went on without it.
    pub skipped: bool,
    /// Its record, when it published one.
    pub record: Option<StepRecord>,
}

/// A roll as `roll status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollReport {
    /// Its id.
    pub id: String,
    /// The spec.
    pub spec: RollSpec,
    /// Derived state.
    pub phase: RollPhase,
    /// Each node, in roll order.
    pub nodes: Vec<NodeProgress>,
}

/// Derives a roll's state from what gossip shows (`me` is always alive to itself).
pub fn report(
    id: &str,
    spec: &RollSpec,
    input: &RollInput,
    me: &NodeName,
    now_ms: u64,
    timing: RollTiming,
) -> RollReport {
    let nodes: Vec<NodeProgress> = spec
        .nodes
        .iter()
        .map(|n| {
            let record = input.peers.get(n).and_then(|p| p.steps.get(id)).cloned();
            let step = record.as_ref().map_or(Step::Pending, |r| r.step);
            let skipped = !step.finished() && !input.alive(n, me, now_ms, timing);
            NodeProgress { node: n.clone(), step, skipped, record }
        })
        .collect();
    let cancelled = input.ctl(id).is_some_and(|c| c.action == RollAction::Cancel);
    let phase = if nodes.iter().all(|n| n.step.finished() || n.skipped) {
        if cancelled || nodes.iter().any(|n| n.step == Step::Cancelled) {
            RollPhase::Cancelled
        } else {
            RollPhase::Done
        }
    } else if cancelled {
        RollPhase::Cancelled
    } else if nodes.iter().any(|n| n.step == Step::Failed && !n.skipped) {
        RollPhase::Failed
    } else {
        RollPhase::Running
    };
    RollReport { id: id.to_owned(), spec: spec.clone(), phase, nodes }
}

/// Keeps the last [`MAX_OUTPUT_TAIL`] bytes of `out`, cut at a character boundary.
pub fn tail(out: &str) -> String {
    if out.len() <= MAX_OUTPUT_TAIL {
        return out.to_owned();
    }
    let mut start = out.len() - MAX_OUTPUT_TAIL;
    while !out.is_char_boundary(start) {
        start += 1;
    }
    out[start..].to_owned()
}
