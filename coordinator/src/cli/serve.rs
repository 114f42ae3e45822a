//! `arbiter serve`: run the coordinator until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::cli::duration;
use crate::config::{Config, ConnectionLimits, NodeIdentity};
use crate::security::{Auth, EndpointPattern, Tls, Token};
use crate::server::{self, Storage};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file setting any of the options below by their long name
    /// (`max-branches = 16`, `admin-token = ["ops=..."]`). Flags win over
    /// ARBITER_* variables, which win over the file. Check one with
    /// `arbiter config check FILE`.
    #[arg(long, env = "ARBITER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on.
    #[arg(long, env = "ARBITER_LISTEN", default_value = "127.0.0.1:7089")]
    pub listen: SocketAddr,
    /// Directory of the sled transaction log (created if missing).
    #[arg(long, env = "ARBITER_DATA_DIR", default_value = "./arbiter-data")]
    pub data_dir: PathBuf,
    /// Keep the log in PostgreSQL instead of sled in --data-dir:
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (the schema is created or
    /// migrated at start). README, "Running on PostgreSQL".
    #[arg(
        long,
        env = "ARBITER_STORE",
        hide_env_values = true,
        conflicts_with = "in_memory"
    )]
    pub store: Option<String>,
    /// This node's id among coordinators sharing a store (default: the host
    /// name and the --listen port).
    #[arg(long, env = "ARBITER_NODE_ID")]
    pub node_id: Option<String>,
    /// The http(s)://host:port other nodes and clients reach this one at
    /// (default: --listen, with the host name when it listens on all
    /// addresses).
    #[arg(long, env = "ARBITER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// How long this node's lease in the store lasts unless renewed (renewed
    /// every third of it), in ms.
    #[arg(long, env = "ARBITER_LEASE_MS", default_value_t = 5000)]
    pub lease_ms: u64,
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
    /// Most unfinished transactions held at once; beyond it Begin and
    /// Execute answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_UNFINISHED", default_value_t = 100_000)]
    pub max_unfinished: usize,
    /// Largest gRPC request message accepted, in bytes (larger:
    /// OUT_OF_RANGE). Default: what the largest valid Execute needs,
    /// max-branches x (max-payload-bytes + 2 KiB) + 64 KiB (~4.3 MiB).
    #[arg(long, env = "ARBITER_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Client connections held at once; more are closed on accept. Lowered
    /// at start if the open-file limit leaves less room.
    #[arg(long, env = "ARBITER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Client connections from one IP address held at once (at most
    /// --max-connections); more are closed on accept.
    #[arg(long, env = "ARBITER_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    pub max_connections_per_ip: usize,
    /// Close a new connection that has not sent its handshake within this
    /// long (e.g. 10s).
    #[arg(long, env = "ARBITER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub handshake_timeout: Duration,
    /// Close a connection that sends nothing for this long; live clients
    /// answer HTTP/2 pings sent every third of it.
    #[arg(long, env = "ARBITER_IDLE_TIMEOUT", default_value = "60s", value_parser = duration::parse)]
    pub idle_timeout: Duration,
    /// Concurrent requests (HTTP/2 streams) one connection may have open.
    #[arg(
        long,
        env = "ARBITER_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_streams_per_connection: u32,
    /// Fail a request whose message has not fully arrived after this long
    /// (DEADLINE_EXCEEDED), freeing what it held.
    #[arg(long, env = "ARBITER_REQUEST_READ_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    pub request_read_timeout: Duration,
    /// Bytes of request messages being received at once, over all
    /// connections; beyond it requests fail with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_REQUEST_MEMORY", default_value_t = 256 << 20)]
    pub max_request_memory: usize,
    /// Participant endpoints clients may register (repeatable, or
    /// comma-separated): host:port, host:*, *.domain:port, 10.0.0.0/8,
    /// [fd00::/8]:port. Others are PERMISSION_DENIED. Default: any (warned).
    #[arg(
        long = "allow-participant",
        env = "ARBITER_ALLOW_PARTICIPANTS",
        value_delimiter = ','
    )]
    pub allow_participants: Vec<EndpointPattern>,
    /// A bearer token for the Coordinator service, as name=secret
    /// (repeatable). With any token set, every call needs one.
    #[arg(
        long = "coordinator-token",
        env = "ARBITER_COORDINATOR_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub coordinator_tokens: Vec<Token>,
    /// A bearer token for the Admin service (and the Coordinator service),
    /// as name=secret (repeatable). The name is recorded in the audit log.
    #[arg(
        long = "admin-token",
        env = "ARBITER_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<Token>,
    /// Serve TLS with this certificate chain (PEM file).
    #[arg(long, env = "ARBITER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM file).
    #[arg(long, env = "ARBITER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM file): mutual TLS.
    #[arg(long, env = "ARBITER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA (PEM file) that signs participants' certificates; allows https:// endpoints.
    #[arg(long, env = "ARBITER_PARTICIPANT_TLS_CA")]
    pub participant_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file) shown to https:// participants (mutual TLS).
    #[arg(long, env = "ARBITER_PARTICIPANT_TLS_CERT", requires_all = ["participant_tls_key", "participant_tls_ca"])]
    pub participant_tls_cert: Option<PathBuf>,
    /// The private key of --participant-tls-cert (PEM file).
    #[arg(
        long,
        env = "ARBITER_PARTICIPANT_TLS_KEY",
        requires = "participant_tls_cert"
    )]
    pub participant_tls_key: Option<PathBuf>,
    /// POST a signed JSON notification here when a transaction ends or
    /// becomes stuck (repeatable; http://host:port/path). Must pass
    /// --allow-participant when that is set.
    #[arg(
        long = "notify-url",
        env = "ARBITER_NOTIFY_URLS",
        value_delimiter = ','
    )]
    pub notify_urls: Vec<crate::notify::http::Endpoint>,
    /// The HMAC-SHA256 secret notifications are signed with
    /// (X-Arbiter-Signature). Without it they go unsigned (warned).
    #[arg(long, env = "ARBITER_NOTIFY_SECRET", hide_env_values = true)]
    pub notify_secret: Option<String>,
    /// Changes the live feed (Admin.WatchTransactions) holds; a watcher
    /// further behind is cut off with the position to resume from.
    #[arg(long, env = "ARBITER_WATCH_BUFFER", default_value_t = crate::store::feed::RING)]
    pub watch_buffer: usize,
    /// Watch streams open at once (WatchTransaction and WatchTransactions);
    /// more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_WATCHES", default_value_t = 10_000)]
    pub max_watches: usize,
    /// Serve the web console on this address (e.g. 127.0.0.1:7090). Off by
    /// default. Log in with an admin token (acts) or a coordinator token
    /// (looks).
    #[arg(long, env = "ARBITER_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// Serve the console although no token is configured: anyone who
    /// reaches it may act.
    #[arg(long, env = "ARBITER_CONSOLE_INSECURE")]
    pub console_insecure: bool,
    /// Serve Prometheus metrics on this address (GET /metrics). Off by default.
    #[arg(long, env = "ARBITER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Start even though the log failed its start-up check (damaged records,
    /// or behind what was acknowledged), accepting that the transactions the
    /// refusal named may be lost or wrong. Logged and recorded in the audit
    /// log; command line only (not from a file or the environment).
    #[arg(long)]
    pub accept_damaged_log: bool,
}

