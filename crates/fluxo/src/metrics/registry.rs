//! The open registry: families declared by any component, encoded at scrape time.
//!
//! prometheus-client's `Registry` wants every family registered through `&mut` before it is
//! shared, which closes it once the run starts; sources, sinks and DoFns register their families
//! while the graph is built, from shared handles. So the families live here, behind a mutex that
//! only registration and scrapes take, and one prometheus-client `Collector` encodes them. Handles
//! ([`Counter`], [`Gauge`], [`Histogram`]) are atomics: the hot path never sees the mutex.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::def::{Def, Kind};
use super::histogram::Histogram;
use super::{Counter, Gauge};

/// Most series one family keeps; label values beyond it are folded into one series whose every
/// label is [`OVERFLOW_LABEL_VALUE`] (and a warning is logged once), so a label fed with unbounded
/// values cannot exhaust memory or the monitoring backend.
pub const MAX_SERIES_PER_FAMILY: usize = 1_000;

/// The label value of the series that collects label sets beyond [`MAX_SERIES_PER_FAMILY`].
pub const OVERFLOW_LABEL_VALUE: &str = "overflow";

/// A value read when `/metrics` is scraped.
type CounterFn = Arc<dyn Fn() -> u64 + Send + Sync>;
/// A fractional counter value read when `/metrics` is scraped (CPU seconds).
type SecondsFn = Arc<dyn Fn() -> f64 + Send + Sync>;
/// A gauge value read when `/metrics` is scraped; `None` exports no sample.
type GaugeFn = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

#[derive(Clone)]
pub(super) enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
    CounterFn(CounterFn),
    SecondsFn(SecondsFn),
    GaugeFn(GaugeFn),
}

impl Series {
    fn kind(&self) -> Kind {
        match self {
            Series::Counter(_) | Series::CounterFn(_) | Series::SecondsFn(_) => Kind::Counter,
            Series::Gauge(_) | Series::GaugeFn(_) => Kind::Gauge,
            Series::Histogram(_) => Kind::Histogram,
        }
    }
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Series::Counter(c) => write!(f, "Counter({})", c.get()),
            Series::Gauge(g) => write!(f, "Gauge({})", g.get()),
            Series::Histogram(h) => write!(f, "Histogram(count {})", h.count()),
            Series::CounterFn(_) => f.write_str("CounterFn"),
            Series::SecondsFn(_) => f.write_str("SecondsFn"),
            Series::GaugeFn(_) => f.write_str("GaugeFn"),
        }
    }
}

#[derive(Debug)]
struct Family {
    def: Def,
    series: Mutex<BTreeMap<Box<[String]>, Series>>,
    overflowed: AtomicBool,
}

/// Every family of one registry, in registration order.
#[derive(Debug, Default)]
pub(super) struct Families {
    list: Mutex<Vec<Arc<Family>>>,
}

impl Families {
    /// Declares `def` (no series yet) and returns its family; declaring the same `Def` again is a
    /// no-op. Panics when `def` is invalid or another family has its name: both are programming
    /// errors that the first test to build the graph shows.
    fn declare(&self, def: &Def) -> Arc<Family> {
        if let Some(problem) = def.problem() {
            panic!("invalid metric definition: {problem}");
        }
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(family) = list.iter().find(|f| f.def.name == def.name) {
            assert!(
                family.def == *def,
                "metric family {} declared twice with different definitions: {:?} and {:?}",
                def.name,
                family.def,
                def
            );
            return Arc::clone(family);
        }
        let family = Arc::new(Family {
            def: *def,
            series: Mutex::new(BTreeMap::new()),
            overflowed: AtomicBool::new(false),
        });
        list.push(Arc::clone(&family));
        family
    }

    /// Declares `def` without creating a series (it is listed by [`Families::defs`]).
    pub(super) fn register(&self, def: &Def) {
        self.declare(def);
    }

    /// The definitions of every declared family, in registration order.
    pub(super) fn defs(&self) -> Vec<Def> {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().map(|f| f.def).collect()
    }

    /// The series of `def` with the label values `values` (one per `def.labels`): the existing
    /// one when `reuse` accepts it, else the one `make` builds (which replaces a callback series).
    pub(super) fn series(
        &self,
        def: &Def,
        values: &[&str],
        make: impl FnOnce() -> Series,
        reuse: bool,
    ) -> Series {
        assert_eq!(
            values.len(),
            def.labels.len(),
            "metric {} has labels {:?}; got values {:?}",
            def.name,
            def.labels,
            values
        );
        let family = self.declare(def);
        let mut series = family.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key: Box<[String]> = values.iter().map(|v| (*v).to_owned()).collect();
        if series.len() >= MAX_SERIES_PER_FAMILY && !series.contains_key(&key) {
            if !family.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = def.name,
                    limit = MAX_SERIES_PER_FAMILY,
                    "metric has too many label sets; further ones are counted under the label value {OVERFLOW_LABEL_VALUE:?}"
                );
            }
            key = values
                .iter()
                .map(|_| OVERFLOW_LABEL_VALUE.to_owned())
                .collect();
        }
        if reuse {
            if let Some(existing) = series.get(&key) {
                return existing.clone();
            }
        }
        let made = make();
        assert_eq!(
            made.kind(),
            def.kind,
            "metric {} is a {}",
            def.name,
            def.kind.as_str()
        );
        series.insert(key, made.clone());
        made
    }
}

/// Encodes every family that has at least one series.
#[derive(Debug)]
pub(super) struct FamiliesCollector(pub(super) Arc<Families>);

impl Collector for FamiliesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let families: Vec<Arc<Family>> = self
            .0
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for family in families {
            // Copy the series out so a callback never runs under the lock.
            let series: Vec<(Box<[String]>, Series)> = family
                .series
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let samples: Vec<(Box<[String]>, Series, Option<f64>)> = series
                .into_iter()
                .filter_map(|(labels, s)| match &s {
                    Series::GaugeFn(read) => read().map(|v| (labels, s, Some(v))),
                    _ => Some((labels, s, None)),
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            let def = &family.def;
            let help = format!("{}.", def.help);
            let kind = match def.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(def.name, &help, None, kind)?;
            for (values, series, read) in &samples {
                let labels: Vec<(&str, &str)> = def
                    .labels
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                let sample = metric.encode_family(&labels)?;
                match series {
                    Series::Counter(c) => c.encode(sample)?,
                    Series::Gauge(g) => g.encode(sample)?,
                    Series::Histogram(h) => h.encode(sample)?,
                    Series::CounterFn(read) => {
                        let mut sample = sample;
                        sample.encode_counter::<NoLabelSet, _, u64>(&read(), None)?;
                    }
                    Series::SecondsFn(read) => {
                        let mut sample = sample;
                        sample.encode_counter::<NoLabelSet, _, f64>(&read(), None)?;
                    }
                    Series::GaugeFn(_) => {
                        let mut sample = sample;
                        sample.encode_gauge(&read.unwrap_or_default())?;
                    }
                }
            }
        }
        Ok(())
    }
}
