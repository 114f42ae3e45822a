//! The log's own schema (format 2): what each stored value holds, how it is
//! sealed with a checksum, and how it converts to and from the engine's types.
//!
//! The engine's [`Txn`] is never written as it is. A transaction is stored as
//! one small [`TxnRecord`] (its state, and each branch's [`BranchStatus`]:
//! votes, acks, attempts, the stuck flag; no payloads), rewritten at each
//! step, and [`BranchSpecs`] (participant, resource, payload), written once
//! for each batch of branches registered together. [`Written`] remembers what
//! a live transaction already has in the log, so that [`Record::of`] emits
//! only what changed. Few keys per step matter as much as few bytes: every
//! key is a tree update in sled.
//!
//! # Encoding, and the rule for evolving it
//! Bodies are protobuf messages (prost derives, no `.proto` file): a decoder
//! skips fields it does not know, and a field missing from an older record
//! reads as its default. Every value is sealed as
//! `[format version: u8][body][CRC-32 of key ‖ version ‖ body: u32 LE]`, so a
//! flipped byte, a value moved to another key, or a truncated value is found
//! on every read.
//!
//! 1. A field's tag keeps its meaning forever; a removed field's tag is
//!    listed as reserved in its message and never reused.
//! 2. A new field gets a new tag, and its absence (the protobuf default, or
//!    `None`) must mean what records written before it meant.
//! 3. Enum numbers (`*_code` functions below) are never renumbered or reused.
//! 4. A change that an older binary would misread (a new enum value, a field
//!    whose absence would mislead) bumps [`FORMAT`]: older binaries then refuse
//!    the data directory at start instead of guessing.
//! 5. Golden-bytes tests (`tests.rs`) freeze every record type; an encoding
//!    change that breaks them is a format change, and gets a new version.
//!
//! Format 1 (postcard of the engine's structs) is read by [`v1`] only, to
//! upgrade old data directories in place.

mod changes;
mod notice;
#[cfg(test)]
mod tests;
pub mod v1;

pub use changes::{changes_op, decode_changes};
pub use notice::{NOTICE_ENDED, NOTICE_STUCK, NoticeRecord, decode_notice, notice_op};

use prost::Message;

use crate::engine::{
    Attempt, Branch, BranchState, CallKind, Change, Mode, Protocol, Txn, TxnState,
};
use crate::store::{AuditEntry, StoreError, keys};

/// The log format this binary writes. Format 3 added the changes of each
/// transaction (key prefix `0x07`) and pending notifications (`0x08`); a
/// format-2 binary would take those for damage. Format 4 added sagas (mode
/// 3, and each step's order in its [`BranchSpec`]), which a format-3 binary
/// would take for damage, or worse, run as if its steps had no order.
/// Format 5 added HTTP/JSON participants (each branch's protocol in its
/// [`BranchSpec`]), which a format-4 binary would call over gRPC.
pub const FORMAT: u64 = 5;
/// Version byte of every format-2 value.
const VALUE_V2: u8 = 2;

/// One stored change: put a value, or delete a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Op {
    /// Bytes of key and value.
    pub fn size(&self) -> usize {
        match self {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
        }
    }
}

/// Seals `body` for `key`: version byte, body, checksum.
pub fn seal(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(body.len() + 5);
    value.push(VALUE_V2);
    value.extend_from_slice(body);
    let crc = checksum(key, &value);
    value.extend_from_slice(&crc.to_le_bytes());
    value
}

/// Checks a sealed value and returns its body.
pub fn unseal<'v>(key: &[u8], value: &'v [u8]) -> Result<&'v [u8], StoreError> {
    let damaged =
        |what: &str| StoreError::Corrupt(format!("{what} at key {}", keys::describe(key)));
    if value.len() < 5 {
        return Err(damaged("a truncated value"));
    }
    let (sealed, crc) = value.split_at(value.len() - 4);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc);
    if checksum(key, sealed) != u32::from_le_bytes(stored) {
        return Err(damaged("a checksum mismatch"));
    }
    match sealed[0] {
        VALUE_V2 => Ok(&sealed[1..]),
        other => Err(damaged(&format!("an unknown value version {other}"))),
    }
}

fn checksum(key: &[u8], sealed: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(sealed);
    hasher.finalize()
}

/// A sealed value with no body (index entries).
pub fn seal_empty(key: &[u8]) -> Vec<u8> {
    seal(key, &[])
}

fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, StoreError> {
    let body = unseal(key, value)?;
    M::decode(body).map_err(|e| {
        StoreError::Corrupt(format!(
            "an undecodable record at key {}: {e}",
            keys::describe(key)
        ))
    })
}

/// A transaction without its branches.
#[derive(Clone, PartialEq, Message)]
pub struct TxnRecord {
    #[prost(uint32, tag = "1")]
    pub mode: u32,
    #[prost(uint32, tag = "2")]
    pub state: u32,
    #[prost(string, tag = "3")]
    pub reason: String,
    #[prost(uint64, tag = "4")]
    pub timeout_ms: u64,
    #[prost(uint64, tag = "5")]
    pub created_at_ms: u64,
    #[prost(uint64, tag = "6")]
    pub updated_at_ms: u64,
    #[prost(uint64, optional, tag = "7")]
    pub decided_at_ms: Option<u64>,
    #[prost(uint64, optional, tag = "8")]
    pub finished_at_ms: Option<u64>,
    #[prost(uint64, optional, tag = "9")]
    pub stuck_since_ms: Option<u64>,
    /// Each branch's status, in registration order; its spec is in the
    /// [`BranchSpecs`] records.
    #[prost(message, repeated, tag = "10")]
    pub branches: Vec<BranchStatus>,
    /// The number of its last change in the log (0: none, as in records
    /// written before format 3).
    #[prost(uint64, tag = "11")]
    pub last_seq: u64,
}

/// Branches registered together, from branch `first` (the number in the key).
#[derive(Clone, PartialEq, Message)]
pub struct BranchSpecs {
    #[prost(message, repeated, tag = "1")]
    pub specs: Vec<BranchSpec>,
}

/// What a branch is: written once, when it is registered.
#[derive(Clone, PartialEq, Message)]
pub struct BranchSpec {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub participant: String,
    #[prost(string, tag = "3")]
    pub resource: String,
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub call_timeout_ms: u64,
    /// Saga steps only (format 4): what the step waits for, and whether it
    /// has a compensation. Absent in older records: no saga then.
    #[prost(string, repeated, tag = "6")]
    pub depends_on: Vec<String>,
    #[prost(bool, tag = "7")]
    pub start_at_once: bool,
    #[prost(bool, tag = "8")]
    pub must_succeed: bool,
    /// How to call the participant (format 5): absent (0) is gRPC.
    #[prost(uint32, tag = "9")]
    pub protocol: u32,
    /// HTTP/JSON only: send the payload as JSON too.
    #[prost(bool, tag = "10")]
    pub json_payload: bool,
}

/// Where a branch is.
#[derive(Clone, PartialEq, Message)]
pub struct BranchStatus {
    #[prost(uint32, tag = "1")]
    pub state: u32,
    #[prost(uint32, tag = "2")]
    pub attempts: u32,
    #[prost(uint32, tag = "3")]
    pub phase_attempts: u32,
    #[prost(string, optional, tag = "4")]
    pub last_error: Option<String>,
    #[prost(bool, tag = "5")]
    pub prepare_sent: bool,
    #[prost(uint64, optional, tag = "6")]
    pub failing_since_ms: Option<u64>,
    #[prost(message, repeated, tag = "7")]
    pub history: Vec<AttemptRecord>,
    #[prost(uint32, tag = "8")]
    pub retry_seq: u32,
    #[prost(uint32, tag = "9")]
    pub backoff_from: u32,
    #[prost(uint64, optional, tag = "10")]
    pub next_retry_at_ms: Option<u64>,
    #[prost(string, optional, tag = "11")]
    pub heuristic: Option<String>,
    /// The participant's result (absent in records written before it, and
    /// when there is none: both read as empty).
    #[prost(bytes = "vec", tag = "12")]
    pub result: Vec<u8>,
}

/// One call to a branch and what it returned.
#[derive(Clone, PartialEq, Message)]
pub struct AttemptRecord {
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
    #[prost(uint32, tag = "2")]
    pub call: u32,
    #[prost(uint32, tag = "3")]
    pub attempt: u32,
    #[prost(bool, tag = "4")]
    pub ok: bool,
    #[prost(string, tag = "5")]
    pub result: String,
}

