//! The on-disk layout: every key prefix, and the index entries that go with a
//! transaction's records. Every backend stores exactly these keys, and index
//! maintenance happens here only ([`index_ops`]).
//!
//! A prefix byte, once assigned, is never reused for anything else.
//!
//! | prefix | key                                   | value (see `record`)        | since    |
//! |--------|---------------------------------------|-----------------------------|----------|
//! | `0x00` | `0x00` meta-name                      | [`MetaNumber`]: `format`, `batch`; `AcceptedDamage`: `accepted-damage` | 1  |
//! | `0x01` | `0x01` txn id                         | format 1 only: a whole `Txn` (postcard); retired | 1 |
//! | `0x02` | `0x02` txn id                         | empty, sealed: unfinished index | 1    |
//! | `0x03` | `0x03` finished-at (u64 BE) txn id    | empty, sealed: retention index  | 1    |
//! | `0x04` | `0x04` at (u64 BE) seq (u64 BE)       | [`AuditRecord`]             | 1        |
//! | `0x05` | `0x05` txn id                         | [`TxnRecord`]: state and branch statuses | 2 |
//! | `0x06` | `0x06` txn id `0x00` first branch (u32 BE) | [`BranchSpecs`]: branches registered together | 2 |
//! | `0x07` | `0x07` txn id `0x00` first seq (u64 BE) | `ChangeBatch`: changes written together | 3 |
//! | `0x08` | `0x08` txn id `0x00` kind (u8)        | `NoticeRecord`: a webhook notification not yet delivered | 3 |
//!
//! Transaction ids never contain `0x00` (checked by [`check_id`]), so the
//! spec keys of one transaction are exactly the keys under `0x06 id 0x00`,
//! in registration order.
//!
//! [`MetaNumber`]: crate::store::record::MetaNumber
//! [`AuditRecord`]: crate::store::record::AuditRecord
//! [`TxnRecord`]: crate::store::record::TxnRecord
//! [`BranchSpecs`]: crate::store::record::BranchSpecs

use crate::store::record::{Op, seal_empty};
use crate::store::{AuditEntry, StoreError};

pub const META: u8 = 0x00;
/// Format 1's whole-transaction records; read only by the upgrade.
pub const TXN_V1: u8 = 0x01;
pub const UNFINISHED: u8 = 0x02;
pub const FINISHED: u8 = 0x03;
pub const AUDIT: u8 = 0x04;
pub const HEADER: u8 = 0x05;
pub const SPEC: u8 = 0x06;
pub const CHANGES: u8 = 0x07;
pub const NOTICE: u8 = 0x08;
/// The first prefix not assigned yet.
pub const UNASSIGNED: u8 = 0x09;

/// Meta key of the format number.
pub const META_FORMAT: &str = "format";
/// Meta key of the number of the last durable (synced) batch.
pub const META_BATCH: &str = "batch";
/// Meta key of the damage an operator accepted (`open::AcceptedDamage`).
pub const META_ACCEPTED: &str = "accepted-damage";

/// Ids with `0x00` would break the branch key layout.
pub fn check_id(txn_id: &str) -> Result<(), StoreError> {
    if txn_id.is_empty() || txn_id.as_bytes().contains(&0) {
        return Err(StoreError::Refused(format!(
            "transaction id {txn_id:?} cannot be stored"
        )));
    }
    Ok(())
}

pub fn header_key(txn_id: &str) -> Vec<u8> {
    prefixed(HEADER, txn_id.as_bytes())
}

pub fn v1_txn_key(txn_id: &str) -> Vec<u8> {
    prefixed(TXN_V1, txn_id.as_bytes())
}

/// Start of the spec keys of one transaction.
pub fn spec_prefix(txn_id: &str) -> Vec<u8> {
    let mut key = prefixed(SPEC, txn_id.as_bytes());
    key.push(0);
    key
}

/// The key of the specs registered together from branch `first`.
pub fn spec_key(txn_id: &str, first: usize) -> Vec<u8> {
    let mut key = spec_prefix(txn_id);
    key.extend_from_slice(&u32::try_from(first).unwrap_or(u32::MAX).to_be_bytes());
    key
}

/// The first branch of a spec key under `spec_prefix`.
pub fn parse_branch_index(prefix_len: usize, key: &[u8]) -> Result<usize, StoreError> {
    let rest = key.get(prefix_len..).unwrap_or_default();
    let bytes: [u8; 4] = rest
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a bad branch key {}", describe(key))))?;
    Ok(u32::from_be_bytes(bytes) as usize)
}

