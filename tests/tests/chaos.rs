//! Kill -9 chaos: a bank of three account services and many concurrent
//! transfers (2PC and TCC mixed) while the coordinator is SIGKILLed at random
//! moments and restarted. Afterwards, with faults healed: every transaction is
//! final, the total of all balances is unchanged, no transfer is half applied,
//! and no reservation is left behind.
//!
//! `ARBITER_CHAOS_KILLS` sets the number of kills (default 10; try 100 for a
//! long run).

use std::sync::Arc;

use arbiter_examples::{AccountRef, Bank, RESOURCE};
use arbiter_sdk::{ParticipantServer, TxnState};
use arbiter_tests::ArbiterProcess;
use arbiter_tests::chaos::{self, final_state, kill_repeatedly, start_transfers};

const WORKERS: usize = 8;
const START_BALANCE: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_survives_repeated_kill_9() -> anyhow::Result<()> {
    let kills = chaos::kills(10);
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(dir.path(), &chaos::ARBITER_ARGS).await?;

    let mut banks = Vec::new();
    let mut services = Vec::new();
    let mut accounts = Vec::new();
    for b in 0..3 {
        let names = [format!("acct{b}a"), format!("acct{b}b")];
        let bank = Arc::new(Bank::with_accounts(&[
            (&names[0], START_BALANCE),
            (&names[1], START_BALANCE),
        ]));
        let service = ParticipantServer::new()
            .two_phase(RESOURCE, bank.clone())
            .tcc(RESOURCE, bank.clone())
            .serve("127.0.0.1:0".parse()?)
            .await?;
        for name in names {
            accounts.push(AccountRef {
                endpoint: service.endpoint(),
                name,
            });
        }
        banks.push(bank);
        services.push(service);
    }
    let initial_total: i64 = banks.iter().map(|b| b.total()).sum();

    let client = arbiter.client().await?;
    let transfers = start_transfers(&client, &accounts, WORKERS);

    kill_repeatedly(&mut arbiter, kills, 150..600).await?;
    let ids = transfers.stop().await?;

    // Faults healed: every transfer the workers tried must end final, or
    // never have begun.
    let (mut committed, mut aborted, mut never_began) = (0, 0, 0);
    for id in &ids {
        let state = final_state(&client, id).await;
        let (settled, released): (usize, usize) = banks
            .iter()
            .map(|b| b.outcome(id))
            .fold((0, 0), |acc, o| (acc.0 + o.0, acc.1 + o.1));
        match state {
            Some(TxnState::Committed) => {
                committed += 1;
                assert_eq!((settled, released), (2, 0), "{id} committed on both sides");
            }
            Some(_) => {
                aborted += 1;
                assert_eq!(settled, 0, "{id} aborted but a side was committed");
            }
            None => {
                never_began += 1;
                assert_eq!(
                    settled + released,
                    0,
                    "{id} never began but a participant heard of it"
                );
            }
        }
    }
    let total: i64 = banks.iter().map(|b| b.total()).sum();
    let pending: usize = banks.iter().map(|b| b.pending()).sum();
    println!(
        "chaos: {} transfers, {kills} kills, {committed} committed, {aborted} aborted, {never_began} never began; total {total} (was {initial_total}), {pending} reservations left",
        ids.len()
    );
    assert_eq!(total, initial_total, "money was created or destroyed");
    assert_eq!(pending, 0, "reservations were left behind");
    assert!(committed > 0, "some transfers went through");
    drop(services);
    Ok(())
}
