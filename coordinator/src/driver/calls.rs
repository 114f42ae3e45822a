//! Where the runtime meets the clock and the participants: each branch call
//! in a task of its own, its answer fed back as an event; retries after
//! their backoff (or an HTTP participant's `Retry-After`); transaction
//! timeouts.

use std::sync::Arc;
use std::time::Duration;

use crate::driver::participants::CallSpec;
use crate::driver::runtime::Inner;
use crate::driver::slot::Slot;
use crate::driver::{DriverError, ids};
use crate::engine::{self, CallKind, Event, TxnState};

impl Inner {
    pub(super) fn spawn_call(self: &Arc<Self>, slot: Arc<Slot>, spec: CallSpec) {
        let inner = self.clone();
        let span = tracing::debug_span!("branch_call", txn = %spec.txn_id, branch = %spec.branch_id,
            call = spec.call.rpc_name(spec.mode), attempt = spec.attempt, traceparent = %spec.traceparent);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let event = match spec.call {
                    CallKind::Prepare => {
                        let (result, output) = inner.participants.prepare(&spec).await;
                        if spec.branch == 0 && spec.attempt == 1 {
                            crate::crash_point!("after-some-phase1-sent");
                        }
                        Event::Voted {
                            branch: spec.branch,
                            result,
                            output,
                        }
                    }
                    CallKind::Commit | CallKind::Rollback => {
                        match inner.participants.finish(&spec).await {
                            Ok(output) => {
                                if spec.branch == 0 && spec.call == CallKind::Commit {
                                    crate::crash_point!("after-some-phase2-sent");
                                }
                                if spec.branch == 0 && spec.call == CallKind::Rollback {
                                    crate::crash_point!("after-some-rollbacks-sent");
                                }
                                if spec.branch > 0
                                    && spec.call == CallKind::Rollback
                                    && spec.mode == engine::Mode::Saga
                                {
                                    crate::crash_point!("saga-after-some-compensations");
                                }
                                Event::Acked {
                                    branch: spec.branch,
                                    output,
                                }
                            }
                            Err(error) => {
                                tracing::debug!(txn = %spec.txn_id, branch = %spec.branch_id, %error, "phase-2 call failed; will retry");
                                Event::Phase2Failed {
                                    branch: spec.branch,
                                    error,
                                }
                            }
                        }
                    }
                };
                inner.step_and_perform(&slot, event).await;
            },
            span,
        ));
    }

    pub(super) fn spawn_retry(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        branch: usize,
        call: CallKind,
        seq: u32,
        delay: Duration,
    ) {
        crate::metrics::retry(call.name());
        // An HTTP participant's Retry-After, within the backoff cap.
        let hint = {
            let txn = slot.lock();
            txn.branches
                .get(branch)
                .filter(|b| b.protocol == engine::Protocol::HttpJson)
                .and_then(|b| self.participants.http.take_hint(&txn.id, &b.id))
        };
        let delay = hint.map_or(delay, |hint| hint.min(self.config.retry_max).max(delay));
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner
                .step_and_perform(&slot, Event::RetryDue { branch, call, seq })
                .await;
        });
    }

    /// Arms the transaction timeout of a new transaction.
    pub fn arm_timer(self: &Arc<Self>, slot: &Arc<Slot>, deadline_ms: u64) {
        let inner = self.clone();
        let timer_slot = slot.clone();
        let wait = Duration::from_millis(deadline_ms.saturating_sub(ids::now_ms()));
        let handle = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            inner.step_and_perform(&timer_slot, Event::TimedOut).await;
        });
        *slot.timer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.abort_handle());
    }

    /// Arms the timeout again of a saga found RUNNING by recovery or a
    /// takeover (a 2PC transaction is never undecided after `Recovered`).
    pub fn rearm_if_running(self: &Arc<Self>, slot: &Arc<Slot>) {
        let (running, deadline_ms) = {
            let txn = slot.lock();
            (
                txn.mode == crate::engine::Mode::Saga && txn.state == TxnState::Preparing,
                txn.deadline_ms(),
            )
        };
        if running {
            self.arm_timer(slot, deadline_ms);
        }
    }

    pub async fn step_and_perform(self: &Arc<Self>, slot: &Arc<Slot>, event: Event) {
        match self.apply(slot, event) {
            Ok(steps) => {
                let _ = self.perform(slot, steps).await;
            }
            Err(DriverError::Moved(_)) => {} // a late answer for a transaction let go of
            Err(e) => tracing::warn!(error = %e, "internal event refused"),
        }
    }
}
