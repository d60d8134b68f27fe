use super::*;
use crate::decide::model::{NodeName, VolumeId};

fn vid(s: &str) -> VolumeId {
    s.parse().unwrap()
}

fn node(s: &str) -> NodeName {
    s.parse().unwrap()
}

const T: Timing = Timing { settle_ms: 100, ready_timeout_ms: 10_000, retention_ms: 1_000, node_lost_after_ms: None };

fn tick(draining: bool, best: Option<&str>, planned: bool, holder: Option<HolderSignal>) -> SourceEvent {
    SourceEvent::Tick {
        draining,
        best_claimant: best.map(node),
        best_is_planned: planned,
        holder,
        gc: false,
        verify: false,
    }
}

/// A tick of a draining node with no claimant: what matters after the grant.
fn later(holder: Option<HolderSignal>, gc: bool, verify: bool) -> SourceEvent {
    SourceEvent::Tick { draining: true, best_claimant: None, best_is_planned: false, holder, gc, verify }
}

fn sig(alive: bool, progress: Option<(u64, HolderPhase)>, done: Option<u64>) -> Option<HolderSignal> {
    Some(HolderSignal { alive, progress, done, digest: None, lost: false, accept_data_loss: false })
}

#[test]
fn source_happy_path_deletes_only_after_done_and_retention() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    assert!(v.step(&tick(false, None, false, None), 0, &T).is_empty());
    assert_eq!(v.phase, SourcePhase::Held);
    v.step(&tick(true, None, false, None), 0, &T);
    assert_eq!((v.epoch, &v.phase), (1, &SourcePhase::Offered { since_ms: 0 }));
    // A claimant that is not the planned node waits for the settle window.
    assert!(v.step(&tick(true, Some("b"), false, None), 50, &T).is_empty());
    // The grant asks for the stop hook only: the export waits for its outcome.
    let fx = v.step(&tick(true, Some("b"), false, None), 100, &T);
    assert_eq!(fx, vec![SourceEffect::StopWorkload { epoch: 1 }]);
    assert!(matches!(v.phase, SourcePhase::Granted { exported: false, stopped: false, .. }));
    // A stale `stopped` (another epoch) opens nothing; the right one opens the export, once.
    assert!(v.step(&SourceEvent::WorkloadStopped { epoch: 0 }, 120, &T).is_empty());
    let fx = v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 120, &T);
    assert_eq!(fx, vec![SourceEffect::OpenExport { holder: node("b"), epoch: 1 }]);
    assert!(v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 130, &T).is_empty(), "asked twice");
    assert!(matches!(v.phase, SourcePhase::Granted { exported: false, stopped: true, .. }));
    // A stale confirmation (another epoch) changes nothing; the right one marks it exported.
    v.step(&SourceEvent::ExportOpened { epoch: 0 }, 150, &T);
    assert!(matches!(v.phase, SourcePhase::Granted { exported: false, .. }));
    v.step(&SourceEvent::ExportOpened { epoch: 1 }, 150, &T);
    assert_eq!(v.phase, SourcePhase::Granted { holder: node("b"), at_ms: 150, exported: true, stopped: true });
    // Holder preparing: nothing. Ready: cut over.
    assert!(v.step(&tick(true, None, false, sig(true, Some((1, HolderPhase::Preparing)), None)), 200, &T).is_empty());
    v.step(&tick(true, None, false, sig(true, Some((1, HolderPhase::Ready)), None)), 300, &T);
    assert_eq!(v.phase, SourcePhase::CutOver { holder: node("b"), at_ms: 300, verifying: false, verify_failed: None });
    // A done for another epoch is not accepted.
    assert!(v.step(&tick(true, None, false, sig(true, None, Some(0))), 400, &T).is_empty());
    let fx = v.step(&tick(true, None, false, sig(true, None, Some(1))), 500, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport]);
    assert!(!v.pending());
    assert!(v.step(&tick(true, None, false, None), 1_400, &T).is_empty(), "retention not over");
    assert_eq!(v.step(&tick(true, None, false, None), 1_500, &T), vec![SourceEffect::DeleteData]);
    assert_eq!(v.phase, SourcePhase::Deleted { holder: node("b") });
}

/// A volume offered by a `--verify` drain and cut over to `b` at epoch 1.
fn cut_over_with_verify() -> SourceVolume {
    let mut v = SourceVolume::new(&vid("v"), 10);
    let offer = later(None, false, true);
    v.step(&offer, 0, &T);
    assert!(v.verify, "the drain's --verify is fixed into the volume at the offer");
    v.step(&tick(true, Some("b"), true, None), 1, &T);
    v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 2, &T);
    v.step(&SourceEvent::ExportOpened { epoch: 1 }, 2, &T);
    v.step(&tick(true, None, false, sig(true, Some((1, HolderPhase::Ready)), None)), 3, &T);
    assert!(matches!(v.phase, SourcePhase::CutOver { .. }));
    v
}

