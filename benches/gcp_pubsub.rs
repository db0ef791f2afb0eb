//! Pub/Sub connector benchmark against the real emulator, in one run:
//!
//! - publish: raw `Publish` requests of 1,000 messages, 4 in flight (the ceiling) vs a generated source
//!   -> `PubsubSink` pipeline (1,000 events per batch, 4 in flight);
//! - receive: raw unary `Pull(1000)` + `Acknowledge` loop (the ceiling) vs `PubsubSource` (unary pull,
//!   `FLUXO_BENCH_PUBSUB_PULLS` concurrent pulls, a comma list, default `1`) -> `DiscardSink`, every
//!   message acked end to end, once with the sink batching the invoices pipeline gives its Bigtable
//!   sink (1,000 elements or 100 ms) and once without a sink delay; each run is reported against both
//!   ceiling samples of the run, and the batching runs also against two samples of the same raw loop
//!   holding its acks as that sink does (ack after 1,000 messages or 100 ms);
//! - streaming: raw `StreamingPull` + `Acknowledge` (its own ceiling, fewer messages: the emulator's
//!   streaming pull is slow) vs `PubsubSource` in `streaming_pull` mode.
//!
//! Messages are ~500 bytes (an invoice-sized JSON payload). Counts: `FLUXO_BENCH_PUBSUB_MESSAGES`
//! (default 200,000) and `FLUXO_BENCH_PUBSUB_STREAMING_MESSAGES` (default 20,000); the source's
//! `ack_batch_size` and `max_outstanding_messages` with `FLUXO_BENCH_PUBSUB_ACK_BATCH` and
//! `FLUXO_BENCH_PUBSUB_MAX_OUTSTANDING` (defaults 1,000 and 10,000).
//!
//! Run: `cargo bench --bench gcp_pubsub`.

#[path = "common/ceiling.rs"]
mod ceiling;
#[path = "common/pubsub.rs"]
mod pubsub_ceiling;

use std::time::{Duration, Instant};

use ceiling::{env_count, print_header, print_row, Measured};
use emulators::{Emulators, Service};
use fluxo::testing::{DiscardSink, GeneratorSource};
use fluxo::{Pipeline, PipelineConfig, RunOptions, Shutdown, SinkConfig};
use fluxo_gcp::pubsub::raw::proto::{
    AcknowledgeRequest, PublishRequest, PubsubMessage as RawMessage, StreamingPullRequest,
};
use fluxo_gcp::pubsub::{
    PubsubClient, PubsubOut, PubsubSink, PubsubSinkConfig, PubsubSource, PubsubSourceConfig,
    ReceiveMode, SubscriptionOptions,
};
use pubsub_ceiling::{raw_pull, raw_pull_held_acks};

const PAYLOAD: usize = 500;

fn payload(i: u64) -> Vec<u8> {
    let mut v = format!("{{\"NFeID\":{i},\"ItemList\":[").into_bytes();
    v.resize(PAYLOAD - 2, b'x');
    v.extend_from_slice(b"]}");
    v
}

async fn raw_publish(client: &PubsubClient, topic: &str, n: u64) -> Measured {
    let topic = client.topic_path(topic).expect("topic path");
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for a in (0..n).step_by(1000) {
        if in_flight.len() >= 4 {
            in_flight.join_next().await.expect("task").expect("join");
        }
        let req = PublishRequest {
            topic: topic.clone(),
            messages: (a..(a + 1000).min(n))
                .map(|i| RawMessage {
                    data: payload(i).into(),
                    ..Default::default()
                })
                .collect(),
        };
        let client = client.clone();
        in_flight.spawn(async move {
            client.publish(req).await.expect("publish");
        });
    }
    while let Some(r) = in_flight.join_next().await {
        r.expect("join");
    }
    Measured {
        items: n,
        elapsed: started.elapsed(),
    }
}

async fn raw_streaming(client: &PubsubClient, sub: &str, n: u64) -> Measured {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let started = Instant::now();
    let req = StreamingPullRequest {
        subscription: subscription.clone(),
        stream_ack_deadline_seconds: 60,
        max_outstanding_messages: 10_000,
        ..Default::default()
    };
    let mut s = client
        .subscriber()
        .streaming_pull(req, Duration::from_secs(10), None)
        .await
        .expect("streaming pull")
        .into_inner();
    let mut got = 0u64;
    while got < n {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(10), s.message()).await else {
            eprintln!("  raw streaming pull stalled after {got} messages");
            break;
        };
        let Some(resp) = next.expect("stream") else {
            break;
        };
        got += resp.received_messages.len() as u64;
        let ack_ids = resp
            .received_messages
            .into_iter()
            .map(|m| m.ack_id)
            .collect();
        client
            .subscriber()
            .acknowledge(
                AcknowledgeRequest {
                    subscription: subscription.clone(),
                    ack_ids,
                },
                None,
            )
            .await
            .expect("ack");
    }
    Measured {
        items: got,
        elapsed: started.elapsed(),
    }
}

