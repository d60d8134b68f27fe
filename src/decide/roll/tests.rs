//! One test per transition of the roll machine and the lease (docs/roll.md).

use super::machine::RESTARTED_NOTE;
use super::*;
use crate::decide::node::NodeState;

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn spec(nodes: &[&str], exec: Option<&str>, undrain: bool) -> RollSpec {
    RollSpec::for_tests(nodes, exec, undrain)
}
fn machine(me: &str) -> RollMachine {
    RollMachine { me: n(me), timing: RollTiming { dead_after_ms: 5000 }, state: RollState::default() }
}

fn peer(m: &RollMachine, state: NodeState, now: u64) -> Peer {
    let s = &m.state;
    Peer {
        last_heard_ms: now,
        state: Some(state),
        slot: Some(SlotRecord { claim: s.claim, votes: s.votes.clone() }),
        specs: s.specs.clone(),
        steps: s.steps.clone(),
        ctls: s.ctls.clone(),
        lost: false,
    }
}

fn input(ms: &[(&RollMachine, NodeState)], now: u64) -> RollInput {
    RollInput { peers: ms.iter().map(|(m, st)| (m.me.clone(), peer(m, *st, now))).collect() }
}

fn step(m: &mut RollMachine) -> Step {
    m.state.steps["r"].step
}

#[test]
fn a_node_walks_every_step_and_reports_its_command() {
    let mut a = machine("a");
    let b = machine("b");
    let inp = input(&[(&b, NodeState::Active)], 0);
    a.step(RollEvent::Start { id: "r".into(), spec: spec(&["a"], Some("upgrade"), true) }, &inp, NodeState::Active, 0);
    assert_eq!(step(&mut a), Step::Claiming);
    assert_eq!(a.state.claim, Some(Claim { slot: 0, epoch: 1 }));
    // One vote of two is no majority; b's vote makes it.
    assert!(a.step(RollEvent::Tick, &inp, NodeState::Active, 10).is_empty());
    let mut b = b;
    let inp = input(&[(&a, NodeState::Active)], 20);
    b.step(RollEvent::Tick, &inp, NodeState::Active, 20);
    assert_eq!(b.state.votes[&0], Vote { claimant: n("a"), epoch: 1 });
    let inp = input(&[(&b, NodeState::Active)], 30);
    assert_eq!(a.step(RollEvent::Tick, &inp, NodeState::Active, 30), vec![RollEffect::Drain]);
    assert_eq!(step(&mut a), Step::Draining);
    assert!(a.step(RollEvent::Tick, &inp, NodeState::Draining, 40).is_empty());
    let fx = a.step(RollEvent::Tick, &inp, NodeState::Drained, 50);
    assert_eq!(fx, vec![RollEffect::Exec { roll: "r".into(), attempt: 1, command: "upgrade".into() }]);
    let mut restarted = a.clone();
    assert_eq!(restarted.restart(55), vec![RollEffect::Undrain], "a restart takes the command as done");
    let r = &restarted.state.steps["r"];
    assert_eq!((r.step, r.exit, r.output.as_str()), (Step::Undraining, None, RESTARTED_NOTE));
    let done =
        RollEvent::ExecDone { roll: "r".into(), attempt: 1, exit: Some(0), output: "x".repeat(5000), error: None };
    assert_eq!(a.step(done, &inp, NodeState::Drained, 60), vec![RollEffect::Undrain]);
    assert_eq!(a.state.steps["r"].output.len(), MAX_OUTPUT_TAIL);
    assert_eq!(step(&mut a), Step::Undraining);
    a.step(RollEvent::Tick, &inp, NodeState::Active, 70);
    assert_eq!(step(&mut a), Step::Pausing);
    assert!(a.state.claim.is_some(), "the slot is held through the pause");
    a.step(RollEvent::Tick, &inp, NodeState::Active, 1069);
    assert_eq!(step(&mut a), Step::Pausing);
    a.step(RollEvent::Tick, &inp, NodeState::Active, 1070);
    assert_eq!(step(&mut a), Step::Done);
    assert_eq!(a.state.claim, None);
}

