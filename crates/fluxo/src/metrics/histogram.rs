//! [`Histogram`]: a histogram whose `observe` is lock-free.

use std::fmt;
use std::iter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram handle: `observe` is one atomic add on the bucket and one CAS on the sum.
///
/// prometheus-client's own histogram takes a lock per observation; this one is written for
/// per-element use on the hot path. The exported `_count` is the sum of the bucket counts read at
/// scrape time, so `_count` always equals the `+Inf` bucket. Cheap to clone (clones share cells).
#[derive(Clone, Debug)]
pub struct Histogram {
    cells: Arc<Cells>,
}

#[derive(Debug)]
struct Cells {
    /// Finite upper bounds, ascending.
    bounds: &'static [f64],
    /// One count per bound plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of observed values, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given finite, ascending upper bounds (a `+Inf` bucket is added).
    pub fn new(bounds: &'static [f64]) -> Self {
        let counts = iter::repeat_with(|| AtomicU64::new(0))
            .take(bounds.len() + 1)
            .collect();
        Self {
            cells: Arc::new(Cells {
                bounds,
                counts,
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Records one value (NaN goes to the `+Inf` bucket).
    pub fn observe(&self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Records `n` observations of `value` at once (one add on the bucket, one CAS on the sum).
    pub fn observe_n(&self, value: f64, n: u64) {
        if n == 0 {
            return;
        }
        let cells = &*self.cells;
        let index = if value.is_nan() {
            cells.bounds.len()
        } else {
            cells.bounds.partition_point(|bound| *bound < value)
        };
        if let Some(count) = cells.counts.get(index) {
            count.fetch_add(n, Ordering::Relaxed);
        }
        let added = value * n as f64;
        // The closure always returns `Some`, so `fetch_update` cannot fail.
        let _ = cells
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + added).to_bits())
            });
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.cells
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.cells.sum.load(Ordering::Relaxed))
    }

    /// Per-bucket counts (not cumulative), the `+Inf` bucket last.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.cells
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let cells = &*self.cells;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain(iter::once(f64::INFINITY))
            .zip(cells.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| *c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
