//! The runtime driver: what the gRPC layer calls. It validates requests, runs
//! them through the engine (see `runtime`), waits for durability and outcomes,
//! and resumes unfinished transactions after a restart.

mod admin;
mod answer;
mod backoff;
mod calls;
mod error;
pub mod http;
pub mod ids;
pub mod latency;
mod notices;
mod ownership;
mod participants;
mod repeat;
mod runtime;
mod slot;
pub mod trace;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use admin::{ListFilter, Page, Stats};
pub use error::DriverError;
pub use validate::BranchSpec;

use crate::config::Config;
use crate::engine::{Event, Mode, Txn, TxnState};
use crate::store::{LogWriter, TxnLog, WriterStats};
pub use answer::{BranchOutcome, Outcome};
use answer::{branch_outcomes, outcome};
use ownership::{Found, stored};
use repeat::{Wanted, repeated_begin};
use runtime::Inner;
use slot::{Published, Slot};

/// How long a `Commit`-like call holds the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until a saga runs, durably (what a saga's Commit without waiting
    /// waits for).
    Running,
    /// Until the decision is durable.
    Decided,
    /// Until the transaction is committed or aborted.
    Final,
}

/// Unfinished transactions loaded at start-up, waiting to be resumed.
pub struct Recovery {
    slots: Vec<Arc<Slot>>,
}

impl Recovery {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The error that sends a call to the node driving the transaction.
fn elsewhere(txn: &Txn, owner: crate::store::Owner) -> DriverError {
    DriverError::Elsewhere {
        txn: txn.id.clone(),
        node: owner.node_id,
        address: owner.address,
    }
}

#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

impl Driver {
    /// A driver over `log`; starts the group-commit writer thread.
    pub fn new(config: Config, log: Arc<dyn TxnLog>) -> Result<Driver, DriverError> {
        let fatal = Arc::new(tokio::sync::watch::Sender::new(None));
        let on_failure = {
            let fatal = fatal.clone();
            move |error: &crate::store::StoreError| runtime::set_fatal(&fatal, error)
        };
        // A record refused because another node took its transaction over
        // lets that copy go even when nobody waits for the answer any more.
        let driving: Arc<std::sync::OnceLock<std::sync::Weak<Inner>>> = Arc::default();
        let on_fenced = {
            let driving = driving.clone();
            move |txn_id: &str, claim: i64| {
                if let Some(inner) = driving.get().and_then(std::sync::Weak::upgrade) {
                    inner.lose_copy(txn_id, claim);
                }
            }
        };
        let feed = crate::store::feed::Feed::new(config.watch_buffer);
        let writer = LogWriter::start_with(
            log.clone(),
            Box::new(on_failure),
            Box::new(on_fenced),
            feed.clone(),
        )?;
        let inner = Arc::new(Inner::new(config, log, writer, fatal, feed));
        let _ = driving.set(Arc::downgrade(&inner));
        Ok(Driver { inner })
    }

    /// Loads every unfinished transaction of the log into memory, so that each
    /// is live before requests are served. [`Driver::resume`] then finishes them.
    pub fn load_unfinished(&self) -> Result<Recovery, DriverError> {
        let txns: Vec<(Txn, i64)> = if self.inner.log.shared() {
            self.claim_at_start()?
        } else {
            self.inner
                .log
                .unfinished()?
                .into_iter()
                .map(|t| (t, 0))
                .collect()
        };
        let mut slots = Vec::with_capacity(txns.len());
        for (mut txn, claim) in txns {
            validate::normalise_stored(&mut txn);
            self.inner.continue_numbering(&mut txn)?;
            let id = txn.id.clone();
            match self.inner.insert(Slot::recovered(txn, claim), &id) {
                Ok(slot) | Err(slot) => slots.push(slot),
            }
        }
        Ok(Recovery { slots })
    }

