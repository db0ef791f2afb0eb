//! Semantics of the engine, pinned end to end through real pipelines: windows, panes, lateness, watermarks,
//! tagged outputs, fan-out, acknowledgement, backpressure and drain.

use std::time::Duration;

use fluxo::testing::{
    assert_in_any_order, CollectingSink, DiscardSink, GeneratorSource, RedeliveringSource,
    TestStream,
};
use fluxo::{
    BufferConfig, DoFn, DoFnContext, PCollection, Pipeline, PipelineConfig, PipelineError,
    RetryConfig, RunOptions, Shutdown, SinkConfig, Status, Sum, Timestamp, Timing, Trigger, Window,
    WindowFn, Windowing,
};

fn secs(s: i64) -> Timestamp {
    Timestamp::from_secs(s)
}

fn win(a: i64, b: i64) -> Window {
    Window::new(secs(a), secs(b))
}

fn fast_sink() -> SinkConfig {
    SinkConfig {
        max_delay: Duration::from_millis(5),
        ..SinkConfig::default()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn fixed_and_sliding_windows_group_per_key() {
    let p = Pipeline::new("windows");
    let input = p.read(
        "Read",
        TestStream::new().add_values([
            (("k", 1u64), secs(1)),
            (("k", 2), secs(9)),
            (("k", 4), secs(10)),
            (("j", 8), secs(12)),
        ]),
    );
    let (fixed_sink, fixed) = CollectingSink::new();
    input
        .window_into(
            "Fixed",
            Windowing::fixed(Duration::from_secs(10)).drop_late(),
        )
        .combine_per_key("SumFixed", Sum::<u64>::default())
        .write("CollectFixed", fixed_sink, fast_sink());
    let (sliding_sink, sliding) = CollectingSink::new();
    input
        .window_into(
            "Sliding",
            Windowing::sliding(Duration::from_secs(10), Duration::from_secs(5)).drop_late(),
        )
        .combine_per_key("SumSliding", Sum::<u64>::default())
        .write("CollectSliding", sliding_sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();

    assert_eq!(fixed.in_window(win(0, 10)), vec![("k", 3)]);
    assert_eq!(fixed.in_window(win(10, 20)), vec![("j", 8), ("k", 4)]);
    // Pane timestamps are the end of the window minus one microsecond.
    for e in fixed.elements() {
        assert_eq!(e.timestamp, e.window.max_timestamp());
        assert_eq!(e.pane.timing, Timing::OnTime);
        assert!(e.pane.is_last);
    }
    assert_eq!(sliding.in_window(win(-5, 5)), vec![("k", 1)]);
    assert_eq!(sliding.in_window(win(0, 10)), vec![("k", 3)]);
    assert_eq!(sliding.in_window(win(5, 15)), vec![("j", 8), ("k", 6)]);
    assert_eq!(sliding.in_window(win(10, 20)), vec![("j", 8), ("k", 4)]);
    assert_eq!(sliding.windows().len(), 4);
}

#[tokio::test]
async fn sessions_merge_per_key() {
    let p = Pipeline::new("sessions");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new()
            .add_values([
                (("u", 0), secs(0)),
                (("u", 5), secs(5)),
                (("u", 30), secs(30)),
            ])
            // Bridges [0, 15) and ... not yet [30, 40): [14, 24) extends the first session.
            .add_values([(("u", 14), secs(14))])
            // [22, 32) touches both [0, 24) and [30, 40): all merge into [0, 40).
            .add_values([(("u", 22), secs(22)), (("v", 100), secs(100))]),
    )
    .window_into(
        "Sessions",
        Windowing::sessions(Duration::from_secs(10)).drop_late(),
    )
    .group_by_key("Group")
    .map("Sort", |(k, mut v): (&'static str, Vec<i32>)| {
        v.sort();
        (k, v)
    })
    .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();

    assert_eq!(out.windows(), vec![win(0, 40), win(100, 110)]);
    assert_eq!(
        out.in_window(win(0, 40)),
        vec![("u", vec![0, 5, 14, 22, 30])]
    );
    assert_eq!(out.in_window(win(100, 110)), vec![("v", vec![100])]);
}

#[tokio::test]
async fn sessions_stay_apart_when_the_gap_is_respected() {
    let p = Pipeline::new("sessions-apart");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new().add_values([
            (("u", 1u64), secs(0)),
            (("u", 1), secs(10)),
            (("u", 1), secs(25)),
        ]),
    )
    .window_into(
        "Sessions",
        Windowing::sessions(Duration::from_secs(10)).drop_late(),
    )
    .combine_per_key("Count", Sum::<u64>::default())
    .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    // [0,10) and [10,20) only touch: half-open windows do not overlap, so they stay separate sessions.
    assert_eq!(out.windows(), vec![win(0, 10), win(10, 20), win(25, 35)]);
}

#[tokio::test]
async fn early_on_time_late_and_too_late() {
    let p = Pipeline::new("panes");
    let (sink, out) = CollectingSink::new();
    let (late_sink, late) = CollectingSink::new();
    let windowing = Windowing::fixed(Duration::from_secs(10))
        .triggering(Trigger::at_watermark().with_early_count(2))
        .allowed_lateness(Duration::from_secs(10))
        .route_late();
    let (panes, too_late) = p
        .read(
            "Read",
            TestStream::new()
                .add_values([
                    (("k", "a".to_string()), secs(1)),
                    (("k", "b".into()), secs(2)),
                ])
                .add_values([(("k", "c".to_string()), secs(3))])
                .advance_watermark(secs(10))
                .add_values([(("k", "d".to_string()), secs(4))])
                .advance_watermark(secs(25))
                .add_values([(("k", "e".to_string()), secs(5))]),
        )
        .window_into("Window", windowing)
        .combine_per_key_with_late("Group", fluxo::ToList);
    panes
        .map("Sort", |(k, v): (&'static str, Vec<String>)| (k, sorted(v)))
        .write("Collect", sink, fast_sink());
    too_late.write("Late", late_sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();

    let got: Vec<_> = out
        .panes(win(0, 10))
        .into_iter()
        .map(|(pane, (_, v))| (pane.timing, pane.index, pane.is_last, v))
        .collect();
    assert_eq!(
        got,
        vec![
            (Timing::Early, 0, false, vec!["a".to_string(), "b".into()]),
            (Timing::OnTime, 1, false, vec!["c".to_string()]),
            (Timing::Late, 2, false, vec!["d".to_string()]),
        ]
    );
    assert_eq!(late.values(), vec![("k", "e".to_string())]);
    assert_eq!(report.step("Group").unwrap().late, 1);
}

#[tokio::test]
async fn accumulating_panes_repeat_earlier_elements_and_late_data_is_dropped_when_asked() {
    let p = Pipeline::new("accumulating");
    let (sink, out) = CollectingSink::new();
    let (source, acks) = TestStream::new()
        .add_values([(("k", 1u64), secs(1)), (("k", 2), secs(2))])
        .add_values([(("k", 4), secs(3))])
        .advance_watermark(secs(10))
        .add_values([(("k", 100), secs(4))])
        .with_acks();
    p.read("Read", source)
        .window_into(
            "Window",
            Windowing::fixed(Duration::from_secs(10))
                .triggering(Trigger::at_watermark().with_early_count(2))
                .accumulating()
                .drop_late(),
        )
        .combine_per_key("Sum", Sum::<u64>::default())
        .write("Collect", sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();
    let got: Vec<_> = out
        .panes(win(0, 10))
        .into_iter()
        .map(|(pane, (_, v))| (pane.timing, v))
        .collect();
    assert_eq!(got, vec![(Timing::Early, 3), (Timing::OnTime, 7)]);
    let group = report.step("Sum").unwrap();
    assert_eq!((group.late, group.discarded), (1, 1));
    // Dropping was asked for: the late element is acknowledged like the others.
    assert_eq!(acks.statuses().await, vec![Status::Delivered; 4]);
}

#[tokio::test]
async fn late_input_has_nowhere_to_go_unless_routed_or_dropped_on_purpose() {
    let p = Pipeline::new("late-unconsumed");
    let (sink, _) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new().add_values([(("k", 1u64), secs(1))]),
    )
    .window_into("Window", Windowing::fixed(Duration::from_secs(10)))
    .combine_per_key("Sum", Sum::<u64>::default())
    .write("Collect", sink, fast_sink());
    let Err(PipelineError::Build(errors)) = p.build() else {
        panic!("a windowed grouping whose late output nothing consumes must not build");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    for needle in [
        "'Sum'",
        "late output",
        "combine_per_key_with_late",
        "drop_late",
    ] {
        assert!(errors[0].contains(needle), "{needle} not in {}", errors[0]);
    }
    // Global windows never expire: no late data, no late output to consume.
    let p = Pipeline::new("global");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new().add_values([(("k", 1u64), secs(1))]),
    )
    .combine_per_key("Sum", Sum::<u64>::default())
    .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values(), vec![("k", 1)]);
}

#[tokio::test]
async fn late_input_is_routed_by_default_and_acked_only_once_stored() {
    let p = Pipeline::new("late-routed");
    let (sink, out) = CollectingSink::new();
    let (late_sink, late) = CollectingSink::new();
    let (source, acks) = TestStream::new()
        .add_values([(("k", 1u64), secs(1))])
        .advance_watermark(secs(10))
        .add_values([(("k", 2u64), secs(2)), (("k", 3u64), secs(12))])
        .with_acks();
    let (sums, too_late) = p
        .read("Read", source)
        .window_into("Window", Windowing::fixed(Duration::from_secs(10)))
        .combine_per_key_with_late("Sum", Sum::<u64>::default());
    sums.write("Collect", sink, fast_sink());
    // The late record's store fails for good: it must come back to the source as a failure.
    too_late.write(
        "Late",
        late_sink.failing_first(u64::MAX, false),
        fast_sink(),
    );
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values_sorted(), vec![("k", 1), ("k", 3)]);
    assert!(late.is_empty());
    assert_eq!(report.step("Sum").unwrap().late, 1);
    assert_eq!(report.step("Sum").unwrap().discarded, 0);
    assert_eq!(
        acks.statuses().await,
        vec![Status::Delivered, Status::Rejected, Status::Delivered]
    );
}

/// A sink that fails once makes the source redeliver every input of the failed panes; a redelivered
/// record already in an accumulating pane is not added again, and a discarding pane sees it once more
/// (its earlier pane was never stored). The oracle: the sum of the distinct inputs.
#[tokio::test]
async fn a_redelivered_input_is_not_counted_twice() {
    let inputs = [1u64, 2, 4, 8];
    let distinct_sum: u64 = inputs.iter().sum();
    for accumulating in [true, false] {
        let p = Pipeline::new("redelivery");
        let (sink, out) = CollectingSink::new();
        let (source, deliveries) = RedeliveringSource::new(
            inputs
                .iter()
                .enumerate()
                .map(|(i, &v)| (("k", v), secs(i as i64))),
        );
        let windowing = Windowing::fixed(Duration::from_secs(10))
            .triggering(Trigger::at_watermark().with_early_count(1))
            .drop_late();
        let windowing = if accumulating {
            windowing.accumulating()
        } else {
            windowing
        };
        p.read("Read", source)
            .window_into("Window", windowing)
            .combine_per_key("Sum", Sum::<u64>::default())
            .write(
                "Collect",
                // The first write (every early pane of the first delivery) fails, retries exhausted.
                sink.failing_first(1, true),
                SinkConfig {
                    retry: RetryConfig {
                        max_retries: 0,
                        ..RetryConfig::default()
                    },
                    ..fast_sink()
                },
            );
        let metrics = p.metrics();
        p.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            deliveries.records(),
            vec![(2, Status::Delivered); inputs.len()],
            "every input delivered twice, acknowledged the second time"
        );
        let panes: Vec<u64> = out
            .panes(win(0, 10))
            .into_iter()
            .map(|(_, (_, v))| v)
            .collect();
        if accumulating {
            // Every stored pane is a running total of distinct inputs; the last one is all of them.
            assert_eq!(panes.last(), Some(&distinct_sum), "{panes:?}");
            assert!(panes.iter().all(|&v| v <= distinct_sum), "{panes:?}");
            let text = metrics.encode_prometheus_text();
            let line =
                "fluxo_group_redelivered_elements_total{pipeline=\"redelivery\",step=\"Sum\"} 4";
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        } else {
            // Discarding panes are deltas: the stored ones add up to each input once.
            assert_eq!(panes.iter().sum::<u64>(), distinct_sum, "{panes:?}");
        }
    }
}

#[tokio::test]
async fn a_grouped_pane_whose_sink_fails_permanently_nacks_every_input() {
    for windowing in [
        Windowing::fixed(Duration::from_secs(10)).accumulating(),
        Windowing::fixed(Duration::from_secs(10)),
        Windowing::sessions(Duration::from_secs(2)),
    ]
    .map(Windowing::drop_late)
    {
        let p = Pipeline::new("pane-fails");
        let (sink, _) = CollectingSink::new();
        // Sessions: 0,1,2,3 s merge into one session; 8 s is another.
        let (source, acks) = TestStream::new()
            .add_values([0, 1, 2, 3, 8].map(|t| (("k", t as u64), secs(t))))
            .with_acks();
        p.read("Read", source)
            .window_into("Window", windowing.clone())
            .combine_per_key("Sum", Sum::<u64>::default())
            .write("Collect", sink.failing_first(u64::MAX, false), fast_sink());
        p.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            acks.statuses().await,
            vec![Status::Rejected; 5],
            "{windowing:?}"
        );
    }
}

