//! The two watch streams: `Coordinator.WatchTransaction` (one transaction's
//! changes, read from the log, so a resumed or replayed watch sees exactly
//! what the log holds) and `Admin.WatchTransactions` (the live feed of every
//! change, from the bounded ring in `store::feed`).
//!
//! Both run in a task of their own that feeds a small channel: a client that
//! stops reading only stops its own task. A single-transaction watcher is
//! woken by the feed when its transaction changes on this node, and polls
//! the log besides (every 200 ms on a store nodes share, where another node
//! may drive the transaction and a takeover keeps the numbering).

use std::pin::Pin;
use std::time::Duration;

use arbiter_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::driver::Driver;
use crate::engine::{Change, ChangeKind, Mode, TxnState, Vote};
use crate::server::convert::{mode_from_pb, mode_to_pb, state_from_pb, state_to_pb};
use crate::store::feed::{Item, Read};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TxnEvent, Status>> + Send>>;
pub type FeedStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchTransactionsResponse, Status>> + Send>>;

/// Events buffered per watcher between its task and its connection.
const BUFFER: usize = 64;

/// A place for one more watch, or RESOURCE_EXHAUSTED.
fn permit(driver: &Driver) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
    driver.watch_permit().ok_or_else(|| {
        Status::resource_exhausted(
            "too many watch streams are open on this coordinator (--max-watches); retry later",
        )
    })
}

fn stopping() -> Status {
    Status::unavailable("the coordinator is stopping; watch again, from where this stream ended")
}

/// The proto form of one change of a transaction in `mode`.
pub fn event_to_pb(txn_id: &str, mode: Mode, change: &Change) -> pb::TxnEvent {
    let mut e = pb::TxnEvent {
        txn_id: txn_id.to_string(),
        seq: change.seq,
        at_ms: change.at_ms,
        state: state_to_pb(change.state) as i32,
        r#final: change.is_final(),
        ..Default::default()
    };
    let kind = match &change.kind {
        ChangeKind::State { reason } => {
            e.detail = reason.clone();
            pb::EventKind::State
        }
        ChangeKind::Registered { branch } => {
            e.branch_id = branch.clone();
            pb::EventKind::BranchRegistered
        }
        ChangeKind::Voted {
            branch,
            vote,
            detail,
            result,
        } => {
            e.branch_id = branch.clone();
            e.vote = match vote {
                Vote::Yes => pb::BranchVote::Yes,
                Vote::ReadOnly => pb::BranchVote::ReadOnly,
                Vote::No => pb::BranchVote::No,
            } as i32;
            e.detail = detail.clone();
            e.result = result.clone();
            pb::EventKind::BranchVoted
        }
        ChangeKind::Acked {
            branch,
            call,
            result,
        } => {
            e.branch_id = branch.clone();
            e.call = call.rpc_name(mode).to_string();
            e.result = result.clone();
            pb::EventKind::BranchAcked
        }
        ChangeKind::CallFailed {
            branch,
            call,
            attempt,
            error,
        } => {
            e.branch_id = branch.clone();
            e.call = call.rpc_name(mode).to_string();
            e.attempt = *attempt;
            e.detail = error.clone();
            pb::EventKind::CallFailed
        }
        ChangeKind::Stuck => pb::EventKind::Stuck,
        ChangeKind::RetryNow => pb::EventKind::RetryNow,
        ChangeKind::Resolved {
            branch,
            committed,
            note,
        } => {
            e.branch_id = branch.clone();
            e.committed = *committed;
            e.detail = note.clone();
            pb::EventKind::BranchResolved
        }
    };
    e.kind = kind as i32;
    e
}

/// Starts watching one transaction. NOT_FOUND if the log has never heard of
/// it (or it was collected).
pub fn watch_transaction(
    driver: &Driver,
    request: pb::WatchTransactionRequest,
) -> Result<EventStream, Status> {
    let txn = driver.get(&request.txn_id)?;
    let from = request.from_seq.max(1);
    if txn.state.is_final() && from > txn.seq.max(1) {
        return Err(Status::out_of_range(format!(
            "transaction {} is {} and its last change is {}; from_seq {from} is past it",
            txn.id,
            txn.state.name(),
            txn.seq
        )));
    }
    let permit = permit(driver)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let driver = driver.clone();
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(status) = follow(&driver, &txn.id, txn.mode, from, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Sends the changes of `txn_id` from `next` on until its final one.
async fn follow(
    driver: &Driver,
    txn_id: &str,
    mode: Mode,
    mut next: u64,
    tx: &mpsc::Sender<Result<pb::TxnEvent, Status>>,
) -> Result<(), Status> {
    let feed = driver.feed().clone();
    let mut wake = feed.subscribe();
    let mut stop = driver.stopping();
    let poll = if driver.is_shared() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    loop {
        // Where the feed is now: any change of ours after this is either in
        // the read below or announced by the feed.
        let mut seen = feed.end();
        let changes = {
            let (driver, id) = (driver.clone(), txn_id.to_string());
            tokio::task::spawn_blocking(move || driver.changes(&id, next))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        // What the read found may be written but not yet synced: shown only
        // once durable, so a crash can never renumber a change shown.
        if !changes.is_empty() {
            driver.barrier().await?;
        }
        for change in &changes {
            if tx
                .send(Ok(event_to_pb(txn_id, mode, change)))
                .await
                .is_err()
            {
                return Ok(()); // the watcher went away
            }
            next = change.seq.saturating_add(1);
            if change.is_final() {
                return Ok(());
            }
        }
        if changes.len() >= crate::store::history::PAGE {
            continue; // more history waits: no reason to sleep
        }
        if changes.is_empty() && ended_before(driver, txn_id, next, mode, tx).await? {
            return Ok(());
        }
        // Wait until the feed shows a change of ours, or the poll is due.
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = stop.changed() => return Err(stopping()),
                _ = tokio::time::sleep_until(deadline) => break,
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    match feed.mentions(seen, txn_id) {
                        None | Some((true, _)) => break,
                        Some((false, end)) => seen = end,
                    }
                }
            }
        }
    }
}

