//! Engine tests of stuck detection, attempt history, and the operator
//! transitions (retry now, force an outcome, resolve a branch by hand).

use super::*;

#[test]
fn phase_two_failing_past_the_threshold_flags_the_transaction_stuck_but_keeps_retrying() {
    let policy = Policy {
        stuck_after_attempts: 3,
        stuck_after_ms: 60_000,
    };
    let mut txn = preparing(1);
    vote(&mut txn, 0, VoteResult::Yes);
    for n in 1..=3u32 {
        let failed = step(
            &mut txn,
            Event::Phase2Failed {
                branch: 0,
                error: "down".into(),
            },
            NOW + u64::from(n),
            &policy,
        );
        assert_eq!(
            failed.ok(),
            Some(vec![RetryLater {
                branch: 0,
                call: C,
                failures: n,
                seq: n
            }])
        );
        assert_eq!(
            txn.stuck_since_ms.is_some(),
            n == 3,
            "stuck only from the 3rd failure"
        );
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 0,
                call: C,
                seq: n,
            },
        );
    }
    assert_eq!(txn.branches[0].failing_since_ms, Some(NOW + 1));
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    assert_eq!(txn.state, TxnState::Committed);
    assert_eq!(
        txn.stuck_since_ms, None,
        "a finished transaction is not stuck"
    );

    // Failing for long enough also counts, whatever the number of attempts.
    let mut slow = preparing(1);
    vote(&mut slow, 0, VoteResult::Yes);
    let fail = |txn: &mut Txn, at: u64| {
        step(
            txn,
            Event::Phase2Failed {
                branch: 0,
                error: "x".into(),
            },
            at,
            &policy,
        )
        .ok();
        let seq = txn.branches[0].retry_seq;
        must_step(
            txn,
            Event::RetryDue {
                branch: 0,
                call: C,
                seq,
            },
        );
    };
    fail(&mut slow, NOW);
    assert_eq!(slow.stuck_since_ms, None);
    fail(&mut slow, NOW + 60_000);
    assert_eq!(slow.stuck_since_ms, Some(NOW + 60_000));
}

#[test]
fn every_answer_is_remembered_in_the_branch_history() {
    let mut txn = preparing(1);
    vote(
        &mut txn,
        0,
        VoteResult::Transient("connection refused".into()),
    );
    must_step(
        &mut txn,
        Event::RetryDue {
            branch: 0,
            call: P,
            seq: 1,
        },
    );
    vote(&mut txn, 0, VoteResult::Yes);
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    let history: Vec<(CallKind, u32, bool, &str)> = txn.branches[0]
        .history
        .iter()
        .map(|a| (a.call, a.attempt, a.ok, a.result.as_str()))
        .collect();
    assert_eq!(
        history,
        vec![
            (P, 1, false, "connection refused"),
            (P, 2, true, "voted YES"),
            (C, 1, true, "acknowledged"),
        ]
    );
    let mut long = preparing(1);
    vote(&mut long, 0, VoteResult::Yes);
    for n in 1..=40u32 {
        must_step(
            &mut long,
            Event::Phase2Failed {
                branch: 0,
                error: format!("e{n}"),
            },
        );
        must_step(
            &mut long,
            Event::RetryDue {
                branch: 0,
                call: C,
                seq: n,
            },
        );
    }
    assert_eq!(
        long.branches[0].history.len(),
        MAX_HISTORY,
        "history is capped"
    );
    assert_eq!(
        long.branches[0].history.last().map(|a| a.result.as_str()),
        Some("e40")
    );
}

#[test]
fn retry_now_calls_at_once_resets_backoff_and_voids_the_scheduled_retry() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::Yes);
    vote(&mut txn, 1, VoteResult::Yes);
    for n in 1..=4u32 {
        must_step(
            &mut txn,
            Event::Phase2Failed {
                branch: 1,
                error: "down".into(),
            },
        );
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 1,
                call: C,
                seq: n,
            },
        );
    }
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "down".into(),
        },
    );
    // Branch 0's commit is still out (in flight), branch 1 waits for retry 5.
    assert_eq!(must_step(&mut txn, Event::RetryNow), vec![call(1, C, 6)]);
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 1,
                call: C,
                seq: 5
            }
        ),
        vec![],
        "the retry scheduled before RetryNow is void"
    );
    let failed = must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "down".into(),
        },
    );
    assert_eq!(
        failed,
        vec![RetryLater {
            branch: 1,
            call: C,
            failures: 1,
            seq: 7
        }],
        "backoff starts over"
    );

    let mut active = txn_with(Mode::TwoPhase, 1);
    assert!(matches!(
        step(&mut active, Event::RetryNow, NOW, &Policy::default()),
        Err(EngineError::WrongState { .. })
    ));
}

