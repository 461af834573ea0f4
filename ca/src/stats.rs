//! Issuance counters and a latency histogram, kept by the CA core and exported by the web edge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Issuance statistics since start.
#[derive(Debug, Default)]
pub struct IssuanceStats {
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Requests refused (bad input or policy).
    pub refused: AtomicU64,
    /// Requests failed (store unavailable, internal).
    pub failed: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_micros: AtomicU64,
}

impl IssuanceStats {
    pub(crate) fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(crate::units::micros(took), Ordering::Relaxed);
    }

    /// Cumulative bucket counts (Prometheus `le` semantics), in [`LATENCY_BUCKETS`] order.
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// Sum of observed latencies, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}
