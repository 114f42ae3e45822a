//! Engine unit tests: the exact actions of every transition, legal or not.

mod changes;
mod operator;
mod saga;

use super::*;
use Action::*;
use CallKind::{Commit as C, Prepare as P, Rollback as R};

const NOW: u64 = 1_000_000;

fn branch(id: &str) -> Branch {
    Branch::new(
        id.to_string(),
        "http://127.0.0.1:9001".to_string(),
        format!("res.{id}"),
        vec![1, 2],
        1_000,
    )
}

/// An ACTIVE transaction with `n` registered branches (ids "1".."n").
fn txn_with(mode: Mode, n: usize) -> Txn {
    let mut txn = Txn::new("t".into(), mode, 10_000, NOW);
    for i in 1..=n {
        txn.branches.push(branch(&i.to_string()));
    }
    txn
}

fn must_step(txn: &mut Txn, event: Event) -> Vec<Action> {
    match step(txn, event, NOW + 1, &Policy::default()) {
        Ok(actions) => actions,
        Err(e) => panic!("step refused: {e}"),
    }
}

fn call(branch: usize, call: CallKind, attempt: u32) -> Action {
    Call {
        branch,
        call,
        attempt,
    }
}

/// A transaction in PREPARING with every prepare sent.
fn preparing(n: usize) -> Txn {
    let mut txn = txn_with(Mode::TwoPhase, n);
    must_step(&mut txn, Event::Commit);
    txn
}

fn vote(txn: &mut Txn, branch: usize, result: VoteResult) -> Vec<Action> {
    must_step(
        txn,
        Event::Voted {
            branch,
            result,
            output: Vec::new(),
        },
    )
}

#[test]
fn register_on_active_persists_before_answering() {
    let mut txn = txn_with(Mode::TwoPhase, 0);
    assert_eq!(
        must_step(&mut txn, Event::Register(Box::new(branch("1")))),
        vec![Persist(Durability::Flush)]
    );
    assert_eq!(txn.branches.len(), 1);
    assert_eq!(txn.updated_at_ms, NOW + 1);
}

#[test]
fn repeated_registration_is_idempotent_and_conflicts_are_refused() {
    let mut txn = txn_with(Mode::TwoPhase, 1);
    assert_eq!(
        must_step(&mut txn, Event::Register(Box::new(branch("1")))),
        vec![Persist(Durability::Flush)]
    );
    assert_eq!(txn.branches.len(), 1);
    let mut other = branch("1");
    other.payload = vec![9];
    assert!(matches!(
        step(
            &mut txn,
            Event::Register(Box::new(other)),
            NOW,
            &Policy::default()
        ),
        Err(EngineError::BranchConflict { .. })
    ));
    assert_eq!(txn.branches.len(), 1);
}

#[test]
fn register_outside_active_is_a_wrong_state_error_and_changes_nothing() {
    for state in [TxnState::Preparing, TxnState::Committing, TxnState::Aborted] {
        let mut txn = txn_with(Mode::Tcc, 1);
        txn.state = state;
        let before = txn.clone();
        let err = step(
            &mut txn,
            Event::Register(Box::new(branch("2"))),
            NOW,
            &Policy::default(),
        );
        assert!(matches!(
            err,
            Err(EngineError::WrongState {
                op: "RegisterBranch",
                ..
            })
        ));
        assert_eq!(txn, before);
    }
}

#[test]
fn commit_sends_every_prepare_in_parallel() {
    let mut txn = txn_with(Mode::TwoPhase, 2);
    let actions = must_step(&mut txn, Event::Commit);
    assert_eq!(actions, vec![Publish, call(0, P, 1), call(1, P, 1)]);
    assert_eq!(txn.state, TxnState::Preparing);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.prepare_sent && b.in_flight && b.attempts == 1)
    );
}

#[test]
fn commit_without_branches_commits_at_once() {
    let mut txn = txn_with(Mode::TwoPhase, 0);
    let actions = must_step(&mut txn, Event::Commit);
    assert_eq!(actions, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Committed);
}