/// One audit entry.
#[derive(Clone, PartialEq, Message)]
pub struct AuditRecord {
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(string, tag = "3")]
    pub action: String,
    #[prost(string, tag = "4")]
    pub txn_id: String,
    #[prost(string, tag = "5")]
    pub branch_id: String,
    #[prost(string, tag = "6")]
    pub reason: String,
    #[prost(string, tag = "7")]
    pub caller: String,
    #[prost(string, tag = "8")]
    pub result: String,
}

/// A number kept under a meta key (the format, the last durable batch).
#[derive(Clone, PartialEq, Message)]
pub struct MetaNumber {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

// Enum numbers: never renumbered, never reused (rule 3).

fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::TwoPhase => 1,
        Mode::Tcc => 2,
        Mode::Saga => 3,
    }
}

fn mode_of(code: u32) -> Result<Mode, String> {
    match code {
        1 => Ok(Mode::TwoPhase),
        2 => Ok(Mode::Tcc),
        3 => Ok(Mode::Saga),
        other => Err(format!("unknown mode {other}")),
    }
}

fn protocol_code(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::Grpc => 0,
        Protocol::HttpJson => 1,
    }
}

fn protocol_of(code: u32) -> Result<Protocol, String> {
    match code {
        0 => Ok(Protocol::Grpc),
        1 => Ok(Protocol::HttpJson),
        other => Err(format!("unknown protocol {other}")),
    }
}

fn txn_state_code(state: TxnState) -> u32 {
    match state {
        TxnState::Active => 1,
        TxnState::Preparing => 2,
        TxnState::Committing => 3,
        TxnState::Aborting => 4,
        TxnState::Committed => 5,
        TxnState::Aborted => 6,
    }
}

fn txn_state_of(code: u32) -> Result<TxnState, String> {
    Ok(match code {
        1 => TxnState::Active,
        2 => TxnState::Preparing,
        3 => TxnState::Committing,
        4 => TxnState::Aborting,
        5 => TxnState::Committed,
        6 => TxnState::Aborted,
        other => return Err(format!("unknown transaction state {other}")),
    })
}

fn branch_state_code(state: BranchState) -> u32 {
    match state {
        BranchState::Registered => 1,
        BranchState::Prepared => 2,
        BranchState::ReadOnly => 3,
        BranchState::Rejected => 4,
        BranchState::Committed => 5,
        BranchState::RolledBack => 6,
    }
}

fn branch_state_of(code: u32) -> Result<BranchState, String> {
    Ok(match code {
        1 => BranchState::Registered,
        2 => BranchState::Prepared,
        3 => BranchState::ReadOnly,
        4 => BranchState::Rejected,
        5 => BranchState::Committed,
        6 => BranchState::RolledBack,
        other => return Err(format!("unknown branch state {other}")),
    })
}

fn call_code(call: CallKind) -> u32 {
    match call {
        CallKind::Prepare => 1,
        CallKind::Commit => 2,
        CallKind::Rollback => 3,
    }
}

fn call_of(code: u32) -> Result<CallKind, String> {
    Ok(match code {
        1 => CallKind::Prepare,
        2 => CallKind::Commit,
        3 => CallKind::Rollback,
        other => return Err(format!("unknown call kind {other}")),
    })
}

