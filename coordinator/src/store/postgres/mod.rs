//! The log on PostgreSQL (`arbiter serve --store postgres://...`): the same
//! records, keys and checksums as the sled log ([`KvLog`]), kept in one table
//! `arbiter_kv (k bytea primary key, v bytea)`. A batch of the group-commit
//! writer is one statement, so one PostgreSQL transaction, durable when it
//! returns (with `synchronous_commit` on, PostgreSQL's default: the README
//! says why it must stay on).
//!
//! The schema is versioned (`arbiter_schema`): migrations run at start under
//! an advisory lock, and a schema newer than this binary is refused.
//!
//! Several coordinators (nodes) may share the database. Each unfinished
//! transaction has an owner node, and every write of it is fenced on that
//! ownership ([`owners`]); the nodes, with their leases, are in [`nodes`].
//! Every write goes through one session ([`session::WriterSession`]); reads
//! use a small pool.
//!
//! The [`Kv`] calls are synchronous (the writer is a thread; reads happen
//! where sled's would). They run on a runtime of the store's own, on a thread
//! of its own, so they may be called from any thread, inside a tokio runtime
//! or not, and block only the caller.

mod nodes;
mod owners;
mod session;

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::NodeIdentity;
use crate::store::kv::{Kv, KvLog, TxnOps, Visitor};
use crate::store::open::{self, Checked};
use crate::store::record::{self, FORMAT, Op};
use crate::store::{OpenOptions, OpenReport, Owner, StoreError, keys};
use session::{TxnWrite, WriterSession, pg_error, pool_error};

/// The log on PostgreSQL.
pub type PgLog = KvLog<PgKv>;

pub use session::{SCHEMA, redacted};

/// A pooled connection inside a read-only repeatable-read transaction.
type Snapshot = Arc<tokio::sync::Mutex<deadpool_postgres::Object>>;

/// Runs `read` on the snapshot connection if there is one, else on a
/// connection from the pool.
async fn reading<T, F>(pool: Pool, snapshot: Option<Snapshot>, read: F) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&tokio_postgres::Client) -> Result<T, StoreError>,
{
    match snapshot {
        Some(snapshot) => {
            let client = snapshot.lock().await;
            read(&client).await
        }
        None => {
            let client = pool.get().await.map_err(pool_error)?;
            read(&client).await
        }
    }
}

/// Keys read per round trip when visiting a range.
const PAGE: i64 = 512;

/// Connections kept to PostgreSQL for reads.
const POOL: usize = 4;

/// The key-value table: reads through a small pool, writes through one
/// session, fenced by this node's ownership.
pub struct PgKv {
    pool: Pool,
    /// This node and its epoch, once joined, and the task renewing its lease.
    node: Option<(NodeIdentity, i64, tokio::task::JoinHandle<()>)>,
    /// The connection settings (the lease renewal has a session of its own).
    config: tokio_postgres::Config,
    /// Times the renewal found this node's lease had run out.
    lapses: Arc<std::sync::atomic::AtomicU64>,
    writer: Arc<tokio::sync::Mutex<WriterSession>>,
    /// While set, reads go to this connection, inside one repeatable-read
    /// transaction: the check at start sees one consistent state of a log
    /// other nodes are writing.
    snapshot: std::sync::Mutex<Option<Snapshot>>,
    runtime: tokio::runtime::Handle,
    /// Ends the store's runtime thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PgKv {
    /// Connects to the database `config` names, checking its durability
    /// settings.
    fn connect(config: tokio_postgres::Config) -> Result<PgKv, StoreError> {
        let (runtime, stop) = session::runtime_thread()?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(std::time::Duration::from_secs(10));
        let pool = Pool::builder(manager)
            .max_size(POOL)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| StoreError::Refused(format!("PostgreSQL pool: {e}")))?;
        let kv = PgKv {
            pool,
            node: None,
            config: config.clone(),
            lapses: Arc::default(),
            snapshot: std::sync::Mutex::new(None),
            writer: Arc::new(tokio::sync::Mutex::new(WriterSession::new(config))),
            runtime,
            _stop: stop,
        };
        let writer = kv.writer.clone();
        kv.run(async move { writer.lock().await.open().await })?;
        Ok(kv)
    }

    /// Runs `work` on the store's runtime and waits for it here.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        session::run_on(&self.runtime, work)
    }

    /// Joins the nodes sharing the database as `node`, and keeps its lease.
    fn join(&mut self, node: NodeIdentity) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let joining = node.clone();
        let epoch = self.run(async move { nodes::join(&pool, &joining).await })?;
        tracing::info!(node = %node.id, address = %node.address, epoch, "joined as a node of the store");
        let renewal = self.runtime.spawn(nodes::renew_forever(
            self.config.clone(),
            node.clone(),
            epoch,
            self.lapses.clone(),
        ));
        self.node = Some((node, epoch, renewal));
        Ok(())
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `check` with every read in one consistent snapshot of the
    /// database (other nodes go on writing meanwhile).
    fn consistently<T>(
        &self,
        check: impl FnOnce(&Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pool = self.pool.clone();
        let client = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_error("starting a consistent read"))?;
            Ok(client)
        })?;
        let snapshot: Snapshot = Arc::new(tokio::sync::Mutex::new(client));
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        let result = check(self);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let ended = self.run(async move {
            let client = snapshot.lock().await;
            client
                .batch_execute("COMMIT")
                .await
                .map_err(pg_error("ending a consistent read"))
        });
        let value = result?;
        ended?;
        Ok(value)
    }

    /// This node's id and epoch (none yet while opening).
    fn me(&self) -> (String, i64) {
        self.node.as_ref().map_or_else(
            || (String::new(), 0),
            |(n, epoch, _)| (n.id.clone(), *epoch),
        )
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            session::migrate(&mut client).await
        })
    }
}

