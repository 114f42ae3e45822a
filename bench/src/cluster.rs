//! Benchmarks of the log on PostgreSQL and of a cluster of nodes sharing it:
//! `arbiter-bench cluster` (sled on one node, then PostgreSQL with 1, 2 and
//! 3 nodes, in one run) and `arbiter-bench takeover` (how long the other
//! nodes take to finish a stopped or killed node's transactions).
//!
//! Both take `--pg URL`, a PostgreSQL server the benchmark may create
//! databases on; each measurement gets a fresh database.

use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::{Branch, Client, Execute, TxnState};
use clap::Args;

use crate::RunArgs;
use crate::child::Server;
use crate::load::{Setup, measure};
use crate::participants::{Participants, RESOURCE};

#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// A PostgreSQL server to create the logs' databases on, e.g.
    /// postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long)]
    pub pg: String,
    /// Node counts to measure on PostgreSQL.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub node_counts: Vec<usize>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Clone, Debug, Args)]
pub struct TakeoverArgs {
    /// A PostgreSQL server to create the log's database on.
    #[arg(long)]
    pub pg: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Decided, unfinished transactions the stopped node owns.
    #[arg(long, default_value_t = 1_000)]
    pub transactions: usize,
    #[arg(long, default_value_t = 5_000)]
    pub lease_ms: u64,
    /// How the owner stops: `kill` (SIGKILL) or `term` (SIGTERM).
    #[arg(long, default_value = "kill")]
    pub signal: String,
}

/// Counts the commits of the log's database (PostgreSQL's own statistics).
pub struct PgStats {
    client: Option<tokio_postgres::Client>,
}

impl PgStats {
    /// For the `--store postgres://...` in `arbiter_args`, if any.
    pub async fn of(arbiter_args: &str) -> PgStats {
        let mut words = arbiter_args.split_whitespace();
        let url = words.find(|w| *w == "--store").and_then(|_| words.next());
        let client = match url {
            Some(url) => connect(url).await.ok(),
            None => None,
        };
        PgStats { client }
    }

    /// Transactions committed in the database so far.
    pub async fn commits(&self) -> Option<u64> {
        let client = self.client.as_ref()?;
        // Statistics reach the shared counters within a second or so.
        let _ = client.execute("SELECT pg_stat_clear_snapshot()", &[]).await;
        let row = client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .ok()?;
        u64::try_from(row.get::<_, i64>(0)).ok()
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh database on the server `pg` names; returns its URL.
async fn fresh_database(pg: &str, name: &str) -> anyhow::Result<String> {
    let admin = connect(pg).await?;
    // Two statements, each on its own: neither may run in a transaction.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let config: tokio_postgres::Config = pg.parse()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    Ok(format!("postgres://{user}@{host}:{port}/{name}"))
}

/// `arbiter-bench cluster`.
pub async fn compare(args: &ClusterArgs) -> anyhow::Result<()> {
    println!("store       nodes  tx/s    p50 ms  p99 ms  PG commits/tx  coordinator CPU µs/tx");
    let mut rows = vec![("sled".to_string(), args.run.clone())];
    for &nodes in &args.node_counts {
        let url = fresh_database(&args.pg, &format!("arbiter_bench_{nodes}")).await?;
        let mut run = args.run.clone();
        run.nodes = nodes;
        run.arbiter_args = format!("{} --store {url}", run.arbiter_args);
        rows.push(("postgres".to_string(), run));
    }
    let mut sled_tx = None;
    for (store, run) in rows {
        let setup = Setup::new(&run).await?;
        let report = measure(&setup, &run, None).await?;
        drop(setup);
        let ratio = match sled_tx {
            None => {
                sled_tx = Some(report.tx_per_s);
                String::new()
            }
            Some(sled) => format!("  ({:.2} × sled)", report.tx_per_s / f64::max(sled, 1.0)),
        };
        println!(
            "{store:<11} {:<6} {:<7.0} {:<7.2} {:<7.2} {:<14} {}{ratio}",
            run.nodes.max(1),
            report.tx_per_s,
            report.latency_ms[0],
            report.latency_ms[2],
            report
                .store_commits_per_tx
                .map_or("-".into(), |c| format!("{c:.3}")),
            report
                .cpu_us_per_tx()
                .map_or("-".into(), |us| format!("{us:.0}")),
        );
    }
    Ok(())
}

/// Unfinished transactions each node owns, as the cluster lists them.
async fn owned(
    admin: &mut AdminClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<(String, u64)>> {
    let nodes = admin
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    Ok(nodes
        .into_iter()
        .map(|n| (n.node_id, n.unfinished))
        .collect())
}

/// `arbiter-bench takeover`.
pub async fn takeover(args: &TakeoverArgs) -> anyhow::Result<()> {
    let signal = match args.signal.as_str() {
        "kill" => libc::SIGKILL,
        "term" => libc::SIGTERM,
        other => anyhow::bail!("--signal is kill or term, not {other:?}"),
    };
    anyhow::ensure!(args.nodes >= 2, "a takeover needs at least 2 nodes");
    let url = fresh_database(&args.pg, "arbiter_bench_takeover").await?;
    let participants = Participants::start(2).await?;
    participants.pause(true);
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for n in 0..args.nodes {
        // Phase 2 retried often: once the participants are back, the node
        // that owns a transaction finishes it within a fraction of a second.
        let extra = format!(
            "--store {url} --node-id bench-{n} --lease-ms {} --retry-base-ms 100 --retry-max-ms 250",
            args.lease_ms
        );
        let server = Server::arbiter(&dir.path().join(format!("data{n}")), &extra).await?;
        server.wait_answering().await?;
        nodes.push(server);
    }
    let client = Client::connect(nodes[0].endpoint.clone()).await?;
    let endpoints = participants.endpoints();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (client, endpoints) = (client.clone(), endpoints.clone());
        let count = args.transactions / 64 + usize::from(t < args.transactions % 64);
        tasks.spawn(async move {
            let mut decided = 0;
            for _ in 0..count {
                let txn = Execute::two_phase()
                    .wait(false)
                    .branch(Branch::new(&endpoints[0], RESOURCE))
                    .branch(Branch::new(&endpoints[1], RESOURCE));
                if let Ok(o) = client.execute(txn).await
                    && o.state == TxnState::Committing
                {
                    decided += 1;
                }
            }
            decided
        });
    }
    let mut decided = 0;
    while let Some(done) = tasks.join_next().await {
        decided += done?;
    }
    let mut admin = AdminClient::connect(nodes[1].endpoint.clone()).await?;
    let before = owned(&mut admin).await?;
    println!("loaded: {decided} decided, unfinished transactions owned by bench-0 ({before:?})");

    nodes[0].signal_and_wait(signal);
    participants.pause(false);
    let stopped = Instant::now();
    let (mut handed_over, mut finished) = (None, None);
    while finished.is_none() {
        let now = owned(&mut admin).await?;
        let of_stopped: u64 = now
            .iter()
            .filter(|(n, _)| n == "bench-0")
            .map(|(_, c)| c)
            .sum();
        let all: u64 = now.iter().map(|(_, c)| c).sum();
        if of_stopped == 0 && handed_over.is_none() {
            handed_over = Some(stopped.elapsed());
        }
        if all == 0 {
            finished = Some(stopped.elapsed());
        }
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(120),
            "still unfinished after 2 minutes: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "takeover ({}, lease {} ms, {} nodes): {decided} transactions owned by the others after \
         {:.2}s, all final after {:.2}s",
        args.signal,
        args.lease_ms,
        args.nodes,
        secs(handed_over),
        secs(finished)
    );
    Ok(())
}
