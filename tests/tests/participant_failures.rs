//! Participants that keep failing, and participants that restart: stuck
//! transactions are flagged and still retried; repeated phase-2 calls after a
//! participant restart are not applied twice.

use std::sync::Arc;
use std::time::Duration;

use arbiter_examples::{AccountRef, Bank, RESOURCE, transfer_txn};
use arbiter_sdk::{Branch, Mode, ParticipantServer, RunningParticipant, TxnState};
use arbiter_tests::{ArbiterProcess, Spy, TestCoordinator, eventually, recorder_participant};

#[tokio::test]
async fn a_participant_that_keeps_failing_is_flagged_stuck_and_still_retried() -> anyhow::Result<()>
{
    let coordinator = TestCoordinator::start_with(|c| c.stuck_after_attempts = 3).await?;
    let client = &coordinator.client;
    let (a, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let txn_id = client.begin(Mode::Tcc, None).await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    let decided = client.commit(&txn_id, false).await?;
    assert_eq!(decided.state, TxnState::Committing);

    let stuck = eventually("the transaction is flagged stuck", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        txn.stuck.then_some(txn)
    })
    .await;
    assert!(stuck.stuck_since_ms > 0);
    assert_eq!(stuck.state(), TxnState::Committing);
    assert!(
        stuck.branches[0]
            .last_error
            .contains("confirm refused by the test"),
        "{}",
        stuck.branches[0].last_error
    );
    assert!(stuck.branches[0].failing_since_ms > 0);
    let attempts_when_stuck = stuck.branches[0].attempts;
    eventually("a stuck transaction is still retried", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.branches[0].attempts > attempts_when_stuck + 2).then_some(())
    })
    .await;

    rec.set_fail_phase2(false);
    let done = eventually("it completes once the participant recovers", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.state() == TxnState::Committed).then_some(txn)
    })
    .await;
    assert!(!done.stuck, "a finished transaction is no longer stuck");
    Ok(())
}

async fn serve_bank(bank: Arc<Spy<Bank>>, addr: &str) -> anyhow::Result<RunningParticipant> {
    Ok(ParticipantServer::new()
        .two_phase(RESOURCE, bank.clone())
        .tcc(RESOURCE, bank)
        .serve(addr.parse()?)
        .await?)
}

#[tokio::test]
async fn a_restarted_participant_getting_phase_two_again_applies_it_once() -> anyhow::Result<()> {
    for (tcc, mode_name) in [(false, "2PC"), (true, "TCC")] {
        let dir = tempfile::tempdir()?;
        let args = ["--retry-base-ms", "20", "--retry-max-ms", "200"];
        let mut arbiter = ArbiterProcess::start_with_failpoints(
            dir.path(),
            &args,
            "after-some-phase2-sent=return",
        )
        .await?;
        let east = Arc::new(Spy::new(Bank::with_accounts(&[("alice", 100)])));
        let west = Arc::new(Spy::new(Bank::with_accounts(&[("bob", 0)])));
        let east_svc = serve_bank(east.clone(), "127.0.0.1:0").await?;
        let west_svc = serve_bank(west.clone(), "127.0.0.1:0").await?;
        let alice = AccountRef {
            endpoint: east_svc.endpoint(),
            name: "alice".into(),
        };
        let bob = AccountRef {
            endpoint: west_svc.endpoint(),
            name: "bob".into(),
        };

        // The coordinator dies right after the debit side acknowledged phase 2.
        let txn_id = format!("repeat-{mode_name}");
        let client = arbiter.client().await?;
        let _ = client
            .execute(transfer_txn(tcc, &alice, &bob, 30).txn_id(&txn_id))
            .await;
        assert!(
            arbiter
                .exited_within(Duration::from_secs(20))
                .await?
                .is_some(),
            "{mode_name}: crashed"
        );

        // The debit side restarts too (its books survive, as a database would).
        let east_addr = east_svc.addr().to_string();
        east_svc.shutdown().await;
        let _east_again = serve_bank(east.clone(), &east_addr).await?;

        arbiter.set_failpoints(None);
        arbiter.restart().await?;
        let client = arbiter.client().await?;
        eventually("recovery completes the transfer", || async {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            (txn.state() == TxnState::Committed).then_some(())
        })
        .await;
        let phase2 = if tcc { "confirm" } else { "commit" };
        let debit_calls = east.recorder.calls(&txn_id);
        assert!(
            debit_calls.iter().filter(|c| **c == phase2).count() >= 2,
            "{mode_name}: the debit side got {phase2} again after the restarts: {debit_calls:?}"
        );
        assert_eq!(
            east.inner.balance("alice"),
            Some(70),
            "{mode_name}: debited once"
        );
        assert_eq!(
            west.inner.balance("bob"),
            Some(30),
            "{mode_name}: credited once"
        );
        assert_eq!((east.inner.pending(), west.inner.pending()), (0, 0));
    }
    Ok(())
}
