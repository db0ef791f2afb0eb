//! Unit tests of the metrics registry and the engine's handles.
use std::time::Duration;

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
    assert!(text.contains("# HELP fluxo_step_received_elements Elements received by the step.\n"));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn families_without_series_are_not_exposed() {
    // Only the build information and the process (on Linux), which always have their series.
    let text = Metrics::new("p").encode();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let mut expected = vec![names::BUILD_INFO.name];
    if cfg!(target_os = "linux") {
        expected.extend(process::ALL.iter().map(|d| d.name));
    }
    assert_eq!(families, expected, "{text}");
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
    let histogram = Histogram::new(buckets::BATCH_ELEMENTS);
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
    let total = histogram.count();
    assert_eq!(total, 40_000);
    let sum = histogram.sum();
    // Each thread adds 10_000 values of (i % 7 + t).
    let expected: f64 = (0..4u32)
        .map(|t| (0..10_000u32).map(|i| f64::from(i % 7 + t)).sum::<f64>())
        .sum();
    assert_eq!(sum, expected);
}

#[test]
fn histogram_puts_nan_and_huge_values_in_inf_bucket() {
    let histogram = Histogram::new(buckets::SINK_REQUEST_SECONDS);
    histogram.observe(f64::NAN);
    histogram.observe(1e9);
    histogram.observe(0.0);
    let counts = histogram.bucket_counts();
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
    for def in names::ALL.iter().chain(names::GROUPING) {
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
    // Grouping steps add their own family.
    metrics.counter(&names::GROUP_REDELIVERED, &["s"]);
    let text = metrics.encode();
    for def in names::ALL.iter().chain(names::GROUPING) {
        let kind = def.kind.as_str();
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

const DEMO_REQUESTS: Def =
    Def::counter("demo_requests", "Requests by outcome", &["step", "outcome"]);
const DEMO_DEPTH: Def = Def::gauge("demo_depth", "Queue depth", &["queue"]);
const DEMO_SECONDS: Def = Def::histogram(
    "demo_seconds",
    "Latency",
    &["step"],
    buckets::SINK_REQUEST_SECONDS,
);

#[test]
fn components_register_their_own_families() {
    let metrics = Metrics::new("p");
    let scope = metrics.scope(&[("step", "sink")]);
    assert_eq!(scope.label("step"), Some("sink"));
    scope.counter(&DEMO_REQUESTS, &["ok"]).inc_by(3);
    scope.counter(&DEMO_REQUESTS, &["ok"]).inc();
    scope.histogram(&DEMO_SECONDS, &[]).observe(0.02);
    let depth = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(7));
    let read = std::sync::Arc::clone(&depth);
    metrics.gauge_fn(&DEMO_DEPTH, &["in"], move || {
        Some(read.load(Ordering::Relaxed) as f64)
    });
    metrics.counter_fn(&DEMO_REQUESTS, &["src", "error"], || 11);
    metrics.gauge_fn(&DEMO_DEPTH, &["absent"], || None);

    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            r#"demo_requests_total{pipeline="p",step="sink",outcome="ok"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"demo_requests_total{pipeline="p",step="src",outcome="error"}"#
        ),
        Some(11.0)
    );
    assert_eq!(
        sample(&text, r#"demo_depth{pipeline="p",queue="in"}"#),
        Some(7.0)
    );
    assert!(!text.contains(r#"queue="absent""#), "{text}");
    depth.store(9, Ordering::Relaxed);
    assert_eq!(
        sample(&metrics.encode(), r#"demo_depth{pipeline="p",queue="in"}"#),
        Some(9.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"demo_seconds_bucket{pipeline="p",le="0.025",step="sink"}"#
        ),
        Some(1.0)
    );
    assert!(
        text.contains("# HELP demo_requests Requests by outcome.\n# TYPE demo_requests counter\n"),
        "{text}"
    );

    let names: Vec<&str> = metrics.families().iter().map(|d| d.name).collect();
    assert_eq!(
        names.len(),
        names::ALL.len() + process::ALL.len() + 3,
        "{names:?}"
    );
    assert!(names.ends_with(&["demo_requests", "demo_seconds", "demo_depth"]));
}

#[test]
fn a_family_keeps_a_bounded_number_of_series() {
    let metrics = Metrics::new("p");
    for i in 0..MAX_SERIES_PER_FAMILY + 50 {
        metrics
            .counter(&DEMO_DEPTH_COUNTER, &[&i.to_string()])
            .inc();
    }
    let text = metrics.encode();
    let series = text
        .lines()
        .filter(|l| l.starts_with("demo_keys_total{"))
        .count();
    assert_eq!(series, MAX_SERIES_PER_FAMILY + 1);
    assert_eq!(
        sample(&text, r#"demo_keys_total{pipeline="p",key="overflow"}"#),
        Some(50.0)
    );
}

const DEMO_DEPTH_COUNTER: Def = Def::counter("demo_keys", "Keys", &["key"]);

#[test]
#[should_panic(expected = "declared twice with different definitions")]
fn one_name_cannot_mean_two_families() {
    let metrics = Metrics::new("p");
    metrics.counter(&DEMO_REQUESTS, &["a", "ok"]);
    metrics.counter(
        &Def::counter("demo_requests", "Other help", &["step", "outcome"]),
        &["a", "ok"],
    );
}

#[test]
#[should_panic(expected = "has labels")]
fn label_values_must_match_the_label_names() {
    Metrics::new("p").counter(&DEMO_REQUESTS, &["only-one"]);
}

#[test]
fn invalid_definitions_are_named() {
    let cases = [
        (Def::counter("bad-name", "h", &[]), "is not"),
        (Def::counter("x_total", "h", &[]), "_total"),
        (Def::gauge("x", "ends.", &[]), "period"),
        (Def::gauge("x", "h", &["le"]), "reserved"),
        (Def::gauge("x", "h", &["pipeline"]), "reserved"),
        (Def::histogram("x", "h", &[], &[2.0, 1.0]), "ascending"),
        (Def::histogram("x", "h", &[], &[]), "ascending"),
    ];
    for (def, want) in cases {
        let problem = def.problem().unwrap_or_default();
        assert!(problem.contains(want), "{def:?}: {problem}");
    }
    for def in names::ALL.iter().chain(names::GROUPING) {
        assert_eq!(def.problem(), None);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn process_series_read_proc() {
    let metrics = Metrics::new("p");
    // Burn a little CPU so the counter is above zero.
    let mut x = 0u64;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    std::hint::black_box(x);
    let text = metrics.encode();
    let value = |name: &str| sample(&text, &format!(r#"{name}{{pipeline="p"}}"#));
    let rss = value("process_resident_memory_bytes").unwrap_or(0.0);
    let limit = value("fluxo_memory_limit_bytes").unwrap_or(0.0);
    assert!(rss > 1e6 && rss < limit, "rss {rss}, limit {limit}");
    assert!(
        value("process_cpu_seconds_total").is_some_and(|c| c > 0.0),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds").unwrap_or(0.0);
    assert!(
        started > now - 86_400.0 * 30.0 && started <= now + 1.0,
        "{started}"
    );
    assert!(value("process_open_fds").is_some_and(|n| n >= 3.0));
    assert!(value("process_threads").is_some_and(|n| n >= 1.0));
    let max = value("process_max_fds").unwrap_or(0.0);
    assert!(max >= value("process_open_fds").unwrap_or(f64::MAX));
}

/// The series counts docs/metrics.md states ("Cost"), counted on the exposition.
#[test]
fn series_per_component_as_documented() {
    let samples = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let base = samples(&Metrics::new("p").encode());
    let one = |add: &dyn Fn(&Metrics)| {
        let m = Metrics::new("p");
        add(&m);
        samples(&m.encode()) - base
    };
    let step = one(&|m| m.step("s").set_watermark(now_micros()));
    let source = one(&|m| m.source("s").set_watermark(now_micros()));
    let sink = one(&|m| {
        m.sink("s");
    });
    let buffer = one(&|m| {
        m.buffer("a", "b");
    });
    assert_eq!((step, source, sink, buffer), (48, 8, 72, 6));
    // The build information and, on Linux, the 8 process series.
    assert_eq!(base, if cfg!(target_os = "linux") { 9 } else { 1 });
}
