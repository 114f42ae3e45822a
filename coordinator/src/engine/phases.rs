//! The transitions of 2PC and TCC after the client's commit (votes, acks,
//! phase-2 failures, retries, recovery, the decisions), and the helpers
//! every mode shares (calls, retries, history, finishing). Sagas have
//! their own in [`super::saga`], built on the same helpers.

use super::*;

/// Records a phase-1 answer (a vote, or a saga action's outcome) on branch
/// `i`: its history, state, result and error. Returns the change to note,
/// or `None` for a stale answer (no call out, or already answered). For a
/// saga, YES reads "succeeded" and NO "failed", and READ_ONLY counts as YES.
pub(super) fn take_answer(
    txn: &mut Txn,
    i: usize,
    result: &VoteResult,
    output: Vec<u8>,
    now_ms: u64,
) -> Option<ChangeKind> {
    let saga = txn.mode == Mode::Saga;
    let branch = txn.branches.get_mut(i)?;
    if !branch.in_flight || branch.state != BranchState::Registered {
        return None;
    }
    branch.in_flight = false;
    let (yes, no) = if saga {
        ("succeeded", "failed")
    } else {
        ("voted YES", "voted NO")
    };
    let id = branch.id.clone();
    let seen = match result {
        VoteResult::Yes | VoteResult::ReadOnly if saga || *result == VoteResult::Yes => {
            remember(branch, CallKind::Prepare, true, yes.to_string(), now_ms);
            branch.state = BranchState::Prepared;
            branch.result = output.clone();
            ChangeKind::Voted {
                branch: id,
                vote: Vote::Yes,
                detail: String::new(),
                result: output,
            }
        }
        VoteResult::Yes | VoteResult::ReadOnly => {
            remember(
                branch,
                CallKind::Prepare,
                true,
                "voted READ_ONLY".into(),
                now_ms,
            );
            branch.state = BranchState::ReadOnly;
            ChangeKind::Voted {
                branch: id,
                vote: Vote::ReadOnly,
                detail: String::new(),
                result: Vec::new(),
            }
        }
        VoteResult::No(reason) => {
            let what = format!("{no}: {reason}");
            remember(branch, CallKind::Prepare, true, what.clone(), now_ms);
            branch.state = BranchState::Rejected;
            branch.last_error = Some(what);
            ChangeKind::Voted {
                branch: id,
                vote: Vote::No,
                detail: reason.clone(),
                result: Vec::new(),
            }
        }
        VoteResult::Transient(error) => {
            remember(branch, CallKind::Prepare, false, error.clone(), now_ms);
            branch.last_error = Some(error.clone());
            branch.failing_since_ms.get_or_insert(now_ms);
            return Some(ChangeKind::CallFailed {
                branch: id,
                call: CallKind::Prepare,
                attempt: branch.phase_attempts,
                error: error.clone(),
            });
        }
    };
    branch.failing_since_ms = None;
    Some(seen)
}

pub(super) fn voted(
    txn: &mut Txn,
    i: usize,
    result: VoteResult,
    output: Vec<u8>,
    now_ms: u64,
) -> Vec<Action> {
    let Some(seen) = take_answer(txn, i, &result, output, now_ms) else {
        return Vec::new(); // stale answer
    };
    note(txn, now_ms, seen);
    match txn.state {
        TxnState::Preparing => match result {
            VoteResult::Yes | VoteResult::ReadOnly => {
                let all_voted = txn
                    .branches
                    .iter()
                    .all(|b| matches!(b.state, BranchState::Prepared | BranchState::ReadOnly));
                if all_voted {
                    decide_commit(txn, now_ms)
                } else {
                    Vec::new()
                }
            }
            VoteResult::No(reason) => {
                let reason = format!("{} voted NO: {reason}", describe(txn, i));
                abort(txn, reason, now_ms)
            }
            VoteResult::Transient(error) => {
                if now_ms >= txn.deadline_ms() {
                    let reason = format!(
                        "{} did not answer {} before the phase-1 deadline: {error}",
                        describe(txn, i),
                        CallKind::Prepare.rpc_name(txn.mode)
                    );
                    abort(txn, reason, now_ms)
                } else {
                    vec![retry_later(txn, i, CallKind::Prepare)]
                }
            }
        },
        // The abort was decided while this prepare was out: roll it back now
        // that it has answered, so the rollback cannot overtake it.
        TxnState::Aborting => {
            if needs_rollback(&txn.branches[i]) {
                txn.branches[i].phase_attempts = 0;
                vec![call(txn, i, CallKind::Rollback)]
            } else {
                maybe_finish(txn, now_ms)
            }
        }
        _ => Vec::new(),
    }
}

