//! The transaction state machine. Pure: no async, no storage, no network.
//!
//! The driver feeds it one [`Event`] at a time together with the current time;
//! [`step`] changes the [`Txn`] in place and returns the [`Action`]s the driver
//! must carry out, **in order**. A `Persist` must be durable before the actions
//! after it run: that is how the write-ahead rule is kept (the decision is on
//! disk before any participant hears commit and before any client hears the
//! outcome).
//!
//! ```text
//!            Commit                all YES / READ_ONLY
//!  ACTIVE ───────────▶ PREPARING ─────────────────────▶ COMMITTING ──all acks──▶ COMMITTED
//!    │                     │
//!    │ Rollback, timeout   │ a NO vote, Rollback, phase-1 deadline
//!    ▼                     ▼
//!  ABORTING ◀──────────────┘ ──────────────────────────────────────all acks──▶ ABORTED
//! ```
//!
//! After a restart every unfinished transaction gets [`Event::Recovered`]:
//! undecided ones (ACTIVE, PREPARING) are aborted (presumed abort), decided ones
//! have phase 2 sent again to every branch that has not acknowledged it.
//!
//! Sagas ([`Mode::Saga`]) take the same events through their own transitions
//! ([`saga`]): a RUNNING saga resumes forward after a restart.

mod changes;
mod operator;
mod phases;
mod saga;
mod types;

#[cfg(test)]
mod tests;

pub use changes::{Change, ChangeKind, Vote};
use changes::{branch_id, note, note_state};
use phases::*;
pub use types::{
    Attempt, Branch, BranchState, CallKind, MAX_HISTORY, MAX_RESULT, Mode, Protocol, Txn, TxnState,
    VoteResult,
};

/// Something that happened to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client registers a branch (ACTIVE only). Boxed: a branch is far
    /// larger than any other event.
    Register(Box<Branch>),
    /// A client asks to commit: phase 1 starts.
    Commit,
    /// A client asks to roll back an undecided transaction.
    Rollback { reason: String },
    /// The transaction timeout (also the phase-1 deadline) has passed.
    TimedOut,
    /// A phase-1 call returned; `output` is the result sent with a YES.
    Voted {
        branch: usize,
        result: VoteResult,
        output: Vec<u8>,
    },
    /// A phase-2 call returned OK; `output` is the result sent with the ack.
    Acked { branch: usize, output: Vec<u8> },
    /// A phase-2 call failed; it will be retried.
    Phase2Failed { branch: usize, error: String },
    /// The backoff of an earlier failed call is over. `seq` is the retry
    /// generation it was scheduled with.
    RetryDue {
        branch: usize,
        call: CallKind,
        seq: u32,
    },
    /// An operator asks for every pending retry to run now, backoff reset.
    RetryNow,
    /// An operator aborts an undecided transaction.
    ForceAbort { reason: String },
    /// An operator commits an undecided transaction whose every branch is prepared.
    ForceCommit { reason: String },
    /// An operator marks one branch of a decided transaction as finished by
    /// hand (a heuristic outcome), so the transaction can finish without it.
    ResolveBranch {
        branch: usize,
        committed: bool,
        note: String,
    },
    /// The coordinator restarted and found this transaction unfinished in the log.
    Recovered,
}

/// How soon a `Persist` must reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Flushed and fdatasync'ed before the next action runs.
    Flush,
    /// Written in the next group commit; nothing waits for it. Only for records
    /// that recovery can rebuild (the final state after a durable decision).
    Lazy,
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the transaction as it is now to the log.
    Persist(Durability),
    /// Tell waiting clients the state as it is now.
    Publish,
    /// Call one branch. `attempt` counts calls of this phase to this branch.
    Call {
        branch: usize,
        call: CallKind,
        attempt: u32,
    },
    /// Call failed: feed `RetryDue { seq }` back after a backoff for the
    /// `failures` so far.
    RetryLater {
        branch: usize,
        call: CallKind,
        failures: u32,
        seq: u32,
    },
    /// The transaction is final: drop it from memory once its record is written.
    Forget,
}