    /// Resumes loaded transactions, at most `recovery_concurrency` at once:
    /// undecided ones are aborted (presumed abort), decided ones get phase 2
    /// again. A transaction holds its place until it is final or its first
    /// round of calls has had time to answer; slow ones go on retrying on
    /// their own. Returns how many were resumed.
    pub async fn resume(&self, recovery: Recovery) -> usize {
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.inner.config.recovery_concurrency.max(1),
        ));
        let count = recovery.slots.len();
        let mut tasks = tokio::task::JoinSet::new();
        for slot in recovery.slots {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let inner = self.inner.clone();
            tasks.spawn(async move {
                let longest_call = slot
                    .lock()
                    .branches
                    .iter()
                    .map(|b| b.call_timeout_ms)
                    .max()
                    .unwrap_or(0);
                match inner.apply(&slot, Event::Recovered) {
                    Ok(steps) => {
                        inner.rearm_if_running(&slot);
                        if inner.perform(&slot, steps).await.is_ok() {
                            let settle =
                                Duration::from_millis(longest_call) + Duration::from_secs(1);
                            inner
                                .wait_for(&slot, TxnState::is_final, Instant::now() + settle)
                                .await;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "could not resume a transaction"),
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        count
    }

    pub async fn begin(
        &self,
        mode: Mode,
        timeout_ms: u64,
        txn_id: Option<String>,
    ) -> Result<String, DriverError> {
        self.start(mode, timeout_ms, txn_id, Vec::new())
            .await
            .map(|(id, _)| id)
    }

    /// Creates a transaction (with `branches` already in it, for `Execute`)
    /// and makes it durable. Returns the id and the live slot, or none when a
    /// transaction with this id already existed (an idempotent repeat).
    async fn start(
        &self,
        mode: Mode,
        timeout_ms: u64,
        txn_id: Option<String>,
        branches: Vec<BranchSpec>,
    ) -> Result<(String, Option<Arc<Slot>>), DriverError> {
        let config = &self.inner.config;
        // A repeat that asks for the default (0) matches whatever timeout
        // the transaction got, even if the default changed since.
        let asked = timeout_ms;
        let timeout_ms = validate::timeout(
            "timeout_ms",
            timeout_ms,
            config.default_timeout,
            config.max_timeout,
        )?;
        let asked_timeout = (asked != 0).then_some(timeout_ms);
        if branches.len() > config.max_branches {
            return Err(DriverError::InvalidArgument(format!(
                "{} branches; the limit is {}",
                branches.len(),
                config.max_branches
            )));
        }
        let live = self.inner.live_count();
        if live >= config.max_unfinished {
            return Err(DriverError::ResourceExhausted(format!(
                "{live} unfinished transactions, the limit (--max-unfinished); retry later"
            )));
        }
        // Branches are checked (and their endpoints normalised) first: a
        // repeated Execute is compared with what was stored.
        let mut branches = branches;
        for (n, spec) in branches.iter_mut().enumerate() {
            validate::branch(config, spec).map_err(|e| match e {
                DriverError::InvalidArgument(m) => {
                    DriverError::InvalidArgument(format!("branch {}: {m}", n + 1))
                }
                other => other,
            })?;
        }
        let client_chosen = txn_id.is_some();
        let id = match txn_id {
            Some(id) => {
                validate::client_txn_id(&id)?;
                if let Some(found) = self.find_opt(&id)? {
                    let wanted: Vec<Wanted> = branches.iter().map(Wanted::from).collect();
                    if let Found::Live(slot) = &found {
                        let patience = Instant::now() + self.inner.config.max_wait;
                        self.inner.wait_created(slot, patience).await?;
                    }
                    return repeated_begin(found, mode, asked_timeout, &wanted)
                        .map(|()| (id, None));
                }
                id
            }
            None => self.unused_server_id()?,
        };
        let now = ids::now_ms();
        let mut txn = Txn::new(id.clone(), mode, timeout_ms, now);
        for (n, spec) in branches.into_iter().enumerate() {
            txn.branches.push(spec.into_branch((n + 1).to_string()));
        }
        crate::engine::check_steps(&txn).map_err(DriverError::from)?;
        crate::engine::begin(&mut txn, now);
        let deadline_ms = txn.deadline_ms();
        let slot = Slot::traced(txn, trace::current());
        let durable = {
            // Hold the lock while the slot becomes visible and its first record
            // is queued, so no later record of it can reach the log first.
            let mut txn = slot.lock();
            match self.inner.insert(slot.clone(), &id) {
                Ok(_) => Ok(self.inner.persist(&slot, &mut txn)?),
                Err(existing) => Err(existing),
            }
        };
        let durable = match durable {
            Ok(durable) => durable,
            Err(_) if !client_chosen => {
                // A server id is never another transaction's: 80 random
                // bits make this unreachable in practice.
                return Err(DriverError::Internal(format!(
                    "server-generated id {id} is already in use; retry"
                )));
            }
            Err(existing) => {
                // Ours never became visible: compare it with the winner,
                // once the winner's first record is durable.
                let patience = Instant::now() + self.inner.config.max_wait;
                self.inner.wait_created(&existing, patience).await?;
                let ours = slot.lock().clone();
                let wanted: Vec<Wanted> = ours.branches.iter().map(Wanted::from).collect();
                return repeated_begin(Found::Live(existing), mode, asked_timeout, &wanted)
                    .map(|()| (id, None));
            }
        };
        self.inner.arm_timer(&slot, deadline_ms);
        self.inner.wait_durable_of(&slot, durable).await?;
        slot.mark_created();
        crate::crash_point!("after-begin-persisted");
        Ok((id, Some(slot)))
    }

    /// A fresh server id that names no live transaction. (A stored one
    /// would have to share its millisecond and 80 random bits: not looked
    /// up, which would cost a read of the log per transaction.)
    fn unused_server_id(&self) -> Result<String, DriverError> {
        for _ in 0..8 {
            let id = ids::new_txn_id().map_err(|e| {
                DriverError::Unavailable(format!("no random bytes for a transaction id: {e}"))
            })?;
            if self.inner.live(&id).is_none() {
                return Ok(id);
            }
        }
        Err(DriverError::Internal(
            "eight fresh transaction ids were all in use".into(),
        ))
    }

    /// Adds a branch; answers once the registration is durable.
    pub async fn register(
        &self,
        txn_id: &str,
        mut spec: BranchSpec,
        branch_id: Option<String>,
    ) -> Result<String, DriverError> {
        validate::branch(&self.inner.config, &mut spec)?;
        if let Some(id) = &branch_id {
            validate::id("branch_id", id)?;
        }
        let slot = self.live_or_final(txn_id, "RegisterBranch")?;
        let max_branches = self.inner.config.max_branches;
        let (steps, id) = self.inner.apply_with(&slot, |txn| {
            let id = branch_id.unwrap_or_else(|| txn.next_branch_id());
            if txn.branch_index(&id).is_none() && txn.branches.len() >= max_branches {
                return Err(DriverError::InvalidArgument(format!(
                    "transaction {txn_id} already has {max_branches} branches, the limit"
                )));
            }
            let branch = spec.into_branch(id.clone());
            Ok((Event::Register(Box::new(branch)), id))
        })?;
        self.inner.perform(&slot, steps).await?;
        crate::crash_point!("after-branch-persisted");
        Ok(id)
    }

    /// Runs phase 1, the decision and phase 2; answers per `wait`, or with the
    /// current state at `deadline`.
    pub async fn commit(
        &self,
        txn_id: &str,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<Outcome, DriverError> {
        let slot = match self.find(txn_id)? {
            Found::Live(slot) => slot,
            Found::Stored(txn) => {
                return Ok(outcome(&txn.id, Published::of(&txn), branch_outcomes(&txn)));
            }
            Found::Elsewhere(txn, owner) => return Err(elsewhere(&txn, owner)),
        };
        self.commit_slot(txn_id, slot, wait, deadline).await
    }

    async fn commit_slot(
        &self,
        txn_id: &str,
        slot: Arc<Slot>,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<Outcome, DriverError> {
        let steps = self.inner.apply(&slot, Event::Commit)?;
        self.inner.perform_detached(slot.clone(), steps);
        // A saga is decided only when it completes or turns back: a caller
        // that does not wait hears once it runs, durably.
        let wait = match wait {
            Wait::Decided if slot.lock().mode == Mode::Saga => Wait::Running,
            other => other,
        };
        self.wait(txn_id, &slot, wait, deadline).await
    }

    /// Aborts an undecided transaction; answers once the abort is durable.
    pub async fn rollback(
        &self,
        txn_id: &str,
        reason: String,
        deadline: Option<Instant>,
    ) -> Result<Outcome, DriverError> {
        validate::reason(&reason)?;
        let slot = match self.find(txn_id)? {
            Found::Live(slot) => slot,
            Found::Elsewhere(txn, owner) => return Err(elsewhere(&txn, owner)),
            Found::Stored(txn) if txn.state == TxnState::Aborted => {
                return Ok(outcome(&txn.id, Published::of(&txn), branch_outcomes(&txn)));
            }
            Found::Stored(txn) => {
                return Err(DriverError::FailedPrecondition(format!(
                    "transaction {} is {}, Rollback needs it undecided",
                    txn.id,
                    txn.state.name()
                )));
            }
        };
        let steps = self.inner.apply(&slot, Event::Rollback { reason })?;
        self.inner.perform_detached(slot.clone(), steps);
        self.wait(txn_id, &slot, Wait::Decided, deadline).await
    }

    /// Begin + RegisterBranch* + Commit. Returns the outcome and the branch ids.
    pub async fn execute(
        &self,
        mode: Mode,
        timeout_ms: u64,
        txn_id: Option<String>,
        branches: Vec<BranchSpec>,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<(Outcome, Vec<String>), DriverError> {
        if branches.is_empty() {
            return Err(DriverError::InvalidArgument(
                "Execute needs at least one branch".into(),
            ));
        }
        let count = branches.len();
        let (id, slot) = self.start(mode, timeout_ms, txn_id, branches).await?;
        match slot {
            Some(slot) => {
                // `start` numbered the branches 1..=count, in request order.
                let branch_ids = (1..=count).map(|n| n.to_string()).collect();
                Ok((
                    self.commit_slot(&id, slot, wait, deadline).await?,
                    branch_ids,
                ))
            }
            None => {
                // An idempotent repeat: answer with the existing transaction.
                let outcome = self.commit(&id, wait, deadline).await?;
                let branch_ids = self.get(&id)?.branches.into_iter().map(|b| b.id).collect();
                Ok((outcome, branch_ids))
            }
        }
    }

    /// The whole transaction as it is now, showing no decision before it is
    /// durable: a participant resolving an in-doubt branch from this answer
    /// must never see a commit that a crash could still turn into an abort.
    pub fn get(&self, txn_id: &str) -> Result<Txn, DriverError> {
        match self.find(txn_id)? {
            Found::Live(slot) => Ok(slot.durable_view()),
            Found::Stored(txn) | Found::Elsewhere(txn, _) => Ok(txn),
        }
    }

    pub fn writer_stats(&self) -> &WriterStats {
        self.inner.writer.stats()
    }

    /// Starts delivering webhook notifications, if endpoints are configured.
    pub fn start_notices(&self) {
        if let Some(notifier) = self.inner.notify.clone() {
            tokio::spawn(notices::deliver(self.inner.clone(), notifier));
        }
    }

    /// The changes of `txn_id` from `from_seq` on that the log holds.
    pub fn changes(
        &self,
        txn_id: &str,
        from_seq: u64,
    ) -> Result<Vec<crate::engine::Change>, DriverError> {
        Ok(self.inner.log.changes(txn_id, from_seq)?)
    }

    /// Returns once everything written to the log so far is durable (what a
    /// read just found may have been written but not yet synced).
    pub async fn barrier(&self) -> Result<(), DriverError> {
        if self.inner.writer.stats().all_synced() {
            return Ok(());
        }
        let durable = self.inner.writer.submit(crate::store::Write::Barrier);
        self.inner.wait_durable(durable).await
    }

    /// Changes to `true` when the coordinator starts stopping.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// A place for one more watch stream, if the limit allows.
    pub fn watch_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.watches.clone().try_acquire_owned().ok()
    }

    /// The live feed of durable changes.
    pub fn feed(&self) -> &Arc<crate::store::feed::Feed> {
        &self.inner.feed
    }

    /// Deletes finished transactions past the retention time; returns how many.
    pub fn collect_finished(&self) -> Result<usize, DriverError> {
        let retention = self.inner.config.retention.as_millis() as u64;
        let before = ids::now_ms().saturating_sub(retention);
        let mut total = 0;
        loop {
            let n = self.inner.log.collect_finished(before, 1_000)?;
            total += n;
            if n < 1_000 {
                return Ok(total);
            }
        }
    }

    /// Resolves to the reason once the log has failed and the coordinator must stop.
    pub async fn fatal(&self) -> String {
        let mut fatal = self.inner.fatal.subscribe();
        match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "driver dropped".to_string(),
        }
    }

    /// Answers waiting clients now; new work still runs.
    /// Why the log failed, if it has.
    pub fn fatal_now(&self) -> Option<String> {
        self.inner.fatal.borrow().clone()
    }

    /// Participant channels held now.
    pub fn participant_channels(&self) -> usize {
        self.inner.participants.channel_count()
    }

    /// Closes participant channels unused for the idle timeout.
    pub fn evict_idle_channels(&self) -> usize {
        self.inner.participants.evict_idle()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    pub fn begin_shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Writes everything queued and stops the log writer. Unfinished
    /// transactions stay in the log for recovery.
    pub fn close(&self) {
        self.inner.stopping.send_replace(true);
        self.inner.writer.close();
    }

    fn find_opt(&self, txn_id: &str) -> Result<Option<Found>, DriverError> {
        if let Some(slot) = self.inner.live(txn_id) {
            return Ok(Some(Found::Live(slot)));
        }
        match self.inner.log.get(txn_id)? {
            None => Ok(None),
            Some(txn) => stored(&self.inner, txn).map(Some),
        }
    }

    fn find(&self, txn_id: &str) -> Result<Found, DriverError> {
        validate::id("txn_id", txn_id)?;
        self.find_opt(txn_id)?
            .ok_or_else(|| DriverError::NotFound(txn_id.to_string()))
    }

    /// The live slot, or FAILED_PRECONDITION for a finished transaction.
    fn live_or_final(&self, txn_id: &str, op: &str) -> Result<Arc<Slot>, DriverError> {
        match self.find(txn_id)? {
            Found::Live(slot) => Ok(slot),
            Found::Elsewhere(txn, owner) => Err(elsewhere(&txn, owner)),
            Found::Stored(txn) => Err(DriverError::FailedPrecondition(format!(
                "transaction {} is {}, {op} needs it to be ACTIVE",
                txn.id,
                txn.state.name()
            ))),
        }
    }

    async fn wait(
        &self,
        txn_id: &str,
        slot: &Slot,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<Outcome, DriverError> {
        let max = Instant::now() + self.inner.config.max_wait;
        let deadline = deadline.map_or(max, |d| d.min(max));
        let done: fn(TxnState) -> bool = match wait {
            Wait::Running => |state| state.rank() >= 1,
            Wait::Decided => TxnState::is_decided,
            Wait::Final => TxnState::is_final,
        };
        let published = self.inner.wait_for(slot, done, deadline).await;
        if slot.is_fenced() {
            return Err(runtime::moved(txn_id));
        }
        if let Some(reason) = self.inner.fatal.borrow().clone() {
            return Err(DriverError::Unavailable(format!(
                "transaction log failed: {reason}"
            )));
        }
        let branches = branch_outcomes(&slot.lock());
        Ok(outcome(txn_id, published, branches))
    }
}

/// How long before a caller's deadline to answer, so the answer arrives in time.
pub fn answer_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(100))
}
