//! The Coordinator API's life cycle and its answers to bad input: timeouts,
//! Rollback, idempotent Begin, and a clear status for every mistake.

use std::time::Duration;

use arbiter_proto::v1 as pb;
use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::{TestCoordinator, code_of, eventually, recorder_participant};
use tonic::Code;

#[tokio::test]
async fn active_transaction_past_its_timeout_is_aborted() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec) = recorder_participant().await?;
    let txn_id = client
        .begin(Mode::TwoPhase, Some(Duration::from_millis(300)))
        .await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    let txn = eventually("the timed-out transaction is aborted", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.state() == TxnState::Aborted).then_some(txn)
    })
    .await;
    assert!(txn.reason.contains("timed out"), "{}", txn.reason);
    assert!(
        rec.calls(&txn_id).is_empty(),
        "no prepare was ever sent, so nothing to roll back"
    );
    let late = client.commit(&txn_id, true).await?;
    assert_eq!(
        late.state,
        TxnState::Aborted,
        "a late Commit learns the outcome"
    );
    let err = client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await;
    assert_eq!(
        err.err().as_ref().map(code_of),
        Some(Code::FailedPrecondition)
    );
    Ok(())
}

#[tokio::test]
async fn rollback_aborts_an_active_transaction_and_refuses_a_committed_one() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec) = recorder_participant().await?;
    let txn_id = client.begin(Mode::Tcc, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    assert_eq!(
        client.rollback(&txn_id, "user cancelled").await?,
        TxnState::Aborted
    );
    assert_eq!(
        client.rollback(&txn_id, "again").await?,
        TxnState::Aborted,
        "idempotent"
    );
    let txn = client.get_transaction(&txn_id).await?;
    assert!(txn.reason.contains("user cancelled"), "{}", txn.reason);
    assert!(rec.calls(&txn_id).is_empty());

    let done = client
        .execute(Execute::tcc().branch(Branch::new(a.endpoint(), "r1")))
        .await?;
    assert!(done.is_committed());
    let err = client.rollback(&done.txn_id, "too late").await;
    assert_eq!(
        err.err().as_ref().map(code_of),
        Some(Code::FailedPrecondition)
    );
    Ok(())
}

#[tokio::test]
async fn register_after_commit_is_failed_precondition() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, _rec) = recorder_participant().await?;
    let txn_id = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    assert!(client.commit(&txn_id, true).await?.is_committed());
    let err = client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r2"))
        .await
        .err();
    assert_eq!(err.as_ref().map(code_of), Some(Code::FailedPrecondition));
    assert!(err.is_some_and(|e| e.to_string().contains("COMMITTED")));
    Ok(())
}

#[tokio::test]
async fn unknown_ids_are_not_found_everywhere() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let missing = "no-such-txn";
    assert_eq!(
        client
            .get_transaction(missing)
            .await
            .err()
            .as_ref()
            .map(code_of),
        Some(Code::NotFound)
    );
    assert_eq!(
        client
            .commit(missing, true)
            .await
            .err()
            .as_ref()
            .map(code_of),
        Some(Code::NotFound)
    );
    assert_eq!(
        client
            .rollback(missing, "")
            .await
            .err()
            .as_ref()
            .map(code_of),
        Some(Code::NotFound)
    );
    let branch = Branch::new("http://127.0.0.1:1", "r1");
    assert_eq!(
        client
            .register_branch(missing, &branch)
            .await
            .err()
            .as_ref()
            .map(code_of),
        Some(Code::NotFound)
    );
    assert_eq!(
        client.get_transaction("").await.err().as_ref().map(code_of),
        Some(Code::InvalidArgument),
        "an empty id is a bad request, not a missing transaction"
    );
    Ok(())
}

#[tokio::test]
async fn begin_with_a_client_id_is_idempotent() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let first = client
        .begin_with_id(Mode::TwoPhase, None, "order-42")
        .await?;
    let again = client
        .begin_with_id(Mode::TwoPhase, None, "order-42")
        .await?;
    assert_eq!((first.as_str(), again.as_str()), ("order-42", "order-42"));
    let other_mode = client.begin_with_id(Mode::Tcc, None, "order-42").await;
    assert_eq!(
        other_mode.err().as_ref().map(code_of),
        Some(Code::AlreadyExists)
    );
    let longer = client
        .begin_with_id(Mode::TwoPhase, Some(Duration::from_secs(99)), "order-42")
        .await;
    assert_eq!(
        longer.err().as_ref().map(code_of),
        Some(Code::AlreadyExists),
        "a repeat with another timeout is a conflict, not a silent OK"
    );
    Ok(())
}

