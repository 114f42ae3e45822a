//! The travel demo: three inventory services (flights, hotels, cars) and
//! trips booked as sagas through a running Arbiter coordinator. The hotel
//! has one room: the second trip fails at the hotel, and its flight seat is
//! released again.

use std::sync::Arc;

use anyhow::ensure;
use arbiter_examples::travel::{BOOKING, Booking, Inventory, book_trip};
use arbiter_sdk::{Client, ParticipantServer};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Book trips (flight, hotel, car) as sagas through Arbiter")]
struct Args {
    /// The coordinator to use (start one with `arbiter serve`).
    #[arg(long, env = "ARBITER_ADDR", default_value = "http://127.0.0.1:7089")]
    coordinator: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flights = Arc::new(Inventory::with_stock(&[("LH123", 10)]));
    let hotels = Arc::new(Inventory::with_stock(&[("hotel-adlon", 1)]));
    let cars = Arc::new(Inventory::with_stock(&[("compact", 10)]));
    let mut services = Vec::new();
    let mut bookings = Vec::new();
    for (inventory, item) in [
        (&flights, "LH123"),
        (&hotels, "hotel-adlon"),
        (&cars, "compact"),
    ] {
        let service = ParticipantServer::new()
            .saga(BOOKING, inventory.clone())
            .serve("127.0.0.1:0".parse()?)
            .await?;
        bookings.push(Booking {
            endpoint: service.endpoint(),
            item: item.to_string(),
        });
        services.push(service);
    }
    let client = Client::connect(args.coordinator.clone()).await?;
    let stock = || {
        (
            flights.left("LH123"),
            hotels.left("hotel-adlon"),
            cars.left("compact"),
        )
    };
    println!(
        "start:   seats {:>2}  rooms {:>2}  cars {:>2}",
        stock().0,
        stock().1,
        stock().2
    );
    for trip in 1..=2 {
        let outcome = book_trip(&client, &bookings[0], &bookings[1], &bookings[2]).await?;
        let (s, r, c) = stock();
        println!(
            "trip {trip}:  seats {s:>2}  rooms {r:>2}  cars {c:>2}  {:?}",
            outcome.state
        );
        if !outcome.reason.is_empty() {
            println!("    reason: {}", outcome.reason);
        }
        ensure!(
            outcome.is_committed() == (trip == 1),
            "trip {trip} should have {}",
            if trip == 1 {
                "been booked"
            } else {
                "failed at the hotel"
            }
        );
    }
    ensure!(
        stock() == (9, 0, 9),
        "the failed trip's flight seat was not released"
    );
    println!("the second trip found no room, and its flight seat was released");
    Ok(())
}
