//! Server-generated transaction ids, and the wall clock.
//!
//! An id is 24 lowercase hex digits: milliseconds since the epoch (12), a
//! per-process sequence number (8), and a per-process random tag (4). Ids sort
//! by creation time, and never repeat within a process; the random tag keeps
//! two processes apart.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static SEQ: AtomicU32 = AtomicU32::new(0);
static TAG: OnceLock<u16> = OnceLock::new();

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn new_txn_id() -> String {
    let tag = *TAG.get_or_init(|| fastrand::u16(..));
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:012x}{:08x}{:04x}", now_ms() & 0xffff_ffff_ffff, seq, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_fixed_width_and_time_sortable() {
        let ids: Vec<String> = (0..1000).map(|_| new_txn_id()).collect();
        assert!(ids.iter().all(|id| id.len() == 24));
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "later ids sort after earlier ones");
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }
}