#[test]
fn commit_past_the_deadline_aborts_without_calls() {
    let mut txn = txn_with(Mode::TwoPhase, 2);
    let actions = step(&mut txn, Event::Commit, NOW + 10_000, &Policy::default()).ok();
    assert_eq!(
        actions,
        Some(vec![Persist(Durability::Flush), Publish, Forget])
    );
    assert_eq!(txn.state, TxnState::Aborted);
    assert!(txn.reason.contains("timed out"));
}

#[test]
fn repeated_commit_does_nothing() {
    let mut txn = preparing(1);
    assert_eq!(must_step(&mut txn, Event::Commit), vec![]);
}

#[test]
fn all_yes_persists_the_decision_before_phase_two() {
    let mut txn = preparing(2);
    assert_eq!(vote(&mut txn, 0, VoteResult::Yes), vec![]);
    let actions = vote(&mut txn, 1, VoteResult::Yes);
    assert_eq!(
        actions,
        vec![
            Persist(Durability::Flush),
            Publish,
            call(0, C, 1),
            call(1, C, 1)
        ]
    );
    assert_eq!(txn.state, TxnState::Committing);
    assert_eq!(txn.decided_at_ms, Some(NOW + 1));
}

#[test]
fn read_only_branches_get_no_phase_two() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::Yes);
    let actions = vote(&mut txn, 1, VoteResult::ReadOnly);
    assert_eq!(
        actions,
        vec![Persist(Durability::Flush), Publish, call(0, C, 1)]
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::Acked {
                branch: 0,
                output: Vec::new()
            }
        ),
        vec![Persist(Durability::Lazy), Publish, Forget]
    );
    assert_eq!(txn.state, TxnState::Committed);
    assert_eq!(txn.branches[1].state, BranchState::ReadOnly);
}

#[test]
fn all_read_only_commits_with_one_durable_record() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::ReadOnly);
    let actions = vote(&mut txn, 1, VoteResult::ReadOnly);
    assert_eq!(actions, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Committed);
}

#[test]
fn a_no_vote_aborts_and_rolls_back_once_outstanding_prepares_answer() {
    let mut txn = preparing(3);
    vote(&mut txn, 0, VoteResult::Yes);
    let actions = vote(&mut txn, 1, VoteResult::No("insufficient funds".into()));
    // Branch 2's prepare is still out: its rollback waits for its answer.
    assert_eq!(
        actions,
        vec![
            Persist(Durability::Flush),
            Publish,
            call(0, R, 1),
            call(1, R, 1)
        ]
    );
    assert_eq!(txn.state, TxnState::Aborting);
    assert!(txn.reason.contains("branch 2") && txn.reason.contains("insufficient funds"));
    assert_eq!(vote(&mut txn, 2, VoteResult::Yes), vec![call(2, R, 1)]);
    assert_eq!(
        must_step(
            &mut txn,
            Event::Acked {
                branch: 0,
                output: Vec::new()
            }
        ),
        vec![]
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::Acked {
                branch: 1,
                output: Vec::new()
            }
        ),
        vec![]
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::Acked {
                branch: 2,
                output: Vec::new()
            }
        ),
        vec![Persist(Durability::Lazy), Publish, Forget]
    );
    assert_eq!(txn.state, TxnState::Aborted);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == BranchState::RolledBack)
    );
}

#[test]
fn a_late_read_only_vote_after_abort_needs_no_rollback() {
    let mut txn = preparing(2);
    vote(&mut txn, 0, VoteResult::No("no".into()));
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    assert_eq!(
        vote(&mut txn, 1, VoteResult::ReadOnly),
        vec![Persist(Durability::Lazy), Publish, Forget]
    );
    assert_eq!(txn.state, TxnState::Aborted);
}

