//! Retry delays: capped exponential backoff with jitter.

use std::time::Duration;

/// Delay before the next try after `failures` failed calls (1 for the first
/// failure): `base * 2^(failures-1)`, capped at `max`, then drawn uniformly
/// from its upper half so that many retries do not fire in step.
pub fn delay(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << exp.min(31)).min(max);
    let half = full / 2;
    let jitter_nanos = fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64);
    half + Duration::from_nanos(jitter_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_with_jitter_in_the_upper_half() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        for (failures, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (9, 25_600),
            (10, 30_000),
            (60, 30_000),
        ] {
            for _ in 0..50 {
                let d = delay(base, max, failures).as_millis() as u64;
                assert!(
                    d >= full_ms / 2 && d <= full_ms,
                    "failures {failures}: {d} ms"
                );
            }
        }
    }
}
