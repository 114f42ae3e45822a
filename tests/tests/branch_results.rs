//! Branch results: a participant answers its YES vote or its ack with a
//! small result, and the initiator sees each branch's result (or why it
//! voted NO) in the Commit/Execute answer and in GetTransaction, across a
//! restart too. Participants that send none keep working as before.

use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::{ArbiterProcess, TestCoordinator, eventually, recorder_participant};

#[tokio::test]
async fn results_of_votes_and_acks_reach_the_initiator() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, _rec_a) = recorder_participant().await?;
    let (b, _rec_b) = recorder_participant().await?;

    for execute in [Execute::two_phase(), Execute::tcc()] {
        let outcome = client
            .execute(
                execute
                    .branch(Branch::new(a.endpoint(), "r1").payload("result:seat 14C"))
                    .branch(Branch::new(b.endpoint(), "r2").payload("yes"))
                    .wait(true),
            )
            .await?;
        assert_eq!(outcome.state, TxnState::Committed, "{outcome:?}");
        // The ack's result replaces the vote's; a branch that sent none has none.
        assert_eq!(outcome.result_of("1"), Some(&b"done:seat 14C"[..]));
        assert_eq!(outcome.result_of("2"), None);
        assert_eq!(outcome.branch_results.len(), 2);
        let txn = client.get_transaction(&outcome.txn_id).await?;
        assert_eq!(txn.branches[0].result, b"done:seat 14C");
        assert!(txn.branches[1].result.is_empty());
    }

    // Answered once decided (wait=false): the vote's result is there.
    let decided = client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("result:hold-7"))
                .wait(false),
        )
        .await?;
    assert!(decided.is_committed() || decided.state == TxnState::Committing);
    let first = decided.result_of("1");
    assert!(
        first == Some(&b"hold-7"[..]) || first == Some(&b"done:hold-7"[..]),
        "{decided:?}"
    );

    // A NO vote: its reason is that branch's answer.
    let refused = client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("result:x"))
                .branch(Branch::new(b.endpoint(), "r2").payload("no:sold out"))
                .wait(true),
        )
        .await?;
    assert_eq!(refused.state, TxnState::Aborted);
    let no = refused
        .branch_results
        .iter()
        .find(|r| r.branch_id == "2")
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(no.contains("sold out"), "{refused:?}");
    // Branch 1 voted YES with a result, then was rolled back: no result.
    assert_eq!(refused.result_of("1"), None, "{refused:?}");
    let first = refused.branch_results.iter().find(|r| r.branch_id == "1");
    assert_eq!(
        first.map(|r| r.state()),
        Some(arbiter_sdk::BranchState::RolledBack),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_result_over_the_limit_makes_the_vote_a_no() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (a, rec_a) = recorder_participant().await?;
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1").payload("huge-result"))
                .wait(true),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted, "{outcome:?}");
    assert!(outcome.reason.contains("4096-byte limit"), "{outcome:?}");
    // It voted YES, so its held work is rolled back.
    assert_eq!(rec_a.calls(&outcome.txn_id), ["prepare", "rollback"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_kept_in_the_log_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(dir.path(), &[]).await?;
    let (a, _rec) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let id = client.begin(Mode::Tcc, None).await?;
    client
        .register_branch(
            &id,
            &Branch::new(a.endpoint(), "r1").payload("result:ticket 42"),
        )
        .await?;
    let outcome = client.commit(&id, true).await?;
    assert_eq!(outcome.result_of("1"), Some(&b"done:ticket 42"[..]));

    arbiter.kill().await?;
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    let txn = eventually("recovered and committed", || async {
        let txn = client.get_transaction(&id).await.ok()?;
        (txn.state() == TxnState::Committed).then_some(txn)
    })
    .await;
    assert_eq!(txn.branches[0].result, b"done:ticket 42");
    Ok(())
}
