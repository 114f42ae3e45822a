//! Participant failures: transient phase-1 errors retried until the deadline,
//! phase-2 failures retried with backoff until they succeed.

use std::time::Duration;

use arbiter_sdk::{Branch, BranchState, Execute, Mode, TxnState};
use arbiter_tests::{TestCoordinator, eventually, recorder_participant};

#[tokio::test]
async fn phase_two_is_retried_until_the_participant_recovers() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    rec_b.set_fail_phase2(true);
    let txn_id = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    client
        .register_branch(&txn_id, &Branch::new(b.endpoint(), "r1"))
        .await?;

    // wait=false answers once the decision is durable, not when phase 2 is done.
    let decided = client.commit(&txn_id, false).await?;
    assert!(
        matches!(decided.state, TxnState::Committing | TxnState::Committed),
        "{:?}",
        decided.state
    );
    let stuck = eventually("phase 2 of branch 2 has failed a few times", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.branches[1].attempts >= 4).then_some(txn)
    })
    .await;
    assert_eq!(stuck.state(), TxnState::Committing);
    assert!(
        stuck.branches[1].last_error.contains("refused by the test"),
        "{}",
        stuck.branches[1].last_error
    );
    assert_eq!(stuck.branches[0].state(), BranchState::Committed);

    rec_b.set_fail_phase2(false);
    eventually(
        "the transaction completes once the participant is back",
        || async {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            (txn.state() == TxnState::Committed).then_some(())
        },
    )
    .await;
    assert_eq!(rec_a.calls(&txn_id), vec!["prepare", "commit"]);
    let calls = rec_b.calls(&txn_id);
    assert_eq!(calls[0], "prepare");
    assert!(
        calls[1..].iter().all(|c| *c == "commit") && calls.len() >= 5,
        "{calls:?}"
    );
    let attempts: Vec<u32> = rec_b
        .seen()
        .iter()
        .filter(|s| s.call == "commit")
        .map(|s| s.attempt)
        .collect();
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "attempt numbers count up: {attempts:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unavailable_participant_in_phase_one_aborts_at_the_deadline() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .timeout(Duration::from_millis(800))
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r1").payload("unavailable")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted);
    assert!(outcome.reason.contains("branch 2"), "{}", outcome.reason);
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["prepare", "rollback"]);
    let calls_b = rec_b.calls(&outcome.txn_id);
    assert!(
        calls_b.iter().filter(|c| **c == "prepare").count() >= 2,
        "retried: {calls_b:?}"
    );
    assert_eq!(
        calls_b.last(),
        Some(&"rollback"),
        "its prepare may have run, so it is rolled back"
    );
    Ok(())
}

#[tokio::test]
async fn participant_slower_than_its_call_timeout_is_transient() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::tcc().timeout(Duration::from_millis(1_500)).branch(
                Branch::new(a.endpoint(), "r1")
                    .payload("slow:1000")
                    .call_timeout(Duration::from_millis(100)),
            ),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted);
    let txn = coordinator.client.get_transaction(&outcome.txn_id).await?;
    assert!(
        txn.branches[0].attempts >= 3,
        "tries were retried: {}",
        txn.branches[0].attempts
    );
    assert!(rec.calls(&outcome.txn_id).contains(&"cancel"));
    assert!(!rec.calls(&outcome.txn_id).contains(&"confirm"));
    Ok(())
}

#[tokio::test]
async fn participant_down_in_phase_one_aborts_and_is_rolled_back_when_it_returns()
-> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec_a) = recorder_participant().await?;
    let port = arbiter_tests::process::free_port()?;
    let down = format!("http://127.0.0.1:{port}");
    let decided = client
        .execute(
            Execute::two_phase()
                .timeout(Duration::from_millis(600))
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(down, "r1")),
        )
        .await?;
    assert!(
        matches!(decided.state, TxnState::Aborting | TxnState::Aborted),
        "{:?}",
        decided.state
    );
    let txn_id = decided.txn_id;
    let waiting = eventually(
        "the live branch is rolled back while the dead one is retried",
        || async {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            let live_done = txn.branches[0].state() == BranchState::RolledBack;
            (live_done && txn.branches[1].attempts >= 3).then_some(txn)
        },
    )
    .await;
    assert_eq!(
        waiting.state(),
        TxnState::Aborting,
        "rollback is never given up"
    );
    assert!(!waiting.branches[1].last_error.is_empty());
    assert_eq!(rec_a.calls(&txn_id), vec!["prepare", "rollback"]);

    // The participant comes back on its address: the abort completes by itself.
    let (_back, rec_b) = {
        let rec = std::sync::Arc::new(arbiter_tests::Recorder::new());
        let addr = format!("127.0.0.1:{port}").parse()?;
        (arbiter_tests::serve_recorder(rec.clone(), addr).await?, rec)
    };
    eventually(
        "the abort completes once the participant is back",
        || async {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            (txn.state() == TxnState::Aborted).then_some(())
        },
    )
    .await;
    assert_eq!(rec_b.calls(&txn_id).last(), Some(&"rollback"));
    assert!(!rec_b.calls(&txn_id).contains(&"commit"));
    Ok(())
}
