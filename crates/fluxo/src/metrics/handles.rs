//! The engine's per-step handles, resolved once while the graph is built.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::histogram::Histogram;
use super::{names, Counter, Gauge, Metrics};

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Handles on the series of one step (label `step`).
#[derive(Clone, Debug)]
pub struct StepMetrics {
    /// Elements in.
    pub received: Counter,
    /// Elements out (all outputs).
    pub sent: Counter,
    /// Elements routed to a dead-letter output or failed.
    pub errors: Counter,
    /// Elements dropped on purpose (filter, late data beyond allowed lateness, unconsumed output).
    pub discarded: Counter,
    /// Late elements (subset of discarded or routed to late output).
    pub late: Counter,
    batch_duration: Histogram,
    batch_elements: Histogram,
    watermark: Arc<AtomicI64>,
}

impl StepMetrics {
    pub(super) fn new(m: &Metrics, step: &str) -> Self {
        use names::*;
        let l = &[step];
        Self {
            received: m.counter(&STEP_RECEIVED, l),
            sent: m.counter(&STEP_SENT, l),
            errors: m.counter(&STEP_ERRORS, l),
            discarded: m.counter(&STEP_DISCARDED, l),
            late: m.counter(&STEP_LATE, l),
            batch_duration: m.histogram(&STEP_BATCH_DURATION, l),
            batch_elements: m.histogram(&STEP_BATCH_ELEMENTS, l),
            watermark: m.watermark_cell(&STEP_WATERMARK, &STEP_WATERMARK_LAG, step),
        }
    }

    /// Record one processed batch: its size (histogram of elements per batch) and how long it
    /// took (histogram of per-batch processing time, seconds). Does not touch the counters.
    pub fn observe_batch(&self, elements: u64, elapsed: Duration) {
        self.batch_duration.observe_duration(elapsed);
        self.batch_elements.observe(elements as f64);
    }

    /// Output watermark of the step in microseconds since the Unix epoch
    /// ([`WATERMARK_NONE`](super::WATERMARK_NONE) = none yet,
    /// [`WATERMARK_END`](super::WATERMARK_END) = end of input). One atomic store.
    pub fn set_watermark(&self, micros: i64) {
        self.watermark.store(micros, Ordering::Relaxed);
    }

    /// The last watermark set, in microseconds since the Unix epoch.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }
}

/// Handles on the series of one source (label `step`).
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    /// Elements emitted into the pipeline.
    pub emitted: Counter,
    /// Messages acknowledged.
    pub acked: Counter,
    /// Messages negatively acknowledged (redelivery).
    pub nacked: Counter,
    /// Messages refused before entering the pipeline.
    pub rejected: Counter,
    idle: Gauge,
    connected: Gauge,
    watermark: Arc<AtomicI64>,
}

impl SourceMetrics {
    pub(super) fn new(m: &Metrics, step: &str) -> Self {
        use names::*;
        let l = &[step];
        Self {
            emitted: m.counter(&SOURCE_EMITTED, l),
            acked: m.counter(&SOURCE_ACKED, l),
            nacked: m.counter(&SOURCE_NACKED, l),
            rejected: m.counter(&SOURCE_REJECTED, l),
            idle: m.gauge(&SOURCE_IDLE, l),
            connected: {
                let connected = m.gauge(&SOURCE_CONNECTED, l);
                // A source that never reports is taken as connected.
                connected.set(1);
                connected
            },
            watermark: m.watermark_cell(&SOURCE_WATERMARK, &SOURCE_WATERMARK_LAG, step),
        }
    }

    /// Watermark of the source in microseconds since the Unix epoch
    /// ([`WATERMARK_NONE`](super::WATERMARK_NONE) = none yet,
    /// [`WATERMARK_END`](super::WATERMARK_END) = end of input). One atomic store.
    pub fn set_watermark(&self, micros: i64) {
        self.watermark.store(micros, Ordering::Relaxed);
    }

    /// The last watermark set, in microseconds since the Unix epoch.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }

    /// Marks the source idle (its watermark is ignored downstream) or active.
    pub fn set_idle(&self, idle: bool) {
        self.idle.set(i64::from(idle));
    }

    /// Reports whether the source reaches what it reads: `false` after a failed request (the
    /// worker's `/readyz` then fails, naming the source), `true` after a successful one.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Whether the source last reported itself connected.
    pub fn is_connected(&self) -> bool {
        self.connected.get() != 0
    }
}

/// Handles on the series of one sink (label `step`).
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    /// Requests retried after a transient error.
    pub retries: Counter,
    /// Elements given up on.
    pub failed: Counter,
    /// Elements durably written.
    pub written: Counter,
    batches: Counter,
    batch_elements: Histogram,
    batch_bytes: Histogram,
    request_ok: Histogram,
    request_error: Histogram,
    in_flight: Gauge,
}

