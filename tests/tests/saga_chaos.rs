//! Kill -9 chaos for sagas: the travel example (flight, hotel and car
//! inventories with limited stock) and many concurrent trips while the
//! coordinator is SIGKILLed at random moments and restarted. Afterwards:
//! every trip is final; a completed one holds exactly one booking at each
//! service, a compensated one holds none; no item is held twice or lost
//! (held + left = the stock we started with).
//!
//! `ARBITER_CHAOS_KILLS` sets the number of kills (default 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arbiter_examples::travel::{BOOKING, Booking, Inventory, trip};
use arbiter_sdk::{ParticipantServer, TxnState};
use arbiter_tests::ArbiterProcess;
use arbiter_tests::chaos::{self, final_state, kill_repeatedly};

const WORKERS: usize = 8;
/// Less stock than trips, so some sagas fail and compensate.
const STOCK: [(&str, i64); 3] = [("LH123", 900), ("hotel-adlon", 500), ("compact", 700)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_survive_repeated_kill_9() -> anyhow::Result<()> {
    let kills = chaos::kills(10);
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(dir.path(), &chaos::ARBITER_ARGS).await?;
    let mut inventories = Vec::new();
    let mut services = Vec::new();
    let mut bookings = Vec::new();
    for (item, stock) in STOCK {
        let inventory = Arc::new(Inventory::with_stock(&[(item, stock)]));
        let service = ParticipantServer::new()
            .saga(BOOKING, inventory.clone())
            .serve("127.0.0.1:0".parse()?)
            .await?;
        bookings.push(Booking {
            endpoint: service.endpoint(),
            item: item.to_string(),
        });
        inventories.push(inventory);
        services.push(service);
    }

    let client = arbiter.client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bookings = Arc::new(bookings);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, stop, ids, bookings) =
                (client.clone(), stop.clone(), ids.clone(), bookings.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let id = format!("trip-{w}-{seq}");
                    ids.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id.clone());
                    let saga = trip(&bookings[0], &bookings[1], &bookings[2])
                        .txn_id(id)
                        .timeout(Duration::from_secs(5));
                    let answered =
                        tokio::time::timeout(Duration::from_secs(15), client.execute(saga)).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tokio::time::sleep(Duration::from_millis(20)).await; // the coordinator is down
                    }
                }
            })
        })
        .collect();

    kill_repeatedly(&mut arbiter, kills, 150..600).await?;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await?;
    }
    let ids = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let (mut completed, mut compensated, mut never_began) = (0, 0, 0);
    for id in &ids {
        let state = final_state(&client, id).await;
        let holds: Vec<usize> = inventories.iter().map(|i| i.holds_of(id)).collect();
        match state {
            Some(TxnState::Committed) => {
                completed += 1;
                assert_eq!(
                    holds,
                    [1, 1, 1],
                    "{id} completed: one booking at each service"
                );
            }
            Some(_) => {
                compensated += 1;
                assert_eq!(holds, [0, 0, 0], "{id} compensated: nothing held");
            }
            None => {
                never_began += 1;
                assert_eq!(holds, [0, 0, 0], "{id} never began but something is held");
            }
        }
    }
    for (inventory, (item, stock)) in inventories.iter().zip(STOCK) {
        assert_eq!(
            inventory.held(item) + inventory.left(item),
            stock,
            "{item}: held + left is the stock (nothing lost or held twice)"
        );
        assert_eq!(
            inventory.held(item),
            completed as i64,
            "{item}: exactly one held per completed trip"
        );
    }
    println!(
        "saga chaos: {} trips, {kills} kills, {completed} completed, {compensated} compensated, {never_began} never began",
        ids.len()
    );
    assert!(completed > 0, "some trips went through");
    drop(services);
    Ok(())
}
