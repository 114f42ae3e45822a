//! The travel example: a trip is a saga of three bookings (a flight seat,
//! then a hotel room, then a car), each at its own inventory service with
//! limited stock. A booking that cannot be had fails the saga, and the
//! bookings already made are released (compensated) in reverse order.
//!
//! A step's payload is `"<item> <count>"`. The inventory is idempotent per
//! (txn id, step id): a repeated action answers as the first did, a
//! compensation with no booking on record is remembered as empty, and an
//! action arriving after its compensation is refused (what the SDK's
//! barrier does for a stored inventory).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use arbiter_sdk::{
    Branch, CallContext, Client, ClientError, Execute, Outcome, ParticipantError, SagaHandler,
    StepOutcome,
};

type Key = (String, String);

#[derive(Default)]
struct Stock {
    /// Left to book, by item.
    left: HashMap<String, i64>,
    /// Booked by a step and not released: (item, count).
    held: HashMap<Key, (String, i64)>,
    /// Steps whose action failed here (answered again the same way).
    refused: HashMap<Key, String>,
    /// Steps compensated (with or without a booking).
    released: HashSet<Key>,
}

/// One inventory service: flight seats, hotel rooms or cars.
#[derive(Default)]
pub struct Inventory {
    stock: Mutex<Stock>,
}

/// The resource inventory services serve.
pub const BOOKING: &str = "booking";

impl Inventory {
    pub fn with_stock(items: &[(&str, i64)]) -> Inventory {
        let inventory = Inventory::default();
        inventory
            .lock()
            .left
            .extend(items.iter().map(|(item, n)| (item.to_string(), *n)));
        inventory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stock> {
        self.stock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Left to book of `item`.
    pub fn left(&self, item: &str) -> i64 {
        self.lock().left.get(item).copied().unwrap_or(0)
    }

    /// Booked and held of `item`, over all sagas.
    pub fn held(&self, item: &str) -> i64 {
        self.lock()
            .held
            .values()
            .filter(|(i, _)| i == item)
            .map(|(_, n)| n)
            .sum()
    }

    /// The steps of `txn_id` holding a booking here.
    pub fn holds_of(&self, txn_id: &str) -> usize {
        self.lock().held.keys().filter(|(t, _)| t == txn_id).count()
    }

    fn book(&self, ctx: &CallContext, payload: &[u8]) -> Result<StepOutcome, ParticipantError> {
        let (item, count) = crate::parse(payload)?;
        let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
        let mut stock = self.lock();
        if stock.released.contains(&key) {
            return Ok(StepOutcome::Failed(
                "this booking was already released".into(),
            ));
        }
        if let Some(why) = stock.refused.get(&key) {
            return Ok(StepOutcome::Failed(why.clone()));
        }
        if stock.held.contains_key(&key) {
            return Ok(StepOutcome::SucceededWith(
                format!("{item} x{count}").into_bytes(),
            ));
        }
        let left = stock.left.get(&item).copied();
        match left {
            Some(left) if count > 0 && left >= count => {
                stock.left.insert(item.clone(), left - count);
                stock.held.insert(key, (item.clone(), count));
                Ok(StepOutcome::SucceededWith(
                    format!("{item} x{count}").into_bytes(),
                ))
            }
            _ => {
                let why = format!("{item}: sold out");
                stock.refused.insert(key, why.clone());
                Ok(StepOutcome::Failed(why))
            }
        }
    }

    fn release(&self, ctx: &CallContext) {
        let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
        let mut stock = self.lock();
        if let Some((item, count)) = stock.held.remove(&key) {
            *stock.left.entry(item).or_default() += count;
        }
        stock.released.insert(key);
    }
}

impl SagaHandler for Inventory {
    async fn action(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<StepOutcome, ParticipantError> {
        self.book(ctx, payload)
    }
    async fn compensate(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.release(ctx);
        Ok(())
    }
}

/// What a trip books: at which service, which item.
#[derive(Clone, Debug)]
pub struct Booking {
    pub endpoint: String,
    pub item: String,
}

/// The saga of a trip: flight, then hotel, then car, one of each.
pub fn trip(flight: &Booking, hotel: &Booking, car: &Booking) -> Execute {
    let step = |b: &Booking| Branch::new(&b.endpoint, BOOKING).payload(format!("{} 1", b.item));
    Execute::saga()
        .branch(step(flight))
        .branch(step(hotel))
        .branch(step(car))
}

/// Books a trip: all three, or none.
pub async fn book_trip(
    client: &Client,
    flight: &Booking,
    hotel: &Booking,
    car: &Booking,
) -> Result<Outcome, ClientError> {
    client.execute(trip(flight, hotel, car)).await
}