#[tokio::test]
async fn early_firing_by_processing_time() {
    let p = Pipeline::new("early-delay");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new()
            .add_values([(("k", 1u64), secs(1))])
            .sleep(Duration::from_millis(300))
            .add_values([(("k", 2u64), secs(2))]),
    )
    .window_into(
        "Window",
        Windowing::fixed(Duration::from_secs(10))
            .triggering(Trigger::at_watermark().with_early_delay(Duration::from_millis(50)))
            .drop_late(),
    )
    .combine_per_key("Sum", Sum::<u64>::default())
    .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    let got: Vec<_> = out
        .panes(win(0, 10))
        .into_iter()
        .map(|(pane, (_, v))| (pane.timing, v))
        .collect();
    assert_eq!(got.first(), Some(&(Timing::Early, 1)));
    assert_eq!(got.iter().map(|g| g.1).sum::<u64>(), 3);
}

/// Input A advances to 20 s; input B says nothing. When B is idle, the window [0, 10) closes on A's
/// watermark alone and a later element at 5 s is late; when B is merely silent (not idle), the watermark
/// is held back and the same element is on time.
async fn idle_case(
    b: TestStream<(&'static str, u64)>,
    idle_timeout: Option<Duration>,
) -> (Vec<u64>, u64) {
    let p = Pipeline::with_config(PipelineConfig {
        idle_timeout,
        ..PipelineConfig::default()
    });
    let a = p.read(
        "A",
        TestStream::new()
            .add_values([(("k", 1u64), secs(1))])
            .advance_watermark(secs(20))
            .sleep(Duration::from_millis(400))
            .add_values([(("k", 10u64), secs(5))]),
    );
    let b = p.read("B", b);
    let (sink, out) = CollectingSink::new();
    p.flatten("Both", &[&a, &b])
        .window_into(
            "Window",
            Windowing::fixed(Duration::from_secs(10)).drop_late(),
        )
        .combine_per_key("Sum", Sum::<u64>::default())
        .write("Collect", sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();
    let sums = out
        .in_window(win(0, 10))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    (sums, report.step("Sum").unwrap().late)
}

#[tokio::test]
async fn watermark_is_the_min_over_inputs_ignoring_idle_ones() {
    let silent = || TestStream::new().sleep(Duration::from_millis(700));
    // B silent but not idle: holds the watermark at MIN, so the 5 s element is on time.
    assert_eq!(idle_case(silent(), None).await, (vec![11], 0));
    // B declares itself idle.
    let idle_then_silent = TestStream::new().idle().sleep(Duration::from_millis(700));
    assert_eq!(idle_case(idle_then_silent, None).await, (vec![1], 1));
    // B detected idle by the engine after the idle timeout.
    assert_eq!(
        idle_case(silent(), Some(Duration::from_millis(100))).await,
        (vec![1], 1)
    );
}

struct Parse;
impl DoFn for Parse {
    type In = String;
    type Out = i64;
    type Dead = (String, String);
    fn process(&mut self, line: String, ctx: &mut DoFnContext<'_, i64, (String, String)>) {
        match line.parse::<i64>() {
            Ok(n) => ctx.output(n),
            Err(e) => ctx.dead_letter((line, e.to_string())),
        }
    }
}

#[tokio::test]
async fn tagged_outputs_and_dead_letters_are_acked_once_stored() {
    let p = Pipeline::new("tagged");
    let (source, acks) = TestStream::new()
        .add_values(["1", "x", "3", "", "5"].map(|s| (s.to_string(), secs(0))))
        .with_acks();
    let parsed = p.read("Read", source).par_do("Parse", Parse);
    let (main_sink, main) = CollectingSink::new();
    let (dead_sink, dead) = CollectingSink::new();
    parsed.main.write("Numbers", main_sink, fast_sink());
    parsed
        .dead_letters
        .write("DeadLetters", dead_sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(main.values_sorted(), vec![1, 3, 5]);
    let dead: Vec<String> = dead.values().into_iter().map(|(raw, _)| raw).collect();
    assert_in_any_order(&dead, &["x".to_string(), String::new()]);
    assert_eq!(acks.statuses().await, vec![Status::Delivered; 5]);
    let step = report.step("Parse").unwrap();
    assert_eq!((step.received, step.sent, step.errors), (5, 3, 2));
}

#[tokio::test]
async fn fan_out_every_consumer_sees_every_element() {
    let p = Pipeline::new("fanout");
    let input = p
        .read("Read", GeneratorSource::new(5000, |i| i))
        .map("Square", |x| x * x);
    let outs: Vec<_> = (0..3)
        .map(|i| {
            let (sink, out) = CollectingSink::new();
            input.write(&format!("Sink{i}"), sink, fast_sink());
            out
        })
        .collect();
    p.run(RunOptions::default()).await.unwrap();
    let expected: Vec<u64> = (0..5000).map(|x| x * x).collect();
    for out in outs {
        assert_eq!(out.values_sorted(), expected);
    }
}

#[tokio::test]
async fn an_element_is_acked_only_when_every_sink_finished() {
    let p = Pipeline::new("acks");
    let (source, acks) = TestStream::new()
        .add_values((0..20u64).map(|i| (i, secs(0))))
        .with_acks();
    let input = p.read("Read", source);
    let (fast, fast_out) = CollectingSink::new();
    let (slow, slow_out) = CollectingSink::new();
    input.write("Fast", fast, fast_sink());
    input.write(
        "Slow",
        slow.with_delay(Duration::from_millis(600)),
        fast_sink(),
    );
    let run = tokio::spawn(p.run(RunOptions::default()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fast_out.len(), 20, "the fast sink is done");
    assert!(slow_out.is_empty());
    assert!(
        !acks.all_resolved(),
        "nothing may be acked before the slow sink wrote"
    );
    run.await.unwrap().unwrap();
    assert_eq!(acks.statuses().await, vec![Status::Delivered; 20]);
}

#[tokio::test]
async fn sink_failures_become_nacks_and_transient_ones_are_retried() {
    let p = Pipeline::new("failures");
    let (source, acks) = TestStream::new()
        .add_values((0..30u64).map(|i| (i, secs(0))))
        .with_acks();
    let input = p.read("Read", source);
    let retry = RetryConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_retries: 5,
    };
    let cfg = SinkConfig {
        retry,
        ..fast_sink()
    };
    let (ok, ok_out) = CollectingSink::new();
    let (flaky, flaky_out) = CollectingSink::new();
    let (picky, _) = CollectingSink::new();
    input.write("Ok", ok, cfg);
    input.write("Flaky", flaky.failing_first(3, true), cfg);
    input.write("Picky", picky.rejecting(|v: &u64| v % 10 == 7), cfg);
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(ok_out.len(), 30);
    assert_eq!(flaky_out.len(), 30, "transient failures were retried");
    assert_eq!(report.sink("Flaky").unwrap().retries, 3);
    let statuses = acks.statuses().await;
    for (i, s) in statuses.iter().enumerate() {
        let expected = if i % 10 == 7 {
            Status::Rejected
        } else {
            Status::Delivered
        };
        assert_eq!(*s, expected, "element {i}");
    }
    let src = report.source("Read").unwrap();
    assert_eq!(
        (src.acked, src.nacked, src.rejected),
        (0, 0, 0),
        "the test source does not record"
    );
}

#[tokio::test]
async fn exhausted_retries_nack_as_errored() {
    let p = Pipeline::new("exhausted");
    let (source, acks) = TestStream::new()
        .add_values((0..4u64).map(|i| (i, secs(0))))
        .with_acks();
    let (down, _) = CollectingSink::new();
    let cfg = SinkConfig {
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retries: 2,
        },
        ..fast_sink()
    };
    p.read("Read", source)
        .write("Down", down.failing_first(u64::MAX, true), cfg);
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(acks.statuses().await, vec![Status::Errored; 4]);
    assert_eq!(report.sink("Down").unwrap().failed, 4);
    assert_eq!(report.sink("Down").unwrap().retries, 2);
}

#[tokio::test]
async fn a_slow_sink_holds_the_source_back_within_the_buffer_bound() {
    let bound = 500u32;
    let p = Pipeline::with_config(PipelineConfig {
        buffer: BufferConfig {
            max_elements: bound,
            max_bytes: 1 << 20,
        },
        batch_size: 100,
        ..PipelineConfig::default()
    });
    let n = 20_000u64;
    let (slow, out) = CollectingSink::new();
    p.read("Read", GeneratorSource::new(n, |i| i))
        .map("A", |x| x + 1)
        .map("B", |x| x * 2)
        .write(
            "Slow",
            slow.with_delay(Duration::from_millis(2)),
            SinkConfig {
                max_events: 100,
                max_in_flight: 1,
                ..fast_sink()
            },
        );
    let metrics = p.metrics();
    let run = tokio::spawn(p.run(RunOptions::default()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Mid-run: everything emitted but not yet written sits in the 3 bounded buffers, in the one batch each
    // of the 3 upstream steps holds while waiting for room, in the sink's pending batch and in its one
    // request in flight.
    let text = metrics.encode_prometheus_text();
    let emitted = counter(&text, "fluxo_source_emitted_elements_total");
    let written = out.len() as u64;
    assert!(
        emitted < n,
        "the source is held back ({emitted} of {n} emitted)"
    );
    assert!(
        emitted - written <= 3 * u64::from(bound) + 3 * 100 + 2 * 100,
        "in flight {} exceeds the bound",
        emitted - written
    );
    let report = run.await.unwrap().unwrap();
    assert_eq!(out.len() as u64, n);
    // Each buffer stays within its bound; the report's peak is all three together.
    assert_eq!(report.buffers.len(), 3);
    for b in &report.buffers {
        assert!(b.peak_elements <= u64::from(bound), "{b:?}");
    }
    let largest = report.buffers.iter().map(|b| b.peak_elements).max();
    assert!(report.peak_buffered_elements() >= largest.unwrap_or(0));
    assert!(report.peak_buffered_elements() <= 3 * u64::from(bound));
}

/// A `flat_map` that splits each input into 990 elements (an NF-e's maximum item count) sharing one
/// large value: the buffer after it stays within its element and byte bounds (batches above the bound
/// are sent in chunks), and the shared value counts once over its 990 handles, not 990 times.
#[tokio::test]
async fn a_fan_out_stays_within_the_buffer_bounds() {
    const LINES: u32 = 990;
    const INVOICE_BYTES: usize = 300_000;
    let (max_elements, max_bytes) = (2_000u32, 2 * 1024 * 1024u32);
    let p = Pipeline::with_config(PipelineConfig {
        buffer: BufferConfig {
            max_elements,
            max_bytes,
        },
        batch_size: 16,
        ..PipelineConfig::default()
    });
    let (sink, out) = CollectingSink::new();
    p.read("Read", GeneratorSource::new(40, |i| i))
        .flat_map("Lines", |i: u64| {
            let invoice = fluxo::Shared::with_size(i, INVOICE_BYTES);
            (0..LINES).map(move |line| (invoice.clone(), line))
        })
        .map("Line", |(invoice, line): (fluxo::Shared<u64>, u32)| {
            (*invoice, line)
        })
        .write(
            "Slow",
            sink.with_delay(Duration::from_millis(1)),
            SinkConfig {
                max_events: 500,
                max_in_flight: 1,
                ..fast_sink()
            },
        );
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.len(), 40 * LINES as usize);
    let after = |from: &str| {
        report
            .buffers
            .iter()
            .find(|b| b.from == from)
            .unwrap_or_else(|| panic!("no buffer after {from}: {:?}", report.buffers))
            .clone()
    };
    let lines = after("Lines");
    // One input batch makes 16 x 990 = 15,840 elements: without chunking they would be admitted whole.
    assert!(lines.peak_elements <= u64::from(max_elements), "{lines:?}");
    assert!(lines.peak_bytes <= u64::from(max_bytes), "{lines:?}");
    // The shared values were counted: a chunk of 2,000 lines spans 3 invoices of 300 kB.
    assert!(lines.peak_bytes >= INVOICE_BYTES as u64, "{lines:?}");
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn graceful_drain_loses_nothing_and_fires_pending_windows() {
    let p = Pipeline::new("drain");
    let (source, acks) = GeneratorSource::new(u64::MAX, |i| i)
        .pause_every(1000, Duration::from_millis(5))
        .with_acks();
    let input = p.read("Read", source);
    let (sink, out) = CollectingSink::new();
    input.write("All", sink, fast_sink());
    let (count_sink, counts) = CollectingSink::new();
    input
        .key_by("Key", |_| "all")
        .combine_per_key("Count", fluxo::Count)
        .write("Counts", count_sink, fast_sink());
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        ..RunOptions::default()
    }));
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    let emitted = report.source("Read").unwrap().emitted;
    assert!(emitted > 0);
    assert_eq!(
        out.len() as u64,
        emitted,
        "every emitted element was written"
    );
    assert_eq!(
        counts.values(),
        vec![("all", emitted)],
        "the global window fired on drain"
    );
    let statuses = acks.statuses().await;
    assert_eq!(statuses.len() as u64, emitted);
    assert!(statuses.iter().all(|s| *s == Status::Delivered));
}

#[tokio::test]
async fn parallel_steps_keep_order() {
    let p = Pipeline::with_config(PipelineConfig {
        batch_size: 64,
        ..PipelineConfig::default()
    });
    let (sink, out) = CollectingSink::new();
    p.read("Read", GeneratorSource::new(10_000, |i| i))
        .parallel(3)
        .map("Work", |x| {
            if x % 640 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            x + 1
        })
        .write(
            "Collect",
            sink,
            SinkConfig {
                max_in_flight: 1,
                ..fast_sink()
            },
        );
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values(), (1..=10_000).collect::<Vec<u64>>());
}

