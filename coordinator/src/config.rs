//! The coordinator's settings, with the defaults the `arbiter serve` flags use.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::Policy;
use crate::security::{Auth, EndpointPattern, Tls};

/// Limits, timings and security of one coordinator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Transaction timeout when a client gives none.
    pub default_timeout: Duration,
    /// The longest transaction timeout a client may ask for.
    pub max_timeout: Duration,
    /// Per-call deadline to participants when a branch gives none.
    pub default_call_timeout: Duration,
    /// The longest per-call deadline a branch may ask for.
    pub max_call_timeout: Duration,
    /// Largest branch payload accepted.
    pub max_payload_bytes: usize,
    /// Most branches one transaction may have.
    pub max_branches: usize,
    /// First retry delay of a failed participant call; doubles per failure.
    pub retry_base: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
    /// Growth of the retry delay per failure.
    pub retry_multiplier: f64,
    /// A transaction whose phase 2 failed this many times in a row on one
    /// branch is flagged stuck (and still retried).
    pub stuck_after_attempts: u32,
    /// ... or whose phase 2 has been failing for this long.
    pub stuck_after: Duration,
    /// Transactions resumed at once after a restart.
    pub recovery_concurrency: usize,
    /// How long `Commit`/`Execute` with `wait` hold the call when the caller
    /// sets no deadline of its own.
    pub max_wait: Duration,
    /// How long finished transactions stay readable before they are collected.
    pub retention: Duration,
    /// How often the collector looks for finished transactions past retention.
    pub collect_interval: Duration,
    /// Most unfinished transactions held at once; beyond it new ones are
    /// refused with `RESOURCE_EXHAUSTED`.
    pub max_unfinished: usize,
    /// Largest gRPC request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Participant endpoints clients may register; empty: any.
    pub allow_participants: Vec<EndpointPattern>,
    /// Bearer tokens by role; none: no authentication.
    pub auth: Auth,
    /// TLS of the server and of calls to participants.
    pub tls: Tls,
    /// Serve Prometheus metrics on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// Start on a damaged log anyway (an operator's explicit, audited choice).
    pub accept_damaged_log: bool,
    /// What one client connection, and all of them together, may hold.
    pub connections: ConnectionLimits,
    /// This coordinator's own addresses (set when it starts serving): a
    /// participant endpoint naming one is refused.
    pub own_addresses: Vec<SocketAddr>,
    /// Who this coordinator is among those sharing a store.
    pub node: NodeIdentity,
    /// Webhooks for transactions that end or become stuck.
    pub notify: crate::notify::NotifyConfig,
    /// Changes the live feed holds for watchers that fall behind.
    pub watch_buffer: usize,
    /// Watch streams (both kinds) open at once; beyond it RESOURCE_EXHAUSTED.
    pub max_watches: usize,
    /// The web console, when it is on.
    pub console: Option<crate::console::ConsoleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(24 * 3600),
            default_call_timeout: Duration::from_secs(5),
            max_call_timeout: Duration::from_secs(600),
            max_payload_bytes: 64 * 1024,
            max_branches: 64,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            retry_multiplier: 2.0,
            stuck_after_attempts: 10,
            stuck_after: Duration::from_secs(300),
            recovery_concurrency: 256,
            max_wait: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            collect_interval: Duration::from_secs(60),
            max_unfinished: 100_000,
            max_message_bytes: derived_max_message(64, 64 * 1024),
            allow_participants: Vec::new(),
            auth: Auth::default(),
            tls: Tls::default(),
            metrics_listen: None,
            accept_damaged_log: false,
            connections: ConnectionLimits::default(),
            own_addresses: Vec::new(),
            node: NodeIdentity::default(),
            notify: Default::default(),
            watch_buffer: crate::store::feed::RING,
            max_watches: 10_000,
            console: None,
        }
    }
}

/// A coordinator's identity and liveness among the nodes sharing a store
/// (PostgreSQL): its id, the address others reach it at, and how long its
/// lease lasts unless renewed (judged on the database's clock).
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub id: String,
    /// `http(s)://host:port`.
    pub address: String,
    pub lease: Duration,
}

impl Default for NodeIdentity {
    fn default() -> Self {
        NodeIdentity {
            id: "arbiter".into(),
            address: "http://127.0.0.1:7089".into(),
            lease: Duration::from_secs(5),
        }
    }
}

/// The largest request a valid client needs: `Execute` with `max_branches`
/// branches of `max_payload_bytes` each, plus room for endpoints, resources
/// and framing.
pub fn derived_max_message(max_branches: usize, max_payload_bytes: usize) -> usize {
    // Answers carry each branch's result too (GetTransaction, Commit).
    let per_branch = max_payload_bytes.max(crate::engine::MAX_RESULT);
    max_branches
        .saturating_mul(per_branch.saturating_add(2048))
        .saturating_add(64 * 1024)
}

/// Bounds on client connections and the requests they have in flight
/// (README, "Security"): what stops idle sockets from using up descriptors
/// and half-sent messages from using up memory.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Client connections held at once; more are closed on accept. Lowered
    /// at start to what the open-file limit leaves room for.
    pub max_connections: usize,
    /// Client connections from one address held at once.
    pub max_connections_per_ip: usize,
    /// A new connection that has not sent its handshake (24 bytes) within
    /// this long is closed.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (live
    /// clients answer the server's HTTP/2 pings, sent at a third of it).
    pub idle_timeout: Duration,
    /// Concurrent requests (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// Longest time to receive one request message; slower ones fail with
    /// DEADLINE_EXCEEDED and their buffers are freed.
    pub request_read_timeout: Duration,
    /// Bytes of request messages being received, over all connections;
    /// beyond it requests fail with RESOURCE_EXHAUSTED.
    pub max_request_memory: usize,
    /// Participant channels kept open at once; the least recently used is
    /// closed to make room, and any unused for `idle_timeout`.
    pub max_participant_channels: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 256,
            request_read_timeout: Duration::from_secs(10),
            max_request_memory: 256 << 20,
            max_participant_channels: 1024,
        }
    }
}

impl Config {
    /// The engine's view of these settings.
    pub fn policy(&self) -> Policy {
        Policy {
            stuck_after_attempts: self.stuck_after_attempts.max(1),
            stuck_after_ms: self.stuck_after.as_millis() as u64,
        }
    }
}
