//! The stored form of a transaction's changes (format 3): the changes taken
//! into one record are written together, as one [`ChangeBatch`] under
//! `0x07 txn id 0x00 first seq`, in the same atomic write as the record.

use prost::Message;

use super::{Op, call_code, call_of, decode, seal, txn_state_code, txn_state_of};
use crate::engine::{Change, ChangeKind, Vote};
use crate::store::{StoreError, keys};

/// Changes written together.
#[derive(Clone, PartialEq, Message)]
pub struct ChangeBatch {
    #[prost(message, repeated, tag = "1")]
    pub changes: Vec<ChangeRecord>,
}

/// One change; which fields mean something depends on `kind`.
#[derive(Clone, PartialEq, Message)]
pub struct ChangeRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub at_ms: u64,
    #[prost(uint32, tag = "3")]
    pub state: u32,
    #[prost(uint32, tag = "4")]
    pub kind: u32,
    #[prost(string, tag = "5")]
    pub branch: String,
    /// A reason, an error or an operator's note.
    #[prost(string, tag = "6")]
    pub detail: String,
    #[prost(bytes = "vec", tag = "7")]
    pub result: Vec<u8>,
    #[prost(uint32, tag = "8")]
    pub call: u32,
    #[prost(uint32, tag = "9")]
    pub attempt: u32,
    #[prost(uint32, tag = "10")]
    pub vote: u32,
    #[prost(bool, tag = "11")]
    pub committed: bool,
}

// Enum numbers: never renumbered, never reused.

fn vote_code(vote: Vote) -> u32 {
    match vote {
        Vote::Yes => 1,
        Vote::ReadOnly => 2,
        Vote::No => 3,
    }
}

fn vote_of(code: u32) -> Result<Vote, String> {
    Ok(match code {
        1 => Vote::Yes,
        2 => Vote::ReadOnly,
        3 => Vote::No,
        other => return Err(format!("unknown vote {other}")),
    })
}

impl ChangeRecord {
    fn of(change: &Change) -> ChangeRecord {
        let mut r = ChangeRecord {
            seq: change.seq,
            at_ms: change.at_ms,
            state: txn_state_code(change.state),
            ..ChangeRecord::default()
        };
        match &change.kind {
            ChangeKind::State { reason } => {
                r.kind = 1;
                r.detail = reason.clone();
            }
            ChangeKind::Registered { branch } => {
                r.kind = 2;
                r.branch = branch.clone();
            }
            ChangeKind::Voted {
                branch,
                vote,
                detail,
                result,
            } => {
                r.kind = 3;
                r.branch = branch.clone();
                r.vote = vote_code(*vote);
                r.detail = detail.clone();
                r.result = result.clone();
            }
            ChangeKind::Acked {
                branch,
                call,
                result,
            } => {
                r.kind = 4;
                r.branch = branch.clone();
                r.call = call_code(*call);
                r.result = result.clone();
            }
            ChangeKind::CallFailed {
                branch,
                call,
                attempt,
                error,
            } => {
                r.kind = 5;
                r.branch = branch.clone();
                r.call = call_code(*call);
                r.attempt = *attempt;
                r.detail = error.clone();
            }
            ChangeKind::Stuck => r.kind = 6,
            ChangeKind::RetryNow => r.kind = 7,
            ChangeKind::Resolved {
                branch,
                committed,
                note,
            } => {
                r.kind = 8;
                r.branch = branch.clone();
                r.committed = *committed;
                r.detail = note.clone();
            }
        }
        r
    }

    fn into_change(self) -> Result<Change, String> {
        let kind = match self.kind {
            1 => ChangeKind::State {
                reason: self.detail,
            },
            2 => ChangeKind::Registered {
                branch: self.branch,
            },
            3 => ChangeKind::Voted {
                branch: self.branch,
                vote: vote_of(self.vote)?,
                detail: self.detail,
                result: self.result,
            },
            4 => ChangeKind::Acked {
                branch: self.branch,
                call: call_of(self.call)?,
                result: self.result,
            },
            5 => ChangeKind::CallFailed {
                branch: self.branch,
                call: call_of(self.call)?,
                attempt: self.attempt,
                error: self.detail,
            },
            6 => ChangeKind::Stuck,
            7 => ChangeKind::RetryNow,
            8 => ChangeKind::Resolved {
                branch: self.branch,
                committed: self.committed,
                note: self.detail,
            },
            other => return Err(format!("unknown change kind {other}")),
        };
        Ok(Change {
            seq: self.seq,
            at_ms: self.at_ms,
            state: txn_state_of(self.state)?,
            kind,
        })
    }
}

/// The sealed batch of `changes` (numbered from the first one's `seq`), or
/// `None` when there are none.
pub fn changes_op(txn_id: &str, changes: &[Change]) -> Option<Op> {
    let first = changes.first()?;
    let key = keys::changes_key(txn_id, first.seq);
    let batch = ChangeBatch {
        changes: changes.iter().map(ChangeRecord::of).collect(),
    };
    let value = seal(&key, &batch.encode_to_vec());
    Some(Op::Put(key, value))
}

/// The changes of one stored batch. A batch must hold consecutive changes
/// numbered from the one its key names.
pub fn decode_changes(key: &[u8], value: &[u8]) -> Result<Vec<Change>, StoreError> {
    let batch: ChangeBatch = decode(key, value)?;
    let bad = |why: String| StoreError::Corrupt(format!("{why} at key {}", keys::describe(key)));
    let first = keys::parse_changes_key(key)?.1;
    let mut out = Vec::with_capacity(batch.changes.len());
    for (n, record) in batch.changes.into_iter().enumerate() {
        if record.seq != first + n as u64 {
            return Err(bad(format!(
                "change {} where {} belongs",
                record.seq,
                first + n as u64
            )));
        }
        out.push(record.into_change().map_err(&bad)?);
    }
    if out.is_empty() {
        return Err(bad("an empty batch of changes".to_string()));
    }
    Ok(out)
}