#[test]
fn operators_can_abort_undecided_and_commit_only_when_all_prepared() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::Yes);
    let refused = step(
        &mut txn,
        Event::ForceCommit {
            reason: "ops".into(),
        },
        NOW,
        &Policy::default(),
    );
    assert_eq!(
        refused.err(),
        Some(EngineError::NotAllPrepared {
            txn: "t".into(),
            branches: "2".into()
        })
    );
    let actions = must_step(
        &mut txn,
        Event::ForceAbort {
            reason: "payment provider gone".into(),
        },
    );
    assert_eq!(
        actions,
        vec![Persist(Durability::Flush), Publish, call(0, R, 1)]
    );
    assert!(
        txn.reason
            .contains("aborted by an operator: payment provider gone")
    );
    let again = step(
        &mut txn,
        Event::ForceAbort { reason: "x".into() },
        NOW,
        &Policy::default(),
    );
    assert!(
        matches!(again, Err(EngineError::WrongState { .. })),
        "decided: no more forcing"
    );

    let mut ready = preparing(1);
    ready.branches[0].in_flight = false;
    ready.branches[0].state = BranchState::Prepared;
    let actions = must_step(
        &mut ready,
        Event::ForceCommit {
            reason: "verified by hand".into(),
        },
    );
    assert_eq!(
        actions,
        vec![Persist(Durability::Flush), Publish, call(0, C, 1)]
    );
    assert_eq!(ready.state, TxnState::Committing);
}

#[test]
fn resolving_a_dead_branch_by_hand_lets_a_decided_transaction_finish() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::Yes);
    vote(&mut txn, 1, VoteResult::Yes);
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "gone".into(),
        },
    );
    let actions = must_step(
        &mut txn,
        Event::ResolveBranch {
            branch: 1,
            committed: true,
            note: "applied by hand: ticket 42".into(),
        },
    );
    assert_eq!(actions, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Committed);
    assert_eq!(
        txn.branches[1].heuristic.as_deref(),
        Some("applied by hand: ticket 42")
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 1,
                call: C,
                seq: 1
            }
        ),
        vec![]
    );

    // Only a branch still owed phase 2, only once decided.
    let mut two = preparing(2);
    vote(&mut two, 0, VoteResult::Yes);
    vote(&mut two, 1, VoteResult::Yes);
    must_step(
        &mut two,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    let done_branch = step(
        &mut two,
        Event::ResolveBranch {
            branch: 0,
            committed: true,
            note: String::new(),
        },
        NOW,
        &Policy::default(),
    );
    assert!(matches!(
        done_branch,
        Err(EngineError::BranchNotPending {
            state: "COMMITTED",
            ..
        })
    ));
    let mut undecided = preparing(1);
    let early = step(
        &mut undecided,
        Event::ResolveBranch {
            branch: 0,
            committed: false,
            note: String::new(),
        },
        NOW,
        &Policy::default(),
    );
    assert!(matches!(early, Err(EngineError::WrongState { .. })));

    // Resolving one of several pending branches persists the resolution.
    let mut three = preparing(2);
    vote(&mut three, 0, VoteResult::Yes);
    vote(&mut three, 1, VoteResult::Yes);
    must_step(
        &mut three,
        Event::Phase2Failed {
            branch: 0,
            error: "x".into(),
        },
    );
    let actions = must_step(
        &mut three,
        Event::ResolveBranch {
            branch: 0,
            committed: false,
            note: "heuristic rollback".into(),
        },
    );
    assert_eq!(actions, vec![Persist(Durability::Flush)]);
    assert_eq!(three.branches[0].state, BranchState::RolledBack);
    assert_eq!(
        three.state,
        TxnState::Committing,
        "a mixed outcome, recorded on the branch"
    );
}

/// A branch resolved by hand against the decision used to leave the
/// transaction COMMITTING for good, also after a restart.
#[test]
fn a_branch_resolved_against_the_decision_finishes_with_a_mixed_outcome() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::Yes);
    vote(&mut txn, 1, VoteResult::Yes);
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    must_step(
        &mut txn,
        Event::Phase2Failed {
            branch: 1,
            error: "gone".into(),
        },
    );
    let mut before_restart = txn.clone();
    let actions = must_step(
        &mut txn,
        Event::ResolveBranch {
            branch: 1,
            committed: false,
            note: "rolled back by hand".into(),
        },
    );
    assert_eq!(actions, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Committed);
    let second = txn.branches[1].id.clone();
    assert_eq!(txn.mixed_branches(), vec![second.as_str()]);
    assert!(
        txn.reason.contains("heuristic mixed outcome"),
        "{}",
        txn.reason
    );

    // The same resolution as an earlier release stored it (the branch
    // resolved, the transaction left COMMITTING) finishes on recovery.
    before_restart.branches[1].state = BranchState::RolledBack;
    before_restart.branches[1].heuristic = Some("rolled back by hand".into());
    let actions = must_step(&mut before_restart, Event::Recovered);
    assert_eq!(actions, vec![Persist(Durability::Lazy), Publish, Forget]);
    assert_eq!(before_restart.state, TxnState::Committed);
    assert_eq!(before_restart.mixed_branches().len(), 1);
}