#[tokio::test]
async fn labels_are_unique_and_composites_are_scoped() {
    let p = Pipeline::new("labels");
    let input = p.read("Read", TestStream::new().add_values([(1u64, secs(0))]));
    input
        .map("Map", |x| x)
        .write("Out", DiscardSink, fast_sink());
    input.map("Map", |x| x + 1);
    match p.build() {
        Err(PipelineError::Build(errors)) => {
            assert_eq!(errors.len(), 1);
            assert!(
                errors[0].contains("duplicate step label 'Map'"),
                "{errors:?}"
            );
        }
        other => panic!("expected a build error, got {:?}", other.err()),
    }

    let p = Pipeline::new("composite");
    let (sink, out) = CollectingSink::new();
    let double_then_inc = |c: &PCollection<u64>| c.map("Double", |x| x * 2).map("Inc", |x| x + 1);
    p.read(
        "Read",
        TestStream::new().add_values([(1u64, secs(0)), (2, secs(0))]),
    )
    .apply("Transform", double_then_inc)
    .write("Out", sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values_sorted(), vec![3, 5]);
    assert_eq!(report.step("Transform/Double").unwrap().received, 2);
    assert_eq!(report.step("Transform/Inc").unwrap().sent, 2);
}

/// Routes numbers by remainder to named outputs; counts its lifecycle hooks.
#[derive(Clone)]
struct ByRemainder {
    one: fluxo::OutputTag<u64>,
    two: fluxo::OutputTag<String>,
    hooks: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl DoFn for ByRemainder {
    type In = u64;
    type Out = u64;
    type Dead = std::convert::Infallible;
    fn setup(&mut self) {
        self.hooks.lock().unwrap().push("setup");
    }
    fn start_bundle(&mut self) {
        let mut h = self.hooks.lock().unwrap();
        assert_eq!(
            h.first(),
            Some(&"setup"),
            "setup runs before the first bundle"
        );
        h.push("bundle");
    }
    fn process(&mut self, n: u64, ctx: &mut DoFnContext<'_, u64, Self::Dead>) {
        match n % 3 {
            0 => ctx.output(n),
            1 => ctx.output_to(&self.one, n),
            _ => ctx.output_to(&self.two, format!("#{n}")),
        }
    }
    fn teardown(&mut self) {
        self.hooks.lock().unwrap().push("teardown");
    }
}

#[tokio::test]
async fn named_outputs_setup_and_teardown() {
    for parallelism in [1, 3] {
        let p = Pipeline::new("named-outputs");
        let (source, acks) = TestStream::new()
            .add_values((0..30u64).map(|i| (i, secs(i as i64))))
            .with_acks();
        let dofn = ByRemainder {
            one: fluxo::OutputTag::new("one"),
            two: fluxo::OutputTag::new("two"),
            hooks: Default::default(),
        };
        let (main_sink, main) = CollectingSink::new();
        let (one_sink, one) = CollectingSink::new();
        let (two_sink, two) = CollectingSink::new();
        let routed = p
            .read("Read", source)
            .parallel(parallelism)
            .par_do("Route", dofn.clone());
        routed.main.write("Main", main_sink, fast_sink());
        routed.output(&dofn.one).write("One", one_sink, fast_sink());
        // Reading a tag twice gives the same output (one more consumer of it).
        let two_again = routed.output(&dofn.two);
        routed.output(&dofn.two).write("Two", two_sink, fast_sink());
        let (copy_sink, copy) = CollectingSink::new();
        two_again.write("TwoCopy", copy_sink, fast_sink());
        let report = p.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            main.values_sorted(),
            (0..30).filter(|n| n % 3 == 0).collect::<Vec<_>>()
        );
        assert_eq!(
            one.values_sorted(),
            (0..30).filter(|n| n % 3 == 1).collect::<Vec<_>>()
        );
        let mut twos: Vec<String> = (0..30)
            .filter(|n| n % 3 == 2)
            .map(|n| format!("#{n}"))
            .collect();
        twos.sort();
        assert_eq!(two.values_sorted(), twos);
        assert_eq!(copy.values_sorted(), twos);
        // Timestamps follow the input.
        assert!(one
            .elements()
            .iter()
            .all(|c| c.timestamp == secs(c.value as i64)));
        assert_eq!(acks.statuses().await, vec![Status::Delivered; 30]);
        assert_eq!(report.step("Route").unwrap().sent, 30);
        let hooks = dofn.hooks.lock().unwrap().clone();
        let count = |h: &str| hooks.iter().filter(|x| **x == h).count();
        assert_eq!(
            (count("setup"), count("teardown")),
            (parallelism, parallelism),
            "{hooks:?}"
        );
        assert_eq!(hooks.last(), Some(&"teardown"));
    }
}