impl Kv for PgKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (pool, snapshot) = (self.pool.clone(), self.snapshot());
        let key = key.to_vec();
        self.run(reading(pool, snapshot, async move |client| {
            let row = client
                .query_opt("SELECT v FROM arbiter_kv WHERE k = $1", &[&key])
                .await
                .map_err(pg_error("reading the log"))?;
            Ok(row.map(|row| row.get(0)))
        }))
    }

    fn read_together(
        &self,
        keys: &[Vec<u8>],
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<crate::store::kv::Pair>, StoreError> {
        // One statement: one snapshot.
        let (pool, snapshot) = (self.pool.clone(), self.snapshot());
        let (keys, start, end) = (keys.to_vec(), start.to_vec(), end.to_vec());
        self.run(reading(pool, snapshot, async move |client| {
            let rows = client
                .query(
                    "SELECT k, v FROM arbiter_kv \
                     WHERE k = ANY($1::bytea[]) OR (k >= $2 AND k < $3) ORDER BY k",
                    &[&keys, &start, &end],
                )
                .await
                .map_err(pg_error("reading the log"))?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        }))
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
            let (pool, snapshot) = (self.pool.clone(), self.snapshot());
            let (lo, hi, inclusive) = (low.clone(), high.clone(), low_inclusive);
            let page: Vec<(Vec<u8>, Vec<u8>)> = self.run(reading(pool, snapshot, async move |client| {
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
                let rows = client
                    .query(sql, &[&lo, &hi, &PAGE])
                    .await
                    .map_err(pg_error("reading the log"))?;
                Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            }))?;
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
        let shared: Vec<Op> = ops.into_iter().cloned().collect();
        if shared.is_empty() {
            return Ok(());
        }
        self.apply_owned(&[], &shared).map(|_| ())
    }

    fn apply_owned(
        &self,
        txns: &[TxnOps<'_>],
        shared: &[Op],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let txns: Vec<TxnWrite> = txns
            .iter()
            .map(|t| TxnWrite {
                id: t.txn_id.to_string(),
                header_key: keys::header_key(t.txn_id),
                creates: t.creates,
                finishes: t.finishes,
                claim: t.claim,
                ops: t.ops.iter().map(|op| (*op).clone()).collect(),
            })
            .collect();
        let shared = shared.to_vec();
        let (node, epoch) = self.me();
        let writer = self.writer.clone();
        self.run(async move { writer.lock().await.write(&node, epoch, txns, shared).await })
    }

    fn shared(&self) -> bool {
        true
    }

    fn lease_lapses(&self) -> u64 {
        self.lapses.load(std::sync::atomic::Ordering::Acquire)
    }

    fn owner(&self, txn_id: &str) -> Result<Option<Owner>, StoreError> {
        let pool = self.pool.clone();
        let (node, epoch) = self.me();
        let txn_id = txn_id.to_string();
        self.run(async move { owners::owner(&pool, &node, epoch, &txn_id).await })
    }

    fn owners(&self, txn_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let pool = self.pool.clone();
        let txn_ids = txn_ids.to_vec();
        self.run(async move { owners::owners(&pool, &txn_ids).await })
    }

    fn owned_here(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let pool = self.pool.clone();
        let (node, epoch) = self.me();
        self.run(async move { owners::owned_by(&pool, &node, epoch).await })
    }

    fn release(&self, txn_ids: &[String]) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let txn_ids = txn_ids.to_vec();
        self.run(async move { owners::release(&pool, &txn_ids).await })
    }

    fn claim(
        &self,
        limit: usize,
        txn_id: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let pool = self.pool.clone();
        let (node, epoch) = self.me();
        let txn_id = txn_id.map(str::to_string);
        let lease = self
            .node
            .as_ref()
            .map_or(std::time::Duration::ZERO, |(n, _, _)| n.lease);
        self.run(async move {
            owners::claim(&pool, (&node, epoch, lease), limit, txn_id.as_deref()).await
        })
    }

    fn nodes(&self) -> Result<Option<Vec<crate::store::NodeInfo>>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move { nodes::list(&pool).await }).map(Some)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every apply committed durably already.
        Ok(())
    }
}

