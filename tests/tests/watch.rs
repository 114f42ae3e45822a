//! Watching transactions: `WatchTransaction` streams every change the engine
//! made, once and in order, ends after the final state, replays finished
//! transactions, and resumes with `from_seq` after a dropped stream and after
//! a kill -9 of the coordinator. `Admin.WatchTransactions` cuts off a
//! subscriber that stops reading, with its resume point, while transactions
//! carry on.

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::{Branch, Client, EventKind, TxnEvent, TxnState};
use arbiter_tests::{ArbiterProcess, TestCoordinator, recorder_participant};
use tokio_stream::StreamExt;

/// (kind, state) pairs, as the engine notes them.
type Steps = Vec<(EventKind, pb::TxnState)>;

async fn collect(client: &Client, txn_id: &str, from: u64) -> anyhow::Result<Vec<TxnEvent>> {
    let mut watch = client.watch_from(txn_id, from).await?;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + arbiter_tests::PATIENCE;
    while let Some(event) = tokio::time::timeout_at(deadline, watch.next()).await? {
        let event = event?;
        events.push(event);
    }
    Ok(events)
}

fn steps(events: &[TxnEvent]) -> Steps {
    events.iter().map(|e| (e.kind(), e.state())).collect()
}

fn assert_numbered(events: &[TxnEvent], from: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (from..from + events.len() as u64).collect();
    assert_eq!(seqs, expected, "every change once, in order, no gaps");
    assert!(
        events.last().is_some_and(|e| e.r#final),
        "ends with the final state"
    );
    assert_eq!(events.iter().filter(|e| e.r#final).count(), 1);
}

#[tokio::test]
async fn every_change_is_streamed_once_in_order_for_2pc_and_tcc_commit_and_abort()
-> anyhow::Result<()> {
    use EventKind::*;
    use pb::TxnState as S;
    let coordinator = TestCoordinator::start().await?;
    let client = &coordinator.client;
    let (p, _rec) = recorder_participant().await?;
    for mode in [arbiter_sdk::Mode::TwoPhase, arbiter_sdk::Mode::Tcc] {
        for second_vote in ["result:r2", "no:sold out"] {
            let txn_id = client.begin(mode, None).await?;
            // Watch from the start, while the transaction is live.
            let live = {
                let (client, id) = (client.clone(), txn_id.clone());
                tokio::spawn(async move { collect(&client, &id, 0).await })
            };
            client
                .register_branch(&txn_id, &Branch::new(p.endpoint(), "r1").payload("yes"))
                .await?;
            client
                .register_branch(
                    &txn_id,
                    &Branch::new(p.endpoint(), "r2").payload(second_vote),
                )
                .await?;
            let outcome = client.commit(&txn_id, true).await?;
            let events = live.await??;
            assert_numbered(&events, 1);
            let committed = outcome.state == TxnState::Committed;
            assert_eq!(committed, second_vote.starts_with("result"), "{outcome:?}");
            let mut expected: Steps = vec![
                (State, S::Active),
                (BranchRegistered, S::Active),
                (BranchRegistered, S::Active),
                (State, S::Preparing),
            ];
            // Votes come in either order.
            let votes: Vec<_> = events[4..6].iter().map(|e| e.branch_id.clone()).collect();
            assert!(votes.contains(&"1".to_string()) && votes.contains(&"2".to_string()));
            expected.extend([(BranchVoted, S::Preparing), (BranchVoted, S::Preparing)]);
            if committed {
                expected.extend([
                    (State, S::Committing),
                    (BranchAcked, S::Committing),
                    (BranchAcked, S::Committing),
                    (State, S::Committed),
                ]);
                let acked_with: Vec<&[u8]> = events
                    .iter()
                    .filter(|e| e.kind() == BranchAcked && e.branch_id == "2")
                    .map(|e| e.result.as_slice())
                    .collect();
                assert_eq!(acked_with, vec![&b"done:r2"[..]]);
            } else {
                // The NO voter needs no rollback? It is rolled back too
                // (its prepare ran); both acks come before ABORTED.
                expected.push((State, S::Aborting));
                let acks = events.len() - expected.len() - 1;
                expected.extend(std::iter::repeat_n((BranchAcked, S::Aborting), acks));
                expected.push((State, S::Aborted));
                let aborting = &events[6];
                assert!(aborting.detail.contains("sold out"), "{aborting:?}");
            }
            assert_eq!(steps(&events), expected, "{mode:?} {second_vote}");

            // Replayed once finished, and resumable from any change.
            let replay = collect(client, &txn_id, 1).await?;
            assert_eq!(replay, events);
            let tail = collect(client, &txn_id, 5).await?;
            assert_eq!(tail, events[4..].to_vec());
        }
    }
    // An unknown id is NOT_FOUND at once.
    let unknown = client.watch("no-such-txn").await;
    assert!(matches!(
        unknown,
        Err(arbiter_sdk::ClientError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn a_watch_resumes_after_a_kill_9_without_missing_or_repeating_a_change() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(
        dir.path(),
        &["--retry-base-ms", "50", "--retry-max-ms", "200"],
    )
    .await?;
    let (p, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let client = arbiter.client().await?;
    let txn_id = client.begin(arbiter_sdk::Mode::TwoPhase, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(p.endpoint(), "r1").payload("yes"))
        .await?;
    client.commit(&txn_id, false).await?;

    // Read until two failed commits were seen: those were written on their own.
    let mut before = Vec::new();
    let mut watch = client.watch(&txn_id).await?;
    while before
        .iter()
        .filter(|e: &&TxnEvent| e.kind() == EventKind::CallFailed)
        .count()
        < 2
    {
        let next = tokio::time::timeout(arbiter_tests::PATIENCE, watch.next()).await?;
        before.push(next.ok_or_else(|| anyhow::anyhow!("the stream ended early"))??);
    }
    drop(watch);
    let last = before.last().map_or(0, |e| e.seq);

    arbiter.kill().await?;
    arbiter.restart().await?;
    rec.set_fail_phase2(false);
    let client = arbiter.client().await?;
    let after = collect(&client, &txn_id, last + 1).await?;
    assert_numbered(&after, last + 1);
    assert_eq!(
        after.last().map(TxnEvent::state),
        Some(pb::TxnState::Committed)
    );

    // The whole history, replayed, is exactly what the two watches saw.
    let whole = collect(&client, &txn_id, 1).await?;
    let mut seen = before.clone();
    seen.extend(after);
    assert_eq!(whole, seen);
    Ok(())
}

#[tokio::test]
async fn a_feed_subscriber_that_stops_reading_is_cut_off_with_its_resume_point()
-> anyhow::Result<()> {
    let coordinator = TestCoordinator::start_with(|c| c.watch_buffer = 64).await?;
    let client = &coordinator.client;
    let (p, _rec) = recorder_participant().await?;
    let mut admin = AdminClient::connect(coordinator.endpoint.clone()).await?;
    // Subscribed, then never read while transactions run; a small HTTP/2
    // window, so the coordinator cannot park everything in the connection.
    let narrow = tonic::transport::Endpoint::from_shared(coordinator.endpoint.clone())?
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await?;
    let mut slow = AdminClient::new(narrow)
        .watch_transactions(pb::WatchTransactionsRequest::default())
        .await?
        .into_inner();
    // A reader that keeps up, filtered to TCC.
    let mut tcc_only = admin
        .watch_transactions(pb::WatchTransactionsRequest {
            mode: pb::Mode::Tcc as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let keeping_up = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(message)) = tcc_only.message().await {
            assert!(message.lagged.is_none(), "a reader that keeps up lagged");
            for e in &message.events {
                assert_eq!(e.mode, pb::Mode::Tcc as i32);
                n += 1;
            }
            if n >= 100 {
                break;
            }
        }
        n
    });
    let mut committed = 0;
    for i in 0..1500 {
        let execute = if i % 2 == 0 {
            arbiter_sdk::Execute::two_phase()
        } else {
            arbiter_sdk::Execute::tcc()
        };
        let outcome = client
            .execute(execute.branch(Branch::new(p.endpoint(), "r1")).wait(true))
            .await?;
        committed += usize::from(outcome.is_committed());
    }
    assert_eq!(committed, 1500, "the transaction path carried on");
    assert!(keeping_up.await? >= 100);

    // Now read: some events, then the lag notice, then the end.
    let lagged = tokio::time::timeout(arbiter_tests::PATIENCE, async {
        loop {
            match slow.message().await {
                Ok(Some(pb::WatchTransactionsResponse {
                    lagged: Some(l), ..
                })) => return Some(l),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("the stream ended without a lag notice"))?;
    assert!(lagged.resume_from < lagged.oldest_held, "{lagged:?}");
    assert!(
        matches!(slow.message().await, Ok(None)),
        "the stream ends after the notice"
    );
    // Its resume point is gone (more changes came since): OUT_OF_RANGE,
    // and watching from now on works.
    let gone = admin
        .watch_transactions(pb::WatchTransactionsRequest {
            from_position: lagged.resume_from,
            feed_id: lagged.feed_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(gone.err().map(|s| s.code()), Some(tonic::Code::OutOfRange));
    let again = admin
        .watch_transactions(pb::WatchTransactionsRequest {
            from_position: 0,
            ..Default::default()
        })
        .await;
    assert!(again.is_ok(), "{again:?}");
    // A position beyond the newest is refused too (it would skip changes).
    let ahead = admin
        .watch_transactions(pb::WatchTransactionsRequest {
            from_position: u64::MAX,
            ..Default::default()
        })
        .await;
    assert_eq!(ahead.err().map(|s| s.code()), Some(tonic::Code::OutOfRange));
    // A position of another feed (another start, another node) is refused.
    let foreign = admin
        .watch_transactions(pb::WatchTransactionsRequest {
            from_position: 1,
            feed_id: "0123456789abcdef".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        foreign.err().map(|s| s.code()),
        Some(tonic::Code::OutOfRange)
    );
    Ok(())
}
