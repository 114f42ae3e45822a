//! Log format 1, frozen: the postcard encoding of the engine's structs as they
//! were up to commit 478c200, with a leading version byte `1`. Nothing writes
//! it any more; the upgrade reads it once and rewrites it as format 2.
//!
//! These types must never change: postcard is not self-describing, so the
//! field order and the enum variant order below *are* the format.

use serde::Deserialize;

use crate::engine;
use crate::store::{AuditEntry, StoreError};

const VALUE_V1: u8 = 1;

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum Mode {
    TwoPhase,
    Tcc,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum TxnState {
    Active,
    Preparing,
    Committing,
    Aborting,
    Committed,
    Aborted,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum BranchState {
    Registered,
    Prepared,
    ReadOnly,
    Rejected,
    Committed,
    RolledBack,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum CallKind {
    Prepare,
    Commit,
    Rollback,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Attempt {
    at_ms: u64,
    call: CallKind,
    attempt: u32,
    ok: bool,
    result: String,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Branch {
    id: String,
    participant: String,
    resource: String,
    payload: Vec<u8>,
    call_timeout_ms: u64,
    state: BranchState,
    attempts: u32,
    phase_attempts: u32,
    last_error: Option<String>,
    prepare_sent: bool,
    failing_since_ms: Option<u64>,
    history: Vec<Attempt>,
    retry_seq: u32,
    backoff_from: u32,
    next_retry_at_ms: Option<u64>,
    heuristic: Option<String>,
    // `in_flight` was `#[serde(skip)]`: never in the log.
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Txn {
    id: String,
    mode: Mode,
    state: TxnState,
    reason: String,
    timeout_ms: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    decided_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    stuck_since_ms: Option<u64>,
    branches: Vec<Branch>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct Audit {
    at_ms: u64,
    seq: u64,
    action: String,
    txn_id: String,
    branch_id: String,
    reason: String,
    caller: String,
    result: String,
}

fn body(value: &[u8], what: &str) -> Result<(), StoreError> {
    match value.first() {
        Some(&VALUE_V1) => Ok(()),
        Some(other) => Err(StoreError::Corrupt(format!(
            "a format-1 {what} with value version {other}"
        ))),
        None => Err(StoreError::Corrupt(format!("an empty format-1 {what}"))),
    }
}

/// Decodes all of `bytes` (format 1 has no checksum: trailing bytes are damage).
fn whole<'de, T: Deserialize<'de>>(bytes: &'de [u8], what: &str) -> Result<T, StoreError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(StoreError::Corrupt(format!(
            "a format-1 {what} with {} bytes too many",
            rest.len()
        ))),
        Err(e) => Err(StoreError::Corrupt(format!(
            "an undecodable format-1 {what}: {e}"
        ))),
    }
}

/// Decodes a format-1 transaction record.
pub fn decode_txn(value: &[u8]) -> Result<engine::Txn, StoreError> {
    body(value, "transaction")?;
    let old: Txn = whole(&value[1..], "transaction")?;
    Ok(old.into())
}

/// Decodes a format-1 audit entry.
pub fn decode_audit(value: &[u8]) -> Result<AuditEntry, StoreError> {
    body(value, "audit entry")?;
    let a: Audit = whole(&value[1..], "audit entry")?;
    Ok(AuditEntry {
        at_ms: a.at_ms,
        seq: a.seq,
        action: a.action,
        txn_id: a.txn_id,
        branch_id: a.branch_id,
        reason: a.reason,
        caller: a.caller,
        result: a.result,
    })
}

/// Whether a value under the audit prefix is still format 1.
pub fn is_v1(value: &[u8]) -> bool {
    value.first() == Some(&VALUE_V1)
}

impl From<Txn> for engine::Txn {
    fn from(old: Txn) -> engine::Txn {
        let mode = match old.mode {
            Mode::TwoPhase => engine::Mode::TwoPhase,
            Mode::Tcc => engine::Mode::Tcc,
        };
        let mut txn = engine::Txn::new(old.id, mode, old.timeout_ms, old.created_at_ms);
        txn.state = match old.state {
            TxnState::Active => engine::TxnState::Active,
            TxnState::Preparing => engine::TxnState::Preparing,
            TxnState::Committing => engine::TxnState::Committing,
            TxnState::Aborting => engine::TxnState::Aborting,
            TxnState::Committed => engine::TxnState::Committed,
            TxnState::Aborted => engine::TxnState::Aborted,
        };
        txn.reason = old.reason;
        txn.updated_at_ms = old.updated_at_ms;
        txn.decided_at_ms = old.decided_at_ms;
        txn.finished_at_ms = old.finished_at_ms;
        txn.stuck_since_ms = old.stuck_since_ms;
        txn.branches = old.branches.into_iter().map(Into::into).collect();
        txn
    }
}

impl From<Branch> for engine::Branch {
    fn from(old: Branch) -> engine::Branch {
        let mut b = engine::Branch::new(
            old.id,
            old.participant,
            old.resource,
            old.payload,
            old.call_timeout_ms,
        );
        b.state = match old.state {
            BranchState::Registered => engine::BranchState::Registered,
            BranchState::Prepared => engine::BranchState::Prepared,
            BranchState::ReadOnly => engine::BranchState::ReadOnly,
            BranchState::Rejected => engine::BranchState::Rejected,
            BranchState::Committed => engine::BranchState::Committed,
            BranchState::RolledBack => engine::BranchState::RolledBack,
        };
        b.attempts = old.attempts;
        b.phase_attempts = old.phase_attempts;
        b.last_error = old.last_error;
        b.prepare_sent = old.prepare_sent;
        b.failing_since_ms = old.failing_since_ms;
        b.history = old
            .history
            .into_iter()
            .map(|a| engine::Attempt {
                at_ms: a.at_ms,
                call: match a.call {
                    CallKind::Prepare => engine::CallKind::Prepare,
                    CallKind::Commit => engine::CallKind::Commit,
                    CallKind::Rollback => engine::CallKind::Rollback,
                },
                attempt: a.attempt,
                ok: a.ok,
                result: a.result,
            })
            .collect();
        b.retry_seq = old.retry_seq;
        b.backoff_from = old.backoff_from;
        b.next_retry_at_ms = old.next_retry_at_ms;
        b.heuristic = old.heuristic;
        b
    }
}

/// Format-1 bytes of a small transaction, as the old release wrote them.
#[cfg(test)]
pub fn sample_bytes(id: &str) -> Vec<u8> {
    let txn = Txn {
        id: id.to_string(),
        mode: Mode::Tcc,
        state: TxnState::Committing,
        reason: String::new(),
        timeout_ms: 1_000,
        created_at_ms: 5,
        updated_at_ms: 6,
        decided_at_ms: Some(6),
        finished_at_ms: None,
        stuck_since_ms: None,
        branches: vec![Branch {
            id: "1".into(),
            participant: "http://127.0.0.1:9".into(),
            resource: "r".into(),
            payload: vec![1, 2, 3],
            call_timeout_ms: 100,
            state: BranchState::Prepared,
            attempts: 1,
            phase_attempts: 1,
            last_error: None,
            prepare_sent: true,
            failing_since_ms: None,
            history: vec![Attempt {
                at_ms: 6,
                call: CallKind::Prepare,
                attempt: 1,
                ok: true,
                result: "YES".into(),
            }],
            retry_seq: 0,
            backoff_from: 0,
            next_retry_at_ms: None,
            heuristic: None,
        }],
    };
    postcard::to_extend(&txn, vec![VALUE_V1]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_record_reads_and_one_with_bytes_to_spare_does_not() {
        let bytes = sample_bytes("t-1");
        let txn = decode_txn(&bytes);
        assert_eq!(txn.as_ref().map(|t| t.id.as_str()), Ok("t-1"));
        assert_eq!(
            txn.map(|t| t.branches[0].payload.clone()),
            Ok(vec![1, 2, 3])
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_txn(&longer).is_err());
        assert!(decode_txn(&bytes[..bytes.len() - 1]).is_err());
    }
}
