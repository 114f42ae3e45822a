//! The group-commit writer: one thread owns every write to the log.
//!
//! Callers [`LogWriter::submit`] a record and get a receiver that completes once
//! the record is durable. The thread takes everything queued at that moment (up
//! to [`MAX_BATCH`]), writes it as one batch with one flush + fdatasync, then
//! completes every caller of the batch. While it syncs, new records queue up
//! and go into the next batch, so concurrent transactions share flushes.
//!
//! Records that need not be durable yet (a transaction's final state after a
//! durable decision) can be submitted lazily: a batch of only those is
//! written without a flush, and the next synced batch makes them durable.
//!
//! A store that is only out of reach for now ([`StoreError::Unreachable`]:
//! a database restarting) gets the same batch again, with backoff, until it
//! takes it; its callers wait, and nothing is acknowledged meanwhile.
//!
//! After any other failed write the writer is poisoned: every later record fails with
//! the same error, because what sled holds is no longer known to be durable.
//! It reports the failure at once (`on_failure`), so the coordinator stops
//! even when no caller is waiting on a write (a failed checkpoint).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::store::feed::{Feed, Published};
use crate::store::{StoreError, TxnLog, Write, Wrote};

/// The most records written in one group commit.
pub const MAX_BATCH: usize = 4096;

/// Told of the first failure of the log.
pub type OnFailure = Box<dyn Fn(&StoreError) + Send>;

/// Told of each transaction (id, claim) whose records were fenced.
pub type OnFenced = Box<dyn Fn(&str, i64) + Send>;

/// Whom the writer thread tells what.
struct Tell<'a> {
    failure: &'a (dyn Fn(&StoreError) + Send),
    fenced: &'a (dyn Fn(&str, i64) + Send),
    /// Gets the changes of every record once it is durable.
    feed: &'a Feed,
}

/// How soon lazy writes are synced while the log is idle and someone
/// watches (otherwise they wait for the next synced batch).
const WATCHED_SYNC: std::time::Duration = std::time::Duration::from_millis(2);

/// Completes when the record is durable, or with the error that stopped it.
pub type Durable = oneshot::Receiver<Result<(), StoreError>>;

enum Msg {
    /// A write, and whether its caller needs it durable.
    Write(Write, bool, oneshot::Sender<Result<(), StoreError>>),
    Close,
}

/// Counters of the writer, for metrics and the benchmark.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    /// Bytes of keys and values written.
    pub bytes: AtomicU64,
    /// Set while the store is out of reach and a batch waits to be retried.
    pub unreachable: std::sync::atomic::AtomicBool,
    /// Batches handed to the store so far (counted before each is applied).
    pub applied: AtomicU64,
    /// `applied` as of the last sync: every batch up to it is durable.
    pub synced: AtomicU64,
}

impl WriterStats {
    /// Whether everything a read could have seen so far is durable: call
    /// after the read; `false` means a [`Write::Barrier`] is needed.
    pub fn all_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= self.applied.load(Ordering::Acquire)
    }
}

pub struct LogWriter {
    tx: mpsc::Sender<Msg>,
    /// Set by [`LogWriter::close`]: stop retrying an unreachable store.
    closing: Arc<std::sync::atomic::AtomicBool>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WriterStats>,
}

impl LogWriter {
    pub fn start(log: Arc<dyn TxnLog>, on_failure: OnFailure) -> Result<LogWriter, StoreError> {
        Self::start_with(
            log,
            on_failure,
            Box::new(|_, _| {}),
            Feed::new(crate::store::feed::RING),
        )
    }

