//! One live transaction in memory ([`Slot`]) and what waiting clients may
//! see of it ([`Published`]): only what is durable.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::engine::{Txn, TxnState};
use crate::store::Written;

/// The state waiting clients see. Only published once what led to it is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub state: TxnState,
    pub reason: String,
    pub mixed_branches: Vec<String>,
}

impl Published {
    /// What readers may learn of `txn` as it is.
    pub fn of(txn: &Txn) -> Published {
        Published {
            state: txn.state,
            reason: txn.reason.clone(),
            mixed_branches: txn
                .mixed_branches()
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }
}

/// One live (unfinished, or just finished) transaction.
pub struct Slot {
    txn: Mutex<Txn>,
    pub(super) published: watch::Sender<Published>,
    /// The task that fires `TimedOut`; stopped when the transaction is final.
    pub(super) timer: Mutex<Option<AbortHandle>>,
    /// The W3C trace id its participant calls carry.
    pub(super) trace_id: String,
    /// What the log holds of it, so each record carries only what changed.
    /// Locked only while `txn` is locked.
    pub(super) written: Mutex<Written>,
    /// Another coordinator node took it over; this one let go of it.
    pub(super) fenced: std::sync::atomic::AtomicBool,
    /// Its first record is durable (always, for one read back from the log).
    pub(super) created: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// A transaction read back from the log, held under `claim` (see
    /// [`Written`]; 0 on a store only this coordinator uses).
    pub fn recovered(txn: Txn, claim: i64) -> Arc<Slot> {
        let written = Written::claimed(&txn, claim);
        let slot = Slot::with(txn, None, written);
        slot.created
            .store(true, std::sync::atomic::Ordering::Release);
        slot
    }

    /// A new transaction whose calls continue trace `trace_id` (a new trace
    /// if `None`); nothing of it is in the log yet.
    pub fn traced(txn: Txn, trace_id: Option<String>) -> Arc<Slot> {
        Slot::with(txn, trace_id, Written::default())
    }

    fn with(txn: Txn, trace_id: Option<String>, written: Written) -> Arc<Slot> {
        let published = Published::of(&txn);
        Arc::new(Slot {
            txn: Mutex::new(txn),
            published: watch::Sender::new(published),
            timer: Mutex::new(None),
            trace_id: trace_id.unwrap_or_else(super::trace::new_trace_id),
            written: Mutex::new(written),
            fenced: Default::default(),
            created: Default::default(),
        })
    }

    /// The claim its records are written under (see [`Written`]).
    pub fn claim(&self) -> i64 {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claim()
    }

    /// Whether its first record is durable.
    pub fn is_created(&self) -> bool {
        self.created.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Its first record is durable: says so, and wakes those waiting for it.
    pub(super) fn mark_created(&self) {
        self.created
            .store(true, std::sync::atomic::Ordering::Release);
        self.published.send_modify(|_| {});
    }

    /// Whether this node let go of it (another took it over).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn lock(&self) -> MutexGuard<'_, Txn> {
        self.txn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transaction with its state as published: a decision whose record
    /// is not yet durable is not shown.
    pub fn durable_view(&self) -> Txn {
        let mut txn = self.lock().clone();
        let published = self.published.borrow();
        if published.state.rank() < txn.state.rank() {
            txn.state = published.state;
            txn.reason = published.reason.clone();
            if !txn.state.is_decided() {
                txn.decided_at_ms = None;
            }
            if !txn.state.is_final() {
                txn.finished_at_ms = None;
            }
        }
        txn
    }

    pub(super) fn publish(&self, next: Published) {
        // States only move forward; a late publish of an older step is dropped.
        self.published.send_if_modified(|current| {
            if next.state.rank() > current.state.rank() {
                *current = next;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Mode;

    #[test]
    fn readers_never_see_a_decision_before_it_is_published() {
        let mut txn = Txn::new("t".into(), Mode::TwoPhase, 1_000, 5);
        txn.state = TxnState::Preparing;
        let slot = Slot::traced(txn, None);
        {
            // The engine decided; the decision record is still being written.
            let mut txn = slot.lock();
            txn.state = TxnState::Committing;
            txn.decided_at_ms = Some(9);
        }
        let view = slot.durable_view();
        assert_eq!(
            (view.state, view.decided_at_ms),
            (TxnState::Preparing, None)
        );

        // Durable now: published, and visible.
        slot.publish(Published {
            state: TxnState::Committing,
            reason: String::new(),
            mixed_branches: Vec::new(),
        });
        let view = slot.durable_view();
        assert_eq!(
            (view.state, view.decided_at_ms),
            (TxnState::Committing, Some(9))
        );

        // A late publish of an older state never moves it back.
        slot.publish(Published {
            state: TxnState::Preparing,
            reason: String::new(),
            mixed_branches: Vec::new(),
        });
        assert_eq!(slot.durable_view().state, TxnState::Committing);
    }
}
