//! Sagas against a real `arbiter serve`: steps run in order or by their
//! dependencies, a definitive failure compensates every step that ran in
//! reverse order, transient answers are retried (until the timeout), a
//! must-succeed step runs last and is retried until it succeeds, and bad
//! orders are refused with INVALID_ARGUMENT.

use std::time::Duration;

use arbiter_sdk::{Branch, ClientError, Execute, Mode, TxnState};
use arbiter_tests::{ArbiterProcess, Recorder, recorder_participant};

async fn arbiter(dir: &std::path::Path) -> anyhow::Result<ArbiterProcess> {
    ArbiterProcess::start(dir, &["--retry-base-ms", "20", "--retry-max-ms", "200"]).await
}

/// The (call, branch) pairs of one transaction, in the order seen.
fn trail(rec: &Recorder, txn: &str) -> Vec<(String, String)> {
    rec.seen()
        .into_iter()
        .filter(|s| s.txn_id == txn)
        .map(|s| (s.call.to_string(), s.branch_id))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, b)| (c.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn steps_run_in_order_and_a_failure_compensates_in_reverse() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;

    let done = client
        .execute(
            Execute::saga()
                .branch(Branch::new(p.endpoint(), "r1").payload("result:seat 12A"))
                .branch(Branch::new(p.endpoint(), "r2"))
                .branch(Branch::new(p.endpoint(), "r3")),
        )
        .await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    assert_eq!(
        trail(&rec, &done.txn_id),
        pairs(&[("action", "1"), ("action", "2"), ("action", "3")])
    );
    assert_eq!(done.result_of("1"), Some(&b"seat 12A"[..]));
    let shown = client.get_transaction(&done.txn_id).await?;
    assert_eq!(shown.mode(), Mode::Saga);
    assert!(shown.current_steps.is_empty());

    let failed = client
        .execute(
            Execute::saga()
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2"))
                .branch(Branch::new(p.endpoint(), "r3").payload("no:sold out"))
                .branch(Branch::new(p.endpoint(), "r1")),
        )
        .await?;
    assert_eq!(failed.state, TxnState::Aborted, "{failed:?}");
    assert!(failed.reason.contains("sold out"), "{}", failed.reason);
    assert_eq!(
        trail(&rec, &failed.txn_id),
        pairs(&[
            ("action", "1"),
            ("action", "2"),
            ("action", "3"),
            ("compensate", "3"),
            ("compensate", "2"),
            ("compensate", "1"),
        ]),
        "the failed step too, in reverse; the fourth never ran"
    );
    Ok(())
}

#[tokio::test]
async fn independent_steps_run_in_parallel_and_dependents_wait() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;
    // 1 and 2 at once (1 is slow), 3 after both.
    let done = client
        .execute(
            Execute::saga()
                .branch(
                    Branch::new(p.endpoint(), "r1")
                        .payload("slow:300")
                        .at_once(),
                )
                .branch(Branch::new(p.endpoint(), "r2").at_once())
                .branch(Branch::new(p.endpoint(), "r3").after(["1", "2"])),
        )
        .await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    let order = trail(&rec, &done.txn_id);
    let at = |b: &str| order.iter().position(|(_, x)| x == b).unwrap_or(usize::MAX);
    assert!(at("2") < at("3") && at("1") < at("3"), "{order:?}");
    assert_eq!(order.len(), 3);
    Ok(())
}

#[tokio::test]
async fn transient_answers_retry_then_the_timeout_compensates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;

    let done = client
        .execute(
            Execute::saga()
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2").payload("flaky:2")),
        )
        .await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    assert_eq!(rec.branch_calls(&done.txn_id, "2"), ["action"; 3]);

    let gave_up = client
        .execute(
            Execute::saga()
                .timeout(Duration::from_millis(800))
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2").payload("unavailable")),
        )
        .await?;
    assert_eq!(gave_up.state, TxnState::Aborted, "{gave_up:?}");
    assert!(gave_up.reason.contains("timeout"), "{}", gave_up.reason);
    let calls = rec.branch_calls(&gave_up.txn_id, "2");
    assert!(calls.len() >= 3, "retried: {calls:?}");
    assert_eq!(calls.last(), Some(&"compensate"), "the timed-out step too");
    assert_eq!(
        rec.branch_calls(&gave_up.txn_id, "1"),
        ["action", "compensate"]
    );
    Ok(())
}