impl TxnRecord {
    pub fn of(txn: &Txn) -> TxnRecord {
        TxnRecord {
            mode: mode_code(txn.mode),
            state: txn_state_code(txn.state),
            reason: txn.reason.clone(),
            timeout_ms: txn.timeout_ms,
            created_at_ms: txn.created_at_ms,
            updated_at_ms: txn.updated_at_ms,
            decided_at_ms: txn.decided_at_ms,
            finished_at_ms: txn.finished_at_ms,
            stuck_since_ms: txn.stuck_since_ms,
            branches: txn.branches.iter().map(BranchStatus::of).collect(),
            last_seq: txn.seq,
        }
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<TxnRecord, StoreError> {
        decode(key, value)
    }
}

impl BranchSpec {
    pub fn of(branch: &Branch) -> BranchSpec {
        BranchSpec {
            id: branch.id.clone(),
            participant: branch.participant.clone(),
            resource: branch.resource.clone(),
            payload: branch.payload.clone(),
            call_timeout_ms: branch.call_timeout_ms,
            depends_on: branch.depends_on.clone(),
            start_at_once: branch.start_at_once,
            must_succeed: branch.must_succeed,
            protocol: protocol_code(branch.protocol),
            json_payload: branch.json_payload,
        }
    }
}

impl BranchSpecs {
    pub fn decode(key: &[u8], value: &[u8]) -> Result<BranchSpecs, StoreError> {
        decode(key, value)
    }
}

impl BranchStatus {
    pub fn of(branch: &Branch) -> BranchStatus {
        BranchStatus {
            state: branch_state_code(branch.state),
            attempts: branch.attempts,
            phase_attempts: branch.phase_attempts,
            last_error: branch.last_error.clone(),
            prepare_sent: branch.prepare_sent,
            failing_since_ms: branch.failing_since_ms,
            history: branch
                .history
                .iter()
                .map(|a| AttemptRecord {
                    at_ms: a.at_ms,
                    call: call_code(a.call),
                    attempt: a.attempt,
                    ok: a.ok,
                    result: a.result.clone(),
                })
                .collect(),
            retry_seq: branch.retry_seq,
            backoff_from: branch.backoff_from,
            next_retry_at_ms: branch.next_retry_at_ms,
            heuristic: branch.heuristic.clone(),
            result: branch.result.clone(),
        }
    }
}

/// Folds the records of one transaction back into the engine's [`Txn`]:
/// its record, and its spec chunks as `(first branch, specs)` in key order.
pub fn fold(
    id: &str,
    record: TxnRecord,
    chunks: Vec<(usize, BranchSpecs)>,
) -> Result<Txn, StoreError> {
    let bad = |why: String| StoreError::Corrupt(format!("transaction {id}: {why}"));
    let mut specs = Vec::with_capacity(record.branches.len());
    for (first, chunk) in chunks {
        if first != specs.len() {
            return Err(bad(format!(
                "the specs of branches {}..{first} are missing",
                specs.len()
            )));
        }
        specs.extend(chunk.specs);
    }
    let (header, statuses) = {
        let mut record = record;
        let statuses = std::mem::take(&mut record.branches);
        (record, statuses)
    };
    let expected = statuses.len();
    if specs.len() != expected {
        return Err(bad(format!(
            "its record names {expected} branches but the log holds {} specs",
            specs.len()
        )));
    }
    let mut branches = Vec::with_capacity(expected);
    for (spec, status) in specs.into_iter().zip(statuses) {
        let mut branch = Branch::new(
            spec.id,
            spec.participant,
            spec.resource,
            spec.payload,
            spec.call_timeout_ms,
        );
        branch.depends_on = spec.depends_on;
        branch.start_at_once = spec.start_at_once;
        branch.must_succeed = spec.must_succeed;
        branch.protocol = protocol_of(spec.protocol).map_err(&bad)?;
        branch.json_payload = spec.json_payload;
        branch.state = branch_state_of(status.state).map_err(&bad)?;
        branch.attempts = status.attempts;
        branch.phase_attempts = status.phase_attempts;
        branch.last_error = status.last_error;
        branch.prepare_sent = status.prepare_sent;
        branch.failing_since_ms = status.failing_since_ms;
        branch.history = status
            .history
            .into_iter()
            .map(|a| {
                Ok(Attempt {
                    at_ms: a.at_ms,
                    call: call_of(a.call)?,
                    attempt: a.attempt,
                    ok: a.ok,
                    result: a.result,
                })
            })
            .collect::<Result<_, String>>()
            .map_err(&bad)?;
        branch.retry_seq = status.retry_seq;
        branch.backoff_from = status.backoff_from;
        branch.next_retry_at_ms = status.next_retry_at_ms;
        branch.heuristic = status.heuristic;
        branch.result = status.result;
        branches.push(branch);
    }
    let mut txn = Txn::new(
        id.to_string(),
        mode_of(header.mode).map_err(&bad)?,
        header.timeout_ms,
        header.created_at_ms,
    );
    txn.state = txn_state_of(header.state).map_err(&bad)?;
    txn.reason = header.reason;
    txn.updated_at_ms = header.updated_at_ms;
    txn.decided_at_ms = header.decided_at_ms;
    txn.finished_at_ms = header.finished_at_ms;
    txn.stuck_since_ms = header.stuck_since_ms;
    txn.branches = branches;
    txn.seq = header.last_seq;
    Ok(txn)
}

impl AuditRecord {
    pub fn of(entry: &AuditEntry) -> AuditRecord {
        AuditRecord {
            at_ms: entry.at_ms,
            seq: entry.seq,
            action: entry.action.clone(),
            txn_id: entry.txn_id.clone(),
            branch_id: entry.branch_id.clone(),
            reason: entry.reason.clone(),
            caller: entry.caller.clone(),
            result: entry.result.clone(),
        }
    }
}

/// The sealed record of an audit entry, under its key.
pub fn audit_op(entry: &AuditEntry) -> Op {
    let key = keys::audit_key(entry);
    let value = seal(&key, &AuditRecord::of(entry).encode_to_vec());
    Op::Put(key, value)
}

pub fn decode_audit(key: &[u8], value: &[u8]) -> Result<AuditEntry, StoreError> {
    let r: AuditRecord = decode(key, value)?;
    Ok(AuditEntry {
        at_ms: r.at_ms,
        seq: r.seq,
        action: r.action,
        txn_id: r.txn_id,
        branch_id: r.branch_id,
        reason: r.reason,
        caller: r.caller,
        result: r.result,
    })
}

/// A meta number, sealed under its key.
pub fn meta_op(name: &str, value: u64) -> Op {
    let key = keys::meta_key(name);
    let value = seal(&key, &MetaNumber { value }.encode_to_vec());
    Op::Put(key, value)
}

pub fn decode_meta(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    decode::<MetaNumber>(key, value).map(|m| m.value)
}

/// What the log already holds of one live transaction, so that the next
/// [`Record`] carries only what changed.
#[derive(Debug, Default)]
pub struct Written {
    record: Option<Vec<u8>>,
    specs: usize,
    /// In a store nodes share: the claim this node holds the transaction
    /// under (0 for one it created; each takeover makes a new one). Its
    /// writes count only while the claim does.
    claim: i64,
}

impl Written {
    /// For a transaction read back from the log: all of it is there.
    pub fn all_of(txn: &Txn) -> Written {
        Written {
            record: Some(TxnRecord::of(txn).encode_to_vec()),
            specs: txn.branches.len(),
            claim: 0,
        }
    }

