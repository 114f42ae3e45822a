//! The live feed of durable changes: the log writer publishes the changes of
//! each batch once that batch is durable, and watchers read them from one
//! bounded ring. Publishing never waits for a watcher: a watcher that falls
//! more than the ring's length behind finds its position overwritten and is
//! told it lagged, with the position to resume from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::engine::{Change, Mode};

/// Items the ring holds by default.
pub const RING: usize = 16_384;

/// What a filter may ask about the transaction a change belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct About {
    pub mode: Option<Mode>,
    /// Its participants, each once.
    pub participants: Vec<String>,
    /// It is flagged stuck.
    pub stuck: bool,
}

/// One change of one transaction, at a position of the feed.
#[derive(Clone, Debug)]
pub struct Item {
    /// Position in this node's feed since it started (1, 2, ...).
    pub pos: u64,
    pub txn_id: Arc<str>,
    pub about: Arc<About>,
    pub change: Change,
}

/// Changes written together, with what they concern.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub txn_id: String,
    pub about: Arc<About>,
    pub changes: Vec<Change>,
}

pub struct Feed {
    ring: Mutex<VecDeque<Arc<Item>>>,
    capacity: usize,
    /// The position after the newest item; watchers wait on it.
    end: watch::Sender<u64>,
    /// This feed's identity: positions mean something only within one
    /// coordinator process.
    pub id: String,
    /// Woken by the log writer once a transaction's end or stuck flag is
    /// durable, watched or not (webhook delivery waits on it without
    /// counting as a watcher).
    pub ended: tokio::sync::Notify,
}

/// What a watcher finds at its position.
pub enum Read {
    /// Items from its position on (possibly none yet).
    Items(Items),
    /// Its position is gone: the oldest still held is `oldest`.
    Lagged { oldest: u64 },
}

/// Items as readers share them.
pub type Items = Vec<Arc<Item>>;

impl Feed {
    pub fn new(capacity: usize) -> Arc<Feed> {
        Arc::new(Feed {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            end: watch::Sender::new(1),
            id: crate::driver::ids::random_hex::<8>(),
            ended: tokio::sync::Notify::new(),
        })
    }

    /// Whether anyone watches now (the writer then syncs lazy writes soon,
    /// so their changes are not held back while the log is idle).
    pub fn watched(&self) -> bool {
        self.end.receiver_count() > 0
    }

    /// The position the next item will get.
    pub fn end(&self) -> u64 {
        *self.end.borrow()
    }

    /// A receiver woken at each publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Adds durable changes, in order.
    pub fn publish(&self, batches: Vec<Published>) {
        if batches.iter().all(|b| b.changes.is_empty()) {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut pos = *self.end.borrow();
        for batch in batches {
            let txn_id: Arc<str> = Arc::from(batch.txn_id.as_str());
            for change in batch.changes {
                if ring.len() >= self.capacity {
                    ring.pop_front();
                }
                ring.push_back(Arc::new(Item {
                    pos,
                    txn_id: txn_id.clone(),
                    about: batch.about.clone(),
                    change,
                }));
                pos += 1;
            }
        }
        drop(ring);
        self.end.send_replace(pos);
    }

    /// Whether any item from position `from` on is a change of `txn_id`, and
    /// the position after the newest; `None` if `from` is no longer held.
    pub fn mentions(&self, from: u64, txn_id: &str) -> Option<(bool, u64)> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let end = *self.end.borrow();
        let oldest = ring.front().map_or(end, |i| i.pos);
        if from < oldest {
            return None;
        }
        let skip = (from - oldest) as usize;
        Some((ring.iter().skip(skip).any(|i| &*i.txn_id == txn_id), end))
    }

    /// Up to `limit` items from position `from` on.
    pub fn read(&self, from: u64, limit: usize) -> Read {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = ring.front().map_or(*self.end.borrow(), |i| i.pos);
        if from < oldest {
            return Read::Lagged { oldest };
        }
        let skip = (from - oldest) as usize;
        Read::Items(ring.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChangeKind, TxnState};

    fn batch(id: &str, n: u64) -> Published {
        Published {
            txn_id: id.to_string(),
            about: Arc::default(),
            changes: (1..=n)
                .map(|seq| Change {
                    seq,
                    at_ms: 0,
                    state: TxnState::Active,
                    kind: ChangeKind::RetryNow,
                })
                .collect(),
        }
    }

    #[test]
    fn a_reader_gets_every_item_once_in_order_until_it_falls_behind() {
        let feed = Feed::new(4);
        feed.publish(vec![batch("a", 2), batch("b", 1)]);
        let Read::Items(items) = feed.read(1, 10) else {
            panic!("not lagged yet")
        };
        let seen: Vec<(u64, &str, u64)> = items
            .iter()
            .map(|i| (i.pos, &*i.txn_id, i.change.seq))
            .collect();
        assert_eq!(seen, vec![(1, "a", 1), (2, "a", 2), (3, "b", 1)]);
        assert_eq!(feed.end(), 4);
        // Two more push position 1 out of the ring of 4.
        feed.publish(vec![batch("c", 2)]);
        assert!(matches!(feed.read(1, 10), Read::Lagged { oldest: 2 }));
        let Read::Items(items) = feed.read(4, 10) else {
            panic!("position 4 is held")
        };
        assert_eq!(items.iter().map(|i| i.pos).collect::<Vec<_>>(), vec![4, 5]);
        assert!(matches!(feed.read(6, 10), Read::Items(v) if v.is_empty()));
    }
}