fn done_with(digest: Option<&str>, verify: bool) -> SourceEvent {
    let holder = Some(HolderSignal {
        alive: true,
        progress: None,
        done: Some(1),
        digest: digest.map(str::to_owned),
        lost: false,
        accept_data_loss: false,
    });
    later(holder, false, verify)
}

#[test]
fn verify_hands_off_only_after_the_copy_here_matches() {
    let mut v = cut_over_with_verify();
    let fx = v.step(&done_with(Some("d1"), true), 10, &T);
    assert_eq!(fx, vec![SourceEffect::VerifyCopy { epoch: 1, digest: "d1".into() }]);
    // Further ticks while the check runs change nothing; a result for another epoch neither.
    assert!(v.step(&done_with(Some("d1"), true), 11, &T).is_empty());
    assert!(v.step(&SourceEvent::Verified { epoch: 0, result: Ok(()) }, 12, &T).is_empty());
    assert!(v.pending());
    let fx = v.step(&SourceEvent::Verified { epoch: 1, result: Ok(()) }, 13, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport]);
    assert_eq!(v.phase, SourcePhase::HandedOff { holder: node("b"), at_ms: 13 });
}

#[test]
fn a_failed_verify_keeps_the_copy_until_a_drain_without_verify_accepts_it() {
    let mut v = cut_over_with_verify();
    v.step(&done_with(Some("d1"), true), 10, &T);
    assert!(v.step(&SourceEvent::Verified { epoch: 1, result: Err("differs".into()) }, 11, &T).is_empty());
    assert!(matches!(&v.phase, SourcePhase::CutOver { verify_failed: Some(w), .. } if w == "differs"));
    // Never deleted, never re-checked on its own, whatever the time and gc say.
    for now in [100, 10_000, 1_000_000] {
        assert!(v.step(&done_with(Some("d1"), true), now, &T).is_empty());
        let gc = later(None, true, true);
        assert!(v.step(&gc, now, &T).is_empty());
    }
    assert!(v.pending(), "the node cannot become drained");
    // The operator accepts the holder's copy: a drain without --verify.
    assert_eq!(v.step(&done_with(Some("d1"), false), 2_000_000, &T), vec![SourceEffect::CloseExport]);
    assert!(matches!(v.phase, SourcePhase::HandedOff { .. }));
}

#[test]
fn verify_without_a_digest_from_the_holder_fails_with_the_reason() {
    let mut v = cut_over_with_verify();
    assert!(v.step(&done_with(None, true), 10, &T).is_empty());
    let SourcePhase::CutOver { verify_failed: Some(why), .. } = &v.phase else { panic!("{:?}", v.phase) };
    assert!(why.contains("b sent `done` without a digest") && why.contains("dm-clone"), "{why}");
}

#[test]
fn a_restarted_source_checks_again() {
    let mut v = cut_over_with_verify();
    v.step(&done_with(Some("d1"), true), 10, &T);
    // `verifying` is not persisted: what a restarted agent loads asks for the check again.
    let json = serde_json::to_string(&v).unwrap();
    let mut back: SourceVolume = serde_json::from_str(&json).unwrap();
    assert!(back.verify);
    assert_eq!(
        back.step(&done_with(Some("d1"), true), 20, &T),
        vec![SourceEffect::VerifyCopy { epoch: 1, digest: "d1".into() }]
    );
}

#[test]
fn planned_claimant_is_granted_without_waiting() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    let fx = v.step(&tick(true, Some("a"), true, None), 1, &T);
    assert_eq!(fx, vec![SourceEffect::StopWorkload { epoch: 1 }]);
}

#[test]
fn nothing_is_exported_without_the_workload_stopped_of_its_epoch() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    assert_eq!(v.step(&tick(true, Some("a"), true, None), 1, &T), vec![SourceEffect::StopWorkload { epoch: 1 }]);
    // The stop hook fails: the move stops; its late or repeated reports open nothing.
    assert_eq!(v.step(&SourceEvent::HookFailed("stop hook exited 1".into()), 2, &T), vec![SourceEffect::CloseExport]);
    assert!(v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 3, &T).is_empty());
    assert!(v.step(&SourceEvent::WorkloadStopped { epoch: 2 }, 3, &T).is_empty());
    // Retried (the operator drains again): a new epoch, a new stop; only its report counts.
    v.phase = SourcePhase::Held;
    v.step(&tick(true, None, false, None), 4, &T);
    assert_eq!(v.step(&tick(true, Some("a"), true, None), 5, &T), vec![SourceEffect::StopWorkload { epoch: 3 }]);
    assert!(v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 6, &T).is_empty(), "a stale stop");
    assert_eq!(
        v.step(&SourceEvent::WorkloadStopped { epoch: 3 }, 7, &T),
        vec![SourceEffect::OpenExport { holder: node("a"), epoch: 3 }]
    );
    // A grant revoked while its hook ran (the holder was lost): its stop opens nothing later.
    let mut w = SourceVolume::new(&vid("w"), 10);
    w.step(&tick(true, None, false, None), 0, &T);
    w.step(&tick(true, Some("a"), true, None), 1, &T);
    assert_eq!(w.step(&tick(true, None, false, sig(false, None, None)), 2, &T), vec![SourceEffect::CloseExport]);
    assert!(w.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 3, &T).is_empty());
    assert_eq!(w.phase, SourcePhase::Offered { since_ms: 2 });
}