/// A clean stop gives the lease up at once, so others need not wait it out.
impl Drop for PgKv {
    fn drop(&mut self) {
        let Some((node, epoch, renewal)) = self.node.take() else {
            return;
        };
        renewal.abort();
        let pool = self.pool.clone();
        let left = self.run(async move {
            tokio::time::timeout(nodes::LEAVE_PATIENCE, nodes::leave(&pool, &node, epoch))
                .await
                .unwrap_or_else(|_| Err(StoreError::Unreachable("timed out".into())))
        });
        if let Err(e) = left {
            tracing::warn!(error = %e, "could not give up this node's lease; it runs out on its own");
        }
    }
}

impl KvLog<PgKv> {
    /// Opens (creating or migrating the schema as needed) the log in the
    /// database at `url`, and checks it as a sled log is checked.
    pub fn open_postgres(
        url: &str,
        options: OpenOptions,
        node: NodeIdentity,
    ) -> Result<(PgLog, OpenReport), StoreError> {
        let config = session::config(url)?;
        let where_ = session::describe(&config);
        let refused = |e: StoreError| match e {
            StoreError::Io { op, message } => StoreError::Refused(format!(
                "cannot use PostgreSQL at {where_} ({op}): {message}"
            )),
            StoreError::Unreachable(message) | StoreError::Refused(message) => {
                StoreError::Refused(format!("cannot use PostgreSQL at {where_}: {message}"))
            }
            other => other,
        };
        let mut kv = PgKv::connect(config.clone()).map_err(refused)?;
        kv.migrate().map_err(refused)?;
        kv.join(node).map_err(refused)?;
        let Some(format) = open::format_of(&kv)? else {
            kv.apply(&[
                record::meta_op(keys::META_FORMAT, FORMAT),
                record::meta_op(keys::META_BATCH, 0),
            ])?;
            tracing::info!(store = %where_, "created the transaction log in PostgreSQL");
            return Ok((KvLog::over(kv, 0, None), OpenReport::default()));
        };
        open::check_format(format).map_err(|e| StoreError::Refused(format!("{where_}: {e}")))?;
        // Other nodes may be writing: the check reads one snapshot.
        let what = format!("the transaction log in PostgreSQL at {where_}");
        let (report, batch) = kv.consistently(|kv| {
            let checked: Checked = open::check_all(kv)?;
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
                kv,
                &checked,
                whole,
                options,
                &what,
                "Restore the database from a backup.",
            )?;
            Ok((report, batch))
        })?;
        open::upgrade_format(&kv, format)?;
        Ok((KvLog::over(kv, batch, None), report))
    }
}