/// Whether `txn_id` is final with nothing from `next` on to send: the watch
/// is over. A transaction written before the log kept changes (format 2)
/// gets one event with its final state (seq 0).
async fn ended_before(
    driver: &Driver,
    txn_id: &str,
    next: u64,
    mode: Mode,
    tx: &mpsc::Sender<Result<pb::TxnEvent, Status>>,
) -> Result<bool, Status> {
    let txn = {
        let (driver, id) = (driver.clone(), txn_id.to_string());
        tokio::task::spawn_blocking(move || driver.get(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??
    };
    if !txn.state.is_final() {
        return Ok(false);
    }
    if txn.seq == 0 && next == 1 {
        let change = Change {
            seq: 0,
            at_ms: txn.finished_at_ms.unwrap_or(txn.updated_at_ms),
            state: txn.state,
            kind: ChangeKind::State { reason: txn.reason },
        };
        let _ = tx.send(Ok(event_to_pb(txn_id, mode, &change))).await;
        return Ok(true);
    }
    // Final, and its final change is before `next`: nothing more will come.
    Ok(txn.seq < next)
}

/// What a feed subscriber asked to see.
struct Filter {
    states: Vec<TxnState>,
    mode: Option<Mode>,
    stuck_only: bool,
    participant: String,
}

impl Filter {
    fn of(request: &pb::WatchTransactionsRequest) -> Result<Filter, Status> {
        Ok(Filter {
            states: request
                .states
                .iter()
                .map(|&s| state_from_pb(s))
                .collect::<Result<_, _>>()?,
            mode: match request.mode {
                0 => None,
                m => Some(mode_from_pb(m)?),
            },
            stuck_only: request.stuck_only,
            participant: request.participant.clone(),
        })
    }

    fn matches(&self, item: &Item) -> bool {
        (self.states.is_empty() || self.states.contains(&item.change.state))
            && self.mode.is_none_or(|m| item.about.mode == Some(m))
            && (!self.stuck_only
                || item.about.stuck
                || matches!(item.change.kind, ChangeKind::Stuck))
            && (self.participant.is_empty() || item.about.participants.contains(&self.participant))
    }
}

/// Starts a feed subscription.
pub fn watch_feed(
    driver: &Driver,
    request: pb::WatchTransactionsRequest,
) -> Result<FeedStream, Status> {
    let filter = Filter::of(&request)?;
    let feed = driver.feed().clone();
    let wake = feed.subscribe();
    let from = match request.from_position {
        0 => feed.end(),
        p => {
            if !request.feed_id.is_empty() && request.feed_id != feed.id {
                return Err(Status::out_of_range(format!(
                    "feed position {p} belongs to feed {}, not this coordinator's current feed {}; \
                     list transactions to catch up, then watch from 0",
                    request.feed_id, feed.id
                )));
            }
            if p > feed.end() {
                return Err(Status::out_of_range(format!(
                    "feed position {p} is beyond the newest ({}); watch from 0",
                    feed.end().saturating_sub(1)
                )));
            }
            if let Read::Lagged { oldest } = feed.read(p, 0) {
                return Err(Status::out_of_range(format!(
                    "feed position {p} is no longer held (the oldest is {oldest}); \
                     list transactions to catch up, then watch from 0"
                )));
            }
            p
        }
    };
    let permit = permit(driver)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let stop = driver.stopping();
    tokio::spawn(async move {
        let _permit = permit;
        feed_to(feed, wake, stop, from, filter, tx).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn feed_to(
    feed: std::sync::Arc<crate::store::feed::Feed>,
    mut wake: tokio::sync::watch::Receiver<u64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut pos: u64,
    filter: Filter,
    tx: mpsc::Sender<Result<pb::WatchTransactionsResponse, Status>>,
) {
    loop {
        match feed.read(pos, 256) {
            Read::Lagged { oldest } => {
                let lagged = pb::Lagged {
                    resume_from: pos,
                    oldest_held: oldest,
                    feed_id: feed.id.clone(),
                    message: format!(
                        "this watcher fell behind: changes from position {pos} were dropped before it read them \
                         (the oldest held is {oldest}); list transactions to catch up, then watch again"
                    ),
                };
                let _ = tx
                    .send(Ok(pb::WatchTransactionsResponse {
                        events: Vec::new(),
                        lagged: Some(lagged),
                    }))
                    .await;
                return;
            }
            Read::Items(items) if items.is_empty() => {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop.changed() => {
                        let _ = tx.send(Err(stopping())).await;
                        return;
                    }
                    changed = wake.changed() => if changed.is_err() { return },
                }
            }
            Read::Items(items) => {
                // Everything held past `pos` goes in one message: under load
                // that is many changes per frame, not one each.
                let mut events = Vec::with_capacity(items.len());
                for item in items {
                    pos = item.pos + 1;
                    if !filter.matches(&item) {
                        continue;
                    }
                    let mode = item.about.mode.unwrap_or(Mode::TwoPhase);
                    events.push(pb::FeedEvent {
                        position: item.pos,
                        event: Some(event_to_pb(&item.txn_id, mode, &item.change)),
                        mode: item.about.mode.map_or(0, |m| mode_to_pb(m) as i32),
                        feed_id: feed.id.clone(),
                    });
                }
                if events.is_empty() {
                    continue;
                }
                let out = pb::WatchTransactionsResponse {
                    events,
                    lagged: None,
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        }
    }
}
