//! `arbiter serve`: run the coordinator until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cli::duration;
use crate::config::Config;
use crate::server::{self, Storage};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "ARBITER_LISTEN", default_value = "127.0.0.1:7089")]
    pub listen: SocketAddr,
    /// Directory of the sled transaction log (created if missing).
    #[arg(long, env = "ARBITER_DATA_DIR", default_value = "./arbiter-data")]
    pub data_dir: PathBuf,
    /// Keep the log in memory only (no durability; for experiments).
    #[arg(long, env = "ARBITER_IN_MEMORY")]
    pub in_memory: bool,
    /// Transaction timeout when Begin/Execute give none, in ms.
    #[arg(long, env = "ARBITER_DEFAULT_TIMEOUT_MS", default_value_t = 30_000)]
    pub default_timeout_ms: u64,
    /// Longest transaction timeout a client may ask for, in ms.
    #[arg(long, env = "ARBITER_MAX_TIMEOUT_MS", default_value_t = 86_400_000)]
    pub max_timeout_ms: u64,
    /// Per-call deadline to participants when a branch gives none, in ms.
    #[arg(long, env = "ARBITER_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub call_timeout_ms: u64,
    /// Largest branch payload accepted, in bytes.
    #[arg(long, env = "ARBITER_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: usize,
    /// Most branches per transaction.
    #[arg(long, env = "ARBITER_MAX_BRANCHES", default_value_t = 64)]
    pub max_branches: usize,
    /// First retry delay of a failed participant call, in ms (doubles per failure).
    #[arg(long, env = "ARBITER_RETRY_BASE_MS", default_value_t = 100)]
    pub retry_base_ms: u64,
    /// Cap of the retry delay, in ms.
    #[arg(long, env = "ARBITER_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,
    /// Growth of the retry delay per failure (delays are drawn with full jitter).
    #[arg(long, env = "ARBITER_RETRY_MULTIPLIER", default_value_t = 2.0)]
    pub retry_multiplier: f64,
    /// Flag a transaction stuck once its phase 2 has failed for this long (e.g. 5m).
    #[arg(long, env = "ARBITER_STUCK_AFTER", default_value = "5m", value_parser = duration::parse)]
    pub stuck_after: Duration,
    /// ... or this many times in a row on one branch, whichever comes first.
    #[arg(long, env = "ARBITER_STUCK_AFTER_ATTEMPTS", default_value_t = 10)]
    pub stuck_after_attempts: u32,
    /// Unfinished transactions resumed at once after a restart.
    #[arg(long, env = "ARBITER_RECOVERY_CONCURRENCY", default_value_t = 256)]
    pub recovery_concurrency: usize,
    /// Longest a Commit/Execute with wait holds the call without a client deadline, in ms.
    #[arg(long, env = "ARBITER_MAX_WAIT_MS", default_value_t = 60_000)]
    pub max_wait_ms: u64,
    /// How long finished transactions stay readable, in seconds.
    #[arg(long, env = "ARBITER_RETENTION_SECS", default_value_t = 86_400)]
    pub retention_secs: u64,
    /// How often finished transactions past retention are collected, in seconds.
    #[arg(long, env = "ARBITER_COLLECT_INTERVAL_SECS", default_value_t = 60)]
    pub collect_interval_secs: u64,
}

impl ServeArgs {
    pub fn config(&self) -> Config {
        Config {
            default_timeout: Duration::from_millis(self.default_timeout_ms),
            max_timeout: Duration::from_millis(self.max_timeout_ms),
            default_call_timeout: Duration::from_millis(self.call_timeout_ms),
            max_payload_bytes: self.max_payload_bytes,
            max_branches: self.max_branches,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            retry_multiplier: self.retry_multiplier,
            stuck_after: self.stuck_after,
            stuck_after_attempts: self.stuck_after_attempts,
            recovery_concurrency: self.recovery_concurrency.max(1),
            max_wait: Duration::from_millis(self.max_wait_ms),
            retention: Duration::from_secs(self.retention_secs),
            collect_interval: Duration::from_secs(self.collect_interval_secs.max(1)),
            ..Config::default()
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let storage = if args.in_memory {
        Storage::Memory
    } else {
        Storage::Sled(args.data_dir.clone())
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    server::run(args.config(), storage, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