/// A request the transaction cannot take in its current state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("transaction {txn} is {state}, {op} needs it to be {expected}")]
    WrongState {
        txn: String,
        state: &'static str,
        op: &'static str,
        expected: &'static str,
    },
    #[error("branch {branch} of transaction {txn} is already registered with different content")]
    BranchConflict { txn: String, branch: String },
    #[error("transaction {txn} cannot be committed: branch(es) {branches} are not prepared")]
    NotAllPrepared { txn: String, branches: String },
    #[error("saga {txn}: {why}")]
    BadStep { txn: String, why: String },
    #[error(
        "branch {branch} of transaction {txn} is {state}; only a branch still waiting for phase 2 can be resolved"
    )]
    BranchNotPending {
        txn: String,
        branch: String,
        state: &'static str,
    },
}

/// When a transaction whose phase 2 keeps failing counts as stuck: after this
/// many failed calls to one branch in a row, or after failing for this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub stuck_after_attempts: u32,
    pub stuck_after_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            stuck_after_attempts: 10,
            stuck_after_ms: 5 * 60 * 1000,
        }
    }
}

/// A new transaction: notes its first changes (it is ACTIVE, with the
/// branches it was begun with).
pub fn begin(txn: &mut Txn, now_ms: u64) {
    note_state(txn, now_ms);
    for i in 0..txn.branches.len() {
        let branch = branch_id(txn, i);
        note(txn, now_ms, ChangeKind::Registered { branch });
    }
}

/// Checks the steps of a saga begun with them (each against the ones before
/// it), as a registration would.
pub fn check_steps(txn: &Txn) -> Result<(), EngineError> {
    for i in 0..txn.branches.len() {
        check_branch(txn, i)?;
    }
    Ok(())
}

/// Checks branch `i` of `txn` against the branches before it.
fn check_branch(txn: &Txn, i: usize) -> Result<(), EngineError> {
    let branch = &txn.branches[i];
    let bad = |why: String| EngineError::BadStep {
        txn: txn.id.clone(),
        why,
    };
    if txn.mode != Mode::Saga {
        if !branch.depends_on.is_empty() || branch.start_at_once || branch.must_succeed {
            return Err(EngineError::BadStep {
                txn: txn.id.clone(),
                why: format!(
                    "branch {}: depends_on, start_at_once and must_succeed are for MODE_SAGA steps",
                    branch.id
                ),
            });
        }
        return Ok(());
    }
    let mut before = txn.clone();
    before.branches.truncate(i);
    saga::check_step(&before, branch).map_err(bad)
}

/// Applies one event at `now_ms` (milliseconds since the Unix epoch).
pub fn step(
    txn: &mut Txn,
    event: Event,
    now_ms: u64,
    policy: &Policy,
) -> Result<Vec<Action>, EngineError> {
    let state_before = txn.state;
    let actions = match event {
        Event::Register(branch) => register(txn, *branch, now_ms)?,
        Event::Commit => commit(txn, now_ms),
        Event::Rollback { reason } => rollback(txn, reason, now_ms)?,
        Event::TimedOut => timed_out(txn, now_ms),
        Event::Voted {
            branch,
            result,
            output,
        } if txn.mode == Mode::Saga => saga::voted(txn, branch, result, output, now_ms),
        Event::Voted {
            branch,
            result,
            output,
        } => voted(txn, branch, result, output, now_ms),
        Event::Acked { branch, output } if txn.mode == Mode::Saga => {
            saga::acked(txn, branch, output, now_ms)
        }
        Event::Acked { branch, output } => acked(txn, branch, output, now_ms),
        Event::Phase2Failed { branch, error } => phase2_failed(txn, branch, error, now_ms, policy),
        Event::RetryDue { branch, call, seq } if txn.mode == Mode::Saga => {
            saga::retry_due(txn, branch, call, seq)
        }
        Event::RetryDue { branch, call, seq } => retry_due(txn, branch, call, seq),
        Event::Recovered if txn.mode == Mode::Saga => saga::recovered(txn, now_ms),
        Event::Recovered => recovered(txn, now_ms),
        Event::RetryNow => operator::retry_now(txn, now_ms)?,
        Event::ForceAbort { reason } => operator::force_abort(txn, reason, now_ms)?,
        Event::ForceCommit { reason } => operator::force_commit(txn, reason, now_ms)?,
        Event::ResolveBranch {
            branch,
            committed,
            note,
        } => operator::resolve_branch(txn, branch, committed, note, now_ms)?,
    };
    if txn.state != state_before || !actions.is_empty() {
        txn.updated_at_ms = now_ms;
    }
    Ok(actions)
}

