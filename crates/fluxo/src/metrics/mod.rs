//! Prometheus metrics of one pipeline run.
//!
//! [`Metrics`] registers every metric family once, when the run starts. The engine then resolves
//! one handle per step ([`StepMetrics`], [`SourceMetrics`], [`SinkMetrics`], [`BufferMetrics`])
//! while it builds the graph, so the hot path only touches atomics: no label hashing, no map
//! look-up and no lock per element or per batch. Histograms are lock-free too (one atomic
//! counter per bucket), and setting a watermark is a single atomic store; the watermark lag is
//! computed when `/metrics` is scraped.
//!
//! Every metric name and help text is defined in [`names`]; the bucket bounds of every histogram
//! in [`buckets`]. `docs/metrics.md` lists the exposed series.

use std::collections::BTreeMap;
use std::fmt;
use std::iter;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A monotonic `u64` counter (prometheus-client's [`Counter`](prometheus_client::metrics::counter::Counter)).
///
/// The engine calls `inc()` / `inc_by(n)`; both are one relaxed atomic add.
pub type Counter = prometheus_client::metrics::counter::Counter<u64>;

/// An `i64` gauge (prometheus-client's [`Gauge`](prometheus_client::metrics::gauge::Gauge)).
pub type Gauge = prometheus_client::metrics::gauge::Gauge<i64>;

/// Watermark value meaning "no watermark yet" (nothing is exported for it).
pub const WATERMARK_NONE: i64 = i64::MIN;

/// Watermark value meaning "end of input" (nothing is exported for it).
pub const WATERMARK_END: i64 = i64::MAX;

/// Content type of [`Metrics::encode`] (OpenMetrics text 1.0.0).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of [`Metrics::encode_prometheus_text`] (Prometheus text format 0.0.4).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Names and help texts of every metric family, in one place.
///
/// `name` is the family name as registered. Counters are exposed with a `_total` suffix added by
/// the encoder (`fluxo_step_received_elements` is scraped as `fluxo_step_received_elements_total`);
/// histograms expose `_bucket`, `_sum` and `_count` series; gauges are exposed as named.
/// Every series also carries the label `pipeline`.
pub mod names {
    /// Name, type and help text of one metric family.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Def {
        /// Family name as registered (without the `_total` suffix of counters).
        pub name: &'static str,
        /// Metric type as exposed on the `# TYPE` line.
        pub kind: Kind,
        /// Help text (the encoder appends a final period).
        pub help: &'static str,
    }

    /// Metric type of a family.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// Monotonic counter, exposed with a `_total` suffix.
        Counter,
        /// Gauge.
        Gauge,
        /// Histogram, exposed as `_bucket`, `_sum` and `_count` series.
        Histogram,
    }

    impl Def {
        /// The name of the series as scraped (`_total` appended for counters; for histograms the
        /// base name of the `_bucket`/`_sum`/`_count` series).
        pub fn exposed_name(&self) -> String {
            match self.kind {
                Kind::Counter => format!("{}_total", self.name),
                Kind::Gauge | Kind::Histogram => self.name.to_owned(),
            }
        }
    }

    const fn def(name: &'static str, kind: Kind, help: &'static str) -> Def {
        Def { name, kind, help }
    }

    /// Elements received by a step (label `step`).
    pub const STEP_RECEIVED: Def = def(
        "fluxo_step_received_elements",
        Kind::Counter,
        "Elements received by the step",
    );
    /// Elements emitted by a step on all its outputs (label `step`).
    pub const STEP_SENT: Def = def(
        "fluxo_step_sent_elements",
        Kind::Counter,
        "Elements emitted by the step on all its outputs",
    );
    /// Elements routed to a dead-letter output or failed (label `step`).
    pub const STEP_ERRORS: Def = def(
        "fluxo_step_errors",
        Kind::Counter,
        "Elements the step routed to its dead-letter output or failed on",
    );
    /// Elements dropped on purpose (label `step`).
    pub const STEP_DISCARDED: Def = def(
        "fluxo_step_discarded_elements",
        Kind::Counter,
        "Elements the step dropped on purpose (filtered, too late, or output without consumer)",
    );
    /// Late elements (label `step`).
    pub const STEP_LATE: Def = def(
        "fluxo_step_late_elements",
        Kind::Counter,
        "Elements that arrived behind the watermark (discarded or routed to a late output)",
    );
    /// Processing time per batch (label `step`).
    pub const STEP_BATCH_DURATION: Def = def(
        "fluxo_step_batch_duration_seconds",
        Kind::Histogram,
        "Time the step took to process one batch, in seconds",
    );
    /// Elements per processed batch (label `step`).
    pub const STEP_BATCH_ELEMENTS: Def = def(
        "fluxo_step_batch_elements",
        Kind::Histogram,
        "Number of elements in each batch the step processed",
    );
    /// Output watermark of a step (label `step`).
    pub const STEP_WATERMARK: Def = def(
        "fluxo_step_watermark_timestamp_seconds",
        Kind::Gauge,
        "Output watermark of the step, in seconds since the Unix epoch (absent before the first watermark and after end of input)",
    );
    /// Wall clock minus the step's output watermark (label `step`).
    pub const STEP_WATERMARK_LAG: Def = def(
        "fluxo_step_watermark_lag_seconds",
        Kind::Gauge,
        "Wall-clock time at scrape minus the output watermark of the step, in seconds",
    );

    /// Elements emitted by a source (label `step`).
    pub const SOURCE_EMITTED: Def = def(
        "fluxo_source_emitted_elements",
        Kind::Counter,
        "Elements the source emitted into the pipeline",
    );
    /// Source messages acknowledged (label `step`).
    pub const SOURCE_ACKED: Def = def(
        "fluxo_source_acked_elements",
        Kind::Counter,
        "Source messages acknowledged after every copy was durably written or dead-lettered",
    );
    /// Source messages negatively acknowledged (label `step`).
    pub const SOURCE_NACKED: Def = def(
        "fluxo_source_nacked_elements",
        Kind::Counter,
        "Source messages negatively acknowledged for redelivery after a failure",
    );
    /// Source messages refused before entering the pipeline (label `step`).
    pub const SOURCE_REJECTED: Def = def(
        "fluxo_source_rejected_elements",
        Kind::Counter,
        "Source messages refused before entering the pipeline",
    );
    /// Watermark of a source (label `step`).
    pub const SOURCE_WATERMARK: Def = def(
        "fluxo_source_watermark_timestamp_seconds",
        Kind::Gauge,
        "Watermark of the source, in seconds since the Unix epoch (absent before the first watermark and after end of input)",
    );
    /// Wall clock minus the source watermark (label `step`).
    pub const SOURCE_WATERMARK_LAG: Def = def(
        "fluxo_source_watermark_lag_seconds",
        Kind::Gauge,
        "Wall-clock time at scrape minus the watermark of the source, in seconds",
    );
    /// Whether a source is idle (label `step`).
    pub const SOURCE_IDLE: Def = def(
        "fluxo_source_idle",
        Kind::Gauge,
        "1 while the source is idle (its watermark is ignored downstream), 0 otherwise",
    );

    /// Elements durably written by a sink (label `step`).
    pub const SINK_WRITTEN: Def = def(
        "fluxo_sink_written_elements",
        Kind::Counter,
        "Elements the sink durably wrote",
    );
    /// Elements a sink gave up on (label `step`).
    pub const SINK_FAILED: Def = def(
        "fluxo_sink_failed_elements",
        Kind::Counter,
        "Elements the sink gave up on (fatal error or retries exhausted)",
    );
    /// Retried sink requests (label `step`).
    pub const SINK_RETRIES: Def = def(
        "fluxo_sink_retries",
        Kind::Counter,
        "Sink requests retried after a transient error",
    );
    /// Batches flushed by a sink (label `step`).
    pub const SINK_BATCHES: Def = def(
        "fluxo_sink_batches",
        Kind::Counter,
        "Batches the sink flushed",
    );
    /// Elements per sink batch (label `step`).
    pub const SINK_BATCH_ELEMENTS: Def = def(
        "fluxo_sink_batch_elements",
        Kind::Histogram,
        "Number of elements in each batch the sink flushed",
    );
    /// Bytes per sink batch (label `step`).
    pub const SINK_BATCH_BYTES: Def = def(
        "fluxo_sink_batch_bytes",
        Kind::Histogram,
        "Size in bytes of each batch the sink flushed",
    );
    /// Sink request latency (labels `step`, `outcome`).
    pub const SINK_REQUEST_DURATION: Def = def(
        "fluxo_sink_request_duration_seconds",
        Kind::Histogram,
        "Duration of each sink request (one attempt), in seconds, by outcome (ok or error)",
    );
    /// Sink requests in flight (label `step`).
    pub const SINK_IN_FLIGHT: Def = def(
        "fluxo_sink_requests_in_flight",
        Kind::Gauge,
        "Sink requests currently in flight",
    );

    /// Elements queued in a buffer (labels `from`, `to`).
    pub const BUFFER_ELEMENTS: Def = def(
        "fluxo_buffer_elements",
        Kind::Gauge,
        "Elements currently queued in the buffer between two steps",
    );
    /// Bytes queued in a buffer (labels `from`, `to`).
    pub const BUFFER_BYTES: Def = def(
        "fluxo_buffer_bytes",
        Kind::Gauge,
        "Bytes currently queued in the buffer between two steps",
    );
    /// Element capacity of a buffer (labels `from`, `to`).
    pub const BUFFER_CAPACITY_ELEMENTS: Def = def(
        "fluxo_buffer_capacity_elements",
        Kind::Gauge,
        "Capacity of the buffer in elements",
    );
    /// Byte capacity of a buffer (labels `from`, `to`).
    pub const BUFFER_CAPACITY_BYTES: Def = def(
        "fluxo_buffer_capacity_bytes",
        Kind::Gauge,
        "Capacity of the buffer in bytes",
    );
    /// Highest element depth of a buffer (labels `from`, `to`).
    pub const BUFFER_PEAK_ELEMENTS: Def = def(
        "fluxo_buffer_peak_elements",
        Kind::Gauge,
        "Highest number of elements queued in the buffer since the run started",
    );
    /// Highest byte depth of a buffer (labels `from`, `to`).
    pub const BUFFER_PEAK_BYTES: Def = def(
        "fluxo_buffer_peak_bytes",
        Kind::Gauge,
        "Highest number of bytes queued in the buffer since the run started",
    );

    /// Always 1; labels `version` (of the engine crate) and `pipeline`: which build runs where.
    pub const BUILD_INFO: Def = def(
        "fluxo_build_info",
        Kind::Gauge,
        "Always 1; the label version is the engine's version (join on it to see which build runs)",
    );

    /// Every family, in exposition order.
    pub const ALL: &[Def] = &[
        BUILD_INFO,
        STEP_RECEIVED,
        STEP_SENT,
        STEP_ERRORS,
        STEP_DISCARDED,
        STEP_LATE,
        STEP_BATCH_DURATION,
        STEP_BATCH_ELEMENTS,
        SOURCE_EMITTED,
        SOURCE_ACKED,
        SOURCE_NACKED,
        SOURCE_REJECTED,
        SOURCE_IDLE,
        SINK_WRITTEN,
        SINK_FAILED,
        SINK_RETRIES,
        SINK_BATCHES,
        SINK_BATCH_ELEMENTS,
        SINK_BATCH_BYTES,
        SINK_REQUEST_DURATION,
        SINK_IN_FLIGHT,
        BUFFER_ELEMENTS,
        BUFFER_BYTES,
        BUFFER_CAPACITY_ELEMENTS,
        BUFFER_CAPACITY_BYTES,
        BUFFER_PEAK_ELEMENTS,
        BUFFER_PEAK_BYTES,
        STEP_WATERMARK,
        STEP_WATERMARK_LAG,
        SOURCE_WATERMARK,
        SOURCE_WATERMARK_LAG,
    ];
}

