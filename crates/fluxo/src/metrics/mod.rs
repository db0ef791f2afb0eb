//! Prometheus metrics of one pipeline run, and the open registry components add theirs to.
//!
//! Each family is declared once, as a `const` [`Def`] (name, type, help, label names, buckets);
//! the engine's own are in [`names`]. Any component resolves handles on a family through
//! [`Metrics`] or a [`MetricScope`] (which pre-binds labels such as `step`): sources and sinks in
//! [`Source::register_metrics`](crate::Source::register_metrics) /
//! [`Sink::register_metrics`](crate::Sink::register_metrics), DoFns in
//! [`DoFn::register_metrics`](crate::DoFn::register_metrics), or anyone holding
//! [`Pipeline::metrics`](crate::Pipeline::metrics). Handles are resolved while the graph is built,
//! so the hot path only touches atomics: no label hashing, no map look-up and no lock per element
//! or per batch. Histograms are lock-free too ([`Histogram`]); a component that already keeps its
//! own atomics exposes them with [`Metrics::counter_fn`] / [`Metrics::gauge_fn`], read at scrape
//! time. Setting a watermark is a single atomic store; its lag is computed when `/metrics` is
//! scraped.
//!
//! `docs/metrics.md` lists every family of the two pipelines; a test regenerates it from the
//! registries and fails when it differs.

pub mod buckets;
mod def;
mod handles;
mod histogram;
pub mod names;
pub mod process;
mod registry;

use std::collections::BTreeMap;
use std::iter;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

pub use def::{Def, Kind};
pub use handles::{BufferMetrics, SinkMetrics, SourceMetrics, StepMetrics};
pub use histogram::Histogram;
use registry::{Families, FamiliesCollector, Series};
pub use registry::{MAX_SERIES_PER_FAMILY, OVERFLOW_LABEL_VALUE};

/// A monotonic `u64` counter (prometheus-client's [`Counter`](prometheus_client::metrics::counter::Counter)).
///
/// `inc()` / `inc_by(n)` are one relaxed atomic add.
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

/// The metric registry of one pipeline run. Cheap to clone: clones share the same registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    families: Arc<Families>,
    /// Watermark cells by (family, step): [`Metrics::step`] and [`Metrics::source`] may be called
    /// more than once for a label and must share the cell the scrape-time gauges read.
    watermarks: Mutex<BTreeMap<(&'static str, String), Arc<AtomicI64>>>,
    /// Every buffer's depth summed, with its peak.
    buffer_totals: Arc<handles::BufferTotals>,
}

impl Metrics {
    /// A registry for the pipeline `pipeline` (every series carries `pipeline="<pipeline>"`),
    /// with the engine's families ([`names::ALL`]) declared and `fluxo_build_info` set.
    pub fn new(pipeline: &str) -> Self {
        let mut registry =
            Registry::with_labels(iter::once(("pipeline".into(), pipeline.to_owned().into())));
        let families = Arc::new(Families::default());
        registry.register_collector(Box::new(FamiliesCollector(Arc::clone(&families))));
        let metrics = Self {
            inner: Arc::new(Inner {
                registry,
                families,
                watermarks: Mutex::new(BTreeMap::new()),
                buffer_totals: Arc::default(),
            }),
        };
        for def in names::ALL {
            metrics.register(def);
        }
        metrics
            .gauge(&names::BUILD_INFO, &[env!("CARGO_PKG_VERSION")])
            .set(1);
        process::register(&metrics);
        metrics
    }

    /// Declares a family without creating a series, so it is listed by [`Metrics::families`]
    /// (and in the generated docs) even before its first label set exists.
    pub fn register(&self, def: &Def) {
        self.inner.families.register(def);
    }

    /// The definitions of every family declared so far, in registration order.
    pub fn families(&self) -> Vec<Def> {
        self.inner.families.defs()
    }

