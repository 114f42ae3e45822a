//! Server-generated transaction ids, and the wall clock.
//!
//! A server id is `_` then 32 lowercase hex digits: milliseconds since the
//! epoch (12), then 80 bits from the operating system's secure random source
//! (20). The `_` prefix is the server's alone: a client may not choose an id
//! that begins with it ([`is_reserved`]), so no client can plant a
//! transaction under an id the server will hand out, and the random part
//! cannot be guessed from ids already seen. Ids sort by creation time to the
//! millisecond.

use std::time::{SystemTime, UNIX_EPOCH};

/// The first character of every server-generated id, and of no client id.
pub const SERVER_PREFIX: char = '_';

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh server id; an error only if the OS random source fails.
pub fn new_txn_id() -> Result<String, getrandom::Error> {
    let mut random = [0u8; 10];
    getrandom::fill(&mut random)?;
    Ok(format!(
        "{SERVER_PREFIX}{:012x}{}",
        now_ms() & 0xffff_ffff_ffff,
        hex(&random)
    ))
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` random bytes as hex (session ids, CSRF tokens, feed ids), from the
/// OS; should that fail, from fastrand (itself seeded from the OS).
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    hex(&bytes)
}

/// Whether a client-chosen id has the server's reserved form.
pub fn is_reserved(id: &str) -> bool {
    id.starts_with(SERVER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_reserved_random_and_sort_by_time() -> Result<(), getrandom::Error> {
        let mut ids = Vec::new();
        for _ in 0..1000 {
            ids.push(new_txn_id()?);
        }
        assert!(ids.iter().all(|id| id.len() == 33 && is_reserved(id)));
        let times: Vec<&str> = ids.iter().map(|id| &id[1..13]).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "time prefix grows");
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        // The part after the time is random, not a counter: its last 48
        // bits alone tell the ids apart (a collision: ~2e-9).
        let tails: std::collections::HashSet<&str> = ids.iter().map(|id| &id[21..]).collect();
        assert_eq!(tails.len(), ids.len());
        Ok(())
    }
}
