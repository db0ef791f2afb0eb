//! The open metrics API seen from user code: a source, a DoFn and a sink declare their own families,
//! the pipeline binds each to its step, and the series come out of the pipeline's `/metrics` text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fluxo::metrics::{Counter, Def, Histogram, MetricScope};
use fluxo::testing::{CollectingSink, GeneratorSource};
use fluxo::{
    DoFn, DoFnContext, Pipeline, RunOptions, Sink, SinkBatch, SinkConfig, Source, SourceContext,
    WriteError,
};

const EVEN: Def = Def::counter("demo_even_elements", "Even elements seen", &["step"]);
const SIZE: Def = Def::histogram(
    "demo_element_value",
    "Value of each element",
    &["step"],
    &[10.0, 100.0, 1_000.0],
);
const READS: Def = Def::counter(
    "demo_source_reads",
    "Reads by outcome",
    &["step", "outcome"],
);
const WRITES: Def = Def::counter("demo_sink_writes", "Batches written", &["step"]);
const HELD: Def = Def::gauge("demo_sink_last_batch", "Size of the last batch", &["step"]);

#[derive(Clone, Default)]
struct CountEven {
    even: Option<Counter>,
    value: Option<Histogram>,
}

impl DoFn for CountEven {
    type In = u64;
    type Out = u64;
    type Dead = u64;

    fn register_metrics(&mut self, metrics: &MetricScope) {
        self.even = Some(metrics.counter(&EVEN, &[]));
        self.value = Some(metrics.histogram(&SIZE, &[]));
    }

    fn process(&mut self, input: u64, ctx: &mut DoFnContext<'_, u64, u64>) {
        if input.is_multiple_of(2) {
            if let Some(even) = &self.even {
                even.inc();
            }
        }
        if let Some(value) = &self.value {
            value.observe(input as f64);
        }
        ctx.output(input);
    }
}

struct Counted<S> {
    inner: S,
    reads: Arc<AtomicU64>,
}

impl<S: Source> Source for Counted<S> {
    type Output = S::Output;

    fn register_metrics(&mut self, metrics: &MetricScope) {
        let reads = Arc::clone(&self.reads);
        metrics.counter_fn(&READS, &["ok"], move || reads.load(Ordering::Relaxed));
    }

    async fn run(self, ctx: SourceContext<S::Output>) -> Result<(), fluxo::BoxError> {
        self.reads.fetch_add(3, Ordering::Relaxed);
        self.inner.run(ctx).await
    }
}

struct Observed<S> {
    inner: S,
    writes: Option<Counter>,
    last: Option<fluxo::metrics::Gauge>,
}

impl<S: Sink<u64>> Sink<u64> for Observed<S> {
    type Error = S::Error;

    fn register_metrics(&mut self, metrics: &MetricScope) {
        self.writes = Some(metrics.counter(&WRITES, &[]));
        self.last = Some(metrics.gauge(&HELD, &[]));
    }

    async fn write(&self, batch: &SinkBatch<u64>) -> Result<(), WriteError<S::Error>> {
        self.inner.write(batch).await?;
        if let (Some(writes), Some(last)) = (&self.writes, &self.last) {
            writes.inc();
            last.set(batch.len() as i64);
        }
        Ok(())
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn sources_dofns_and_sinks_export_their_own_families_under_their_step() {
    let p = Pipeline::new("demo");
    let (sink, out) = CollectingSink::new();
    let source = Counted {
        inner: GeneratorSource::new(1_000, |i| i),
        reads: Arc::default(),
    };
    p.read("Read", source)
        .par_do("Count", CountEven::default())
        .main
        .write(
            "Write",
            Observed {
                inner: sink,
                writes: None,
                last: None,
            },
            SinkConfig {
                max_events: 100,
                ..SinkConfig::default()
            },
        );
    let metrics = p.metrics();
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.len(), 1_000);

    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"demo_even_elements_total{pipeline="demo",step="Count"}"#
        ),
        Some(500.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"demo_element_value_count{pipeline="demo",step="Count"}"#
        ),
        Some(1_000.0)
    );
    // 0..=10 are 11 values at or below the first bound.
    assert_eq!(
        sample(
            &text,
            r#"demo_element_value_bucket{pipeline="demo",le="10.0",step="Count"}"#
        ),
        Some(11.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"demo_source_reads_total{pipeline="demo",step="Read",outcome="ok"}"#
        ),
        Some(3.0)
    );
    let writes = sample(
        &text,
        r#"demo_sink_writes_total{pipeline="demo",step="Write"}"#,
    );
    assert!(writes.is_some_and(|w| w >= 10.0), "{writes:?}");
    let families: Vec<&str> = metrics.families().iter().map(|d| d.name).collect();
    for name in [
        "demo_even_elements",
        "demo_element_value",
        "demo_source_reads",
        "demo_sink_writes",
        "demo_sink_last_batch",
    ] {
        assert!(families.contains(&name), "{name} not in {families:?}");
    }
}

#[tokio::test]
async fn runs_sharing_a_registry_report_their_own_counts_and_export_the_sum() {
    let metrics = fluxo::Metrics::new("served");
    for n in [300u64, 200] {
        let p = Pipeline::with_metrics(fluxo::PipelineConfig::default(), metrics.clone());
        let (sink, out) = CollectingSink::new();
        p.read("Read", GeneratorSource::new(n, |i| i))
            .map("Double", |x| x * 2)
            .write("Collect", sink, SinkConfig::default());
        let report = p.run(RunOptions::default()).await.unwrap();
        assert_eq!(out.len() as u64, n);
        assert_eq!(report.step("Double").map(|s| s.received), Some(n));
        assert_eq!(report.sink("Collect").map(|s| s.written), Some(n));
        assert_eq!(report.source("Read").map(|s| s.emitted), Some(n));
    }
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"fluxo_step_received_elements_total{pipeline="served",step="Double"}"#
        ),
        Some(500.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"fluxo_sink_written_elements_total{pipeline="served",step="Collect"}"#
        ),
        Some(500.0)
    );
}
