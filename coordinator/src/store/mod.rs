//! Durable storage of transactions.
//!
//! Everything goes through the [`TxnLog`] trait, so that the engine and driver
//! never see sled (and a replicated backend can be added later). Two backends
//! implement it, [`SledLog`] (the default) and [`MemoryLog`], and both run the
//! same [`conformance`] suite. [`keys`] owns the on-disk layout. [`LogWriter`] is
//! the single writer that batches records into group commits.
//!
//! # Durability rule
//! [`TxnLog::write`] must not return `Ok` before every record of the batch is
//! on stable storage (for sled: `flush` *and* an fdatasync of its files). The
//! driver only acknowledges a registration, or sends commit/confirm, after the
//! record saying so came back `Ok` from the writer.

pub mod conformance;
pub mod keys;
mod memory;
mod sled_log;
mod writer;

pub use memory::MemoryLog;
pub use sled_log::SledLog;
pub use writer::{Durable, LogWriter, WriterStats};

use serde::{Deserialize, Serialize};

use crate::engine::Txn;

/// One transaction as written to the log: its id, its encoded value, and what
/// the indexes need to know.
#[derive(Clone, Debug)]
pub struct Record {
    pub txn_id: String,
    pub value: Vec<u8>,
    /// `Some` once the transaction is committed or aborted.
    pub finished_at_ms: Option<u64>,
}

impl Record {
    pub fn of(txn: &Txn) -> Result<Record, StoreError> {
        Ok(Record {
            txn_id: txn.id.clone(),
            value: keys::encode_txn(txn)?,
            finished_at_ms: txn.finished_at_ms,
        })
    }
}

/// One admin action that changed something, kept durably for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Orders entries written in the same millisecond; unique per entry.
    pub seq: u64,
    /// e.g. `force-abort`, `force-commit`, `resolve-branch`, `retry-now`.
    pub action: String,
    pub txn_id: String,
    /// Empty unless the action was about one branch.
    pub branch_id: String,
    pub reason: String,
    /// Who asked: the authenticated identity when auth exists, else the peer address.
    pub caller: String,
    /// What it did, e.g. the state the transaction went to.
    pub result: String,
}

/// One durable write.
#[derive(Clone, Debug)]
pub enum Write {
    Txn(Record),
    Audit(AuditEntry),
}

/// Storage failures. All of them are fatal for the coordinator: once the log
/// cannot be written, nothing may be acknowledged any more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed while {op}: {message}")]
    Io { op: &'static str, message: String },
    #[error("the log is damaged: {0}")]
    Corrupt(String),
    #[error("refusing to use the data directory: {0}")]
    Refused(String),
    #[error("the log is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |e| StoreError::Io {
            op,
            message: e.to_string(),
        }
    }
}

/// A durable, ordered log of transaction records. Implementations must be safe
/// to call from many threads, but [`TxnLog::write`] is only ever called by one
/// thread at a time (the [`LogWriter`]).
pub trait TxnLog: Send + Sync + 'static {
    /// Stores every record of `batch`, in order (a later record for the same
    /// transaction replaces an earlier one). With `sync`, returns only once
    /// all of them, and every earlier unsynced write, are durable; without,
    /// they are visible to reads at once and durable with the next sync.
    /// Returns the bytes of keys and values it stored (for the statistics).
    fn write(&self, batch: &[Write], sync: bool) -> Result<u64, StoreError>;

    /// The latest record of one transaction, if the log has it.
    fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError>;

    /// Every transaction that is not yet committed or aborted.
    fn unfinished(&self) -> Result<Vec<Txn>, StoreError>;

    /// Deletes up to `limit` transactions that finished before `before_ms`
    /// (oldest first) and returns how many went. Unfinished ones are never
    /// touched. Need not be durable: a collected record coming back after a
    /// crash is harmless.
    fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Up to `limit` transactions in id order (ids sort by creation time),
    /// starting after the id `after` (exclusive), oldest first or newest first.
    fn scan(
        &self,
        after: Option<&str>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Txn>, StoreError>;

    /// The latest `limit` audit entries, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
