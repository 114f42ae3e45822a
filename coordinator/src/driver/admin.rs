//! What operators do: list and inspect transactions, retry now, force an
//! outcome, resolve a dead branch by hand, read the audit trail, and stats.
//! Every action that changes something is written to the audit log (durably)
//! before it is answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::driver::slot::Slot;
use crate::driver::{Driver, DriverError, Found, Outcome, Wait, elsewhere, ids, validate};
use crate::engine::{Event, Mode, Txn, TxnState};
use crate::store::{AuditEntry, StoreError, Write};

/// Which transactions `list` returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Any of these states; empty for all.
    pub states: Vec<TxnState>,
    pub mode: Option<Mode>,
    pub stuck_only: bool,
    /// Only transactions created at least this long ago.
    pub older_than_ms: Option<u64>,
    /// Only transactions with a branch at this endpoint.
    pub participant: Option<String>,
    pub newest_first: bool,
    /// Page size.
    pub limit: usize,
    /// Continue after this id (the previous page's token).
    pub after: Option<String>,
}

impl ListFilter {
    fn matches(&self, txn: &Txn, now_ms: u64) -> bool {
        (self.states.is_empty() || self.states.contains(&txn.state))
            && self.mode.is_none_or(|m| m == txn.mode)
            && (!self.stuck_only || txn.stuck_since_ms.is_some())
            && self
                .older_than_ms
                .is_none_or(|age| now_ms.saturating_sub(txn.created_at_ms) >= age)
            && self.participant.as_ref().is_none_or(|p| {
                txn.branches
                    .iter()
                    .any(|b| validate::same_endpoint(&b.participant, p))
            })
    }

    /// Whether only unfinished transactions can match (all live in memory).
    fn unfinished_only(&self) -> bool {
        self.stuck_only || (!self.states.is_empty() && self.states.iter().all(|s| !s.is_final()))
    }
}

/// One page of `list`.
#[derive(Clone, Debug)]
pub struct Page {
    pub txns: Vec<Txn>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Numbers for `arbiter stats`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Unfinished transactions by state.
    pub unfinished: Vec<(TxnState, u64)>,
    pub committed_since_start: u64,
    pub aborted_since_start: u64,
    pub stuck: u64,
    pub oldest_unfinished_age_ms: u64,
    /// Branches waiting for a scheduled retry.
    pub retry_queue_depth: u64,
    pub log_batches: u64,
    pub log_records: u64,
    pub log_bytes: u64,
    pub log_damaged_reads: u64,
}

/// How much of the log one `list` call reads at most before it hands back a
/// page token (so a selective filter over a big log stays bounded).
const SCAN_BUDGET: usize = 20_000;

