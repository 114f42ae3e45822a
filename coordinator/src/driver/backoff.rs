//! Retry delays: capped exponential backoff with full jitter.

use std::time::Duration;

/// Delay before the next try after `failures` failed calls (1 for the first
/// failure): drawn uniformly from `0..=min(max, base * multiplier^(failures-1))`
/// ("full jitter"), so that many retries of one outage do not fire in step.
pub fn delay(base: Duration, max: Duration, multiplier: f64, failures: u32) -> Duration {
    cap(base, max, multiplier, failures).mul_f64(fastrand::f64())
}

/// The upper bound of [`delay`] for `failures`.
pub fn cap(base: Duration, max: Duration, multiplier: f64, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(64) as i32;
    let factor = multiplier.max(1.0).powi(exp);
    let secs = (base.as_secs_f64() * factor).min(max.as_secs_f64());
    Duration::try_from_secs_f64(secs).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_multiplier_then_caps_with_full_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        for (failures, cap_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (9, 25_600),
            (10, 30_000),
            (60, 30_000),
        ] {
            assert_eq!(cap(base, max, 2.0, failures), Duration::from_millis(cap_ms));
            for _ in 0..50 {
                assert!(delay(base, max, 2.0, failures) <= Duration::from_millis(cap_ms));
            }
        }
        assert_eq!(cap(base, max, 3.0, 3), Duration::from_millis(900));
        assert_eq!(
            cap(base, max, 0.5, 5),
            base,
            "a multiplier below 1 does not shrink"
        );
        let spread: Vec<Duration> = (0..100).map(|_| delay(base, max, 2.0, 8)).collect();
        assert!(spread.iter().any(|d| *d < Duration::from_millis(6_400)));
        assert!(
            spread.iter().any(|d| *d > Duration::from_millis(6_400)),
            "jitter spreads retries"
        );
    }
}