#[test]
fn the_stop_outcome_is_kept_in_the_state_file_only_when_it_happened() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 1, &T);
    // Before the hook reports, the document is what the previous version wrote.
    let json = serde_json::to_string(&v.phase).unwrap();
    assert_eq!(json, r#"{"phase":"granted","holder":"a","at_ms":1,"exported":false}"#);
    v.step(&SourceEvent::WorkloadStopped { epoch: 1 }, 2, &T);
    let json = serde_json::to_string(&v.phase).unwrap();
    assert_eq!(json, r#"{"phase":"granted","holder":"a","at_ms":1,"exported":false,"stopped":true}"#);
    assert_eq!(serde_json::from_str::<SourcePhase>(&json).unwrap(), v.phase);
}

#[test]
fn holder_lost_before_cut_over_is_revoked_with_a_new_epoch() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 0, &T);
    let fx = v.step(&tick(true, None, false, sig(false, Some((1, HolderPhase::Preparing)), None)), 10, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport]);
    assert_eq!((v.epoch, &v.phase), (2, &SourcePhase::Offered { since_ms: 10 }));
}

#[test]
fn a_slow_stop_hook_is_not_a_timeout() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 0, &T);
    // The export is not open yet (the stop hook runs): no timeout however long it takes.
    assert!(v.step(&tick(true, None, false, sig(true, None, None)), T.ready_timeout_ms * 5, &T).is_empty());
    assert_eq!(v.epoch, 1);
}

#[test]
fn holder_failure_or_timeout_revokes() {
    for signal in
        [sig(true, Some((1, HolderPhase::Failed { reason: "disk full".into() })), None), sig(true, None, None)]
    {
        let mut v = SourceVolume::new(&vid("v"), 10);
        v.step(&tick(true, None, false, None), 0, &T);
        v.step(&tick(true, Some("a"), true, None), 0, &T);
        v.step(&SourceEvent::ExportOpened { epoch: 1 }, 0, &T);
        let now = if signal.as_ref().unwrap().progress.is_some() { 5 } else { T.ready_timeout_ms };
        assert_eq!(v.step(&tick(true, None, false, signal), now, &T), vec![SourceEffect::CloseExport]);
        assert_eq!(v.epoch, 2);
    }
}

#[test]
fn holder_lost_after_cut_over_is_stranded_never_revoked() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 0, &T);
    v.step(&tick(true, None, false, sig(true, Some((1, HolderPhase::Ready)), None)), 1, &T);
    for now in [10, T.ready_timeout_ms * 10] {
        assert!(v.step(&tick(true, None, false, sig(false, None, None)), now, &T).is_empty());
        assert!(v.stranded(false));
    }
    // Undrain after cut-over changes nothing: what has moved stays moved.
    assert!(v.step(&tick(false, None, false, sig(false, None, None)), 20, &T).is_empty());
    assert!(matches!(v.phase, SourcePhase::CutOver { .. }));
    assert_eq!(v.epoch, 1);
}

#[test]
fn undrain_before_cut_over_restarts_the_workload_here() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 0, &T);
    let fx = v.step(&tick(false, None, false, sig(true, Some((1, HolderPhase::Preparing)), None)), 5, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport, SourceEffect::StartWorkload]);
    assert_eq!((v.epoch, &v.phase), (2, &SourcePhase::Held));
    // An offer that was never granted just returns.
    let mut w = SourceVolume::new(&vid("w"), 10);
    w.step(&tick(true, None, false, None), 0, &T);
    assert!(w.step(&tick(false, None, false, None), 1, &T).is_empty());
    assert_eq!(w.phase, SourcePhase::Held);
}

