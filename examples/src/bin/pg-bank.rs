//! One bank service on PostgreSQL: serves the `account` resource for 2PC
//! (prepared transactions) and TCC (the barrier), and resolves its in-doubt
//! prepared transactions with the coordinator at start and periodically.

use std::time::Duration;

use anyhow::Context;
use arbiter_examples::pg_bank::PgBank;
use arbiter_sdk::{Client, ConnectOptions};
use clap::Parser;

#[derive(Parser)]
#[command(about = "A bank service backed by PostgreSQL, taking part in Arbiter transfers")]
struct Args {
    /// The bank's database, e.g. "host=127.0.0.1 port=5432 user=bank dbname=east".
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The coordinator, asked about in-doubt prepared transactions.
    #[arg(long, env = "ARBITER_ADDR", default_value = "http://127.0.0.1:7089")]
    coordinator: String,
    /// Where to serve participant calls.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Accounts to open if missing, as name=balance (repeatable).
    #[arg(long = "account", value_parser = parse_account)]
    accounts: Vec<(String, i64)>,
    /// Seconds between in-doubt passes.
    #[arg(long, default_value_t = 30)]
    resolve_every_secs: u64,
}

fn parse_account(text: &str) -> Result<(String, i64), String> {
    let (name, balance) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not name=balance"))?;
    let balance = balance
        .parse()
        .map_err(|_| format!("bad balance in {text:?}"))?;
    Ok((name.to_string(), balance))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bank = PgBank::connect(&args.database_url)
        .await
        .context("connecting to the bank's database")?;
    for (name, balance) in &args.accounts {
        bank.open_account(name, *balance).await?;
    }
    // Lazy: the service starts even while the coordinator is down; the
    // in-doubt resolver retries until it answers.
    let coordinator = Client::connect_lazy(args.coordinator.clone(), ConnectOptions::new())
        .context("the coordinator address")?;
    let (server, _adapter) = bank
        .service(
            coordinator,
            Duration::from_secs(args.resolve_every_secs.max(1)),
        )
        .await?;
    let running = server.serve(args.listen).await?;
    println!("listening on {}", running.endpoint());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
