//! W3C trace context: the `traceparent` a client sends is continued, and
//! every participant call carries a child `traceparent` of the same trace.
//! A transaction begun without one gets a new trace id, so its calls can
//! still be found together. Kept in memory: a transaction resumed after a
//! restart continues under a new trace id.

tokio::task_local! {
    /// The trace id of the request being served, set by the gRPC layer.
    static REQUEST_TRACE: Option<String>;
}

/// Runs `work` (a request to the driver) in trace `trace_id`.
pub async fn scope<F: std::future::Future>(trace_id: Option<String>, work: F) -> F::Output {
    REQUEST_TRACE.scope(trace_id, work).await
}

/// The trace id of the request being served, if it sent one.
pub fn current() -> Option<String> {
    REQUEST_TRACE.try_with(Clone::clone).ok().flatten()
}

/// The trace id of a valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then(|| trace.to_ascii_lowercase())
}

/// A fresh trace id.
pub fn new_trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// A `traceparent` for one call in trace `trace_id`, with a new span id.
pub fn child(trace_id: &str) -> String {
    format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly_and_continued() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
        let child = child("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            trace_id_of(&child).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(new_trace_id().len(), 32);
    }
}
