//! The faults a run injects and the seeded plan of one: which fault, when in the drain,
//! for how long (docs/chaos.md, "Faults").

use rand::{Rng, SeedableRng};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the source's agent, back after a delay.
    KillSource,
    /// `kill -9` of the holder's agent, back after a delay.
    KillHolder,
    /// `kill -9` of an agent neither source nor holder, back after a delay.
    KillThird,
    /// The source node dies for good (every process in its namespace), then `node lost`.
    LoseSource,
    /// The holder node dies for good, then `node lost` (with `--accept-data-loss` after
    /// cut-over).
    LoseHolder,
    /// A third node dies for good, then `node lost`.
    LoseThird,
    /// The holder's agent restarts (SIGTERM, started again at once).
    RestartHolder,
    /// 5 % packet loss on the source's and the holder's links for a window.
    Loss5,
    /// 30 % packet loss on the source's and the holder's links for a window.
    Loss30,
    /// Source and holder cannot reach each other for a window.
    Partition,
}

/// Every fault, in the table's order.
pub const ALL: [Fault; 10] = [
    Fault::KillSource,
    Fault::KillHolder,
    Fault::KillThird,
    Fault::LoseSource,
    Fault::LoseHolder,
    Fault::LoseThird,
    Fault::RestartHolder,
    Fault::Loss5,
    Fault::Loss30,
    Fault::Partition,
];

impl Fault {
    /// The name `FAULTS=` takes and the table prints.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillSource => "kill-source",
            Fault::KillHolder => "kill-holder",
            Fault::KillThird => "kill-third",
            Fault::LoseSource => "lose-source",
            Fault::LoseHolder => "lose-holder",
            Fault::LoseThird => "lose-third",
            Fault::RestartHolder => "restart-holder",
            Fault::Loss5 => "loss-5",
            Fault::Loss30 => "loss-30",
            Fault::Partition => "partition",
        }
    }

    /// Parses a name of [`Fault::name`].
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
            anyhow::anyhow!("unknown fault {s:?}: FAULTS takes a comma list of {}", names.join(", "))
        })
    }

    /// Which role the fault hits.
    pub fn role(self) -> Role {
        match self {
            Fault::KillSource | Fault::LoseSource => Role::Source,
            Fault::KillHolder | Fault::LoseHolder | Fault::RestartHolder => Role::Holder,
            Fault::KillThird | Fault::LoseThird => Role::Third,
            Fault::Loss5 | Fault::Loss30 | Fault::Partition => Role::Pair,
        }
    }

    /// The node never comes back (the run then declares it lost).
    pub fn permanent(self) -> bool {
        matches!(self, Fault::LoseSource | Fault::LoseHolder | Fault::LoseThird)
    }
}

/// Who a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// node1, the node drained.
    Source,
    /// The first volume's holder.
    Holder,
    /// A node neither the source nor a holder.
    Third,
    /// The source and the first volume's holder together.
    Pair,
}

/// When in the drain the fault hits.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub enum Moment {
    /// This long after the drain was issued (around the grant and the cut-over).
    Early {
        /// Milliseconds after the drain request.
        ms: u64,
    },
    /// Once the first volume has fetched this share of its data.
    Hydrating {
        /// Share of the seeded bytes fetched, 0..1.
        share: f64,
    },
}

/// One run's draw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// The fault's name.
    pub fault: &'static str,
    /// The seed everything was drawn from.
    pub seed: u64,
    /// When it hits.
    pub moment: Moment,
    /// Kill faults: how long until the agent is back; loss and partition: the window.
    pub duration_ms: u64,
    /// Which node issues the drain (index, not the source).
    pub issuer: usize,
}

/// Draws the plan of a run of `fault` from `seed`.
pub fn plan(fault: Fault, seed: u64, nodes: usize) -> Plan {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let moment = if rng.random_bool(0.35) {
        Moment::Early { ms: rng.random_range(0..2500) }
    } else {
        Moment::Hydrating { share: rng.random_range(0.05..0.85) }
    };
    let duration_ms = match fault {
        Fault::RestartHolder => 0,
        Fault::Loss5 | Fault::Loss30 | Fault::Partition => rng.random_range(2000..8000),
        _ => rng.random_range(1000..8000),
    };
    let issuer = rng.random_range(1..nodes);
    Plan { fault: fault.name(), seed, moment, duration_ms, issuer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_plan_and_every_name_parses_back() {
        for f in ALL {
            assert_eq!(Fault::parse(f.name()).unwrap(), f);
            let (a, b) = (plan(f, 42, 4), plan(f, 42, 4));
            assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
            assert!((1..4).contains(&a.issuer), "the source never issues its own drain: {a:?}");
        }
        let err = Fault::parse("kill-everything").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown fault \"kill-everything\": FAULTS takes a comma list of kill-source,"),
            "{err}"
        );
    }
}