/// Upper bounds of the histogram buckets (a `+Inf` bucket is always added).
///
/// Each series is roughly exponential (1-2.5-5 or 1-2-5 steps per decade, or powers of 4).
pub mod buckets {
    /// [`STEP_BATCH_DURATION`](super::names::STEP_BATCH_DURATION): 10 µs to 10 s, 1-2.5-5 per
    /// decade (19 bounds).
    pub const STEP_BATCH_SECONDS: &[f64] = &[
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    /// [`STEP_BATCH_ELEMENTS`](super::names::STEP_BATCH_ELEMENTS) and
    /// [`SINK_BATCH_ELEMENTS`](super::names::SINK_BATCH_ELEMENTS): 1 to 100 000 elements, 1-2-5
    /// per decade (16 bounds).
    pub const BATCH_ELEMENTS: &[f64] = &[
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
        20_000.0, 50_000.0, 100_000.0,
    ];

    /// [`SINK_BATCH_BYTES`](super::names::SINK_BATCH_BYTES): 1 KiB to 64 MiB, powers of 4
    /// (9 bounds).
    pub const SINK_BATCH_BYTES: &[f64] = &[
        1_024.0,
        4_096.0,
        16_384.0,
        65_536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
    ];

    /// [`SINK_REQUEST_DURATION`](super::names::SINK_REQUEST_DURATION): 1 ms to 60 s, 1-2.5-5 per
    /// decade, then 30 s and 60 s (15 bounds).
    pub const SINK_REQUEST_SECONDS: &[f64] = &[
        0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
}

/// Label set of the per-step families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

/// Label set of the sink request histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    step: String,
    outcome: &'static str,
}

/// Label set of [`names::BUILD_INFO`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Label set of the buffer families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BufferLabels {
    from: String,
    to: String,
}

