//! The runtime core: live transactions in memory, feeding events to the engine
//! and carrying out the actions it returns.
//!
//! Each live transaction has a [`Slot`] (`driver::slot`): the [`Txn`] behind a
//! mutex, and a watch channel through which waiting clients learn its state. [`Inner::apply`] runs
//! one engine step under the slot's lock and, *still under the lock*, queues any
//! record to persist, so records reach the log in the order the engine made
//! them. [`Inner::perform`] then runs the resulting steps in order: it waits for
//! a flushed record before anything after it (write-ahead), starts participant
//! calls as tasks, and schedules retries.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::driver::participants::{CallSpec, Participants};
use crate::driver::slot::{Published, Slot};
use crate::driver::{DriverError, backoff, ids};
use crate::engine::{self, Action, CallKind, Durability, Event, Txn, TxnState};
use crate::notify::Notifier;
use crate::store::feed::{About, Feed};
use crate::store::{Durable, LogWriter, Record, StoreError, TxnLog, Write};

const SHARDS: usize = 64;

/// An action turned into something the runtime can run outside the lock.
enum Step {
    /// Wait for this record, written when the transaction was in this state.
    Durable(Durable, TxnState),
    Lazy(Durable),
    Publish(Published),
    Call(CallSpec),
    Retry {
        branch: usize,
        call: CallKind,
        delay: Duration,
        seq: u32,
    },
    Forget,
}

/// The steps of one engine step, to be run by [`Inner::perform`].
pub struct Steps(Vec<Step>);

/// Every mode, in the order of [`Inner::about_mode`].
const MODES: [engine::Mode; 3] = [
    engine::Mode::TwoPhase,
    engine::Mode::Tcc,
    engine::Mode::Saga,
];

/// A saga with a step done (for its crash points; a 2PC transaction
/// never writes PREPARING).
fn saga_step_done(txn: &Txn) -> bool {
    txn.mode == engine::Mode::Saga
        && txn
            .branches
            .iter()
            .any(|b| b.state == engine::BranchState::Prepared)
}

/// Metrics of a transaction that just became final.
fn record_finished(txn: &Txn, latencies: &super::latency::Latencies) {
    let since = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
    let finished = txn.finished_at_ms.unwrap_or_else(ids::now_ms);
    latencies.record(since(txn.created_at_ms, finished));
    crate::metrics::transaction_finished(
        txn.mode.name(),
        txn.state == TxnState::Committed,
        since(txn.created_at_ms, finished),
        txn.decided_at_ms.map(|d| since(txn.created_at_ms, d)),
        txn.decided_at_ms.map(|d| since(d, finished)),
    );
    if !txn.mixed_branches().is_empty() {
        crate::metrics::heuristic_outcome(txn.mode.name());
    }
}

pub struct Inner {
    pub config: Config,
    policy: engine::Policy,
    pub log: Arc<dyn TxnLog>,
    pub writer: LogWriter,
    pub participants: Participants,
    shards: Vec<Mutex<HashMap<String, Arc<Slot>>>>,
    hasher: RandomState,
    /// Set when the log failed: the coordinator must stop.
    pub fatal: Arc<watch::Sender<Option<String>>>,
    /// Set when the coordinator is stopping: waiting clients are answered now.
    pub stopping: watch::Sender<bool>,
    /// Transactions finished since start, by outcome.
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    /// How long the transactions finished here took (the console's chart).
    pub latencies: super::latency::Latencies,
    /// Transactions held in memory (unfinished, or just finished).
    live: std::sync::atomic::AtomicUsize,
    /// The store's count of lease lapses last acted on (`ownership`).
    pub lapses_seen: AtomicU64,
    /// Durable changes of every transaction, for watchers.
    pub feed: Arc<Feed>,
    /// Makes webhook notifications, when endpoints are configured.
    pub notify: Option<Arc<Notifier>>,
    /// Watch streams open at once (`max_watches`).
    pub watches: Arc<tokio::sync::Semaphore>,
    /// What feed items of each mode carry when nobody watches.
    about_mode: [Arc<About>; 3],
}

/// What watchers may filter the changes of `txn` by.
fn about(txn: &Txn) -> About {
    let mut participants: Vec<String> = Vec::new();
    for b in &txn.branches {
        if !participants.contains(&b.participant) {
            participants.push(b.participant.clone());
        }
    }
    About {
        mode: Some(txn.mode),
        participants,
        stuck: txn.stuck_since_ms.is_some(),
    }
}

/// The error for a transaction this node let go of.
pub fn moved(txn_id: &str) -> DriverError {
    DriverError::Moved(txn_id.to_string())
}

