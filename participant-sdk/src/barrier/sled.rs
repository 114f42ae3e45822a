//! The barrier for participants that keep their state in sled: the
//! handler's writes and the barrier record are applied in one sled
//! transaction, flushed and fdatasync'ed before the answer goes out.
//!
//! Calls are serialised per barrier (one local transaction at a time), which
//! keeps a handler's read-check-write race free without asking the handler
//! author to think about it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    COMMIT, DEFAULT_RETENTION, PHASE1, Phase1, ROLLBACK, commit_after_rollback, commit_without_yes,
    rollback_after_commit,
};
use crate::handler::{
    CallContext, ParticipantError, SagaHandler, StepOutcome, TccHandler, TwoPhaseHandler, Vote,
};

/// A participant's embedded state plus its barrier records, in one sled
/// database. Clones share the database.
///
/// # Example
///
/// A stock service taking part in TCC transactions: try reserves units,
/// confirm keeps them taken, cancel puts them back. The handler only says
/// what each step does; the barrier makes a repeated call a no-op, an empty
/// cancel a recorded success, and a try after its cancel a NO.
///
/// ```
/// use arbiter_sdk::*;
///
/// struct Stock;
///
/// fn units(payload: &[u8]) -> Result<u64, ParticipantError> {
///     std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok())
///         .ok_or_else(|| ParticipantError::Invalid("payload must be a count".into()))
/// }
/// fn on_hand(txn: &SledTxn<'_>) -> Result<u64, ParticipantError> {
///     Ok(txn.get("widgets")?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes))
/// }
///
/// impl SledHandler for Stock {
///     async fn prepare(&self, _: &CallContext, payload: &[u8], txn: &mut SledTxn<'_>)
///         -> Result<Vote, ParticipantError> {
///         let (want, have) = (units(payload)?, on_hand(txn)?);
///         if have < want {
///             return Ok(Vote::No(format!("only {have} widgets left")));
///         }
///         txn.insert("widgets", (have - want).to_be_bytes());
///         Ok(Vote::Yes)
///     }
///     async fn commit(&self, _: &CallContext, _: &[u8], _: &mut SledTxn<'_>)
///         -> Result<(), ParticipantError> {
///         Ok(()) // the reserved units stay taken
///     }
///     async fn rollback(&self, _: &CallContext, payload: &[u8], txn: &mut SledTxn<'_>)
///         -> Result<(), ParticipantError> {
///         let back = on_hand(txn)? + units(payload)?;
///         txn.insert("widgets", back.to_be_bytes());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let coordinator = format!("http://{}", listener.local_addr()?);
/// # tokio::spawn(arbiter::run(arbiter::Config::default(), arbiter::server::Storage::Memory,
/// #                           listener, std::future::pending()));
/// let dir = tempfile::tempdir()?;
/// let barrier = SledBarrier::open(dir.path().join("stock"))?;
/// barrier.state().insert("widgets", &10u64.to_be_bytes())?;
/// let widgets = || barrier.state().get("widgets").ok().flatten()
///     .and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes);
///
/// let service = ParticipantServer::new()
///     .tcc("stock", barrier.guard(Stock)) // the one line that adds the barrier
///     .serve("127.0.0.1:0".parse()?)
///     .await?;
/// let client = Client::connect(coordinator).await?;
/// let order = client
///     .execute(Execute::tcc().branch(Branch::new(service.endpoint(), "stock").payload("3")))
///     .await?;
/// assert!(order.is_committed());
/// assert_eq!(widgets(), Some(7));
///
/// // What the coordinator may do after a lost message: cancel a branch
/// // whose try never arrived, twice, then deliver the late try.
/// let stock = barrier.guard(Stock);
/// let ctx = CallContext { txn_id: "t-lost".into(), branch_id: "1".into(),
///                         resource: "stock".into(), ..Default::default() };
/// stock.cancel(&ctx, b"3").await?; // empty cancel: recorded, handler not run
/// stock.cancel(&ctx, b"3").await?; // repeat: no-op
/// assert!(matches!(stock.try_(&ctx, b"3").await?, Vote::No(_))); // hanging try: refused
/// assert_eq!(widgets(), Some(7));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SledBarrier {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    state: sled::Tree,
    records: sled::Tree,
    db_file: File,
    dir: PathBuf,
    retention: std::sync::Mutex<Duration>,
    /// One local transaction at a time.
    lock: tokio::sync::Mutex<()>,
}

/// A sled handler's view of the state during one call: reads see its own
/// writes; the writes are applied with the barrier record, or not at all.
pub struct SledTxn<'a> {
    state: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl SledTxn<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, ParticipantError> {
        let key = key.as_ref();
        if let Some(write) = self.writes.get(key) {
            return Ok(write.clone());
        }
        self.state
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(internal("reading the state"))
    }

    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.writes
            .insert(key.as_ref().to_vec(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.writes.insert(key.as_ref().to_vec(), None);
    }
}

