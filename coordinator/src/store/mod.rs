//! Durable storage of transactions.
//!
//! Everything goes through the [`TxnLog`] trait, so that the engine and driver
//! never see sled (and a replicated backend can be added later). [`KvLog`]
//! implements it once over any ordered key-value store ([`kv::Kv`]): sled
//! ([`SledLog`], the default), PostgreSQL ([`PgLog`]) and memory
//! ([`MemoryLog`]); all run the same conformance suite
//! (`tests/tests/store_conformance.rs`). [`keys`] owns
//! the on-disk layout, [`record`] the log's own schema and its checksums.
//! [`LogWriter`] is the single writer that batches records into group commits.
//!
//! # Durability rule
//! [`TxnLog::write`] must not return `Ok` before every record of the batch is
//! on stable storage (for sled: `flush` *and* an fdatasync of its files). The
//! driver only acknowledges a registration, or sends commit/confirm, after the
//! record saying so came back `Ok` from the writer.
//!
//! # Integrity rule
//! Every stored value is sealed with a checksum and checked on every read. A
//! log is checked whole before it is served, and refused when it is damaged
//! or behind the acknowledged mark (`hwm`); damage met while serving is
//! reported for that transaction and the rest is served.

pub mod feed;
mod guard;
pub mod history;
mod hwm;
pub mod keys;
pub mod kv;
mod load;
pub(crate) mod memory;
pub mod open;
mod postgres;
pub mod record;
mod sled_log;
mod writer;

pub use kv::KvLog;
pub use kv::TxnOps;
pub use memory::MemoryLog;
pub use postgres::{PgLog, SCHEMA as PG_SCHEMA, redacted};
pub use record::{Record, Written};
pub use sled_log::{OpenOptions, OpenReport, SledLog};
pub use writer::{Durable, LogWriter, OnFenced, WriterStats};

use crate::engine::{Change, Txn};

/// One admin action that changed something, kept durably for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// One coordinator as the shared store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub address: String,
    /// Bumped each time the node (re)joins.
    pub epoch: u64,
    /// When its lease runs out unless renewed, by the store's clock (ms
    /// since the Unix epoch).
    pub lease_expires_at_ms: u64,
    /// Whether the lease is still running, by the store's clock.
    pub alive: bool,
    /// Unfinished transactions it owns.
    pub owned: u64,
}

/// The node driving an unfinished transaction, in a store nodes share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    /// Its `--advertise-addr`.
    pub address: String,
    /// Its lease runs and it still holds the transaction at the epoch it
    /// claimed it with; otherwise anyone may take the transaction over.
    pub alive: bool,
    /// It is this node, at its current epoch.
    pub mine: bool,
    /// The claim it holds the transaction under.
    pub claim: i64,
}

