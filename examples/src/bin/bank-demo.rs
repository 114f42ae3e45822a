//! The bank demo: two bank services (east holds Alice, west holds Bob) and
//! transfers between them through a running Arbiter coordinator, with 2PC and
//! with TCC, including transfers refused for insufficient funds.

use std::sync::Arc;

use anyhow::ensure;
use arbiter_examples::{AccountRef, Bank, RESOURCE, transfer};
use arbiter_sdk::{Client, ParticipantServer};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Move money between two bank services through Arbiter")]
struct Args {
    /// The coordinator to use (start one with `arbiter serve`).
    #[arg(long, env = "ARBITER_ADDR", default_value = "http://127.0.0.1:7089")]
    coordinator: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let east = Arc::new(Bank::with_accounts(&[("alice", 100)]));
    let west = Arc::new(Bank::with_accounts(&[("bob", 50)]));
    let serve = |bank: Arc<Bank>| async move {
        ParticipantServer::new()
            .two_phase(RESOURCE, bank.clone())
            .tcc(RESOURCE, bank)
            .serve("127.0.0.1:0".parse()?)
            .await
            .map_err(anyhow::Error::from)
    };
    let east_service = serve(east.clone()).await?;
    let west_service = serve(west.clone()).await?;
    let alice = AccountRef {
        endpoint: east_service.endpoint(),
        name: "alice".into(),
    };
    let bob = AccountRef {
        endpoint: west_service.endpoint(),
        name: "bob".into(),
    };
    println!(
        "bank east at {} (alice), bank west at {} (bob)",
        alice.endpoint, bob.endpoint
    );

    let client = Client::connect(args.coordinator.clone()).await?;
    let balances = || {
        (
            east.balance("alice").unwrap_or(0),
            west.balance("bob").unwrap_or(0),
        )
    };
    println!(
        "start:                        alice {:>4}  bob {:>4}",
        balances().0,
        balances().1
    );

    let steps: [(&str, bool, &AccountRef, &AccountRef, i64); 4] = [
        ("2PC alice -> bob 30", false, &alice, &bob, 30),
        ("TCC bob -> alice 20", true, &bob, &alice, 20),
        ("2PC alice -> bob 1000", false, &alice, &bob, 1000),
        ("TCC bob -> alice 500", true, &bob, &alice, 500),
    ];
    for (label, tcc, from, to, amount) in steps {
        let before = balances();
        let outcome = transfer(&client, tcc, from, to, amount).await?;
        let (a, b) = balances();
        println!(
            "{label:<22} {:<9} alice {a:>4}  bob {b:>4}",
            format!("{:?}", outcome.state)
        );
        if !outcome.reason.is_empty() {
            println!("    reason: {}", outcome.reason);
        }
        ensure!(a + b == before.0 + before.1, "money was created or lost");
        if !outcome.is_committed() {
            ensure!((a, b) == before, "a refused transfer changed a balance");
        }
    }
    ensure!(
        east.pending() == 0 && west.pending() == 0,
        "reservations left behind"
    );
    println!("total is unchanged and no reservation is left behind");
    Ok(())
}
