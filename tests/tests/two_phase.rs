//! Two-phase commit over real gRPC: what the outcome is, and what every
//! participant saw.

use arbiter_sdk::{Branch, BranchState, Execute, TxnState};
use arbiter_tests::{TestCoordinator, recorder_participant};

#[tokio::test]
async fn all_yes_commits_every_branch() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("yes"))
                .branch(Branch::new(b.endpoint(), "r2").payload("yes")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Committed, "{}", outcome.reason);
    assert_eq!(outcome.branch_ids, vec!["1", "2"]);
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["prepare", "commit"]);
    assert_eq!(rec_b.calls(&outcome.txn_id), vec!["prepare", "commit"]);
    let seen = rec_a.seen();
    assert_eq!(
        (
            seen[0].resource.as_str(),
            seen[0].branch_id.as_str(),
            seen[0].attempt
        ),
        ("r1", "1", 1)
    );

    let txn = coordinator.client.get_transaction(&outcome.txn_id).await?;
    assert_eq!(txn.state(), TxnState::Committed);
    assert!(txn.decided_at_ms > 0 && txn.finished_at_ms >= txn.decided_at_ms);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state() == BranchState::Committed && b.attempts == 2)
    );
    Ok(())
}

#[tokio::test]
async fn one_no_vote_aborts_and_every_prepared_branch_is_rolled_back() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let (c, rec_c) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("yes"))
                .branch(Branch::new(b.endpoint(), "r1").payload("no:insufficient funds"))
                .branch(Branch::new(c.endpoint(), "r1").payload("yes")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted);
    assert!(
        outcome.reason.contains("branch 2") && outcome.reason.contains("insufficient funds"),
        "reason names the branch and its reason: {}",
        outcome.reason
    );
    for rec in [&rec_a, &rec_b, &rec_c] {
        assert_eq!(rec.calls(&outcome.txn_id), vec!["prepare", "rollback"]);
    }
    let txn = coordinator.client.get_transaction(&outcome.txn_id).await?;
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state() == BranchState::RolledBack)
    );
    assert!(txn.branches[1].last_error.contains("insufficient funds"));
    Ok(())
}

#[tokio::test]
async fn read_only_branch_gets_no_phase_two() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("yes"))
                .branch(Branch::new(b.endpoint(), "r1").payload("read-only")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Committed);
    assert_eq!(rec_a.calls(&outcome.txn_id), vec!["prepare", "commit"]);
    assert_eq!(rec_b.calls(&outcome.txn_id), vec!["prepare"]);
    let txn = coordinator.client.get_transaction(&outcome.txn_id).await?;
    assert_eq!(txn.branches[1].state(), BranchState::ReadOnly);
    Ok(())
}

#[tokio::test]
async fn step_by_step_api_commits_with_durable_registrations() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec) = recorder_participant().await?;
    let txn_id = client.begin(arbiter_sdk::Mode::TwoPhase, None).await?;
    let first = client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    let second = client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r2"))
        .await?;
    assert_eq!((first.as_str(), second.as_str()), ("1", "2"));
    let before = client.get_transaction(&txn_id).await?;
    assert_eq!(before.state(), TxnState::Active);
    assert_eq!(before.branches.len(), 2);
    assert!(
        rec.calls(&txn_id).is_empty(),
        "nothing is called before Commit"
    );

    let outcome = client.commit(&txn_id, true).await?;
    assert_eq!(outcome.state, TxnState::Committed);
    assert_eq!(rec.branch_calls(&txn_id, "1"), vec!["prepare", "commit"]);
    assert_eq!(rec.branch_calls(&txn_id, "2"), vec!["prepare", "commit"]);
    let again = client.commit(&txn_id, true).await?;
    assert_eq!(
        again.state,
        TxnState::Committed,
        "a repeated Commit reports the outcome"
    );
    assert_eq!(rec.calls(&txn_id).len(), 4, "and calls nobody again");
    Ok(())
}
