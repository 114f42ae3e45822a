//! The exactly-once barrier under random delivery: for many transactions,
//! calls are duplicated, reordered (a cancel before its try, a try after its
//! cancel), dropped and run concurrently; afterwards every branch's business
//! effect happened exactly once if its transaction committed and never (or
//! undone) if it aborted. Run against both backends: PostgreSQL and sled;
//! and for sagas (action = try, compensation = cancel, repeated actions in
//! place of confirms) on sled.

use std::collections::HashMap;
use std::sync::Arc;

use arbiter_sdk::tokio_postgres::Transaction;
use arbiter_sdk::{
    CallContext, ParticipantError, PgBarrier, PgHandler, SagaHandler, SledBarrier, SledHandler,
    SledTxn, TccHandler, Vote,
};
use arbiter_tests::postgres::PgCluster;

/// What the handler did to one branch: prepares kept, commits, rollbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Effect {
    prepared: i64,
    applied: i64,
    released: i64,
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Try,
    Confirm,
    Cancel,
}

struct Plan {
    txn_id: String,
    commit: bool,
    /// Per branch: the payload of its try.
    payloads: Vec<&'static str>,
    /// The delivery: (branch index, call), run in chunks that overlap.
    calls: Vec<(usize, Call)>,
}

const BRANCHES: usize = 2;

fn plans(rng: &mut fastrand::Rng, count: usize) -> Vec<Plan> {
    (0..count)
        .map(|i| {
            let commit = rng.bool();
            let mut payloads = vec!["ok"; BRANCHES];
            if !commit && rng.bool() {
                payloads[rng.usize(..BRANCHES)] = "no";
            }
            let mut calls = Vec::new();
            if commit {
                // Every branch voted YES before the decision: one try each
                // comes first; duplicates of both phases come in any order.
                let mut first: Vec<(usize, Call)> = (0..BRANCHES).map(|b| (b, Call::Try)).collect();
                rng.shuffle(&mut first);
                let mut rest = Vec::new();
                for b in 0..BRANCHES {
                    rest.extend((0..rng.usize(0..3)).map(|_| (b, Call::Try)));
                    rest.extend((0..rng.usize(1..4)).map(|_| (b, Call::Confirm)));
                }
                rng.shuffle(&mut rest);
                calls.extend(first);
                calls.extend(rest);
            } else {
                // Tries may be lost (empty cancel) or arrive after the cancel
                // (hanging); at least one cancel arrives.
                for b in 0..BRANCHES {
                    calls.extend((0..rng.usize(0..4)).map(|_| (b, Call::Try)));
                    calls.extend((0..rng.usize(1..4)).map(|_| (b, Call::Cancel)));
                }
                rng.shuffle(&mut calls);
            }
            Plan {
                txn_id: format!("txn-{i}"),
                commit,
                payloads,
                calls,
            }
        })
        .collect()
}

fn ctx(txn_id: &str, branch: usize) -> CallContext {
    CallContext {
        txn_id: txn_id.to_string(),
        branch_id: format!("b{branch}"),
        resource: "effects".into(),
        attempt: 1,
        traceparent: None,
    }
}

/// How the plans' calls reach a handler.
trait Deliver: Send + Sync + 'static {
    fn call(
        &self,
        call: Call,
        ctx: &CallContext,
        payload: &[u8],
    ) -> impl std::future::Future<Output = Result<(), ParticipantError>> + Send;
}

/// As TCC: try, confirm, cancel.
struct AsTcc<H>(H);

impl<H: TccHandler> Deliver for AsTcc<H> {
    async fn call(
        &self,
        call: Call,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        match call {
            Call::Try => self.0.try_(ctx, payload).await.map(|_| ()),
            Call::Confirm => self.0.confirm(ctx, payload).await,
            Call::Cancel => self.0.cancel(ctx, payload).await,
        }
    }
}

/// As saga steps: a try is an action, a confirm a repeated action (a saga
/// that completed sends nothing but actions), a cancel a compensation.
struct AsSaga<H>(H);

impl<H: SagaHandler> Deliver for AsSaga<H> {
    async fn call(
        &self,
        call: Call,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        match call {
            Call::Try | Call::Confirm => self.0.action(ctx, payload).await.map(|_| ()),
            Call::Cancel => self.0.compensate(ctx, payload).await,
        }
    }
}

