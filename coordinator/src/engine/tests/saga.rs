//! Sagas: step order and dependency order, compensation order, definitive
//! and transient answers, must-succeed steps, timeouts and restarts.

use super::*;

fn saga(n: usize) -> Txn {
    txn_with(Mode::Saga, n)
}

fn ok(txn: &mut Txn, i: usize) -> Vec<Action> {
    must_step(
        txn,
        Event::Voted {
            branch: i,
            result: VoteResult::Yes,
            output: vec![i as u8],
        },
    )
}

fn failed(txn: &mut Txn, i: usize) -> Vec<Action> {
    vote(txn, i, VoteResult::No("sold out".into()))
}

fn compensated(txn: &mut Txn, i: usize) -> Vec<Action> {
    must_step(
        txn,
        Event::Acked {
            branch: i,
            output: Vec::new(),
        },
    )
}

/// The branches called by `actions`, with the call.
fn calls(actions: &[Action]) -> Vec<(usize, CallKind)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Call { branch, call, .. } => Some((*branch, *call)),
            _ => None,
        })
        .collect()
}

#[test]
fn steps_run_one_after_another_each_durable_before_the_next() {
    let mut txn = saga(3);
    let started = must_step(&mut txn, Event::Commit);
    assert_eq!(txn.state, TxnState::Preparing);
    assert_eq!(
        started,
        vec![Persist(Durability::Flush), Publish, call(0, P, 1)],
        "RUNNING is durable before the first step"
    );
    assert_eq!(txn.current_steps(), ["1"]);
    assert_eq!(
        ok(&mut txn, 0),
        vec![Persist(Durability::Flush), call(1, P, 1)]
    );
    assert_eq!(txn.current_steps(), ["2"]);
    assert_eq!(
        ok(&mut txn, 1),
        vec![Persist(Durability::Flush), call(2, P, 1)]
    );
    let done = ok(&mut txn, 2);
    assert_eq!(done, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Committed);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == BranchState::Committed)
    );
    assert_eq!(txn.branches[1].result, vec![1u8], "each step's result kept");
}

#[test]
fn independent_steps_run_in_parallel_and_a_join_waits_for_all() {
    let mut txn = saga(0);
    let mut a = branch("a");
    a.start_at_once = true;
    let mut b = branch("b");
    b.start_at_once = true;
    let mut c = branch("c");
    c.depends_on = vec!["a".into(), "b".into()];
    for s in [a, b, c] {
        must_step(&mut txn, Event::Register(Box::new(s)));
    }
    let started = must_step(&mut txn, Event::Commit);
    assert_eq!(calls(&started), [(0, P), (1, P)]);
    assert!(calls(&ok(&mut txn, 1)).is_empty(), "c waits for a too");
    assert_eq!(calls(&ok(&mut txn, 0)), [(2, P)]);
}

#[test]
fn a_definitive_failure_compensates_every_step_that_ran_in_reverse_order() {
    let mut txn = saga(3);
    must_step(&mut txn, Event::Commit);
    ok(&mut txn, 0);
    ok(&mut txn, 1);
    let turned = failed(&mut txn, 2);
    assert_eq!(txn.state, TxnState::Aborting);
    assert!(txn.reason.contains("sold out"), "{}", txn.reason);
    // The failed step first (it may have done something), then 2, then 1.
    assert_eq!(
        turned,
        vec![Persist(Durability::Flush), Publish, call(2, R, 1)]
    );
    assert_eq!(txn.current_steps(), ["3"]);
    assert_eq!(
        compensated(&mut txn, 2),
        vec![Persist(Durability::Flush), call(1, R, 1)]
    );
    assert_eq!(calls(&compensated(&mut txn, 1)), [(0, R)]);
    let done = compensated(&mut txn, 0);
    assert_eq!(done, vec![Persist(Durability::Lazy), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Aborted);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == BranchState::RolledBack)
    );
}

#[test]
fn steps_that_never_started_are_not_compensated() {
    let mut txn = saga(3);
    must_step(&mut txn, Event::Commit);
    let turned = failed(&mut txn, 0);
    assert_eq!(calls(&turned), [(0, R)]);
    let done = compensated(&mut txn, 0);
    assert_eq!(txn.state, TxnState::Aborted);
    assert!(done.contains(&Forget));
    assert_eq!(txn.branches[1].state, BranchState::Registered);
}

#[test]
fn parallel_steps_are_compensated_after_their_dependents_and_in_flight_ones_after_answering() {
    let mut txn = saga(0);
    let mut a = branch("a");
    a.start_at_once = true;
    let mut b = branch("b");
    b.start_at_once = true;
    let mut c = branch("c");
    c.depends_on = vec!["a".into()];
    for s in [a, b, c] {
        must_step(&mut txn, Event::Register(Box::new(s)));
    }
    must_step(&mut txn, Event::Commit);
    ok(&mut txn, 0); // a done: c starts; b still out
    let turned = failed(&mut txn, 2); // c fails
    // c is compensated now; a waits for c; b waits for its own answer.
    assert_eq!(calls(&turned), [(2, R)]);
    let late = ok(&mut txn, 1);
    assert_eq!(calls(&late), [(1, R)], "b answered: compensate it");
    assert_eq!(calls(&compensated(&mut txn, 2)), [(0, R)]);
    compensated(&mut txn, 1);
    compensated(&mut txn, 0);
    assert_eq!(txn.state, TxnState::Aborted);
}

