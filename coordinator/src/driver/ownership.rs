//! Which node drives a transaction, when several coordinators share one
//! store (PostgreSQL).
//!
//! A node drives only the transactions it owns in the store. [`Found`] says
//! where a transaction asked for is: live here, final in the log, or live on
//! another node (`Elsewhere`, for the server to forward to). One whose owner
//! is gone is taken over on the spot. [`Driver::take_over`] claims the
//! transactions of dead nodes in the background and resumes them as a
//! restart would (undecided → abort, decided → phase 2 again).
//!
//! A write the store refuses because the transaction was taken over
//! ([`StoreError::Fenced`]) makes this node let go of it at once
//! ([`Inner::lose`]): its timer and retries stop, its waiting callers are
//! answered UNAVAILABLE, and nothing more is sent or acknowledged for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::driver::runtime::Inner;
use crate::driver::slot::Slot;
use crate::driver::{Driver, DriverError, validate};
use crate::engine::{Event, Txn};
use crate::store::{Owner, TakenOver};

/// Transactions claimed per round of [`Driver::take_over`].
const CLAIM_BATCH: usize = 256;

/// A live transaction, the stored record of a finished one, or one another
/// live node drives.
///
/// **Stored and unowned ⇒ final.** Recovery and takeover make every
/// unfinished transaction this node owns live before it is served, and a
/// transaction stays live until its final state is in the log; so one found
/// only in the log is final, or owned by another node (which a shared store
/// says). [`stored`] checks that rule rather than trusting it.
pub enum Found {
    Live(Arc<Slot>),
    Stored(Txn),
    Elsewhere(Txn, Owner),
}

/// Applies the rule above to a transaction read from the log.
pub fn stored(inner: &Arc<Inner>, txn: Txn) -> Result<Found, DriverError> {
    if txn.state.is_final() {
        return Ok(Found::Stored(txn));
    }
    // Begun (or taken over) here between the look-up in memory and the read.
    if let Some(slot) = inner.live(&txn.id) {
        return Ok(Found::Live(slot));
    }
    if !inner.log.shared() {
        return Err(DriverError::Internal(format!(
            "transaction {} is unfinished in the log but not being driven",
            txn.id
        )));
    }
    match inner.log.owner(&txn.id)? {
        Some(owner) if owner.mine => Err(being_taken_over(&txn.id)),
        Some(owner) if owner.alive => Ok(Found::Elsewhere(txn, owner)),
        // Its owner is gone (or it just finished): take it over, or learn
        // who did.
        _ => {
            let id = txn.id.clone();
            if let Some(taken) = inner.log.take_over(1, Some(&id))?.pop() {
                crate::metrics::taken_over(1);
                tracing::info!(txn = %id, from = %taken.from, "took over a transaction of a node that is gone");
                return adopt(inner, taken)
                    .map(Found::Live)
                    .ok_or_else(|| being_taken_over(&id));
            }
            match inner.log.get(&id)? {
                Some(txn) if txn.state.is_final() => Ok(Found::Stored(txn)),
                Some(txn) => match inner.log.owner(&id)? {
                    Some(owner) if owner.alive && !owner.mine => Ok(Found::Elsewhere(txn, owner)),
                    _ => Err(being_taken_over(&id)),
                },
                None => Err(DriverError::NotFound(id)),
            }
        }
    }
}

fn being_taken_over(txn_id: &str) -> DriverError {
    DriverError::Unavailable(format!(
        "transaction {txn_id} is changing hands between coordinator nodes; retry"
    ))
}

/// Makes a transaction this node just claimed live under its new claim,
/// and resumes it as a restart would. A slot of it still live here is left
/// over from before it was taken from this node: let go of (its records,
/// under the old claim, are refused).
/// `None` if its changes cannot be read now: it stays owned here, and the
/// look for owned but idle transactions tries again.
fn adopt(inner: &Arc<Inner>, taken: TakenOver) -> Option<Arc<Slot>> {
    let TakenOver { mut txn, claim, .. } = taken;
    validate::normalise_stored(&mut txn);
    if let Err(e) = inner.continue_numbering(&mut txn) {
        tracing::warn!(txn = %txn.id, error = %e, "cannot read the changes of a transaction taken over; trying again later");
        return None;
    }
    let id = txn.id.clone();
    let slot = Slot::recovered(txn, claim);
    while let Err(live) = inner.insert(slot.clone(), &id) {
        if live.claim() == claim && !live.is_fenced() {
            return Some(live); // adopted already, under this very claim
        }
        inner.lose(&live);
    }
    match inner.apply(&slot, Event::Recovered) {
        Ok(steps) => {
            inner.rearm_if_running(&slot);
            inner.perform_detached(slot.clone(), steps)
        }
        Err(e) => {
            tracing::error!(txn = %id, error = %e, "could not resume a transaction taken over")
        }
    }
    Some(slot)
}

