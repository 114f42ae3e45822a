//! The two-phase adapter for PostgreSQL: prepare runs the handler's SQL in a
//! transaction that ends with `PREPARE TRANSACTION`; commit and rollback are
//! `COMMIT PREPARED` / `ROLLBACK PREPARED`. Its in-doubt resolver finishes
//! the prepared transactions a crash left behind by asking the coordinator.
//!
//! **The in-doubt contract.** A branch that voted YES is *in doubt* until
//! its commit or rollback arrives: its prepared transaction survives
//! crashes of this service and of PostgreSQL, keeping its row locks. The
//! coordinator re-sends the decision until it is acknowledged, so in-doubt
//! branches finish on their own once both sides are up. The resolver makes
//! that independent of the coordinator reaching this service (a new
//! address after a restart, say): at start and every `resolve_every` it
//! lists this database's `arbiter/...` prepared transactions and asks the
//! coordinator each one's outcome: committed or committing → `COMMIT
//! PREPARED`; aborted, aborting or unknown (presumed abort: a transaction
//! the coordinator does not know never decided commit) → `ROLLBACK
//! PREPARED`; still undecided → left for the next pass. A service must not
//! wait at start on rows such a transaction holds (see the bank example's
//! `open_account`).
//!
//! The global id of a branch's prepared transaction is
//! `arbiter/<txn_id>/<branch_id>` (at most 200 bytes, PostgreSQL's limit).
//! The barrier row of the YES vote is written inside the prepared
//! transaction, so it becomes visible exactly when the branch commits: a
//! repeated commit whose global id is gone checks that row, and never
//! guesses.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::{PgBarrier, insert, phase1};
use crate::barrier::{PHASE1, Phase1, commit_without_yes, rollback_after_commit};
use crate::client::{Client, Resolution};
use crate::handler::{CallContext, ParticipantError, TwoPhaseHandler, Vote};

/// How often the in-doubt resolver runs after the first pass at start.
pub const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(30);
const GID_PREFIX: &str = "arbiter/";
const MAX_GID_LEN: usize = 200;

/// The work of a 2PC branch on PostgreSQL: do it in `txn` and vote. With a
/// YES vote the adapter prepares the transaction (`PREPARE TRANSACTION`),
/// so the rows stay locked and invisible until the coordinator's decision.
pub trait PgPrepareHandler: Send + Sync + 'static {
    fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;
}

