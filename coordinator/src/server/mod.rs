//! The gRPC layer and the life cycle of a running coordinator: open the log,
//! recover, serve, shut down. Services here are thin: decode, call the driver,
//! map errors in one place (`status`).

pub(crate) mod admin;
pub(crate) mod convert;
mod coordinator;
pub(crate) mod forward;
pub mod incoming;
pub mod requests;
mod status;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arbiter_proto::v1::admin_server::AdminServer;
use arbiter_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::driver::{Driver, DriverError};
use crate::security::{Role, interceptor};
use crate::store::{MemoryLog, OpenOptions, OpenReport, PgLog, SledLog, StoreError, TxnLog};
use admin::AdminService;
use coordinator::CoordinatorService;

/// Where the transaction log lives.
#[derive(Clone)]
pub enum Storage {
    /// sled in this directory: the durable default.
    Sled(PathBuf),
    /// In memory only: everything is lost when the process ends.
    Memory,
    /// PostgreSQL at this URL (`postgres://user@host:port/db`).
    Postgres(String),
}

/// Shown in logs: never a PostgreSQL password.
impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sled(dir) => write!(f, "sled {}", dir.display()),
            Storage::Memory => f.write_str("memory"),
            Storage::Postgres(url) => write!(f, "postgres {}", crate::store::redacted(url)),
        }
    }
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
    #[error("{0}")]
    Setup(String),
}

