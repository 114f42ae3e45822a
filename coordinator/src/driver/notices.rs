//! Delivers the webhook notifications the log holds (see `notify`): each to
//! every endpoint until each answered 2xx, with backoff, then deletes it.
//! Woken by the feed when records are durable, and once a second for the
//! ones waiting on backoff or left by another node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::driver::ids;
use crate::driver::runtime::Inner;
use crate::notify::{Notifier, delivery_id, http, sign};
use crate::store::history::Pending;
use crate::store::record::Op;
use crate::store::{Write, keys};

/// Notifications read per look at the log.
const PAGE: usize = 512;
/// POSTs in flight at once.
const PARALLEL: usize = 16;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest backoff between two tries of one notification.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A notification written by another node is delivered here only once it
/// is this old (its node may be gone).
const ORPHANED_MS: u64 = 60_000;
/// Looks at the log at most this often when woken by the feed.
const DEBOUNCE: Duration = Duration::from_millis(50);

type Key = (String, u8);

/// Where one notification stands here.
#[derive(Default)]
struct Progress {
    failures: u32,
    next_at: Option<Instant>,
    busy: bool,
    /// Endpoints that answered 2xx.
    delivered: HashSet<String>,
    /// Deleted: ignore what an older read still shows.
    done: Option<Instant>,
}

/// What one delivery attempt came to.
struct Outcome {
    key: Key,
    delivered: Vec<String>,
    error: Option<String>,
}

/// Runs until the coordinator stops.
pub async fn deliver(inner: Arc<Inner>, notifier: Arc<Notifier>) {
    let mut wake = inner.feed.subscribe();
    let mut stopping = inner.stopping.subscribe();
    let slots = Arc::new(Semaphore::new(PARALLEL));
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut progress: HashMap<Key, Progress> = HashMap::new();
    let mut last_look = Instant::now() - DEBOUNCE;
    loop {
        tokio::select! {
            _ = stopping.changed() => return,
            changed = wake.changed() => if changed.is_err() { return },
            Some(outcome) = rx.recv() => {
                settle(&inner, &mut progress, outcome).await;
                continue;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if *stopping.borrow() {
            return;
        }
        let since = last_look.elapsed();
        if since < DEBOUNCE {
            tokio::time::sleep(DEBOUNCE - since).await;
        }
        last_look = Instant::now();
        progress.retain(|_, p| {
            p.done
                .is_none_or(|at| at.elapsed() < Duration::from_secs(30))
        });
        for pending in read_all(&inner).await {
            let key = (pending.txn_id.clone(), pending.kind);
            let p = progress.entry(key.clone()).or_default();
            if p.busy || p.done.is_some() || p.next_at.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let age = ids::now_ms().saturating_sub(pending.notice.at_ms);
            if pending.notice.node_id != notifier.node_id && age < ORPHANED_MS {
                continue;
            }
            if age > inner.config.retention.as_millis() as u64 {
                tracing::warn!(txn = %pending.txn_id, "webhook notification given up after the retention time");
                crate::metrics::notification("expired");
                p.done = Some(Instant::now());
                delete(&inner, &key).await;
                continue;
            }
            p.busy = true;
            let delivered = p.delivered.clone();
            let (notifier, tx, slots) = (notifier.clone(), tx.clone(), slots.clone());
            tokio::spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                let outcome = send(&notifier, pending, &delivered).await;
                let _ = tx.send(outcome);
            });
        }
    }
}

/// Every pending notification, page by page (read off the async threads:
/// the store's reads block).
async fn read_all(inner: &Arc<Inner>) -> Vec<Pending> {
    let log = inner.log.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut after: Option<(String, u8)> = None;
        loop {
            let page = log.notices(after.as_ref().map(|(t, k)| (t.as_str(), *k)), PAGE)?;
            let full = page.len() >= PAGE;
            for item in page {
                match item {
                    Ok(p) => {
                        after = Some((p.txn_id.clone(), p.kind));
                        out.push(p);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a damaged webhook notification; skipped")
                    }
                }
            }
            if !full || after.is_none() {
                return Ok::<_, crate::store::StoreError>(out);
            }
        }
    });
    match read.await {
        Ok(Ok(pending)) => pending,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read pending webhook notifications; trying again");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// POSTs one notification to each endpoint that has not taken it yet.
async fn send(notifier: &Notifier, pending: Pending, done: &HashSet<String>) -> Outcome {
    let key = (pending.txn_id.clone(), pending.kind);
    let state = serde_json::from_slice::<serde_json::Value>(&pending.notice.body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    let mut delivered = Vec::new();
    let mut error = None;
    for endpoint in &notifier.config.endpoints {
        if done.contains(&endpoint.url) {
            continue;
        }
        let timestamp = ids::now_ms() / 1000;
        let mut headers = vec![
            ("X-Arbiter-Event", state.clone()),
            (
                "X-Arbiter-Delivery",
                delivery_id(&pending.txn_id, pending.kind),
            ),
            ("X-Arbiter-Timestamp", timestamp.to_string()),
        ];
        if let Some(secret) = &notifier.config.secret {
            headers.push((
                "X-Arbiter-Signature",
                sign::signature(secret.as_bytes(), timestamp, &pending.notice.body),
            ));
        }
        match http::post(endpoint, &headers, &pending.notice.body, POST_TIMEOUT).await {
            Ok(status) if (200..300).contains(&status) => {
                crate::metrics::notification("delivered");
                delivered.push(endpoint.url.clone());
            }
            Ok(status) => {
                crate::metrics::notification("failed");
                error = Some(format!("{} answered HTTP {status}", endpoint.url));
            }
            Err(e) => {
                crate::metrics::notification("failed");
                error = Some(format!("{}: {e}", endpoint.url));
            }
        }
    }
    Outcome {
        key,
        delivered,
        error,
    }
}

/// Records an attempt: deletes the notification once every endpoint took
/// it, or schedules the next try.
async fn settle(inner: &Arc<Inner>, progress: &mut HashMap<Key, Progress>, outcome: Outcome) {
    let p = progress.entry(outcome.key.clone()).or_default();
    p.busy = false;
    p.delivered.extend(outcome.delivered);
    match outcome.error {
        None => {
            p.done = Some(Instant::now());
            delete(inner, &outcome.key).await;
        }
        Some(error) => {
            p.failures += 1;
            let backoff = Duration::from_secs(1)
                .saturating_mul(1 << p.failures.min(9))
                .min(MAX_BACKOFF);
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
            p.next_at = Some(Instant::now() + backoff + jitter);
            tracing::warn!(txn = %outcome.key.0, %error, failures = p.failures, retry_in = ?backoff,
                "webhook delivery failed; will retry");
        }
    }
}

async fn delete(inner: &Arc<Inner>, key: &Key) {
    let op = Op::Delete(keys::notice_key(&key.0, key.1));
    let durable = inner.writer.submit(Write::Plain(op));
    if let Err(e) = inner.wait_durable(durable).await {
        tracing::warn!(txn = %key.0, error = %e, "cannot delete a delivered webhook notification; it may be sent again");
    }
}