/// The hijack found by the adversarial pass: read one server id, plant the
/// ones the server hands out next with a client-chosen `Begin`, and the next
/// client's `Begin` returned the planted transaction.
#[tokio::test]
async fn server_ids_cannot_be_planted_or_guessed() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let seen = client.begin(Mode::TwoPhase, None).await?;
    assert!(
        seen.starts_with('_') && seen.len() == 33,
        "server id form: {seen}"
    );
    // The planter may not take any id of the server's form, its own
    // included, nor anything it could guess from it.
    let mut guesses = vec![seen.clone()];
    guesses.extend((0..16u8).map(|i| format!("{}{i:x}", &seen[..32])));
    guesses.push(format!("_{}", &seen[1..]));
    for guess in &guesses {
        let planted = client.begin_with_id(Mode::TwoPhase, None, guess).await;
        let err = planted.err();
        assert_eq!(err.as_ref().map(code_of), Some(Code::InvalidArgument));
        assert!(
            err.is_some_and(|e| e.to_string().contains("reserved")),
            "the message says why"
        );
    }
    // The next clients get fresh, empty transactions of their own.
    let mut victims = Vec::new();
    for _ in 0..50 {
        let id = client.begin(Mode::TwoPhase, None).await?;
        assert!(!guesses.contains(&id) && !victims.contains(&id), "{id}");
        let txn = client.get_transaction(&id).await?;
        assert_eq!(txn.state(), TxnState::Active);
        assert!(txn.branches.is_empty(), "nobody else's branches");
        victims.push(id);
    }
    // No two ids of one millisecond differ only in a counter: the part after
    // the time is random.
    let tails: std::collections::HashSet<&str> = victims.iter().map(|id| &id[13..]).collect();
    assert_eq!(tails.len(), victims.len());
    let mut sorted = victims.clone();
    sorted.sort_by(|a, b| a[..13].cmp(&b[..13]));
    assert_eq!(sorted, victims, "ids sort by creation time");
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_with_a_clear_message() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start_with(|c| {
        c.max_branches = 2;
        c.max_payload_bytes = 1024;
    })
    .await?;
    let client = &coordinator.client;
    let mut raw = client.raw();
    let txn_id = client.begin(Mode::TwoPhase, None).await?;

    let unset_mode = raw.begin(pb::BeginRequest::default()).await.err();
    assert_eq!(
        unset_mode.as_ref().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    assert!(unset_mode.is_some_and(|s| s.message().contains("MODE_TWO_PHASE")));
    let unknown_mode = raw
        .begin(pb::BeginRequest {
            mode: 42,
            ..Default::default()
        })
        .await;
    assert_eq!(
        unknown_mode.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );

    let cases: Vec<(Branch, &str)> = vec![
        (Branch::new("not a uri", "r1"), "participant endpoint"),
        (Branch::new("127.0.0.1:9001", "r1"), "http://"),
        (Branch::new("http://127.0.0.1:9001", ""), "resource"),
        (
            Branch::new("http://127.0.0.1:9001", "r1").payload(vec![0u8; 2048]),
            "payload",
        ),
    ];
    for (branch, expected) in cases {
        let err = client.register_branch(&txn_id, &branch).await.err();
        assert_eq!(
            err.as_ref().map(code_of),
            Some(Code::InvalidArgument),
            "{branch:?}"
        );
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(expected),
            "{message:?} should mention {expected:?}"
        );
    }

    let ok = Branch::new("http://127.0.0.1:9001", "r1");
    client.register_branch(&txn_id, &ok).await?;
    client.register_branch(&txn_id, &ok).await?;
    let too_many = client.register_branch(&txn_id, &ok).await.err();
    assert_eq!(too_many.as_ref().map(code_of), Some(Code::InvalidArgument));
    assert!(too_many.is_some_and(|e| e.to_string().contains("limit")));

    let no_branches = client.execute(Execute::two_phase()).await.err();
    assert_eq!(
        no_branches.as_ref().map(code_of),
        Some(Code::InvalidArgument)
    );
    let bad_id = client.begin_with_id(Mode::Tcc, None, "a/b").await.err();
    assert_eq!(bad_id.as_ref().map(code_of), Some(Code::InvalidArgument));
    let huge_timeout = client
        .begin(Mode::Tcc, Some(Duration::from_secs(365 * 24 * 3600)))
        .await
        .err();
    assert_eq!(
        huge_timeout.as_ref().map(code_of),
        Some(Code::InvalidArgument)
    );

    // The transaction is untouched by all of that.
    let txn = client.get_transaction(&txn_id).await?;
    assert_eq!((txn.state(), txn.branches.len()), (TxnState::Active, 2));
    Ok(())
}

