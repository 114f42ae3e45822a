//! The traits a participant service implements, and what its handlers return.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::Status;

/// What a handler learns about the call besides the payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallContext {
    pub txn_id: String,
    pub branch_id: String,
    /// The resource name the branch was registered with.
    pub resource: String,
    /// 1 for the first call of this phase to this branch, 2 for the first retry, ...
    pub attempt: u32,
    /// The W3C `traceparent` of the call: the transaction's trace (the
    /// initiator's, if it sent one), with a span id for this call.
    pub traceparent: Option<String>,
}

/// A participant's answer to prepare / try. More kinds of YES may come:
/// test a vote with [`Vote::is_yes`] rather than comparing with `Vote::Yes`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vote {
    /// Ready to commit; the work is held until commit or rollback.
    Yes,
    /// Ready to commit, with a small result for the initiator (e.g. a
    /// reservation id; at most 4 KiB, or the coordinator takes it as a NO).
    /// It shows in the Commit/Execute answer and in `GetTransaction`.
    YesWith(Vec<u8>),
    /// Will not commit (the transaction aborts); the reason is shown to the initiator.
    No(String),
    /// Changed nothing: no commit or rollback will follow for this branch.
    ReadOnly,
}

/// The largest result a vote or ack may carry (the coordinator's limit).
pub const MAX_RESULT: usize = 4096;

impl Vote {
    /// A YES, with or without a result: the work is held.
    pub fn is_yes(&self) -> bool {
        matches!(self, Vote::Yes | Vote::YesWith(_))
    }
}

/// Errors a handler returns. The SDK turns them into the gRPC status that makes
/// the coordinator do the right thing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParticipantError {
    /// A definitive refusal (`FAILED_PRECONDITION`): from prepare/try it aborts
    /// the transaction like a NO vote.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The payload makes no sense (`INVALID_ARGUMENT`); definitive in phase 1.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Try again later (`UNAVAILABLE`): phase 1 is retried until its deadline,
    /// phase 2 until it succeeds.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something broke (`INTERNAL`); retried like `Unavailable`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ParticipantError> for Status {
    fn from(e: ParticipantError) -> Status {
        match e {
            ParticipantError::Rejected(m) => Status::failed_precondition(m),
            ParticipantError::Invalid(m) => Status::invalid_argument(m),
            ParticipantError::Unavailable(m) => Status::unavailable(m),
            ParticipantError::Internal(m) => Status::internal(m),
        }
    }
}

