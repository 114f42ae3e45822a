//! How long transactions took from begin to their final state, counted in
//! fixed buckets (each √2 wider than the one before, from 100 µs to about
//! two minutes) so that anyone may snapshot the counts and read quantiles of
//! the interval between two snapshots: the console's latency chart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets; the last one takes everything longer.
pub const BUCKETS: usize = 42;

/// The upper bound of bucket `i`, in microseconds.
fn bound_us(i: usize) -> f64 {
    100.0 * std::f64::consts::SQRT_2.powi(i as i32)
}

/// Counts of finished transactions by how long they took.
#[derive(Debug)]
pub struct Latencies {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latencies {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros() as f64;
        let i = (0..BUCKETS - 1)
            .find(|&i| us <= bound_us(i))
            .unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0..=1) of what was recorded between snapshots
/// `before` and `after`, as its bucket's upper bound; `None` when nothing
/// finished in between.
pub fn quantile(before: &[u64; BUCKETS], after: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let counts: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(Duration::from_micros(bound_us(i) as u64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_interval_between_snapshots() {
        let l = Latencies::default();
        for _ in 0..100 {
            l.record(Duration::from_millis(50));
        }
        let before = l.snapshot();
        for _ in 0..90 {
            l.record(Duration::from_micros(900));
        }
        for _ in 0..10 {
            l.record(Duration::from_millis(300));
        }
        let after = l.snapshot();
        let p50 = quantile(&before, &after, 0.5).unwrap_or_default();
        let p99 = quantile(&before, &after, 0.99).unwrap_or_default();
        // Within one bucket (√2) above the true value, never below it.
        assert!(
            p50 >= Duration::from_micros(900) && p50 < Duration::from_micros(1300),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(300) && p99 < Duration::from_millis(430),
            "{p99:?}"
        );
        assert_eq!(quantile(&after, &after, 0.5), None, "nothing in between");
    }

    #[test]
    fn longer_than_every_bucket_lands_in_the_last() {
        let l = Latencies::default();
        l.record(Duration::from_secs(3600));
        let counts = l.snapshot();
        assert_eq!(counts[BUCKETS - 1], 1);
    }
}
