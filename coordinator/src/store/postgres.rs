//! The log on PostgreSQL (`arbiter serve --store postgres://...`): the same
//! records, keys and checksums as the sled log ([`KvLog`]), kept in one table
//! `arbiter_kv (k bytea primary key, v bytea)`. A batch of the group-commit
//! writer is one PostgreSQL transaction, durable when it commits (with
//! `synchronous_commit` on, PostgreSQL's default: the README says why it
//! must stay on).
//!
//! The schema is versioned (`arbiter_schema`): migrations run at start under
//! an advisory lock, and a schema newer than this binary is refused.
//!
//! The [`Kv`] calls are synchronous (the writer is a thread; reads happen
//! where sled's would). They run on a runtime of the store's own, on a thread
//! of its own, so they may be called from any thread, inside a tokio runtime
//! or not, and block only the caller.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::store::kv::{Kv, KvLog, Visitor};
use crate::store::open::{self, Checked};
use crate::store::record::{self, FORMAT, Op};
use crate::store::{OpenOptions, OpenReport, StoreError, keys};

/// The log on PostgreSQL.
pub type PgLog = KvLog<PgKv>;

/// The schema this binary writes; each step of [`MIGRATIONS`] moves one up.
pub const SCHEMA: i32 = 1;

/// Statements that take the schema from version `n` to `n + 1` (index `n`).
const MIGRATIONS: [&str; SCHEMA as usize] =
    ["CREATE TABLE arbiter_kv (k bytea PRIMARY KEY, v bytea NOT NULL)"];

/// The advisory lock key one coordinator holds on its database.
const COORDINATOR_LOCK: i64 = 0x0041_5242_4954_4552; // "ARBITER"

/// Keys read per round trip when visiting a range.
const PAGE: i64 = 512;

/// Connections kept to PostgreSQL: the writer, and readers.
const POOL: usize = 4;

/// The key-value table, reached through a small pool.
pub struct PgKv {
    pool: Pool,
    /// The session holding the one-coordinator lock (see [`PgKv::lock`]).
    _holder: Option<tokio_postgres::Client>,
    runtime: tokio::runtime::Handle,
    /// Ends the store's runtime thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A PostgreSQL failure: `Unreachable` when the server is gone for now (the
/// connection closed or refused, shutting down, starting up), so the writer
/// retries; `Io` for anything else, which stops the coordinator.
fn pg_error(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        let passing = e.is_closed()
            || e.as_db_error().is_none()
            || e.code().is_some_and(|code| {
                let code = code.code();
                code.starts_with("08") || code.starts_with("57P")
            });
        if passing {
            StoreError::Unreachable(format!("{op}: {e}"))
        } else {
            StoreError::Io {
                op,
                message: e.to_string(),
            }
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error("connecting to PostgreSQL")(e),
        other => StoreError::Unreachable(format!("connecting to PostgreSQL: {other}")),
    }
}

/// `postgres://user@host:port/db` with any password removed, for messages.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl PgKv {
    /// Connects to `url` (a `postgres://` URL or a libpq key=value string).
    fn connect(url: &str) -> Result<PgKv, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Refused(format!("--store {}: {e}", redacted(url))))?;
        if config.get_connect_timeout().is_none() {
            // A host that drops packets must not hold the writer for minutes.
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let (runtime, stop) = runtime_thread()?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Refused(format!("PostgreSQL pool: {e}")))?;
        Ok(PgKv {
            pool,
            _holder: None,
            runtime,
            _stop: stop,
        })
    }

    /// Takes the database for this coordinator alone, as sled's file lock
    /// does for a data directory: a session-level advisory lock held on a
    /// connection of its own for as long as the store is open. Another
    /// coordinator on the same database is refused at start.
    fn lock(&mut self, url: &str) -> Result<(), StoreError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Refused(format!("--store {}: {e}", redacted(url))))?;
        let client = self.run(async move {
            let locking = pg_error("taking the coordinator lock");
            let (client, connection) = config.connect(NoTls).await.map_err(&locking)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::error!(error = %e, "lost the PostgreSQL session holding the coordinator lock");
                }
            });
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&COORDINATOR_LOCK])
                .await
                .map_err(&locking)?;
            if !row.get::<_, bool>(0) {
                return Err(StoreError::Refused(
                    "another coordinator is using this database (its lock is held); \
                     one coordinator per database"
                        .into(),
                ));
            }
            Ok(client)
        })?;
        self._holder = Some(client);
        Ok(())
    }

    /// Runs `work` on the store's runtime and waits for it here.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        result.recv().map_err(|_| StoreError::Closed)?
    }

    /// Creates or migrates the schema; refuses one newer than this binary.
    fn migrate(&self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client
                .transaction()
                .await
                .map_err(pg_error("starting the schema migration"))?;
            let migrating = pg_error("migrating the schema");
            // One node migrates at a time; the others wait here.
            tx.execute("SELECT pg_advisory_xact_lock(7089)", &[])
                .await
                .map_err(&migrating)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS arbiter_schema (version integer NOT NULL)",
            )
            .await
            .map_err(&migrating)?;
            let version: i32 = match tx
                .query_opt("SELECT version FROM arbiter_schema", &[])
                .await
                .map_err(&migrating)?
            {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO arbiter_schema (version) VALUES (0)", &[])
                        .await
                        .map_err(&migrating)?;
                    0
                }
            };
            if version > SCHEMA {
                return Err(StoreError::Refused(format!(
                    "the database's Arbiter schema is version {version}, newer than this \
                     binary's ({SCHEMA}); run the newer release"
                )));
            }
            for (n, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
                tx.batch_execute(step).await.map_err(&migrating)?;
                tracing::info!(from = n, to = n + 1, "migrated the PostgreSQL schema");
            }
            tx.execute("UPDATE arbiter_schema SET version = $1", &[&SCHEMA])
                .await
                .map_err(&migrating)?;
            tx.commit().await.map_err(&migrating)
        })
    }
}

