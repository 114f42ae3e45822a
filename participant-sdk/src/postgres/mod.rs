//! PostgreSQL participants: the exactly-once barrier in a table of the
//! participant's own database ([`PgBarrier`], [`PgHandler`]), and the
//! two-phase adapter built on `PREPARE TRANSACTION` ([`PgTwoPhase`]).
//!
//! The barrier table, created on connect if missing:
//!
//! ```sql
//! CREATE TABLE arbiter_barrier (
//!     txn_id text, branch_id text, phase text, outcome text,
//!     created_at timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (txn_id, branch_id, phase));
//! ```
//!
//! Its rows are inserted in the same database transaction as the handler's
//! work, so the business change and its record commit (or are prepared, or
//! roll back) together. The primary key makes concurrent repeats of a call
//! wait for each other instead of both running.

mod two_phase;

pub use two_phase::{DEFAULT_RESOLVE_EVERY, InDoubtReport, PgPrepareHandler, PgTwoPhase};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, NoTls, Transaction};

use crate::barrier::{
    COMMIT, DEFAULT_RETENTION, PHASE1, Phase1, ROLLBACK, commit_after_rollback, commit_without_yes,
    rollback_after_commit,
};
use crate::handler::{
    CallContext, ParticipantError, SagaHandler, StepOutcome, TccHandler, TwoPhaseHandler, Vote,
};

/// The barrier of a participant with a PostgreSQL database, and its
/// connection pool. Clones share both.
///
/// ```no_run
/// # use arbiter_sdk::*;
/// # struct Reservations;
/// # impl PgHandler for Reservations {
/// #   async fn prepare(&self, _: &CallContext, _: &[u8], _: &tokio_postgres::Transaction<'_>) -> Result<Vote, ParticipantError> { Ok(Vote::Yes) }
/// #   async fn commit(&self, _: &CallContext, _: &[u8], _: &tokio_postgres::Transaction<'_>) -> Result<(), ParticipantError> { Ok(()) }
/// #   async fn rollback(&self, _: &CallContext, _: &[u8], _: &tokio_postgres::Transaction<'_>) -> Result<(), ParticipantError> { Ok(()) }
/// # }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let db = PgBarrier::connect("host=127.0.0.1 user=app dbname=accounts", 16).await?;
/// let running = ParticipantServer::new()
///     .tcc("account", db.guard(Reservations)) // the one line
///     .serve("127.0.0.1:0".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgBarrier {
    pool: Pool,
    settings: Arc<Mutex<Settings>>,
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    retention: Duration,
    lock_timeout: Duration,
}