#[tokio::test]
async fn an_output_nothing_reads_fails_its_elements() {
    let p = Pipeline::new("unread-output");
    let (source, acks) = TestStream::new()
        .add_values((0..6u64).map(|i| (i, secs(0))))
        .with_acks();
    let dofn = ByRemainder {
        one: fluxo::OutputTag::new("one"),
        two: fluxo::OutputTag::new("two"),
        hooks: Default::default(),
    };
    let (main_sink, _) = CollectingSink::new();
    let (one_sink, _) = CollectingSink::new();
    let routed = p.read("Read", source).par_do("Route", dofn.clone());
    routed.main.write("Main", main_sink, fast_sink());
    routed.output(&dofn.one).write("One", one_sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    // 2 and 5 went to "two", which nothing reads: failed, not acknowledged.
    let statuses = acks.statuses().await;
    let failed: Vec<usize> = (0..6)
        .filter(|&i| statuses[i] != Status::Delivered)
        .collect();
    assert_eq!(failed, vec![2, 5], "{statuses:?}");
    assert!(statuses.iter().all(|s| *s != Status::Errored));
}

#[tokio::test]
async fn flatten_rejects_inputs_with_different_windowing() {
    let p = Pipeline::new("flatten-windowing");
    let a = p.read("A", TestStream::new().add_values([(1u64, secs(1))]));
    let b = p.read("B", TestStream::new().add_values([(2u64, secs(2))]));
    let hourly = a.window_into("HourlyA", Windowing::fixed(Duration::from_secs(3600)));
    let (sink, _) = CollectingSink::new();
    p.flatten("Both", &[&hourly, &b])
        .write("Collect", sink, fast_sink());
    let Err(PipelineError::Build(errors)) = p.build() else {
        panic!("flattening differently windowed inputs must not build");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("'Both'") && errors[0].contains("input 1"),
        "{errors:?}"
    );

    // Windowed alike: builds and runs.
    let p = Pipeline::new("flatten-alike");
    let w = Windowing::fixed(Duration::from_secs(3600));
    let a = p
        .read("A", TestStream::new().add_values([(1u64, secs(1))]))
        .window_into("HourlyA", w.clone());
    let b = p
        .read("B", TestStream::new().add_values([(2u64, secs(2))]))
        .window_into("HourlyB", w);
    let (sink, out) = CollectingSink::new();
    a.flatten_with("Both", &[&b])
        .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values_sorted(), vec![1, 2]);
}