/// A two-phase-commit participant. Each call may arrive more than once, and
/// rollback may arrive without (or before) prepare: implementations must be
/// idempotent.
pub trait TwoPhaseHandler: Send + Sync + 'static {
    /// Do the work and hold it, then vote.
    fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;
    /// Make the prepared work permanent.
    fn commit(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
    /// Like [`commit`](Self::commit), answering with a small result for the
    /// initiator (e.g. a receipt; at most [`MAX_RESULT`] bytes, a larger one
    /// is dropped). The SDK calls this one; by default it runs `commit` and
    /// answers with none. A repeated commit of the branch must answer with
    /// the same result (after a restart the coordinator may ask again). A
    /// wrapper around another handler must forward this method too.
    fn commit_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ParticipantError>> + Send {
        async move { self.commit(ctx, payload).await.map(|()| Vec::new()) }
    }
    /// Undo the prepared work (or do nothing if there is none).
    fn rollback(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// A try-confirm-cancel participant. Same delivery rules as [`TwoPhaseHandler`].
pub trait TccHandler: Send + Sync + 'static {
    /// Reserve the resources (`Try`; named `try_` because `try` is a keyword).
    fn try_(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;
    /// Use the reservation.
    fn confirm(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
    /// Like [`confirm`](Self::confirm), answering with a small result for
    /// the initiator (at most [`MAX_RESULT`] bytes). The SDK calls this one;
    /// by default it runs `confirm` and answers with none. Same rules as
    /// [`TwoPhaseHandler::commit_with_result`].
    fn confirm_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ParticipantError>> + Send {
        async move { self.confirm(ctx, payload).await.map(|()| Vec::new()) }
    }
    /// Release the reservation (or do nothing if there is none).
    fn cancel(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// A saga step's answer to its action.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepOutcome {
    /// Done (the work is final, not held).
    Succeeded,
    /// Done, with a small result for the initiator (at most
    /// [`MAX_RESULT`] bytes).
    SucceededWith(Vec<u8>),
    /// Definitively not done: the saga compensates. The reason is shown to
    /// the initiator.
    Failed(String),
    /// Not now (e.g. a partner said to come back later): retried with
    /// backoff until the saga's timeout. Returning
    /// [`ParticipantError::Unavailable`] does the same.
    Retry(String),
}

/// A saga participant: each step is an action and its compensation. Same
/// delivery rules as [`TwoPhaseHandler`]: either call may repeat, and
/// `compensate` may arrive before (or instead of) `action`. The barrier
/// ([`SledBarrier`](crate::SledBarrier), [`PgBarrier`](crate::PgBarrier))
/// makes that exactly-once: a compensation with no action on record is
/// recorded as done without running, and an action arriving after it is
/// refused.
pub trait SagaHandler: Send + Sync + 'static {
    /// Do the step's work, for good.
    fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<StepOutcome, ParticipantError>> + Send;
    /// Undo what `action` did (or do nothing if it did nothing).
    fn compensate(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

impl<T: SagaHandler> SagaHandler for Arc<T> {
    fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<StepOutcome, ParticipantError>> + Send {
        T::action(self, ctx, payload)
    }
    fn compensate(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send {
        T::compensate(self, ctx, payload)
    }
}

impl<T: TwoPhaseHandler> TwoPhaseHandler for Arc<T> {
    fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send {
        T::prepare(self, ctx, payload)
    }
    fn commit(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send {
        T::commit(self, ctx, payload)
    }
    fn commit_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ParticipantError>> + Send {
        T::commit_with_result(self, ctx, payload)
    }
    fn rollback(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send {
        T::rollback(self, ctx, payload)
    }
}

impl<T: TccHandler> TccHandler for Arc<T> {
    fn try_(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send {
        T::try_(self, ctx, payload)
    }
    fn confirm(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send {
        T::confirm(self, ctx, payload)
    }
    fn confirm_with_result(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ParticipantError>> + Send {
        T::confirm_with_result(self, ctx, payload)
    }
    fn cancel(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send {
        T::cancel(self, ctx, payload)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which call of a phase; the mode picks the trait method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase2 {
    Commit,
    Rollback,
}

/// Object-safe form of both traits, so handlers of different types can share a
/// routing table.
pub(crate) trait DynHandler: Send + Sync {
    fn vote<'a>(
        &'a self,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vote, ParticipantError>>;
    fn finish<'a>(
        &'a self,
        phase: Phase2,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, ParticipantError>>;
}

pub(crate) struct TwoPhase<H>(pub H);
pub(crate) struct Tcc<H>(pub H);
pub(crate) struct Saga<H>(pub H);

/// A step's outcome in the vote form the routing table carries: succeeded
/// = YES, failed = NO. (`Retry` travels as an `Unavailable` error.)
fn step_as_vote(outcome: StepOutcome) -> Result<Vote, ParticipantError> {
    match outcome {
        StepOutcome::Succeeded => Ok(Vote::Yes),
        StepOutcome::SucceededWith(result) => Ok(Vote::YesWith(result)),
        StepOutcome::Failed(reason) => Ok(Vote::No(reason)),
        StepOutcome::Retry(reason) => Err(ParticipantError::Unavailable(reason)),
    }
}

impl<H: SagaHandler> DynHandler for Saga<H> {
    fn vote<'a>(
        &'a self,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vote, ParticipantError>> {
        Box::pin(async move { step_as_vote(self.0.action(ctx, payload).await?) })
    }
    fn finish<'a>(
        &'a self,
        phase: Phase2,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, ParticipantError>> {
        match phase {
            // Sagas have no confirm: Action serves must-succeed steps too.
            Phase2::Commit => Box::pin(async {
                Err(ParticipantError::Invalid(
                    "a saga step has no commit; the coordinator calls Action".into(),
                ))
            }),
            Phase2::Rollback => {
                Box::pin(async move { self.0.compensate(ctx, payload).await.map(|()| Vec::new()) })
            }
        }
    }
}

impl<H: TwoPhaseHandler> DynHandler for TwoPhase<H> {
    fn vote<'a>(
        &'a self,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vote, ParticipantError>> {
        Box::pin(self.0.prepare(ctx, payload))
    }
    fn finish<'a>(
        &'a self,
        phase: Phase2,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, ParticipantError>> {
        match phase {
            Phase2::Commit => Box::pin(self.0.commit_with_result(ctx, payload)),
            Phase2::Rollback => {
                Box::pin(async move { self.0.rollback(ctx, payload).await.map(|()| Vec::new()) })
            }
        }
    }
}

impl<H: TccHandler> DynHandler for Tcc<H> {
    fn vote<'a>(
        &'a self,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vote, ParticipantError>> {
        Box::pin(self.0.try_(ctx, payload))
    }
    fn finish<'a>(
        &'a self,
        phase: Phase2,
        ctx: &'a CallContext,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, ParticipantError>> {
        match phase {
            Phase2::Commit => Box::pin(self.0.confirm_with_result(ctx, payload)),
            Phase2::Rollback => {
                Box::pin(async move { self.0.cancel(ctx, payload).await.map(|()| Vec::new()) })
            }
        }
    }
}
