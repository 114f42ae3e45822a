//! Transitions operators ask for through the admin API: retry now, force an
//! outcome, resolve a branch by hand. Same rules as the rest of the engine:
//! plain functions over the transaction, returning actions.

use super::*;

/// The call the current phase still owes branch `i`, if any.
pub(super) fn pending_call(txn: &Txn, i: usize) -> Option<CallKind> {
    if txn.mode == Mode::Saga {
        return saga::pending_call(txn, i);
    }
    let branch = &txn.branches[i];
    match txn.state {
        TxnState::Preparing if branch.state == BranchState::Registered => Some(CallKind::Prepare),
        TxnState::Committing if branch.state == BranchState::Prepared => Some(CallKind::Commit),
        TxnState::Aborting if needs_rollback(branch) => Some(CallKind::Rollback),
        _ => None,
    }
}

pub(super) fn retry_now(txn: &mut Txn, now_ms: u64) -> Result<Vec<Action>, EngineError> {
    if txn.state.is_final() || txn.state == TxnState::Active {
        return Err(wrong_state(
            txn,
            "RetryNow",
            "PREPARING, COMMITTING or ABORTING (with calls to retry)",
        ));
    }
    let mut actions = Vec::new();
    for i in 0..txn.branches.len() {
        if txn.branches[i].in_flight {
            continue;
        }
        if let Some(kind) = pending_call(txn, i) {
            let branch = &mut txn.branches[i];
            branch.retry_seq = branch.retry_seq.wrapping_add(1); // the scheduled retry is stale now
            branch.backoff_from = branch.phase_attempts;
            actions.push(call(txn, i, kind));
        }
    }
    note(txn, now_ms, ChangeKind::RetryNow);
    Ok(actions)
}

pub(super) fn force_abort(
    txn: &mut Txn,
    reason: String,
    now_ms: u64,
) -> Result<Vec<Action>, EngineError> {
    match txn.state {
        TxnState::Active | TxnState::Preparing => Ok(abort(
            txn,
            format!("aborted by an operator: {reason}"),
            now_ms,
        )),
        _ => Err(wrong_state(
            txn,
            "ForceOutcome(abort)",
            "undecided (ACTIVE or PREPARING)",
        )),
    }
}

pub(super) fn force_commit(
    txn: &mut Txn,
    reason: String,
    now_ms: u64,
) -> Result<Vec<Action>, EngineError> {
    if !matches!(txn.state, TxnState::Active | TxnState::Preparing) {
        return Err(wrong_state(
            txn,
            "ForceOutcome(commit)",
            "undecided (ACTIVE or PREPARING)",
        ));
    }
    // A saga's must-succeed steps run after the decision.
    let unprepared: Vec<&str> = txn
        .branches
        .iter()
        .filter(|b| !b.must_succeed)
        .filter(|b| !matches!(b.state, BranchState::Prepared | BranchState::ReadOnly))
        .map(|b| b.id.as_str())
        .collect();
    if !unprepared.is_empty() {
        return Err(EngineError::NotAllPrepared {
            txn: txn.id.clone(),
            branches: unprepared.join(", "),
        });
    }
    txn.reason = format!("committed by an operator: {reason}");
    if txn.mode == Mode::Saga {
        if txn.state == TxnState::Active {
            txn.state = TxnState::Preparing;
            note_state(txn, now_ms);
        }
        return Ok(saga::advance(txn, now_ms));
    }
    Ok(decide_commit(txn, now_ms))
}

/// Marks branch `i` finished by hand. `i` must be a valid index.
pub(super) fn resolve_branch(
    txn: &mut Txn,
    i: usize,
    committed: bool,
    note: String,
    now_ms: u64,
) -> Result<Vec<Action>, EngineError> {
    if !matches!(txn.state, TxnState::Committing | TxnState::Aborting) {
        return Err(wrong_state(
            txn,
            "ResolveBranch",
            "decided and unfinished (COMMITTING or ABORTING)",
        ));
    }
    if i >= txn.branches.len() {
        return Ok(Vec::new());
    }
    if pending_call(txn, i).is_none() {
        return Err(EngineError::BranchNotPending {
            txn: txn.id.clone(),
            branch: txn.branches[i].id.clone(),
            state: txn.branches[i].state.name(),
        });
    }
    let branch = &mut txn.branches[i];
    branch.state = if committed {
        BranchState::Committed
    } else {
        BranchState::RolledBack
    };
    branch.heuristic = Some(note.clone());
    branch.in_flight = false; // an answer still on its way is ignored
    branch.retry_seq = branch.retry_seq.wrapping_add(1);
    branch.next_retry_at_ms = None;
    let branch = branch_id(txn, i);
    changes::note(
        txn,
        now_ms,
        ChangeKind::Resolved {
            branch,
            committed,
            note,
        },
    );
    // An operator's resolution is acknowledged only once durable, whether or
    // not it finishes the transaction.
    let mut actions = if txn.mode == Mode::Saga {
        saga::advance(txn, now_ms)
    } else {
        maybe_finish(txn, now_ms)
    };
    if !txn.state.is_final() && !actions.is_empty() {
        actions.insert(0, Action::Persist(Durability::Flush));
    }
    for action in &mut actions {
        if *action == Action::Persist(Durability::Lazy) {
            *action = Action::Persist(Durability::Flush);
        }
    }
    if actions.is_empty() {
        actions.push(Action::Persist(Durability::Flush));
    }
    Ok(actions)
}

/// Says in the reason of a final transaction which branches an operator
/// resolved against its decision, if any (a heuristic, mixed outcome).
pub(super) fn note_mixed_outcome(txn: &mut Txn) {
    let mixed = txn.mixed_branches();
    if mixed.is_empty() {
        return;
    }
    let against = if txn.state == TxnState::Committed {
        "rolled back"
    } else {
        "committed"
    };
    let note = format!(
        "heuristic mixed outcome: branch {} resolved by hand as {against}",
        mixed.join(", ")
    );
    txn.reason = if txn.reason.is_empty() {
        note
    } else {
        format!("{}; {note}", txn.reason)
    };
}