/// A histogram whose `observe` is lock-free: one atomic add on the bucket, one CAS on the sum.
///
/// The exported `_count` is the sum of the bucket counts read at scrape time, so `_count` always
/// equals the `+Inf` bucket.
#[derive(Clone, Debug)]
struct AtomicHistogram {
    cells: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    /// Finite upper bounds, ascending.
    bounds: &'static [f64],
    /// One count per bound plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of observed values, as `f64` bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        let counts = iter::repeat_with(|| AtomicU64::new(0))
            .take(bounds.len() + 1)
            .collect();
        Self {
            cells: Arc::new(HistogramCells {
                bounds,
                counts,
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    fn observe(&self, value: f64) {
        let cells = &*self.cells;
        let index = if value.is_nan() {
            cells.bounds.len()
        } else {
            cells.bounds.partition_point(|bound| *bound < value)
        };
        if let Some(count) = cells.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // The closure always returns `Some`, so `fetch_update` cannot fail.
        let _ = cells
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
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
        let sum = f64::from_bits(cells.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Constructor of a histogram family (a plain `fn` so the family type can be named).
type HistogramConstructor = fn() -> AtomicHistogram;

type CounterFamily<L> = Family<L, Counter>;
type GaugeFamily<L> = Family<L, Gauge>;
type HistogramFamily<L> = Family<L, AtomicHistogram, HistogramConstructor>;

fn step_batch_seconds() -> AtomicHistogram {
    AtomicHistogram::new(buckets::STEP_BATCH_SECONDS)
}

fn batch_elements() -> AtomicHistogram {
    AtomicHistogram::new(buckets::BATCH_ELEMENTS)
}

fn sink_batch_bytes() -> AtomicHistogram {
    AtomicHistogram::new(buckets::SINK_BATCH_BYTES)
}

fn sink_request_seconds() -> AtomicHistogram {
    AtomicHistogram::new(buckets::SINK_REQUEST_SECONDS)
}

/// Watermark cells of steps and sources, read by the scrape-time collector.
#[derive(Debug, Default)]
struct WatermarkCells {
    steps: Mutex<BTreeMap<String, Arc<AtomicI64>>>,
    sources: Mutex<BTreeMap<String, Arc<AtomicI64>>>,
}

impl WatermarkCells {
    fn cell(map: &Mutex<BTreeMap<String, Arc<AtomicI64>>>, step: &str) -> Arc<AtomicI64> {
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(step.to_owned())
                .or_insert_with(|| Arc::new(AtomicI64::new(WATERMARK_NONE))),
        )
    }

    /// `(step, watermark)` pairs that have a finite watermark.
    fn snapshot(map: &Mutex<BTreeMap<String, Arc<AtomicI64>>>) -> Vec<(StepLabel, i64)> {
        let map = map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(step, cell)| (step, cell.load(Ordering::Relaxed)))
            .filter(|(_, micros)| *micros != WATERMARK_NONE && *micros != WATERMARK_END)
            .map(|(step, micros)| (StepLabel { step: step.clone() }, micros))
            .collect()
    }
}

/// Computes the watermark gauges and lags when the registry is encoded.
#[derive(Debug)]
struct WatermarkCollector {
    cells: Arc<WatermarkCells>,
}

impl Collector for WatermarkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let now = now_micros();
        let steps = WatermarkCells::snapshot(&self.cells.steps);
        encode_watermarks(
            &mut encoder,
            &names::STEP_WATERMARK,
            &names::STEP_WATERMARK_LAG,
            &steps,
            now,
        )?;
        let sources = WatermarkCells::snapshot(&self.cells.sources);
        encode_watermarks(
            &mut encoder,
            &names::SOURCE_WATERMARK,
            &names::SOURCE_WATERMARK_LAG,
            &sources,
            now,
        )
    }
}

fn encode_watermarks(
    encoder: &mut DescriptorEncoder<'_>,
    watermark: &names::Def,
    lag: &names::Def,
    samples: &[(StepLabel, i64)],
    now: i64,
) -> Result<(), fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let help = format!("{}.", watermark.help);
    let mut metric = encoder.encode_descriptor(watermark.name, &help, None, MetricType::Gauge)?;
    for (label, micros) in samples {
        metric
            .encode_family(label)?
            .encode_gauge(&micros_to_seconds(*micros))?;
    }
    let help = format!("{}.", lag.help);
    let mut metric = encoder.encode_descriptor(lag.name, &help, None, MetricType::Gauge)?;
    for (label, micros) in samples {
        metric
            .encode_family(label)?
            .encode_gauge(&micros_to_seconds(now.saturating_sub(*micros)))?;
    }
    Ok(())
}

fn micros_to_seconds(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Wall-clock time in microseconds since the Unix epoch.
fn now_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// All metric families of one pipeline run, registered once; handles are resolved per step at
/// build time so the hot path only touches atomics (no label hashing per element or per batch).
///
/// Cheap to clone: clones share the same registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    step_received: CounterFamily<StepLabel>,
    step_sent: CounterFamily<StepLabel>,
    step_errors: CounterFamily<StepLabel>,
    step_discarded: CounterFamily<StepLabel>,
    step_late: CounterFamily<StepLabel>,
    step_batch_duration: HistogramFamily<StepLabel>,
    step_batch_elements: HistogramFamily<StepLabel>,
    source_emitted: CounterFamily<StepLabel>,
    source_acked: CounterFamily<StepLabel>,
    source_nacked: CounterFamily<StepLabel>,
    source_rejected: CounterFamily<StepLabel>,
    source_idle: GaugeFamily<StepLabel>,
    sink_written: CounterFamily<StepLabel>,
    sink_failed: CounterFamily<StepLabel>,
    sink_retries: CounterFamily<StepLabel>,
    sink_batches: CounterFamily<StepLabel>,
    sink_batch_elements: HistogramFamily<StepLabel>,
    sink_batch_bytes: HistogramFamily<StepLabel>,
    sink_request_duration: HistogramFamily<RequestLabels>,
    sink_in_flight: GaugeFamily<StepLabel>,
    buffer_elements: GaugeFamily<BufferLabels>,
    buffer_bytes: GaugeFamily<BufferLabels>,
    buffer_capacity_elements: GaugeFamily<BufferLabels>,
    buffer_capacity_bytes: GaugeFamily<BufferLabels>,
    buffer_peak_elements: GaugeFamily<BufferLabels>,
    buffer_peak_bytes: GaugeFamily<BufferLabels>,
    watermarks: Arc<WatermarkCells>,
}

/// Creates a family and registers it under `def`.
fn register<F>(registry: &mut Registry, def: &names::Def, family: F) -> F
where
    F: EncodeMetric + Clone + Send + Sync + fmt::Debug + 'static,
{
    registry.register(def.name, def.help, family.clone());
    family
}

fn histograms<L>(constructor: HistogramConstructor) -> HistogramFamily<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(constructor)
}

