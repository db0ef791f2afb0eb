//! Integration tests of the Pub/Sub connector against Google's real Pub/Sub emulator (started by the
//! `emulators` crate on a free loopback port). Endpoints are passed through the connector configuration,
//! never through process-global environment variables, so the tests also run as threads under
//! `cargo test`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emulators::{Emulators, Service};
use fluxo::testing::{CollectingSink, GeneratorSource};
use fluxo::{
    ErrorClass, Pipeline, PipelineConfig, RetryConfig, RunOptions, RunReport, Shutdown, Sink,
    SinkBatch, SinkConfig, Timestamp, WriteError,
};
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage, PullRequest};
use fluxo_gcp::pubsub::{
    PubsubClient, PubsubMessage, PubsubOut, PubsubSink, PubsubSinkConfig, PubsubSource,
    PubsubSourceConfig, ReceiveMode, SubscriptionOptions,
};
use fluxo_gcp::ConfigError;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn start_emulator() -> Emulators {
    Emulators::start(&[Service::PubSub]).expect("start the Pub/Sub emulator")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// A topic and a subscription with unique names.
async fn setup(emu: &Emulators, opts: SubscriptionOptions) -> (PubsubClient, String, String) {
    let host = emu.pubsub_host().expect("pubsub host");
    let client = PubsubClient::emulator(&host, emu.project())
        .await
        .expect("connect");
    let topic = unique("topic");
    let sub = unique("sub");
    client.create_topic(&topic).await.expect("create topic");
    client
        .create_subscription(&sub, &topic, opts)
        .await
        .expect("create subscription");
    (client, topic, sub)
}

fn source_config(emu: &Emulators, sub: &str) -> PubsubSourceConfig {
    PubsubSourceConfig {
        project: Some(emu.project().to_string()),
        subscription: sub.to_string(),
        endpoint: emu.pubsub_host(),
        ..Default::default()
    }
}

fn sink_config(emu: &Emulators, topic: &str) -> PubsubSinkConfig {
    PubsubSinkConfig {
        project: Some(emu.project().to_string()),
        topic: topic.to_string(),
        endpoint: emu.pubsub_host(),
        ..Default::default()
    }
}

/// Publishes raw messages `prefix-0 .. prefix-(n-1)` with the raw client.
async fn publish_raw(client: &PubsubClient, topic: &str, prefix: &str, n: usize) {
    let topic = client.topic_path(topic).expect("topic path");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let messages = chunk
            .iter()
            .map(|i| RawMessage {
                data: format!("{prefix}-{i}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        client
            .publish(PublishRequest {
                topic: topic.clone(),
                messages,
            })
            .await
            .expect("publish");
    }
}

/// Pulls (with `return_immediately`) for `wait` and returns every payload seen.
async fn drain_raw(client: &PubsubClient, sub: &str, wait: Duration, ack: bool) -> Vec<String> {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let mut out = Vec::new();
    let end = Instant::now() + wait;
    while Instant::now() < end {
        #[allow(deprecated)]
        let req = PullRequest {
            subscription: subscription.clone(),
            max_messages: 1000,
            return_immediately: true,
        };
        let resp = client
            .subscriber()
            .pull(req, None)
            .await
            .expect("pull")
            .into_inner();
        if resp.received_messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut ids = Vec::new();
        for m in resp.received_messages {
            ids.push(m.ack_id);
            if let Some(m) = m.message {
                out.push(String::from_utf8_lossy(&m.data).into_owned());
            }
        }
        if ack {
            client
                .subscriber()
                .acknowledge(
                    fluxo_gcp::pubsub::raw::proto::AcknowledgeRequest {
                        subscription: subscription.clone(),
                        ack_ids: ids,
                    },
                    None,
                )
                .await
                .expect("ack");
        }
    }
    out
}

/// Runs `p` until `done()` holds (or `limit` passes), then triggers shutdown and returns the report.
async fn run_until(
    p: Pipeline,
    limit: Duration,
    done: impl Fn() -> bool,
) -> Result<RunReport, fluxo::PipelineError> {
    let shutdown = Shutdown::new();
    let options = RunOptions {
        shutdown: shutdown.signal(),
        drain_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let run = p.run(options);
    let watch = async {
        let end = Instant::now() + limit;
        while !done() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.trigger();
    };
    let (report, ()) = tokio::join!(run, watch);
    report
}

/// What the tests compare: payload, sorted attributes, ordering key.
type Seen = (String, BTreeMap<String, String>, String);

fn seen(m: &PubsubMessage) -> Seen {
    (
        String::from_utf8_lossy(&m.data).into_owned(),
        m.attributes.clone().into_iter().collect(),
        m.ordering_key.clone(),
    )
}

fn expected_message(i: u64) -> PubsubOut {
    let mut out = PubsubOut::new(Bytes::from(format!(
        "payload-{i}-{}",
        "x".repeat((i % 7) as usize)
    )))
    .with_attribute("index", i.to_string())
    .with_attribute("kind", "test");
    // Event time in an attribute (epoch milliseconds), one message with an invalid value.
    out = if i == 3 {
        out.with_attribute("ts", "not-a-time")
    } else {
        out.with_attribute("ts", (1_600_000_000_000 + i).to_string())
    };
    if i.is_multiple_of(3) {
        out = out.with_ordering_key(format!("key-{}", i % 2));
    }
    out
}

fn as_seen(o: &PubsubOut) -> Seen {
    (
        String::from_utf8_lossy(&o.data).into_owned(),
        o.attributes.clone().into_iter().collect(),
        o.ordering_key.clone().unwrap_or_default(),
    )
}

/// Sink -> topic -> source with exact content comparison, then checks the acks and the event times.
fn round_trip(mode: ReceiveMode) {
    const N: u64 = 600;
    let emu = start_emulator();
    runtime().block_on(async {
        let (client, topic, sub) = setup(
            &emu,
            SubscriptionOptions {
                ack_deadline_secs: 10,
                ..Default::default()
            },
        )
        .await;

        // Publish through the connector sink.
        let p = Pipeline::new("publish");
        let sink = PubsubSink::connect(&sink_config(&emu, &topic))
            .await
            .expect("sink");
        p.read("Gen", GeneratorSource::new(N, expected_message))
            .write(
                "Publish",
                sink,
                SinkConfig {
                    max_events: 250,
                    ..Default::default()
                },
            );
        let report = p.run(RunOptions::default()).await.expect("publish run");
        assert_eq!(report.sinks[0].written, N);
        assert_eq!(report.sinks[0].failed, 0);

        // Read through the connector source.
        let mut cfg = source_config(&emu, &sub);
        cfg.mode = mode;
        cfg.timestamp_attribute = Some("ts".into());
        let source = PubsubSource::connect(&cfg).await.expect("source");
        let stats = source.stats();
        let (collect, out) = CollectingSink::new();
        let p = Pipeline::new("read");
        p.read("Read", source)
            .write("Collect", collect, SinkConfig::default());
        let report = run_until(p, Duration::from_secs(60), || stats.acked() >= N)
            .await
            .expect("read run");

        let got = out.elements();
        let mut actual: Vec<Seen> = got.iter().map(|c| seen(&c.value)).collect();
        let mut expected: Vec<Seen> = (0..N).map(|i| as_seen(&expected_message(i))).collect();
        actual.sort();
        expected.sort();
        assert_eq!(actual.len(), expected.len(), "message count");
        assert_eq!(actual, expected, "messages differ");
        // Event time from the attribute; the invalid one falls back to the publish time.
        for c in &got {
            let i: u64 = c.value.attributes["index"].parse().expect("index");
            if i == 3 {
                assert_eq!(c.timestamp, c.value.publish_time);
            } else {
                assert_eq!(
                    c.timestamp,
                    Timestamp::from_millis(1_600_000_000_000 + i as i64)
                );
            }
            assert!(c.value.publish_time > Timestamp::from_secs(1_700_000_000));
            assert!(!c.value.message_id.is_empty());
        }
        assert_eq!(stats.invalid_timestamps(), 1);
        assert_eq!(stats.received(), N, "no redelivery during the run");
        assert_eq!(stats.acked(), N);
        assert_eq!(report.sources[0].acked, N);
        assert_eq!(report.sources[0].nacked, 0);

        // Acked for real: once the 10 s deadline of any unacked message has passed, nothing is left.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let left = drain_raw(&client, &sub, Duration::from_millis(500), false).await;
        assert!(left.is_empty(), "redelivered after ack: {left:?}");
    });
}

#[test]
fn round_trip_unary_pull() {
    round_trip(ReceiveMode::Pull);
}

#[test]
fn round_trip_streaming_pull() {
    round_trip(ReceiveMode::StreamingPull);
}

/// A sink that rejects every element makes the source nack: the messages come again.
#[test]
fn nack_leads_to_redelivery() {
    const N: usize = 50;
    let emu = start_emulator();
    runtime().block_on(async {
        let (client, topic, sub) = setup(&emu, SubscriptionOptions::default()).await;
        publish_raw(&client, &topic, "m", N).await;

        let source = PubsubSource::connect(&source_config(&emu, &sub))
            .await
            .expect("source");
        let stats = source.stats();
        let (reject, rejected_out) = CollectingSink::new();
        let p = Pipeline::new("reject");
        p.read("Read", source).write(
            "Reject",
            reject.rejecting(|_: &PubsubMessage| true),
            SinkConfig::default(),
        );
        let report = run_until(p, Duration::from_secs(30), || stats.nacked() >= N as u64)
            .await
            .expect("run");
        assert!(rejected_out.is_empty());
        assert!(report.sources[0].rejected >= N as u64);
        assert!(stats.nacked() >= N as u64);
        assert_eq!(stats.acked(), 0);

        // Second run: every message comes again and is delivered.
        let source = PubsubSource::connect(&source_config(&emu, &sub))
            .await
            .expect("source");
        let stats = source.stats();
        let (collect, out) = CollectingSink::new();
        let p = Pipeline::new("accept");
        p.read("Read", source)
            .write("Collect", collect, SinkConfig::default());
        run_until(p, Duration::from_secs(30), || stats.acked() >= N as u64)
            .await
            .expect("run");
        let mut got: Vec<String> = out
            .values()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        got.sort();
        got.dedup();
        let mut want: Vec<String> = (0..N).map(|i| format!("m-{i}")).collect();
        want.sort();
        assert_eq!(got, want);
    });
}

/// With a slow sink, the source never holds more than `max_outstanding_messages`.
#[test]
fn flow_control_bounds_outstanding_messages() {
    const N: usize = 400;
    const LIMIT: usize = 50;
    let emu = start_emulator();
    runtime().block_on(async {
        let (client, topic, sub) = setup(&emu, SubscriptionOptions::default()).await;
        publish_raw(&client, &topic, "f", N).await;
        let mut cfg = source_config(&emu, &sub);
        cfg.max_outstanding_messages = LIMIT;
        cfg.concurrent_pulls = 4;
        let source = PubsubSource::connect(&cfg).await.expect("source");
        let stats = source.stats();
        let (collect, out) = CollectingSink::new();
        let p = Pipeline::new("slow");
        p.read("Read", source).write(
            "Slow",
            collect.with_delay(Duration::from_millis(30)),
            SinkConfig {
                max_events: 10,
                max_in_flight: 1,
                ..Default::default()
            },
        );
        let max_seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s2, m2) = (stats.clone(), Arc::clone(&max_seen));
        run_until(p, Duration::from_secs(60), move || {
            m2.fetch_max(
                s2.outstanding_messages(),
                std::sync::atomic::Ordering::Relaxed,
            );
            s2.acked() >= N as u64
        })
        .await
        .expect("run");
        let mut got: Vec<String> = out
            .values()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..N).map(|i| format!("f-{i}")).collect();
        want.sort();
        assert_eq!(got, want);
        assert!(
            stats.peak_outstanding_messages() <= LIMIT as u64,
            "peak outstanding {} over the limit {LIMIT}",
            stats.peak_outstanding_messages()
        );
        assert!(max_seen.load(std::sync::atomic::Ordering::Relaxed) <= LIMIT as u64);
        // The limit was actually reached (the test exercises the bound).
        assert!(stats.peak_outstanding_messages() >= (LIMIT / 2) as u64);
    });
}

/// A message held longer than the subscription's ack deadline is not redelivered: the lease is extended.
#[test]
fn lease_extension_prevents_redelivery() {
    const N: usize = 5;
    let emu = start_emulator();
    runtime().block_on(async {
        let (client, topic, sub) = setup(
            &emu,
            SubscriptionOptions {
                ack_deadline_secs: 10,
                ..Default::default()
            },
        )
        .await;
        publish_raw(&client, &topic, "l", N).await;
        let mut cfg = source_config(&emu, &sub);
        cfg.ack_deadline_secs = 10;
        let source = PubsubSource::connect(&cfg).await.expect("source");
        let stats = source.stats();
        let (collect, out) = CollectingSink::new();
        let p = Pipeline::new("lease");
        p.read("Read", source).write(
            "Slow",
            collect.with_delay(Duration::from_secs(15)),
            SinkConfig {
                max_delay: Duration::from_millis(500),
                ..Default::default()
            },
        );
        run_until(p, Duration::from_secs(40), || stats.acked() >= N as u64)
            .await
            .expect("run");
        assert_eq!(out.len(), N);
        assert_eq!(stats.received(), N as u64, "a message was redelivered");
        assert!(stats.lease_extensions() >= N as u64);
        let left = drain_raw(&client, &sub, Duration::from_millis(500), false).await;
        assert!(left.is_empty(), "left after the run: {left:?}");
    });
}

/// Holds the sink's writes while the test re-creates the topic after an emulator restart (the emulator
/// is in memory), so a retry cannot land between the restart and the re-creation.
struct Gated<S> {
    inner: S,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl<S: Sink<PubsubOut>> Sink<PubsubOut> for Gated<S> {
    type Error = S::Error;

    async fn write(&self, batch: &SinkBatch<PubsubOut>) -> Result<(), WriteError<S::Error>> {
        let _open = self.gate.read().await;
        self.inner.write(batch).await
    }
}

/// The emulator stops mid-run: the sink retries and every message written after the restart arrives.
#[test]
fn sink_retries_across_emulator_restart() {
    const N: u64 = 300;
    let emu = Arc::new(std::sync::Mutex::new(start_emulator()));
    let (host, project) = {
        let e = emu.lock().expect("lock");
        (e.pubsub_host().expect("host"), e.project().to_string())
    };
    runtime().block_on(async {
        let client = PubsubClient::emulator(&host, &project)
            .await
            .expect("connect");
        let topic = unique("topic");
        let sub = unique("sub");
        client.create_topic(&topic).await.expect("topic");
        client
            .create_subscription(&sub, &topic, SubscriptionOptions::default())
            .await
            .expect("sub");
        let sink = PubsubSink::connect(&PubsubSinkConfig {
            project: Some(project.clone()),
            topic: topic.clone(),
            endpoint: Some(host.clone()),
            request_timeout_ms: 5000,
            ..Default::default()
        })
        .await
        .expect("sink");
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        // Batches of 10 with a pause after each: the run spans the outage.
        let p = Pipeline::with_config(PipelineConfig {
            name: "restart".into(),
            batch_size: 10,
            ..Default::default()
        });
        p.read(
            "Gen",
            GeneratorSource::new(N, |i| PubsubOut::new(format!("r-{i}")))
                .pause_every(10, Duration::from_millis(50)),
        )
        .write(
            "Publish",
            Gated {
                inner: sink,
                gate: Arc::clone(&gate),
            },
            SinkConfig {
                max_events: 10,
                max_delay: Duration::from_millis(5),
                max_in_flight: 2,
                retry: RetryConfig {
                    initial_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_millis(500),
                    max_retries: 100,
                },
                ..Default::default()
            },
        );
        let run = p.run(RunOptions::default());
        let chaos = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let e = Arc::clone(&emu);
            tokio::task::spawn_blocking(move || e.lock().expect("lock").stop(Service::PubSub))
                .await
                .expect("join")
                .expect("stop");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let closed = gate.write().await;
            let e = Arc::clone(&emu);
            tokio::task::spawn_blocking(move || e.lock().expect("lock").restart(Service::PubSub))
                .await
                .expect("join")
                .expect("restart");
            let client = PubsubClient::emulator(&host, &project)
                .await
                .expect("reconnect");
            client.create_topic(&topic).await.expect("re-create topic");
            client
                .create_subscription(&sub, &topic, SubscriptionOptions::default())
                .await
                .expect("re-create sub");
            drop(closed);
            client
        };
        let (report, client) = tokio::join!(run, chaos);
        let report = report.expect("run");
        assert_eq!(report.sinks[0].failed, 0, "no element given up: {report:?}");
        assert!(report.sinks[0].retries > 0, "the outage caused retries");
        let mut got: Vec<u64> = drain_raw(&client, &sub, Duration::from_secs(2), true)
            .await
            .iter()
            .map(|s| s.trim_start_matches("r-").parse().expect("index"))
            .collect();
        got.sort();
        got.dedup();
        // Everything written before the stop was lost with the in-memory emulator; everything after
        // the restart arrived, with no gap up to the last element.
        let first = *got.first().expect("messages after the restart");
        assert!(first > 0, "some messages were published before the stop");
        assert_eq!(got, (first..N).collect::<Vec<_>>());
    });
}

#[test]
fn config_errors_are_one_line() {
    // Names are checked before any connection.
    let bad = PubsubSourceConfig {
        project: Some("local-project".into()),
        subscription: "goog-sub".into(),
        endpoint: Some("127.0.0.1:1".into()),
        ..Default::default()
    };
    let e = bad.validate().expect_err("goog prefix");
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
    let bad = PubsubSourceConfig {
        subscription: "projects/local-project/subscriptions/1abc".into(),
        endpoint: Some("127.0.0.1:1".into()),
        ..Default::default()
    };
    assert!(bad
        .validate()
        .expect_err("digit")
        .to_string()
        .contains("start with a letter"));

    let emu = start_emulator();
    runtime().block_on(async {
        // Missing subscription and topic: NotFound with the command that creates them.
        let e = PubsubSource::connect(&source_config(&emu, "missing-sub"))
            .await
            .expect_err("missing subscription");
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::NotFound { .. }), "{msg}");
        assert!(
            msg.contains("gcloud pubsub subscriptions create missing-sub"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let e = PubsubSink::<PubsubOut>::connect(&sink_config(&emu, "missing-topic"))
            .await
            .expect_err("missing topic");
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e}");

        // Unreachable endpoint: a closed loopback port answers within a few seconds.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cfg = source_config(&emu, "any-sub");
        cfg.endpoint = Some(format!("127.0.0.1:{port}"));
        let started = Instant::now();
        let e = PubsubSource::connect(&cfg).await.expect_err("unreachable");
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Unreachable { .. }), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(6));
    });
}