#[tokio::test]
async fn invalid_windows_are_build_errors() {
    let p = Pipeline::new("bad-window");
    p.read("Read", TestStream::<u64>::new())
        .window_into("W", Windowing::sessions(Duration::ZERO))
        .write("Out", DiscardSink, fast_sink());
    let err = p.build().err().expect("build error");
    assert!(
        err.to_string()
            .contains("session gap must be greater than zero"),
        "{err}"
    );
}

#[tokio::test]
async fn a_panicking_step_fails_the_run_without_acking_its_elements() {
    let p = Pipeline::new("panic");
    let (source, acks) = TestStream::new()
        .add_values((0..10u64).map(|i| (i, secs(0))))
        .with_acks();
    p.read("Read", source)
        .map("Boom", |x| {
            if x == 5 {
                panic!("bad element");
            }
            x
        })
        .write("Out", DiscardSink, fast_sink());
    let err = p.run(RunOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("Boom"), "{err}");
    assert_eq!(
        err.step_error::<fluxo::StepFailure>(),
        Some(&fluxo::StepFailure::Panicked("bad element".into()))
    );
    let statuses = acks.statuses().await;
    assert_eq!(statuses.len(), 10);
    assert_ne!(statuses[5], Status::Delivered);
}

#[tokio::test]
async fn a_source_can_close_its_output_and_still_collect_outcomes() {
    // The source closes its output before waiting for acknowledgements, so the global window (which holds
    // every element's acknowledgement until it fires at the end of input) can fire: no deadlock.
    let p = Pipeline::new("close-output");
    let input = p.read("Read", GeneratorSource::new(10_000, |i| i).counting_acks());
    let (sink, counts) = CollectingSink::new();
    input
        .key_by("Key", |_| "all")
        .combine_per_key("Count", fluxo::Count)
        .write("Counts", sink, fast_sink());
    let report = p.run(RunOptions::default()).await.unwrap();
    assert_eq!(counts.values(), vec![("all", 10_000)]);
    let src = report.source("Read").unwrap();
    assert_eq!((src.emitted, src.acked, src.nacked), (10_000, 10_000, 0));
}