impl Metrics {
    /// Registers every metric family for the pipeline `pipeline`; every series carries the label
    /// `pipeline="<pipeline>"`.
    pub fn new(pipeline: &str) -> Self {
        use names::*;
        let mut r =
            Registry::with_labels(iter::once(("pipeline".into(), pipeline.to_owned().into())));
        let watermarks = Arc::new(WatermarkCells::default());
        // Collectors are encoded after the registered families, whatever the order here.
        r.register_collector(Box::new(WatermarkCollector {
            cells: Arc::clone(&watermarks),
        }));
        let build_info: Family<BuildLabels, Gauge> =
            register(&mut r, &BUILD_INFO, Family::default());
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let inner = Inner {
            step_received: register(&mut r, &STEP_RECEIVED, Family::default()),
            step_sent: register(&mut r, &STEP_SENT, Family::default()),
            step_errors: register(&mut r, &STEP_ERRORS, Family::default()),
            step_discarded: register(&mut r, &STEP_DISCARDED, Family::default()),
            step_late: register(&mut r, &STEP_LATE, Family::default()),
            step_batch_duration: register(
                &mut r,
                &STEP_BATCH_DURATION,
                histograms(step_batch_seconds),
            ),
            step_batch_elements: register(&mut r, &STEP_BATCH_ELEMENTS, histograms(batch_elements)),
            source_emitted: register(&mut r, &SOURCE_EMITTED, Family::default()),
            source_acked: register(&mut r, &SOURCE_ACKED, Family::default()),
            source_nacked: register(&mut r, &SOURCE_NACKED, Family::default()),
            source_rejected: register(&mut r, &SOURCE_REJECTED, Family::default()),
            source_idle: register(&mut r, &SOURCE_IDLE, Family::default()),
            sink_written: register(&mut r, &SINK_WRITTEN, Family::default()),
            sink_failed: register(&mut r, &SINK_FAILED, Family::default()),
            sink_retries: register(&mut r, &SINK_RETRIES, Family::default()),
            sink_batches: register(&mut r, &SINK_BATCHES, Family::default()),
            sink_batch_elements: register(&mut r, &SINK_BATCH_ELEMENTS, histograms(batch_elements)),
            sink_batch_bytes: register(&mut r, &SINK_BATCH_BYTES, histograms(sink_batch_bytes)),
            sink_request_duration: register(
                &mut r,
                &SINK_REQUEST_DURATION,
                histograms(sink_request_seconds),
            ),
            sink_in_flight: register(&mut r, &SINK_IN_FLIGHT, Family::default()),
            buffer_elements: register(&mut r, &BUFFER_ELEMENTS, Family::default()),
            buffer_bytes: register(&mut r, &BUFFER_BYTES, Family::default()),
            buffer_capacity_elements: register(
                &mut r,
                &BUFFER_CAPACITY_ELEMENTS,
                Family::default(),
            ),
            buffer_capacity_bytes: register(&mut r, &BUFFER_CAPACITY_BYTES, Family::default()),
            buffer_peak_elements: register(&mut r, &BUFFER_PEAK_ELEMENTS, Family::default()),
            buffer_peak_bytes: register(&mut r, &BUFFER_PEAK_BYTES, Family::default()),
            watermarks,
            registry: r,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Handles of the step labelled `step` (label `step="<step>"`). Calling it twice with the
    /// same label returns handles on the same series.
    pub fn step(&self, step: &str) -> StepMetrics {
        let i = &*self.inner;
        let label = StepLabel {
            step: step.to_owned(),
        };
        StepMetrics {
            received: i.step_received.get_or_create_owned(&label),
            sent: i.step_sent.get_or_create_owned(&label),
            errors: i.step_errors.get_or_create_owned(&label),
            discarded: i.step_discarded.get_or_create_owned(&label),
            late: i.step_late.get_or_create_owned(&label),
            batch_duration: i.step_batch_duration.get_or_create_owned(&label),
            batch_elements: i.step_batch_elements.get_or_create_owned(&label),
            watermark: WatermarkCells::cell(&i.watermarks.steps, step),
        }
    }

    /// Handles of the source step labelled `step` (label `step="<step>"`).
    pub fn source(&self, step: &str) -> SourceMetrics {
        let i = &*self.inner;
        let label = StepLabel {
            step: step.to_owned(),
        };
        SourceMetrics {
            emitted: i.source_emitted.get_or_create_owned(&label),
            acked: i.source_acked.get_or_create_owned(&label),
            nacked: i.source_nacked.get_or_create_owned(&label),
            rejected: i.source_rejected.get_or_create_owned(&label),
            idle: i.source_idle.get_or_create_owned(&label),
            watermark: WatermarkCells::cell(&i.watermarks.sources, step),
        }
    }

    /// Handles of the sink step labelled `step` (label `step="<step>"`). Both request outcomes
    /// (`ok`, `error`) are created up front, so their series exist from the start.
    pub fn sink(&self, step: &str) -> SinkMetrics {
        let i = &*self.inner;
        let label = StepLabel {
            step: step.to_owned(),
        };
        let request = |outcome| RequestLabels {
            step: step.to_owned(),
            outcome,
        };
        SinkMetrics {
            retries: i.sink_retries.get_or_create_owned(&label),
            failed: i.sink_failed.get_or_create_owned(&label),
            written: i.sink_written.get_or_create_owned(&label),
            batches: i.sink_batches.get_or_create_owned(&label),
            batch_elements: i.sink_batch_elements.get_or_create_owned(&label),
            batch_bytes: i.sink_batch_bytes.get_or_create_owned(&label),
            request_ok: i.sink_request_duration.get_or_create_owned(&request("ok")),
            request_error: i
                .sink_request_duration
                .get_or_create_owned(&request("error")),
            in_flight: i.sink_in_flight.get_or_create_owned(&label),
        }
    }

    /// Handles of the buffer from step `from` to step `to` (labels `from`, `to`).
    pub fn buffer(&self, from: &str, to: &str) -> BufferMetrics {
        let i = &*self.inner;
        let labels = BufferLabels {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        BufferMetrics {
            elements: i.buffer_elements.get_or_create_owned(&labels),
            bytes: i.buffer_bytes.get_or_create_owned(&labels),
            capacity_elements: i.buffer_capacity_elements.get_or_create_owned(&labels),
            capacity_bytes: i.buffer_capacity_bytes.get_or_create_owned(&labels),
            peak_elements: i.buffer_peak_elements.get_or_create_owned(&labels),
            peak_bytes: i.buffer_peak_bytes.get_or_create_owned(&labels),
        }
    }

    /// Prometheus text exposition in the OpenMetrics 1.0.0 flavour (what `/metrics` serves to
    /// Prometheus), ending with the `# EOF` line; content type [`OPENMETRICS_CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(%error, "encoding metrics (OpenMetrics text) failed");
        }
        out
    }

    /// Prometheus text format 0.0.4 (no `# EOF`, `_total` on the `# HELP`/`# TYPE` lines of
    /// counters), what `/metrics` serves to clients that do not ask for OpenMetrics, such as
    /// `curl` or `promtool check metrics`; content type [`PROMETHEUS_TEXT_CONTENT_TYPE`].
    pub fn encode_prometheus_text(&self) -> String {
        let mut out = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(%error, "encoding metrics (Prometheus text) failed");
        }
        out
    }
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
    batch_duration: AtomicHistogram,
    batch_elements: AtomicHistogram,
    watermark: Arc<AtomicI64>,
}