impl SinkMetrics {
    /// Both request outcomes (`ok`, `error`) are created up front, so their series exist from the
    /// start.
    pub(super) fn new(m: &Metrics, step: &str) -> Self {
        use names::*;
        let l = &[step];
        Self {
            retries: m.counter(&SINK_RETRIES, l),
            failed: m.counter(&SINK_FAILED, l),
            written: m.counter(&SINK_WRITTEN, l),
            batches: m.counter(&SINK_BATCHES, l),
            batch_elements: m.histogram(&SINK_BATCH_ELEMENTS, l),
            batch_bytes: m.histogram(&SINK_BATCH_BYTES, l),
            request_ok: m.histogram(&SINK_REQUEST_DURATION, &[step, "ok"]),
            request_error: m.histogram(&SINK_REQUEST_DURATION, &[step, "error"]),
            in_flight: m.gauge(&SINK_IN_FLIGHT, l),
        }
    }

    /// Records one flushed batch: histograms of its size in elements and bytes, and the batches
    /// counter.
    pub fn observe_batch(&self, elements: u64, bytes: u64) {
        self.batches.inc();
        self.batch_elements.observe(elements as f64);
        self.batch_bytes.observe(bytes as f64);
    }

    /// Records the latency of one request (one attempt), labelled `outcome="ok"` or
    /// `outcome="error"`.
    pub fn observe_request(&self, elapsed: Duration, ok: bool) {
        let histogram = if ok {
            &self.request_ok
        } else {
            &self.request_error
        };
        histogram.observe_duration(elapsed);
    }

    /// Gauge of requests in flight (`inc()` when a request starts, `dec()` when it ends).
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Number of batches flushed so far.
    pub fn batches(&self) -> u64 {
        self.batches.get()
    }
}

/// Handles on the series of one buffer between two steps (labels `from`, `to`).
#[derive(Clone, Debug)]
pub struct BufferMetrics {
    totals: Arc<BufferTotals>,
    elements: Gauge,
    bytes: Gauge,
    capacity_elements: Gauge,
    capacity_bytes: Gauge,
    peak_elements: Gauge,
    peak_bytes: Gauge,
}

/// What every buffer of one registry holds together, and the peak of that sum: the elements a worker
/// keeps in flight between its steps (the per-buffer peaks may fall at different times).
#[derive(Debug, Default)]
pub(super) struct BufferTotals {
    elements: AtomicI64,
    bytes: AtomicI64,
    peak_elements: AtomicI64,
    peak_bytes: AtomicI64,
}

impl BufferTotals {
    fn add(&self, elements: i64, bytes: i64) {
        let before = self.elements.fetch_add(elements, Ordering::Relaxed);
        if elements > 0 {
            self.peak_elements
                .fetch_max(before.saturating_add(elements), Ordering::Relaxed);
        }
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if bytes > 0 {
            self.peak_bytes
                .fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
        }
    }

    /// `(elements, bytes)`: the highest sums seen.
    pub(super) fn peaks(&self) -> (u64, u64) {
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        (get(&self.peak_elements), get(&self.peak_bytes))
    }
}

impl BufferMetrics {
    pub(super) fn new(m: &Metrics, from: &str, to: &str) -> Self {
        use names::*;
        let l = &[from, to];
        Self {
            totals: m.buffer_totals(),
            elements: m.gauge(&BUFFER_ELEMENTS, l),
            bytes: m.gauge(&BUFFER_BYTES, l),
            capacity_elements: m.gauge(&BUFFER_CAPACITY_ELEMENTS, l),
            capacity_bytes: m.gauge(&BUFFER_CAPACITY_BYTES, l),
            peak_elements: m.gauge(&BUFFER_PEAK_ELEMENTS, l),
            peak_bytes: m.gauge(&BUFFER_PEAK_BYTES, l),
        }
    }

    /// Sets the capacity of the buffer (values above `i64::MAX` are exported as `i64::MAX`).
    pub fn set_capacity(&self, elements: u64, bytes: u64) {
        self.capacity_elements.set(saturating_i64(elements));
        self.capacity_bytes.set(saturating_i64(bytes));
    }

    /// Depth change (+ on send, − on receive); updates the peaks on growth.
    pub fn add(&self, elements: i64, bytes: i64) {
        self.totals.add(elements, bytes);
        let before = self.elements.inc_by(elements);
        if elements > 0 {
            self.peak_elements
                .inner()
                .fetch_max(before.saturating_add(elements), Ordering::Relaxed);
        }
        let before = self.bytes.inc_by(bytes);
        if bytes > 0 {
            self.peak_bytes
                .inner()
                .fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
        }
    }

    /// Current depth in elements.
    pub fn elements(&self) -> i64 {
        self.elements.get()
    }

    /// Current depth in bytes.
    pub fn bytes(&self) -> i64 {
        self.bytes.get()
    }

    /// Highest depth seen, in elements (also exported as a gauge).
    pub fn peak_elements(&self) -> u64 {
        u64::try_from(self.peak_elements.get()).unwrap_or(0)
    }

    /// Highest depth seen, in bytes (also exported as a gauge).
    pub fn peak_bytes(&self) -> u64 {
        u64::try_from(self.peak_bytes.get()).unwrap_or(0)
    }
}