    /// The claim its records are written under.
    pub fn claim(&self) -> i64 {
        self.claim
    }

    /// For a transaction taken over under `claim`.
    pub fn claimed(txn: &Txn, claim: i64) -> Written {
        Written {
            claim,
            ..Written::all_of(txn)
        }
    }
}

/// The writes that bring the log up to date with one transaction.
#[derive(Clone, Debug)]
pub struct Record {
    pub txn_id: String,
    pub ops: Vec<Op>,
    /// The transaction's first record: a shared store makes this node its
    /// owner, unless the id is already another's.
    pub creates: bool,
    /// It is final with this record: a shared store lets go of its owner.
    pub finishes: bool,
    /// The claim it is written under (see [`Written`]).
    pub claim: i64,
    /// The changes written with it, shown to watchers once it is durable,
    /// with what watchers may filter them by.
    pub changes: Vec<Change>,
    pub about: std::sync::Arc<crate::store::feed::About>,
}

impl Record {
    /// The records `txn` needs beyond what `written` says the log holds;
    /// updates `written` to match.
    pub fn of(txn: &Txn, written: &mut Written) -> Result<Record, StoreError> {
        keys::check_id(&txn.id)?;
        let mut ops = Vec::with_capacity(3);
        let first = written.record.is_none();
        if written.specs < txn.branches.len() {
            let key = keys::spec_key(&txn.id, written.specs);
            let chunk = BranchSpecs {
                specs: txn.branches[written.specs..]
                    .iter()
                    .map(BranchSpec::of)
                    .collect(),
            };
            ops.push(Op::Put(key.clone(), seal(&key, &chunk.encode_to_vec())));
            written.specs = txn.branches.len();
        }
        let record = TxnRecord::of(txn).encode_to_vec();
        if written.record.as_ref() != Some(&record) {
            let key = keys::header_key(&txn.id);
            ops.push(Op::Put(key.clone(), seal(&key, &record)));
            written.record = Some(record);
        }
        ops.extend(keys::index_ops(&txn.id, txn.finished_at_ms, first));
        Ok(Record {
            txn_id: txn.id.clone(),
            ops,
            creates: first,
            finishes: txn.finished_at_ms.is_some(),
            claim: written.claim,
            changes: Vec::new(),
            about: Default::default(),
        })
    }

    /// Adds the transaction's changes not written yet (taken from
    /// [`Txn::changes`]).
    pub fn with_changes(mut self, changes: Vec<Change>) -> Record {
        if let Some(op) = changes_op(&self.txn_id, &changes) {
            self.ops.push(op);
        }
        self.changes = changes;
        self
    }
}