fn wrong_state(txn: &Txn, op: &'static str, expected: &'static str) -> EngineError {
    EngineError::WrongState {
        txn: txn.id.clone(),
        state: txn.state.name(),
        op,
        expected,
    }
}

fn register(txn: &mut Txn, branch: Branch, now_ms: u64) -> Result<Vec<Action>, EngineError> {
    if txn.state != TxnState::Active {
        return Err(wrong_state(txn, "RegisterBranch", "ACTIVE"));
    }
    if let Some(existing) = txn.branches.iter().find(|b| b.id == branch.id) {
        if !existing.same_spec(&branch) {
            return Err(EngineError::BranchConflict {
                txn: txn.id.clone(),
                branch: branch.id,
            });
        }
        // A retried registration: answer once the first one is surely durable.
        return Ok(vec![Action::Persist(Durability::Flush)]);
    }
    let id = branch.id.clone();
    txn.branches.push(branch);
    if let Err(e) = check_branch(txn, txn.branches.len() - 1) {
        txn.branches.pop();
        return Err(e);
    }
    note(txn, now_ms, ChangeKind::Registered { branch: id });
    Ok(vec![Action::Persist(Durability::Flush)])
}

fn commit(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    if txn.state != TxnState::Active {
        // Already committing, aborting or final: the caller waits for the outcome.
        return Vec::new();
    }
    if now_ms >= txn.deadline_ms() {
        let reason = format!("timed out after {} ms before commit", txn.timeout_ms);
        return abort(txn, reason, now_ms);
    }
    if txn.mode == Mode::Saga {
        return saga::start(txn, now_ms);
    }
    txn.state = TxnState::Preparing;
    note_state(txn, now_ms);
    if txn.branches.is_empty() {
        return decide_commit(txn, now_ms);
    }
    let mut actions = vec![Action::Publish];
    for i in 0..txn.branches.len() {
        txn.branches[i].prepare_sent = true;
        actions.push(call(txn, i, CallKind::Prepare));
    }
    actions
}

fn rollback(txn: &mut Txn, reason: String, now_ms: u64) -> Result<Vec<Action>, EngineError> {
    match txn.state {
        TxnState::Active | TxnState::Preparing => {
            let reason = if reason.is_empty() {
                "rolled back by the client".to_string()
            } else {
                format!("rolled back by the client: {reason}")
            };
            Ok(abort(txn, reason, now_ms))
        }
        TxnState::Aborting | TxnState::Aborted => Ok(Vec::new()),
        TxnState::Committing | TxnState::Committed => Err(wrong_state(
            txn,
            "Rollback",
            "undecided (ACTIVE or PREPARING)",
        )),
    }
}

fn timed_out(txn: &mut Txn, now_ms: u64) -> Vec<Action> {
    match txn.state {
        TxnState::Active => {
            let reason = format!("timed out after {} ms while ACTIVE", txn.timeout_ms);
            abort(txn, reason, now_ms)
        }
        TxnState::Preparing if txn.mode == Mode::Saga => {
            let running: Vec<&str> = txn
                .branches
                .iter()
                .filter(|b| b.prepare_sent && b.state == BranchState::Registered)
                .map(|b| b.id.as_str())
                .collect();
            let reason = format!(
                "the saga did not finish within its {} ms timeout; step(s) {} had not succeeded",
                txn.timeout_ms,
                running.join(", ")
            );
            abort(txn, reason, now_ms)
        }
        TxnState::Preparing => {
            let waiting: Vec<&str> = txn
                .branches
                .iter()
                .filter(|b| b.state == BranchState::Registered)
                .map(|b| b.id.as_str())
                .collect();
            let reason = format!(
                "phase 1 did not finish within the {} ms timeout; no vote from branch{} {}",
                txn.timeout_ms,
                if waiting.len() == 1 { "" } else { "es" },
                waiting.join(", ")
            );
            abort(txn, reason, now_ms)
        }
        _ => Vec::new(),
    }
}