/// A 2PC participant on PostgreSQL prepared transactions. Serve it with
/// [`ParticipantServer::two_phase`](crate::ParticipantServer::two_phase).
/// Clones share the adapter; the background resolver stops once every clone
/// is dropped.
///
/// ```no_run
/// use arbiter_sdk::tokio_postgres::Transaction;
/// use arbiter_sdk::*;
///
/// struct Debit;
///
/// impl PgPrepareHandler for Debit {
///     async fn prepare(&self, _: &CallContext, payload: &[u8], txn: &Transaction<'_>)
///         -> Result<Vote, ParticipantError> {
///         let amount: i64 = std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok())
///             .ok_or_else(|| ParticipantError::Invalid("payload must be an amount".into()))?;
///         let debited = txn
///             .execute("UPDATE accounts SET balance = balance - $1
///                       WHERE name = 'alice' AND balance >= $1", &[&amount])
///             .await?;
///         Ok(if debited == 1 { Vote::Yes } else { Vote::No("insufficient funds".into()) })
///     }
/// }
///
/// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
/// let db = PgBarrier::connect("host=127.0.0.1 user=bank dbname=east", 16).await?;
/// let coordinator = Client::connect("http://127.0.0.1:7089").await?;
/// let debit = db.two_phase(Debit, coordinator, DEFAULT_RESOLVE_EVERY).await?;
/// ParticipantServer::new()
///     .two_phase("account.debit", debit)
///     .serve("0.0.0.0:7100".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
pub struct PgTwoPhase<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for PgTwoPhase<H> {
    fn clone(&self) -> Self {
        PgTwoPhase {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    barrier: PgBarrier,
    handler: H,
    coordinator: Client,
}

/// What one in-doubt pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InDoubtReport {
    pub committed: usize,
    pub rolled_back: usize,
    /// Still undecided at the coordinator; left prepared for the next pass.
    pub waiting: usize,
    /// Could not be finished this pass (coordinator or database errors).
    pub failed: usize,
}

impl PgBarrier {
    /// A 2PC participant on prepared transactions. Fails if the server has
    /// `max_prepared_transactions = 0`. Runs one in-doubt pass against
    /// `coordinator` before returning, then one every `resolve_every`.
    pub async fn two_phase<H: PgPrepareHandler>(
        &self,
        handler: H,
        coordinator: Client,
        resolve_every: Duration,
    ) -> Result<PgTwoPhase<H>, ParticipantError> {
        let conn = self.conn().await?;
        let max: String = conn
            .query_one("SHOW max_prepared_transactions", &[])
            .await?
            .try_get(0)?;
        if max.trim() == "0" {
            return Err(ParticipantError::Invalid(
                "PostgreSQL has max_prepared_transactions = 0, so it cannot prepare \
                 transactions: set it above the number of branches this service may hold \
                 prepared at once (e.g. max_prepared_transactions = 100 in postgresql.conf) \
                 and restart PostgreSQL"
                    .into(),
            ));
        }
        let adapter = PgTwoPhase {
            inner: Arc::new(Inner {
                barrier: self.clone(),
                handler,
                coordinator,
            }),
        };
        let report = adapter.resolve_in_doubt().await?;
        tracing::info!(?report, "in-doubt pass at start");
        let weak = Arc::downgrade(&adapter.inner);
        tokio::spawn(resolve_periodically(weak, resolve_every));
        Ok(adapter)
    }
}

async fn resolve_periodically<H: PgPrepareHandler>(weak: Weak<Inner<H>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        match (PgTwoPhase { inner }).resolve_in_doubt().await {
            Ok(report) if report != InDoubtReport::default() => {
                tracing::info!(?report, "in-doubt pass");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "in-doubt pass failed"),
        }
    }
}

/// The global id of a branch's prepared transaction.
fn gid(ctx: &CallContext) -> Result<String, ParticipantError> {
    let gid = format!("{GID_PREFIX}{}/{}", ctx.txn_id, ctx.branch_id);
    let safe = |id: &str| {
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
    };
    if !safe(&ctx.txn_id) || !safe(&ctx.branch_id) || gid.len() > MAX_GID_LEN {
        return Err(ParticipantError::Invalid(format!(
            "ids too long or unsafe for a PostgreSQL prepared transaction: {gid:?}"
        )));
    }
    Ok(gid)
}

/// The branch a global id names, if it is one of ours.
fn parse_gid(gid: &str) -> Option<(String, String)> {
    let (txn, branch) = gid.strip_prefix(GID_PREFIX)?.split_once('/')?;
    Some((txn.to_string(), branch.to_string()))
}

fn is_missing(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_OBJECT)
}