#[test]
fn transient_prepare_errors_retry_until_the_deadline_then_abort() {
    let mut txn = preparing(1);
    let actions = vote(&mut txn, 0, VoteResult::Transient("unavailable".into()));
    assert_eq!(
        actions,
        vec![RetryLater {
            branch: 0,
            call: P,
            failures: 1,
            seq: 1
        }]
    );
    assert_eq!(txn.branches[0].last_error.as_deref(), Some("unavailable"));
    let stale = Event::RetryDue {
        branch: 0,
        call: P,
        seq: 0,
    };
    assert_eq!(
        must_step(&mut txn, stale),
        vec![],
        "an older generation is ignored"
    );
    let actions = must_step(
        &mut txn,
        Event::RetryDue {
            branch: 0,
            call: P,
            seq: 1,
        },
    );
    assert_eq!(actions, vec![call(0, P, 2)]);
    let late = step(
        &mut txn,
        Event::Voted {
            branch: 0,
            result: VoteResult::Transient("unavailable".into()),
            output: Vec::new(),
        },
        NOW + 20_000,
        &Policy::default(),
    )
    .ok();
    assert_eq!(
        late,
        Some(vec![Persist(Durability::Flush), Publish, call(0, R, 1)])
    );
    assert!(txn.reason.contains("phase-1 deadline"));
}

#[test]
fn phase_two_failures_retry_forever_with_growing_attempts() {
    let mut txn = preparing(1);
    vote(&mut txn, 0, VoteResult::Yes);
    for n in 1..=5 {
        let failed = must_step(
            &mut txn,
            Event::Phase2Failed {
                branch: 0,
                error: "down".into(),
            },
        );
        assert_eq!(
            failed,
            vec![RetryLater {
                branch: 0,
                call: C,
                failures: n,
                seq: n
            }]
        );
        assert_eq!(
            must_step(
                &mut txn,
                Event::RetryDue {
                    branch: 0,
                    call: C,
                    seq: n
                }
            ),
            vec![call(0, C, n + 1)]
        );
    }
    assert_eq!(txn.state, TxnState::Committing);
    assert_eq!(txn.branches[0].attempts, 7);
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: Vec::new(),
        },
    );
    assert_eq!(txn.state, TxnState::Committed);
}

#[test]
fn client_rollback_of_an_active_transaction_needs_no_calls() {
    let mut txn = txn_with(Mode::Tcc, 2);
    let actions = must_step(
        &mut txn,
        Event::Rollback {
            reason: "user cancelled".into(),
        },
    );
    assert_eq!(actions, vec![Persist(Durability::Flush), Publish, Forget]);
    assert_eq!(txn.state, TxnState::Aborted);
    assert!(txn.reason.contains("user cancelled"));
}

#[test]
fn rollback_during_phase_one_cancels_after_the_tries_answer() {
    let mut txn = txn_with(Mode::Tcc, 1);
    must_step(&mut txn, Event::Commit);
    assert_eq!(
        must_step(
            &mut txn,
            Event::Rollback {
                reason: String::new()
            }
        ),
        vec![Persist(Durability::Flush), Publish]
    );
    assert_eq!(vote(&mut txn, 0, VoteResult::Yes), vec![call(0, R, 1)]);
}

#[test]
fn rollback_of_decided_commit_is_refused_and_of_abort_is_idempotent() {
    let mut txn = preparing(1);
    vote(&mut txn, 0, VoteResult::Yes);
    let before = txn.clone();
    assert!(matches!(
        step(
            &mut txn,
            Event::Rollback {
                reason: String::new()
            },
            NOW,
            &Policy::default()
        ),
        Err(EngineError::WrongState { op: "Rollback", .. })
    ));
    assert_eq!(txn, before);
    let mut aborted = txn_with(Mode::TwoPhase, 0);
    aborted.state = TxnState::Aborted;
    assert_eq!(
        must_step(
            &mut aborted,
            Event::Rollback {
                reason: String::new()
            }
        ),
        vec![]
    );
}

#[test]
fn timeouts_abort_undecided_transactions_only() {
    let mut active = txn_with(Mode::TwoPhase, 1);
    assert_eq!(
        must_step(&mut active, Event::TimedOut),
        vec![Persist(Durability::Flush), Publish, Forget]
    );
    assert!(active.reason.contains("timed out"));

    let mut waiting = preparing(2);
    vote(&mut waiting, 0, VoteResult::Yes);
    let actions = must_step(&mut waiting, Event::TimedOut);
    assert_eq!(
        actions,
        vec![Persist(Durability::Flush), Publish, call(0, R, 1)]
    );
    assert!(waiting.reason.contains("no vote from branch 2"));

    let mut deciding = preparing(1);
    vote(&mut deciding, 0, VoteResult::Yes);
    assert_eq!(must_step(&mut deciding, Event::TimedOut), vec![]);
    assert_eq!(deciding.state, TxnState::Committing);
}

