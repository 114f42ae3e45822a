//! The `arbiter` binary as a real child process: graceful stop and restart,
//! kill -9 and recovery, and refusing a damaged log.

use std::process::Command;

use arbiter_sdk::{Branch, BranchState, Execute, Mode, TxnState};
use arbiter_tests::process::arbiter_bin;
use arbiter_tests::{ArbiterProcess, eventually, recorder_participant};

#[tokio::test]
async fn transaction_survives_sigterm_and_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(&dir.path().join("data"), &[]).await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = arbiter
        .client()
        .await?
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("yes"))
                .branch(Branch::new(b.endpoint(), "r2").payload("yes")),
        )
        .await?;
    assert!(outcome.is_committed(), "{}", outcome.reason);

    assert!(arbiter.terminate().await?, "SIGTERM is a clean exit");
    arbiter.restart().await?;
    let txn = arbiter
        .client()
        .await?
        .get_transaction(&outcome.txn_id)
        .await?;
    assert_eq!(txn.state(), TxnState::Committed);
    assert_eq!(txn.branches.len(), 2);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state() == BranchState::Committed)
    );
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["prepare", "commit"]);
    assert_eq!(rec_b.calls(&outcome.txn_id), vec!["prepare", "commit"]);
    Ok(())
}

#[tokio::test]
async fn decided_commit_is_finished_after_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args = ["--retry-base-ms", "20", "--retry-max-ms", "200"];
    let mut arbiter = ArbiterProcess::start(&dir.path().join("data"), &args).await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    rec_b.set_fail_phase2(true);
    let client = arbiter.client().await?;
    let decided = client
        .execute(
            Execute::tcc()
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r1")),
        )
        .await?;
    assert_eq!(decided.state, TxnState::Committing);
    eventually("confirm is being retried", || async {
        (rec_b.calls(&decided.txn_id).len() >= 3).then_some(())
    })
    .await;

    arbiter.kill().await?;
    rec_b.set_fail_phase2(false);
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    eventually("recovery finishes the decided transaction", || async {
        let txn = client.get_transaction(&decided.txn_id).await.ok()?;
        (txn.state() == TxnState::Committed).then_some(())
    })
    .await;
    for rec in [&rec_a, &rec_b] {
        let calls = rec.calls(&decided.txn_id);
        assert_eq!(calls[0], "try");
        assert!(calls[1..].iter().all(|c| *c == "confirm"), "{calls:?}");
        assert!(!calls.contains(&"cancel"));
    }
    Ok(())
}

#[tokio::test]
async fn undecided_transaction_is_aborted_after_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(&dir.path().join("data"), &[]).await?;
    let (a, rec) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let txn_id = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    arbiter.kill().await?;
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    let txn = eventually("presumed abort after the restart", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.state() == TxnState::Aborted).then_some(txn)
    })
    .await;
    assert!(txn.reason.contains("presumed abort"), "{}", txn.reason);
    assert_eq!(txn.branches.len(), 1, "the registration was durable");
    assert!(!rec.calls(&txn_id).contains(&"commit"));
    Ok(())
}

#[test]
fn refuses_to_start_on_a_damaged_log() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("ARBITER_LOG"),
        "arbiter transaction log, format 1\n",
    )?;
    let output = Command::new(arbiter_bin()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(
        !data.join("db").exists(),
        "no empty log was created in its place"
    );
    Ok(())
}

#[tokio::test]
async fn deadline_passing_while_the_coordinator_is_down_aborts_at_recovery() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(&dir.path().join("data"), &[]).await?;
    let (a, rec) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let txn_id = client
        .begin(Mode::Tcc, Some(std::time::Duration::from_millis(300)))
        .await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    assert!(
        arbiter.terminate().await?,
        "graceful stop leaves the transaction for recovery"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await; // past its deadline, while down
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    let txn = eventually("aborted at recovery", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.state() == TxnState::Aborted).then_some(txn)
    })
    .await;
    assert!(!txn.reason.is_empty());
    assert!(!rec.calls(&txn_id).contains(&"confirm"));
    Ok(())
}

#[tokio::test]
async fn refuses_a_log_sled_cannot_open_and_leaves_it_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut arbiter = ArbiterProcess::start(&data, &[]).await?;
    let client = arbiter.client().await?;
    let txn_id = client.begin(Mode::TwoPhase, None).await?;
    assert!(arbiter.terminate().await?);
    std::fs::write(
        data.join("conf"),
        b"\x00\x01garbage that is not a sled config",
    )?;
    let db_before = std::fs::read(data.join("db"))?;

    let output = Command::new(arbiter_bin()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(
        !output.status.success(),
        "must not start on a log it cannot open"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the log"), "{stderr}");
    assert_eq!(
        std::fs::read(data.join("db"))?,
        db_before,
        "the log is left as it was"
    );
    assert!(!txn_id.is_empty());
    Ok(())
}
