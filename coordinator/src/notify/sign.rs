//! The webhook signature: HMAC-SHA256 over `"<timestamp>.<body>"`, sent as
//! `X-Arbiter-Signature: v1=<hex>` with `X-Arbiter-Timestamp: <unix seconds>`.
//! A receiver recomputes it with the shared secret, compares in constant
//! time, and rejects a timestamp too far from its clock (a replay).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The `v1=<hex>` signature of `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1={}",
        crate::driver::ids::hex(&mac.finalize().into_bytes())
    )
}

/// Whether `header` is the signature of `body` at `timestamp` (constant time).
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], header: &str) -> bool {
    crate::security::same(&signature(secret, timestamp, body), header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?",
        // here split as "<timestamp>.<body>" would not fit, so check the MAC
        // through a timestamp-free construction of the same bytes.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap_or_else(|e| panic!("{e}"));
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_changed_body_timestamp_or_secret_does_not_verify() {
        let sig = signature(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify(b"other", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", "v1=00"));
    }
}