    /// The counter of `def` with label values `labels` (one per `def.labels`, in order).
    /// Resolving the same label set again returns a handle on the same series.
    ///
    /// Panics when `def` is not a counter, is invalid, conflicts with another family of the same
    /// name, or `labels` has the wrong length: programming errors the first test shows.
    pub fn counter(&self, def: &Def, labels: &[&str]) -> Counter {
        match self.series(def, labels, || Series::Counter(Counter::default())) {
            Series::Counter(counter) => counter,
            other => panic!("metric {} is already a {other:?} for {labels:?}", def.name),
        }
    }

    /// The gauge of `def` with label values `labels` (see [`Metrics::counter`]).
    pub fn gauge(&self, def: &Def, labels: &[&str]) -> Gauge {
        match self.series(def, labels, || Series::Gauge(Gauge::default())) {
            Series::Gauge(gauge) => gauge,
            other => panic!("metric {} is already a {other:?} for {labels:?}", def.name),
        }
    }

    /// The histogram of `def` with label values `labels` (see [`Metrics::counter`]).
    pub fn histogram(&self, def: &Def, labels: &[&str]) -> Histogram {
        let buckets = def.buckets;
        match self.series(def, labels, || Series::Histogram(Histogram::new(buckets))) {
            Series::Histogram(histogram) => histogram,
            other => panic!("metric {} is already a {other:?} for {labels:?}", def.name),
        }
    }

    /// A counter series whose value `read` returns when `/metrics` is scraped: for a component
    /// that already counts in its own atomics. Replaces an earlier callback of the same series.
    pub fn counter_fn(
        &self,
        def: &Def,
        labels: &[&str],
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.inner
            .families
            .series(def, labels, || Series::CounterFn(Arc::new(read)), false);
    }

    /// A gauge series whose value `read` returns when `/metrics` is scraped (`None`: no sample
    /// this time). Replaces an earlier callback of the same series.
    pub fn gauge_fn(
        &self,
        def: &Def,
        labels: &[&str],
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) {
        self.inner
            .families
            .series(def, labels, || Series::GaugeFn(Arc::new(read)), false);
    }

    /// A counter in fractional units (CPU seconds), read at scrape time.
    fn seconds_fn(&self, def: &Def, read: impl Fn() -> f64 + Send + Sync + 'static) {
        self.inner
            .families
            .series(def, &[], || Series::SecondsFn(Arc::new(read)), false);
    }

    fn series(&self, def: &Def, labels: &[&str], make: impl FnOnce() -> Series) -> Series {
        self.inner.families.series(def, labels, make, true)
    }