impl Driver {
    /// Claims the unfinished transactions of nodes that are gone (their
    /// lease ran out, or they joined again since), a batch at a time, and
    /// resumes them here. Also lets go of transactions this node lost while
    /// its lease had lapsed. Returns how many it took over.
    pub async fn take_over(&self) -> Result<usize, DriverError> {
        if !self.inner.log.shared() || self.is_stopping() {
            return Ok(0);
        }
        self.let_go_of_lost().await?;
        let mut total = 0;
        loop {
            let inner = self.inner.clone();
            let taken = tokio::task::spawn_blocking(move || inner.log.take_over(CLAIM_BATCH, None))
                .await
                .map_err(|e| DriverError::Internal(format!("takeover task: {e}")))??;
            let claimed = taken.len();
            if claimed == 0 {
                return Ok(total);
            }
            total += self.adopt_all(taken);
            if claimed < CLAIM_BATCH || self.is_stopping() {
                return Ok(total);
            }
        }
    }

    fn adopt_all(&self, taken: Vec<TakenOver>) -> usize {
        let mut from: BTreeMap<String, usize> = BTreeMap::new();
        let adopted = taken.len();
        for taken in taken {
            *from.entry(taken.from.clone()).or_default() += 1;
            adopt(&self.inner, taken);
        }
        crate::metrics::taken_over(adopted as u64);
        for (node, count) in from {
            let node = if node.is_empty() {
                "(none: an older log)".to_string()
            } else {
                node
            };
            tracing::warn!(from = %node, count, "took over the unfinished transactions of a node that is gone");
        }
        adopted
    }

    /// After this node's lease lapsed (it was paused, or cut off from the
    /// store), others may have taken some of its transactions: check each
    /// live one and let go of those it lost. Done again until a check
    /// completes.
    async fn let_go_of_lost(&self) -> Result<(), DriverError> {
        let lapses = self.inner.log.lease_lapses();
        if self.inner.lapses_seen.load(Ordering::Acquire) == lapses {
            return Ok(());
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            for slot in inner.live_slots() {
                let id = {
                    let txn = slot.lock();
                    if txn.state.is_final() {
                        continue;
                    }
                    txn.id.clone()
                };
                match inner.log.owner(&id)? {
                    // Still ours, under the claim this copy holds.
                    Some(owner) if owner.mine && owner.claim == slot.claim() => {}
                    // Just finished here, or still being begun here.
                    None if slot.lock().state.is_final() || !slot.is_created() => {}
                    // Another node has it, this copy is from an older claim,
                    // or another node finished it.
                    _ => inner.lose(&slot),
                }
            }
            inner.lapses_seen.store(lapses, Ordering::Release);
            Ok::<_, DriverError>(())
        })
        .await
        .map_err(|e| DriverError::Internal(format!("ownership check task: {e}")))?
    }

    /// Resumes transactions this node owns but does not drive: a takeover
    /// that stopped between claiming and loading (the store went away).
    pub async fn drive_idle_owned(&self) -> Result<usize, DriverError> {
        if !self.inner.log.shared() || self.is_stopping() {
            return Ok(0);
        }
        let inner = self.inner.clone();
        let idle = tokio::task::spawn_blocking(move || {
            let live = |id: &str, claim: i64| inner.live(id).is_some_and(|s| s.claim() == claim);
            inner.log.owned_but_idle(&live)
        })
        .await
        .map_err(|e| DriverError::Internal(format!("ownership check task: {e}")))??;
        let count = idle.len();
        for taken in idle {
            tracing::warn!(txn = %taken.txn.id, "resuming a transaction this node owns but was not driving");
            adopt(&self.inner, taken);
        }
        Ok(count)
    }

    /// Loads the transactions this node recovers at start: in a shared
    /// store, those it claims (its own from before a restart, and any dead
    /// node's); otherwise every unfinished one.
    pub(super) fn claim_at_start(&self) -> Result<Vec<(Txn, i64)>, DriverError> {
        let mut out = Vec::new();
        loop {
            let taken = self.inner.log.take_over(CLAIM_BATCH, None)?;
            let claimed = taken.len();
            out.extend(taken.into_iter().map(|t| (t.txn, t.claim)));
            if claimed < CLAIM_BATCH {
                return Ok(out);
            }
        }
    }

    /// The node driving `txn` (this one if live here), for readers.
    pub fn owner_node(&self, txn: &Txn) -> Result<String, DriverError> {
        if txn.state.is_final() || !self.inner.log.shared() {
            return Ok(String::new());
        }
        if self.inner.live(&txn.id).is_some() {
            return Ok(self.inner.config.node.id.clone());
        }
        Ok(self
            .inner
            .log
            .owner(&txn.id)?
            .map(|o| o.node_id)
            .unwrap_or_default())
    }
}

impl Inner {
    /// Lets go of the live copy of `txn_id` held under `claim`, if any.
    pub fn lose_copy(&self, txn_id: &str, claim: i64) {
        if let Some(slot) = self.live(txn_id)
            && slot.claim() == claim
        {
            self.lose(&slot);
        }
    }

    /// Lets go of a transaction another node took over: stops its timer and
    /// retries, takes it out of memory and wakes its waiting callers, who
    /// are answered UNAVAILABLE. Nothing more is written or sent for it.
    pub fn lose(&self, slot: &Arc<Slot>) {
        if slot.fenced.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = slot.lock().id.clone();
        tracing::warn!(txn = %id, "lost this transaction: another coordinator node took it over; \
            nothing more is sent or acknowledged for it here");
        crate::metrics::fenced_write();
        self.remove(slot, &id);
        slot.published.send_modify(|_| {});
    }
}