fn pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    crate::security::read_pem(path, what).map_err(anyhow::Error::msg)
}

impl ServeArgs {
    /// The settings, with every referenced file read and checked.
    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(Config {
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
            max_unfinished: self.max_unfinished,
            max_message_bytes: self
                .max_message_bytes
                .unwrap_or_else(|| {
                    crate::config::derived_max_message(self.max_branches, self.max_payload_bytes)
                })
                .max(1024),
            connections: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_connections_per_ip: self.max_connections_per_ip.max(1),
                handshake_timeout: self.handshake_timeout.max(Duration::from_millis(100)),
                idle_timeout: self.idle_timeout.max(Duration::from_secs(1)),
                max_streams_per_connection: self.max_streams_per_connection.max(1),
                request_read_timeout: self.request_read_timeout.max(Duration::from_millis(100)),
                max_request_memory: self.max_request_memory.max(64 * 1024),
                ..ConnectionLimits::default()
            },
            allow_participants: self.allow_participants.clone(),
            auth: Auth {
                coordinator: self.coordinator_tokens.clone(),
                admin: self.admin_tokens.clone(),
            },
            tls: self.tls()?,
            metrics_listen: self.metrics_listen,
            accept_damaged_log: self.accept_damaged_log,
            node: self.node_identity()?,
            notify: self.notify()?,
            watch_buffer: self.watch_buffer.max(16),
            max_watches: self.max_watches.max(1),
            console: self.console()?,
            ..Config::default()
        })
    }

    /// `--console-listen`: refused without tokens unless `--console-insecure`;
    /// over TLS with the gRPC port's settings when those are set.
    fn console(&self) -> anyhow::Result<Option<crate::console::ConsoleConfig>> {
        let Some(listen) = self.console_listen else {
            return Ok(None);
        };
        if self.admin_tokens.is_empty()
            && self.coordinator_tokens.is_empty()
            && !self.console_insecure
        {
            anyhow::bail!(
                "--console-listen without any --admin-token: anyone who reaches the console could act. \
                 Configure tokens, or add --console-insecure to run it open on a trusted network"
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let ca = match &self.tls_client_ca {
                    Some(ca) => Some(pem(ca, "--tls-client-ca")?),
                    None => None,
                };
                let config = crate::console::tls::server_config(
                    &pem(cert, "--tls-cert")?,
                    &pem(key, "--tls-key")?,
                    ca.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("the console's TLS: {e}"))?;
                Some(config)
            }
            _ => None,
        };
        Ok(Some(crate::console::ConsoleConfig {
            listen,
            insecure: self.console_insecure,
            tls,
        }))
    }

    /// `--notify-url` and `--notify-secret`, checked against the allowlist.
    fn notify(&self) -> anyhow::Result<crate::notify::NotifyConfig> {
        for endpoint in &self.notify_urls {
            let target = format!("http://{}", endpoint.authority);
            if !crate::security::allowed(&self.allow_participants, &target) {
                anyhow::bail!(
                    "--notify-url {}: {} is not in --allow-participant",
                    endpoint.url,
                    endpoint.authority
                );
            }
        }
        if !self.notify_urls.is_empty() && self.notify_secret.is_none() {
            tracing::warn!(
                "--notify-url without --notify-secret: notifications go unsigned, receivers cannot tell them from forgeries"
            );
        }
        Ok(crate::notify::NotifyConfig {
            endpoints: self.notify_urls.clone(),
            secret: self.notify_secret.clone().filter(|s| !s.is_empty()),
        })
    }

    /// `--node-id`, `--advertise-addr` and `--lease-ms`, with their defaults.
    fn node_identity(&self) -> anyhow::Result<NodeIdentity> {
        let host = host_name();
        let port = self.listen.port();
        let id = match &self.node_id {
            Some(id) => {
                crate::driver::validate::id("--node-id", id).map_err(|e| anyhow::anyhow!("{e}"))?;
                id.clone()
            }
            None => format!("{host}:{port}"),
        };
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let address = match &self.advertise_addr {
            Some(address) => {
                let uri: http::Uri = address
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--advertise-addr {address:?}: {e}"))?;
                let plain = matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && uri.port_u16().is_some()
                    && matches!(uri.path(), "" | "/");
                if !plain {
                    anyhow::bail!("--advertise-addr {address:?}: give http(s)://host:port");
                }
                address.trim_end_matches('/').to_string()
            }
            None if self.listen.ip().is_unspecified() => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{}", self.listen),
        };
        Ok(NodeIdentity {
            id,
            address,
            // Renewed every third of it; an hour at most.
            lease: Duration::from_millis(self.lease_ms.clamp(500, 3_600_000)),
        })
    }

    fn tls(&self) -> anyhow::Result<Tls> {
        let mut tls = Tls::default();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let identity = Identity::from_pem(pem(cert, "--tls-cert")?, pem(key, "--tls-key")?);
            let mut server = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &self.tls_client_ca {
                server = server.client_ca_root(Certificate::from_pem(pem(ca, "--tls-client-ca")?));
            }
            tls.server = Some(server);
        }
        if let Some(ca) = &self.participant_tls_ca {
            let identity = match (&self.participant_tls_cert, &self.participant_tls_key) {
                (Some(cert), Some(key)) => Some((
                    pem(cert, "--participant-tls-cert")?,
                    pem(key, "--participant-tls-key")?,
                )),
                _ => None,
            };
            tls.participants_http = Some(
                crate::security::http_client_tls(
                    &pem(ca, "--participant-tls-ca")?,
                    identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                )
                .map_err(|e| anyhow::anyhow!("HTTP participants' TLS: {e}"))?,
            );
            let mut client = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem(ca, "--participant-tls-ca")?));
            if let (Some(cert), Some(key)) = (&self.participant_tls_cert, &self.participant_tls_key)
            {
                client = client.identity(Identity::from_pem(
                    pem(cert, "--participant-tls-cert")?,
                    pem(key, "--participant-tls-key")?,
                ));
            }
            tls.participants = Some(client);
        }
        Ok(tls)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if config.allow_participants.is_empty() {
        tracing::warn!(
            "no --allow-participant: clients may register any endpoint, and the coordinator will call it"
        );
    }
    let storage = match (&args.store, args.in_memory) {
        (Some(url), _) => {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                anyhow::bail!(
                    "--store {}: give a postgres://USER@HOST:PORT/DB URL \
                     (the default store is sled in --data-dir)",
                    crate::store::redacted(url)
                );
            }
            Storage::Postgres(url.clone())
        }
        (None, true) => Storage::Memory,
        (None, false) => Storage::Sled(args.data_dir.clone()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    server::run(config, storage, listener, shutdown_signal()).await?;
    Ok(())
}

/// This machine's host name (Linux), else `localhost`, with anything an id
/// may not hold turned into `-`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
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