impl StepMetrics {
    /// Record one processed batch: its size (histogram of elements per batch) and how long it
    /// took (histogram of per-batch processing time, seconds). Does not touch the counters.
    pub fn observe_batch(&self, elements: u64, elapsed: Duration) {
        self.batch_duration.observe(elapsed.as_secs_f64());
        self.batch_elements.observe(elements as f64);
    }

    /// Output watermark of the step in microseconds since the Unix epoch
    /// ([`WATERMARK_NONE`] = none yet, [`WATERMARK_END`] = end of input). One atomic store.
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
    watermark: Arc<AtomicI64>,
}

impl SourceMetrics {
    /// Watermark of the source in microseconds since the Unix epoch
    /// ([`WATERMARK_NONE`] = none yet, [`WATERMARK_END`] = end of input). One atomic store.
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
    batch_elements: AtomicHistogram,
    batch_bytes: AtomicHistogram,
    request_ok: AtomicHistogram,
    request_error: AtomicHistogram,
    in_flight: Gauge,
}

impl SinkMetrics {
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
        histogram.observe(elapsed.as_secs_f64());
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
    elements: Gauge,
    bytes: Gauge,
    capacity_elements: Gauge,
    capacity_bytes: Gauge,
    peak_elements: Gauge,
    peak_bytes: Gauge,
}

