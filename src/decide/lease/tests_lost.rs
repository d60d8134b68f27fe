//! Lease transitions of lost nodes (docs/failures.md): a lost holder before and after
//! cut-over, with and without the operator's consent, never handed off to nor deleted
//! after; a holder whose source is lost, and the operator's verdict on its copy.

use super::*;
use crate::decide::model::{NodeName, VolumeId};

fn vid(s: &str) -> VolumeId {
    s.parse().unwrap()
}

fn node(s: &str) -> NodeName {
    s.parse().unwrap()
}

const T: Timing = Timing { settle_ms: 100, ready_timeout_ms: 10_000, retention_ms: 1_000, node_lost_after_ms: None };

fn tick(holder: HolderSignal, gc: bool) -> SourceEvent {
    SourceEvent::Tick {
        draining: true,
        best_claimant: None,
        best_is_planned: false,
        holder: Some(holder),
        gc,
        verify: false,
    }
}

fn signal(progress: Option<(u64, HolderPhase)>, done: Option<u64>, lost: bool, accept: bool) -> HolderSignal {
    HolderSignal { alive: !lost, progress, done, digest: None, lost, accept_data_loss: accept }
}

/// Granted to `b` at epoch 1, export open.
fn granted() -> SourceVolume {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.epoch = 1;
    v.phase = SourcePhase::Granted { holder: node("b"), at_ms: 0, exported: true, stopped: true };
    v
}

fn cut_over() -> SourceVolume {
    let mut v = granted();
    v.step(&tick(signal(Some((1, HolderPhase::Ready)), None, false, false), false), 5, &T);
    assert!(matches!(v.phase, SourcePhase::CutOver { .. }));
    v
}

#[test]
fn a_holder_declared_lost_before_cut_over_is_revoked_even_if_gossip_shows_it_alive() {
    let mut v = granted();
    let mut sig = signal(Some((1, HolderPhase::Ready)), None, true, false);
    sig.alive = true; // `--force` on a node the failure detector still sees
    let fx = v.step(&tick(sig, false), 10, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport]);
    assert_eq!((v.epoch, &v.phase), (2, &SourcePhase::Offered { since_ms: 10 }));
}

#[test]
fn a_holder_lost_after_cut_over_stays_stranded_without_consent_and_is_never_handed_off_to() {
    let mut v = cut_over();
    let before = v.clone();
    // Even its `done` (from before it was lost) does not hand the volume to a lost node.
    for (done, gc) in [(None, false), (Some(1), false), (Some(1), true)] {
        assert!(v.step(&tick(signal(None, done, true, false), gc), 50, &T).is_empty());
        assert_eq!(v, before);
    }
    assert!(v.stranded(false));
}

#[test]
fn with_consent_the_source_copy_is_the_volume_again_at_a_new_epoch() {
    let mut v = cut_over();
    let fx = v.step(&tick(signal(None, None, true, true), false), 50, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport, SourceEffect::StartWorkload]);
    assert_eq!((v.epoch, &v.phase), (2, &SourcePhase::Held));
    assert!(v.pending(), "the node is not drained while the volume is back here");
    // Still draining: it is offered again at once, to a live node (epoch 3).
    v.step(
        &SourceEvent::Tick {
            draining: true,
            best_claimant: None,
            best_is_planned: false,
            holder: None,
            gc: false,
            verify: false,
        },
        60,
        &T,
    );
    assert_eq!((v.epoch, &v.phase), (3, &SourcePhase::Offered { since_ms: 60 }));
}

#[test]
fn a_handed_off_copy_whose_new_owner_is_lost_is_never_deleted_and_comes_back_only_with_consent() {
    let mut v = cut_over();
    v.step(&tick(signal(None, Some(1), false, false), false), 10, &T);
    assert!(matches!(v.phase, SourcePhase::HandedOff { .. }));
    // The new owner is lost: the retained copy is the last one. Neither gc nor retention.
    for gc in [false, true] {
        assert!(v.step(&tick(signal(None, Some(1), true, false), gc), 5_000, &T).is_empty());
        assert!(matches!(v.phase, SourcePhase::HandedOff { .. }));
    }
    assert_eq!(v.step(&tick(signal(None, Some(1), true, true), false), 5_001, &T), vec![SourceEffect::StartWorkload]);
    assert_eq!((v.epoch, &v.phase), (2, &SourcePhase::Held));
}

fn running_holder() -> HolderVolume {
    let (mut h, _) = HolderVolume::granted(&vid("v"), &node("src"), 1, 10);
    h.step(&HolderEvent::CloneReady);
    h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 1, cut_over_to_me: true })));
    assert!(matches!(h.phase, HolderPhase::Running { .. }));
    h
}

#[test]
fn a_running_holder_whose_source_is_lost_is_incomplete_until_the_operator_decides() {
    let mut h = running_holder();
    assert_eq!(h.step(&HolderEvent::SourceLost), vec![HolderEffect::DeclareSourceLost]);
    assert!(h.step(&HolderEvent::SourceLost).is_empty(), "a second declaration changes nothing");
    h.step(&HolderEvent::SourceLostCounted { missing: 3, regions: 16 });
    assert_eq!(h.phase, HolderPhase::Incomplete { missing: 3, regions: 16, workload_started: true });
    assert!(h.workload_may_run(), "its workload keeps running on what is here");
    // Nothing else moves it: not a tick, not a newer epoch, not hydration.
    for ev in [HolderEvent::Tick(Some(SourceSignal { epoch: 9, cut_over_to_me: false })), HolderEvent::Hydrated] {
        assert!(h.step(&ev).is_empty());
    }
    let restarted = h.clone().on_restart();
    assert_eq!(
        restarted,
        vec![HolderEffect::PrepareClone, HolderEffect::DeclareSourceLost, HolderEffect::StartWorkload]
    );
    let mut kept = h.clone();
    assert_eq!(kept.step(&HolderEvent::AcceptPartial), vec![HolderEffect::AcceptPartial]);
    assert_eq!(kept.phase, HolderPhase::Running { stalled: false });
    assert!(kept.step(&HolderEvent::SourceLost).is_empty(), "an accepted copy is not made incomplete again");
    assert_eq!(kept.step(&HolderEvent::Hydrated), vec![HolderEffect::Finalize]);
    assert_eq!(h.step(&HolderEvent::DeletePartial), vec![HolderEffect::DiscardClone]);
    assert_eq!(h.phase, HolderPhase::Discarded);
}

#[test]
fn a_holder_not_yet_cut_over_whose_source_is_lost_fails_and_is_never_accepted() {
    for ready in [false, true] {
        let (mut h, _) = HolderVolume::granted(&vid("v"), &node("src"), 1, 10);
        if ready {
            h.step(&HolderEvent::CloneReady);
        }
        assert!(h.step(&HolderEvent::SourceLost).is_empty());
        assert_eq!(h.phase, HolderPhase::Failed { reason: "source src was declared lost before cut-over".into() });
        assert!(h.step(&HolderEvent::AcceptPartial).is_empty());
        assert_eq!(h.step(&HolderEvent::DeletePartial), vec![HolderEffect::DiscardClone]);
    }
}