#[test]
fn a_failed_command_stops_the_roll_until_resume() {
    let mut a = machine("a");
    a.state.specs.insert("r".into(), spec(&["a", "b"], Some("false"), false));
    let mut rec = StepRecord::at(Step::Exec, 0);
    rec.attempt = 1;
    a.state.steps.insert("r".into(), rec);
    a.state.claim = Some(Claim { slot: 0, epoch: 3 });
    let inp = RollInput::default();
    let done =
        RollEvent::ExecDone { roll: "r".into(), attempt: 1, exit: Some(3), output: "boom\n".into(), error: None };
    assert!(a.step(done, &inp, NodeState::Drained, 5).is_empty());
    let r = &a.state.steps["r"];
    assert_eq!((r.step, r.exit, r.output.as_str()), (Step::Failed, Some(3), "boom\n"));
    assert_eq!(r.error.as_deref(), Some("--exec exited with status 3"));
    // b sees the failure and does not start.
    let mut b = machine("b");
    let inp = input(&[(&a, NodeState::Drained)], 10);
    b.step(RollEvent::Tick, &inp, NodeState::Active, 10);
    assert_eq!(b.state.steps["r"].step, Step::Pending);
    assert_eq!(b.state.claim, None);
    let rep = report(
        "r",
        &a.state.specs["r"],
        &input(&[(&a, NodeState::Drained), (&b, NodeState::Active)], 10),
        &n("b"),
        10,
        b.timing,
    );
    assert_eq!(rep.phase, RollPhase::Failed);
    // Resume from b reaches a through gossip: the command runs again.
    let ctl = RollCtl { seq: 100, nonce: "x".into(), action: RollAction::Resume, issued_by: n("b") };
    b.step(RollEvent::Ctl { id: "r".into(), ctl }, &inp, NodeState::Active, 20);
    let fx = a.step(RollEvent::Tick, &input(&[(&b, NodeState::Active)], 30), NodeState::Drained, 30);
    assert_eq!(fx, vec![RollEffect::Exec { roll: "r".into(), attempt: 2, command: "false".into() }]);
    // The same resume seen again changes nothing.
    let fx = a.step(RollEvent::Tick, &input(&[(&b, NodeState::Active)], 40), NodeState::Drained, 40);
    assert!(fx.is_empty());
}

#[test]
fn cancel_brings_the_node_in_progress_back_and_stops_the_others() {
    let mut a = machine("a");
    a.state.specs.insert("r".into(), spec(&["a", "b"], None, false));
    a.state.steps.insert("r".into(), StepRecord::at(Step::Draining, 0));
    a.state.claim = Some(Claim { slot: 0, epoch: 1 });
    let mut b = machine("b");
    let ctl = RollCtl { seq: 9, nonce: "c".into(), action: RollAction::Cancel, issued_by: n("b") };
    b.step(
        RollEvent::Start { id: "r".into(), spec: a.state.specs["r"].clone() },
        &RollInput::default(),
        NodeState::Active,
        0,
    );
    b.step(RollEvent::Ctl { id: "r".into(), ctl }, &RollInput::default(), NodeState::Active, 1);
    assert_eq!(b.state.steps["r"].step, Step::Cancelled);
    let inp = input(&[(&b, NodeState::Active)], 2);
    assert_eq!(a.step(RollEvent::Tick, &inp, NodeState::Draining, 2), vec![RollEffect::Undrain]);
    assert!(a.state.claim.is_some(), "held until the node is active again");
    a.step(RollEvent::Tick, &inp, NodeState::Active, 3);
    assert_eq!(a.state.steps["r"].step, Step::Cancelled);
    assert_eq!(a.state.claim, None);
    let all = input(&[(&a, NodeState::Active), (&b, NodeState::Active)], 3);
    assert_eq!(report("r", &a.state.specs["r"], &all, &n("a"), 3, a.timing).phase, RollPhase::Cancelled);
}

#[test]
fn the_lower_claim_wins_and_the_loser_backs_off() {
    let mut a = machine("a");
    let mut b = machine("b");
    let s = spec(&["a", "b"], None, true);
    let mut s2 = s.clone();
    s2.nodes.reverse();
    a.step(RollEvent::Start { id: "r".into(), spec: s }, &RollInput::default(), NodeState::Active, 0);
    b.step(RollEvent::Start { id: "q".into(), spec: s2 }, &RollInput::default(), NodeState::Active, 0);
    assert_eq!(a.state.claim, Some(Claim { slot: 0, epoch: 1 }));
    assert_eq!(b.state.claim, Some(Claim { slot: 0, epoch: 1 }));
    // Each sees the other's claim: (1, a) < (1, b), so b backs off.
    let ia = input(&[(&b, NodeState::Active)], 5);
    let ib = input(&[(&a, NodeState::Active)], 5);
    a.step(RollEvent::Tick, &ia, NodeState::Active, 5);
    b.step(RollEvent::Tick, &ib, NodeState::Active, 5);
    assert_eq!(b.state.claim, None);
    assert_eq!(b.state.steps["q"].step, Step::Pending);
    assert_eq!(b.state.votes[&0], Vote { claimant: n("a"), epoch: 1 });
    let fx = a.step(RollEvent::Tick, &input(&[(&b, NodeState::Active)], 6), NodeState::Active, 6);
    assert_eq!(fx, vec![RollEffect::Drain]);
    // b waits while a's claim is live, though it is b's turn in roll q.
    b.step(RollEvent::Tick, &input(&[(&a, NodeState::Draining)], 7), NodeState::Active, 7);
    assert_eq!(b.state.claim, None);
}

