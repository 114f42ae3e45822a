//! Reading one transaction back from a [`Kv`]: its record and branch specs
//! folded into the engine's [`Txn`], and the rule that a transaction whose
//! record is gone while traces of it remain is damage, not absence.

use std::ops::ControlFlow;

use crate::engine::Txn;
use crate::store::kv::{Kv, prefix_end};
use crate::store::record::{self, BranchSpecs, TxnRecord};
use crate::store::{StoreError, keys};

/// Reads one transaction and folds its records; `None` if the log holds
/// nothing of it. A transaction whose record is gone while other traces of
/// it remain (its branch specs, its unfinished-index entry, a format-1
/// record) is damage, not absence: a committed transaction must never look
/// unknown, which participants would read as "aborted".
///
/// Everything of the transaction is read at once ([`Kv::read_together`]):
/// on a store other nodes write, a record and its specs read apart could
/// belong to different moments, and look damaged.
pub fn load<K: Kv + ?Sized>(kv: &K, txn_id: &str) -> Result<Option<Txn>, StoreError> {
    let header_key = keys::header_key(txn_id);
    let prefix = keys::spec_prefix(txn_id);
    let traces = [keys::unfinished_key(txn_id), keys::v1_txn_key(txn_id)];
    let mut wanted = vec![header_key.clone()];
    wanted.extend(traces.iter().cloned());
    let found = kv.read_together(&wanted, &prefix, &prefix_end(&prefix))?;
    let mut header = None;
    let mut chunks = Vec::new();
    let mut trace = None;
    for (k, v) in &found {
        if *k == header_key {
            header = Some(v);
        } else if k.starts_with(&prefix) {
            let first = keys::parse_branch_index(prefix.len(), k)?;
            chunks.push((first, BranchSpecs::decode(k, v)?));
            trace.get_or_insert_with(|| keys::describe(k));
        } else {
            trace.get_or_insert_with(|| keys::describe(k));
        }
    }
    let Some(value) = header else {
        // Its changes are a trace too (read apart, so only where nobody else
        // writes: on a shared store a transaction being created could show
        // its changes to a second read and not to the first).
        if trace.is_none() && !kv.shared() {
            let changes = keys::changes_prefix(txn_id);
            kv.visit(&changes, &prefix_end(&changes), false, &mut |k, _| {
                trace = Some(keys::describe(k));
                ControlFlow::Break(())
            })?;
        }
        return match trace {
            None => Ok(None),
            Some(trace) => Err(StoreError::Corrupt(format!(
                "transaction {txn_id}: its record is missing, but {trace} remains"
            ))),
        };
    };
    let record = TxnRecord::decode(&header_key, value)?;
    chunks.sort_by_key(|(first, _)| *first);
    record::fold(txn_id, record, chunks).map(Some)
}
