//! Sagas: ordered steps, each an action with a compensation. Same events,
//! actions and durability rules as 2PC and TCC, other transitions.
//!
//! ```text
//!          Commit            every compensable step succeeded
//!  ACTIVE ────────▶ RUNNING ───────────────────────────────▶ FINISHING ──must-succeed steps done──▶ COMPLETED
//!                (PREPARING)                                (COMMITTING)                          (COMMITTED)
//!                     │ a definitive failure, the timeout,
//!                     │ Rollback, an operator's abort
//!                     ▼
//!               COMPENSATING (ABORTING) ──every step that may have run compensated──▶ COMPENSATED (ABORTED)
//! ```
//!
//! - A step runs once every step it depends on succeeded: by default the
//!   step registered just before it, else the ones it names in `depends_on`,
//!   or none with `start_at_once`. Independent steps run in parallel.
//! - Each step's outcome is durable before any step that depends on it
//!   starts (`Persist(Flush)` before the calls), and RUNNING is durable
//!   before the first step starts: a restart resumes forward where it
//!   stopped (unlike 2PC, where an undecided transaction is aborted).
//! - A definitive failure or the timeout turns the saga backward. A step's
//!   compensation runs once every step that depends on it has been
//!   compensated (or never ran): reverse order. Every step that may have run
//!   is compensated, the failed one included (the barrier makes an empty
//!   compensation safe). Compensations retry with capped backoff until they
//!   succeed, and flag the saga stuck, like phase 2.
//! - A must-succeed step (no compensation) runs only after every
//!   compensable step succeeded: the saga is then decided forward
//!   (FINISHING) and the step is retried until it succeeds, like a commit.
//!
//! Branch states: REGISTERED (not run yet, or no answer yet), PREPARED (the
//! action succeeded), REJECTED (the action failed), COMMITTED (the saga
//! completed, or a must-succeed step succeeded), ROLLED_BACK (compensated).

use super::*;

/// The steps step `i` waits for.
pub(super) fn deps(txn: &Txn, i: usize) -> Vec<usize> {
    let step = &txn.branches[i];
    if step.start_at_once {
        Vec::new()
    } else if step.depends_on.is_empty() {
        if i == 0 { Vec::new() } else { vec![i - 1] }
    } else {
        step.depends_on
            .iter()
            .filter_map(|id| txn.branch_index(id))
            .collect()
    }
}