pub(super) fn acked(txn: &mut Txn, i: usize, output: Vec<u8>, now_ms: u64) -> Vec<Action> {
    let Some(branch) = txn.branches.get_mut(i) else {
        return Vec::new();
    };
    if !branch.in_flight {
        return Vec::new();
    }
    branch.in_flight = false;
    branch.failing_since_ms = None;
    let call = if txn.state == TxnState::Committing {
        CallKind::Commit
    } else {
        CallKind::Rollback
    };
    remember(branch, call, true, "acknowledged".to_string(), now_ms);
    if !output.is_empty() {
        branch.result = output.clone();
    }
    match txn.state {
        TxnState::Committing => branch.state = BranchState::Committed,
        TxnState::Aborting => branch.state = BranchState::RolledBack,
        _ => return Vec::new(),
    }
    note_acked(txn, i, call, output, now_ms);
    maybe_finish(txn, now_ms)
}

/// Notes that branch `i` acknowledged `call`; a commit's result travels
/// with the change.
pub(super) fn note_acked(txn: &mut Txn, i: usize, call: CallKind, output: Vec<u8>, now_ms: u64) {
    let branch = branch_id(txn, i);
    let result = if call == CallKind::Commit {
        output
    } else {
        Vec::new()
    };
    note(
        txn,
        now_ms,
        ChangeKind::Acked {
            branch,
            call,
            result,
        },
    );
}

pub(super) fn phase2_failed(
    txn: &mut Txn,
    i: usize,
    error: String,
    now_ms: u64,
    policy: &Policy,
) -> Vec<Action> {
    let Some(branch) = txn.branches.get_mut(i) else {
        return Vec::new();
    };
    if !branch.in_flight {
        return Vec::new();
    }
    branch.in_flight = false;
    let call = if txn.state == TxnState::Committing {
        CallKind::Commit
    } else {
        CallKind::Rollback
    };
    remember(branch, call, false, error.clone(), now_ms);
    branch.last_error = Some(error.clone());
    let since = *branch.failing_since_ms.get_or_insert(now_ms);
    let stuck = branch.phase_attempts >= policy.stuck_after_attempts
        || now_ms.saturating_sub(since) >= policy.stuck_after_ms;
    let failed = ChangeKind::CallFailed {
        branch: branch.id.clone(),
        call,
        attempt: branch.phase_attempts,
        error,
    };
    note(txn, now_ms, failed);
    if stuck && txn.stuck_since_ms.is_none() {
        txn.stuck_since_ms = Some(now_ms);
        note(txn, now_ms, ChangeKind::Stuck);
    }
    match txn.state {
        TxnState::Committing => vec![retry_later(txn, i, CallKind::Commit)],
        TxnState::Aborting => vec![retry_later(txn, i, CallKind::Rollback)],
        _ => Vec::new(),
    }
}

pub(super) fn retry_due(txn: &mut Txn, i: usize, kind: CallKind, seq: u32) -> Vec<Action> {
    let Some(branch) = txn.branches.get(i) else {
        return Vec::new();
    };
    let still_needed = !branch.in_flight
        && branch.retry_seq == seq
        && match kind {
            CallKind::Prepare => {
                txn.state == TxnState::Preparing && branch.state == BranchState::Registered
            }
            CallKind::Commit => {
                txn.state == TxnState::Committing && branch.state == BranchState::Prepared
            }
            CallKind::Rollback => txn.state == TxnState::Aborting && needs_rollback(branch),
        };
    if still_needed {
        vec![call(txn, i, kind)]
    } else {
        Vec::new()
    }
}

pub(super) fn recovered(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    for branch in &mut txn.branches {
        branch.in_flight = false;
    }
    match txn.state {
        TxnState::Active | TxnState::Preparing => {
            // PREPARING is never written, so an ACTIVE record may have had its
            // prepares sent: assume every branch may be prepared.
            for branch in &mut txn.branches {
                branch.prepare_sent = true;
            }
            abort(
                txn,
                "coordinator restarted before the commit decision (presumed abort)".to_string(),
                now_ms,
            )
        }
        TxnState::Committing => {
            let mut actions = phase2_calls(txn, CallKind::Commit);
            if actions.is_empty() {
                actions = maybe_finish(txn, now_ms);
            }
            actions
        }
        TxnState::Aborting => {
            let mut actions = phase2_calls(txn, CallKind::Rollback);
            if actions.is_empty() {
                actions = maybe_finish(txn, now_ms);
            }
            actions
        }
        TxnState::Committed | TxnState::Aborted => Vec::new(),
    }
}

