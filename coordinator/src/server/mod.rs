//! The gRPC layer and the life cycle of a running coordinator: open the log,
//! recover, serve, shut down. Services here are thin: decode, call the driver,
//! map errors in one place (`status`).

mod admin;
mod convert;
mod coordinator;
mod status;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arbiter_proto::v1::admin_server::AdminServer;
use arbiter_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::driver::{Driver, DriverError};
use crate::store::{MemoryLog, SledLog, StoreError, TxnLog};
use admin::AdminService;
use coordinator::CoordinatorService;

/// Where the transaction log lives.
#[derive(Clone, Debug)]
pub enum Storage {
    /// sled in this directory: the durable default.
    Sled(PathBuf),
    /// In memory only: everything is lost when the process ends.
    Memory,
}

/// Why a coordinator stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("stopped because the transaction log failed: {0}")]
    LogFailed(String),
}

/// Runs a coordinator on `listener` until `shutdown` resolves.
///
/// On start it resumes every unfinished transaction in the log. On shutdown it
/// stops accepting calls, answers waiting clients with the current state,
/// writes everything queued, and leaves unfinished transactions for recovery.
/// If the log fails it stops on its own with [`ServeError::LogFailed`].
pub async fn run(
    config: Config,
    storage: Storage,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let log: Arc<dyn TxnLog> = match &storage {
        Storage::Sled(dir) => Arc::new(SledLog::open(dir)?),
        Storage::Memory => Arc::new(MemoryLog::new()),
    };
    let max_message = config.max_payload_bytes * config.max_branches + (1 << 20);
    let collect_interval = config.collect_interval;
    let driver = Driver::new(config, log)?;
    let recovery = driver.load_unfinished()?;
    let recovered = recovery.len();
    let listen = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%listen, ?storage, recovered, "arbiter coordinator serving");

    let resumer = {
        let driver = driver.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resumed = driver.resume(recovery).await;
            if resumed > 0 {
                tracing::info!(resumed, elapsed = ?started.elapsed(), "recovery: every unfinished transaction resumed");
            }
        })
    };
    let collector = tokio::spawn(collect_periodically(driver.clone(), collect_interval));
    let service = CoordinatorServer::new(CoordinatorService {
        driver: driver.clone(),
    })
    .max_decoding_message_size(max_message);

    let fatal = Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let driver = driver.clone();
        let fatal = fatal.clone();
        async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down"),
                reason = driver.fatal() => {
                    tracing::error!(%reason, "transaction log failed; stopping");
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
            }
            driver.begin_shutdown();
        }
    };
    let served = Server::builder()
        .add_service(service)
        .add_service(AdminServer::new(AdminService {
            driver: driver.clone(),
        }))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop)
        .await;
    collector.abort();
    resumer.abort();
    let closing = driver.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    served?;
    let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
    match fatal {
        Some(reason) => Err(ServeError::LogFailed(reason)),
        None => {
            tracing::info!("stopped; unfinished transactions will resume on the next start");
            Ok(())
        }
    }
}

async fn collect_periodically(driver: Driver, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let d = driver.clone();
        match tokio::task::spawn_blocking(move || d.collect_finished()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(collected = n, "collected finished transactions"),
            Ok(Err(e)) => tracing::warn!(error = %e, "collecting finished transactions failed"),
            Err(e) => tracing::warn!(error = %e, "collector task failed"),
        }
    }
}