/// Delivers every plan (all transactions at once, each in overlapping chunks).
async fn deliver<H: Deliver>(handler: Arc<H>, plans: &[Plan], rng: &mut fastrand::Rng) {
    let mut all = tokio::task::JoinSet::new();
    for plan in plans {
        let mut chunks = Vec::new();
        let mut calls = plan.calls.clone();
        // The coordinator commits only after every YES has arrived.
        if plan.commit {
            chunks.push(calls.drain(..BRANCHES).collect::<Vec<_>>());
        }
        while !calls.is_empty() {
            let n = rng.usize(1..4).min(calls.len());
            chunks.push(calls.drain(..n).collect::<Vec<_>>());
        }
        let (handler, txn_id, payloads, commit) = (
            handler.clone(),
            plan.txn_id.clone(),
            plan.payloads.clone(),
            plan.commit,
        );
        all.spawn(async move {
            for chunk in chunks {
                let mut together = tokio::task::JoinSet::new();
                for (branch, call) in chunk {
                    let (handler, ctx) = (handler.clone(), ctx(&txn_id, branch));
                    let payload = payloads[branch].as_bytes();
                    together.spawn(async move { handler.call(call, &ctx, payload).await });
                }
                while let Some(result) = together.join_next().await {
                    let result = result.map_err(|e| e.to_string());
                    assert!(
                        matches!(result, Ok(Ok(()))),
                        "{txn_id} (commit={commit}): a call failed: {result:?}"
                    );
                }
            }
        });
    }
    while let Some(done) = all.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A committed transaction's branch was prepared and applied once; a
/// completed saga's step acted once (`applied` stays 0: a saga's action is
/// its whole effect).
fn check(plans: &[Plan], effects: &HashMap<(String, String), Effect>, saga: bool) {
    let none = Effect::default();
    let mut committed = 0;
    for plan in plans {
        for b in 0..BRANCHES {
            let key = (plan.txn_id.clone(), format!("b{b}"));
            let effect = effects.get(&key).copied().unwrap_or(none);
            if plan.commit {
                committed += 1;
                assert_eq!(
                    effect,
                    Effect {
                        prepared: 1,
                        applied: i64::from(!saga),
                        released: 0
                    },
                    "{key:?} committed: its effect must happen exactly once ({:?})",
                    plan.calls
                );
            } else {
                let undone = Effect {
                    prepared: 1,
                    applied: 0,
                    released: 1,
                };
                assert!(
                    effect == none || effect == undone,
                    "{key:?} aborted: no effect may remain, got {effect:?} ({:?})",
                    plan.calls
                );
            }
        }
    }
    assert!(
        committed > 0 && committed < plans.len() * BRANCHES,
        "both outcomes exercised"
    );
}

fn seed() -> u64 {
    let seed = std::env::var("BARRIER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("BARRIER_SEED={seed}");
    seed
}

// --- PostgreSQL -------------------------------------------------------------

struct PgEffects;

impl PgHandler for PgEffects {
    async fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<Vote, ParticipantError> {
        if payload == b"no" {
            return Ok(Vote::No("refused".into()));
        }
        txn.execute(
            "INSERT INTO effects (txn_id, branch_id, prepared) VALUES ($1, $2, 1)
             ON CONFLICT (txn_id, branch_id) DO UPDATE SET prepared = effects.prepared + 1",
            &[&ctx.txn_id, &ctx.branch_id],
        )
        .await?;
        Ok(Vote::Yes)
    }
    async fn commit(
        &self,
        ctx: &CallContext,
        _: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<(), ParticipantError> {
        bump(txn, ctx, "applied").await
    }
    async fn rollback(
        &self,
        ctx: &CallContext,
        _: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<(), ParticipantError> {
        bump(txn, ctx, "released").await
    }
}

async fn bump(
    txn: &Transaction<'_>,
    ctx: &CallContext,
    column: &str,
) -> Result<(), ParticipantError> {
    txn.execute(
        &format!("UPDATE effects SET {column} = {column} + 1 WHERE txn_id = $1 AND branch_id = $2"),
        &[&ctx.txn_id, &ctx.branch_id],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_barrier_gives_exactly_once_effects_under_random_delivery() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    cluster.create_database("effects").await?;
    let barrier = PgBarrier::connect(&cluster.url("effects"), 32).await?;
    barrier
        .conn()
        .await?
        .batch_execute(
            "CREATE TABLE effects (txn_id text, branch_id text, prepared bigint NOT NULL,
                 applied bigint NOT NULL DEFAULT 0, released bigint NOT NULL DEFAULT 0,
                 PRIMARY KEY (txn_id, branch_id))",
        )
        .await?;
    let mut rng = fastrand::Rng::with_seed(seed());
    let plans = plans(&mut rng, 150);
    deliver(Arc::new(AsTcc(barrier.guard(PgEffects))), &plans, &mut rng).await;

    let rows = barrier
        .conn()
        .await?
        .query(
            "SELECT txn_id, branch_id, prepared, applied, released FROM effects",
            &[],
        )
        .await?;
    let mut effects = HashMap::new();
    for row in rows {
        effects.insert(
            (row.try_get(0)?, row.try_get(1)?),
            Effect {
                prepared: row.try_get(2)?,
                applied: row.try_get(3)?,
                released: row.try_get(4)?,
            },
        );
    }
    check(&plans, &effects, false);

    // Retention: nothing is younger than an hour ago... and all of it is
    // older than "now" once the retention is zero.
    barrier.set_retention(std::time::Duration::from_secs(3600));
    assert_eq!(barrier.collect().await?, 0);
    barrier.set_retention(std::time::Duration::ZERO);
    assert!(barrier.collect().await? > 0);
    Ok(())
}

// --- sled -------------------------------------------------------------------

struct SledEffects;

fn effect_key(ctx: &CallContext) -> String {
    format!("{}/{}", ctx.txn_id, ctx.branch_id)
}

fn read_effect(txn: &SledTxn<'_>, ctx: &CallContext) -> Result<Effect, ParticipantError> {
    let Some(bytes) = txn.get(effect_key(ctx))? else {
        return Ok(Effect::default());
    };
    decode(&bytes).ok_or_else(|| ParticipantError::Internal("bad effect".into()))
}

fn decode(bytes: &[u8]) -> Option<Effect> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(',').map(|p| p.parse::<i64>().ok());
    Some(Effect {
        prepared: parts.next()??,
        applied: parts.next()??,
        released: parts.next()??,
    })
}

fn write_effect(txn: &mut SledTxn<'_>, ctx: &CallContext, e: Effect) {
    txn.insert(
        effect_key(ctx),
        format!("{},{},{}", e.prepared, e.applied, e.released),
    );
}

/// Reads the branch's effect, changes it, writes it back (in `txn`).
fn change(
    txn: &mut SledTxn<'_>,
    ctx: &CallContext,
    f: impl FnOnce(&mut Effect),
) -> Result<(), ParticipantError> {
    let mut e = read_effect(txn, ctx)?;
    f(&mut e);
    write_effect(txn, ctx, e);
    Ok(())
}

impl SledHandler for SledEffects {
    async fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> Result<Vote, ParticipantError> {
        if payload == b"no" {
            return Ok(Vote::No("refused".into()));
        }
        change(txn, ctx, |e| e.prepared += 1)?;
        Ok(Vote::Yes)
    }
    async fn commit(
        &self,
        ctx: &CallContext,
        _: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> Result<(), ParticipantError> {
        change(txn, ctx, |e| e.applied += 1)
    }
    async fn rollback(
        &self,
        ctx: &CallContext,
        _: &[u8],
        txn: &mut SledTxn<'_>,
    ) -> Result<(), ParticipantError> {
        change(txn, ctx, |e| e.released += 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_barrier_gives_exactly_once_effects_under_random_delivery() -> anyhow::Result<()> {
    sled_under_random_delivery(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_barrier_gives_exactly_once_saga_steps_under_random_delivery() -> anyhow::Result<()> {
    sled_under_random_delivery(true).await
}

async fn sled_under_random_delivery(saga: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rng = fastrand::Rng::with_seed(seed());
    let plans = plans(&mut rng, 150);
    {
        let barrier = SledBarrier::open(dir.path())?;
        let guarded = barrier.guard(SledEffects);
        if saga {
            deliver(Arc::new(AsSaga(guarded)), &plans, &mut rng).await;
        } else {
            deliver(Arc::new(AsTcc(guarded)), &plans, &mut rng).await;
        }
    }
    // Reopened: what was acknowledged is on disk.
    let barrier = SledBarrier::open(dir.path())?;
    let mut effects = HashMap::new();
    for entry in barrier.state().iter() {
        let (key, value) = entry?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let (txn, branch) = key.split_once('/').unwrap_or_default();
        let effect = decode(&value).unwrap_or_default();
        effects.insert((txn.to_string(), branch.to_string()), effect);
    }
    check(&plans, &effects, saga);

    assert!(barrier.records() > 0);
    barrier.set_retention(std::time::Duration::ZERO);
    barrier.collect().await?;
    assert_eq!(barrier.records(), 0);
    Ok(())
}

/// sled lets go of its file lock a moment after a closed database is
/// dropped; reopening at once (a participant restarting in place, or this
/// suite) must wait for it, not fail with "could not acquire lock".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_barrier_reopens_right_after_it_is_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for round in 0..150 {
        let barrier =
            SledBarrier::open(dir.path()).map_err(|e| anyhow::anyhow!("reopen {round}: {e}"))?;
        let handler = barrier.guard(SledEffects);
        handler
            .try_(&ctx(&format!("t{round}"), 0), b"5")
            .await
            .map_err(|e| anyhow::anyhow!("try {round}: {e}"))?;
    }
    Ok(())
}
