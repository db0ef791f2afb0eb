//! [`Def`]: everything about a metric family, declared once in a `const`.

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

impl Kind {
    /// The type as written on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: name, type, help text, label names and (histograms) bucket bounds.
///
/// A component declares each family once, as a `const Def`, and resolves handles on it through
/// [`Metrics`](super::Metrics) or a [`MetricScope`](super::MetricScope); the registry is open, so
/// engine, connectors and pipelines register their families the same way. Every series also
/// carries the registry's `pipeline` label, which is not listed in `labels`.
///
/// ```
/// use fluxo::metrics::{Def, Metrics};
///
/// const PAGES: Def = Def::counter("ingest_pages", "API pages fetched", &["outcome"]);
///
/// let metrics = Metrics::new("ingest");
/// metrics.counter(&PAGES, &["ok"]).inc();
/// assert!(metrics.encode().contains(r#"ingest_pages_total{pipeline="ingest",outcome="ok"} 1"#));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Def {
    /// Family name as registered (without the `_total` suffix of counters).
    pub name: &'static str,
    /// Metric type as exposed on the `# TYPE` line.
    pub kind: Kind,
    /// Help text, without a final period (the encoder appends one).
    pub help: &'static str,
    /// Label names, in the order handles pass their values. Keep their values bounded (a step,
    /// an outcome, an error code): a family keeps at most
    /// [`MAX_SERIES_PER_FAMILY`](super::MAX_SERIES_PER_FAMILY) series.
    pub labels: &'static [&'static str],
    /// Finite upper bounds of the buckets, ascending (histograms only; a `+Inf` bucket is added).
    pub buckets: &'static [f64],
}

impl Def {
    /// A counter family.
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
            labels,
            buckets: &[],
        }
    }

    /// A gauge family.
    pub const fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            help,
            labels,
            buckets: &[],
        }
    }

    /// A histogram family with the given finite bucket bounds (ascending).
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self {
            name,
            kind: Kind::Histogram,
            help,
            labels,
            buckets,
        }
    }

    /// The name of the series as scraped (`_total` appended for counters; for histograms the
    /// base name of the `_bucket`/`_sum`/`_count` series).
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge | Kind::Histogram => self.name.to_owned(),
        }
    }

    /// What is wrong with this definition, if anything: a name or label that Prometheus would
    /// refuse, a help text ending with a period, bucket bounds that are not finite and ascending.
    pub fn problem(&self) -> Option<String> {
        let valid = |s: &str| {
            let mut chars = s.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !valid(self.name) {
            return Some(format!(
                "metric name {:?} is not [a-zA-Z_][a-zA-Z0-9_]*",
                self.name
            ));
        }
        if self.kind == Kind::Counter && self.name.ends_with("_total") {
            return Some(format!(
                "counter {} must not end with _total (the encoder adds it)",
                self.name
            ));
        }
        if self.help.is_empty() || self.help.ends_with('.') {
            return Some(format!(
                "help of {} must be non-empty without a final period",
                self.name
            ));
        }
        for label in self.labels {
            if !valid(label) || label.starts_with("__") || matches!(*label, "le" | "pipeline") {
                return Some(format!(
                    "label {label:?} of {} is reserved or invalid",
                    self.name
                ));
            }
        }
        let buckets_ok = match self.kind {
            Kind::Histogram => {
                !self.buckets.is_empty()
                    && self.buckets.iter().all(|b| b.is_finite())
                    && self.buckets.windows(2).all(|w| w[0] < w[1])
            }
            Kind::Counter | Kind::Gauge => self.buckets.is_empty(),
        };
        (!buckets_ok).then(|| {
            format!(
                "buckets of {} must be finite and ascending (histograms only)",
                self.name
            )
        })
    }
}
