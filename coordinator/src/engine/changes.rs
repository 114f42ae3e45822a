//! What a watcher sees of a transaction: every change the engine makes to it,
//! numbered. The engine appends a [`Change`] to [`Txn::changes`] at each
//! transition; the driver moves them into the log with the transaction's next
//! record, and they are shown to watchers only once that record is durable.
//! So a change's `seq` never names two different changes, even across a crash
//! (a change lost with its record was never shown to anyone).

use super::{CallKind, Txn, TxnState};

/// One numbered change of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// 1 for a transaction's first change, then one more for each.
    pub seq: u64,
    pub at_ms: u64,
    /// The transaction's state after this change.
    pub state: TxnState,
    pub kind: ChangeKind,
}

/// How a branch voted, as a watcher sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    Yes,
    ReadOnly,
    No,
}

impl Vote {
    pub fn name(self) -> &'static str {
        match self {
            Vote::Yes => "YES",
            Vote::ReadOnly => "READ_ONLY",
            Vote::No => "NO",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The transaction entered `Change::state`; `reason` says why, if anything
    /// noteworthy did (an abort's cause, an operator's decision).
    State { reason: String },
    /// A branch joined.
    Registered { branch: String },
    /// A branch answered phase 1; `detail` is a NO's reason, `result` what a
    /// YES carried.
    Voted {
        branch: String,
        vote: Vote,
        detail: String,
        result: Vec<u8>,
    },
    /// A branch acknowledged phase 2 (`call` is commit or rollback).
    Acked {
        branch: String,
        call: CallKind,
        result: Vec<u8>,
    },
    /// A call failed and will be retried.
    CallFailed {
        branch: String,
        call: CallKind,
        attempt: u32,
        error: String,
    },
    /// Phase 2 has kept failing past the stuck threshold (still retried).
    Stuck,
    /// An operator asked for every pending call to be retried now.
    RetryNow,
    /// An operator finished a branch by hand (a heuristic outcome).
    Resolved {
        branch: String,
        committed: bool,
        note: String,
    },
}

impl ChangeKind {
    /// The name watchers see (`-o json`, webhooks, the proto enum).
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::State { .. } => "STATE",
            ChangeKind::Registered { .. } => "BRANCH_REGISTERED",
            ChangeKind::Voted { .. } => "BRANCH_VOTED",
            ChangeKind::Acked { .. } => "BRANCH_ACKED",
            ChangeKind::CallFailed { .. } => "CALL_FAILED",
            ChangeKind::Stuck => "STUCK",
            ChangeKind::RetryNow => "RETRY_NOW",
            ChangeKind::Resolved { .. } => "BRANCH_RESOLVED",
        }
    }

    /// A change worth writing on its own, without waiting for the
    /// transaction's next record: failures and operator actions (votes and
    /// acks ride with the decision or the final record, milliseconds later).
    pub fn is_urgent(&self) -> bool {
        matches!(
            self,
            ChangeKind::CallFailed { .. }
                | ChangeKind::Stuck
                | ChangeKind::RetryNow
                | ChangeKind::Resolved { .. }
        )
    }
}

impl Change {
    /// The last change of a transaction: nothing follows it.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, ChangeKind::State { .. }) && self.state.is_final()
    }
}

/// Appends a change to `txn`, numbered after the last one.
pub fn note(txn: &mut Txn, now_ms: u64, kind: ChangeKind) {
    txn.seq += 1;
    txn.changes.push(Change {
        seq: txn.seq,
        at_ms: now_ms,
        state: txn.state,
        kind,
    });
}

/// Notes that `txn` is now in its current state.
pub fn note_state(txn: &mut Txn, now_ms: u64) {
    let reason = txn.reason.clone();
    note(txn, now_ms, ChangeKind::State { reason });
}

/// The branch's id, for a change about branch `i`.
pub fn branch_id(txn: &Txn, i: usize) -> String {
    txn.branches
        .get(i)
        .map(|b| b.id.clone())
        .unwrap_or_default()
}