/// Checks a step about to be registered in saga `txn`: what it depends on
/// is registered before it (so the order has no cycle), and a
/// must-succeed step comes after every compensable one.
pub(super) fn check_step(txn: &Txn, step: &Branch) -> Result<(), String> {
    if step.start_at_once && !step.depends_on.is_empty() {
        return Err("a step cannot both start at once and depend on other steps".into());
    }
    for id in &step.depends_on {
        if id == &step.id {
            return Err(format!("step {} depends on itself", step.id));
        }
        if txn.branch_index(id).is_none() {
            return Err(format!(
                "step {} depends on {id:?}, which is not registered before it",
                step.id
            ));
        }
    }
    let must_succeed: Vec<&str> = txn
        .branches
        .iter()
        .filter(|b| b.must_succeed)
        .map(|b| b.id.as_str())
        .collect();
    if !step.must_succeed {
        if let Some(first) = must_succeed.first() {
            return Err(format!(
                "compensable step {} comes after must-succeed step {first}: \
                 steps without a compensation must come last",
                step.id
            ));
        }
        return Ok(());
    }
    // Every compensable step must succeed before this one starts.
    let mut probe = txn.clone();
    probe.branches.push(step.clone());
    let me = probe.branches.len() - 1;
    let before = ancestors(&probe, me);
    let missing: Vec<&str> = probe.branches[..me]
        .iter()
        .enumerate()
        .filter(|(j, b)| !b.must_succeed && !before.contains(j))
        .map(|(_, b)| b.id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "must-succeed step {} may start before compensable step(s) {} succeeded: \
             make it depend on them",
            step.id,
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Every step `i` waits for, directly or not.
fn ancestors(txn: &Txn, i: usize) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut todo = deps(txn, i);
    while let Some(j) = todo.pop() {
        if !seen.contains(&j) {
            seen.push(j);
            todo.extend(deps(txn, j));
        }
    }
    seen
}

/// The action of step `b` may have run, and its compensation has not.
pub(super) fn needs_compensation(b: &Branch) -> bool {
    b.prepare_sent
        && !b.must_succeed
        && !matches!(b.state, BranchState::RolledBack | BranchState::Committed)
}

/// A must-succeed step not done yet (nor resolved by hand).
fn owed_forward(b: &Branch) -> bool {
    b.must_succeed && !succeeded(b) && b.heuristic.is_none()
}

/// Step `b` succeeded (forward).
fn succeeded(b: &Branch) -> bool {
    matches!(b.state, BranchState::Prepared | BranchState::Committed)
}

/// What a must-succeed step's dependents wait for: it succeeded, or an
/// operator resolved it by hand (either way, it is done with).
fn satisfied(b: &Branch) -> bool {
    succeeded(b) || b.heuristic.is_some()
}

/// Every step that step `i` waits for is done with (forward).
fn deps_done(txn: &Txn, i: usize) -> bool {
    deps(txn, i).iter().all(|&j| satisfied(&txn.branches[j]))
}

/// Every step that waits for step `i` is compensated or never ran, and has
/// no call out: `i`'s compensation may run.
fn dependents_settled(txn: &Txn, i: usize) -> bool {
    dependents(txn, i).iter().all(|&j| {
        let b = &txn.branches[j];
        !b.in_flight && !needs_compensation(b)
    })
}

/// The client starts the saga: RUNNING is made durable, then the first
/// steps start.
pub(super) fn start(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    txn.state = TxnState::Preparing;
    note_state(txn, now_ms);
    let mut actions = vec![Action::Persist(Durability::Flush), Action::Publish];
    actions.extend(advance(txn, now_ms));
    actions
}

/// What the saga does next from where it is: start the steps that may
/// start, decide forward once every compensable step succeeded, compensate
/// the steps whose dependents are compensated, finish.
pub(super) fn advance(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    match txn.state {
        TxnState::Preparing => {
            if txn.branches.iter().all(|b| b.must_succeed || succeeded(b)) {
                return decide(txn, now_ms);
            }
            let ready: Vec<usize> = (0..txn.branches.len())
                .filter(|&i| {
                    let b = &txn.branches[i];
                    !b.must_succeed
                        && !b.prepare_sent
                        && deps(txn, i).iter().all(|&j| succeeded(&txn.branches[j]))
                })
                .collect();
            ready
                .into_iter()
                .map(|i| {
                    txn.branches[i].prepare_sent = true;
                    txn.branches[i].phase_attempts = 0;
                    call(txn, i, CallKind::Prepare)
                })
                .collect()
        }
        TxnState::Committing => {
            let pending: Vec<usize> = (0..txn.branches.len())
                .filter(|&i| owed_forward(&txn.branches[i]))
                .collect();
            if pending.is_empty() && !txn.branches.iter().any(|b| b.in_flight) {
                for b in &mut txn.branches {
                    if b.state == BranchState::Prepared {
                        b.state = BranchState::Committed;
                    }
                }
                return finish(txn, now_ms, Durability::Lazy);
            }
            let ready: Vec<usize> = pending
                .into_iter()
                .filter(|&i| {
                    let b = &txn.branches[i];
                    !b.in_flight && b.phase_attempts == 0 && deps_done(txn, i)
                })
                .collect();
            ready
                .into_iter()
                .map(|i| {
                    txn.branches[i].prepare_sent = true;
                    call(txn, i, CallKind::Commit)
                })
                .collect()
        }
        TxnState::Aborting => {
            let settled = |b: &Branch| !b.in_flight && !needs_compensation(b);
            if txn.branches.iter().all(settled) {
                return finish(txn, now_ms, Durability::Lazy);
            }
            let ready: Vec<usize> = (0..txn.branches.len())
                .filter(|&i| {
                    let b = &txn.branches[i];
                    needs_compensation(b)
                        && !b.in_flight
                        && b.phase_attempts == 0
                        && dependents_settled(txn, i)
                })
                .collect();
            ready
                .into_iter()
                .map(|i| call(txn, i, CallKind::Rollback))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The steps that wait for step `i`.
fn dependents(txn: &Txn, i: usize) -> Vec<usize> {
    (0..txn.branches.len())
        .filter(|&j| j != i && deps(txn, j).contains(&i))
        .collect()
}

/// Every compensable step succeeded: the saga goes forward for good.
fn decide(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    txn.state = TxnState::Committing;
    txn.decided_at_ms = Some(now_ms);
    note_state(txn, now_ms);
    for b in &mut txn.branches {
        if b.must_succeed {
            b.phase_attempts = 0;
            b.failing_since_ms = None;
        }
    }
    if !txn.branches.iter().any(|b| b.must_succeed) {
        for b in &mut txn.branches {
            b.state = BranchState::Committed;
        }
        return finish(txn, now_ms, Durability::Flush);
    }
    let mut actions = vec![Action::Persist(Durability::Flush), Action::Publish];
    actions.extend(advance(txn, now_ms));
    actions
}

/// Turns the saga backward: durable first, then the compensations that may
/// run now (the others follow as their dependents are compensated).
pub(super) fn compensate(txn: &mut Txn, reason: String, now_ms: u64) -> Vec<Action> {
    txn.state = TxnState::Aborting;
    txn.reason = reason;
    txn.decided_at_ms = Some(now_ms);
    note_state(txn, now_ms);
    for b in &mut txn.branches {
        b.phase_attempts = 0;
        b.failing_since_ms = None;
    }
    let calls = advance(txn, now_ms);
    if txn.state.is_final() {
        // Nothing had run: `advance` finished it (lazily); the decision is
        // the final record, so it goes out durable.
        return calls
            .into_iter()
            .map(|a| match a {
                Action::Persist(_) => Action::Persist(Durability::Flush),
                other => other,
            })
            .collect();
    }
    let mut actions = vec![Action::Persist(Durability::Flush), Action::Publish];
    actions.extend(calls);
    actions
}

/// A step's action answered (RUNNING, or late while compensating).
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
                let mut actions = vec![Action::Persist(Durability::Flush)];
                let next = advance(txn, now_ms);
                if txn.state != TxnState::Preparing {
                    // Decided (or completed) by this answer: `advance` wrote
                    // its own persist.
                    return next;
                }
                actions.extend(next);
                actions
            }
            VoteResult::No(reason) => {
                let reason = format!("{} failed: {reason}", describe(txn, i));
                compensate(txn, reason, now_ms)
            }
            VoteResult::Transient(error) => {
                if now_ms >= txn.deadline_ms() {
                    let reason = format!(
                        "{} did not succeed before the saga's {} ms timeout: {error}",
                        describe(txn, i),
                        txn.timeout_ms
                    );
                    compensate(txn, reason, now_ms)
                } else {
                    vec![retry_later(txn, i, CallKind::Prepare)]
                }
            }
        },
        // Compensating while this action was out: now that it answered, its
        // compensation may follow (after its dependents').
        TxnState::Aborting => {
            let mut actions = advance(txn, now_ms);
            if !txn.state.is_final() && !actions.is_empty() {
                actions.insert(0, Action::Persist(Durability::Lazy));
            }
            actions
        }
        _ => Vec::new(),
    }
}

