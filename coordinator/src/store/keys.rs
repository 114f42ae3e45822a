//! The on-disk layout: every key prefix and the versioned value encoding.
//!
//! A prefix byte, once assigned, is never reused for anything else.
//!
//! | prefix | key                                   | value                   |
//! |--------|---------------------------------------|-------------------------|
//! | `0x00` | `0x00` `meta-name`                    | metadata (format, ...)  |
//! | `0x01` | `0x01` txn id                         | encoded [`Txn`]         |
//! | `0x02` | `0x02` txn id                         | empty: unfinished index |
//! | `0x03` | `0x03` finished-at (u64 BE) txn id    | empty: retention index  |
//! | `0x04` | `0x04` at (u64 BE) seq (u64 BE)       | encoded [`AuditEntry`]  |
//!
//! Values start with a version byte. Version 1 is `postcard` of [`Txn`] (or
//! of [`AuditEntry`] under `0x04`). A new
//! layout of `Txn` gets a new version byte, and the decoder keeps reading the
//! old ones.

use crate::engine::Txn;
use crate::store::{AuditEntry, StoreError};

pub const META: u8 = 0x00;
pub const TXN: u8 = 0x01;
pub const UNFINISHED: u8 = 0x02;
pub const FINISHED: u8 = 0x03;
pub const AUDIT: u8 = 0x04;

const VALUE_V1: u8 = 1;

pub fn txn_key(txn_id: &str) -> Vec<u8> {
    prefixed(TXN, txn_id.as_bytes())
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
    let corrupt = || StoreError::Corrupt(format!("bad retention index key {key:02x?}"));
    if key.len() < 9 || key[0] != FINISHED {
        return Err(corrupt());
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&key[1..9]);
    let id = std::str::from_utf8(&key[9..]).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(at), id.to_string()))
}

/// The txn id of an unfinished-index key.
pub fn parse_unfinished_key(key: &[u8]) -> Result<String, StoreError> {
    match key.split_first() {
        Some((&UNFINISHED, id)) => std::str::from_utf8(id)
            .map(str::to_string)
            .map_err(|_| StoreError::Corrupt(format!("bad unfinished index key {key:02x?}"))),
        _ => Err(StoreError::Corrupt(format!(
            "bad unfinished index key {key:02x?}"
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

/// The txn id of a transaction key.
pub fn parse_txn_key(key: &[u8]) -> Result<String, StoreError> {
    match key.split_first() {
        Some((&TXN, id)) => std::str::from_utf8(id)
            .map(str::to_string)
            .map_err(|_| StoreError::Corrupt(format!("bad transaction key {key:02x?}"))),
        _ => Err(StoreError::Corrupt(format!(
            "bad transaction key {key:02x?}"
        ))),
    }
}

/// Key range of transactions for a scan after `after`: (start, end), end exclusive.
pub fn txn_scan_range(after: Option<&str>, newest_first: bool) -> (Vec<u8>, Vec<u8>) {
    match (after, newest_first) {
        (None, _) => (vec![TXN], vec![TXN + 1]),
        (Some(id), false) => {
            let mut start = txn_key(id);
            start.push(0); // just past `id`
            (start, vec![TXN + 1])
        }
        (Some(id), true) => (vec![TXN], txn_key(id)),
    }
}

pub fn meta_key(name: &str) -> Vec<u8> {
    prefixed(META, name.as_bytes())
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

pub fn encode_txn(txn: &Txn) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(txn, vec![VALUE_V1])
        .map_err(|e| StoreError::Corrupt(format!("cannot encode transaction {}: {e}", txn.id)))
}

pub fn encode_audit(entry: &AuditEntry) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(entry, vec![VALUE_V1])
        .map_err(|e| StoreError::Corrupt(format!("cannot encode an audit entry: {e}")))
}

pub fn decode_audit(value: &[u8]) -> Result<AuditEntry, StoreError> {
    match value.split_first() {
        Some((&VALUE_V1, body)) => postcard::from_bytes(body)
            .map_err(|e| StoreError::Corrupt(format!("undecodable audit entry: {e}"))),
        _ => Err(StoreError::Corrupt(
            "audit entry has an unknown format".to_string(),
        )),
    }
}

pub fn decode_txn(value: &[u8]) -> Result<Txn, StoreError> {
    match value.split_first() {
        Some((&VALUE_V1, body)) => postcard::from_bytes(body)
            .map_err(|e| StoreError::Corrupt(format!("undecodable transaction record: {e}"))),
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "transaction record has unknown format version {version}"
        ))),
        None => Err(StoreError::Corrupt("empty transaction record".to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::engine::{Branch, Mode};

    #[test]
    fn txn_round_trips_through_the_v1_encoding() {
        let mut txn = Txn::new("t1".into(), Mode::Tcc, 5_000, 42);
        txn.branches.push(Branch::new(
            "1".into(),
            "http://127.0.0.1:9".into(),
            "stock.reserve".into(),
            vec![0, 1, 2, 255],
            1_000,
        ));
        let bytes = encode_txn(&txn).expect("encodes");
        assert_eq!(bytes[0], 1);
        assert_eq!(decode_txn(&bytes), Ok(txn));
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt_not_panics() {
        assert!(matches!(decode_txn(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            decode_txn(&[9, 1, 2]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_txn(&[1, 0xff]),
            Err(StoreError::Corrupt(_))
        ));
    }

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
}
