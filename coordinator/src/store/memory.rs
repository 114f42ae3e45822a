//! An in-memory [`Kv`]: the same layout as the sled log, nothing on disk.
//! For tests and for running the coordinator without durability.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::store::StoreError;
use crate::store::kv::{Kv, KvLog, Visitor, walk};
use crate::store::record::Op;

/// The in-memory transaction log.
pub type MemoryLog = KvLog<MemoryKv>;

#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKv {
    fn map(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated in a
        // way that matters more than losing the process, so keep going.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KvLog<MemoryKv> {
    pub fn new() -> MemoryLog {
        KvLog::over(MemoryKv::default(), 0, None)
    }
}

impl Default for KvLog<MemoryKv> {
    fn default() -> Self {
        Self::new()
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn visit(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        let map = self.map();
        let range = map.range(start.to_vec()..end.to_vec()).map(Ok);
        walk(range, reverse, f)
    }

    fn apply<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), StoreError> {
        let mut map = self.map();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