#[test]
fn a_failed_hook_stops_the_move_and_deletes_nothing() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.step(&tick(true, None, false, None), 0, &T);
    v.step(&tick(true, Some("a"), true, None), 0, &T);
    let fx = v.step(&SourceEvent::HookFailed("stop hook exited 3".into()), 1, &T);
    assert_eq!(fx, vec![SourceEffect::CloseExport]);
    assert_eq!(v.phase, SourcePhase::Failed { reason: "stop hook exited 3".into() });
    assert!(v.step(&tick(true, Some("a"), true, None), 2, &T).is_empty(), "stays failed while draining");
    assert_eq!(v.step(&tick(false, None, false, None), 3, &T), vec![SourceEffect::StartWorkload]);
    assert_eq!(v.phase, SourcePhase::Held);
}

#[test]
fn gc_deletes_handed_off_copies_early() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.epoch = 3;
    v.phase = SourcePhase::HandedOff { holder: node("a"), at_ms: 0 };
    let gc = later(None, true, false);
    assert_eq!(v.step(&gc, 1, &T), vec![SourceEffect::DeleteData]);
}

#[test]
fn restart_reopens_exports_of_granted_and_cut_over_volumes() {
    let mut v = SourceVolume::new(&vid("v"), 10);
    v.epoch = 4;
    v.phase = SourcePhase::CutOver { holder: node("a"), at_ms: 0, verifying: false, verify_failed: None };
    assert_eq!(v.on_restart(), vec![SourceEffect::OpenExport { holder: node("a"), epoch: 4 }]);
    v.phase = SourcePhase::Held;
    assert!(v.on_restart().is_empty());
    // Granted: the export comes back without running the stop hook again once it succeeded
    // (or the export opened, which only follows it; state files of the previous version
    // have no `stopped`)...
    for (exported, stopped) in [(false, true), (true, true), (true, false)] {
        v.phase = SourcePhase::Granted { holder: node("a"), at_ms: 0, exported, stopped };
        assert_eq!(v.on_restart(), vec![SourceEffect::OpenExport { holder: node("a"), epoch: 4 }]);
    }
    // ...and a hook that never reported back (the agent stopped while it ran) runs again.
    v.phase = SourcePhase::Granted { holder: node("a"), at_ms: 0, exported: false, stopped: false };
    assert_eq!(v.on_restart(), vec![SourceEffect::StopWorkload { epoch: 4 }]);
    assert_eq!(
        v.step(&SourceEvent::WorkloadStopped { epoch: 4 }, 1, &T),
        vec![SourceEffect::OpenExport { holder: node("a"), epoch: 4 }]
    );
}

#[test]
fn holder_happy_path() {
    let (mut h, fx) = HolderVolume::granted(&vid("v"), &node("src"), 2, 10);
    assert_eq!(fx, vec![HolderEffect::PrepareClone]);
    assert!(
        h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 2, cut_over_to_me: true }))).is_empty(),
        "not ready yet"
    );
    h.step(&HolderEvent::CloneReady);
    assert_eq!(h.phase, HolderPhase::Ready);
    assert!(!h.workload_may_run());
    assert!(h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 2, cut_over_to_me: false }))).is_empty());
    assert_eq!(
        h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 2, cut_over_to_me: true }))),
        vec![HolderEffect::StartWorkload]
    );
    assert!(h.workload_may_run());
    h.step(&HolderEvent::Stalled(true));
    assert_eq!(h.phase, HolderPhase::Running { stalled: true });
    // A newer epoch after cut-over cannot happen by protocol and must not stop a running workload.
    assert!(h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 9, cut_over_to_me: false }))).is_empty());
    assert_eq!(h.step(&HolderEvent::Hydrated), vec![HolderEffect::Finalize]);
    h.step(&HolderEvent::Finalized);
    assert_eq!(h.phase, HolderPhase::Complete);
    assert!(!h.active());
}

#[test]
fn revoked_holder_discards_its_partial_clone() {
    for ready in [false, true] {
        let (mut h, _) = HolderVolume::granted(&vid("v"), &node("src"), 2, 10);
        if ready {
            h.step(&HolderEvent::CloneReady);
        }
        assert!(
            h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 1, cut_over_to_me: false }))).is_empty(),
            "older view"
        );
        assert_eq!(
            h.step(&HolderEvent::Tick(Some(SourceSignal { epoch: 3, cut_over_to_me: false }))),
            vec![HolderEffect::DiscardClone]
        );
        assert_eq!(h.phase, HolderPhase::Discarded);
    }
}

#[test]
fn holder_restart_resumes_or_starts_over() {
    let (mut h, _) = HolderVolume::granted(&vid("v"), &node("src"), 2, 10);
    h.phase = HolderPhase::Ready;
    assert_eq!(h.on_restart(), vec![HolderEffect::PrepareClone]);
    assert_eq!(h.phase, HolderPhase::Preparing);
    h.phase = HolderPhase::Running { stalled: true };
    assert_eq!(h.on_restart(), vec![HolderEffect::PrepareClone, HolderEffect::StartWorkload]);
}