    /// A scope that fills the labels `bound` (name, value) in front of the values its handles
    /// are given; a family resolved through it must list those label names first.
    pub fn scope(&self, bound: &[(&'static str, &str)]) -> MetricScope {
        MetricScope {
            metrics: self.clone(),
            names: bound.iter().map(|(name, _)| *name).collect(),
            values: bound.iter().map(|(_, value)| (*value).to_owned()).collect(),
        }
    }

    /// Handles of the step labelled `step` (label `step="<step>"`). Calling it twice with the
    /// same label returns handles on the same series.
    pub fn step(&self, step: &str) -> StepMetrics {
        StepMetrics::new(self, step)
    }

    /// Handles of the source step labelled `step` (label `step="<step>"`).
    pub fn source(&self, step: &str) -> SourceMetrics {
        SourceMetrics::new(self, step)
    }

    /// Handles of the sink step labelled `step` (label `step="<step>"`).
    pub fn sink(&self, step: &str) -> SinkMetrics {
        SinkMetrics::new(self, step)
    }

    fn buffer_totals(&self) -> Arc<handles::BufferTotals> {
        Arc::clone(&self.inner.buffer_totals)
    }

    /// `(elements, bytes)`: the most held by all buffers of this registry together at one time.
    pub fn peak_buffered(&self) -> (u64, u64) {
        self.inner.buffer_totals.peaks()
    }

    /// Handles of the buffer from step `from` to step `to` (labels `from`, `to`).
    pub fn buffer(&self, from: &str, to: &str) -> BufferMetrics {
        BufferMetrics::new(self, from, to)
    }

    /// The watermark cell of `step`; on first use, registers the scrape-time gauges `watermark`
    /// (seconds since the epoch) and `lag` (now minus the watermark), both absent while the cell
    /// holds [`WATERMARK_NONE`] or [`WATERMARK_END`].
    fn watermark_cell(&self, watermark: &Def, lag: &Def, step: &str) -> Arc<AtomicI64> {
        let mut cells = self
            .inner
            .watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = cells.get(&(watermark.name, step.to_owned())) {
            return Arc::clone(cell);
        }
        let cell = Arc::new(AtomicI64::new(WATERMARK_NONE));
        cells.insert((watermark.name, step.to_owned()), Arc::clone(&cell));
        let read = |cell: &Arc<AtomicI64>| {
            let micros = cell.load(Ordering::Relaxed);
            (micros != WATERMARK_NONE && micros != WATERMARK_END).then_some(micros)
        };
        let c = Arc::clone(&cell);
        self.gauge_fn(watermark, &[step], move || read(&c).map(micros_to_seconds));
        let c = Arc::clone(&cell);
        self.gauge_fn(lag, &[step], move || {
            read(&c).map(|micros| micros_to_seconds(now_micros().saturating_sub(micros)))
        });
        cell
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

/// A view of [`Metrics`] with some labels already bound (for a component: `step`).
///
/// ```
/// use fluxo::metrics::{Def, Metrics};
///
/// const PULLS: Def = Def::counter("demo_pulls", "Pull requests", &["step", "outcome"]);
///
/// let scope = Metrics::new("p").scope(&[("step", "read")]);
/// scope.counter(&PULLS, &["ok"]).inc_by(2);
/// assert!(scope.metrics().encode().contains(r#"demo_pulls_total{pipeline="p",step="read",outcome="ok"} 2"#));
/// ```
#[derive(Clone, Debug)]
pub struct MetricScope {
    metrics: Metrics,
    names: Vec<&'static str>,
    values: Vec<String>,
}

impl MetricScope {
    /// The registry behind the scope.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The value bound to label `name`, if the scope binds it.
    pub fn label(&self, name: &str) -> Option<&str> {
        let index = self.names.iter().position(|n| *n == name)?;
        self.values.get(index).map(String::as_str)
    }

    fn labels<'a>(&'a self, def: &Def, rest: &[&'a str]) -> Vec<&'a str> {
        assert!(
            def.labels.starts_with(&self.names),
            "metric {} has labels {:?}; a scope binding {:?} needs them first",
            def.name,
            def.labels,
            self.names
        );
        self.values
            .iter()
            .map(String::as_str)
            .chain(rest.iter().copied())
            .collect()
    }

    /// [`Metrics::counter`] with the bound labels first.
    pub fn counter(&self, def: &Def, labels: &[&str]) -> Counter {
        self.metrics.counter(def, &self.labels(def, labels))
    }

    /// [`Metrics::gauge`] with the bound labels first.
    pub fn gauge(&self, def: &Def, labels: &[&str]) -> Gauge {
        self.metrics.gauge(def, &self.labels(def, labels))
    }

    /// [`Metrics::histogram`] with the bound labels first.
    pub fn histogram(&self, def: &Def, labels: &[&str]) -> Histogram {
        self.metrics.histogram(def, &self.labels(def, labels))
    }

    /// [`Metrics::counter_fn`] with the bound labels first.
    pub fn counter_fn(
        &self,
        def: &Def,
        labels: &[&str],
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.metrics
            .counter_fn(def, &self.labels(def, labels), read);
    }

    /// [`Metrics::gauge_fn`] with the bound labels first.
    pub fn gauge_fn(
        &self,
        def: &Def,
        labels: &[&str],
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) {
        self.metrics.gauge_fn(def, &self.labels(def, labels), read);
    }
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

#[cfg(test)]
mod tests;
