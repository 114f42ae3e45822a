//! Bank chaos on a cluster: three coordinator nodes share one PostgreSQL
//! database; three bank services (each its own database, 2PC on prepared
//! transactions and TCC with the barrier) take part in concurrent transfers
//! whose steps (Begin, each RegisterBranch, Commit) go to random nodes, while
//! a random node is SIGKILLed and restarted every second or two.
//!
//! At the end: the total is unchanged, every transfer is final, no database
//! holds a prepared transaction or a hold, and no branch received both a
//! commit-side and a rollback-side call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arbiter_examples::pg_bank::{PgBank, PreparedAccounts, ReservedAccounts};
use arbiter_examples::{AccountRef, RESOURCE};
use arbiter_sdk::{Branch, Client, ConnectOptions, Mode, ParticipantServer, TxnState};
use arbiter_tests::chaos::{bank_total, final_state, nothing_left_prepared_or_held};
use arbiter_tests::postgres::PgCluster;
use arbiter_tests::process::Launch;
use arbiter_tests::{ArbiterProcess, Spy};

const NODES: usize = 3;
const WORKERS: usize = 6;
const ACCOUNTS_PER_BANK: usize = 3;
const START_BALANCE: i64 = 10_000;

/// One step of a transfer, tried on random nodes until one answers (a node
/// may be down); `None` if none did in a few tries.
async fn on_some_node<T, F, Fut>(clients: &[Client], mut step: F) -> Option<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, arbiter_sdk::ClientError>>,
{
    for _ in 0..6 {
        let client = clients[fastrand::usize(..clients.len())].clone();
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(10), step(client)).await {
            return Some(answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One transfer, its steps spread over the nodes.
async fn transfer(clients: &[Client], id: &str, accounts: &[AccountRef]) {
    let from = fastrand::usize(..accounts.len());
    let to = (from + 1 + fastrand::usize(..accounts.len() - 1)) % accounts.len();
    let amount = fastrand::i64(1..=300);
    let mode = if fastrand::bool() {
        Mode::Tcc
    } else {
        Mode::TwoPhase
    };
    let began = on_some_node(clients, |c| {
        let id = id.to_string();
        async move {
            c.begin_with_id(mode, Some(Duration::from_secs(5)), &id)
                .await
        }
    })
    .await;
    if began.is_none() {
        return;
    }
    for (n, (account, delta)) in [(&accounts[from], -amount), (&accounts[to], amount)]
        .into_iter()
        .enumerate()
    {
        let branch =
            Branch::new(&account.endpoint, RESOURCE).payload(format!("{} {delta}", account.name));
        let registered = on_some_node(clients, |c| {
            let (id, branch, branch_id) = (id.to_string(), branch.clone(), format!("b{n}"));
            async move { c.register_branch_with_id(&id, &branch, &branch_id).await }
        })
        .await;
        if registered.is_none() {
            return;
        }
    }
    let _ = on_some_node(clients, |c| {
        let id = id.to_string();
        async move { c.commit(&id, true).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_the_bank_whole_under_kill_9() -> anyhow::Result<()> {
    let kills = arbiter_tests::chaos::kills(6);
    let cluster = PgCluster::start(64)?;
    cluster.create_database("arbiter").await?;
    let store = cluster.store_url("arbiter");
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let id = format!("n{n}");
        let args = [
            "--store",
            &store,
            "--node-id",
            &id,
            "--lease-ms",
            "1500",
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "300",
            "--call-timeout-ms",
            "3000",
        ];
        nodes.push(
            ArbiterProcess::start_launch(&dir.path().join(&id), &args, Launch::default()).await?,
        );
    }
    let clients: Vec<Client> = nodes
        .iter()
        .map(|n| Client::connect_lazy(n.endpoint.clone(), ConnectOptions::new()))
        .collect::<Result<_, _>>()?;

    let mut banks = Vec::new();
    let mut spies = Vec::new();
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
        // Each bank resolves its in-doubt branches through another node.
        let two_phase = bank
            .barrier()
            .two_phase(
                PreparedAccounts,
                clients[b % NODES].clone(),
                Duration::from_secs(1),
            )
            .await?;
        let prepared = Arc::new(Spy::new(two_phase));
        let reserved = Arc::new(Spy::new(bank.barrier().guard(ReservedAccounts)));
        let running = ParticipantServer::new()
            .two_phase(RESOURCE, prepared.clone())
            .tcc(RESOURCE, reserved.clone())
            .serve("127.0.0.1:0".parse()?)
            .await?;
        for a in 0..ACCOUNTS_PER_BANK {
            accounts.push(AccountRef {
                endpoint: running.endpoint(),
                name: format!("acct{b}{a}"),
            });
        }
        spies.push((prepared, reserved));
        banks.push(bank);
        services.push(running);
    }
    let initial_total = bank_total(&banks).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accounts = Arc::new(accounts);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (clients, stop, ids, accounts) =
                (clients.clone(), stop.clone(), ids.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let id = format!("w{w}-{seq}");
                    ids.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id.clone());
                    transfer(&clients, &id, &accounts).await;
                }
            })
        })
        .collect();

    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(800..2_000))).await;
        let victim = fastrand::usize(..NODES);
        nodes[victim].kill().await?;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1_500))).await;
        nodes[victim].restart().await?;
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await?;
    }
    let ids = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let (mut committed, mut aborted, mut never_began) = (0, 0, 0);
    for (n, id) in ids.iter().enumerate() {
        match final_state(&clients[n % NODES], id).await {
            Some(TxnState::Committed) => committed += 1,
            Some(_) => aborted += 1,
            None => never_began += 1,
        }
    }
    let banks = Arc::new(banks);
    nothing_left_prepared_or_held(banks.clone()).await;

    // No branch got both sides of the outcome.
    let mut sides: HashMap<(String, String), (bool, bool)> = HashMap::new();
    for (prepared, reserved) in &spies {
        for seen in prepared
            .recorder
            .seen()
            .into_iter()
            .chain(reserved.recorder.seen())
        {
            let side = sides
                .entry((seen.txn_id.clone(), seen.branch_id.clone()))
                .or_default();
            match seen.call {
                "commit" | "confirm" => side.0 = true,
                "rollback" | "cancel" => side.1 = true,
                _ => {}
            }
        }
    }
    let both: Vec<_> = sides
        .iter()
        .filter(|(_, (c, r))| *c && *r)
        .map(|(k, _)| k)
        .collect();
    let total = bank_total(&banks).await?;
    println!(
        "cluster chaos: {} transfers over {NODES} nodes, {kills} kills, {committed} committed, \
         {aborted} aborted, {never_began} never began; total {total} (was {initial_total})",
        ids.len()
    );
    assert!(
        both.is_empty(),
        "branches that got both commit and rollback: {both:?}"
    );
    assert_eq!(total, initial_total, "money was created or destroyed");
    assert!(committed > 0, "some transfers went through");
    drop(services);
    Ok(())
}