/// Start of the change keys of one transaction.
pub fn changes_prefix(txn_id: &str) -> Vec<u8> {
    let mut key = prefixed(CHANGES, txn_id.as_bytes());
    key.push(0);
    key
}

/// The key of the changes written together from change `first_seq`.
pub fn changes_key(txn_id: &str, first_seq: u64) -> Vec<u8> {
    let mut key = changes_prefix(txn_id);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// Splits a change key into (txn id, first seq).
pub fn parse_changes_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let bad = || StoreError::Corrupt(format!("a bad change key {}", describe(key)));
    let end = key.len().checked_sub(9).ok_or_else(bad)?;
    if key.first() != Some(&CHANGES) || key.get(end) != Some(&0) || end < 2 {
        return Err(bad());
    }
    let id = std::str::from_utf8(&key[1..end]).map_err(|_| bad())?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[end + 1..]);
    Ok((id.to_string(), u64::from_be_bytes(seq)))
}

/// Start of the notification keys of one transaction.
pub fn notice_prefix(txn_id: &str) -> Vec<u8> {
    let mut key = prefixed(NOTICE, txn_id.as_bytes());
    key.push(0);
    key
}

/// The key of one pending notification of a transaction.
pub fn notice_key(txn_id: &str, kind: u8) -> Vec<u8> {
    let mut key = notice_prefix(txn_id);
    key.push(kind);
    key
}

/// Splits a notification key into (txn id, kind).
pub fn parse_notice_key(key: &[u8]) -> Result<(String, u8), StoreError> {
    let bad = || StoreError::Corrupt(format!("a bad notification key {}", describe(key)));
    let end = key.len().checked_sub(2).ok_or_else(bad)?;
    if key.first() != Some(&NOTICE) || key.get(end) != Some(&0) || end < 2 {
        return Err(bad());
    }
    let id = std::str::from_utf8(&key[1..end]).map_err(|_| bad())?;
    Ok((id.to_string(), key[end + 1]))
}

pub fn unfinished_key(txn_id: &str) -> Vec<u8> {
    prefixed(UNFINISHED, txn_id.as_bytes())
}

pub fn finished_key(finished_at_ms: u64, txn_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + txn_id.len());
    key.push(FINISHED);
    key.extend_from_slice(&finished_at_ms.to_be_bytes());
    key.extend_from_slice(txn_id.as_bytes());
    key
}

/// Upper bound (exclusive) of the retention index for `before_ms`.
pub fn finished_bound(before_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(FINISHED);
    key.extend_from_slice(&before_ms.to_be_bytes());
    key
}

/// Splits a retention-index key into (finished-at, txn id).
pub fn parse_finished_key(key: &[u8]) -> Result<(u64, String), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("a bad retention index key {}", describe(key)));
    if key.len() < 10 || key[0] != FINISHED {
        return Err(corrupt());
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&key[1..9]);
    let id = std::str::from_utf8(&key[9..]).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(at), id.to_string()))
}

/// The txn id of a key `prefix id` (header, unfinished index, format-1 record).
pub fn parse_id_key(prefix: u8, key: &[u8]) -> Result<String, StoreError> {
    match key.split_first() {
        Some((&p, id)) if p == prefix && !id.is_empty() && !id.contains(&0) => {
            std::str::from_utf8(id)
                .map(str::to_string)
                .map_err(|_| StoreError::Corrupt(format!("a bad key {}", describe(key))))
        }
        _ => Err(StoreError::Corrupt(format!("a bad key {}", describe(key)))),
    }
}

/// The txn id of a spec key.
pub fn parse_branch_owner(key: &[u8]) -> Result<String, StoreError> {
    let end = key.len().saturating_sub(5);
    match key.get(end) {
        Some(0) if end > 1 => std::str::from_utf8(&key[1..end])
            .map(str::to_string)
            .map_err(|_| StoreError::Corrupt(format!("a bad branch key {}", describe(key)))),
        _ => Err(StoreError::Corrupt(format!(
            "a bad branch key {}",
            describe(key)
        ))),
    }
}

pub fn audit_key(entry: &AuditEntry) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(AUDIT);
    key.extend_from_slice(&entry.at_ms.to_be_bytes());
    key.extend_from_slice(&entry.seq.to_be_bytes());
    key
}