impl<H: PgPrepareHandler> PgTwoPhase<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        let gid = gid(ctx)?;
        let barrier = &self.inner.barrier;
        let mut conn = barrier.conn().await?;
        let prepared = conn
            .query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
            .await?;
        if prepared.is_some() {
            return Ok(Vote::Yes);
        }
        if let Some(found) = phase1(&**conn, ctx).await? {
            return Ok(found.repeated_vote());
        }
        // A concurrent repeat holds the row until its prepared transaction
        // ends: the lock timeout gives up and lets the coordinator retry.
        let txn = barrier.begin(&mut conn).await?;
        if !insert(&*txn, ctx, PHASE1, &Phase1::Voted(Vote::Yes).encode()).await? {
            return Err(ParticipantError::Unavailable(
                "a repeat of this prepare finished meanwhile; retry".into(),
            ));
        }
        let vote = self.inner.handler.prepare(ctx, payload, &txn).await?;
        if vote.is_yes() {
            txn.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
                .await?;
            // The session is out of its transaction now: mark it done.
            let _ = txn.commit().await;
        } else {
            txn.rollback().await?;
            insert(&**conn, ctx, PHASE1, &Phase1::Voted(vote.clone()).encode()).await?;
        }
        Ok(vote)
    }

    async fn commit(&self, ctx: &CallContext) -> Result<(), ParticipantError> {
        let gid = gid(ctx)?;
        let conn = self.inner.barrier.conn().await?;
        match conn
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .await
        {
            Ok(()) => Ok(()),
            // Finished before: committed only if the vote's row committed.
            Err(e) if is_missing(&e) => match phase1(&**conn, ctx).await? {
                Some(found) if found.holds_work() => Ok(()),
                other => Err(commit_without_yes(other.as_ref())),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn rollback(&self, ctx: &CallContext) -> Result<(), ParticipantError> {
        let gid = gid(ctx)?;
        let mut conn = self.inner.barrier.conn().await?;
        match conn
            .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            .await
        {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
        // Remember the rollback, so a prepare still on its way is refused.
        let txn = self.inner.barrier.begin(&mut conn).await?;
        if !insert(&*txn, ctx, PHASE1, &Phase1::RolledBack.encode()).await? {
            match phase1(&*txn, ctx).await? {
                Some(found) if found.holds_work() => {
                    return Err(rollback_after_commit());
                }
                _ => {}
            }
        }
        Ok(txn.commit().await?)
    }

    /// Finishes this database's prepared transactions of Arbiter branches
    /// by asking the coordinator: commit, roll back (also when the
    /// coordinator does not know the transaction: presumed abort), or leave
    /// them for the next pass while undecided.
    pub async fn resolve_in_doubt(&self) -> Result<InDoubtReport, ParticipantError> {
        let conn = self.inner.barrier.conn().await?;
        let rows = conn
            .query(
                "SELECT gid FROM pg_prepared_xacts \
                 WHERE database = current_database() AND gid LIKE 'arbiter/%'",
                &[],
            )
            .await?;
        drop(conn);
        let mut report = InDoubtReport::default();
        for row in rows {
            let gid: String = row.try_get(0)?;
            let Some((txn_id, branch_id)) = parse_gid(&gid) else {
                continue;
            };
            let ctx = CallContext {
                txn_id,
                branch_id,
                resource: String::new(),
                attempt: 0,
                traceparent: None,
            };
            let finished = match self.inner.coordinator.resolve(&ctx.txn_id).await {
                Ok(Resolution::Commit) => self.commit(&ctx).await.map(|()| &mut report.committed),
                Ok(Resolution::Abort) => {
                    self.rollback(&ctx).await.map(|()| &mut report.rolled_back)
                }
                Ok(Resolution::Wait) => Ok(&mut report.waiting),
                Err(e) => Err(ParticipantError::Unavailable(format!(
                    "asking the coordinator: {e}"
                ))),
            };
            match finished {
                Ok(count) => *count += 1,
                Err(err) => {
                    tracing::warn!(%gid, error = %err, "could not resolve an in-doubt branch");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}

impl<H: PgPrepareHandler> TwoPhaseHandler for PgTwoPhase<H> {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        PgTwoPhase::prepare(self, ctx, payload).await
    }
    async fn commit(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        PgTwoPhase::commit(self, ctx).await
    }
    async fn rollback(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        PgTwoPhase::rollback(self, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_refuse_unsafe_ids() {
        let ctx = CallContext {
            txn_id: "0190abcdef:x".into(),
            branch_id: "b-1.2".into(),
            resource: String::new(),
            attempt: 1,
            traceparent: None,
        };
        let g = gid(&ctx).unwrap_or_default();
        assert_eq!(g, "arbiter/0190abcdef:x/b-1.2");
        assert_eq!(
            parse_gid(&g),
            Some((ctx.txn_id.clone(), ctx.branch_id.clone()))
        );
        assert_eq!(parse_gid("someone-else"), None);
        let quote = CallContext {
            txn_id: "x'; DROP TABLE t; --".into(),
            ..ctx.clone()
        };
        assert!(matches!(gid(&quote), Err(ParticipantError::Invalid(_))));
        let long = CallContext {
            txn_id: "a".repeat(150),
            branch_id: "b".repeat(60),
            ..ctx
        };
        assert!(gid(&long).is_err());
    }
}