    /// Like [`LogWriter::start`]; `on_fenced` is told of every record refused
    /// because another node owns its transaction (id and claim), whether or
    /// not anyone still waits for the answer. `feed` gets the changes of
    /// every record once it is durable.
    pub fn start_with(
        log: Arc<dyn TxnLog>,
        on_failure: OnFailure,
        on_fenced: OnFenced,
        feed: Arc<Feed>,
    ) -> Result<LogWriter, StoreError> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_closing = closing.clone();
        let thread = std::thread::Builder::new()
            .name("arbiter-log-writer".into())
            .spawn(move || {
                let tell = Tell {
                    failure: &*on_failure,
                    fenced: &*on_fenced,
                    feed: &feed,
                };
                run(log, rx, &thread_stats, tell, &thread_closing)
            })
            .map_err(StoreError::io("starting the log writer thread"))?;
        Ok(LogWriter {
            tx,
            closing,
            thread: std::sync::Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Queues one write; completes once it is durable. Writes happen in
    /// submission order.
    pub fn submit(&self, record: Write) -> Durable {
        self.send(record, true)
    }

    /// Queues one write that need not be durable yet; completes once it is
    /// written (readable). It becomes durable with the next synced batch, or
    /// at [`LogWriter::close`]. A batch of only such writes costs no flush.
    pub fn submit_lazy(&self, record: Write) -> Durable {
        self.send(record, false)
    }

    fn send(&self, record: Write, sync: bool) -> Durable {
        let (done, durable) = oneshot::channel();
        if let Err(mpsc::SendError(Msg::Write(_, _, done))) =
            self.tx.send(Msg::Write(record, sync, done))
        {
            let _ = done.send(Err(StoreError::Closed));
        }
        durable
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Writes everything queued so far, then stops the thread and waits for it.
    /// Records submitted afterwards fail with [`StoreError::Closed`].
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.tx.send(Msg::Close);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn run(
    log: Arc<dyn TxnLog>,
    rx: mpsc::Receiver<Msg>,
    stats: &WriterStats,
    tell: Tell<'_>,
    shutting_down: &std::sync::atomic::AtomicBool,
) {
    let on_failure = tell.failure;
    let unreachable = &stats.unreachable;
    let mut poisoned: Option<StoreError> = None;
    let mut records = Vec::with_capacity(64);
    let mut waiters = Vec::with_capacity(64);
    // Writes applied without a sync since the last sync.
    let mut unsynced = false;
    // Changes of writes applied but not yet synced (only while someone
    // watches), and since when.
    let mut held: Vec<Published> = Vec::new();
    let mut held_since: Option<std::time::Instant> = None;
    // A transaction ended or became stuck since the last sync (the webhook
    // delivery is woken once that is durable).
    let mut ends = false;
    loop {
        let wait = match held_since {
            Some(since) => WATCHED_SYNC.saturating_sub(since.elapsed()),
            None => crate::store::hwm::EVERY,
        };
        let first = match rx.recv_timeout(wait) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) if held_since.is_some() && poisoned.is_none() => {
                let applied = stats.applied.fetch_add(1, Ordering::AcqRel) + 1;
                match write_until_reachable(&*log, &[], true, shutting_down, unreachable) {
                    Ok(_) => {
                        unsynced = false;
                        stats.synced.store(applied, Ordering::Release);
                        held_since = None;
                        tell.feed.publish(std::mem::take(&mut held));
                        if std::mem::take(&mut ends) {
                            tell.feed.ended.notify_one();
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "transaction log sync failed; nothing more will be acknowledged");
                        on_failure(&err);
                        poisoned = Some(err);
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Held changes of a failed log are never shown.
                held.clear();
                held_since = None;
                checkpoint(&*log, &mut poisoned, on_failure);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                checkpoint(&*log, &mut poisoned, on_failure);
                return;
            }
        };
        let mut closing = false;
        let mut sync = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(record, durable, done) => {
                    records.push(record);
                    waiters.push(done);
                    sync |= durable;
                }
                Msg::Close => {
                    closing = true;
                    break;
                }
            }
            if records.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Before stopping, make every lazy write durable too; and changes
        // someone watches are not held back for long by lazy writes alone.
        sync |= closing && unsynced;
        sync |= held_since.is_some_and(|t| t.elapsed() >= WATCHED_SYNC);
        if !records.is_empty() || sync {
            let started = std::time::Instant::now();
            let applied = stats.applied.fetch_add(1, Ordering::AcqRel) + 1;
            let result = match &poisoned {
                Some(err) => Err(err.clone()),
                None => write_until_reachable(&*log, &records, sync, shutting_down, unreachable),
            };
            let fenced: std::collections::HashSet<(String, i64)> = match &result {
                Ok(wrote) => {
                    stats.bytes.fetch_add(wrote.bytes, Ordering::Relaxed);
                    wrote.fenced.iter().cloned().collect()
                }
                Err(_) => std::collections::HashSet::new(),
            };
            for (id, claim) in &fenced {
                (tell.fenced)(id, *claim);
            }
            let result = result.map(|_| ());
            if sync && result.is_ok() {
                crate::metrics::log_flush(started.elapsed(), records.len());
            }
            if let Err(err) = &result {
                if poisoned.is_none() {
                    tracing::error!(error = %err, "transaction log write failed; nothing more will be acknowledged");
                    on_failure(err);
                }
                poisoned = Some(err.clone());
            } else {
                unsynced = !sync;
                let watched = tell.feed.watched();
                for record in records.iter() {
                    if let Write::Txn(r) = record
                        && !fenced.contains(&(r.txn_id.clone(), r.claim))
                    {
                        ends |= r.changes.iter().any(|c| {
                            c.is_final() || matches!(c.kind, crate::engine::ChangeKind::Stuck)
                        });
                    }
                }
                for record in records.iter_mut() {
                    if let Write::Txn(r) = record
                        && watched
                        && !r.changes.is_empty()
                        && !fenced.contains(&(r.txn_id.clone(), r.claim))
                    {
                        held.push(Published {
                            txn_id: r.txn_id.clone(),
                            about: r.about.clone(),
                            changes: std::mem::take(&mut r.changes),
                        });
                    }
                }
                if sync {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.synced.store(applied, Ordering::Release);
                    held_since = None;
                    tell.feed.publish(std::mem::take(&mut held));
                    if std::mem::take(&mut ends) {
                        tell.feed.ended.notify_one();
                    }
                } else if !held.is_empty() {
                    held_since.get_or_insert_with(std::time::Instant::now);
                }
                stats
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            // A transaction another node took over is refused alone: its
            // callers learn it, everything else of the batch is written.
            for (record, done) in records.drain(..).zip(waiters.drain(..)) {
                let answer = match &record {
                    Write::Txn(r) if fenced.contains(&(r.txn_id.clone(), r.claim)) => {
                        Err(StoreError::Fenced(r.txn_id.clone()))
                    }
                    _ => result.clone(),
                };
                let _ = done.send(answer);
            }
        }
        if closing {
            checkpoint(&*log, &mut poisoned, on_failure);
            return;
        }
    }
}

/// Writes `records`, again and again while the store is out of reach (with
/// backoff up to a second), until it takes them or the writer is closing.
fn write_until_reachable(
    log: &dyn TxnLog,
    records: &[Write],
    sync: bool,
    closing: &std::sync::atomic::AtomicBool,
    unreachable: &std::sync::atomic::AtomicBool,
) -> Result<Wrote, StoreError> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut since: Option<std::time::Instant> = None;
    loop {
        match log.write(records, sync) {
            Err(StoreError::Unreachable(why)) if !closing.load(Ordering::Acquire) => {
                if since.is_none() {
                    tracing::warn!(%why, "transaction log out of reach; retrying, nothing is acknowledged meanwhile");
                    since = Some(std::time::Instant::now());
                    unreachable.store(true, Ordering::Release);
                }
                crate::metrics::log_unreachable();
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            result => {
                if let (Some(since), Ok(_)) = (since, &result) {
                    tracing::info!(after = ?since.elapsed(), "transaction log reachable again");
                }
                if result.is_ok() {
                    unreachable.store(false, Ordering::Release);
                }
                return result;
            }
        }
    }
}

/// Brings the acknowledged mark up to date, unless a write already failed.
fn checkpoint(
    log: &dyn TxnLog,
    poisoned: &mut Option<StoreError>,
    on_failure: &(dyn Fn(&StoreError) + Send),
) {
    if poisoned.is_some() {
        return;
    }
    if let Err(err) = log.checkpoint() {
        tracing::error!(error = %err, "writing the acknowledged mark failed; nothing more will be acknowledged");
        on_failure(&err);
        *poisoned = Some(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Txn;
    use crate::store::{AuditEntry, MemoryLog};

    /// A memory log whose first `outages` writes find the store out of reach.
    struct Flaky {
        inner: MemoryLog,
        outages: AtomicU64,
    }

    impl TxnLog for Flaky {
        fn write(&self, batch: &[Write], sync: bool) -> Result<Wrote, StoreError> {
            let left = self.outages.load(Ordering::Acquire);
            if left > 0 {
                self.outages.store(left - 1, Ordering::Release);
                return Err(StoreError::Unreachable("restarting".into()));
            }
            self.inner.write(batch, sync)
        }
        fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError> {
            self.inner.get(txn_id)
        }
        fn unfinished(&self) -> Result<Vec<Txn>, StoreError> {
            self.inner.unfinished()
        }
        fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
            self.inner.collect_finished(before_ms, limit)
        }
        fn scan(
            &self,
            after: Option<&str>,
            newest: bool,
            n: usize,
        ) -> Result<Vec<Txn>, StoreError> {
            self.inner.scan(after, newest, n)
        }
        fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
            self.inner.audit(limit)
        }
        fn changes(
            &self,
            txn_id: &str,
            from: u64,
        ) -> Result<Vec<crate::engine::Change>, StoreError> {
            self.inner.changes(txn_id, from)
        }
        fn notices(
            &self,
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<crate::store::history::NoticePage, StoreError> {
            self.inner.notices(after, limit)
        }
    }

    fn entry(seq: u64) -> Write {
        Write::Audit(AuditEntry {
            at_ms: 1,
            seq,
            action: "test".into(),
            txn_id: "t".into(),
            branch_id: String::new(),
            reason: String::new(),
            caller: String::new(),
            result: String::new(),
        })
    }

    #[test]
    fn an_unreachable_store_is_retried_until_it_takes_the_batch() {
        let log = Arc::new(Flaky {
            inner: MemoryLog::new(),
            outages: AtomicU64::new(3),
        });
        let failures = Arc::new(AtomicU64::new(0));
        let seen = failures.clone();
        let on_failure = Box::new(move |_: &StoreError| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        let writer = LogWriter::start(log.clone(), on_failure).unwrap_or_else(|e| panic!("{e}"));
        let answer = writer.submit(entry(1)).blocking_recv();
        assert_eq!(answer, Ok(Ok(())), "acknowledged only once written");
        assert_eq!(log.audit(10).map(|a| a.len()), Ok(1));
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "not a failure of the log"
        );
        writer.close();
    }

    #[test]
    fn closing_stops_the_retries_and_fails_the_waiters() {
        let log = Arc::new(Flaky {
            inner: MemoryLog::new(),
            outages: AtomicU64::new(u64::MAX),
        });
        let writer = LogWriter::start(log, Box::new(|_| {})).unwrap_or_else(|e| panic!("{e}"));
        let waiting = writer.submit(entry(1));
        writer.close();
        assert!(
            matches!(waiting.blocking_recv(), Ok(Err(StoreError::Unreachable(_)))),
            "never a false OK"
        );
    }
}
