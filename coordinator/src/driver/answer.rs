//! What a client is told: the outcome of a transaction, with each branch's
//! own answer.

use crate::driver::slot::Published;
use crate::engine::{BranchState, Txn, TxnState};

/// The outcome a client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub txn_id: String,
    pub state: TxnState,
    pub reason: String,
    /// Branches resolved by hand against the decision (a mixed outcome).
    pub mixed_branches: Vec<String>,
    /// What each branch answered.
    pub branches: Vec<BranchOutcome>,
}

/// One branch's answer, for the initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchOutcome {
    pub branch_id: String,
    pub state: BranchState,
    /// The result it sent with its YES vote or ack; empty if none.
    pub result: Vec<u8>,
    /// Why it voted NO (or was refused), if it did.
    pub reason: String,
}

/// Each branch's answer as `txn` holds it.
pub(super) fn branch_outcomes(txn: &Txn) -> Vec<BranchOutcome> {
    txn.branches
        .iter()
        .map(|b| BranchOutcome {
            branch_id: b.id.clone(),
            state: b.state,
            // A result counts while the work it speaks of stands.
            result: match b.state {
                BranchState::Prepared | BranchState::Committed => b.result.clone(),
                _ => Vec::new(),
            },
            // Its NO vote (a branch that voted NO may still be rolled back).
            reason: b
                .history
                .iter()
                .rev()
                .find(|a| a.ok && a.result.starts_with("voted NO"))
                .map(|a| a.result.clone())
                .or_else(|| {
                    (b.state == BranchState::Rejected)
                        .then(|| b.last_error.clone())
                        .flatten()
                })
                .unwrap_or_default(),
        })
        .collect()
}

pub(super) fn outcome(txn_id: &str, published: Published, branches: Vec<BranchOutcome>) -> Outcome {
    Outcome {
        branches,
        txn_id: txn_id.to_string(),
        state: published.state,
        reason: published.reason,
        mixed_branches: published.mixed_branches,
    }
}