#[test]
fn transient_answers_retry_until_the_timeout_then_compensate() {
    let mut txn = saga(2);
    must_step(&mut txn, Event::Commit);
    let again = vote(&mut txn, 0, VoteResult::Transient("busy".into()));
    assert!(matches!(
        again.as_slice(),
        [RetryLater {
            branch: 0,
            call: P,
            ..
        }]
    ));
    assert_eq!(txn.state, TxnState::Preparing);
    let seq = txn.branches[0].retry_seq;
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 0,
                call: P,
                seq
            }
        ),
        vec![call(0, P, 2)]
    );
    let timed_out = must_step(&mut txn, Event::TimedOut);
    assert_eq!(txn.state, TxnState::Aborting);
    assert!(txn.reason.contains("timeout"), "{}", txn.reason);
    // Step 1 is out: compensated once it answers (barrier-safe either way).
    assert!(calls(&timed_out).is_empty());
    let answered = vote(&mut txn, 0, VoteResult::Transient("busy".into()));
    assert_eq!(calls(&answered), [(0, R)]);
}

#[test]
fn compensations_retry_and_flag_the_saga_stuck() {
    let mut txn = saga(1);
    must_step(&mut txn, Event::Commit);
    failed(&mut txn, 0);
    let policy = Policy {
        stuck_after_attempts: 2,
        stuck_after_ms: 60_000,
    };
    for attempt in 1..=3u32 {
        let failed = step(
            &mut txn,
            Event::Phase2Failed {
                branch: 0,
                error: "down".into(),
            },
            NOW + 1,
            &policy,
        );
        assert!(matches!(
            failed.as_deref(),
            Ok([RetryLater { call: R, .. }])
        ));
        let seq = txn.branches[0].retry_seq;
        assert_eq!(
            must_step(
                &mut txn,
                Event::RetryDue {
                    branch: 0,
                    call: R,
                    seq
                }
            ),
            vec![call(0, R, attempt + 1)]
        );
    }
    assert!(txn.stuck_since_ms.is_some());
    compensated(&mut txn, 0);
    assert_eq!(txn.state, TxnState::Aborted);
}

#[test]
fn a_must_succeed_step_runs_after_every_compensable_one_and_never_compensates() {
    let mut txn = saga(2);
    let mut last = branch("3");
    last.must_succeed = true;
    must_step(&mut txn, Event::Register(Box::new(last)));
    must_step(&mut txn, Event::Commit);
    ok(&mut txn, 0);
    let decided = ok(&mut txn, 1);
    assert_eq!(txn.state, TxnState::Committing, "decided forward");
    assert_eq!(
        decided,
        vec![Persist(Durability::Flush), Publish, call(2, C, 1)]
    );
    // A failure of it is retried, never compensated; the timeout no longer applies.
    let again = must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 2,
            error: "failed: card declined".into(),
        },
    );
    assert!(matches!(again.as_slice(), [RetryLater { call: C, .. }]));
    assert!(must_step(&mut txn, Event::TimedOut).is_empty());
    let seq = txn.branches[2].retry_seq;
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 2,
                call: C,
                seq
            }
        ),
        vec![call(2, C, 2)]
    );
    let done = compensated(&mut txn, 2); // its action's success
    assert_eq!(txn.state, TxnState::Committed);
    assert!(done.contains(&Forget));
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == BranchState::Committed)
    );
}

#[test]
fn bad_orders_are_refused_at_registration() {
    let mut txn = saga(1);
    let mut ahead = branch("2");
    ahead.depends_on = vec!["9".into()];
    assert!(matches!(
        step(
            &mut txn,
            Event::Register(Box::new(ahead)),
            NOW,
            &Policy::default()
        ),
        Err(EngineError::BadStep { .. })
    ));
    let mut last = branch("2");
    last.must_succeed = true;
    must_step(&mut txn, Event::Register(Box::new(last)));
    let after = branch("3");
    assert!(
        matches!(
            step(
                &mut txn,
                Event::Register(Box::new(after)),
                NOW,
                &Policy::default()
            ),
            Err(EngineError::BadStep { .. })
        ),
        "a compensable step after a must-succeed one"
    );
    assert_eq!(txn.branches.len(), 2, "the refused step is not kept");

    let mut parallel = saga(0);
    let mut a = branch("a");
    a.start_at_once = true;
    must_step(&mut parallel, Event::Register(Box::new(a)));
    let mut early = branch("m");
    early.must_succeed = true;
    early.start_at_once = true;
    assert!(
        step(
            &mut parallel,
            Event::Register(Box::new(early)),
            NOW,
            &Policy::default()
        )
        .is_err(),
        "a must-succeed step that could start before a compensable one succeeded"
    );
    let mut two_phase = txn_with(Mode::TwoPhase, 0);
    let mut odd = branch("x");
    odd.must_succeed = true;
    assert!(
        step(
            &mut two_phase,
            Event::Register(Box::new(odd)),
            NOW,
            &Policy::default()
        )
        .is_err()
    );
}

