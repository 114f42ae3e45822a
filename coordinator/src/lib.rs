//! Arbiter, a distributed-transaction coordinator.
//!
//! The crate is split by concern:
//! - [`engine`]: the pure transaction state machine (no I/O);
//! - [`driver`]: runs the engine's actions: the log, participant calls, timers;
//! - [`store`]: the [`store::TxnLog`] trait, sled and in-memory logs, group commit;
//! - [`server`]: the thin tonic services;
//! - [`cli`]: the `arbiter` command line;
//! - [`config`]: tunables and their defaults;
//! - [`fuzz`]: what the fuzz targets feed arbitrary bytes to.
//!
//! [`server::run`] starts a whole coordinator on a listener; tests and the
//! binary both use it.

pub mod cli;
pub mod config;
pub mod console;
pub mod driver;
pub mod engine;
pub mod failpoints;
pub mod fuzz;
pub mod metrics;
pub mod notify;
pub mod security;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::run;