/// Every vote is YES or READ_ONLY: make the commit decision durable, then
/// send phase 2 to the prepared branches.
pub(super) fn decide_commit(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    txn.state = TxnState::Committing;
    txn.decided_at_ms = Some(now_ms);
    note_state(txn, now_ms);
    let calls = phase2_calls(txn, CallKind::Commit);
    if calls.is_empty() {
        return finish(txn, now_ms, Durability::Flush);
    }
    let mut actions = vec![Action::Persist(Durability::Flush), Action::Publish];
    actions.extend(calls);
    actions
}

/// Decide abort: durable first, then roll back every branch whose prepare may
/// have run (branches with a prepare still out are rolled back when it answers).
pub(super) fn abort(txn: &mut Txn, reason: String, now_ms: u64) -> Vec<Action> {
    if txn.mode == Mode::Saga {
        return saga::compensate(txn, reason, now_ms);
    }
    txn.state = TxnState::Aborting;
    txn.reason = reason;
    txn.decided_at_ms = Some(now_ms);
    note_state(txn, now_ms);
    let calls = phase2_calls(txn, CallKind::Rollback);
    if calls.is_empty() && !txn.branches.iter().any(|b| b.in_flight) {
        return finish(txn, now_ms, Durability::Flush);
    }
    let mut actions = vec![Action::Persist(Durability::Flush), Action::Publish];
    actions.extend(calls);
    actions
}

/// Phase-2 calls to every branch that needs one and has no call outstanding.
pub(super) fn phase2_calls(txn: &mut Txn, kind: CallKind) -> Vec<Action> {
    let mut actions = Vec::new();
    for i in 0..txn.branches.len() {
        let branch = &txn.branches[i];
        let needed = match kind {
            CallKind::Commit => branch.state == BranchState::Prepared,
            CallKind::Rollback => needs_rollback(branch),
            CallKind::Prepare => false,
        };
        if needed && !branch.in_flight {
            txn.branches[i].phase_attempts = 0;
            txn.branches[i].failing_since_ms = None;
            actions.push(call(txn, i, kind));
        }
    }
    actions
}

pub(super) fn maybe_finish(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    let done = match txn.state {
        // A branch resolved by hand is finished whichever way it went.
        TxnState::Committing => txn.branches.iter().all(|b| {
            matches!(b.state, BranchState::Committed | BranchState::ReadOnly)
                || (b.heuristic.is_some() && b.state == BranchState::RolledBack)
        }),
        TxnState::Aborting => txn
            .branches
            .iter()
            .all(|b| !b.in_flight && !needs_rollback(b)),
        _ => false,
    };
    if done {
        finish(txn, now_ms, Durability::Lazy)
    } else {
        Vec::new()
    }
}

pub(super) fn finish(txn: &mut Txn, now_ms: u64, durability: Durability) -> Vec<Action> {
    txn.state = match txn.state {
        TxnState::Committing => TxnState::Committed,
        _ => TxnState::Aborted,
    };
    txn.finished_at_ms = Some(now_ms);
    txn.stuck_since_ms = None;
    operator::note_mixed_outcome(txn);
    note_state(txn, now_ms);
    vec![Action::Persist(durability), Action::Publish, Action::Forget]
}

pub(super) fn needs_rollback(branch: &Branch) -> bool {
    branch.prepare_sent
        && !matches!(
            branch.state,
            BranchState::ReadOnly | BranchState::RolledBack | BranchState::Committed
        )
}

pub(super) fn call(txn: &mut Txn, i: usize, kind: CallKind) -> Action {
    let branch = &mut txn.branches[i];
    branch.in_flight = true;
    branch.next_retry_at_ms = None;
    branch.attempts += 1;
    branch.phase_attempts += 1;
    Action::Call {
        branch: i,
        call: kind,
        attempt: branch.phase_attempts,
    }
}

pub(super) fn retry_later(txn: &mut Txn, i: usize, kind: CallKind) -> Action {
    let branch = &mut txn.branches[i];
    branch.retry_seq = branch.retry_seq.wrapping_add(1);
    Action::RetryLater {
        branch: i,
        call: kind,
        failures: branch
            .phase_attempts
            .saturating_sub(branch.backoff_from)
            .max(1),
        seq: branch.retry_seq,
    }
}

pub(super) fn remember(branch: &mut Branch, call: CallKind, ok: bool, result: String, now_ms: u64) {
    if branch.history.len() >= MAX_HISTORY {
        branch.history.remove(0);
    }
    branch.history.push(Attempt {
        at_ms: now_ms,
        call,
        attempt: branch.phase_attempts,
        ok,
        result,
    });
}

pub(super) fn describe(txn: &Txn, i: usize) -> String {
    let b = &txn.branches[i];
    format!("branch {} ({} at {})", b.id, b.resource, b.participant)
}
