//! `arbiter-bench recovery`: load N decided but unfinished transactions
//! (participants paused in phase 2), kill -9 the coordinator, restart it with
//! the participants back, and time until every transaction is final.

use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::{Branch, Client, Execute, TxnState};
use clap::Args;

use crate::child::Server;
use crate::participants::{Participants, RESOURCE};

#[derive(Clone, Debug, Args)]
pub struct RecoveryArgs {
    /// Decided transactions to leave unfinished.
    #[arg(long, default_value_t = 10_000)]
    pub transactions: usize,
    /// Branches per transaction.
    #[arg(long, default_value_t = 2)]
    pub branches: usize,
    /// Transactions submitted at once while loading.
    #[arg(long, default_value_t = 64)]
    pub load_concurrency: usize,
}

pub async fn run(args: &RecoveryArgs) -> anyhow::Result<()> {
    let participants = Participants::start(args.branches).await?;
    participants.pause(true);
    let dir = tempfile::tempdir()?;
    // Long retry delays: nothing finishes before the kill.
    let mut server = Server::arbiter(
        &dir.path().join("data"),
        "--retry-base-ms 60000 --retry-max-ms 60000",
    )
    .await?;
    let client = Client::connect(server.endpoint.clone()).await?;
    let endpoints = participants.endpoints();

    let loading = Instant::now();
    let per_task = args.transactions.div_ceil(args.load_concurrency.max(1));
    let mut tasks = Vec::new();
    for t in 0..args.load_concurrency.max(1) {
        let (client, endpoints) = (client.clone(), endpoints.clone());
        let count = per_task.min(args.transactions.saturating_sub(t * per_task));
        let branches = args.branches;
        tasks.push(tokio::spawn(async move {
            let mut decided = 0usize;
            for _ in 0..count {
                let mut txn = Execute::two_phase().wait(false);
                for i in 0..branches {
                    txn = txn.branch(Branch::new(&endpoints[i % endpoints.len()], RESOURCE));
                }
                if let Ok(o) = client.execute(txn).await
                    && o.state == TxnState::Committing
                {
                    decided += 1;
                }
            }
            decided
        }));
    }
    let mut decided = 0;
    for task in tasks {
        decided += task.await?;
    }
    println!(
        "loaded {decided} decided, unfinished transactions in {:.1}s",
        loading.elapsed().as_secs_f64()
    );

    server.kill();
    participants.pause(false);
    let restarted = Instant::now();
    server.restart().await?;
    let mut admin = AdminClient::connect(server.endpoint.clone()).await?;
    let deadline = restarted + Duration::from_secs(600);
    loop {
        let stats = admin.stats(pb::StatsRequest {}).await?.into_inner();
        let unfinished: u64 = stats.unfinished.iter().map(|c| c.count).sum();
        if unfinished == 0 && stats.committed_since_start >= decided as u64 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{unfinished} transactions still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "recovery: {decided} transactions final {:.2}s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    Ok(())
}