#[test]
fn recovery_aborts_undecided_and_redrives_decided() {
    // ACTIVE in the log: prepares may have been sent, so roll back every branch.
    let mut active = txn_with(Mode::TwoPhase, 2);
    let actions = must_step(&mut active, Event::Recovered);
    assert_eq!(
        actions,
        vec![
            Persist(Durability::Flush),
            Publish,
            call(0, R, 1),
            call(1, R, 1)
        ]
    );
    assert!(active.reason.contains("presumed abort"));

    // COMMITTING: commit again every branch not yet committed.
    let mut committing = txn_with(Mode::Tcc, 3);
    committing.state = TxnState::Committing;
    committing.branches[0].state = BranchState::Prepared;
    committing.branches[1].state = BranchState::ReadOnly;
    committing.branches[2].state = BranchState::Prepared;
    let actions = must_step(&mut committing, Event::Recovered);
    assert_eq!(actions, vec![call(0, C, 1), call(2, C, 1)]);

    // ABORTING: roll back only branches whose prepare may have run.
    let mut aborting = txn_with(Mode::TwoPhase, 3);
    aborting.state = TxnState::Aborting;
    aborting.branches[0].prepare_sent = true;
    aborting.branches[1].prepare_sent = true;
    aborting.branches[1].state = BranchState::ReadOnly;
    let actions = must_step(&mut aborting, Event::Recovered);
    assert_eq!(actions, vec![call(0, R, 1)]);

    // Decided with nothing left to do: just finish.
    let mut done = txn_with(Mode::TwoPhase, 1);
    done.state = TxnState::Committing;
    done.branches[0].state = BranchState::Committed;
    assert_eq!(
        must_step(&mut done, Event::Recovered),
        vec![Persist(Durability::Lazy), Publish, Forget]
    );
}

#[test]
fn stale_and_unknown_events_are_ignored() {
    let mut txn = preparing(1);
    vote(&mut txn, 0, VoteResult::Yes);
    let before = txn.clone();
    // A second answer to the same prepare, an ack nobody asked for, a branch
    // that does not exist, a retry that is no longer needed.
    assert_eq!(vote(&mut txn, 0, VoteResult::No("late".into())), vec![]);
    assert_eq!(
        must_step(
            &mut txn,
            Event::Acked {
                branch: 7,
                output: Vec::new()
            }
        ),
        vec![]
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 0,
                call: P,
                seq: 0
            }
        ),
        vec![]
    );
    assert_eq!(
        must_step(
            &mut txn,
            Event::RetryDue {
                branch: 0,
                call: C,
                seq: 0
            }
        ),
        vec![]
    );
    assert_eq!(txn.state, before.state);
    assert_eq!(txn.branches, before.branches);
    let mut done = txn_with(Mode::TwoPhase, 0);
    done.state = TxnState::Committed;
    assert_eq!(must_step(&mut done, Event::Recovered), vec![]);
    assert_eq!(must_step(&mut done, Event::TimedOut), vec![]);
}

#[test]
fn tcc_uses_the_same_machine_with_try_confirm_cancel_names() {
    assert_eq!(CallKind::Prepare.rpc_name(Mode::Tcc), "try");
    assert_eq!(CallKind::Commit.rpc_name(Mode::Tcc), "confirm");
    assert_eq!(CallKind::Rollback.rpc_name(Mode::Tcc), "cancel");
    let mut txn = txn_with(Mode::Tcc, 2);
    must_step(&mut txn, Event::Commit);
    vote(&mut txn, 0, VoteResult::Yes);
    let actions = vote(&mut txn, 1, VoteResult::No("out of stock".into()));
    assert_eq!(
        actions,
        vec![
            Persist(Durability::Flush),
            Publish,
            call(0, R, 1),
            call(1, R, 1)
        ]
    );
}
