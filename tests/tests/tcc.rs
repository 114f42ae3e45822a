//! TCC over real gRPC: confirm on success, cancel everything on a failed try.

use arbiter_sdk::{Branch, BranchState, Execute, TxnState};
use arbiter_tests::{TestCoordinator, recorder_participant};

#[tokio::test]
async fn successful_tries_are_confirmed() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::tcc()
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r2")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Committed, "{}", outcome.reason);
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["try", "confirm"]);
    assert_eq!(rec_b.calls(&outcome.txn_id), vec!["try", "confirm"]);
    Ok(())
}

#[tokio::test]
async fn one_failed_try_cancels_the_others_and_confirms_nothing() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::tcc()
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r2").payload("reject:out of stock")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted);
    assert!(
        outcome.reason.contains("out of stock"),
        "{}",
        outcome.reason
    );
    assert!(
        outcome.reason.contains("FailedPrecondition"),
        "{}",
        outcome.reason
    );
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["try", "cancel"]);
    assert_eq!(rec_b.calls(&outcome.txn_id), vec!["try", "cancel"]);
    let txn = coordinator.client.get_transaction(&outcome.txn_id).await?;
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state() == BranchState::RolledBack)
    );
    Ok(())
}