impl BufferMetrics {
    /// Sets the capacity of the buffer (values above `i64::MAX` are exported as `i64::MAX`).
    pub fn set_capacity(&self, elements: u64, bytes: u64) {
        self.capacity_elements.set(saturating_i64(elements));
        self.capacity_bytes.set(saturating_i64(bytes));
    }

    /// Depth change (+ on send, − on receive); updates the peaks on growth.
    pub fn add(&self, elements: i64, bytes: i64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Value of the sample whose line starts with `series` followed by a space.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn counters_are_exposed_with_labels() {
        let metrics = Metrics::new("nfe");
        let step = metrics.step("parse");
        step.received.inc_by(5);
        step.sent.inc_by(4);
        step.errors.inc();
        step.discarded.inc_by(2);
        step.late.inc();
        let again = metrics.step("parse");
        again.received.inc_by(1);
        assert_eq!(step.received.get(), 6);

        let text = metrics.encode();
        let labels = r#"{pipeline="nfe",step="parse"}"#;
        assert_eq!(
            sample(
                &text,
                &format!("fluxo_step_received_elements_total{labels}")
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_step_sent_elements_total{labels}")),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_step_errors_total{labels}")),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("fluxo_step_discarded_elements_total{labels}")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_step_late_elements_total{labels}")),
            Some(1.0)
        );
        assert!(text.contains("# TYPE fluxo_step_received_elements counter\n"));
        assert!(
            text.contains("# HELP fluxo_step_received_elements Elements received by the step.\n")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn families_without_series_are_not_exposed() {
        // Only the build information, which always has its one series.
        let text = Metrics::new("p").encode();
        let families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(families, ["# TYPE fluxo_build_info gauge"], "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn step_batches_fill_histograms() {
        let metrics = Metrics::new("p");
        let step = metrics.step("window");
        step.observe_batch(100, Duration::from_micros(300));
        step.observe_batch(7, Duration::from_millis(20));
        step.observe_batch(1, Duration::from_secs(60));

        let text = metrics.encode();
        let name = "fluxo_step_batch_duration_seconds";
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_count{{pipeline="p",step="window"}}"#)
            ),
            Some(3.0)
        );
        let sum = sample(
            &text,
            &format!(r#"{name}_sum{{pipeline="p",step="window"}}"#),
        );
        assert!(sum.is_some_and(|s| (s - 60.0203).abs() < 1e-9), "{sum:?}");
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_bucket{{pipeline="p",le="0.0005",step="window"}}"#)
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_bucket{{pipeline="p",le="10.0",step="window"}}"#)
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_bucket{{pipeline="p",le="+Inf",step="window"}}"#)
            ),
            Some(3.0)
        );
        let name = "fluxo_step_batch_elements";
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_bucket{{pipeline="p",le="5.0",step="window"}}"#)
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_bucket{{pipeline="p",le="100.0",step="window"}}"#)
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"{name}_sum{{pipeline="p",step="window"}}"#)
            ),
            Some(108.0)
        );
    }

    #[test]
    fn watermark_lag_is_computed_at_scrape_time() {
        let metrics = Metrics::new("p");
        let step = metrics.step("window");
        let source = metrics.source("pubsub");

        let text = metrics.encode();
        assert!(!text.contains("fluxo_step_watermark"), "{text}");
        assert!(!text.contains("fluxo_source_watermark"), "{text}");

        let watermark = now_micros() - 5_000_000;
        step.set_watermark(watermark);
        source.set_watermark(watermark - 2_000_000);
        let text = metrics.encode();
        let lag = sample(
            &text,
            r#"fluxo_step_watermark_lag_seconds{pipeline="p",step="window"}"#,
        );
        assert!(
            lag.is_some_and(|lag| (5.0..6.0).contains(&lag)),
            "{lag:?}\n{text}"
        );
        let lag = sample(
            &text,
            r#"fluxo_source_watermark_lag_seconds{pipeline="p",step="pubsub"}"#,
        );
        assert!(
            lag.is_some_and(|lag| (7.0..8.0).contains(&lag)),
            "{lag:?}\n{text}"
        );
        let raw = sample(
            &text,
            r#"fluxo_step_watermark_timestamp_seconds{pipeline="p",step="window"}"#,
        );
        assert!(
            raw.is_some_and(|raw| (raw - micros_to_seconds(watermark)).abs() < 1e-3),
            "{raw:?}"
        );
        assert!(text.contains("# TYPE fluxo_step_watermark_lag_seconds gauge\n"));

        step.set_watermark(WATERMARK_END);
        source.set_watermark(WATERMARK_NONE);
        let text = metrics.encode();
        assert!(!text.contains("fluxo_step_watermark"), "{text}");
        assert!(!text.contains("fluxo_source_watermark"), "{text}");
        assert_eq!(step.watermark(), WATERMARK_END);
    }

    #[test]
    fn source_counters_and_idle() {
        let metrics = Metrics::new("p");
        let source = metrics.source("pubsub");
        source.emitted.inc_by(10);
        source.acked.inc_by(8);
        source.nacked.inc();
        source.rejected.inc();
        source.set_idle(true);
        let text = metrics.encode();
        let labels = r#"{pipeline="p",step="pubsub"}"#;
        assert_eq!(
            sample(&text, &format!("fluxo_source_acked_elements_total{labels}")),
            Some(8.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_source_idle{labels}")),
            Some(1.0)
        );
        source.set_idle(false);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, &format!("fluxo_source_idle{labels}")),
            Some(0.0)
        );
    }

    #[test]
    fn sink_batches_and_requests() {
        let metrics = Metrics::new("p");
        let sink = metrics.sink("bigtable");
        sink.observe_batch(500, 300_000);
        sink.observe_request(Duration::from_millis(30), true);
        sink.observe_request(Duration::from_secs(2), false);
        sink.retries.inc();
        sink.written.inc_by(500);
        sink.failed.inc_by(3);
        sink.in_flight().inc();
        assert_eq!(sink.batches(), 1);

        let text = metrics.encode();
        let labels = r#"{pipeline="p",step="bigtable"}"#;
        assert_eq!(
            sample(&text, &format!("fluxo_sink_batches_total{labels}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_sink_requests_in_flight{labels}")),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"fluxo_sink_batch_bytes_bucket{pipeline="p",le="262144.0",step="bigtable"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"fluxo_sink_batch_bytes_bucket{pipeline="p",le="1048576.0",step="bigtable"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"fluxo_sink_request_duration_seconds_count{pipeline="p",step="bigtable",outcome="ok"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"fluxo_sink_request_duration_seconds_bucket{pipeline="p",le="2.5",step="bigtable",outcome="error"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn buffer_tracks_depth_and_peak() {
        let metrics = Metrics::new("p");
        let buffer = metrics.buffer("parse", "window");
        buffer.set_capacity(1_000, 1 << 20);
        buffer.add(5, 500);
        buffer.add(-3, -300);
        buffer.add(10, 1_000);
        buffer.add(-12, -1_200);
        buffer.add(4, 100);
        assert_eq!(buffer.peak_elements(), 12);
        assert_eq!(buffer.peak_bytes(), 1_200);
        assert_eq!(buffer.elements(), 4);
        assert_eq!(buffer.bytes(), 100);

        let text = metrics.encode();
        let labels = r#"{pipeline="p",from="parse",to="window"}"#;
        assert_eq!(
            sample(&text, &format!("fluxo_buffer_elements{labels}")),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_buffer_peak_elements{labels}")),
            Some(12.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_buffer_peak_bytes{labels}")),
            Some(1200.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_buffer_capacity_elements{labels}")),
            Some(1000.0)
        );
        assert_eq!(
            sample(&text, &format!("fluxo_buffer_capacity_bytes{labels}")),
            Some(1_048_576.0)
        );
    }

    #[test]
    fn buffer_peak_is_exact_under_concurrency() {
        let buffer = Metrics::new("p").buffer("a", "b");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        buffer.add(1, 10);
                        buffer.add(-1, -10);
                    }
                });
            }
        });
        assert_eq!(buffer.elements(), 0);
        assert!((1..=4).contains(&buffer.peak_elements()));
    }

    #[test]
    fn histogram_is_consistent_under_concurrency() {
        let histogram = AtomicHistogram::new(buckets::BATCH_ELEMENTS);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let histogram = histogram.clone();
                scope.spawn(move || {
                    for i in 0..10_000u32 {
                        histogram.observe(f64::from(i % 7 + t));
                    }
                });
            }
        });
        let total: u64 = histogram
            .cells
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        assert_eq!(total, 40_000);
        let sum = f64::from_bits(histogram.cells.sum.load(Ordering::Relaxed));
        // Each thread adds 10_000 values of (i % 7 + t).
        let expected: f64 = (0..4u32)
            .map(|t| (0..10_000u32).map(|i| f64::from(i % 7 + t)).sum::<f64>())
            .sum();
        assert_eq!(sum, expected);
    }

    #[test]
    fn histogram_puts_nan_and_huge_values_in_inf_bucket() {
        let histogram = AtomicHistogram::new(buckets::SINK_REQUEST_SECONDS);
        histogram.observe(f64::NAN);
        histogram.observe(1e9);
        histogram.observe(0.0);
        let counts: Vec<u64> = histogram
            .cells
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts.first(), Some(&1));
        assert_eq!(counts.last(), Some(&2));
    }

    #[test]
    fn bucket_bounds_are_finite_and_ascending() {
        for bounds in [
            buckets::STEP_BATCH_SECONDS,
            buckets::BATCH_ELEMENTS,
            buckets::SINK_BATCH_BYTES,
            buckets::SINK_REQUEST_SECONDS,
        ] {
            assert!(bounds.iter().all(|b| b.is_finite()));
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
        assert_eq!(buckets::STEP_BATCH_SECONDS.first(), Some(&0.000_01));
        assert_eq!(buckets::STEP_BATCH_SECONDS.last(), Some(&10.0));
        assert_eq!(buckets::SINK_BATCH_BYTES.first(), Some(&1024.0));
        assert_eq!(
            buckets::SINK_BATCH_BYTES.last(),
            Some(&(64.0 * 1024.0 * 1024.0))
        );
    }

    #[test]
    fn names_are_unique_prefixed_and_all_exposed() {
        let mut seen = std::collections::HashSet::new();
        for def in names::ALL {
            assert!(def.name.starts_with("fluxo_"), "{}", def.name);
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            assert!(!def.help.ends_with('.'), "{}", def.name);
        }
        let metrics = Metrics::new("p");
        let step = metrics.step("s");
        step.set_watermark(now_micros());
        let source = metrics.source("s");
        source.set_watermark(now_micros());
        metrics.sink("s");
        metrics.buffer("a", "b");
        let text = metrics.encode();
        for def in names::ALL {
            let kind = match def.kind {
                names::Kind::Counter => "counter",
                names::Kind::Gauge => "gauge",
                names::Kind::Histogram => "histogram",
            };
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", def.name)),
                "{} missing",
                def.name
            );
        }
        assert_eq!(
            names::STEP_RECEIVED.exposed_name(),
            "fluxo_step_received_elements_total"
        );
        let build = format!(
            "fluxo_build_info{{pipeline=\"p\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new("p\"q");
        metrics.step("a\\b\n\"c\"").received.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"fluxo_step_received_elements_total{pipeline="p\"q",step="a\\b\n\"c\""} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let metrics = Metrics::new("p");
        metrics.step("s").received.inc();
        let text = metrics.encode_prometheus_text();
        assert!(text.contains("# TYPE fluxo_step_received_elements_total counter\n"));
        assert!(text.contains(r#"fluxo_step_received_elements_total{pipeline="p",step="s"} 1"#));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn clones_share_the_registry() {
        let metrics = Metrics::new("p");
        let clone = metrics.clone();
        clone.step("s").sent.inc_by(3);
        assert!(metrics
            .encode()
            .contains(r#"fluxo_step_sent_elements_total{pipeline="p",step="s"} 3"#));
    }
}