/// A compensation, or a must-succeed step's action, succeeded.
pub(super) fn acked(txn: &mut Txn, i: usize, output: Vec<u8>, now_ms: u64) -> Vec<Action> {
    let Some(step) = txn.branches.get_mut(i) else {
        return Vec::new();
    };
    if !step.in_flight {
        return Vec::new();
    }
    step.in_flight = false;
    step.failing_since_ms = None;
    let call = match txn.state {
        TxnState::Committing => CallKind::Commit,
        TxnState::Aborting => CallKind::Rollback,
        _ => return Vec::new(),
    };
    let what = if call == CallKind::Commit {
        "succeeded"
    } else {
        "compensated"
    };
    remember(step, call, true, what.to_string(), now_ms);
    if call == CallKind::Commit {
        step.state = BranchState::Committed;
        if !output.is_empty() {
            step.result = output.clone();
        }
    } else {
        step.state = BranchState::RolledBack;
    }
    note_acked(txn, i, call, output, now_ms);
    let mut actions = advance(txn, now_ms);
    if !txn.state.is_final() && !actions.is_empty() {
        // The next compensation (or step) starts only once this one's
        // outcome is on disk, as a restart would otherwise redo them out of
        // order... which the barrier tolerates, but the order is promised.
        actions.insert(0, Action::Persist(Durability::Flush));
    }
    actions
}

