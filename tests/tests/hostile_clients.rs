//! What a careless or hostile client sends that a coordinator must refuse or
//! bound: participant endpoints that can never work or that multiply
//! channels, and reasons of any size.

use arbiter::Config;
use arbiter_proto::v1 as pb;
use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::{TestCoordinator, code_of, eventually, recorder_participant};
use tonic::Code;

/// Executes one branch on `participant`; the gRPC code it got.
async fn execute_on(coordinator: &TestCoordinator, participant: &str) -> Code {
    let result = coordinator
        .client
        .execute(Execute::two_phase().branch(Branch::new(participant, "r1")))
        .await;
    match result {
        Ok(_) => Code::Ok,
        Err(e) => code_of(&e),
    }
}

/// Userinfo made every `Execute` a new channel to the same participant
/// (3,000 of them: fds 11 -> 3,013), and slipped past the allowlist.
#[tokio::test]
async fn user_info_in_endpoints_is_refused_before_the_allowlist() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start_with(|c: &mut Config| {
        c.allow_participants = vec!["127.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!())];
    })
    .await?;
    for i in 0..300 {
        let code = execute_on(&coordinator, &format!("http://u{i}@127.0.0.1:5000")).await;
        assert_eq!(code, Code::InvalidArgument, "u{i}@");
    }
    let err = coordinator
        .client
        .execute(Execute::two_phase().branch(Branch::new("http://a:b@127.0.0.1:5000", "r1")))
        .await
        .err();
    assert!(
        err.is_some_and(|e| e.to_string().contains("user info")),
        "the message says why"
    );
    Ok(())
}

#[tokio::test]
async fn endpoints_that_can_never_work_are_refused_at_registration() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let own_port = coordinator.endpoint.rsplit(':').next().unwrap_or_default();
    for endpoint in [
        "http://127.0.0.1:0".to_string(),
        "http://127.0.0.1:99999".to_string(),
        coordinator.endpoint.clone(),
        format!("http://localhost:{own_port}"),
    ] {
        assert_eq!(
            execute_on(&coordinator, &endpoint).await,
            Code::InvalidArgument,
            "{endpoint}"
        );
        let txn = coordinator.client.begin(Mode::TwoPhase, None).await?;
        let registered = coordinator
            .client
            .register_branch(&txn, &Branch::new(&endpoint, "r1"))
            .await;
        assert_eq!(
            registered.err().as_ref().map(code_of),
            Some(Code::InvalidArgument),
            "RegisterBranch {endpoint}"
        );
    }
    Ok(())
}

/// The same participant written two ways is one participant: stored (and
/// so shown, compared and dialled) in one normal form.
#[tokio::test]
async fn endpoints_are_normalised_before_use() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (participant, recorder) = recorder_participant().await?;
    let port = participant
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let shouting = format!("HTTP://LOCALHOST:{port}/");
    let outcome = coordinator
        .client
        .execute(
            Execute::two_phase()
                .txn_id("normal-1")
                .branch(Branch::new(&shouting, "r1"))
                .wait(true),
        )
        .await?;
    assert!(outcome.is_committed(), "{outcome:?}");
    let txn = coordinator.client.get_transaction("normal-1").await?;
    assert_eq!(
        txn.branches[0].participant,
        format!("http://localhost:{port}")
    );
    assert_eq!(recorder.calls("normal-1"), ["prepare", "commit"]);
    // A repeat written the other way is the same transaction, not a conflict.
    let again = coordinator
        .client
        .execute(
            Execute::two_phase()
                .txn_id("normal-1")
                .branch(Branch::new(format!("http://localhost:{port}"), "r1")),
        )
        .await?;
    assert_eq!(again.state, TxnState::Committed);
    Ok(())
}

/// A 7 MB Rollback reason and 3.5 MB NO reasons were stored whole; then
/// `txn ls`, `txn show` and GetTransaction failed on a default 4 MB client.
#[tokio::test]
async fn reasons_are_capped_and_truncated() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let txn = client.begin(Mode::TwoPhase, None).await?;
    let long = "x".repeat(4096);
    let refused = client.rollback(&txn, &long).await;
    assert_eq!(
        refused.err().as_ref().map(code_of),
        Some(Code::InvalidArgument),
        "a client reason over the cap"
    );
    assert_eq!(
        client.rollback(&txn, &"y".repeat(1024)).await?,
        TxnState::Aborted
    );

    // A participant voting NO with a 3.5 MB reason.
    let (participant, _recorder) = recorder_participant().await?;
    let outcome = client
        .execute(
            Execute::two_phase()
                .txn_id("big-no")
                .branch(Branch::new(participant.endpoint(), "r1").payload("no-long:3500000"))
                .wait(true),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Aborted);
    assert!(
        outcome.reason.len() < 4096,
        "{} bytes",
        outcome.reason.len()
    );
    assert!(outcome.reason.contains("truncated"), "marked as truncated");
    let shown = client.get_transaction("big-no").await?;
    assert!(shown.reason.len() < 4096);
    let listed = eventually("the listing answers", || async {
        let mut admin = pb::admin_client::AdminClient::connect(coordinator.endpoint.clone())
            .await
            .ok()?;
        admin
            .list_transactions(pb::ListTransactionsRequest::default())
            .await
            .ok()
    })
    .await;
    assert!(!listed.into_inner().transactions.is_empty());
    Ok(())
}