#[test]
fn a_dead_holder_loses_its_slot_and_is_skipped() {
    let mut a = machine("a");
    let mut b = machine("b");
    let mut c = machine("c");
    let s = spec(&["a", "b"], None, true);
    a.step(RollEvent::Start { id: "r".into(), spec: s }, &RollInput::default(), NodeState::Active, 0);
    b.step(RollEvent::Tick, &input(&[(&a, NodeState::Active)], 1), NodeState::Active, 1);
    c.step(RollEvent::Tick, &input(&[(&a, NodeState::Active)], 1), NodeState::Active, 1);
    let fx =
        a.step(RollEvent::Tick, &input(&[(&b, NodeState::Active), (&c, NodeState::Active)], 2), NodeState::Active, 2);
    assert_eq!(fx, vec![RollEffect::Drain]);
    // a dies draining, last heard at 3. Within the timeout b waits; after it, b claims.
    let dead_a = peer(&a, NodeState::Draining, 3);
    let mut ib = input(&[(&c, NodeState::Active)], 5000);
    ib.peers.insert(n("a"), dead_a.clone());
    b.step(RollEvent::Tick, &ib, NodeState::Active, 5000);
    assert_eq!(b.state.claim, None, "a is alive until 5003");
    let mut ib = input(&[(&c, NodeState::Active)], 5004);
    ib.peers.insert(n("a"), dead_a.clone());
    b.step(RollEvent::Tick, &ib, NodeState::Active, 5004);
    assert_eq!(b.state.claim, Some(Claim { slot: 0, epoch: 2 }));
    let mut ic = input(&[(&b, NodeState::Active)], 5005);
    ic.peers.insert(n("a"), dead_a.clone());
    c.step(RollEvent::Tick, &ic, NodeState::Active, 5005);
    assert_eq!(c.state.votes[&0], Vote { claimant: n("b"), epoch: 2 }, "the vote moved off the dead holder");
    let mut ib = input(&[(&c, NodeState::Active)], 5006);
    ib.peers.insert(n("a"), dead_a.clone());
    assert_eq!(b.step(RollEvent::Tick, &ib, NodeState::Active, 5006), vec![RollEffect::Drain]);
    let rep = report("r", &b.state.specs["r"], &ib, &n("b"), 5006, b.timing);
    assert!(rep.nodes[0].skipped && rep.nodes[0].step == Step::Draining, "{rep:?}");
}

#[test]
fn specs_are_checked() {
    let mut s = spec(&["a", "a"], None, true);
    assert_eq!(s.check().unwrap_err(), "node a is listed twice");
    s.nodes.clear();
    assert!(s.check().unwrap_err().starts_with("a roll needs at least one node"));
    let mut s = spec(&["a"], None, true);
    s.max_unavailable = 0;
    assert_eq!(s.check().unwrap_err(), "--max-unavailable must be at least 1");
}

#[test]
fn tail_keeps_the_end_at_a_char_boundary() {
    let s = format!("é{}", "x".repeat(MAX_OUTPUT_TAIL - 1));
    let t = tail(&s);
    assert!(t.len() <= MAX_OUTPUT_TAIL && t.ends_with('x') && !t.starts_with('é'), "{}", t.len());
}