/// Messages Pub/Sub would refuse are rejected one by one; the rest of the batch is published.
#[test]
fn sink_reports_per_message_failures() {
    let emu = start_emulator();
    runtime().block_on(async {
        let (client, topic, sub) = setup(&emu, SubscriptionOptions::default()).await;
        let sink = PubsubSink::<PubsubOut>::connect(&sink_config(&emu, &topic))
            .await
            .expect("sink");
        let mut too_many = PubsubOut::new("many");
        for i in 0..101 {
            too_many = too_many.with_attribute(format!("a{i}"), "v");
        }
        let batch = SinkBatch::from_values(vec![
            PubsubOut::new("ok-1"),
            PubsubOut::default(),
            too_many,
            PubsubOut::new(vec![b'x'; 9_500_000]),
            PubsubOut::new("ok-2"),
        ]);
        match sink.write(&batch).await {
            Err(WriteError::Partial(f)) => {
                let idx: Vec<usize> = f.iter().map(|(i, _)| *i).collect();
                assert_eq!(idx, vec![1, 2, 3]);
                assert!(f.iter().all(|(_, e)| !e.is_retriable()));
            }
            other => panic!("expected a partial failure, got {other:?}"),
        }
        let mut got = drain_raw(&client, &sub, Duration::from_secs(1), true).await;
        got.sort();
        assert_eq!(got, vec!["ok-1".to_string(), "ok-2".to_string()]);

        // A large batch is split under the 1,000-message / 10 MB request limits.
        let big: Vec<PubsubOut> = (0..2500)
            .map(|i| PubsubOut::new(format!("{i:05}-{}", "y".repeat(8000))))
            .collect();
        sink.write(&SinkBatch::from_values(big))
            .await
            .expect("split publish");
        let got = drain_raw(&client, &sub, Duration::from_secs(3), true).await;
        let distinct: std::collections::HashSet<_> =
            got.iter().map(|s| s[..5].to_string()).collect();
        assert_eq!(distinct.len(), 2500);
    });
}