#[tokio::test]
async fn elements_held_by_a_drain_that_times_out_are_errored_not_acked() {
    let p = Pipeline::new("drain-timeout");
    let (source, acks) = TestStream::new()
        .add_values((0..10u64).map(|i| (i, secs(0))))
        .until_shutdown()
        .with_acks();
    let (stuck, out) = CollectingSink::new();
    p.read("Read", source).write(
        "Stuck",
        stuck.with_delay(Duration::from_secs(30)),
        fast_sink(),
    );
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        drain_timeout: Duration::from_millis(200),
        ..RunOptions::default()
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.trigger();
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, PipelineError::DrainTimeout(_)), "{err}");
    assert!(out.is_empty());
    assert_eq!(acks.statuses().await, vec![Status::Errored; 10]);
}

#[tokio::test]
async fn parallel_steps_emit_finished_work_without_waiting_for_more_input() {
    let p = Pipeline::new("trickle");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new()
            .add_values([(1u64, secs(1))])
            .advance_watermark(secs(100))
            .until_shutdown(),
    )
    .parallel(2)
    .map("Work", |x| x + 1)
    .window_into(
        "Window",
        Windowing::fixed(Duration::from_secs(10)).drop_late(),
    )
    .key_by("Key", |_| "k")
    .count_per_key("Count")
    .write("Collect", sink, fast_sink());
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        ..RunOptions::default()
    }));
    let mut waited = 0;
    while out.is_empty() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(
        out.values(),
        vec![("k", 1)],
        "the pane fired before shutdown"
    );
    shutdown.trigger();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_source_blocked_by_backpressure_is_not_declared_idle() {
    // A is slowed by a slow sink on a fan-out for longer than the idle timeout; B is far ahead. If A were
    // declared idle while blocked, the watermark would jump to B's and A's elements would be late.
    let p = Pipeline::with_config(PipelineConfig {
        idle_timeout: Some(Duration::from_millis(50)),
        batch_size: 2,
        buffer: BufferConfig {
            max_elements: 2,
            max_bytes: 1 << 20,
        },
        ..PipelineConfig::default()
    });
    let a = p.read(
        "A",
        TestStream::new().add_values((0..6u64).map(|i| (("k", 1u64), secs(i as i64)))),
    );
    let (slow, _) = CollectingSink::new();
    a.write(
        "Slow",
        slow.with_delay(Duration::from_millis(150)),
        SinkConfig {
            max_events: 1,
            max_in_flight: 1,
            ..fast_sink()
        },
    );
    let b = p.read(
        "B",
        TestStream::new()
            .advance_watermark(secs(100))
            .sleep(Duration::from_millis(1500)),
    );
    let (sink, out) = CollectingSink::new();
    let report = p.run_flatten_count(&a, &b, sink).await;
    assert_eq!(out.in_window(win(0, 10)), vec![("k", 6)]);
    assert_eq!(report.step("Count").unwrap().late, 0);
}