#[test]
fn a_holder_back_from_the_dead_whose_slot_was_given_away_comes_back_at_once() {
    let mut a = machine("a");
    a.state.specs.insert("r".into(), spec(&["a", "b"], Some("upgrade"), true));
    let mut rec = StepRecord::at(Step::Exec, 0);
    rec.attempt = 1;
    a.state.steps.insert("r".into(), rec);
    a.state.claim = Some(Claim { slot: 0, epoch: 1 });
    // After a restart a sees nobody yet: no evidence, it keeps its slot.
    assert!(a.step(RollEvent::Tick, &RollInput::default(), NodeState::Drained, 10).is_empty());
    assert_eq!(a.state.steps["r"].step, Step::Exec);
    // b and c gave slot 0 to b at epoch 2 while a was not heard from.
    let vote_b =
        |_: ()| SlotRecord { claim: None, votes: [(0, Vote { claimant: n("b"), epoch: 2 })].into_iter().collect() };
    let mut inp = RollInput::default();
    let mut pb = Peer { last_heard_ms: 20, slot: Some(vote_b(())), ..Peer::default() };
    pb.slot.as_mut().unwrap().claim = Some(Claim { slot: 0, epoch: 2 });
    inp.peers.insert(n("b"), pb);
    inp.peers.insert(n("c"), Peer { last_heard_ms: 20, slot: Some(vote_b(())), ..Peer::default() });
    let mut draining = a.clone();
    assert_eq!(a.step(RollEvent::Tick, &inp, NodeState::Drained, 20), vec![RollEffect::Undrain]);
    let r = &a.state.steps["r"];
    assert_eq!(r.step, Step::Done, "its command ran: not run again");
    assert_eq!(a.state.claim, None);
    assert_eq!(
        r.error.as_deref(),
        Some(
            "slot 0 was given to another node while this one was not heard from: undrained, its command taken as done"
        )
    );
    // Its old command's end is ignored.
    let done = RollEvent::ExecDone { roll: "r".into(), attempt: 1, exit: Some(3), output: String::new(), error: None };
    a.step(done, &inp, NodeState::Active, 30);
    assert_eq!(a.state.steps["r"].step, Step::Done);
    // Taken over while still draining: it queues again.
    draining.state.steps.get_mut("r").unwrap().step = Step::Draining;
    assert_eq!(draining.step(RollEvent::Tick, &inp, NodeState::Draining, 20), vec![RollEffect::Undrain]);
    let r = &draining.state.steps["r"];
    assert_eq!(r.step, Step::Pending);
    assert_eq!(
        r.error.as_deref(),
        Some("slot 0 was given to another node while this one was not heard from: undrained, queued again")
    );
}

#[test]
fn a_volume_that_fails_to_move_fails_the_roll_and_resume_drains_again() {
    let mut a = machine("a");
    a.state.specs.insert("r".into(), spec(&["a"], Some("x"), true));
    a.state.steps.insert("r".into(), StepRecord::at(Step::Draining, 0));
    a.state.claim = Some(Claim { slot: 0, epoch: 1 });
    let inp = RollInput::default();
    let ev = RollEvent::DrainFailed { reason: "volume db: stop hook exited 1".into() };
    assert!(a.step(ev, &inp, NodeState::Draining, 5).is_empty());
    let r = &a.state.steps["r"];
    assert_eq!((r.step, r.error.as_deref()), (Step::Failed, Some("the drain failed: volume db: stop hook exited 1")));
    let ctl = RollCtl { seq: 7, nonce: "n".into(), action: RollAction::Resume, issued_by: n("a") };
    assert_eq!(a.step(RollEvent::Ctl { id: "r".into(), ctl }, &inp, NodeState::Draining, 6), vec![RollEffect::Drain]);
    assert_eq!(a.state.steps["r"].step, Step::Draining);
    assert_eq!(a.state.steps["r"].error, None);
}

#[test]
fn a_command_killed_at_its_exec_timeout_fails_the_roll_with_the_reason() {
    let mut a = machine("a");
    a.state.specs.insert("r".into(), spec(&["a", "b"], Some("sleep 1h"), true));
    let mut rec = StepRecord::at(Step::Exec, 0);
    rec.attempt = 1;
    a.state.steps.insert("r".into(), rec);
    a.state.claim = Some(Claim { slot: 0, epoch: 1 });
    let reason = "--exec did not finish within 30m (--exec-timeout): killed with its process group";
    let done = RollEvent::ExecDone {
        roll: "r".into(),
        attempt: 1,
        exit: None,
        output: "half way\n".into(),
        error: Some(reason.into()),
    };
    assert!(a.step(done, &RollInput::default(), NodeState::Drained, 5).is_empty(), "no undrain: it stays out");
    let r = &a.state.steps["r"];
    assert_eq!(
        (r.step, r.exit, r.error.as_deref(), r.output.as_str()),
        (Step::Failed, None, Some(reason), "half way\n")
    );
    assert!(a.state.claim.is_some(), "the failed node keeps its slot");
    // A spec with a zero timeout is refused (it came from the network or the command line).
    let mut s = spec(&["a"], Some("x"), true);
    s.exec_timeout_ms = 0;
    assert_eq!(s.check(), Err("--exec-timeout must be longer than 0 (e.g. 30m)".into()));
    // A spec of an earlier build, without the field, gets the default.
    let json = r#"{"nodes":["a"],"max_unavailable":1,"started_ms":0,"started_by":"a"}"#;
    let old: RollSpec = serde_json::from_str(json).unwrap();
    assert_eq!(old.exec_timeout_ms, DEFAULT_EXEC_TIMEOUT_MS);
}