/// How long a barrier transaction waits for a row lock (say, one an
/// undecided prepared transaction holds) before giving up with
/// `UNAVAILABLE`, so the coordinator retries instead of piling up waiters.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// A participant whose work is done in its PostgreSQL database. Each call
/// gets an open transaction; the barrier commits it together with its
/// record. The same three calls serve TCC (try / confirm / cancel) and a
/// 2PC whose prepare holds its work as committed rows (a reservation); for
/// 2PC with PostgreSQL's own prepared transactions, see [`PgTwoPhase`].
pub trait PgHandler: Send + Sync + 'static {
    /// Prepare / try: do (or reserve) the work in `txn`, then vote. The work
    /// is kept only with a YES vote.
    fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;
    /// Commit / confirm the work of a YES vote.
    fn commit(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
    /// Roll back / cancel the work of a YES vote.
    fn rollback(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// A [`PgHandler`] behind its barrier.
pub struct PgGuarded<H> {
    barrier: PgBarrier,
    handler: H,
}

const CREATE_TABLE: &str = "
    SELECT pg_advisory_xact_lock(7240815301);
    CREATE TABLE IF NOT EXISTS arbiter_barrier (
        txn_id text NOT NULL,
        branch_id text NOT NULL,
        phase text NOT NULL,
        outcome text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (txn_id, branch_id, phase));
    CREATE INDEX IF NOT EXISTS arbiter_barrier_created ON arbiter_barrier (created_at);";

const INSERT: &str = "INSERT INTO arbiter_barrier (txn_id, branch_id, phase, outcome) \
                      VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const SELECT: &str =
    "SELECT outcome FROM arbiter_barrier WHERE txn_id = $1 AND branch_id = $2 AND phase = $3";

impl From<tokio_postgres::Error> for ParticipantError {
    /// Conflicts, lock timeouts and lost connections are worth a retry;
    /// anything else is an internal error (also retried by the coordinator,
    /// and shown with the branch).
    fn from(e: tokio_postgres::Error) -> ParticipantError {
        let retry = e.is_closed()
            || e.code().is_some_and(|code| {
                [
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::LOCK_NOT_AVAILABLE,
                    SqlState::OBJECT_IN_USE,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
                    || code.code().starts_with("08")
            });
        let text = match e.as_db_error() {
            Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
            None => format!("postgres: {e}"),
        };
        if retry {
            ParticipantError::Unavailable(text)
        } else {
            ParticipantError::Internal(text)
        }
    }
}

impl PgBarrier {
    /// Connects with a libpq-style connection string (`host=... dbname=...`
    /// or `postgresql://...`), keeps up to `max_connections`, and creates the
    /// barrier table if missing.
    pub async fn connect(url: &str, max_connections: usize) -> Result<PgBarrier, ParticipantError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            ParticipantError::Invalid(format!("bad PostgreSQL connection string: {e}"))
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| {
                ParticipantError::Internal(format!("building the connection pool: {e}"))
            })?;
        PgBarrier::with_pool(pool).await
    }

    /// Uses an existing pool; creates the barrier table if missing.
    pub async fn with_pool(pool: Pool) -> Result<PgBarrier, ParticipantError> {
        let barrier = PgBarrier {
            pool,
            settings: Arc::new(Mutex::new(Settings {
                retention: DEFAULT_RETENTION,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
            })),
        };
        let mut conn = barrier.conn().await?;
        // Checked first: `CREATE INDEX IF NOT EXISTS` would wait for the
        // table lock that an in-doubt prepared transaction holds.
        let exists: bool = conn
            .query_one("SELECT to_regclass('arbiter_barrier') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        if !exists {
            let txn = conn.transaction().await?;
            txn.batch_execute(CREATE_TABLE).await?;
            txn.commit().await?;
        }
        Ok(barrier)
    }

    /// The connection pool, for the service's own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, ParticipantError> {
        self.pool
            .get()
            .await
            .map_err(|e| ParticipantError::Unavailable(format!("no PostgreSQL connection: {e}")))
    }

    /// Puts `handler` behind this barrier.
    pub fn guard<H: PgHandler>(&self, handler: H) -> PgGuarded<H> {
        PgGuarded {
            barrier: self.clone(),
            handler,
        }
    }

    /// How long barrier rows are kept (see [`crate::barrier`] for the rule).
    pub fn set_retention(&self, retention: Duration) {
        self.settings().retention = retention;
    }

    /// How long a call waits for a row lock (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn set_lock_timeout(&self, lock_timeout: Duration) {
        self.settings().lock_timeout = lock_timeout;
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a barrier transaction on `conn`, with the lock timeout set.
    async fn begin<'c>(
        &self,
        conn: &'c mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'c>, ParticipantError> {
        let ms = self.settings().lock_timeout.as_millis().max(1);
        let txn = conn.transaction().await?;
        txn.batch_execute(&format!("SET LOCAL lock_timeout = {ms}"))
            .await?;
        Ok(txn)
    }

    /// Deletes the rows older than the retention; returns how many.
    pub async fn collect(&self) -> Result<u64, ParticipantError> {
        let secs = self.settings().retention.as_secs_f64();
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "DELETE FROM arbiter_barrier WHERE created_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await?)
    }

    /// Runs [`PgBarrier::collect`] every `every`, in the background, while
    /// the runtime lives.
    pub fn collect_every(&self, every: Duration) {
        let barrier = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = barrier.collect().await {
                    tracing::warn!(error = %err, "collecting barrier rows failed");
                }
            }
        });
    }
}

/// Inserts a barrier row unless one exists; whether it was inserted.
async fn insert(
    db: &impl GenericClient,
    ctx: &CallContext,
    phase: &str,
    outcome: &str,
) -> Result<bool, ParticipantError> {
    let n = db
        .execute(INSERT, &[&ctx.txn_id, &ctx.branch_id, &phase, &outcome])
        .await?;
    Ok(n == 1)
}