trait FlattenCount {
    async fn run_flatten_count(
        self,
        a: &PCollection<(&'static str, u64)>,
        b: &PCollection<(&'static str, u64)>,
        sink: CollectingSink<(&'static str, u64)>,
    ) -> fluxo::RunReport;
}

impl FlattenCount for Pipeline {
    async fn run_flatten_count(
        self,
        a: &PCollection<(&'static str, u64)>,
        b: &PCollection<(&'static str, u64)>,
        sink: CollectingSink<(&'static str, u64)>,
    ) -> fluxo::RunReport {
        self.flatten("Both", &[a, b])
            .window_into(
                "Window",
                Windowing::fixed(Duration::from_secs(10)).drop_late(),
            )
            .combine_per_key("Count", Sum::<u64>::default())
            .write("Collect", sink, fast_sink());
        self.run(RunOptions::default()).await.unwrap()
    }
}

#[tokio::test]
async fn a_failing_step_stops_an_unbounded_run() {
    let p = Pipeline::new("fail-fast");
    p.read(
        "Read",
        TestStream::new()
            .add_values([(1u64, secs(0))])
            .until_shutdown(),
    )
    .map("Boom", |x: u64| -> u64 { panic!("cannot handle {x}") })
    .write("Out", DiscardSink, fast_sink());
    let result = tokio::time::timeout(Duration::from_secs(10), p.run(RunOptions::default())).await;
    let err = result.expect("the run stopped by itself").unwrap_err();
    assert!(err.to_string().contains("Boom"), "{err}");
}

/// A connector's error reaches the caller whole: it can match it, not parse it.
#[tokio::test]
async fn a_step_error_keeps_its_type() {
    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("subscription {0} not found")]
    struct NotFound(&'static str);

    struct Failing;
    impl fluxo::Source for Failing {
        type Output = u64;
        async fn run(self, _ctx: fluxo::SourceContext<u64>) -> Result<(), fluxo::BoxError> {
            Err(NotFound("orders").into())
        }
    }
    let p = Pipeline::new("typed");
    p.read("Read", Failing)
        .write("Out", DiscardSink, fast_sink());
    let err = p.run(RunOptions::default()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "step 'Read' failed: subscription orders not found"
    );
    assert_eq!(err.step_error::<NotFound>(), Some(&NotFound("orders")));
    assert_eq!(err.step_error::<fluxo::StepFailure>(), None);
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("subscription orders not found"));
}

/// Routes elements older than the input watermark to the dead-letter output.
#[derive(Clone)]
struct SplitBehindWatermark;
impl DoFn for SplitBehindWatermark {
    type In = String;
    type Out = String;
    type Dead = String;
    fn process(&mut self, v: String, ctx: &mut DoFnContext<'_, String, String>) {
        if ctx.timestamp() < ctx.input_watermark() {
            ctx.dead_letter(v);
        } else {
            ctx.output(v);
        }
    }
}

#[tokio::test]
async fn dofns_see_the_input_watermark_of_their_step() {
    for parallelism in [1, 3] {
        let p = Pipeline::new("watermark-in-dofn");
        let source = TestStream::new()
            .add_values([("early".to_string(), secs(10))])
            .advance_watermark(secs(100))
            .add_values([
                ("behind".to_string(), secs(20)),
                ("ahead".to_string(), secs(200)),
            ]);
        let split = p
            .read("Read", source)
            .parallel(parallelism)
            .par_do("Split", SplitBehindWatermark);
        let (on_time_sink, on_time) = CollectingSink::new();
        let (behind_sink, behind) = CollectingSink::new();
        split.main.write("OnTime", on_time_sink, fast_sink());
        split.dead_letters.write("Behind", behind_sink, fast_sink());
        p.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            on_time.values_sorted(),
            vec!["ahead".to_string(), "early".to_string()],
            "parallelism {parallelism}"
        );
        assert_eq!(behind.values(), vec!["behind".to_string()]);
    }
}

/// Sums each bundle and emits the sum from `finish_bundle` to a named output.
#[derive(Clone)]
struct SumPerBundle {
    totals: fluxo::OutputTag<u64>,
    sum: u64,
}

impl DoFn for SumPerBundle {
    type In = u64;
    type Out = u64;
    type Dead = std::convert::Infallible;
    fn process(&mut self, n: u64, _ctx: &mut DoFnContext<'_, u64, Self::Dead>) {
        self.sum += n;
    }
    fn finish_bundle(&mut self, ctx: &mut fluxo::BundleContext<'_, u64, Self::Dead>) {
        let sum = std::mem::take(&mut self.sum);
        ctx.output_to(&self.totals, sum, secs(99), Window::GLOBAL);
    }
}

#[tokio::test]
async fn finish_bundle_emits_to_named_outputs_under_the_bundle_acks() {
    // Stored: every input acknowledged, the totals add up to the inputs' sum (0 + 1 + ... + 19).
    // Refused by the totals' sink: every input of the bundle fails with it.
    for (refuse, parallelism) in [(false, 1), (true, 1), (false, 3), (true, 3)] {
        let p = Pipeline::new("bundle-outputs");
        let (source, acks) = TestStream::new()
            .add_values((0..20u64).map(|i| (i, secs(i as i64))))
            .with_acks();
        let dofn = SumPerBundle {
            totals: fluxo::OutputTag::new("totals"),
            sum: 0,
        };
        let (totals_sink, totals) = CollectingSink::new();
        let totals_sink = totals_sink.rejecting(move |_| refuse);
        let summed = p
            .read("Read", source)
            .parallel(parallelism)
            .par_do("SumBundle", dofn.clone());
        summed.main.write("Main", DiscardSink, fast_sink());
        summed
            .output(&dofn.totals)
            .write("Totals", totals_sink, fast_sink());
        let report = p.run(RunOptions::default()).await.unwrap();
        let statuses = acks.statuses().await;
        let case = format!("refuse {refuse}, parallelism {parallelism}");
        if refuse {
            assert!(totals.is_empty(), "{case}");
            assert_eq!(statuses, vec![Status::Rejected; 20], "{case}");
        } else {
            assert_eq!(
                totals.values().iter().sum::<u64>(),
                (0..20).sum::<u64>(),
                "{case}"
            );
            assert!(totals.elements().iter().all(|c| c.timestamp == secs(99)));
            assert_eq!(statuses, vec![Status::Delivered; 20], "{case}");
        }
        // The inputs are held by the totals, not dropped, though `process` emitted nothing.
        assert_eq!(report.step("SumBundle").unwrap().discarded, 0, "{case}");
    }
}

/// Calendar months in UTC: a window strategy the engine does not ship, written against the public
/// `WindowAssigner` trait (months differ in length, so no fixed size describes them).
struct CalendarMonths;

/// (year, month) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first day of (year, month) (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

impl fluxo::WindowAssigner for CalendarMonths {
    fn name(&self) -> &str {
        "calendar-months"
    }
    fn assign(&self, ts: Timestamp, f: &mut dyn FnMut(Window)) {
        let (y, m) = civil_from_days(ts.0.div_euclid(86_400_000_000));
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        f(Window::new(
            secs(days_from_civil(y, m) * 86_400),
            secs(days_from_civil(ny, nm) * 86_400),
        ));
    }
    fn assigns_to_single_window(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_user_defined_window_strategy_groups_by_calendar_month() {
    // Month starts of 2024 in epoch seconds, from Python's datetime (an independent calendar).
    let (jan, feb, mar, apr) = (1_704_067_200, 1_706_745_600, 1_709_251_200, 1_711_929_600);
    let input = [
        (1u64, 1_706_745_599), // 2024-01-31T23:59:59Z
        (2, 1_706_745_600),    // 2024-02-01T00:00:00Z
        (4, 1_709_208_000),    // 2024-02-29T12:00:00Z (leap day)
        (8, 1_709_251_200),    // 2024-03-01T00:00:00Z
        (16, 1_711_929_599),   // 2024-03-31T23:59:59Z
    ];
    let p = Pipeline::new("months");
    let (sink, out) = CollectingSink::new();
    let months = WindowFn::custom(CalendarMonths);
    let (source, acks) = TestStream::new()
        .add_values(input.map(|(v, t)| (("k", v), secs(t))))
        .with_acks();
    p.read("Read", source)
        .window_into("Months", Windowing::new(months).drop_late())
        .combine_per_key("Sum", Sum::<u64>::default())
        .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.in_window(win(jan, feb)), vec![("k", 1)]);
    assert_eq!(out.in_window(win(feb, mar)), vec![("k", 2 + 4)]);
    assert_eq!(out.in_window(win(mar, apr)), vec![("k", 8 + 16)]);
    assert_eq!(out.windows().len(), 3);
    assert_eq!(acks.statuses().await, vec![Status::Delivered; 5]);
}

/// Breaks the contract in the way chosen: two windows while claiming one, a window that misses the
/// timestamp, or none.
struct Broken(u8);

impl fluxo::WindowAssigner for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn assign(&self, ts: Timestamp, f: &mut dyn FnMut(Window)) {
        let hour = Window::new(secs(ts.0.div_euclid(3_600_000_000) * 3_600), secs(1 << 40));
        match (self.0, ts.0 % 2_000_000 == 0) {
            // Only elements at even seconds break it; the others are well placed.
            (_, false) => f(hour),
            (0, true) => {
                f(hour);
                f(Window::new(secs(-1), secs(1 << 40)));
            }
            (1, true) => f(Window::new(secs(-10), secs(-5))),
            _ => {}
        }
    }
    fn assigns_to_single_window(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_window_strategy_that_breaks_its_contract_fails_the_elements_it_misplaced() {
    for how in 0..3u8 {
        let p = Pipeline::new("broken-windows");
        let (sink, out) = CollectingSink::new();
        let (source, acks) = TestStream::new()
            .add_values((1..=6u64).map(|i| (i, secs(i as i64))))
            .with_acks();
        p.read("Read", source)
            .window_into("Broken", Windowing::new(WindowFn::custom(Broken(how))))
            .write("Collect", sink, fast_sink());
        p.run(RunOptions::default()).await.unwrap();
        assert_eq!(out.values_sorted(), vec![1, 3, 5], "strategy {how}");
        let statuses = acks.statuses().await;
        for (i, s) in statuses.iter().enumerate() {
            let even = (i + 1) % 2 == 0;
            let want = if even {
                Status::Rejected
            } else {
                Status::Delivered
            };
            assert_eq!(*s, want, "strategy {how}, element {}", i + 1);
        }
    }
}

#[tokio::test]
async fn flatten_compares_custom_strategies_by_instance() {
    let months = Windowing::new(WindowFn::custom(CalendarMonths)).drop_late();
    let p = Pipeline::new("flatten-custom");
    let a = p
        .read("A", TestStream::new().add_values([(1u64, secs(1))]))
        .window_into("MonthsA", months.clone());
    let b = p
        .read("B", TestStream::new().add_values([(2u64, secs(2))]))
        .window_into("MonthsB", months);
    let (sink, out) = CollectingSink::new();
    a.flatten_with("Both", &[&b])
        .write("Collect", sink, fast_sink());
    p.run(RunOptions::default()).await.unwrap();
    assert_eq!(out.values_sorted(), vec![1, 2]);

    // Another instance of the same type is another strategy as far as the engine can tell.
    let p = Pipeline::new("flatten-custom-apart");
    let a = p
        .read("A", TestStream::new().add_values([(1u64, secs(1))]))
        .window_into("MonthsA", Windowing::new(WindowFn::custom(CalendarMonths)));
    let b = p
        .read("B", TestStream::new().add_values([(2u64, secs(2))]))
        .window_into("MonthsB", Windowing::new(WindowFn::custom(CalendarMonths)));
    let (sink, _) = CollectingSink::new();
    a.flatten_with("Both", &[&b])
        .write("Collect", sink, fast_sink());
    let Err(PipelineError::Build(errors)) = p.build() else {
        panic!("two instances are two strategies: flatten must refuse them");
    };
    assert!(
        errors.len() == 1
            && errors[0].contains("'Both'")
            && errors[0].contains("create it once and clone it"),
        "{errors:?}"
    );
}
