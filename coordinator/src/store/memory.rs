//! An in-memory [`TxnLog`]: same key layout as the sled log, nothing on disk.
//! For tests and for running the coordinator without durability.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::engine::Txn;
use crate::store::{AuditEntry, StoreError, TxnLog, Write, keys};

#[derive(Default)]
pub struct MemoryLog {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated in a
        // way that matters more than losing the process, so keep going.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TxnLog for MemoryLog {
    fn write(&self, batch: &[Write], _sync: bool) -> Result<u64, StoreError> {
        let mut map = self.map();
        for write in batch {
            let record = match write {
                Write::Txn(record) => record,
                Write::Audit(entry) => {
                    map.insert(keys::audit_key(entry), keys::encode_audit(entry)?);
                    continue;
                }
            };
            map.insert(keys::txn_key(&record.txn_id), record.value.clone());
            match record.finished_at_ms {
                None => {
                    map.insert(keys::unfinished_key(&record.txn_id), Vec::new());
                }
                Some(at) => {
                    map.remove(&keys::unfinished_key(&record.txn_id));
                    map.insert(keys::finished_key(at, &record.txn_id), Vec::new());
                }
            }
        }
        Ok(0)
    }

    fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError> {
        match self.map().get(&keys::txn_key(txn_id)) {
            Some(value) => keys::decode_txn(value).map(Some),
            None => Ok(None),
        }
    }

    fn unfinished(&self) -> Result<Vec<Txn>, StoreError> {
        let map = self.map();
        let start = vec![keys::UNFINISHED];
        let end = vec![keys::UNFINISHED + 1];
        let mut out = Vec::new();
        for key in map.range(start..end).map(|(k, _)| k) {
            let id = keys::parse_unfinished_key(key)?;
            let value = map.get(&keys::txn_key(&id)).ok_or_else(|| {
                StoreError::Corrupt(format!("unfinished index names missing transaction {id}"))
            })?;
            out.push(keys::decode_txn(value)?);
        }
        Ok(out)
    }

    fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut map = self.map();
        let start = vec![keys::FINISHED];
        let doomed: Vec<Vec<u8>> = map
            .range(start..keys::finished_bound(before_ms))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            let (_, id) = keys::parse_finished_key(key)?;
            map.remove(key);
            map.remove(&keys::txn_key(&id));
        }
        Ok(doomed.len())
    }

    fn scan(
        &self,
        after: Option<&str>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Txn>, StoreError> {
        let map = self.map();
        let (start, end) = keys::txn_scan_range(after, newest_first);
        let range = map.range(start..end);
        let values: Vec<&Vec<u8>> = if newest_first {
            range.rev().take(limit).map(|(_, v)| v).collect()
        } else {
            range.take(limit).map(|(_, v)| v).collect()
        };
        values.into_iter().map(|v| keys::decode_txn(v)).collect()
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let map = self.map();
        map.range(vec![keys::AUDIT]..vec![keys::AUDIT + 1])
            .rev()
            .take(limit)
            .map(|(_, v)| keys::decode_audit(v))
            .collect()
    }
}