async fn has(
    db: &impl GenericClient,
    ctx: &CallContext,
    phase: &str,
) -> Result<bool, ParticipantError> {
    Ok(db
        .query_opt(SELECT, &[&ctx.txn_id, &ctx.branch_id, &phase])
        .await?
        .is_some())
}

/// The phase-1 record of a branch, if one is committed.
async fn phase1(
    db: &impl GenericClient,
    ctx: &CallContext,
) -> Result<Option<Phase1>, ParticipantError> {
    let Some(row) = db
        .query_opt(SELECT, &[&ctx.txn_id, &ctx.branch_id, &PHASE1])
        .await?
    else {
        return Ok(None);
    };
    let text: String = row.try_get(0)?;
    Phase1::decode(&text)
        .map(Some)
        .ok_or_else(|| ParticipantError::Internal(format!("unreadable barrier row {text:?}")))
}

impl<H: PgHandler> PgGuarded<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        let mut conn = self.barrier.conn().await?;
        let txn = self.barrier.begin(&mut conn).await?;
        // Waits for a concurrent repeat to finish, then finds its row.
        if !insert(&*txn, ctx, PHASE1, &Phase1::Voted(Vote::Yes).encode()).await? {
            let found = phase1(&*txn, ctx).await?;
            return found.map(|f| f.repeated_vote()).ok_or_else(|| {
                ParticipantError::Unavailable("barrier row vanished; retry".into())
            });
        }
        let vote = self.handler.prepare(ctx, payload, &txn).await?;
        if vote.is_yes() {
            txn.commit().await?;
        } else {
            // A NO or READ_ONLY vote keeps none of the work, only the vote.
            txn.rollback().await?;
            insert(&**conn, ctx, PHASE1, &Phase1::Voted(vote.clone()).encode()).await?;
        }
        Ok(vote)
    }

    async fn commit(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        let mut conn = self.barrier.conn().await?;
        let txn = self.barrier.begin(&mut conn).await?;
        if !insert(&*txn, ctx, COMMIT, "").await? {
            return Ok(());
        }
        if has(&*txn, ctx, ROLLBACK).await? {
            return Err(commit_after_rollback());
        }
        match phase1(&*txn, ctx).await? {
            Some(found) if found.holds_work() => {}
            other => return Err(commit_without_yes(other.as_ref())),
        }
        self.handler.commit(ctx, payload, &txn).await?;
        Ok(txn.commit().await?)
    }

    async fn rollback(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        let mut conn = self.barrier.conn().await?;
        let txn = self.barrier.begin(&mut conn).await?;
        // Empty rollback: the marker makes a late prepare/try a NO.
        if insert(&*txn, ctx, PHASE1, &Phase1::RolledBack.encode()).await? {
            insert(&*txn, ctx, ROLLBACK, "").await?;
            return Ok(txn.commit().await?);
        }
        if !insert(&*txn, ctx, ROLLBACK, "").await? {
            return Ok(());
        }
        if has(&*txn, ctx, COMMIT).await? {
            return Err(rollback_after_commit());
        }
        if phase1(&*txn, ctx).await?.is_some_and(|f| f.holds_work()) {
            self.handler.rollback(ctx, payload, &txn).await?;
        }
        Ok(txn.commit().await?)
    }
}

impl<H: PgHandler> TccHandler for PgGuarded<H> {
    async fn try_(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.prepare(ctx, payload).await
    }
    async fn confirm(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.commit(ctx, payload).await
    }
    async fn cancel(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.rollback(ctx, payload).await
    }
}

/// A saga step: the action is `prepare` (a YES is the step's success), the
/// compensation `rollback`; `commit` is never called.
impl<H: PgHandler> SagaHandler for PgGuarded<H> {
    async fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<StepOutcome, ParticipantError> {
        self.prepare(ctx, payload)
            .await
            .map(crate::barrier::vote_as_step)
    }
    async fn compensate(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.rollback(ctx, payload).await
    }
}

impl<H: PgHandler> TwoPhaseHandler for PgGuarded<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        PgGuarded::prepare(self, ctx, payload).await
    }
    async fn commit(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        PgGuarded::commit(self, ctx, payload).await
    }
    async fn rollback(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        PgGuarded::rollback(self, ctx, payload).await
    }
}