/// Key range of transaction headers for a scan after `after`: (start, end),
/// end exclusive.
pub fn header_scan_range(after: Option<&str>, newest_first: bool) -> (Vec<u8>, Vec<u8>) {
    match (after, newest_first) {
        (None, _) => (vec![HEADER], vec![HEADER + 1]),
        (Some(id), false) => {
            let mut start = header_key(id);
            start.push(0); // just past `id`
            (start, vec![HEADER + 1])
        }
        (Some(id), true) => (vec![HEADER], header_key(id)),
    }
}

pub fn meta_key(name: &str) -> Vec<u8> {
    prefixed(META, name.as_bytes())
}

/// The index entries to write with a transaction's records: it joins the
/// unfinished index when first written, and moves to the retention index
/// when it finishes.
pub fn index_ops(txn_id: &str, finished_at_ms: Option<u64>, first: bool) -> Vec<Op> {
    match finished_at_ms {
        Some(at) => {
            let finished = finished_key(at, txn_id);
            vec![
                Op::Delete(unfinished_key(txn_id)),
                Op::Put(finished.clone(), seal_empty(&finished)),
            ]
        }
        None if first => {
            let key = unfinished_key(txn_id);
            vec![Op::Put(key.clone(), seal_empty(&key))]
        }
        None => Vec::new(),
    }
}

/// A key as an operator can read it in a message: the prefix's name and
/// the printable rest.
pub fn describe(key: &[u8]) -> String {
    let Some((&prefix, rest)) = key.split_first() else {
        return "(empty)".to_string();
    };
    let name = match prefix {
        META => "meta",
        TXN_V1 => "txn-v1",
        UNFINISHED => "unfinished",
        FINISHED => "finished",
        AUDIT => "audit",
        HEADER => "txn",
        SPEC => "branch-specs",
        CHANGES => "changes",
        NOTICE => "notice",
        _ => "unknown",
    };
    let text: String = rest
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect();
    format!("{name}/{text}")
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keys_sort_by_time_and_parse_back() {
        let a = finished_key(5, "zzz");
        let b = finished_key(6, "aaa");
        assert!(a < b);
        assert!(b < finished_bound(7));
        assert!(a < finished_bound(6) && b >= finished_bound(6));
        assert_eq!(parse_finished_key(&b), Ok((6, "aaa".to_string())));
        assert!(parse_finished_key(&[3, 1]).is_err());
    }

    #[test]
    fn spec_keys_sort_in_registration_order_and_name_their_owner() {
        let keys: Vec<Vec<u8>> = (0..300).map(|i| spec_key("t-1", i)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let prefix = spec_prefix("t-1");
        assert!(keys.iter().all(|k| k.starts_with(&prefix)));
        // "t-1" and "t-10" never share branch keys.
        assert!(!spec_key("t-10", 0).starts_with(&prefix));
        assert_eq!(parse_branch_index(prefix.len(), &keys[257]), Ok(257));
        assert_eq!(parse_branch_owner(&keys[3]), Ok("t-1".to_string()));
        assert!(parse_branch_owner(&[SPEC, 1, 2]).is_err());
    }

    #[test]
    fn change_keys_sort_by_seq_and_parse_back() {
        let keys: Vec<Vec<u8>> = [1u64, 2, 255, 256, 70_000]
            .iter()
            .map(|&s| changes_key("t-1", s))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(!changes_key("t-10", 1).starts_with(&changes_prefix("t-1")));
        assert_eq!(parse_changes_key(&keys[3]), Ok(("t-1".to_string(), 256)));
        assert!(parse_changes_key(&[CHANGES, 1, 0]).is_err());
        assert_eq!(
            parse_notice_key(&notice_key("t-1", 2)),
            Ok(("t-1".to_string(), 2))
        );
        assert!(parse_notice_key(&[NOTICE, 0, 1]).is_err());
    }

    #[test]
    fn ids_with_nul_are_refused() {
        assert!(check_id("a\0b").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("ok-1").is_ok());
    }

    #[test]
    fn keys_read_well_in_messages() {
        assert_eq!(describe(&header_key("t-1")), "txn/t-1");
        assert_eq!(
            describe(&spec_key("t", 1)),
            "branch-specs/t\\x00\\x00\\x00\\x00\\x01"
        );
    }
}