/// Runs a coordinator on `listener` until `shutdown` resolves.
///
/// On start it resumes every unfinished transaction in the log. On shutdown it
/// stops accepting calls, answers waiting clients with the current state,
/// writes everything queued, and leaves unfinished transactions for recovery.
/// If the log fails it stops on its own with [`ServeError::LogFailed`].
pub async fn run(
    mut config: Config,
    storage: Storage,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max_message = config.max_message_bytes;
    let collect_interval = config.collect_interval;
    let auth = Arc::new(config.auth.clone());
    let fd_limit = incoming::raise_fd_limit();
    let limits = &mut config.connections;
    limits.max_connections = incoming::connection_cap(limits.max_connections, fd_limit);
    limits.max_participant_channels = limits
        .max_participant_channels
        .min(incoming::participant_channels(fd_limit));
    let limits = limits.clone();
    config.own_addresses = listener.local_addr().into_iter().collect();
    config.own_addresses.extend(config.metrics_listen);
    config
        .own_addresses
        .extend(config.console.as_ref().map(|c| c.listen));
    tracing::debug!(?fd_limit, ?limits, "connection limits");
    // Everything that can fail on bad settings, before the log is opened.
    let keepalive = limits.idle_timeout / 3;
    let mut builder = Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive));
    if let Some(tls) = config.tls.server.clone() {
        builder = builder.tls_config(tls)?;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(arbiter_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e| ServeError::Setup(format!("gRPC reflection: {e}"));
    // Health and reflection need no token: their requests are small, so
    // they may not be large.
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(reflection_error)?
        .max_decoding_message_size(OPEN_SERVICE_MESSAGE);
    // v1alpha too: grpcio-reflection, Postman and older grpcurl speak only it.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(reflection_error)?
        .max_decoding_message_size(OPEN_SERVICE_MESSAGE);
    let metrics = config.metrics_listen.is_some();
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install(addr).map_err(ServeError::Setup)?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    if !auth.enabled() {
        tracing::warn!(
            "no tokens configured: anyone who can reach this port can run and force transactions"
        );
    }

    let options = OpenOptions {
        accept_damage: config.accept_damaged_log,
    };
    let (log, opened): (Arc<dyn TxnLog>, OpenReport) = match &storage {
        Storage::Sled(dir) => {
            let dir = dir.clone();
            let (log, report) = tokio::task::spawn_blocking(move || SledLog::open(&dir, options))
                .await
                .map_err(|e| ServeError::Setup(format!("opening the log: {e}")))??;
            (Arc::new(log), report)
        }
        Storage::Memory => (Arc::new(MemoryLog::new()), OpenReport::default()),
        Storage::Postgres(url) => {
            let url = url.clone();
            let node = config.node.clone();
            let (log, report) =
                tokio::task::spawn_blocking(move || PgLog::open_postgres(&url, options, node))
                    .await
                    .map_err(|e| ServeError::Setup(format!("opening the log: {e}")))??;
            (Arc::new(log), report)
        }
    };
    let shared = log.shared();
    let participant_tls = config.tls.participants.clone();
    let console_config = config.console.clone();
    let driver = Driver::new(config, log)?;
    driver.audit_open(&opened).await?;
    let recovery = driver.load_unfinished()?;
    let recovered = recovery.len();
    crate::metrics::recovery_pending(recovered);
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_service = health_service.max_decoding_message_size(OPEN_SERVICE_MESSAGE);
    set_health(&health, ServingStatus::NotServing).await;
    let listen = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%listen, ?storage, recovered, "arbiter coordinator serving");

    // Not serving (health) until every transaction found unfinished has
    // been resumed; requests are still answered meanwhile.
    // One health change at a time: a stop's NOT_SERVING is never overtaken
    // by a SERVING decided just before it.
    let health_turn = Arc::new(tokio::sync::Mutex::new(()));
    let resumer = {
        let (driver, health, turn) = (driver.clone(), health.clone(), health_turn.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resumed = driver.resume(recovery).await;
            crate::metrics::recovery_pending(0);
            crate::metrics::recovered(resumed as u64);
            if resumed > 0 {
                tracing::info!(resumed, elapsed = ?started.elapsed(), "recovery: every unfinished transaction resumed");
            }
            follow_the_log(&driver, &health, &turn).await;
        })
    };
    let collector = tokio::spawn(collect_periodically(driver.clone(), collect_interval));
    driver.start_notices();
    let forward = Arc::new(forward::Forwarder::new(participant_tls, max_message));
    let console = match &console_config {
        Some(c) => {
            let listener = tokio::net::TcpListener::bind(c.listen).await.map_err(|e| {
                ServeError::Setup(format!(
                    "cannot listen on {} for the console: {e}",
                    c.listen
                ))
            })?;
            if !auth.enabled() {
                tracing::warn!(addr = %c.listen, "the console runs without tokens (--console-insecure): anyone who reaches it can act");
            }
            tracing::info!(addr = %c.listen, "serving the web console");
            let mut stopping = driver.stopping();
            let until_stopping = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(crate::console::serve(
                listener,
                c.tls.clone(),
                driver.clone(),
                (*auth).clone(),
                forward.clone(),
                until_stopping,
            )))
        }
        None => None,
    };
    // The gauges scan every live transaction: only when someone scrapes them.
    let gauges = metrics.then(|| tokio::spawn(update_gauges(driver.clone())));
    // In a cluster: claim the transactions of nodes that are gone.
    let taker = shared.then(|| tokio::spawn(take_over_periodically(driver.clone())));
    let coordinator = InterceptedService::new(
        CoordinatorServer::new(CoordinatorService {
            driver: driver.clone(),
            forward: forward.clone(),
        })
        .max_decoding_message_size(max_message),
        interceptor(auth.clone(), Role::Coordinator),
    );
    let admin = InterceptedService::new(
        AdminServer::new(AdminService {
            driver: driver.clone(),
            forward,
        })
        .max_decoding_message_size(max_message),
        interceptor(auth, Role::Admin),
    );

    let fatal = Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let driver = driver.clone();
        let fatal = fatal.clone();
        let health = health.clone();
        let turn = health_turn.clone();
        async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down"),
                reason = driver.fatal() => {
                    tracing::error!(%reason, "transaction log failed; stopping");
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
            }
            driver.begin_shutdown();
            let _turn = turn.lock().await;
            set_health(&health, ServingStatus::NotServing).await;
        }
    };
    let stopped = Arc::new(tokio::sync::Notify::new());
    let stop = {
        let stopped = stopped.clone();
        async move {
            stop.await;
            stopped.notify_one();
        }
    };
    let budget = Arc::new(requests::Budget::new(
        limits.max_request_memory,
        max_message,
    ));
    let serving = builder
        .layer(requests::layer(&limits, budget))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(coordinator)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming::accept(listener, &limits), stop);
    // Connections are given a grace period to finish after the stop, not
    // forever: a client that never sends must not keep the process up.
    let served = tokio::select! {
        served = serving => served,
        () = async {
            stopped.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the stop; closing them");
            Ok(())
        }
    };
    collector.abort();
    resumer.abort();
    if let Some(taker) = taker {
        taker.abort();
    }
    if let Some(gauges) = gauges {
        gauges.abort();
    }
    if let Some(console) = console {
        console.abort();
    }
    let closing = driver.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close()).await;
    served?;
    // A failure while closing (the last checkpoint) counts too.
    let fatal = fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .or_else(|| driver.fatal_now());
    match fatal {
        Some(reason) => Err(ServeError::LogFailed(reason)),
        None => {
            tracing::info!("stopped; unfinished transactions will resume on the next start");
            Ok(())
        }
    }
}

