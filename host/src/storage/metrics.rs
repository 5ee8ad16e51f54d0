//! Storage's timings for `/metrics`, observed by the writer thread as commits happen
//! (the HTTP listener reads them, `http/metrics.rs`).

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Storage's timings, observed by the storage writer as commits happen.
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    /// Records per commit (appends only).
    pub commit_records: Histogram,
    /// How long each flush to disk took, in seconds.
    pub flush_seconds: Histogram,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        Self {
            // 1 to 32,768 records.
            commit_records: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            // 50 µs to about 1.6 s.
            flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}
