//! The bank demo as a test: money moves with 2PC and TCC, refused transfers
//! leave both balances untouched, and concurrent transfers keep the total.

use std::sync::Arc;

use arbiter_examples::{AccountRef, Bank, RESOURCE, transfer};
use arbiter_sdk::{ParticipantServer, RunningParticipant, TxnState};
use arbiter_tests::TestCoordinator;

async fn serve(bank: Arc<Bank>) -> anyhow::Result<RunningParticipant> {
    Ok(ParticipantServer::new()
        .two_phase(RESOURCE, bank.clone())
        .tcc(RESOURCE, bank)
        .serve("127.0.0.1:0".parse()?)
        .await?)
}

#[tokio::test]
async fn transfers_move_money_and_refusals_change_nothing() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let east = Arc::new(Bank::with_accounts(&[("alice", 100)]));
    let west = Arc::new(Bank::with_accounts(&[("bob", 50)]));
    let (east_svc, west_svc) = (serve(east.clone()).await?, serve(west.clone()).await?);
    let alice = AccountRef {
        endpoint: east_svc.endpoint(),
        name: "alice".into(),
    };
    let bob = AccountRef {
        endpoint: west_svc.endpoint(),
        name: "bob".into(),
    };
    let balances = || (east.balance("alice"), west.balance("bob"));

    let out = transfer(&coordinator.client, false, &alice, &bob, 30).await?;
    assert_eq!(out.state, TxnState::Committed, "{}", out.reason);
    assert_eq!(balances(), (Some(70), Some(80)));

    let out = transfer(&coordinator.client, true, &bob, &alice, 20).await?;
    assert_eq!(out.state, TxnState::Committed, "{}", out.reason);
    assert_eq!(balances(), (Some(90), Some(60)));

    for tcc in [false, true] {
        let out = transfer(&coordinator.client, tcc, &alice, &bob, 1_000).await?;
        assert_eq!(out.state, TxnState::Aborted);
        assert!(out.reason.contains("insufficient funds"), "{}", out.reason);
        assert_eq!(
            balances(),
            (Some(90), Some(60)),
            "refused transfer (tcc={tcc}) changed nothing"
        );
    }
    assert_eq!((east.pending(), west.pending()), (0, 0));
    Ok(())
}

#[tokio::test]
async fn concurrent_transfers_keep_the_total() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let east = Arc::new(Bank::with_accounts(&[("alice", 500)]));
    let west = Arc::new(Bank::with_accounts(&[("bob", 500)]));
    let (east_svc, west_svc) = (serve(east.clone()).await?, serve(west.clone()).await?);
    let alice = AccountRef {
        endpoint: east_svc.endpoint(),
        name: "alice".into(),
    };
    let bob = AccountRef {
        endpoint: west_svc.endpoint(),
        name: "bob".into(),
    };
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let client = coordinator.client.clone();
        let (from, to) = if i % 2 == 0 {
            (bob.clone(), alice.clone())
        } else {
            (alice.clone(), bob.clone())
        };
        tasks.push(tokio::spawn(async move {
            transfer(&client, i % 4 < 2, &from, &to, 7 + i % 13).await
        }));
    }
    let mut committed = 0;
    for task in tasks {
        let outcome = task.await??;
        match outcome.state {
            TxnState::Committed => committed += 1,
            TxnState::Aborted => assert!(
                outcome.reason.contains("insufficient funds"),
                "{}",
                outcome.reason
            ),
            other => panic!("transfer ended {other:?}"),
        }
    }
    assert!(committed > 0);
    let (a, b) = (
        east.balance("alice").unwrap_or(-1),
        west.balance("bob").unwrap_or(-1),
    );
    assert_eq!(a + b, 1_000, "alice {a} + bob {b}");
    assert!(a >= 0 && b >= 0);
    assert_eq!((east.pending(), west.pending()), (0, 0));
    Ok(())
}
