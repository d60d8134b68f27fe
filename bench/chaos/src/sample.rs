//! Sampling the fleet during a run (every 200 ms): each live agent's status and volume
//! list. From each node only what it says about itself counts as a claim to serve a
//! volume (owner in `held`/`offered`, or holder `running`/`finishing`/`complete`); two
//! nodes claiming one volume in two consecutive rounds is a second writer. Also: which
//! node observes, and whether the fleet shows a reason for a drain that does not end.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::fleet::Fleet;

/// The latest round's views and what was found across rounds.
#[derive(Default)]
pub struct Sampler {
    views: Vec<Option<(Value, Vec<Value>)>>,
    previous: BTreeSet<(String, String, String)>,
    /// Volumes two nodes claimed to serve in consecutive rounds, named.
    pub violations: Vec<String>,
    null: Value,
}

/// Holder phases in which the holder runs the workload.
const HOLDER_SERVES: [&str; 3] = ["running", "finishing", "complete"];
/// Owner phases in which the owner still runs the workload.
const OWNER_SERVES: [&str; 2] = ["held", "offered"];

impl Sampler {
    /// One round: every running agent's status and volumes; records second writers.
    pub fn sample(&mut self, fleet: &mut Fleet, dead: &BTreeSet<String>) {
        self.views = fleet
            .nodes
            .iter_mut()
            .map(|n| {
                if dead.contains(&n.name) || !n.running() {
                    return None;
                }
                Some((n.status()?, n.volumes()?))
            })
            .collect();
        let mut claims: Vec<(String, String)> = Vec::new();
        for (i, view) in self.views.iter().enumerate() {
            let Some((_, rows)) = view else { continue };
            let me = &fleet.nodes[i].name;
            for r in rows {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                let owns = r["owner"] == me.as_str() && OWNER_SERVES.iter().any(|p| r["phase"] == *p);
                let holds = r["holder"] == me.as_str() && HOLDER_SERVES.iter().any(|p| r["holder_phase"] == *p);
                if owns || holds {
                    claims.push((id, me.clone()));
                }
            }
        }
        let mut pairs = BTreeSet::new();
        for (a, (va, na)) in claims.iter().enumerate() {
            for (vb, nb) in &claims[a + 1..] {
                if va == vb && na != nb {
                    pairs.insert((va.clone(), na.clone(), nb.clone()));
                }
            }
        }
        for p in pairs.intersection(&self.previous) {
            let what = format!("{}: served by {} and {} (gossip claims, two rounds)", p.0, p.1, p.2);
            if !self.violations.contains(&what) {
                self.violations.push(what);
            }
        }
        self.previous = pairs;
    }

    /// The node whose view counts: the drain's issuer if it answers and is not the
    /// fault's target, else the first node that does.
    pub fn observer(&self, issuer: usize, target: Option<usize>, _dead: &BTreeSet<String>) -> Option<usize> {
        let ok = |i: usize| self.views.get(i).is_some_and(Option::is_some) && Some(i) != target;
        if ok(issuer) {
            return Some(issuer);
        }
        (0..self.views.len()).find(|&i| ok(i)).or_else(|| (0..self.views.len()).find(|&i| self.views[i].is_some()))
    }

    /// Node `i`'s volume rows.
    pub fn rows(&self, i: usize) -> Vec<Value> {
        self.views.get(i).and_then(|v| v.as_ref()).map(|(_, r)| r.clone()).unwrap_or_default()
    }

    /// Node `i`'s status.
    pub fn status(&self, i: usize) -> &Value {
        self.views.get(i).and_then(|v| v.as_ref()).map_or(&self.null, |(s, _)| s)
    }

    fn node(&self, i: usize, name: &str) -> Option<&Value> {
        self.status(i)["nodes"].as_array()?.iter().find(|n| n["name"] == name)
    }

    /// The state node `i` sees for `name`.
    pub fn node_state(&self, i: usize, name: &str) -> Option<String> {
        self.node(i, name)?["state"].as_str().map(str::to_owned)
    }

    /// Whether node `i` sees `name` alive.
    pub fn node_alive(&self, i: usize, name: &str) -> Option<bool> {
        self.node(i, name)?["alive"].as_bool()
    }

    /// One line: node1's state and each volume's phase, holder and flags, as node `i` sees.
    pub fn describe(&self, i: usize) -> String {
        let state = self.node_state(i, "node1").unwrap_or_else(|| "?".to_owned());
        let nodes: Vec<String> = self.status(i)["nodes"]
            .as_array()
            .map(|ns| {
                ns.iter()
                    .filter(|n| n["alive"] == false)
                    .map(|n| format!("{} dead", n["name"].as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        let rows: Vec<String> = self
            .rows(i)
            .iter()
            .map(|r| {
                let mut flags = String::new();
                for f in ["stranded", "stalled"] {
                    if r[f] == true {
                        flags.push_str(&format!(" {f}"));
                    }
                }
                if let Some(why) = row_reason(r) {
                    flags.push_str(&format!(" ({why})"));
                }
                format!(
                    "{} owner={} {}/{} holder={} {}/{}{flags}",
                    r["id"].as_str().unwrap_or("?"),
                    r["owner"].as_str().unwrap_or("?"),
                    r["phase"].as_str().unwrap_or("?"),
                    r["holder_phase"].as_str().unwrap_or("-"),
                    r["holder"].as_str().unwrap_or("-"),
                    r["hydrated"],
                    r["total"],
                )
            })
            .collect();
        format!("node1 {state} (seen by node{}); {}; {}", i + 1, rows.join("; "), nodes.join(", "))
    }
}

/// A volume row's reason, if it gives one: a note, an error, stranded, stalled, or a
/// phase that names the trouble (`incomplete`, `failed`, `lost`).
fn row_reason(r: &Value) -> Option<String> {
    for key in ["note", "reason"] {
        if let Some(s) = r[key].as_str().filter(|s| !s.trim().is_empty()) {
            return Some(s.to_owned());
        }
    }
    if !r["error"].is_null() {
        return Some(match &r["error"] {
            Value::String(s) => s.clone(),
            v => v.get("message").and_then(Value::as_str).map_or_else(|| v.to_string(), str::to_owned),
        });
    }
    if r["stranded"] == true {
        return Some(format!("stranded on {}", r["holder"].as_str().unwrap_or("?")));
    }
    if r["stalled"] == true {
        return Some("stalled".to_owned());
    }
    for key in ["phase", "holder_phase"] {
        if let Some(p) = r[key].as_str().filter(|p| ["incomplete", "failed", "lost"].iter().any(|w| p.contains(w))) {
            return Some(format!("{key} {p}"));
        }
    }
    None
}

/// The reason the fleet shows for a drain that has not ended: a volume's (see
/// [`row_reason`]) or a node's note in `status`.
pub fn visible_reason(status: &Value, rows: &[Value]) -> Option<String> {
    if let Some(r) =
        rows.iter().find_map(|r| row_reason(r).map(|why| format!("{}: {why}", r["id"].as_str().unwrap_or("?"))))
    {
        return Some(r);
    }
    status["nodes"].as_array()?.iter().find_map(|n| {
        let note = n["note"].as_str().filter(|s| !s.trim().is_empty())?;
        Some(format!("{}: {note}", n["name"].as_str().unwrap_or("?")))
    })
}