#[test]
fn a_restart_resumes_forward_or_backward_where_it_stopped() {
    // Forward: step 1 done (durable), step 2 out when the coordinator died.
    let mut txn = saga(3);
    must_step(&mut txn, Event::Commit);
    ok(&mut txn, 0);
    let mut restarted = txn.clone();
    let resumed = must_step(&mut restarted, Event::Recovered);
    assert_eq!(restarted.state, TxnState::Preparing, "no presumed abort");
    assert_eq!(calls(&resumed), [(1, P)], "step 2 again, not step 1");

    // Past the timeout: backward.
    let mut late = txn.clone();
    late.created_at_ms = 0;
    let resumed = must_step(&mut late, Event::Recovered);
    assert_eq!(late.state, TxnState::Aborting);
    assert_eq!(
        calls(&resumed),
        [(1, R)],
        "the last step that may have run first"
    );

    // Mid-compensation: the next compensation, not the done ones.
    let mut back = saga(3);
    must_step(&mut back, Event::Commit);
    ok(&mut back, 0);
    ok(&mut back, 1);
    failed(&mut back, 2);
    compensated(&mut back, 2);
    let resumed = must_step(&mut back, Event::Recovered);
    assert_eq!(calls(&resumed), [(1, R)]);

    // ACTIVE: nothing ran; aborted with no call.
    let mut fresh = saga(2);
    let resumed = must_step(&mut fresh, Event::Recovered);
    assert_eq!(fresh.state, TxnState::Aborted);
    assert!(calls(&resumed).is_empty());
    assert!(resumed.contains(&Persist(Durability::Flush)));
}

#[test]
fn an_operator_can_retry_abort_and_resolve_a_saga() {
    let mut txn = saga(2);
    must_step(&mut txn, Event::Commit);
    vote(&mut txn, 0, VoteResult::Transient("busy".into()));
    assert_eq!(
        must_step(&mut txn, Event::RetryNow),
        vec![call(0, P, 2)],
        "only the started step, not the next"
    );
    ok(&mut txn, 0);
    let aborted = must_step(
        &mut txn,
        Event::ForceAbort {
            reason: "drill".into(),
        },
    );
    assert_eq!(txn.state, TxnState::Aborting);
    assert_eq!(
        calls(&aborted),
        Vec::<(usize, CallKind)>::new(),
        "step 2 is out"
    );
    let answered = ok(&mut txn, 1);
    assert_eq!(calls(&answered), [(1, R)]);
    let resolved = must_step(
        &mut txn,
        Event::ResolveBranch {
            branch: 1,
            committed: false,
            note: "undone by hand".into(),
        },
    );
    assert_eq!(
        calls(&resolved),
        [(0, R)],
        "the next compensation follows the resolved one"
    );
    assert_eq!(resolved.first(), Some(&Persist(Durability::Flush)));
}

#[test]
fn retry_now_keeps_the_compensation_order() {
    let mut txn = saga(3);
    must_step(&mut txn, Event::Commit);
    ok(&mut txn, 0);
    ok(&mut txn, 1);
    failed(&mut txn, 2); // compensating step 3 first
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 2,
            error: "down".into(),
        },
    );
    assert_eq!(
        calls(&must_step(&mut txn, Event::RetryNow)),
        [(2, R)],
        "steps 1 and 2 wait for step 3's compensation"
    );
}

#[test]
fn a_must_succeed_step_resolved_by_hand_lets_the_next_one_run() {
    let mut txn = saga(1);
    let mut second = branch("2");
    second.must_succeed = true;
    let mut third = branch("3");
    third.must_succeed = true;
    must_step(&mut txn, Event::Register(Box::new(second)));
    must_step(&mut txn, Event::Register(Box::new(third)));
    must_step(&mut txn, Event::Commit);
    assert_eq!(calls(&ok(&mut txn, 0)), [(1, C)]);
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "smtp down".into(),
        },
    );
    assert_eq!(
        calls(&must_step(&mut txn, Event::RetryNow)),
        [(1, C)],
        "not step 3 before step 2"
    );
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "smtp down".into(),
        },
    );
    let resolved = must_step(
        &mut txn,
        Event::ResolveBranch {
            branch: 1,
            committed: false,
            note: "sent by hand".into(),
        },
    );
    assert_eq!(calls(&resolved), [(2, C)]);
    assert_eq!(txn.current_steps(), ["3"]);
    compensated(&mut txn, 2);
    assert_eq!(txn.state, TxnState::Committed);
}
