//! A branch resolved by hand against the decision: the transaction must
//! still reach a final state, marked as a heuristic (mixed) outcome, in
//! `txn show`, the audit log and across a restart.

use arbiter_sdk::{Execute, TxnState};
use arbiter_tests::cli::{cli, json, patient_server, stuck_with_a_gone_branch};

/// `txn resolve-branch ID N --as rolled-back` on a COMMITTING transaction
/// used to leave it COMMITTING and stuck for good.
#[tokio::test]
async fn rolling_back_a_branch_of_a_commit_by_hand_finishes_it_as_mixed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = patient_server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let client = arbiter.client().await?;
    let (id, _a, rec_a) = stuck_with_a_gone_branch(&client, Execute::two_phase()).await?;

    let resolved = cli(
        &addr,
        &[
            "txn",
            "resolve-branch",
            &id,
            "2",
            "--as",
            "rolled-back",
            "--reason",
            "undone by hand, ticket OPS-9",
        ],
    )?;
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    let txn = client.get_transaction(&id).await?;
    assert_eq!(txn.state(), TxnState::Committed, "final, not stuck");
    // A client asking for the outcome learns it is mixed, not just COMMITTED.
    let outcome = client.commit(&id, true).await?;
    assert!(outcome.is_committed() && outcome.is_mixed(), "{outcome:?}");
    assert_eq!(outcome.mixed_branches, ["2"]);
    assert_eq!(txn.mixed_branches, ["2"]);
    assert!(
        txn.reason.contains("heuristic mixed outcome"),
        "{}",
        txn.reason
    );
    assert_eq!(rec_a.calls(&id), ["prepare", "commit"]);

    let show = cli(&addr, &["txn", "show", &id])?;
    assert!(show.stdout.contains("MIXED"), "{}", show.stdout);
    let shown = json(&addr, &["txn", "show", &id])?;
    assert_eq!(shown["state"], "COMMITTED");
    assert_eq!(shown["mixed_branches"][0], "2");
    let audit = json(&addr, &["audit", "ls"])?;
    assert_eq!(audit["entries"][0]["action"], "resolve-branch-rolled-back");
    let result = audit["entries"][0]["result"].as_str().unwrap_or_default();
    assert!(result.contains("mixed"), "{}", audit["entries"][0]);

    // The outcome is durable: the same after a restart.
    assert!(arbiter.terminate().await?, "clean shutdown");
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    let txn = client.get_transaction(&id).await?;
    assert_eq!(txn.state(), TxnState::Committed);
    assert_eq!(txn.mixed_branches, ["2"]);
    Ok(())
}
