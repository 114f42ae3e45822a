//! Reads of what the log keeps beside each transaction's state: its
//! numbered changes (for watchers) and its pending webhook notifications.

use std::ops::ControlFlow;

use crate::engine::Change;
use crate::store::kv::{Kv, pairs_under, prefix_end};
use crate::store::record::{self, NoticeRecord};
use crate::store::{StoreError, keys};

/// Most changes one read returns.
pub const PAGE: usize = 1024;

/// The changes of `txn_id` numbered `from_seq` or later, in order, at most
/// about [`PAGE`] of them.
pub fn changes<K: Kv + ?Sized>(
    kv: &K,
    txn_id: &str,
    from_seq: u64,
) -> Result<Vec<Change>, StoreError> {
    keys::check_id(txn_id)?;
    let prefix = keys::changes_prefix(txn_id);
    // The batch holding `from_seq` starts at or before it: start at the
    // last batch key not after it.
    let mut start = prefix.clone();
    kv.visit(
        &prefix,
        &keys::changes_key(txn_id, from_seq.saturating_add(1)),
        true,
        &mut |k, _| {
            start = k.to_vec();
            ControlFlow::Break(())
        },
    )?;
    let mut out = Vec::new();
    let mut failed = None;
    kv.visit(&start, &prefix_end(&prefix), false, &mut |k, v| {
        match record::decode_changes(k, v) {
            Ok(batch) => out.extend(batch.into_iter().filter(|c| c.seq >= from_seq)),
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        // A page at a time: the caller asks again from where this ends.
        if out.len() >= PAGE {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    // Batches are consecutive: a gap is a lost record.
    for pair in out.windows(2) {
        if pair[1].seq != pair[0].seq.saturating_add(1) {
            return Err(StoreError::Corrupt(format!(
                "transaction {txn_id}: the changes between {} and {} are missing",
                pair[0].seq, pair[1].seq
            )));
        }
    }
    Ok(out)
}

/// The keys of every change batch and notification of `txn_id` (to delete
/// them with it).
pub fn keys_of<K: Kv + ?Sized>(kv: &K, txn_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    for prefix in [keys::changes_prefix(txn_id), keys::notice_prefix(txn_id)] {
        out.extend(pairs_under(kv, &prefix)?.into_iter().map(|(k, _)| k));
    }
    Ok(out)
}

/// A notification waiting to be delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub txn_id: String,
    pub kind: u8,
    pub notice: NoticeRecord,
}

/// A page of pending notifications.
#[derive(Debug, Default)]
pub struct NoticePage {
    /// In key order; damaged ones are errors, so one bad record does not
    /// stop delivery of the others.
    pub items: Vec<Result<Pending, StoreError>>,
    /// The key of the last one read (damaged or not): where the next page
    /// starts after. `None` when the page is empty.
    pub last_key: Option<Vec<u8>>,
    /// The page is full: more may follow.
    pub full: bool,
}

/// Up to `limit` pending notifications, in key order after the key `after`
/// (exclusive).
pub fn notices<K: Kv + ?Sized>(
    kv: &K,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<NoticePage, StoreError> {
    let start = match after {
        Some(key) => {
            let mut k = key.to_vec();
            k.push(0);
            k
        }
        None => vec![keys::NOTICE],
    };
    let mut page = NoticePage::default();
    kv.visit(&start, &[keys::NOTICE + 1], false, &mut |k, v| {
        page.items
            .push(keys::parse_notice_key(k).and_then(|(txn_id, kind)| {
                Ok(Pending {
                    txn_id,
                    kind,
                    notice: record::decode_notice(k, v)?,
                })
            }));
        page.last_key = Some(k.to_vec());
        if page.items.len() >= limit {
            page.full = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    Ok(page)
}