#[tokio::test]
async fn a_must_succeed_step_runs_last_and_is_retried_until_it_succeeds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;
    let done = client
        .execute(
            Execute::saga()
                .timeout(Duration::from_millis(500))
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2"))
                // Fails past the timeout: still retried, never compensated.
                .branch(
                    Branch::new(p.endpoint(), "r3")
                        .payload("flaky:4")
                        .must_succeed(),
                ),
        )
        .await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    assert_eq!(rec.branch_calls(&done.txn_id, "3"), ["action"; 5]);
    assert!(
        !trail(&rec, &done.txn_id)
            .iter()
            .any(|(c, _)| c == "compensate")
    );

    // A compensable step after a must-succeed one is refused, and so is a
    // dependency on a step not registered before.
    for bad in [
        Execute::saga()
            .branch(Branch::new(p.endpoint(), "r1").must_succeed())
            .branch(Branch::new(p.endpoint(), "r2")),
        Execute::saga()
            .branch(Branch::new(p.endpoint(), "r1").after(["2"]))
            .branch(Branch::new(p.endpoint(), "r2")),
        Execute::two_phase().branch(Branch::new(p.endpoint(), "r1").must_succeed()),
    ] {
        match client.execute(bad).await {
            Err(ClientError::InvalidArgument(why)) => assert!(!why.is_empty()),
            other => panic!("a bad order was not refused: {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn steps_registered_one_by_one_run_when_committed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;
    let id = client.begin(Mode::Saga, None).await?;
    client
        .register_branch_with_id(&id, &Branch::new(p.endpoint(), "r1"), "flight")
        .await?;
    client
        .register_branch_with_id(&id, &Branch::new(p.endpoint(), "r2").at_once(), "hotel")
        .await?;
    client
        .register_branch_with_id(
            &id,
            &Branch::new(p.endpoint(), "r3").after(["flight", "hotel"]),
            "car",
        )
        .await?;
    assert!(rec.calls(&id).is_empty(), "nothing runs before commit");
    let done = client.commit(&id, true).await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    let shown = client.get_transaction(&id).await?;
    let car = shown.branches.iter().find(|b| b.branch_id == "car");
    assert_eq!(
        car.and_then(|b| b.saga.clone()).map(|s| s.depends_on),
        Some(vec!["flight".to_string(), "hotel".to_string()])
    );
    Ok(())
}

#[tokio::test]
async fn where_a_saga_is_shows_in_get_transaction_the_cli_and_the_watch_stream()
-> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let (p, rec) = recorder_participant().await?;
    let running = client
        .execute(
            Execute::saga()
                .wait(false)
                .timeout(Duration::from_secs(60))
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2").payload("unavailable"))
                .branch(Branch::new(p.endpoint(), "r3")),
        )
        .await?;
    let id = running.txn_id.clone();
    let txn = arbiter_tests::eventually("the saga is at step 2", || async {
        let txn = client.get_transaction(&id).await.ok()?;
        (txn.current_steps == ["2"]).then_some(txn)
    })
    .await;
    assert_eq!(txn.state(), TxnState::Preparing, "running");

    let out = std::process::Command::new(arbiter_tests::process::arbiter_bin()?)
        .args(["txn", "show", &id, "--addr", &arbiter.endpoint])
        .stdin(std::process::Stdio::null())
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("saga") && shown.contains("running: step 2"),
        "{shown}"
    );

    // Abort it by hand: compensating, then compensated; the watch stream
    // names the calls for sagas.
    let mut watch = client.watch(&id).await?;
    let turned = client.rollback(&id, "drill").await?;
    assert!(
        matches!(turned, TxnState::Aborting | TxnState::Aborted),
        "answered once the turn back is durable: {turned:?}"
    );
    let mut calls = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), watch.next()).await? {
        let event = event?;
        if !event.call.is_empty() {
            calls.push(event.call.clone());
        }
        if event.r#final {
            assert_eq!(event.state(), TxnState::Aborted);
            break;
        }
    }
    assert!(calls.iter().any(|c| c == "compensate"), "{calls:?}");
    assert_eq!(
        rec.branch_calls(&id, "3"),
        Vec::<&str>::new(),
        "step 3 never ran"
    );
    assert_eq!(rec.branch_calls(&id, "1").last(), Some(&"compensate"));
    Ok(())
}