static AUDIT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Driver {
    /// Transactions matching `filter`, one page at a time, in id (= creation) order.
    pub fn list(&self, filter: &ListFilter) -> Result<Page, DriverError> {
        let limit = filter.limit.clamp(1, 1_000);
        let now = ids::now_ms();
        if filter.unfinished_only() {
            let mut txns: Vec<Txn> = self
                .unfinished_everywhere()?
                .into_iter()
                .filter(|txn| filter.matches(txn, now))
                .filter(|txn| match (&filter.after, filter.newest_first) {
                    (None, _) => true,
                    (Some(after), false) => txn.id.as_str() > after.as_str(),
                    (Some(after), true) => txn.id.as_str() < after.as_str(),
                })
                .collect();
            txns.sort_by(|a, b| a.id.cmp(&b.id));
            if filter.newest_first {
                txns.reverse();
            }
            let more = txns.len() > limit;
            txns.truncate(limit);
            let next = more.then(|| txns.last().map(|t| t.id.clone())).flatten();
            return Ok(Page { txns, next });
        }
        let mut txns = Vec::new();
        let mut after = filter.after.clone();
        let mut scanned = 0;
        loop {
            let batch = self
                .inner
                .log
                .scan(after.as_deref(), filter.newest_first, 500)?;
            let exhausted = batch.len() < 500;
            for stored in batch {
                scanned += 1;
                after = Some(stored.id.clone());
                let txn = match self.inner.live(&stored.id) {
                    Some(slot) => slot.durable_view(),
                    None => stored,
                };
                if filter.matches(&txn, now) {
                    txns.push(txn);
                    if txns.len() == limit {
                        return Ok(Page { txns, next: after });
                    }
                }
            }
            if exhausted {
                return Ok(Page { txns, next: None });
            }
            if scanned >= SCAN_BUDGET {
                return Ok(Page { txns, next: after });
            }
        }
    }

    /// Runs every pending retry of one transaction now, backoff reset.
    pub async fn retry_now(&self, txn_id: &str, caller: &str) -> Result<Txn, DriverError> {
        let slot = self.live_for(txn_id, "RetryNow")?;
        let steps = self.inner.apply(&slot, Event::RetryNow)?;
        self.inner.perform_detached(slot.clone(), steps);
        self.audit_write("retry-now", txn_id, "", "", caller, "retrying now")
            .await?;
        Ok(slot.durable_view())
    }

    /// [`Driver::retry_now`] for every stuck transaction; returns their ids.
    pub async fn retry_all_stuck(&self, caller: &str) -> Result<Vec<String>, DriverError> {
        let mut retried = Vec::new();
        for slot in self.inner.live_slots() {
            let id = {
                let txn = slot.lock();
                if txn.stuck_since_ms.is_none() {
                    continue;
                }
                txn.id.clone()
            };
            if let Ok(steps) = self.inner.apply(&slot, Event::RetryNow) {
                self.inner.perform_detached(slot, steps);
                retried.push(id);
            }
        }
        retried.sort();
        let result = format!("retrying {} stuck transaction(s)", retried.len());
        self.audit_write("retry-all-stuck", "", "", "", caller, &result)
            .await?;
        Ok(retried)
    }

    /// Forces the outcome of an undecided transaction. Abort is always
    /// allowed; commit only when every branch is prepared.
    pub async fn force_outcome(
        &self,
        txn_id: &str,
        commit: bool,
        reason: &str,
        caller: &str,
    ) -> Result<Outcome, DriverError> {
        let reason = required_reason(reason)?;
        let slot = self.live_for(txn_id, "ForceOutcome")?;
        let event = if commit {
            Event::ForceCommit {
                reason: reason.clone(),
            }
        } else {
            Event::ForceAbort {
                reason: reason.clone(),
            }
        };
        let steps = self.inner.apply(&slot, event)?;
        self.inner.perform_detached(slot.clone(), steps);
        let outcome = self
            .wait(
                txn_id,
                &slot,
                Wait::Decided,
                Some(Instant::now() + self.inner.config.max_wait),
            )
            .await?;
        let action = if commit {
            "force-commit"
        } else {
            "force-abort"
        };
        self.audit_write(action, txn_id, "", &reason, caller, outcome.state.name())
            .await?;
        Ok(outcome)
    }

    /// Marks one branch of a decided transaction finished by hand.
    pub async fn resolve_branch(
        &self,
        txn_id: &str,
        branch_id: &str,
        committed: bool,
        reason: &str,
        caller: &str,
    ) -> Result<Txn, DriverError> {
        let reason = required_reason(reason)?;
        let slot = self.live_for(txn_id, "ResolveBranch")?;
        let as_word = if committed {
            "committed"
        } else {
            "rolled back"
        };
        let note = format!("resolved by hand as {as_word} by {caller}: {reason}");
        let (steps, ()) = self.inner.apply_with(&slot, |txn| {
            let branch =
                txn.branch_index(branch_id)
                    .ok_or_else(|| DriverError::BranchNotFound {
                        txn: txn_id.to_string(),
                        branch: branch_id.to_string(),
                    })?;
            Ok((
                Event::ResolveBranch {
                    branch,
                    committed,
                    note,
                },
                (),
            ))
        })?;
        self.inner.perform(&slot, steps).await?;
        let action = if committed {
            "resolve-branch-committed"
        } else {
            "resolve-branch-rolled-back"
        };
        let view = slot.durable_view();
        let outcome = if view.mixed_branches().is_empty() {
            view.state.name().to_string()
        } else {
            format!("{} (heuristic mixed outcome)", view.state.name())
        };
        self.audit_write(action, txn_id, branch_id, &reason, caller, &outcome)
            .await?;
        Ok(view)
    }

    /// The latest audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, DriverError> {
        Ok(self.inner.log.audit(limit.clamp(1, 10_000))?)
    }

    /// This node, its unfinished transactions, and the nodes its store
    /// knows of (`None` for a store only one coordinator uses).
    pub fn nodes(
        &self,
    ) -> Result<
        (
            crate::config::NodeIdentity,
            u64,
            Option<Vec<crate::store::NodeInfo>>,
        ),
        DriverError,
    > {
        let unfinished = self.stats().unfinished.iter().map(|(_, n)| n).sum();
        let known = self.inner.log.nodes()?;
        Ok((self.inner.config.node.clone(), unfinished, known))
    }

    /// Every unfinished transaction: this node's live ones, and in a
    /// cluster those the other nodes drive too (as the store holds them).
    fn unfinished_everywhere(&self) -> Result<Vec<Txn>, DriverError> {
        let mut txns: Vec<Txn> = self
            .inner
            .live_slots()
            .iter()
            .map(|slot| slot.durable_view())
            .collect();
        if self.inner.log.shared() {
            let here: std::collections::HashSet<String> =
                txns.iter().map(|t| t.id.clone()).collect();
            let stored = self.inner.log.unfinished()?;
            txns.extend(stored.into_iter().filter(|t| !here.contains(&t.id)));
        }
        Ok(txns)
    }

    /// The owner node of each of `txns` in a cluster (none for final ones,
    /// or with a single coordinator).
    pub fn owners_of(&self, txns: &[Txn]) -> Result<HashMap<String, String>, DriverError> {
        if !self.inner.log.shared() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = txns
            .iter()
            .filter(|t| !t.state.is_final())
            .map(|t| t.id.clone())
            .collect();
        Ok(self.inner.log.owners(&ids)?.into_iter().collect())
    }

    /// [`Driver::stats`], with the unfinished transactions of every node
    /// in a cluster.
    pub fn cluster_stats(&self) -> Result<Stats, DriverError> {
        Ok(self.stats_of(self.unfinished_everywhere()?))
    }

    /// This node's numbers.
    /// Transactions finished here so far, by how long they took.
    pub fn latencies(&self) -> [u64; super::latency::BUCKETS] {
        self.inner.latencies.snapshot()
    }

    pub fn stats(&self) -> Stats {
        let live = self
            .inner
            .live_slots()
            .iter()
            .map(|slot| slot.durable_view())
            .collect();
        self.stats_of(live)
    }

    fn stats_of(&self, txns: Vec<Txn>) -> Stats {
        let now = ids::now_ms();
        let mut stats = Stats {
            committed_since_start: self.inner.committed.load(Ordering::Relaxed),
            aborted_since_start: self.inner.aborted.load(Ordering::Relaxed),
            log_batches: self.writer_stats().batches.load(Ordering::Relaxed),
            log_records: self.writer_stats().records.load(Ordering::Relaxed),
            log_bytes: self.writer_stats().bytes.load(Ordering::Relaxed),
            log_damaged_reads: self.inner.log.damaged_reads(),
            ..Stats::default()
        };
        let mut counts = [0u64; 4];
        let order = [
            TxnState::Active,
            TxnState::Preparing,
            TxnState::Committing,
            TxnState::Aborting,
        ];
        for txn in txns {
            if let Some(i) = order.iter().position(|s| *s == txn.state) {
                counts[i] += 1;
            }
            if txn.state.is_final() {
                continue;
            }
            stats.stuck += u64::from(txn.stuck_since_ms.is_some());
            stats.oldest_unfinished_age_ms = stats
                .oldest_unfinished_age_ms
                .max(now.saturating_sub(txn.created_at_ms));
            stats.retry_queue_depth += txn
                .branches
                .iter()
                .filter(|b| b.next_retry_at_ms.is_some())
                .count() as u64;
        }
        stats.unfinished = order.into_iter().zip(counts).collect();
        stats
    }

    /// Whether several coordinator nodes share the store.
    pub fn is_shared(&self) -> bool {
        self.inner.log.shared()
    }

    fn live_for(&self, txn_id: &str, op: &str) -> Result<Arc<Slot>, DriverError> {
        match self.find(txn_id)? {
            Found::Live(slot) => Ok(slot),
            Found::Elsewhere(txn, owner) => Err(elsewhere(&txn, owner)),
            Found::Stored(txn) => Err(DriverError::FailedPrecondition(format!(
                "transaction {} is already {}; {op} needs an unfinished transaction",
                txn.id,
                txn.state.name()
            ))),
        }
    }

    /// Records in the audit log what opening the log did that an operator
    /// must be able to trace later: an upgrade, accepted damage.
    pub async fn audit_open(&self, opened: &crate::store::OpenReport) -> Result<(), DriverError> {
        if let Some(up) = &opened.upgraded {
            let result = format!(
                "format 1 -> {}: {} transactions, {} audit entries",
                crate::store::record::FORMAT,
                up.transactions,
                up.audit_entries
            );
            self.audit_write(
                "upgrade-log",
                "",
                "",
                "binary upgrade",
                "arbiter serve",
                &result,
            )
            .await?;
        }
        if let Some(damage) = &opened.accepted_damage {
            let reason = format!("started with --accept-damaged-log despite:{damage}");
            self.audit_write(
                "accept-damaged-log",
                "",
                "",
                &reason,
                "arbiter serve",
                "started",
            )
            .await?;
        }
        Ok(())
    }

    async fn audit_write(
        &self,
        action: &str,
        txn_id: &str,
        branch_id: &str,
        reason: &str,
        caller: &str,
        result: &str,
    ) -> Result<(), DriverError> {
        let seq = AUDIT_SEQ.fetch_add(1, Ordering::Relaxed) | (u64::from(fastrand::u32(..)) << 32);
        let entry = AuditEntry {
            at_ms: ids::now_ms(),
            seq,
            action: action.to_string(),
            txn_id: txn_id.to_string(),
            branch_id: branch_id.to_string(),
            reason: reason.to_string(),
            caller: caller.to_string(),
            result: result.to_string(),
        };
        let durable = self.inner.writer.submit(Write::Audit(entry));
        durable
            .await
            .unwrap_or(Err(StoreError::Closed))
            .map_err(DriverError::from)
    }
}

fn required_reason(reason: &str) -> Result<String, DriverError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(DriverError::InvalidArgument(
            "a reason is required for this action (it goes into the audit log)".into(),
        ));
    }
    validate::reason(reason)?;
    Ok(reason.to_string())
}
