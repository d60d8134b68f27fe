//! The lease property test: any interleaving of source ticks, holder ticks on stale
//! views, data-plane events, restarts, time, and lost-node declarations (of a holder or
//! the source, with or without `--accept-data-loss`, twice), lost nodes coming back
//! fenced, and the operator's verdict on an incomplete copy (docs/lease-protocol.md,
//! docs/failures.md).

use proptest::prelude::*;

use super::*;
use crate::decide::model::{NodeName, VolumeId};

fn vid(s: &str) -> VolumeId {
    s.parse().unwrap()
}

fn node(s: &str) -> NodeName {
    s.parse().unwrap()
}

const T: Timing = Timing { settle_ms: 100, ready_timeout_ms: 10_000, retention_ms: 1_000, node_lost_after_ms: None };

/// One step of a randomised run: which actor does what.
#[derive(Debug, Clone)]
enum Op {
    /// The source ticks; `claimant` picks among holders; `stale` picks how old a view of
    /// each holder the source gets; `alive` masks holder liveness.
    Source { draining: bool, claimant: usize, planned: bool, alive: [bool; 3], stale: usize },
    /// Holder `h` sees a view of the source `stale` steps old.
    HolderTick { h: usize, stale: usize },
    /// Holder `h` gets a data-plane event.
    Data { h: usize, kind: u8 },
    /// The source's data plane reports: its next report in order (`kind` 0: the stop hook
    /// succeeded, or the export opened), every report it owes, also those that follow from
    /// them (1: a fast data plane), that stop hook failed instead (2), or a stale stop of
    /// the epoch asked `stale` stops ago (3).
    SourceData { kind: u8, stale: usize },
    /// The source agent restarts from its state file (what it persisted) and
    /// re-establishes what its lease says.
    SourceRestart,
    /// Time passes.
    Wait(u64),
    /// An operator declares holder `who` (0-2) or the source (3) lost, with or without
    /// `--accept-data-loss`; declaring twice merges.
    Declare { who: usize, accept: bool },
    /// Lost holder `h` comes back and learns it was declared lost: fenced, its copy set
    /// aside (kept), its workload stopped.
    Return { h: usize },
    /// The operator keeps (`accept`) or deletes holder `h`'s incomplete copy.
    Partial { h: usize, accept: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), 0usize..3, any::<bool>(), any::<[bool; 3]>(), 0usize..4).prop_map(|(d, c, p, a, s)| {
            Op::Source { draining: d || c == 0, claimant: c, planned: p, alive: a, stale: s }
        }),
        2 => (0usize..3, 0usize..4).prop_map(|(h, s)| Op::HolderTick { h, stale: s }),
        3 => (0usize..3, 0u8..5).prop_map(|(h, k)| Op::Data { h, kind: k }),
        3 => (0u8..4, 0usize..3).prop_map(|(kind, stale)| Op::SourceData { kind, stale }),
        1 => Just(Op::SourceRestart),
        1 => (1u64..5_000).prop_map(Op::Wait),
        1 => (0usize..4, any::<bool>()).prop_map(|(who, accept)| Op::Declare { who, accept }),
        1 => (0usize..3).prop_map(|h| Op::Return { h }),
        1 => (0usize..3, any::<bool>()).prop_map(|(h, accept)| Op::Partial { h, accept }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    /// Whatever the interleaving and however stale each side's view: at most one live
    /// (not declared lost) holder ever runs the workload, it is the one the source cut
    /// over to at its epoch, the source never runs the workload while a live holder may,
    /// the source deletes only after that holder is complete and not lost (never the last
    /// copy), a cut-over copy goes back to the source only with `--accept-data-loss`, a
    /// copy the workload ran on is dropped only by the operator's delete, and no export is
    /// asked for an epoch before the `WorkloadStopped` of that epoch (restarts included).
    #[test]
    fn safety_holds_under_any_interleaving(ops in proptest::collection::vec(op(), 1..120)) {
        let names = ["h0", "h1", "h2"];
        let mut src = SourceVolume::new(&vid("v"), 10);
        let mut holders: [Option<HolderVolume>; 3] = [None, None, None];
        let mut src_history: Vec<SourceVolume> = vec![src.clone()];
        let mut holder_history: Vec<[Option<HolderVolume>; 3]> = vec![holders.clone()];
        let mut source_running = true;
        // Epochs the source asked to stop, those whose stop was reported, and the reports
        // its data plane still owes, in order.
        let mut stops_asked: Vec<u64> = vec![];
        let mut stopped: std::collections::BTreeSet<u64> = Default::default();
        let mut owed: std::collections::VecDeque<SourceEvent> = Default::default();
        let mut now = 0u64;
        // Declarations: per holder `Some(accept)`, and whether the source is lost.
        let mut lost: [Option<bool>; 3] = [None; 3];
        let mut source_lost = false;
        let mut ops: std::collections::VecDeque<Op> = ops.into();
        while let Some(op) = ops.pop_front() {
            let mut effects = vec![];
            let mut again = None;
            let src_before = src.clone();
            let holders_before = holders.clone();
            let deleting = matches!(op, Op::Partial { accept: false, .. });
            match op {
                Op::Declare { who: 3, .. } => source_lost = true,
                Op::Declare { who, accept } => {
                    let was = lost[who].unwrap_or(false);
                    lost[who] = Some(was || accept);
                }
                Op::Return { h } => {
                    if lost[h].is_some() {
                        holders[h] = None;
                    }
                }
                Op::Partial { h, accept } => {
                    if let Some(v) = holders[h].as_mut().filter(|_| source_lost) {
                        v.step(if accept { &HolderEvent::AcceptPartial } else { &HolderEvent::DeletePartial });
                    }
                }
                // A lost source does nothing any more.
                Op::Source { .. } | Op::SourceData { .. } | Op::SourceRestart if source_lost => {}
                Op::Source { draining, claimant, planned, alive, stale } => {
                    let seen = &holder_history[holder_history.len().saturating_sub(1 + stale)];
                    let holder = src.holder().and_then(|h| names.iter().position(|n| *n == h)).map(|i| HolderSignal {
                        alive: alive[i],
                        progress: seen[i].as_ref().map(|v| (v.epoch, v.phase.clone())),
                        done: seen[i].as_ref().filter(|v| v.phase == HolderPhase::Complete).map(|v| v.epoch),
                        digest: None,
                        lost: lost[i].is_some(),
                        accept_data_loss: lost[i] == Some(true),
                    });
                    // Draining never starts before a claimant, so only the claimant's own
                    // liveness matters; a lost one is not a claimant.
                    let claimant = if lost[claimant].is_some() { (claimant + 1) % 3 } else { claimant };
                    let ev = SourceEvent::Tick {
                        draining,
                        best_claimant: Some(node(names[claimant])),
                        best_is_planned: planned,
                        holder,
                        gc: false,
                        verify: false,
                    };
                    effects = src.step(&ev, now, &T);
                    src_history.push(src.clone());
                }
                Op::HolderTick { h, stale } => {
                    let seen = &src_history[src_history.len().saturating_sub(1 + stale)];
                    if let Some(v) = holders[h].as_mut() {
                        let signal = SourceSignal {
                            epoch: seen.epoch,
                            cut_over_to_me: matches!(&seen.phase, SourcePhase::CutOver { holder, .. } | SourcePhase::HandedOff { holder, .. } if holder == names[h]),
                        };
                        v.step(&HolderEvent::Tick(Some(signal)));
                        if source_lost {
                            v.step(&HolderEvent::SourceLost);
                            v.step(&HolderEvent::SourceLostCounted { missing: 1, regions: 2 });
                        }
                    }
                }
                Op::Data { h, kind } => {
                    if let Some(v) = holders[h].as_mut() {
                        let ev = match kind {
                            0 => HolderEvent::CloneReady,
                            1 => HolderEvent::CloneFailed("boom".into()),
                            2 => HolderEvent::Hydrated,
                            3 => HolderEvent::Finalized,
                            _ => HolderEvent::Stalled(true),
                        };
                        v.step(&ev);
                    }
                }
                Op::SourceData { kind, stale } => {
                    let ev = match kind {
                        0 => owed.pop_front(),
                        1 => {
                            again = Some(Op::SourceData { kind, stale });
                            owed.pop_front()
                        }
                        2 => owed.pop_front().map(|ev| match ev {
                            SourceEvent::WorkloadStopped { .. } => SourceEvent::HookFailed("stop hook exited 1".into()),
                            other => other,
                        }),
                        _ => stops_asked
                            .len()
                            .checked_sub(1 + stale)
                            .map(|i| SourceEvent::WorkloadStopped { epoch: stops_asked[i] }),
                    };
                    if let Some(SourceEvent::WorkloadStopped { epoch }) = &ev {
                        stopped.insert(*epoch);
                    }
                    if let Some(ev) = ev {
                        effects = src.step(&ev, now, &T);
                    }
                    src_history.push(src.clone());
                }
                Op::SourceRestart => {
                    // What the data plane was doing is lost with the process.
                    owed.clear();
                    src = serde_json::from_str(&serde_json::to_string(&src).unwrap()).unwrap();
                    effects = src.on_restart();
                    src_history.push(src.clone());
                }
                Op::Wait(ms) => now += ms,
            }
            for fx in effects {
                match fx {
                    SourceEffect::StopWorkload { epoch } => {
                        source_running = false;
                        stops_asked.push(epoch);
                        owed.push_back(SourceEvent::WorkloadStopped { epoch });
                    }
                    SourceEffect::StartWorkload => source_running = true,
                    SourceEffect::OpenExport { epoch, .. } => {
                        prop_assert!(stopped.contains(&epoch), "export of epoch {} asked before its WorkloadStopped", epoch);
                        prop_assert_eq!(epoch, src.epoch);
                        owed.push_back(SourceEvent::ExportOpened { epoch });
                    }
                    SourceEffect::DeleteData => {
                        let h = src.holder().and_then(|h| names.iter().position(|n| *n == h)).unwrap();
                        let hv = holders[h].as_ref().expect("deleting with no holder");
                        prop_assert_eq!(&hv.phase, &HolderPhase::Complete);
                        prop_assert_eq!(hv.epoch, src.epoch);
                        prop_assert!(lost[h].is_none(), "the last copy deleted: its new owner {} is lost", h);
                    }
                    _ => {}
                }
            }
            if let Some(op) = again.filter(|_| !owed.is_empty()) {
                ops.push_front(op);
            }
            // A grant is acted on by its holder once its export is open (advertised,
            // as the core does), at once; the others see it later or never.
            if let SourcePhase::Granted { holder, exported: true, .. } = &src.phase {
                let i = names.iter().position(|n| n == holder).unwrap();
                if lost[i].is_none() && holders[i].as_ref().is_none_or(|v| v.epoch < src.epoch && !v.workload_may_run()) {
                    holders[i] = Some(HolderVolume::granted(&vid("v"), &node("src"), src.epoch, 10).0);
                }
            }
            holder_history.push(holders.clone());
            // Data is given up only with the operator's flag: a cut-over copy goes back to
            // the source only with --accept-data-loss, and a copy the workload ran on is
            // discarded only by the operator's delete.
            let was_out = matches!(src_before.phase, SourcePhase::CutOver { .. } | SourcePhase::HandedOff { .. });
            if was_out && src.phase == SourcePhase::Held {
                let h = src_before.holder().and_then(|h| names.iter().position(|n| *n == h)).unwrap();
                prop_assert_eq!(lost[h], Some(true), "a cut-over volume went back to the source without the flag");
            }
            for (b, a) in holders_before.iter().zip(&holders) {
                if let (Some(b), Some(a)) = (b, a) {
                    prop_assert!(
                        !(b.workload_may_run() && a.phase == HolderPhase::Discarded) || deleting,
                        "a copy the workload ran on was discarded"
                    );
                }
            }
            let live = |i: usize| lost[i].is_none();
            let running: Vec<&HolderVolume> = holders
                .iter()
                .enumerate()
                .filter(|(i, v)| live(*i) && v.as_ref().is_some_and(HolderVolume::workload_may_run))
                .filter_map(|(_, v)| v.as_ref())
                .collect();
            prop_assert!(running.len() <= 1, "two live holders run the workload: {:?}", running);
            if source_lost {
                continue;
            }
            if let Some(r) = running.first() {
                prop_assert!(!source_running, "source and holder both run the workload");
                prop_assert_eq!(src.holder().map(NodeName::as_str), Some(names.iter().find(|n| **n == names[holders.iter().position(|x| x.as_ref() == Some(*r)).unwrap()]).copied().unwrap()));
                prop_assert_eq!(r.epoch, src.epoch);
            }
        }
    }
}
