//! Delivers the webhook notifications the log holds (see `notify`): each to
//! every endpoint until each answered 2xx, then deletes it.
//!
//! The log is read a page at a time from a cursor, so a backlog (an endpoint
//! down for hours under load) costs one page per pass, not all of it. An
//! endpoint that fails is backed off as a whole (1 s doubling to 5 min), so
//! a dead endpoint is not hammered once per notification. A notification is
//! read, then made sure durable (a barrier), then sent: nothing is announced
//! that a crash could take back. In a cluster a node sends what it wrote,
//! and what a node that is gone wrote.

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

/// Notifications read per pass.
const PAGE: usize = 256;
/// POSTs in flight at once.
const PARALLEL: usize = 16;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest backoff of a failing endpoint.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Passes at most this often when woken by transactions ending.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Notifications remembered as partly delivered (to some endpoints).
const PARTIAL: usize = 100_000;

type Key = (String, u8);

/// An endpoint that failed: when to try it again.
struct Backoff {
    failures: u32,
    next_at: Instant,
}

/// What one delivery attempt came to.
struct Outcome {
    key: Key,
    delivered: Vec<String>,
    failed: Vec<(String, String)>,
}

struct Delivery {
    inner: Arc<Inner>,
    notifier: Arc<Notifier>,
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Outcome>,
    backoff: HashMap<String, Backoff>,
    /// Notifications some endpoint refused: not before this again.
    retry_at: HashMap<Key, Backoff>,
    /// Endpoints that took a notification not yet taken by all.
    partial: HashMap<Key, HashSet<String>>,
    busy: HashSet<Key>,
    /// Deleted lately: an older read may still show them.
    done: HashMap<Key, Instant>,
    /// The raw key the next page starts after (`None`: from the start).
    cursor: Option<Vec<u8>>,
    /// Taken by every endpoint (or expired): to delete, together.
    to_delete: Vec<Key>,
}