/// A participant whose state lives in a [`SledBarrier`]. The same three
/// calls serve 2PC (prepare / commit / rollback) and TCC (try / confirm /
/// cancel). The barrier guarantees each runs at most once per branch, that
/// commit and rollback only run after a YES vote, and never after each other.
pub trait SledHandler: Send + Sync + 'static {
    /// Prepare / try: do (or reserve) the work in `txn`, then vote. The
    /// writes are kept only with a YES vote.
    fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;
    /// Commit / confirm the work of a YES vote.
    fn commit(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
    /// Roll back / cancel the work of a YES vote.
    fn rollback(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// A [`SledHandler`] behind its barrier: serve it with
/// [`ParticipantServer::two_phase`](crate::ParticipantServer::two_phase) or
/// [`ParticipantServer::tcc`](crate::ParticipantServer::tcc).
pub struct Guarded<H> {
    barrier: SledBarrier,
    handler: H,
}

/// What a local transaction writes besides the handler's changes.
type Records = Vec<(&'static str, String)>;

impl SledBarrier {
    /// Opens (or creates) the database in `dir`. Refuses to start on a
    /// database sled cannot open.
    pub fn open(dir: impl AsRef<Path>) -> Result<SledBarrier, ParticipantError> {
        let dir = dir.as_ref().to_path_buf();
        let db =
            open_waiting_for_lock(&dir).map_err(internal("opening the sled barrier database"))?;
        let state = db
            .open_tree("state")
            .map_err(internal("opening the state tree"))?;
        let records = db
            .open_tree("barrier")
            .map_err(internal("opening the barrier tree"))?;
        let db_file = File::open(dir.join("db")).map_err(internal("opening sled's db file"))?;
        Ok(SledBarrier {
            inner: Arc::new(Inner {
                db,
                state,
                records,
                db_file,
                dir,
                retention: std::sync::Mutex::new(DEFAULT_RETENTION),
                lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// How long barrier records are kept (see the module docs for the rule).
    pub fn set_retention(&self, retention: Duration) {
        *lock(&self.inner.retention) = retention;
    }

    /// The committed state, for reads outside calls.
    pub fn state(&self) -> &sled::Tree {
        &self.inner.state
    }

    /// Puts `handler` behind this barrier.
    pub fn guard<H: SledHandler>(&self, handler: H) -> Guarded<H> {
        Guarded {
            barrier: self.clone(),
            handler,
        }
    }

    /// Number of barrier records held.
    pub fn records(&self) -> usize {
        self.inner.records.len()
    }

    /// Removes the records older than the retention; returns how many.
    pub async fn collect(&self) -> Result<usize, ParticipantError> {
        let _one = self.inner.lock.lock().await;
        let cutoff = now_ms().saturating_sub(lock(&self.inner.retention).as_millis() as u64);
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for entry in self.inner.records.iter() {
            let (key, value) = entry.map_err(internal("scanning barrier records"))?;
            if written_ms(&value) < cutoff {
                batch.remove(key);
                removed += 1;
            }
        }
        self.inner
            .records
            .apply_batch(batch)
            .map_err(internal("collecting barrier records"))?;
        self.durable().await?;
        Ok(removed)
    }

    /// Runs [`SledBarrier::collect`] every `every` until the barrier is dropped.
    pub fn collect_every(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(err) = (SledBarrier { inner }).collect().await {
                    tracing::warn!(error = %err, "collecting barrier records failed");
                }
            }
        });
    }

    /// A handler's view of the state for one call.
    fn txn(&self) -> SledTxn<'_> {
        SledTxn {
            state: &self.inner.state,
            writes: BTreeMap::new(),
        }
    }

    fn phase1(&self, ctx: &CallContext) -> Result<Option<Phase1>, ParticipantError> {
        let Some(value) = self.record(ctx, PHASE1)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(value.get(8..).unwrap_or_default()).into_owned();
        Phase1::decode(&text).map(Some).ok_or_else(|| {
            ParticipantError::Internal(format!("unreadable barrier record {text:?}"))
        })
    }

    fn record(
        &self,
        ctx: &CallContext,
        phase: &str,
    ) -> Result<Option<sled::IVec>, ParticipantError> {
        self.inner
            .records
            .get(record_key(ctx, phase))
            .map_err(internal("reading the barrier"))
    }

    /// Applies the handler's writes and the barrier records atomically, then
    /// makes them durable.
    async fn apply(
        &self,
        ctx: &CallContext,
        writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        records: Records,
    ) -> Result<(), ParticipantError> {
        let now = now_ms().to_be_bytes();
        let result: Result<(), TransactionError<()>> = (&self.inner.state, &self.inner.records)
            .transaction(|(state, barrier)| {
                for (key, value) in &writes {
                    match value {
                        Some(value) => state.insert(key.as_slice(), value.as_slice())?,
                        None => state.remove(key.as_slice())?,
                    };
                }
                for (phase, text) in &records {
                    let mut value = now.to_vec();
                    value.extend_from_slice(text.as_bytes());
                    barrier.insert(record_key(ctx, phase), value)?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| {
            ParticipantError::Internal(format!("applying the barrier transaction: {e:?}"))
        })?;
        self.durable().await
    }

    /// sled's flush uses `sync_file_range`, which is not a full sync: follow
    /// it with `fdatasync` of the db file and a sync of any blob files.
    async fn durable(&self) -> Result<(), ParticipantError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ParticipantError> {
            inner.db.flush().map_err(internal("flushing sled"))?;
            inner
                .db_file
                .sync_data()
                .map_err(internal("syncing sled's db file"))?;
            let blobs = inner.dir.join("blobs");
            if let Ok(entries) = std::fs::read_dir(&blobs) {
                for entry in entries.flatten() {
                    File::open(entry.path())
                        .and_then(|f| f.sync_all())
                        .map_err(internal("syncing a sled blob"))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ParticipantError::Internal(format!("sync task failed: {e}")))?
    }
}

impl<H: SledHandler> Guarded<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        let barrier = &self.barrier;
        let _one = barrier.inner.lock.lock().await;
        if let Some(found) = barrier.phase1(ctx)? {
            return Ok(found.repeated_vote());
        }
        let mut txn = barrier.txn();
        let vote = self.handler.prepare(ctx, payload, &mut txn).await?;
        // Only a YES vote holds work; anything else keeps no change.
        let writes = if vote.is_yes() {
            txn.writes
        } else {
            BTreeMap::new()
        };
        let record = Phase1::Voted(vote.clone()).encode();
        barrier.apply(ctx, writes, vec![(PHASE1, record)]).await?;
        Ok(vote)
    }

    async fn commit(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        let barrier = &self.barrier;
        let _one = barrier.inner.lock.lock().await;
        if barrier.record(ctx, COMMIT)?.is_some() {
            return Ok(());
        }
        if barrier.record(ctx, ROLLBACK)?.is_some() {
            return Err(commit_after_rollback());
        }
        match barrier.phase1(ctx)? {
            Some(found) if found.holds_work() => {}
            other => return Err(commit_without_yes(other.as_ref())),
        }
        let mut txn = barrier.txn();
        self.handler.commit(ctx, payload, &mut txn).await?;
        barrier
            .apply(ctx, txn.writes, vec![(COMMIT, String::new())])
            .await
    }

    async fn rollback(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        let barrier = &self.barrier;
        let _one = barrier.inner.lock.lock().await;
        if barrier.record(ctx, ROLLBACK)?.is_some() {
            return Ok(());
        }
        if barrier.record(ctx, COMMIT)?.is_some() {
            return Err(rollback_after_commit());
        }
        let done = (ROLLBACK, String::new());
        match barrier.phase1(ctx)? {
            // Empty rollback: remember it, so a late prepare/try is refused.
            None => {
                let first = (PHASE1, Phase1::RolledBack.encode());
                barrier.apply(ctx, BTreeMap::new(), vec![first, done]).await
            }
            Some(found) if !found.holds_work() => {
                barrier.apply(ctx, BTreeMap::new(), vec![done]).await
            }
            Some(_) => {
                let mut txn = barrier.txn();
                self.handler.rollback(ctx, payload, &mut txn).await?;
                barrier.apply(ctx, txn.writes, vec![done]).await
            }
        }
    }
}

impl<H: SledHandler> TwoPhaseHandler for Guarded<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        Guarded::prepare(self, ctx, payload).await
    }
    async fn commit(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        Guarded::commit(self, ctx, payload).await
    }
    async fn rollback(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        Guarded::rollback(self, ctx, payload).await
    }
}

impl<H: SledHandler> TccHandler for Guarded<H> {
    async fn try_(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        Guarded::prepare(self, ctx, payload).await
    }
    async fn confirm(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        Guarded::commit(self, ctx, payload).await
    }
    async fn cancel(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        Guarded::rollback(self, ctx, payload).await
    }
}

/// A saga step: the action is `prepare` (a YES is the step's success), the
/// compensation `rollback`; `commit` is never called.
impl<H: SledHandler> SagaHandler for Guarded<H> {
    async fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<StepOutcome, ParticipantError> {
        Guarded::prepare(self, ctx, payload)
            .await
            .map(super::vote_as_step)
    }
    async fn compensate(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        Guarded::rollback(self, ctx, payload).await
    }
}

fn record_key(ctx: &CallContext, phase: &str) -> Vec<u8> {
    [
        ctx.txn_id.as_bytes(),
        ctx.branch_id.as_bytes(),
        phase.as_bytes(),
    ]
    .join(&0u8)
}

fn written_ms(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long opening waits for sled's lock on `db` to be let go.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

/// `sled::open`, waiting up to [`LOCK_PATIENCE`] while the file lock is held:
/// sled lets go of it a moment after a closed database is dropped (its I/O
/// threads finish late), so reopening at once would fail for no reason.
fn open_waiting_for_lock(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn internal<E: std::fmt::Display>(doing: &'static str) -> impl Fn(E) -> ParticipantError {
    move |e| ParticipantError::Internal(format!("{doing}: {e}"))
}