/// Records the first failure of the log: the coordinator must stop.
pub fn set_fatal(fatal: &watch::Sender<Option<String>>, error: &StoreError) {
    fatal.send_if_modified(|fatal| {
        if fatal.is_none() {
            *fatal = Some(error.to_string());
            true
        } else {
            false
        }
    });
}

impl Inner {
    pub fn new(
        config: Config,
        log: Arc<dyn TxnLog>,
        writer: LogWriter,
        fatal: Arc<watch::Sender<Option<String>>>,
        feed: Arc<Feed>,
    ) -> Inner {
        let participants = Participants::new(
            config.tls.participants.clone(),
            config.tls.participants_http.clone(),
            config.connections.max_participant_channels,
            config.connections.idle_timeout,
        );
        let config_notify = config.notify.clone();
        let max_watches = config.max_watches.max(1);
        let node_id = log.shared().then(|| config.node.id.clone());
        Inner {
            policy: config.policy(),
            config,
            log,
            writer,
            participants,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            fatal,
            stopping: watch::Sender::new(false),
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            latencies: Default::default(),
            live: Default::default(),
            lapses_seen: AtomicU64::new(0),
            feed,
            watches: Arc::new(tokio::sync::Semaphore::new(max_watches)),
            about_mode: MODES.map(|mode| {
                Arc::new(About {
                    mode: Some(mode),
                    ..About::default()
                })
            }),
            notify: (!config_notify.endpoints.is_empty()).then(|| {
                Arc::new(Notifier {
                    config: config_notify,
                    node_id: node_id.unwrap_or_default(),
                })
            }),
        }
    }

    fn shard(&self, txn_id: &str) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        let i = (self.hasher.hash_one(txn_id) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self, txn_id: &str) -> Option<Arc<Slot>> {
        self.shard(txn_id).get(txn_id).cloned()
    }

    /// Adds a slot unless one with the same id is live; returns the live one.
    pub fn insert(&self, slot: Arc<Slot>, txn_id: &str) -> Result<Arc<Slot>, Arc<Slot>> {
        let mut shard = self.shard(txn_id);
        if let Some(existing) = shard.get(txn_id) {
            return Err(existing.clone());
        }
        shard.insert(txn_id.to_string(), slot.clone());
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }

