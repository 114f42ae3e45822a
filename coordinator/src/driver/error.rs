//! Errors of the driver, per request. [`DriverError::Unavailable`] also covers
//! the fatal case (the log cannot be written); the server maps each variant to
//! one gRPC status in `server::status`.

use crate::engine::EngineError;
use crate::store::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("transaction {0} not found")]
    NotFound(String),
    #[error("transaction {txn} has no branch {branch}")]
    BranchNotFound { txn: String, branch: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// Another coordinator node took the transaction over: this one let go
    /// of it. The caller retries (or is forwarded) and reaches the owner.
    #[error("transaction {0} is now driven by another coordinator node; retry")]
    Moved(String),
    /// Another live node drives the transaction; the server forwards the
    /// call to it.
    #[error("transaction {txn} is driven by coordinator node {node} at {address}")]
    Elsewhere {
        txn: String,
        node: String,
        address: String,
    },
    /// A record of this transaction in the log is damaged: it cannot be
    /// read, and nothing about it may be guessed.
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for DriverError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::WrongState { .. }
            | EngineError::NotAllPrepared { .. }
            | EngineError::BranchNotPending { .. } => {
                DriverError::FailedPrecondition(e.to_string())
            }
            EngineError::BranchConflict { .. } => DriverError::AlreadyExists(e.to_string()),
            EngineError::BadStep { .. } => DriverError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => {
                DriverError::Unavailable("the coordinator is shutting down".into())
            }
            StoreError::Fenced(txn) => DriverError::Moved(txn),
            StoreError::Corrupt(m) => DriverError::DataLoss(format!(
                "the transaction log holds a damaged record ({m}); its outcome cannot be \
                 read here and must not be presumed: see the coordinator's log"
            )),
            other => DriverError::Unavailable(format!("transaction log unavailable: {other}")),
        }
    }
}