async fn connector_sink(host: &str, project: &str, topic: &str, n: u64) -> Measured {
    let sink = PubsubSink::connect(&PubsubSinkConfig {
        project: Some(project.into()),
        topic: topic.into(),
        endpoint: Some(host.into()),
        ..Default::default()
    })
    .await
    .expect("sink");
    let p = Pipeline::with_config(PipelineConfig {
        name: "bench-publish".into(),
        ..Default::default()
    });
    p.read(
        "Gen",
        GeneratorSource::new(n, |i| PubsubOut::new(payload(i))),
    )
    .write(
        "Publish",
        sink,
        SinkConfig {
            max_events: 1000,
            max_bytes: 9_000_000,
            max_in_flight: 4,
            ..Default::default()
        },
    );
    let started = Instant::now();
    let report = p.run(RunOptions::default()).await.expect("run");
    assert_eq!(report.sinks[0].written, n);
    Measured {
        items: n,
        elapsed: started.elapsed(),
    }
}

/// The sink of the receive runs: either the batching the invoices pipeline really gives its Bigtable
/// sink (`invoices::config::Tuning::default().bigtable_batch()`: 1,000 elements or 100 ms), or none
/// (each batch written at once). Held acks make every pull the emulator serves slower (it copies
/// its backlog while acks are outstanding), so the batching runs are also compared with a raw loop
/// that holds its acks the same way.
fn receive_sink(pipeline_batching: bool) -> SinkConfig {
    if pipeline_batching {
        invoices::config::Tuning::default().bigtable_batch()
    } else {
        SinkConfig {
            max_events: 1000,
            max_delay: Duration::ZERO,
            ..Default::default()
        }
    }
}

async fn connector_source(cfg: PubsubSourceConfig, n: u64, sink: SinkConfig) -> Measured {
    let source = PubsubSource::connect(&cfg).await.expect("source");
    let stats = source.stats();
    let p = Pipeline::new("bench-read");
    p.read("Read", source).write("Discard", DiscardSink, sink);
    let shutdown = Shutdown::new();
    let run = p.run(RunOptions {
        shutdown: shutdown.signal(),
        ..Default::default()
    });
    let started = Instant::now();
    let watch = async {
        // Stop early when nothing moves for 15 s (reported by the stats line).
        let (mut last, mut since) = (0, Instant::now());
        while stats.acked() < n && since.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if stats.acked() != last {
                (last, since) = (stats.acked(), Instant::now());
            }
        }
        let elapsed = started.elapsed();
        shutdown.trigger();
        elapsed
    };
    let (report, elapsed) = tokio::join!(run, watch);
    report.expect("run");
    eprintln!(
        "  source stats: received {} in {} pulls ({} empty, {} errors, last {:?}), acked {}, nacked {}, ack errors {}, peak outstanding {}",
        stats.received(),
        stats.pulls(),
        stats.empty_pulls(),
        stats.pull_errors(),
        stats.last_pull_error(),
        stats.acked(),
        stats.nacked(),
        stats.ack_errors(),
        stats.peak_outstanding_messages()
    );
    Measured {
        items: stats.acked(),
        elapsed,
    }
}