    /// How many transactions are held in memory.
    pub fn live_count(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Every live transaction, in no particular order.
    pub fn live_slots(&self) -> Vec<Arc<Slot>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What the log needs to catch up with the slot's transaction `txn`,
    /// which the caller holds locked.
    /// Its changes not yet written go with it.
    fn record(&self, slot: &Slot, txn: &mut Txn) -> Result<Write, DriverError> {
        let mut written = slot.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = Record::of(txn, &mut written)
            .map_err(|e| DriverError::Internal(e.to_string()))?
            .with_changes(std::mem::take(&mut txn.changes));
        // What feed filters need; the participants only while someone
        // watches (the writer publishes nothing otherwise).
        if !record.changes.is_empty() {
            record.about = if self.feed.watched() {
                Arc::new(about(txn))
            } else {
                let i = MODES.iter().position(|m| *m == txn.mode).unwrap_or(0);
                self.about_mode[i].clone()
            };
        }
        if let Some(notify) = &self.notify {
            notify.add_to(&mut record, txn);
        }
        Ok(Write::Txn(record))
    }

    /// For a transaction read back to be driven here: its next change is
    /// numbered after every change the log holds of it, even if its record
    /// says less (a record rewritten by a release that did not know the
    /// numbering, while nodes of two releases shared the store).
    /// If the changes cannot be read, the transaction is not driven (a
    /// guess could number a change over one a watcher was shown).
    pub fn continue_numbering(&self, txn: &mut Txn) -> Result<(), StoreError> {
        let recorded = txn.seq;
        // A page at a time, to the last change the log holds.
        loop {
            let later = self.log.changes(&txn.id, txn.seq.saturating_add(1))?;
            match later.last() {
                Some(last) if last.seq > txn.seq => txn.seq = last.seq,
                _ => break,
            }
        }
        if txn.seq != recorded {
            tracing::warn!(txn = %txn.id, record = recorded, log = txn.seq,
                "the log holds changes past what the transaction's record says; numbering after them");
        }
        Ok(())
    }

    /// Queues the slot's transaction as it is now; the caller holds its lock.
    pub fn persist(&self, slot: &Slot, txn: &mut Txn) -> Result<Durable, DriverError> {
        Ok(self.writer.submit(self.record(slot, txn)?))
    }

    /// Like [`Inner::persist`] for a record recovery can rebuild: written at
    /// once, made durable by the next flush.
    fn persist_lazy(&self, slot: &Slot, txn: &mut Txn) -> Result<Durable, DriverError> {
        Ok(self.writer.submit_lazy(self.record(slot, txn)?))
    }

    /// Runs one engine step on the event `make_event` builds from the current
    /// transaction, and turns the actions into steps.
    pub fn apply_with<T>(
        &self,
        slot: &Slot,
        make_event: impl FnOnce(&Txn) -> Result<(Event, T), DriverError>,
    ) -> Result<(Steps, T), DriverError> {
        let mut txn = slot.lock();
        if slot.is_fenced() {
            return Err(moved(&txn.id));
        }
        let (event, extra) = make_event(&txn)?;
        let was_stuck = txn.stuck_since_ms.is_some();
        let actions = engine::step(&mut txn, event, ids::now_ms(), &self.policy)?;
        if !was_stuck && txn.stuck_since_ms.is_some() {
            let errors: Vec<String> = txn
                .branches
                .iter()
                .filter_map(|b| {
                    b.last_error
                        .as_ref()
                        .map(|e| format!("branch {}: {e}", b.id))
                })
                .collect();
            tracing::warn!(txn = %txn.id, state = txn.state.name(), errors = ?errors,
                "transaction is stuck: phase 2 keeps failing; still retrying");
        }
        let mut steps = Vec::with_capacity(actions.len());
        for action in actions {
            steps.push(match action {
                Action::Persist(Durability::Flush) => {
                    match txn.state {
                        TxnState::Committing | TxnState::Committed => {
                            crate::crash_point!("before-decision-persisted")
                        }
                        TxnState::Aborting | TxnState::Aborted => {
                            crate::crash_point!("before-abort-persisted")
                        }
                        TxnState::Preparing if saga_step_done(&txn) => {
                            crate::crash_point!("saga-before-step-persisted")
                        }
                        _ => {}
                    }
                    Step::Durable(self.persist(slot, &mut txn)?, txn.state)
                }
                Action::Persist(Durability::Lazy) => {
                    match txn.state {
                        TxnState::Committed => crate::crash_point!("before-committed-persisted"),
                        TxnState::Aborted => crate::crash_point!("before-aborted-persisted"),
                        _ => {}
                    }
                    Step::Lazy(self.persist_lazy(slot, &mut txn)?)
                }
                Action::Publish => Step::Publish(Published::of(&txn)),
                Action::Call {
                    branch,
                    call,
                    attempt,
                } => {
                    let b = &txn.branches[branch];
                    Step::Call(CallSpec {
                        txn_id: txn.id.clone(),
                        mode: txn.mode,
                        branch,
                        branch_id: b.id.clone(),
                        participant: b.participant.clone(),
                        resource: b.resource.clone(),
                        payload: b.payload.clone(),
                        timeout: Duration::from_millis(b.call_timeout_ms),
                        call,
                        attempt,
                        traceparent: super::trace::child(&slot.trace_id),
                        protocol: b.protocol,
                        json_payload: b.json_payload,
                    })
                }
                Action::RetryLater {
                    branch,
                    call,
                    failures,
                    seq,
                } => {
                    let delay = backoff::delay(
                        self.config.retry_base,
                        self.config.retry_max,
                        self.config.retry_multiplier,
                        failures,
                    );
                    txn.branches[branch].next_retry_at_ms =
                        Some(ids::now_ms() + delay.as_millis() as u64);
                    Step::Retry {
                        branch,
                        call,
                        delay,
                        seq,
                    }
                }
                Action::Forget => Step::Forget,
            });
        }
        // A failure or an operator's action is written on its own (lazily),
        // so watchers see it though no record follows for a while. Not while
        // a 2PC or TCC transaction is undecided: PREPARING is never written
        // (a running saga's is).
        let persisted = steps
            .iter()
            .any(|s| matches!(s, Step::Durable(..) | Step::Lazy(_)));
        let writable = txn.state.is_decided()
            || (txn.mode == engine::Mode::Saga && txn.state == TxnState::Preparing);
        if !persisted && writable && txn.changes.iter().any(|c| c.kind.is_urgent()) {
            steps.push(Step::Lazy(self.persist_lazy(slot, &mut txn)?));
        }
        Ok((Steps(steps), extra))
    }

    pub fn apply(&self, slot: &Slot, event: Event) -> Result<Steps, DriverError> {
        self.apply_with(slot, |_| Ok((event, ())))
            .map(|(steps, ())| steps)
    }

    /// Carries out steps in order. Returns an error only when a record that the
    /// next steps depend on could not be made durable.
    pub async fn perform(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        steps: Steps,
    ) -> Result<(), DriverError> {
        let mut lazy = None;
        for step in steps.0 {
            match step {
                Step::Durable(durable, state) => {
                    self.wait_durable_of(slot, durable).await?;
                    match state {
                        TxnState::Committing | TxnState::Committed => {
                            crate::crash_point!("after-decision-persisted")
                        }
                        TxnState::Aborting | TxnState::Aborted => {
                            crate::crash_point!("after-abort-persisted")
                        }
                        TxnState::Preparing if saga_step_done(&slot.lock()) => {
                            crate::crash_point!("saga-after-step-persisted")
                        }
                        _ => {}
                    }
                }
                Step::Lazy(durable) => lazy = Some(durable),
                Step::Publish(published) => {
                    if published.state.is_final() {
                        record_finished(&slot.lock(), &self.latencies);
                    }
                    slot.publish(published)
                }
                Step::Call(spec) => {
                    if spec.call == CallKind::Prepare && spec.attempt == 1 {
                        crate::crash_point!("before-phase1-sent");
                    }
                    self.spawn_call(slot.clone(), spec)
                }
                Step::Retry {
                    branch,
                    call,
                    delay,
                    seq,
                } => self.spawn_retry(slot.clone(), branch, call, seq, delay),
                Step::Forget => {
                    if let Some(durable) = lazy.take() {
                        self.wait_durable_of(slot, durable).await?;
                    }
                    self.forget(slot);
                }
            }
        }
        Ok(())
    }

    /// Runs steps in a task of their own, so they finish even if the client
    /// that caused them goes away.
    pub fn perform_detached(self: &Arc<Self>, slot: Arc<Slot>, steps: Steps) {
        let inner = self.clone();
        tokio::spawn(async move {
            let _ = inner.perform(&slot, steps).await;
        });
    }

    pub async fn wait_durable(&self, durable: Durable) -> Result<(), DriverError> {
        let result = durable.await.unwrap_or(Err(StoreError::Closed));
        if let Err(e) = &result {
            self.store_failed(e);
        }
        result.map_err(DriverError::from)
    }

    /// Like [`Inner::wait_durable`] for a record of `slot`'s transaction:
    /// if another node took it over, this one lets go of it.
    pub async fn wait_durable_of(
        &self,
        slot: &Arc<Slot>,
        durable: Durable,
    ) -> Result<(), DriverError> {
        let result = self.wait_durable(durable).await;
        // Let go of meanwhile: nothing more is acknowledged for it.
        if slot.is_fenced() {
            return Err(moved(&slot.lock().id));
        }
        if let Err(DriverError::Moved(_)) = &result {
            self.lose(slot);
        }
        result
    }

    fn store_failed(&self, error: &StoreError) {
        match error {
            StoreError::Closed if *self.stopping.borrow() => {} // expected while shutting down
            StoreError::Fenced(_) => {}                         // that transaction only
            _ => set_fatal(&self.fatal, error),
        }
    }

    fn forget(&self, slot: &Arc<Slot>) {
        let (id, state) = {
            let txn = slot.lock();
            (txn.id.clone(), txn.state)
        };
        self.participants.http.forget(&id);
        match state {
            TxnState::Committed => self.committed.fetch_add(1, Ordering::Relaxed),
            _ => self.aborted.fetch_add(1, Ordering::Relaxed),
        };
        self.remove(slot, &id);
    }

    /// Takes `slot` out of memory (if it is still the live one of `id`) and
    /// stops its timer.
    pub fn remove(&self, slot: &Arc<Slot>, id: &str) {
        let mut shard = self.shard(id);
        if shard.get(id).is_some_and(|live| Arc::ptr_eq(live, slot)) {
            shard.remove(id);
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        if let Some(timer) = slot.timer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            timer.abort();
        }
    }

    /// Waits until the first record of `slot` is durable (a repeated
    /// `Begin` must not be answered before the first one could be).
    pub async fn wait_created(&self, slot: &Slot, deadline: Instant) -> Result<(), DriverError> {
        let mut published = slot.published.subscribe();
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            if slot.is_fenced() {
                return Err(moved(&slot.lock().id));
            }
            if slot.is_created() {
                return Ok(());
            }
            tokio::select! {
                changed = published.changed() => if changed.is_err() {
                    return Err(DriverError::Unavailable("the coordinator is stopping".into()));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(DriverError::Unavailable(format!(
                        "transaction {} is still being begun; retry",
                        slot.lock().id
                    )));
                }
            }
        }
    }

    /// Waits until `done(state)` holds, the deadline passes, or the coordinator
    /// stops; returns the state published at that moment.
    pub async fn wait_for(
        &self,
        slot: &Slot,
        done: impl Fn(TxnState) -> bool,
        deadline: Instant,
    ) -> Published {
        let mut published = slot.published.subscribe();
        let mut stopping = self.stopping.subscribe();
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            if done(published.borrow_and_update().state) || slot.is_fenced() {
                break;
            }
            tokio::select! {
                changed = published.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        published.borrow().clone()
    }
}
