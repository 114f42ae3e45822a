//! The changes the engine notes: one per transition, numbered 1, 2, ...
//! with no gaps, in the order the transitions happened.

use super::*;

/// (kind, state after) of every change noted so far, checking the numbering.
fn noted(txn: &Txn) -> Vec<(&'static str, TxnState)> {
    for (i, c) in txn.changes.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1, "changes are numbered without gaps");
    }
    assert_eq!(txn.seq, txn.changes.len() as u64);
    txn.changes
        .iter()
        .map(|c| (c.kind.name(), c.state))
        .collect()
}

fn begun(mode: Mode, n: usize) -> Txn {
    let mut txn = txn_with(mode, n);
    begin(&mut txn, NOW);
    txn
}

#[test]
fn a_two_phase_commit_notes_each_step_once_in_order() {
    use TxnState::*;
    let mut txn = begun(Mode::TwoPhase, 1);
    must_step(&mut txn, Event::Register(Box::new(branch("2"))));
    must_step(&mut txn, Event::Register(Box::new(branch("2")))); // a retried registration: nothing new
    must_step(&mut txn, Event::Commit);
    must_step(
        &mut txn,
        Event::Voted {
            branch: 0,
            result: VoteResult::Yes,
            output: b"r1".to_vec(),
        },
    );
    vote(&mut txn, 0, VoteResult::Yes); // stale: already voted
    vote(&mut txn, 1, VoteResult::ReadOnly);
    must_step(
        &mut txn,
        Event::Acked {
            branch: 0,
            output: b"done".to_vec(),
        },
    );
    assert_eq!(
        noted(&txn),
        vec![
            ("STATE", Active),
            ("BRANCH_REGISTERED", Active),
            ("BRANCH_REGISTERED", Active),
            ("STATE", Preparing),
            ("BRANCH_VOTED", Preparing),
            ("BRANCH_VOTED", Preparing),
            ("STATE", Committing),
            ("BRANCH_ACKED", Committing),
            ("STATE", Committed),
        ]
    );
    let c = &txn.changes;
    assert!(
        matches!(&c[4].kind, ChangeKind::Voted { vote: Vote::Yes, result, .. } if result == b"r1")
    );
    assert!(
        matches!(&c[5].kind, ChangeKind::Voted { vote: Vote::ReadOnly, branch, .. } if branch == "2")
    );
    assert!(
        matches!(&c[7].kind, ChangeKind::Acked { call: CallKind::Commit, result, .. } if result == b"done")
    );
    assert!(c[8].is_final() && !c[7].is_final());
}

#[test]
fn a_no_vote_notes_the_reason_and_the_rollbacks() {
    use TxnState::*;
    let mut txn = begun(Mode::Tcc, 2);
    must_step(&mut txn, Event::Commit);
    vote(&mut txn, 0, VoteResult::Yes);
    vote(&mut txn, 1, VoteResult::No("no stock".into()));
    for branch in [0, 1] {
        must_step(
            &mut txn,
            Event::Acked {
                branch,
                output: b"ignored".to_vec(),
            },
        );
    }
    assert_eq!(
        noted(&txn),
        vec![
            ("STATE", Active),
            ("BRANCH_REGISTERED", Active),
            ("BRANCH_REGISTERED", Active),
            ("STATE", Preparing),
            ("BRANCH_VOTED", Preparing),
            ("BRANCH_VOTED", Preparing),
            ("STATE", Aborting),
            ("BRANCH_ACKED", Aborting),
            ("BRANCH_ACKED", Aborting),
            ("STATE", Aborted),
        ]
    );
    assert!(
        matches!(&txn.changes[6].kind, ChangeKind::State { reason } if reason.contains("no stock"))
    );
    // A rollback's ack carries no result.
    assert!(
        matches!(&txn.changes[7].kind, ChangeKind::Acked { call: CallKind::Rollback, result, .. } if result.is_empty())
    );
}

#[test]
fn failures_the_stuck_flag_and_operator_actions_are_noted() {
    let policy = Policy {
        stuck_after_attempts: 2,
        stuck_after_ms: u64::MAX,
    };
    let mut txn = begun(Mode::TwoPhase, 1);
    must_step(&mut txn, Event::Commit);
    vote(&mut txn, 0, VoteResult::Yes);
    for _ in 0..2 {
        let failed = Event::Phase2Failed {
            branch: 0,
            error: "unreachable".into(),
        };
        step(&mut txn, failed, NOW + 2, &policy).unwrap_or_else(|e| panic!("{e}"));
        let seq = txn.branches[0].retry_seq;
        step(
            &mut txn,
            Event::RetryDue {
                branch: 0,
                call: CallKind::Commit,
                seq,
            },
            NOW + 3,
            &policy,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    must_step(&mut txn, Event::RetryNow);
    let kinds: Vec<&str> = noted(&txn).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds[5..],
        ["CALL_FAILED", "CALL_FAILED", "STUCK", "RETRY_NOW"]
    );
    assert!(txn.changes[5..].iter().all(|c| c.kind.is_urgent()));
    must_step(
        &mut txn,
        Event::ResolveBranch {
            branch: 0,
            committed: true,
            note: "done by hand".into(),
        },
    );
    let last: Vec<&str> = noted(&txn).into_iter().map(|(k, _)| k).collect();
    assert_eq!(last[9..], ["BRANCH_RESOLVED", "STATE"]);
    assert!(txn.changes.last().is_some_and(Change::is_final));
}

#[test]
fn recovery_continues_the_numbering_of_the_log() {
    let mut txn = begun(Mode::TwoPhase, 1);
    must_step(&mut txn, Event::Commit);
    // What a restart reads back: the numbering, no pending changes.
    txn.changes.clear();
    must_step(&mut txn, Event::Recovered);
    assert_eq!(txn.changes.first().map(|c| c.seq), Some(4));
    assert!(
        matches!(&txn.changes[0].kind, ChangeKind::State { reason } if reason.contains("presumed abort"))
    );
}