/// Largest request message of the services open without a token.
const OPEN_SERVICE_MESSAGE: usize = 64 * 1024;

/// How long open connections may take to finish once the server stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The health of the whole server ("") and of each Arbiter service.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in ["", "arbiter.v1.Coordinator", "arbiter.v1.Admin"] {
        health.set_service_status(service, status).await;
    }
}

/// After recovery: `SERVING`, but `NOT_SERVING` while the log is out of
/// reach (a database restarting; nothing is acknowledged meanwhile) or has
/// failed; never changed once the server is stopping.
async fn follow_the_log(driver: &Driver, health: &HealthReporter, turn: &tokio::sync::Mutex<()>) {
    let mut shown: Option<bool> = None;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        ticker.tick().await;
        let unreachable = driver
            .writer_stats()
            .unreachable
            .load(std::sync::atomic::Ordering::Acquire);
        let serving = !unreachable && driver.fatal_now().is_none();
        if shown == Some(serving) {
            continue;
        }
        let _turn = turn.lock().await;
        if driver.is_stopping() {
            return;
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(health, status).await;
        shown = Some(serving);
    }
}

/// Keeps the unfinished/stuck gauges current.
async fn update_gauges(driver: Driver) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let stats = driver.stats();
        let unfinished = stats.unfinished.iter().map(|(_, n)| n).sum();
        crate::metrics::unfinished(unfinished, stats.stuck);
        crate::metrics::participant_channels(driver.participant_channels());
    }
}

/// How often a node looks for transactions of nodes that are gone.
const TAKEOVER_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

async fn take_over_periodically(driver: Driver) {
    let mut ticker = tokio::time::interval(TAKEOVER_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 1u64.. {
        ticker.tick().await;
        if let Err(e) = driver.take_over().await {
            tracing::warn!(error = %e, "looking for transactions to take over failed; trying again");
        }
        // Now and then: what this node owns but does not drive.
        if tick % 40 == 0
            && let Err(e) = driver.drive_idle_owned().await
        {
            tracing::warn!(error = %e, "checking this node's own transactions failed; trying again");
        }
    }
}

async fn collect_periodically(driver: Driver, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let closed = driver.evict_idle_channels();
        if closed > 0 {
            tracing::debug!(closed, "closed idle participant channels");
        }
        let d = driver.clone();
        match tokio::task::spawn_blocking(move || d.collect_finished()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(collected = n, "collected finished transactions"),
            Ok(Err(e)) => tracing::warn!(error = %e, "collecting finished transactions failed"),
            Err(e) => tracing::warn!(error = %e, "collector task failed"),
        }
    }
}