fn main() {
    let n = env_count("PUBSUB_MESSAGES", 200_000);
    let n_stream = env_count("PUBSUB_STREAMING_MESSAGES", 20_000);
    let emu = Emulators::start(&[Service::PubSub]).expect("start the Pub/Sub emulator");
    let host = emu.pubsub_host().expect("host");
    let project = emu.project().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = PubsubClient::emulator(&host, &project)
            .await
            .expect("connect");
        for t in [
            "bench-publish-raw",
            "bench-publish-sink",
            "bench-pull",
            "bench-stream",
            "bench-stream2",
        ] {
            client.create_topic(t).await.expect("topic");
        }
        let opts = SubscriptionOptions {
            ack_deadline_secs: 60,
            ..Default::default()
        };
        client
            .create_subscription("bench-pull-sub", "bench-pull", opts.clone())
            .await
            .expect("sub");
        client
            .create_subscription("bench-stream-sub", "bench-stream", opts.clone())
            .await
            .expect("sub");
        // A second subscription for the connector: the emulator keeps dispatching to a closed raw
        // stream for a while, which would starve a new stream on the same subscription.
        client
            .create_subscription("bench-stream2-sub", "bench-stream2", opts)
            .await
            .expect("sub");

        // Warm up the emulator (JIT) on both paths.
        raw_publish(&client, "bench-publish-raw", 20_000).await;
        raw_publish(&client, "bench-pull", 20_000).await;
        raw_pull(&client, "bench-pull-sub", 20_000).await;

        println!("\nPub/Sub emulator, {n} messages of {PAYLOAD} bytes (streaming: {n_stream})\n");
        print_header("msgs");
        let raw = raw_publish(&client, "bench-publish-raw", n).await;
        let conn = connector_sink(&host, &project, "bench-publish-sink", n).await;
        print_row("publish: PubsubSink (1000/batch, 4 in flight)", raw, conn);

        // Every receive measurement gets a fresh topic and subscription holding exactly the messages
        // it reads: the emulator slows down on topics with a long history (measured: the raw loop
        // fell from 57,333 to 1,113 msgs/s when re-run on the same subscription).
        let fresh = |name: String| {
            let client = client.clone();
            async move {
                client.create_topic(&name).await.expect("topic");
                let sub = format!("{name}-sub");
                client
                    .create_subscription(
                        &sub,
                        &name,
                        SubscriptionOptions {
                            ack_deadline_secs: 60,
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("sub");
                raw_publish(&client, &name, n).await;
                sub
            }
        };
        let sub = fresh("bench-raw-1".into()).await;
        let raw = raw_pull(&client, &sub, n).await;
        // The same loop holding its acks as the pipeline's sink batching does: the ceiling of the
        // batching runs (against the emulator, pulls made while acks are held cost more).
        let batch_cfg = receive_sink(true);
        let held = |name: &'static str| {
            let fresh = &fresh;
            let client = client.clone();
            async move {
                let sub = fresh(name.into()).await;
                raw_pull_held_acks(&client, &sub, n, batch_cfg.max_events, batch_cfg.max_delay)
                    .await
            }
        };
        let held_1 = held("bench-raw-held-1").await;
        let pulls_list = std::env::var("FLUXO_BENCH_PUBSUB_PULLS").unwrap_or_else(|_| "1".into());
        let mut connectors: Vec<(String, Measured)> = Vec::new();
        for pulls in pulls_list
            .split(',')
            .filter_map(|p| p.trim().parse::<usize>().ok())
        {
            let cfg = PubsubSourceConfig {
                project: Some(project.clone()),
                subscription: String::new(),
                endpoint: Some(host.clone()),
                concurrent_pulls: pulls,
                ack_batch_size: env_count("PUBSUB_ACK_BATCH", 1000) as usize,
                max_outstanding_messages: env_count("PUBSUB_MAX_OUTSTANDING", 10_000) as usize,
                ..Default::default()
            };
            for (batching, name) in [(true, "pipeline's sink batching"), (false, "no sink delay")] {
                let sub = fresh(format!("bench-conn-{pulls}-{batching}")).await;
                let cfg = PubsubSourceConfig {
                    subscription: sub,
                    ..cfg.clone()
                };
                let conn = connector_source(cfg, n, receive_sink(batching)).await;
                connectors.push((format!("receive: PubsubSource pull x{pulls}, {name}"), conn));
            }
        }
        let sub = fresh("bench-raw-2".into()).await;
        let raw_again = raw_pull(&client, &sub, n).await;
        let held_2 = held("bench-raw-held-2").await;
        // Every connector run against every ceiling sample of this run (the emulator's own pace
        // drifts between samples); the batching runs also against the loop that holds its acks.
        for (name, conn) in &connectors {
            print_row(&format!("{name} (vs ceiling sample 1)"), raw, *conn);
            print_row(&format!("{name} (vs ceiling sample 2)"), raw_again, *conn);
            if name.contains("sink batching") {
                print_row(&format!("{name} (vs held-acks ceiling 1)"), held_1, *conn);
                print_row(&format!("{name} (vs held-acks ceiling 2)"), held_2, *conn);
            }
        }
        print_row(
            "receive: raw pull loop again (fresh topic) vs the first",
            raw,
            raw_again,
        );
        print_row(
            "receive: raw loop holding acks (1,000 / 100 ms) vs the plain loop",
            raw,
            held_1,
        );

        raw_publish(&client, "bench-stream", n_stream).await;
        let raw_s = raw_streaming(&client, "bench-stream-sub", n_stream).await;
        raw_publish(&client, "bench-stream2", n_stream).await;
        let cfg = PubsubSourceConfig {
            project: Some(project.clone()),
            subscription: "bench-stream2-sub".into(),
            endpoint: Some(host.clone()),
            mode: ReceiveMode::StreamingPull,
            concurrent_pulls: 1,
            ..Default::default()
        };
        let conn = connector_source(cfg, n_stream, receive_sink(true)).await;
        print_row(
            "receive: PubsubSource streaming x1 vs raw streaming pull",
            raw_s,
            conn,
        );
        print_row(
            "receive: PubsubSource streaming x1 vs raw unary pull",
            raw,
            conn,
        );
    });
}