/// A transaction this node took over from another (or from an earlier run
/// of itself).
#[derive(Clone, Debug)]
pub struct TakenOver {
    pub txn: Txn,
    /// The node that owned it before.
    pub from: String,
    /// The claim this node now holds it under: records written under an
    /// older one (a slot this node still had from before) are refused.
    pub claim: i64,
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wrote {
    /// Bytes of keys and values stored.
    pub bytes: u64,
    /// Transactions whose records were refused, all of them, because this
    /// node no longer owns them under that claim (another node, or a later
    /// claim of this one, took them over): each id with its claim.
    pub fenced: Vec<(String, i64)>,
}

/// One durable write.
#[derive(Clone, Debug)]
pub enum Write {
    Txn(Record),
    Audit(AuditEntry),
    /// An op of no transaction's record (a notification delivered).
    Plain(record::Op),
    /// Nothing: once it is durable, so is everything written before it.
    Barrier,
}

/// Storage failures. A failed write is fatal for the coordinator: once the
/// log cannot be written, nothing may be acknowledged any more. A damaged
/// record met on a read concerns that record only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed while {op}: {message}")]
    Io { op: &'static str, message: String },
    /// One record failed its checks.
    #[error("the log holds a damaged record: {0}")]
    Corrupt(String),
    /// The log as a whole is damaged; it is not served.
    #[error("{0}")]
    Damaged(String),
    #[error("refusing to use the log: {0}")]
    Refused(String),
    #[error("the log is closed")]
    Closed,
    /// The store cannot be reached for now (a database restarting or out of
    /// reach). Nothing was written, or what was is written again: the
    /// writer retries, and acknowledges nothing meanwhile.
    #[error("the transaction log is out of reach: {0}")]
    Unreachable(String),
    /// This node no longer owns the transaction: another took it over, and
    /// nothing was written for it. Concerns that transaction only.
    #[error("transaction {0} is now driven by another coordinator node")]
    Fenced(String),
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
///
/// Reads return transactions as the log holds them. What only the log holds
/// (no live copy in the driver) is final: see `driver::Found`.
pub trait TxnLog: Send + Sync + 'static {
    /// Stores every record of `batch`, in order. With `sync`, returns only
    /// once all of them, and every earlier unsynced write, are durable;
    /// without, they are visible to reads at once and durable with the next
    /// sync. In a store nodes share, the records of a transaction this node
    /// does not own are left out, and named in [`Wrote::fenced`].
    fn write(&self, batch: &[Write], sync: bool) -> Result<Wrote, StoreError>;

    /// Brings the acknowledged mark up to what is durable (called at least
    /// once a second while idle, and when closing).
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The latest state of one transaction, if the log has it.
    fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError>;

    /// Every transaction that is not yet committed or aborted. One that
    /// cannot be read is reported and left out.
    fn unfinished(&self) -> Result<Vec<Txn>, StoreError>;

    /// Deletes up to `limit` transactions that finished before `before_ms`
    /// (oldest first) and returns how many went. Unfinished ones are never
    /// touched. Need not be durable: a collected record coming back after a
    /// crash is harmless.
    fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Up to `limit` transactions in id order (ids sort by creation time),
    /// starting after the id `after` (exclusive), oldest first or newest first.
    /// Damaged ones are reported and left out.
    fn scan(
        &self,
        after: Option<&str>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Txn>, StoreError>;

    /// The latest `limit` audit entries, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The changes of `txn_id` numbered `from_seq` or later, in order, as
    /// far as they are written (see `engine::changes`).
    fn changes(&self, txn_id: &str, from_seq: u64) -> Result<Vec<Change>, StoreError>;

    /// Up to `limit` webhook notifications not yet delivered everywhere, in
    /// key order after `after` (exclusive).
    fn notices(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<history::NoticePage, StoreError>;

    /// Damaged records met while serving, since start.
    fn damaged_reads(&self) -> u64 {
        0
    }

    /// The coordinators the store knows of (PostgreSQL); `None` for a store
    /// only one coordinator ever uses (sled, memory).
    fn nodes(&self) -> Result<Option<Vec<NodeInfo>>, StoreError> {
        Ok(None)
    }

    /// Whether several coordinators share this store, each owning the
    /// unfinished transactions it drives.
    fn shared(&self) -> bool {
        false
    }

    /// How many times this node's lease was found run out when renewed
    /// (it was paused or cut off): it may have lost transactions since.
    fn lease_lapses(&self) -> u64 {
        0
    }

    /// Who drives the unfinished transaction `txn_id`; `None` when the
    /// store is not shared, or nobody owns it (it is final, or unknown).
    fn owner(&self, _txn_id: &str) -> Result<Option<Owner>, StoreError> {
        Ok(None)
    }

    /// The owning node of each of `txn_ids` that has one.
    fn owners(&self, _txn_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// Unfinished transactions this node owns that are not `live` here
    /// under the claim it owns them by (a takeover interrupted between
    /// claiming and loading, a copy left from an older claim), loaded; and
    /// owner rows of final transactions given up. Nothing for a store that
    /// is not shared.
    fn owned_but_idle(
        &self,
        _live: &dyn Fn(&str, i64) -> bool,
    ) -> Result<Vec<TakenOver>, StoreError> {
        Ok(Vec::new())
    }

    /// Claims up to `limit` unfinished transactions whose owner is gone
    /// (its lease ran out, or it rejoined since), or only `txn_id` if given,
    /// and returns them as the log holds them. Claims by several nodes at
    /// once never overlap. Nothing for a store that is not shared.
    fn take_over(
        &self,
        _limit: usize,
        _txn_id: Option<&str>,
    ) -> Result<Vec<TakenOver>, StoreError> {
        Ok(Vec::new())
    }
}
