//! A participant for tests that records every call and behaves as its payload
//! says, so one participant serves every scenario.
//!
//! Payloads (UTF-8):
//! - `yes` (or empty): vote YES; `read-only`: vote READ_ONLY;
//! - `no:<reason>`: vote NO; `reject:<reason>`: answer FAILED_PRECONDITION;
//! - `no-long:<bytes>`: vote NO with a reason that long;
//! - `unavailable`: phase 1 answers UNAVAILABLE every time;
//! - `slow:<ms>`: wait that long in phase 1, then vote YES;
//! - `result:<text>`: vote YES with the result `<text>`, and acknowledge a
//!   commit/confirm with the result `done:<text>`;
//! - `huge-result`: vote YES with a result over the coordinator's limit;
//! - `flaky:<n>`: answer UNAVAILABLE to the first `n` attempts, then YES.
//!
//! Saga steps answer the same way (`action`: YES is success, NO is failure).
//! Phase 2 (and compensations) fail with UNAVAILABLE while
//! [`Recorder::fail_phase2`] is on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arbiter_sdk::{
    CallContext, ParticipantError, SagaHandler, StepOutcome, TccHandler, TwoPhaseHandler, Vote,
};

/// One call as the participant saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub call: &'static str,
    pub txn_id: String,
    pub branch_id: String,
    pub resource: String,
    pub attempt: u32,
    pub traceparent: Option<String>,
}

#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<Seen>>,
    fail_phase2: AtomicBool,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls of one transaction, in order, as `"prepare"`, `"commit"`, ...
    pub fn calls(&self, txn_id: &str) -> Vec<&'static str> {
        self.seen()
            .into_iter()
            .filter(|s| s.txn_id == txn_id)
            .map(|s| s.call)
            .collect()
    }

    /// The calls of one branch of one transaction.
    pub fn branch_calls(&self, txn_id: &str, branch_id: &str) -> Vec<&'static str> {
        self.seen()
            .into_iter()
            .filter(|s| s.txn_id == txn_id && s.branch_id == branch_id)
            .map(|s| s.call)
            .collect()
    }

    pub fn set_fail_phase2(&self, fail: bool) {
        self.fail_phase2.store(fail, Ordering::SeqCst);
    }

    fn record(&self, call: &'static str, ctx: &CallContext) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Seen {
                call,
                txn_id: ctx.txn_id.clone(),
                branch_id: ctx.branch_id.clone(),
                resource: ctx.resource.clone(),
                attempt: ctx.attempt,
                traceparent: ctx.traceparent.clone(),
            });
    }

    async fn vote(
        &self,
        call: &'static str,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<Vote, ParticipantError> {
        self.record(call, ctx);
        let payload = String::from_utf8_lossy(payload);
        let (verb, arg) = payload.split_once(':').unwrap_or((&payload, ""));
        match verb {
            "" | "yes" => Ok(Vote::Yes),
            "read-only" => Ok(Vote::ReadOnly),
            "no" => Ok(Vote::No(arg.to_string())),
            "no-long" => Ok(Vote::No("n".repeat(arg.parse().unwrap_or(1 << 20)))),
            "reject" => Err(ParticipantError::Rejected(arg.to_string())),
            "unavailable" => Err(ParticipantError::Unavailable(
                "test participant is unavailable".into(),
            )),
            "result" => Ok(Vote::YesWith(arg.as_bytes().to_vec())),
            "huge-result" => Ok(Vote::YesWith(vec![b'x'; 5_000])),
            "flaky" if ctx.attempt <= arg.parse().unwrap_or(1) => Err(
                ParticipantError::Unavailable(format!("flaky: attempt {}", ctx.attempt)),
            ),
            "flaky" => Ok(Vote::Yes),
            "slow" => {
                let ms = arg.parse().unwrap_or(1_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Vote::Yes)
            }
            other => Err(ParticipantError::Invalid(format!(
                "unknown test payload {other:?}"
            ))),
        }
    }

    /// What a commit/confirm answers with: `done:<text>` for `result:<text>`.
    fn ack_result(payload: &[u8]) -> Vec<u8> {
        let payload = String::from_utf8_lossy(payload);
        match payload.strip_prefix("result:") {
            Some(text) => format!("done:{text}").into_bytes(),
            None => Vec::new(),
        }
    }

    fn finish(&self, call: &'static str, ctx: &CallContext) -> Result<(), ParticipantError> {
        self.record(call, ctx);
        if self.fail_phase2.load(Ordering::SeqCst) {
            return Err(ParticipantError::Unavailable(format!(
                "{call} refused by the test"
            )));
        }
        Ok(())
    }
}

impl TwoPhaseHandler for Recorder {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.vote("prepare", ctx, payload).await
    }
    async fn commit(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish("commit", ctx)
    }
    async fn commit_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, ParticipantError> {
        self.finish("commit", ctx)
            .map(|()| Self::ack_result(payload))
    }
    async fn rollback(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish("rollback", ctx)
    }
}

impl TccHandler for Recorder {
    async fn try_(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.vote("try", ctx, payload).await
    }
    async fn confirm(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish("confirm", ctx)
    }
    async fn confirm_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, ParticipantError> {
        self.finish("confirm", ctx)
            .map(|()| Self::ack_result(payload))
    }
    async fn cancel(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish("cancel", ctx)
    }
}

impl SagaHandler for Recorder {
    async fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<StepOutcome, ParticipantError> {
        Ok(match self.vote("action", ctx, payload).await? {
            Vote::YesWith(result) => StepOutcome::SucceededWith(result),
            Vote::No(reason) => StepOutcome::Failed(reason),
            _ => StepOutcome::Succeeded,
        })
    }
    async fn compensate(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish("compensate", ctx)
    }
}

/// Wraps a real handler and records every call before passing it on, so a
/// test can see what a participant received and what it did with it.
pub struct Spy<H> {
    pub inner: H,
    pub recorder: Recorder,
}

impl<H> Spy<H> {
    pub fn new(inner: H) -> Self {
        Spy {
            inner,
            recorder: Recorder::new(),
        }
    }
}

impl<H: TwoPhaseHandler> TwoPhaseHandler for Spy<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.recorder.record("prepare", ctx);
        self.inner.prepare(ctx, payload).await
    }
    async fn commit(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.recorder.record("commit", ctx);
        self.inner.commit(ctx, payload).await
    }
    async fn commit_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, ParticipantError> {
        self.recorder.record("commit", ctx);
        self.inner.commit_with_result(ctx, payload).await
    }
    async fn rollback(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.recorder.record("rollback", ctx);
        self.inner.rollback(ctx, payload).await
    }
}

impl<H: TccHandler> TccHandler for Spy<H> {
    async fn try_(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.recorder.record("try", ctx);
        self.inner.try_(ctx, payload).await
    }
    async fn confirm(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.recorder.record("confirm", ctx);
        self.inner.confirm(ctx, payload).await
    }
    async fn confirm_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, ParticipantError> {
        self.recorder.record("confirm", ctx);
        self.inner.confirm_with_result(ctx, payload).await
    }
    async fn cancel(&self, ctx: &CallContext, payload: &[u8]) -> Result<(), ParticipantError> {
        self.recorder.record("cancel", ctx);
        self.inner.cancel(ctx, payload).await
    }
}
