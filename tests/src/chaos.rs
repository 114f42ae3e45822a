//! What the kill -9 chaos tests share: workers making random transfers
//! (2PC and TCC mixed) until stopped, and the final state of each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter_examples::{AccountRef, transfer_txn};
use arbiter_sdk::{Client, ClientError, TxnState};
use tokio::task::JoinHandle;

use crate::eventually;

/// The coordinator's settings for a chaos run: quick retries, calls that
/// give up in time.
pub const ARBITER_ARGS: [&str; 6] = [
    "--retry-base-ms",
    "20",
    "--retry-max-ms",
    "300",
    "--call-timeout-ms",
    "2000",
];

/// How many times to kill the coordinator: `ARBITER_CHAOS_KILLS`, or
/// `default` (try 100 for a long run).
pub fn kills(default: usize) -> usize {
    std::env::var("ARBITER_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Transfer workers running in the background.
pub struct Transfers {
    ids: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// Starts `workers` tasks, each making one random transfer between two of
/// `accounts` after the other, with ids `w<worker>-<n>`. A worker whose call
/// fails (the coordinator is down) pauses briefly and goes on.
pub fn start_transfers(client: &Client, accounts: &[AccountRef], workers: usize) -> Transfers {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let accounts = Arc::new(accounts.to_vec());
    let workers = (0..workers)
        .map(|w| {
            let (client, ids, stop, accounts) =
                (client.clone(), ids.clone(), stop.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let from = fastrand::usize(..accounts.len());
                    let to = (from + 1 + fastrand::usize(..accounts.len() - 1)) % accounts.len();
                    let id = format!("w{w}-{seq}");
                    ids.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id.clone());
                    let txn = transfer_txn(
                        fastrand::bool(),
                        &accounts[from],
                        &accounts[to],
                        fastrand::i64(1..=300),
                    )
                    .txn_id(id)
                    .timeout(Duration::from_secs(5));
                    let answered =
                        tokio::time::timeout(Duration::from_secs(15), client.execute(txn)).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tokio::time::sleep(Duration::from_millis(20)).await; // the coordinator is down
                    }
                }
            })
        })
        .collect();
    Transfers { ids, stop, workers }
}

impl Transfers {
    /// Stops the workers; returns the id of every transfer they tried.
    pub async fn stop(self) -> anyhow::Result<Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await?;
        }
        Ok(self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The final state of `id` once it has one; `None` if it never began.
pub async fn final_state(client: &Client, id: &str) -> Option<TxnState> {
    eventually(&format!("{id} is final"), || async {
        match client.get_transaction(id).await {
            Ok(txn) if matches!(txn.state(), TxnState::Committed | TxnState::Aborted) => {
                Some(Some(txn.state()))
            }
            Ok(_) => None,
            Err(ClientError::NotFound(_)) => Some(None),
            Err(_) => None,
        }
    })
    .await
}

/// SIGKILLs `arbiter` `kills` times, each after a random pause in
/// `pause_ms`, restarting it on the same data dir every time.
pub async fn kill_repeatedly(
    arbiter: &mut crate::ArbiterProcess,
    kills: usize,
    pause_ms: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(pause_ms.clone()))).await;
        arbiter.kill().await?;
        arbiter.restart().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// The sum of every account of `banks`.
pub async fn bank_total(banks: &[arbiter_examples::pg_bank::PgBank]) -> anyhow::Result<i64> {
    let mut sum = 0;
    for bank in banks {
        sum += bank.total().await?;
    }
    Ok(sum)
}

/// Waits until no bank database holds a prepared transaction or a TCC
/// hold (phase 2 of the last transactions may still be on its way; the
/// coordinator reports final only after every ack).
pub async fn nothing_left_prepared_or_held(
    banks: std::sync::Arc<Vec<arbiter_examples::pg_bank::PgBank>>,
) {
    eventually("no prepared transaction or hold is left", || {
        let banks = banks.clone();
        async move {
            let mut left = (0, 0);
            for bank in banks.iter() {
                left.0 += bank.prepared().await.ok()?;
                left.1 += bank.holds().await.ok()?;
            }
            (left == (0, 0)).then_some(())
        }
    })
    .await;
}
