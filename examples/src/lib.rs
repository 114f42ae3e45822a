//! The examples: the travel saga ([`travel`]), the bank on PostgreSQL
//! ([`pg_bank`]) and, here, the bank demo: an account service that takes
//! part in transfers as a 2PC or TCC participant, and a `transfer` helper
//! for the initiator side.
//!
//! A branch payload is `"<account> <delta>"`: `"alice -30"` debits Alice 30,
//! `"bob 30"` credits Bob 30. Debits are reserved in phase 1 (so two transfers
//! can never overdraw an account) and credits only land in phase 2.
//!
//! Every call is idempotent, keyed by (txn id, branch id): a repeated call is a
//! no-op, a rollback/cancel without a reservation is an empty success and is
//! remembered, so a try arriving after its cancel is refused.

pub mod pg_bank;
pub mod travel;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use arbiter_sdk::{
    Branch, CallContext, Client, ClientError, Execute, Outcome, ParticipantError, TccHandler,
    TwoPhaseHandler, Vote,
};

type Key = (String, String);

#[derive(Default)]
struct Books {
    balances: HashMap<String, i64>,
    /// Phase 1 done, phase 2 not yet: (account, delta).
    reserved: HashMap<Key, (String, i64)>,
    /// Branches committed/confirmed.
    settled: HashSet<Key>,
    /// Branches rolled back/cancelled (with or without a reservation).
    released: HashSet<Key>,
}

/// One bank: named accounts with balances.
#[derive(Default)]
pub struct Bank {
    books: Mutex<Books>,
}

/// Reads a `"<account> <delta>"` payload.
pub(crate) fn parse(payload: &[u8]) -> Result<(String, i64), ParticipantError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| ParticipantError::Invalid("payload is not UTF-8".into()))?;
    let (account, delta) = text.split_once(' ').ok_or_else(|| {
        ParticipantError::Invalid(format!("payload {text:?} is not \"<account> <delta>\""))
    })?;
    let delta = delta
        .parse()
        .map_err(|_| ParticipantError::Invalid(format!("bad amount in {text:?}")))?;
    Ok((account.to_string(), delta))
}

impl Bank {
    pub fn with_accounts(accounts: &[(&str, i64)]) -> Bank {
        let bank = Bank::default();
        bank.lock().balances.extend(
            accounts
                .iter()
                .map(|(name, balance)| (name.to_string(), *balance)),
        );
        bank
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current balance (reserved debits already taken out).
    pub fn balance(&self, account: &str) -> Option<i64> {
        self.lock().balances.get(account).copied()
    }

    /// Number of reservations still waiting for phase 2.
    pub fn pending(&self) -> usize {
        self.lock().reserved.len()
    }

    /// Sum of all balances.
    pub fn total(&self) -> i64 {
        self.lock().balances.values().sum()
    }

    /// How this bank's branches of `txn_id` ended: (settled, released).
    pub fn outcome(&self, txn_id: &str) -> (usize, usize) {
        let books = self.lock();
        let count = |set: &HashSet<Key>| set.iter().filter(|(t, _)| t == txn_id).count();
        (count(&books.settled), count(&books.released))
    }

    fn reserve(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        let (account, delta) = parse(payload)?;
        let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
        let mut books = self.lock();
        if books.released.contains(&key) {
            // The rollback/cancel overtook this prepare/try: refuse it.
            return Ok(Vote::No("this branch was already rolled back".into()));
        }
        if books.settled.contains(&key) {
            return Ok(Vote::Yes);
        }
        if books.reserved.contains_key(&key) {
            return Ok(Vote::Yes);
        }
        let Some(balance) = books.balances.get_mut(&account) else {
            return Ok(Vote::No(format!("no account {account:?}")));
        };
        if delta < 0 {
            if *balance + delta < 0 {
                return Ok(Vote::No(format!(
                    "insufficient funds in {account}: {balance} < {}",
                    -delta
                )));
            }
            *balance += delta;
        }
        books.reserved.insert(key, (account, delta));
        Ok(Vote::Yes)
    }

    fn settle(&self, ctx: &CallContext) {
        let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
        let mut books = self.lock();
        if let Some((account, delta)) = books.reserved.remove(&key)
            && delta > 0
        {
            *books.balances.entry(account).or_default() += delta;
        }
        books.settled.insert(key);
    }

    fn release(&self, ctx: &CallContext) {
        let key = (ctx.txn_id.clone(), ctx.branch_id.clone());
        let mut books = self.lock();
        if let Some((account, delta)) = books.reserved.remove(&key)
            && delta < 0
        {
            *books.balances.entry(account).or_default() -= delta;
        }
        books.released.insert(key);
    }
}

impl TwoPhaseHandler for Bank {
    async fn prepare(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.reserve(ctx, payload)
    }
    async fn commit(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.settle(ctx);
        Ok(())
    }
    async fn rollback(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.release(ctx);
        Ok(())
    }
}

impl TccHandler for Bank {
    async fn try_(&self, ctx: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.reserve(ctx, payload)
    }
    async fn confirm(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.settle(ctx);
        Ok(())
    }
    async fn cancel(&self, ctx: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.release(ctx);
        Ok(())
    }
}

/// The resource name bank services serve.
pub const RESOURCE: &str = "account";

/// Where an account lives: the bank service's endpoint and the account name.
#[derive(Clone, Debug)]
pub struct AccountRef {
    pub endpoint: String,
    pub name: String,
}

/// The transaction that moves `amount` from one account to another.
pub fn transfer_txn(tcc: bool, from: &AccountRef, to: &AccountRef, amount: i64) -> Execute {
    let txn = if tcc {
        Execute::tcc()
    } else {
        Execute::two_phase()
    };
    txn.branch(Branch::new(&from.endpoint, RESOURCE).payload(format!("{} {}", from.name, -amount)))
        .branch(Branch::new(&to.endpoint, RESOURCE).payload(format!("{} {}", to.name, amount)))
}

/// Moves `amount` from one account to another in one distributed transaction.
pub async fn transfer(
    client: &Client,
    tcc: bool,
    from: &AccountRef,
    to: &AccountRef,
    amount: i64,
) -> Result<Outcome, ClientError> {
    client.execute(transfer_txn(tcc, from, to, amount)).await
}
