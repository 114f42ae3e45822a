//! The PostgreSQL participant: the 2PC adapter's idempotency against a real
//! server, its start-up check, and in-doubt resolution after the
//! participant process is killed holding a prepared transaction.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arbiter_examples::RESOURCE;
use arbiter_examples::pg_bank::{PgBank, PreparedAccounts};
use arbiter_sdk::{
    Branch, BranchState, CallContext, Execute, ParticipantError, ParticipantServer, PgBarrier,
    TwoPhaseHandler, TxnState, Vote,
};
use arbiter_tests::postgres::PgCluster;
use arbiter_tests::process::pg_bank_bin;
use arbiter_tests::{TestCoordinator, eventually};
use tokio::sync::watch;

fn ctx(txn: &str, branch: &str) -> CallContext {
    CallContext {
        txn_id: txn.into(),
        branch_id: branch.into(),
        resource: RESOURCE.into(),
        attempt: 1,
        traceparent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_are_idempotent_and_never_guess() -> anyhow::Result<()> {
    let cluster = PgCluster::start(10)?;
    cluster.create_database("east").await?;
    let coordinator = TestCoordinator::start().await?;
    let bank = PgBank::connect(&cluster.url("east")).await?;
    bank.open_account("alice", 100).await?;
    let (_, adapter) = bank
        .service(coordinator.client.clone(), Duration::from_secs(3600))
        .await?;
    let debit = b"alice -30".as_slice();

    // A repeated prepare answers YES again without debiting twice; the
    // debit is invisible until commit.
    let t1 = ctx("t1", "1");
    assert_eq!(adapter.prepare(&t1, debit).await?, Vote::Yes);
    assert_eq!(adapter.prepare(&t1, debit).await?, Vote::Yes);
    assert_eq!(bank.prepared().await?, 1);
    assert_eq!(bank.balance("alice").await?, Some(100));
    adapter.commit(&t1, debit).await?;
    adapter.commit(&t1, debit).await?;
    assert_eq!(bank.balance("alice").await?, Some(70));
    assert_eq!(bank.prepared().await?, 0);
    // A prepare repeated after the commit still answers YES, and does nothing.
    assert_eq!(adapter.prepare(&t1, debit).await?, Vote::Yes);
    assert_eq!(bank.balance("alice").await?, Some(70));

    // Rolled back: the prepared debit is gone, a repeat is a no-op, and a
    // commit of it afterwards is refused rather than guessed.
    let t2 = ctx("t2", "1");
    assert_eq!(adapter.prepare(&t2, debit).await?, Vote::Yes);
    adapter.rollback(&t2, debit).await?;
    adapter.rollback(&t2, debit).await?;
    assert_eq!(bank.balance("alice").await?, Some(70));
    assert!(matches!(
        adapter.commit(&t2, debit).await,
        Err(ParticipantError::Internal(_))
    ));

    // Rollback first (empty rollback), then the late prepare: refused.
    let t3 = ctx("t3", "1");
    adapter.rollback(&t3, debit).await?;
    assert!(matches!(adapter.prepare(&t3, debit).await?, Vote::No(_)));
    assert_eq!(bank.prepared().await?, 0);

    // Overdraft: NO, nothing prepared, and the NO is what a repeat gets.
    let t4 = ctx("t4", "1");
    assert!(matches!(
        adapter.prepare(&t4, b"alice -1000").await?,
        Vote::No(_)
    ));
    assert!(matches!(
        adapter.prepare(&t4, b"alice -1").await?,
        Vote::No(_)
    ));
    assert_eq!(bank.prepared().await?, 0);
    assert_eq!(bank.balance("alice").await?, Some(70));

    // A commit for a branch never prepared here is an error, not a success.
    assert!(matches!(
        adapter.commit(&ctx("t5", "1"), debit).await,
        Err(ParticipantError::Internal(_))
    ));
    Ok(())
}

#[tokio::test]
async fn two_phase_adapter_refuses_to_start_without_prepared_transactions() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let coordinator = TestCoordinator::start().await?;
    let barrier = PgBarrier::connect(&cluster.url("postgres"), 2).await?;
    let started = barrier
        .two_phase(
            PreparedAccounts,
            coordinator.client.clone(),
            Duration::from_secs(60),
        )
        .await;
    match started {
        Err(ParticipantError::Invalid(message)) => {
            assert!(message.contains("max_prepared_transactions"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started on a server that cannot prepare transactions"),
    }
    Ok(())
}

/// A `pg-bank` process: the participant that gets killed.
struct BankProcess {
    child: Child,
    endpoint: String,
}

impl BankProcess {
    fn start(url: &str, coordinator: &str) -> anyhow::Result<BankProcess> {
        let mut child = Command::new(pg_bank_bin()?)
            .args(["--database-url", url, "--coordinator", coordinator])
            .args(["--account", "alice=100", "--resolve-every-secs", "1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("pg-bank did not start: {line:?}"))?
            .to_string();
        Ok(BankProcess { child, endpoint })
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for BankProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A participant whose prepare waits until the gate opens, then votes as
/// its payload says.
struct Gate(watch::Receiver<bool>);

impl TwoPhaseHandler for Gate {
    async fn prepare(&self, _: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        let mut open = self.0.clone();
        let _ = open.wait_for(|open| *open).await;
        Ok(if payload == b"no" {
            Vote::No("the other side refused".into())
        } else {
            Vote::Yes
        })
    }
    async fn commit(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        Ok(())
    }
    async fn rollback(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        Ok(())
    }
}

/// The participant prepares, is killed, the coordinator decides without
/// it, and a new participant process (on another port, so the
/// coordinator's own retries cannot reach it) resolves the prepared
/// transaction by asking the coordinator.
async fn killed_after_prepare(commit: bool) -> anyhow::Result<()> {
    let cluster = PgCluster::start(10)?;
    cluster.create_database("east").await?;
    let url = cluster.url("east");
    let coordinator = TestCoordinator::start().await?;
    let mut first = BankProcess::start(&url, &coordinator.endpoint)?;

    let (open, gate) = watch::channel(false);
    let other = ParticipantServer::new()
        .two_phase("gate", Gate(gate))
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let txn_id = format!("in-doubt-{commit}");
    let txn = Execute::two_phase()
        .txn_id(&txn_id)
        .timeout(Duration::from_secs(60))
        .branch(Branch::new(&first.endpoint, RESOURCE).payload("alice -30"))
        .branch(Branch::new(other.endpoint(), "gate").payload(if commit { "yes" } else { "no" }))
        .wait(false);
    let client = coordinator.client.clone();
    let running = tokio::spawn(async move { client.execute(txn).await });

    // The bank has prepared and its YES reached the coordinator: kill it.
    let bank = PgBank::connect(&url).await?;
    let client = coordinator.client.clone();
    eventually("the bank's branch is prepared at the coordinator", || {
        let (client, txn_id) = (client.clone(), txn_id.clone());
        async move {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            (txn.branches.first()?.state() == BranchState::Prepared).then_some(())
        }
    })
    .await;
    assert_eq!(bank.prepared().await?, 1);
    first.kill()?;

    // The coordinator decides; phase 2 cannot reach the dead bank.
    open.send(true)?;
    let outcome = running.await??;
    let expected = if commit {
        TxnState::Committing
    } else {
        TxnState::Aborting
    };
    assert_eq!(outcome.state, expected, "{}", outcome.reason);
    assert_eq!(
        bank.prepared().await?,
        1,
        "still in doubt while the bank is down"
    );

    // A new bank process on the same database resolves it.
    let _second = BankProcess::start(&url, &coordinator.endpoint)?;
    let bank = Arc::new(bank);
    let resolved = eventually("the in-doubt transaction is resolved", || {
        let bank = bank.clone();
        async move {
            (bank.prepared().await.ok()? == 0).then_some(())?;
            bank.balance("alice").await.ok()?
        }
    })
    .await;
    assert_eq!(resolved, if commit { 70 } else { 100 });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_after_prepare_commits_by_in_doubt_resolution() -> anyhow::Result<()> {
    killed_after_prepare(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_after_prepare_rolls_back_by_in_doubt_resolution() -> anyhow::Result<()>
{
    killed_after_prepare(false).await
}

#[tokio::test]
async fn a_participant_starts_while_the_coordinator_is_down() -> anyhow::Result<()> {
    let cluster = PgCluster::start(10)?;
    cluster.create_database("east").await?;
    let dead = format!("http://127.0.0.1:{}", arbiter_tests::process::free_port()?);
    let bank = BankProcess::start(&cluster.url("east"), &dead)?;
    assert!(bank.endpoint.starts_with("http://127.0.0.1:"));
    Ok(())
}
