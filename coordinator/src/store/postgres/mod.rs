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
//! Every write goes through one session that holds the one-coordinator lock
//! ([`session::WriterSession`]); reads use a small pool. The coordinators
//! sharing the database, with their leases, are in [`nodes`].
//!
//! The [`Kv`] calls are synchronous (the writer is a thread; reads happen
//! where sled's would). They run on a runtime of the store's own, on a thread
//! of its own, so they may be called from any thread, inside a tokio runtime
//! or not, and block only the caller.

mod nodes;
mod session;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::NodeIdentity;
use crate::store::kv::{Kv, KvLog, Visitor};
use crate::store::open::{self, Checked};
use crate::store::record::{self, FORMAT, Op};
use crate::store::{OpenOptions, OpenReport, StoreError, keys};
use session::{WriterSession, pg_error, pool_error};

/// The log on PostgreSQL.
pub type PgLog = KvLog<PgKv>;

pub use session::{SCHEMA, redacted};

/// Keys read per round trip when visiting a range.
const PAGE: i64 = 512;

/// Connections kept to PostgreSQL for reads.
const POOL: usize = 4;

/// The key-value table: reads through a small pool, writes through the
/// session that holds the coordinator lock.
pub struct PgKv {
    pool: Pool,
    /// This node and its epoch, once joined, and the task renewing its lease.
    node: Option<(NodeIdentity, i64, tokio::task::JoinHandle<()>)>,
    writer: Arc<tokio::sync::Mutex<WriterSession>>,
    runtime: tokio::runtime::Handle,
    /// Ends the store's runtime thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PgKv {
    /// Connects to the database `config` names and takes the coordinator
    /// lock (refused if another coordinator holds it).
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
        let renewal =
            self.runtime
                .spawn(nodes::renew_forever(self.pool.clone(), node.clone(), epoch));
        self.node = Some((node, epoch, renewal));
        Ok(())
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
        let writer = self.writer.clone();
        self.run(async move {
            writer
                .lock()
                .await
                .write(&put_keys, &put_values, &deletes)
                .await
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
        // The lock first: a newer binary must not migrate the schema under
        // a running coordinator.
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
        let checked: Checked = open::check_all(&kv)?;
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