#[tokio::test]
async fn client_branch_ids_make_registration_retries_safe() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let mut raw = client.raw();
    let txn_id = client.begin(Mode::TwoPhase, None).await?;
    let request = |payload: &str| pb::RegisterBranchRequest {
        txn_id: txn_id.clone(),
        participant: "http://127.0.0.1:9001".into(),
        resource: "r1".into(),
        payload: payload.as_bytes().to_vec(),
        branch_id: "debit".into(),
        ..Default::default()
    };
    let first = raw
        .register_branch(request("10"))
        .await?
        .into_inner()
        .branch_id;
    let retry = raw
        .register_branch(request("10"))
        .await?
        .into_inner()
        .branch_id;
    assert_eq!((first.as_str(), retry.as_str()), ("debit", "debit"));
    let conflict = raw.register_branch(request("99")).await.err();
    assert_eq!(conflict.map(|s| s.code()), Some(Code::AlreadyExists));
    assert_eq!(client.get_transaction(&txn_id).await?.branches.len(), 1);
    Ok(())
}

#[tokio::test]
async fn finished_transactions_are_collected_after_retention_and_unfinished_never()
-> anyhow::Result<()> {
    let coordinator = TestCoordinator::start_with(|c| {
        c.retention = Duration::ZERO;
        c.collect_interval = Duration::from_millis(50);
    })
    .await?;
    let client = &coordinator.client;
    let (a, _rec) = recorder_participant().await?;
    let done = client
        .execute(Execute::two_phase().branch(Branch::new(a.endpoint(), "r1")))
        .await?;
    assert!(done.is_committed());
    let open = client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(3_600)))
        .await?;
    eventually("the finished transaction is collected", || async {
        let gone = client.get_transaction(&done.txn_id).await.err();
        (gone.as_ref().map(code_of) == Some(Code::NotFound)).then_some(())
    })
    .await;
    let still = client.get_transaction(&open).await?;
    assert_eq!(
        still.state(),
        TxnState::Active,
        "an unfinished transaction is never collected"
    );
    Ok(())
}

#[tokio::test]
async fn in_doubt_participants_can_resolve_an_outcome() -> anyhow::Result<()> {
    use arbiter_sdk::Resolution;
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, _rec) = recorder_participant().await?;
    let committed = client
        .execute(Execute::two_phase().branch(Branch::new(a.endpoint(), "r1")))
        .await?;
    let aborted = client
        .execute(Execute::two_phase().branch(Branch::new(a.endpoint(), "r1").payload("no:x")))
        .await?;
    let active = client.begin(Mode::TwoPhase, None).await?;
    assert_eq!(client.resolve(&committed.txn_id).await?, Resolution::Commit);
    assert_eq!(client.resolve(&aborted.txn_id).await?, Resolution::Abort);
    assert_eq!(client.resolve(&active).await?, Resolution::Wait);
    assert_eq!(
        client.resolve("never-heard-of-it").await?,
        Resolution::Abort,
        "presumed abort"
    );
    Ok(())
}

#[tokio::test]
async fn repeating_an_execute_with_its_id_runs_it_once() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (a, rec) = recorder_participant().await?;
    let txn = || {
        Execute::two_phase()
            .txn_id("order-7")
            .branch(Branch::new(a.endpoint(), "r1"))
            .branch(Branch::new(a.endpoint(), "r2"))
    };
    let first = client.execute(txn()).await?;
    let again = client.execute(txn()).await?;
    assert_eq!(first.state, TxnState::Committed);
    assert_eq!(
        (again.state, again.txn_id.as_str()),
        (TxnState::Committed, "order-7")
    );
    assert_eq!(again.branch_ids, vec!["1", "2"]);
    assert_eq!(
        rec.calls("order-7").len(),
        4,
        "each branch prepared and committed once"
    );
    let different = client
        .execute(
            Execute::two_phase()
                .txn_id("order-7")
                .branch(Branch::new(a.endpoint(), "r3")),
        )
        .await
        .err();
    assert_eq!(different.as_ref().map(code_of), Some(Code::AlreadyExists));
    Ok(())
}