/// A retry's backoff is over: call again if the step still needs it.
pub(super) fn retry_due(txn: &mut Txn, i: usize, kind: CallKind, seq: u32) -> Vec<Action> {
    let Some(step) = txn.branches.get(i) else {
        return Vec::new();
    };
    if step.in_flight || step.retry_seq != seq {
        return Vec::new();
    }
    let needed = match kind {
        CallKind::Prepare => {
            txn.state == TxnState::Preparing && step.state == BranchState::Registered
        }
        CallKind::Commit => txn.state == TxnState::Committing && owed_forward(step),
        CallKind::Rollback => txn.state == TxnState::Aborting && needs_compensation(step),
    };
    if needed {
        vec![call(txn, i, kind)]
    } else {
        Vec::new()
    }
}

/// The call the saga owes step `i` now, in its order (for an operator's
/// RetryNow and ResolveBranch): an action started and not answered yet, a
/// must-succeed step whose dependencies are done, a compensation started
/// or whose dependents are compensated. Never one the order holds back.
pub(super) fn pending_call(txn: &Txn, i: usize) -> Option<CallKind> {
    let step = &txn.branches[i];
    match txn.state {
        TxnState::Preparing if step.prepare_sent && step.state == BranchState::Registered => {
            Some(CallKind::Prepare)
        }
        TxnState::Committing if owed_forward(step) && deps_done(txn, i) => Some(CallKind::Commit),
        TxnState::Aborting
            if needs_compensation(step)
                && (step.phase_attempts > 0 || dependents_settled(txn, i)) =>
        {
            Some(CallKind::Rollback)
        }
        _ => None,
    }
}

/// After a restart: RUNNING resumes forward (or compensates past the
/// timeout), FINISHING and COMPENSATING resume where they were.
pub(super) fn recovered(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    for b in &mut txn.branches {
        b.in_flight = false;
    }
    match txn.state {
        // Nothing started before RUNNING was durable.
        TxnState::Active => compensate(
            txn,
            "coordinator restarted before the saga started (presumed abort)".to_string(),
            now_ms,
        ),
        TxnState::Preparing => {
            if now_ms >= txn.deadline_ms() {
                let reason = format!(
                    "timed out after {} ms (found RUNNING after a restart)",
                    txn.timeout_ms
                );
                return compensate(txn, reason, now_ms);
            }
            // Steps with no durable outcome run again (the barrier makes the
            // repeat safe); then whatever may start.
            let mut actions: Vec<Action> = (0..txn.branches.len())
                .filter(|&i| {
                    let b = &txn.branches[i];
                    b.prepare_sent && b.state == BranchState::Registered
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|i| {
                    txn.branches[i].phase_attempts = 0;
                    call(txn, i, CallKind::Prepare)
                })
                .collect();
            actions.extend(advance(txn, now_ms));
            actions
        }
        TxnState::Committing | TxnState::Aborting => {
            for b in &mut txn.branches {
                b.phase_attempts = 0;
            }
            advance(txn, now_ms)
        }
        TxnState::Committed | TxnState::Aborted => Vec::new(),
    }
}
