//! The Arbiter participant SDK.
//!
//! - **Participants** implement [`TwoPhaseHandler`] (prepare / commit /
//!   rollback) or [`TccHandler`] (try / confirm / cancel) and serve them by
//!   resource name with [`ParticipantServer`].
//! - **Initiators** run transactions with [`Client`]: [`Client::execute`] for
//!   one-call transactions, or `begin` / `register_branch` / `commit`.
//!
//! Delivery is at least once and may be out of order: any call can repeat, and
//! rollback/cancel can arrive before or instead of prepare/try. Handlers must be
//! idempotent (key your bookkeeping by `txn_id` + `branch_id`).
//!
//! Or let the SDK do it: put a handler behind the **exactly-once barrier**
//! ([`barrier`]) with one line, [`SledBarrier::guard`] for state kept in
//! sled (feature `sled`) or [`PgBarrier::guard`] for a PostgreSQL database
//! (feature `postgres`), and repeats, empty rollbacks and late prepares are
//! handled for you. For 2PC on PostgreSQL's own prepared transactions, with
//! in-doubt resolution after crashes, see [`PgTwoPhase`].
//!
//! A participant unsure of a branch it prepared (say, after its own restart)
//! can ask with [`Client::resolve`]: the coordinator answers commit, abort, or
//! wait, and a transaction it does not know counts as aborted (presumed abort).
//!
//! # Example
//!
//! A complete program: a coordinator, one account service, and a transfer
//! that is refused for insufficient funds and one that commits.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use arbiter_sdk::{Branch, CallContext, Client, Execute, ParticipantError, ParticipantServer,
//!                   TwoPhaseHandler, TxnState, Vote};
//!
//! /// Balances, plus debits prepared but not yet committed, by (txn, branch).
//! #[derive(Default)]
//! struct Account {
//!     balance: Mutex<i64>,
//!     held: Mutex<HashMap<(String, String), i64>>,
//! }
//!
//! fn amount(payload: &[u8]) -> Result<i64, ParticipantError> {
//!     std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok())
//!         .ok_or_else(|| ParticipantError::Invalid("payload must be an amount".into()))
//! }
//!
//! impl TwoPhaseHandler for Account {
//!     async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
//!         let amount = amount(payload)?;
//!         let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
//!         let mut held = self.held.lock().unwrap();
//!         if held.contains_key(&key) {
//!             return Ok(Vote::Yes); // a repeated prepare
//!         }
//!         let mut balance = self.balance.lock().unwrap();
//!         if *balance < amount {
//!             return Ok(Vote::No(format!("insufficient funds: {} < {amount}", *balance)));
//!         }
//!         *balance -= amount;
//!         held.insert(key, amount);
//!         Ok(Vote::Yes)
//!     }
//!     async fn commit(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
//!         self.held.lock().unwrap().remove(&(ctx.txn_id.clone(), ctx.branch_id.clone()));
//!         Ok(())
//!     }
//!     async fn rollback(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
//!         let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
//!         if let Some(amount) = self.held.lock().unwrap().remove(&key) {
//!             *self.balance.lock().unwrap() += amount;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A coordinator (normally `arbiter serve`; here in-process, in memory).
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let coordinator = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(arbiter::run(arbiter::Config::default(), arbiter::server::Storage::Memory,
//!                           listener, std::future::pending()));
//!
//! // The participant.
//! let account = Arc::new(Account { balance: Mutex::new(100), ..Default::default() });
//! let service = ParticipantServer::new()
//!     .two_phase("account.debit", account.clone())
//!     .serve("127.0.0.1:0".parse()?)
//!     .await?;
//!
//! // The initiator.
//! let client = Client::connect(coordinator).await?;
//! let refused = client
//!     .execute(Execute::two_phase().branch(Branch::new(service.endpoint(), "account.debit").payload("500")))
//!     .await?;
//! assert_eq!(refused.state, TxnState::Aborted);
//! assert!(refused.reason.contains("insufficient funds"));
//! assert_eq!(*account.balance.lock().unwrap(), 100);
//!
//! let done = client
//!     .execute(Execute::two_phase().branch(Branch::new(service.endpoint(), "account.debit").payload("30")))
//!     .await?;
//! assert!(done.is_committed());
//! assert_eq!(*account.balance.lock().unwrap(), 70);
//! # Ok(())
//! # }
//! ```

pub mod barrier;
mod client;
mod handler;
#[cfg(feature = "postgres")]
mod postgres;
mod server;
mod watch;

pub use client::{
    Branch, BranchResult, BranchState, Client, ClientError, ConnectOptions, Credentials, Execute,
    Mode, Outcome, Protocol, RawClient, Resolution, SagaStep, Transaction, TxnState,
};

/// TLS settings for [`ConnectOptions::tls`] and [`ParticipantServer::tls`].
pub mod tls {
    pub use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
}
pub use handler::{
    CallContext, MAX_RESULT, ParticipantError, SagaHandler, StepOutcome, TccHandler,
    TwoPhaseHandler, Vote,
};
pub use server::{ParticipantServer, RunningParticipant};
pub use watch::{BranchVote, EventKind, TxnEvent, Watch};

#[cfg(feature = "sled")]
pub use barrier::sled::{Guarded, SledBarrier, SledHandler, SledTxn};
#[cfg(feature = "postgres")]
pub use postgres::{
    DEFAULT_LOCK_TIMEOUT, DEFAULT_RESOLVE_EVERY, InDoubtReport, PgBarrier, PgGuarded, PgHandler,
    PgPrepareHandler, PgTwoPhase,
};
/// The PostgreSQL client the [`PgHandler`] and [`PgPrepareHandler`] calls
/// receive their transaction from.
#[cfg(feature = "postgres")]
pub use tokio_postgres;

/// The generated `arbiter.v1` types, for anything the wrappers do not cover.
pub use arbiter_proto::v1 as proto;
