//! The bank demo on PostgreSQL under kill -9: three bank services, each with
//! its own database, take part in concurrent transfers (2PC on prepared
//! transactions and TCC with the barrier, mixed) while the coordinator is
//! SIGKILLed and restarted. Afterwards every transfer is final, the sum of
//! all balances is unchanged, and no database holds a prepared transaction
//! or a TCC hold.

use std::sync::Arc;
use std::time::Duration;

use arbiter_examples::AccountRef;
use arbiter_examples::pg_bank::PgBank;
use arbiter_sdk::TxnState;
use arbiter_tests::ArbiterProcess;
use arbiter_tests::chaos::{
    bank_total, final_state, kill_repeatedly, nothing_left_prepared_or_held, start_transfers,
};
use arbiter_tests::postgres::PgCluster;

const WORKERS: usize = 6;
const ACCOUNTS_PER_BANK: usize = 4;
const START_BALANCE: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bank_survives_coordinator_kill_9() -> anyhow::Result<()> {
    let kills = arbiter_tests::chaos::kills(6);
    let cluster = PgCluster::start(64)?;
    let dir = tempfile::tempdir()?;
    let args = [
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "300",
        "--call-timeout-ms",
        "3000",
    ];
    let mut arbiter = ArbiterProcess::start(dir.path(), &args).await?;
    let client = arbiter.client().await?;

    let mut banks = Vec::new();
    let mut services = Vec::new();
    let mut accounts = Vec::new();
    for b in 0..3 {
        let db = format!("bank{b}");
        cluster.create_database(&db).await?;
        let bank = PgBank::connect(&cluster.url(&db)).await?;
        for a in 0..ACCOUNTS_PER_BANK {
            bank.open_account(&format!("acct{b}{a}"), START_BALANCE)
                .await?;
        }
        let (server, adapter) = bank.service(client.clone(), Duration::from_secs(1)).await?;
        let running = server.serve("127.0.0.1:0".parse()?).await?;
        for a in 0..ACCOUNTS_PER_BANK {
            accounts.push(AccountRef {
                endpoint: running.endpoint(),
                name: format!("acct{b}{a}"),
            });
        }
        banks.push(bank);
        services.push((running, adapter));
    }
    let initial_total = bank_total(&banks).await?;

    let transfers = start_transfers(&client, &accounts, WORKERS);

    kill_repeatedly(&mut arbiter, kills, 300..900).await?;
    let ids = transfers.stop().await?;

    let (mut committed, mut aborted, mut never_began) = (0, 0, 0);
    for id in &ids {
        match final_state(&client, id).await {
            Some(TxnState::Committed) => committed += 1,
            Some(_) => aborted += 1,
            None => never_began += 1,
        }
    }
    let banks = Arc::new(banks);
    nothing_left_prepared_or_held(banks.clone()).await;
    let total = bank_total(&banks).await?;
    println!(
        "postgres chaos: {} transfers, {kills} kills, {committed} committed, {aborted} aborted, \
         {never_began} never began; total {total} (was {initial_total}); \
         no prepared transaction or hold left",
        ids.len()
    );
    assert_eq!(total, initial_total, "money was created or destroyed");
    assert!(committed > 0, "some transfers went through");
    drop(services);
    Ok(())
}
