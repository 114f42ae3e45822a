//! `arbiter serve --store postgres://...` as a real process: transactions
//! run, a kill -9 loses nothing, recovery finishes what was decided and
//! aborts what was not, and start-up refuses what it cannot use.

use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::postgres::PgCluster;
use arbiter_tests::process::Start;
use arbiter_tests::{ArbiterProcess, eventually, recorder_participant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_postgres_survives_kill_9() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    cluster.create_database("arbiter").await?;
    let url = cluster.store_url("arbiter");
    let dir = tempfile::tempdir()?;
    let args = [
        "--store",
        &url,
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "200",
    ];
    let mut arbiter = ArbiterProcess::start(dir.path(), &args).await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let client = arbiter.client().await?;

    let committed = client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r2"))
                .wait(true),
        )
        .await?;
    assert!(committed.is_committed(), "{committed:?}");

    // One decided and stuck in phase 2, one undecided: then kill -9.
    rec_b.set_fail_phase2(true);
    let decided = client
        .execute(
            Execute::tcc()
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r1")),
        )
        .await?;
    assert_eq!(decided.state, TxnState::Committing);
    let undecided = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&undecided, &Branch::new(a.endpoint(), "r1"))
        .await?;
    eventually("confirm is being retried", || async {
        (rec_b.calls(&decided.txn_id).len() >= 3).then_some(())
    })
    .await;
    arbiter.kill().await?;

    rec_b.set_fail_phase2(false);
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    eventually("recovery finishes both", || async {
        let done = client.get_transaction(&decided.txn_id).await.ok()?;
        let aborted = client.get_transaction(&undecided).await.ok()?;
        (done.state() == TxnState::Committed && aborted.state() == TxnState::Aborted).then_some(())
    })
    .await;
    let first = client.get_transaction(&committed.txn_id).await?;
    assert_eq!(first.state(), TxnState::Committed, "kept across the kill");
    for rec in [&rec_a, &rec_b] {
        let calls = rec.calls(&decided.txn_id);
        assert!(!calls.contains(&"cancel"), "{calls:?}");
    }
    assert!(!rec_a.calls(&undecided).contains(&"commit"));
    Ok(())
}

#[tokio::test]
async fn a_store_it_cannot_use_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stderr = dir.path().join("stderr");
    let port = arbiter_tests::process::free_port()?;
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/nowhere");
    let start = ArbiterProcess::try_start(dir.path(), &["--store", &url], &stderr).await?;
    let Start::Refused { code, stderr } = start else {
        anyhow::bail!("started on a database that is not there");
    };
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot use PostgreSQL"), "{stderr}");
    assert!(
        !stderr.contains("secret-pw"),
        "the password is never printed: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn one_coordinator_per_database() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    cluster.create_database("arbiter").await?;
    let url = cluster.store_url("arbiter");
    let dir = tempfile::tempdir()?;
    let first = ArbiterProcess::start(&dir.path().join("a"), &["--store", &url]).await?;
    let stderr = dir.path().join("stderr");
    let second =
        ArbiterProcess::try_start(&dir.path().join("b"), &["--store", &url], &stderr).await?;
    let Start::Refused { code, stderr } = second else {
        anyhow::bail!("a second coordinator started on the same database");
    };
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("another coordinator is using this database"),
        "{stderr}"
    );
    drop(first);
    Ok(())
}