/// A current-thread runtime on a thread of its own, running until the
/// returned sender is dropped.
fn runtime_thread() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError>
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreError::io("starting the PostgreSQL runtime"))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("arbiter-postgres".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(StoreError::io("starting the PostgreSQL thread"))?;
    Ok((handle, stop))
}

impl Kv for PgKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.pool.clone();
        let key = key.to_vec();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached("SELECT v FROM arbiter_kv WHERE k = $1")
                .await
                .map_err(pg_error("reading the log"))?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(pg_error("reading the log"))?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn visit(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        // Page by page: (low, high) narrows past each page's last key.
        let (mut low, mut high) = (start.to_vec(), end.to_vec());
        let mut low_inclusive = true;
        loop {
            let pool = self.pool.clone();
            let (lo, hi, inclusive) = (low.clone(), high.clone(), low_inclusive);
            let page: Vec<(Vec<u8>, Vec<u8>)> = self.run(async move {
                let client = pool.get().await.map_err(pool_error)?;
                let sql = match (reverse, inclusive) {
                    (false, true) => {
                        "SELECT k, v FROM arbiter_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3"
                    }
                    (false, false) => {
                        "SELECT k, v FROM arbiter_kv WHERE k > $1 AND k < $2 ORDER BY k LIMIT $3"
                    }
                    (true, _) => {
                        "SELECT k, v FROM arbiter_kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3"
                    }
                };
                let statement = client
                    .prepare_cached(sql)
                    .await
                    .map_err(pg_error("reading the log"))?;
                let rows = client
                    .query(&statement, &[&lo, &hi, &PAGE])
                    .await
                    .map_err(pg_error("reading the log"))?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            })?;
            let full = page.len() as i64 == PAGE;
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                return Ok(());
            };
            for (k, v) in &page {
                if f(k, v).is_break() {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            if reverse {
                high = last;
            } else {
                low = last;
                low_inclusive = false;
            }
        }
    }

    fn apply<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), StoreError> {
        // The last op on a key wins: one statement may not touch a row twice.
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => last.insert(k.clone(), Some(v.clone())),
                Op::Delete(k) => last.insert(k.clone(), None),
            };
        }
        if last.is_empty() {
            return Ok(());
        }
        let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in last {
            match v {
                Some(v) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None => deletes.push(k),
            }
        }
        let pool = self.pool.clone();
        self.run(async move {
            let writing = pg_error("writing the log");
            let client = pool.get().await.map_err(pool_error)?;
            // One statement, so one round trip, and atomic on its own: it
            // commits (durably, with synchronous_commit on) before it returns.
            let statement = client
                .prepare_cached(
                    "WITH gone AS (DELETE FROM arbiter_kv WHERE k = ANY($3::bytea[])) \
                     INSERT INTO arbiter_kv (k, v) \
                     SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                )
                .await
                .map_err(&writing)?;
            client
                .execute(&statement, &[&put_keys, &put_values, &deletes])
                .await
                .map_err(&writing)?;
            Ok(())
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every apply committed durably already.
        Ok(())
    }
}

impl KvLog<PgKv> {
    /// Opens (creating or migrating the schema as needed) the log in the
    /// database at `url`, and checks it as a sled log is checked.
    pub fn open_postgres(
        url: &str,
        options: OpenOptions,
    ) -> Result<(PgLog, OpenReport), StoreError> {
        let where_ = redacted(url);
        let mut kv = PgKv::connect(url)?;
        kv.migrate().map_err(|e| match e {
            StoreError::Io { op, message } => StoreError::Refused(format!(
                "cannot use PostgreSQL at {where_} ({op}): {message}"
            )),
            StoreError::Unreachable(message) => {
                StoreError::Refused(format!("cannot use PostgreSQL at {where_}: {message}"))
            }
            other => other,
        })?;
        kv.lock(url)
            .map_err(|e| StoreError::Refused(format!("{where_}: {e}")))?;
        let Some(format) = open::format_of(&kv)? else {
            kv.apply(&[
                record::meta_op(keys::META_FORMAT, FORMAT),
                record::meta_op(keys::META_BATCH, 0),
            ])?;
            tracing::info!(store = %where_, "created the transaction log in PostgreSQL");
            return Ok((KvLog::over(kv, 0, None), OpenReport::default()));
        };
        open::check_format(format).map_err(|e| StoreError::Refused(format!("{where_}: {e}")))?;
        let checked: Checked = open::check_all(&kv);
        let mut report = OpenReport {
            records: checked.records,
            transactions: checked.transactions,
            ..OpenReport::default()
        };
        let mut whole = Vec::new();
        let batch = checked.batch.unwrap_or_else(|| {
            whole.push("the log's batch counter is missing".to_string());
            0
        });
        report.accepted_damage = open::judge(
            &kv,
            &checked,
            whole,
            options,
            &format!("the transaction log in PostgreSQL at {where_}"),
            "Restore the database from a backup.",
        )?;
        Ok((KvLog::over(kv, batch, None), report))
    }
}
