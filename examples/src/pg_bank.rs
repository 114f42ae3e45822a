//! The bank demo on PostgreSQL: one database per bank service, taking part
//! in transfers both ways the SDK offers for PostgreSQL.
//!
//! - **2PC** ([`PreparedAccounts`]): prepare applies the delta inside a
//!   transaction that the SDK ends with `PREPARE TRANSACTION`; the
//!   coordinator's decision commits or rolls it back. A debit that would
//!   overdraw votes NO.
//! - **TCC** ([`ReservedAccounts`]): try moves a debit into the `holds`
//!   table (so it cannot be spent twice) or records a pending credit;
//!   confirm lands credits and drops the hold; cancel returns held debits.
//!   The barrier makes every call count exactly once.
//!
//! Payloads are the same as the in-memory bank's: `"<account> <delta>"`.

use arbiter_sdk::tokio_postgres::Transaction;
use arbiter_sdk::{
    CallContext, Client, ParticipantError, ParticipantServer, PgBarrier, PgHandler,
    PgPrepareHandler, PgTwoPhase, Vote,
};

use crate::{RESOURCE, parse};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        name text PRIMARY KEY,
        balance bigint NOT NULL CHECK (balance >= 0));
    CREATE TABLE IF NOT EXISTS holds (
        txn_id text NOT NULL,
        branch_id text NOT NULL,
        account text NOT NULL REFERENCES accounts (name),
        delta bigint NOT NULL,
        PRIMARY KEY (txn_id, branch_id));";

/// One bank service's database.
#[derive(Clone)]
pub struct PgBank {
    barrier: PgBarrier,
}

impl PgBank {
    /// Connects and creates the bank's tables if missing.
    pub async fn connect(url: &str) -> anyhow::Result<PgBank> {
        let barrier = PgBarrier::connect(url, 16).await?;
        barrier.conn().await?.batch_execute(SCHEMA).await?;
        Ok(PgBank { barrier })
    }

    pub fn barrier(&self) -> &PgBarrier {
        &self.barrier
    }

    /// Creates an account with `balance` unless it exists.
    pub async fn open_account(&self, name: &str, balance: i64) -> anyhow::Result<()> {
        self.barrier
            .conn()
            .await?
            .execute(
                // Not ON CONFLICT: that would wait for a row an in-doubt
                // prepared transaction holds, and keep the service from starting.
                "INSERT INTO accounts (name, balance) SELECT $1, $2
                 WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE name = $1)",
                &[&name, &balance],
            )
            .await?;
        Ok(())
    }

    /// Committed balance (held debits already taken out).
    pub async fn balance(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let row = self
            .barrier
            .conn()
            .await?
            .query_opt("SELECT balance FROM accounts WHERE name = $1", &[&name])
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Sum of committed balances.
    pub async fn total(&self) -> anyhow::Result<i64> {
        self.number("SELECT COALESCE(SUM(balance), 0)::bigint FROM accounts")
            .await
    }

    /// TCC holds not yet confirmed or cancelled.
    pub async fn holds(&self) -> anyhow::Result<i64> {
        self.number("SELECT count(*) FROM holds").await
    }

    /// Prepared transactions (2PC branches awaiting a decision) in this database.
    pub async fn prepared(&self) -> anyhow::Result<i64> {
        self.number("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
            .await
    }

    async fn number(&self, sql: &str) -> anyhow::Result<i64> {
        let row = self.barrier.conn().await?.query_one(sql, &[]).await?;
        Ok(row.try_get(0)?)
    }

    /// The participant service: 2PC on prepared transactions and TCC with
    /// the barrier, both for [`RESOURCE`]. Resolves in-doubt prepared
    /// transactions with `coordinator` at start and every `resolve_every`.
    pub async fn service(
        &self,
        coordinator: Client,
        resolve_every: std::time::Duration,
    ) -> anyhow::Result<(ParticipantServer, PgTwoPhase<PreparedAccounts>)> {
        let two_phase = self
            .barrier
            .two_phase(PreparedAccounts, coordinator, resolve_every)
            .await?;
        let server = ParticipantServer::new()
            .two_phase(RESOURCE, two_phase.clone())
            .tcc(RESOURCE, self.barrier.guard(ReservedAccounts));
        Ok((server, two_phase))
    }
}

/// Applies `delta` unless it would overdraw; `None` if it was refused.
async fn apply(
    txn: &Transaction<'_>,
    account: &str,
    delta: i64,
) -> Result<Option<Vote>, ParticipantError> {
    let updated = txn
        .execute(
            "UPDATE accounts SET balance = balance + $2 WHERE name = $1 AND balance + $2 >= 0",
            &[&account, &delta],
        )
        .await?;
    if updated == 1 {
        return Ok(None);
    }
    let exists = txn
        .query_opt("SELECT 1 FROM accounts WHERE name = $1", &[&account])
        .await?
        .is_some();
    Ok(Some(Vote::No(if exists {
        format!("insufficient funds in {account} for {delta}")
    } else {
        format!("no account {account}")
    })))
}

/// 2PC: the delta is applied in the prepared transaction.
pub struct PreparedAccounts;

impl PgPrepareHandler for PreparedAccounts {
    async fn prepare(
        &self,
        _: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<Vote, ParticipantError> {
        let (account, delta) = parse(payload)?;
        Ok(apply(txn, &account, delta).await?.unwrap_or(Vote::Yes))
    }
}

/// TCC: debits are held at try, credits land at confirm.
pub struct ReservedAccounts;

impl PgHandler for ReservedAccounts {
    async fn prepare(
        &self,
        ctx: &CallContext,
        payload: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<Vote, ParticipantError> {
        let (account, delta) = parse(payload)?;
        // A debit leaves the balance now; a credit only at confirm.
        if let Some(refused) = apply(txn, &account, delta.min(0)).await? {
            return Ok(refused);
        }
        txn.execute(
            "INSERT INTO holds (txn_id, branch_id, account, delta) VALUES ($1, $2, $3, $4)",
            &[&ctx.txn_id, &ctx.branch_id, &account, &delta],
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
        if let Some((account, delta)) = take_hold(ctx, txn).await? {
            credit(txn, &account, delta.max(0)).await?;
        }
        Ok(())
    }

    async fn rollback(
        &self,
        ctx: &CallContext,
        _: &[u8],
        txn: &Transaction<'_>,
    ) -> Result<(), ParticipantError> {
        if let Some((account, delta)) = take_hold(ctx, txn).await? {
            credit(txn, &account, -delta.min(0)).await?;
        }
        Ok(())
    }
}

async fn take_hold(
    ctx: &CallContext,
    txn: &Transaction<'_>,
) -> Result<Option<(String, i64)>, ParticipantError> {
    let row = txn
        .query_opt(
            "DELETE FROM holds WHERE txn_id = $1 AND branch_id = $2 RETURNING account, delta",
            &[&ctx.txn_id, &ctx.branch_id],
        )
        .await?;
    match row {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
        None => Ok(None),
    }
}

async fn credit(txn: &Transaction<'_>, account: &str, amount: i64) -> Result<(), ParticipantError> {
    if amount != 0 {
        txn.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE name = $1",
            &[&account, &amount],
        )
        .await?;
    }
    Ok(())
}