/// Runs until the coordinator stops.
pub async fn deliver(inner: Arc<Inner>, notifier: Arc<Notifier>) {
    let mut stopping = inner.stopping.subscribe();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut d = Delivery {
        inner: inner.clone(),
        notifier,
        slots: Arc::new(Semaphore::new(PARALLEL)),
        tx,
        backoff: HashMap::new(),
        retry_at: HashMap::new(),
        partial: HashMap::new(),
        busy: HashSet::new(),
        done: HashMap::new(),
        cursor: None,
        to_delete: Vec::new(),
    };
    let mut last_pass = Instant::now() - DEBOUNCE;
    loop {
        tokio::select! {
            _ = stopping.changed() => return,
            _ = inner.feed.ended.notified() => {}
            Some(outcome) = rx.recv() => {
                d.settle(outcome);
                while let Ok(more) = rx.try_recv() {
                    d.settle(more);
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if *stopping.borrow() {
            return;
        }
        d.delete_done().await;
        let since = last_pass.elapsed();
        if since < DEBOUNCE {
            tokio::time::sleep(DEBOUNCE - since).await;
        }
        last_pass = Instant::now();
        d.pass().await;
        d.delete_done().await;
    }
}

impl Delivery {
    /// Endpoints of the configuration not backed off now.
    fn ready(&self) -> Vec<&http::Endpoint> {
        let now = Instant::now();
        self.notifier
            .config
            .endpoints
            .iter()
            .filter(|e| self.backoff.get(&e.url).is_none_or(|b| b.next_at <= now))
            .collect()
    }

    /// Reads the next page of notifications and sends what can be sent.
    async fn pass(&mut self) {
        let now = Instant::now();
        self.done
            .retain(|_, at| at.elapsed() < Duration::from_secs(60));
        // Forgetting refusals only means trying sooner: keep it bounded.
        self.retry_at.retain(|_, b| b.next_at + MAX_BACKOFF > now);
        if self.retry_at.len() > PARTIAL {
            self.retry_at.clear();
        }
        if self.ready().is_empty() || self.slots.available_permits() == 0 {
            return;
        }
        let started_after = self.cursor.clone();
        let Some((page, last_key, full)) = self.read_page(started_after.clone()).await else {
            return;
        };
        // Where the next page starts: after this one, or from the start.
        self.cursor = if full { last_key } else { None };
        let mut alive: Option<Option<HashSet<String>>> = None;
        let mut previous = started_after;
        for pending in page {
            let key = (pending.txn_id.clone(), pending.kind);
            let raw = keys::notice_key(&key.0, key.1);
            let skip = self.busy.contains(&key)
                || self.done.contains_key(&key)
                || self.retry_at.get(&key).is_some_and(|b| b.next_at > now);
            if skip {
                previous = Some(raw);
                continue;
            }
            let age = ids::now_ms().saturating_sub(pending.notice.at_ms);
            if age > self.inner.config.retention.as_millis() as u64 {
                tracing::warn!(txn = %pending.txn_id, "webhook notification given up after the retention time");
                crate::metrics::notification("expired");
                self.finished(key);
                previous = Some(raw);
                continue;
            }
            if pending.notice.node_id != self.notifier.node_id {
                let alive = match &alive {
                    Some(a) => a,
                    None => alive.insert(self.alive_nodes()),
                };
                if alive
                    .as_ref()
                    .is_none_or(|a| a.contains(&pending.notice.node_id))
                {
                    previous = Some(raw);
                    continue; // its node is alive and sends it
                }
            }
            let taken = self.partial.get(&key);
            let targets: Vec<http::Endpoint> = self
                .ready()
                .into_iter()
                .filter(|e| taken.is_none_or(|t| !t.contains(&e.url)))
                .cloned()
                .collect();
            if targets.is_empty() {
                previous = Some(raw);
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                // Full: the next pass starts at this one.
                self.cursor = previous;
                return;
            };
            previous = Some(raw);
            self.busy.insert(key.clone());
            let (notifier, tx) = (self.notifier.clone(), self.tx.clone());
            tokio::spawn(async move {
                let urls: Vec<String> = targets.iter().map(|e| e.url.clone()).collect();
                let sending = tokio::spawn(async move { send(&notifier, pending, targets).await });
                // Even a send that panicked is settled, so it is tried again.
                let outcome = sending.await.unwrap_or_else(|_| Outcome {
                    key,
                    delivered: Vec::new(),
                    failed: urls
                        .into_iter()
                        .map(|u| (u, "the delivery task failed".to_string()))
                        .collect(),
                });
                drop(permit);
                let _ = tx.send(outcome);
            });
        }
    }

    /// The page after `after`, once durable: its readable notifications,
    /// the last key read and whether the page was full; `None` if
    /// unreadable now.
    async fn read_page(
        &self,
        after: Option<Vec<u8>>,
    ) -> Option<(Vec<Pending>, Option<Vec<u8>>, bool)> {
        let log = self.inner.log.clone();
        let read = tokio::task::spawn_blocking(move || log.notices(after.as_deref(), PAGE));
        let page = match read.await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read pending webhook notifications; trying again");
                return None;
            }
            Err(_) => return None,
        };
        // What was read may be written but not yet synced.
        if !self.inner.writer.stats().all_synced() {
            let durable = self.inner.writer.submit(Write::Barrier);
            self.inner.wait_durable(durable).await.ok()?;
        }
        let items = page
            .items
            .into_iter()
            .filter_map(|item| {
                item.map_err(
                    |e| tracing::error!(error = %e, "a damaged webhook notification; skipped"),
                )
                .ok()
            })
            .collect();
        Some((items, page.last_key, page.full))
    }

    /// Nodes of a shared store whose lease runs; `None` if that cannot be
    /// read now (then every node counts as alive: its notifications wait).
    fn alive_nodes(&self) -> Option<HashSet<String>> {
        match self.inner.log.nodes() {
            Ok(Some(nodes)) => Some(
                nodes
                    .into_iter()
                    .filter(|n| n.alive)
                    .map(|n| n.node_id)
                    .collect(),
            ),
            Ok(None) => Some(HashSet::new()),
            Err(_) => None,
        }
    }

    /// Records an attempt: backs failing endpoints and the notification
    /// off, and marks it for deletion once every endpoint took it.
    fn settle(&mut self, outcome: Outcome) {
        let now = Instant::now();
        self.busy.remove(&outcome.key);
        for url in &outcome.delivered {
            self.backoff.remove(url);
        }
        for (url, error) in &outcome.failed {
            let b = self.backoff.entry(url.clone()).or_insert(Backoff {
                failures: 0,
                next_at: now,
            });
            // Failures of calls made together count once.
            if b.next_at <= now {
                b.failures += 1;
                b.next_at = now + backoff(b.failures);
                tracing::warn!(txn = %outcome.key.0, endpoint = %url, %error, failures = b.failures,
                    "webhook delivery failed; the endpoint is backed off");
            }
        }
        if !outcome.failed.is_empty() {
            let r = self.retry_at.entry(outcome.key.clone()).or_insert(Backoff {
                failures: 0,
                next_at: now,
            });
            r.failures += 1;
            r.next_at = now + backoff(r.failures);
        }
        let taken = self.partial.entry(outcome.key.clone()).or_default();
        taken.extend(outcome.delivered);
        let all = self
            .notifier
            .config
            .endpoints
            .iter()
            .all(|e| taken.contains(&e.url));
        if all {
            self.finished(outcome.key);
        } else if self.partial.len() > PARTIAL {
            // Bounded: forgetting who took it only means sending it again.
            let key = outcome.key.clone();
            self.partial.retain(|k, _| *k == key);
        }
    }

    /// Marks a notification done: deleted with the next [`Delivery::delete_done`].
    fn finished(&mut self, key: Key) {
        self.partial.remove(&key);
        self.retry_at.remove(&key);
        self.done.insert(key.clone(), Instant::now());
        self.to_delete.push(key);
    }

    /// Deletes the finished notifications from the log, in one write.
    async fn delete_done(&mut self) {
        if self.to_delete.is_empty() {
            return;
        }
        let waits: Vec<_> = self
            .to_delete
            .drain(..)
            .map(|key| {
                let op = Op::Delete(keys::notice_key(&key.0, key.1));
                (key, self.inner.writer.submit(Write::Plain(op)))
            })
            .collect();
        for (key, durable) in waits {
            if let Err(e) = self.inner.wait_durable(durable).await {
                tracing::warn!(txn = %key.0, error = %e, "cannot delete a delivered webhook notification; it may be sent again");
            }
        }
    }
}

/// 1 s doubling to [`MAX_BACKOFF`], with up to a quarter more of jitter.
fn backoff(failures: u32) -> Duration {
    let delay = Duration::from_secs(1)
        .saturating_mul(1 << failures.min(9))
        .min(MAX_BACKOFF);
    delay + Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 4))
}

/// POSTs one notification to `targets`.
async fn send(notifier: &Notifier, pending: Pending, targets: Vec<http::Endpoint>) -> Outcome {
    let event = serde_json::from_slice::<serde_json::Value>(&pending.notice.body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    let mut outcome = Outcome {
        key: (pending.txn_id.clone(), pending.kind),
        delivered: Vec::new(),
        failed: Vec::new(),
    };
    for endpoint in targets {
        let timestamp = ids::now_ms() / 1000;
        let mut headers = vec![
            ("X-Arbiter-Event", event.clone()),
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
        match http::post(&endpoint, &headers, &pending.notice.body, POST_TIMEOUT).await {
            Ok(status) if (200..300).contains(&status) => {
                crate::metrics::notification("delivered");
                outcome.delivered.push(endpoint.url);
            }
            Ok(status) => {
                crate::metrics::notification("failed");
                outcome
                    .failed
                    .push((endpoint.url, format!("answered HTTP {status}")));
            }
            Err(e) => {
                crate::metrics::notification("failed");
                outcome.failed.push((endpoint.url, e));
            }
        }
    }
    outcome
}
