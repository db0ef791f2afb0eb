//! Google's official `google-cloud-pubsub` crate against `gcloud-pubsub` (the crate `fluxo-gcp` builds
//! its Pub/Sub connector on) and against raw gRPC requests (the ceiling), on the real Pub/Sub
//! emulator, in one run and in alternating order:
//!
//! - publish `FLUXO_BENCH_PUBSUB_MESSAGES` (default 100,000) messages of 500 bytes: raw `Publish`
//!   requests of 1,000 messages, 4 in flight (the ceiling); the official `Publisher` with its default
//!   batching and with batches of 1,000 messages; `gcloud-pubsub`'s `Publisher` (4 workers, bundles of
//!   1,000);
//! - receive `FLUXO_BENCH_PUBSUB_STREAMING_MESSAGES` (default 10,000) by `StreamingPull`, acking every
//!   message: a raw stream with one `Acknowledge` per response (the ceiling); the official
//!   `Subscriber` (each message acked through its handler); `gcloud-pubsub`'s `subscribe` stream (each
//!   message acked by its own call, the library's API).
//!
//! The official crate has no unary `Pull` (its data-plane client is private and streams only), so
//! there is nothing of it to set against the unary pull the source uses on an emulator.
//!
//! Each measurement gets a fresh topic and subscription holding exactly its messages (the emulator
//! slows down on topics with a long history). `FLUXO_BENCH_ROUNDS` (default 2) rounds; odd rounds run
//! the clients in reverse order.
//!
//! Run (outside the workspace, its own lock file and target directory):
//! `cargo run --release --manifest-path benches/pubsub-clients/Cargo.toml`.

use std::future::Future;
use std::time::{Duration, Instant};

use emulators::{Emulators, Service};
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, PublishRequest, PubsubMessage as RawMessage, StreamingPullRequest,
};
use gcloud_pubsub::apiv1::conn_pool::{ConnectionManager, PUBSUB};
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use gcloud_pubsub::client::{Client as GcloudClient, ClientConfig};
use gcloud_pubsub::publisher::PublisherConfig;
use gcloud_pubsub::subscription::SubscriptionConfig;

const PAYLOAD: usize = 500;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn payload(i: u64) -> Vec<u8> {
    let mut v = format!("{{\"NFeID\":{i},\"ItemList\":[").into_bytes();
    v.resize(PAYLOAD - 2, b'x');
    v.extend_from_slice(b"]}");
    v
}

/// Messages per second of one timed run.
async fn rate<F: Future<Output = Result<u64, BoxError>>>(f: F) -> Result<f64, BoxError> {
    let started = Instant::now();
    let n = f.await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Bench {
    host: String,
    project: String,
    gcloud: GcloudClient,
    raw_publisher: PublisherClient<gcloud_gax::conn::Channel>,
    /// Keeps the raw publisher's connections open.
    _publisher_connections: ConnectionManager,
    raw_subscriber: SubscriberClient,
    fresh: u32,
}

impl Bench {
    async fn connect(host: &str, project: &str) -> Result<Bench, BoxError> {
        let environment = Environment::Emulator(host.to_string());
        let options = ConnectionOptions::default();
        let cm = || ConnectionManager::new(4, PUBSUB, &environment, &options);
        let gcloud = GcloudClient::new(ClientConfig {
            project_id: Some(project.to_string()),
            environment: Environment::Emulator(host.to_string()),
            ..ClientConfig::default()
        })
        .await?;
        let publisher_connections = cm().await?;
        Ok(Bench {
            host: host.to_string(),
            project: project.to_string(),
            gcloud,
            raw_publisher: PublisherClient::new(publisher_connections.conn()),
            _publisher_connections: publisher_connections,
            raw_subscriber: SubscriberClient::new(cm().await?, cm().await?),
            fresh: 0,
        })
    }

    fn topic_path(&self, id: &str) -> String {
        format!("projects/{}/topics/{id}", self.project)
    }

    fn subscription_path(&self, id: &str) -> String {
        format!("projects/{}/subscriptions/{id}", self.project)
    }

    /// A new topic and its subscription; the topic's id.
    async fn fresh_topic(&mut self, what: &str) -> Result<String, BoxError> {
        self.fresh += 1;
        let id = format!("{what}-{}", self.fresh);
        self.gcloud.create_topic(&id, None, None).await?;
        let config = SubscriptionConfig {
            ack_deadline_seconds: 60,
            ..SubscriptionConfig::default()
        };
        self.gcloud
            .create_subscription(&format!("{id}-sub"), &id, config, None)
            .await?;
        Ok(id)
    }

    /// Raw `Publish` requests of 1,000 messages, 4 in flight.
    async fn raw_publish(&self, topic: &str, n: u64) -> Result<u64, BoxError> {
        let topic = self.topic_path(topic);
        let mut in_flight = tokio::task::JoinSet::new();
        for a in (0..n).step_by(1000) {
            if in_flight.len() >= 4 {
                in_flight.join_next().await.expect("a task")??;
            }
            let req = PublishRequest {
                topic: topic.clone(),
                messages: (a..(a + 1000).min(n))
                    .map(|i| RawMessage {
                        data: payload(i).into(),
                        ..RawMessage::default()
                    })
                    .collect(),
            };
            let client = self.raw_publisher.clone();
            in_flight.spawn(async move { client.clone().publish(req).await.map(|_| ()) });
        }
        while let Some(r) = in_flight.join_next().await {
            r??;
        }
        Ok(n)
    }

    /// The official `Publisher`: `batch` = None for its defaults, else messages per request.
    async fn official_publish(
        &self,
        topic: &str,
        n: u64,
        batch: Option<u32>,
    ) -> Result<u64, BoxError> {
        let mut builder = google_cloud_pubsub::client::Publisher::builder(self.topic_path(topic))
            .with_endpoint(format!("http://{}", self.host))
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        if let Some(b) = batch {
            builder = builder
                .set_message_count_threshold(b)
                .set_byte_threshold(9_000_000)
                .set_delay_threshold(Duration::from_millis(10));
        }
        let publisher = builder.build().await?;
        let futures: Vec<_> = (0..n)
            .map(|i| {
                publisher.publish(google_cloud_pubsub::model::Message::new().set_data(payload(i)))
            })
            .collect();
        for f in futures {
            f.await?;
        }
        Ok(n)
    }

    /// `gcloud-pubsub`'s `Publisher`: 4 workers, bundles of 1,000, flushed every 10 ms.
    async fn gcloud_publish(&self, topic: &str, n: u64) -> Result<u64, BoxError> {
        let mut publisher = self
            .gcloud
            .topic(topic)
            .new_publisher(Some(PublisherConfig {
                workers: 4,
                flush_interval: Duration::from_millis(10),
                bundle_size: 1000,
                retry_setting: None,
            }));
        let mut awaiters = Vec::with_capacity(n as usize);
        for a in (0..n).step_by(1000) {
            let msgs = (a..(a + 1000).min(n))
                .map(|i| RawMessage {
                    data: payload(i).into(),
                    ..RawMessage::default()
                })
                .collect();
            awaiters.extend(publisher.publish_bulk(msgs).await);
        }
        for a in awaiters {
            a.get().await?;
        }
        publisher.shutdown().await;
        Ok(n)
    }

    /// A raw `StreamingPull` stream, one `Acknowledge` per response.
    async fn raw_streaming(&self, sub: &str, n: u64) -> Result<u64, BoxError> {
        let subscription = self.subscription_path(sub);
        let req = StreamingPullRequest {
            subscription: subscription.clone(),
            stream_ack_deadline_seconds: 60,
            max_outstanding_messages: 1000,
            ..StreamingPullRequest::default()
        };
        let mut stream = self
            .raw_subscriber
            .streaming_pull(req, Duration::from_secs(10), None)
            .await?
            .into_inner();
        let mut got = 0;
        while got < n {
            let Some(resp) = stream.message().await? else {
                return Err("stream ended early".into());
            };
            got += resp.received_messages.len() as u64;
            let ack_ids = resp
                .received_messages
                .into_iter()
                .map(|m| m.ack_id)
                .collect();
            self.raw_subscriber
                .acknowledge(
                    AcknowledgeRequest {
                        subscription: subscription.clone(),
                        ack_ids,
                    },
                    None,
                )
                .await?;
        }
        Ok(got)
    }

    /// The official `Subscriber`, every message acked through its handler.
    async fn official_streaming(&self, sub: &str, n: u64) -> Result<u64, BoxError> {
        let subscriber = google_cloud_pubsub::client::Subscriber::builder()
            .with_endpoint(format!("http://{}", self.host))
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await?;
        let mut stream = subscriber
            .subscribe(self.subscription_path(sub))
            .set_max_outstanding_messages(1000)
            .build();
        let mut got = 0;
        while got < n {
            let Some(next) = stream.next().await else {
                return Err("stream ended early".into());
            };
            let (_message, handler) = next?;
            handler.ack();
            got += 1;
        }
        Ok(got)
    }

    /// `gcloud-pubsub`'s `subscribe` stream, every message acked by its own call.
    async fn gcloud_streaming(&self, sub: &str, n: u64) -> Result<u64, BoxError> {
        use futures::StreamExt;
        let mut stream = self.gcloud.subscription(sub).subscribe(None).await?;
        let mut got = 0;
        while got < n {
            let Some(m) = stream.next().await else {
                return Err("stream ended early".into());
            };
            m.ack().await?;
            got += 1;
        }
        Ok(got)
    }
}

fn row(what: &str, rate: f64, ceiling: f64) {
    println!(
        "| {what} | {rate:.0} | {ceiling:.0} | {:.0}% |",
        100.0 * rate / ceiling
    );
}

fn main() -> Result<(), BoxError> {
    let n = env_count("FLUXO_BENCH_PUBSUB_MESSAGES", 100_000);
    let n_stream = env_count("FLUXO_BENCH_PUBSUB_STREAMING_MESSAGES", 10_000);
    let rounds = env_count("FLUXO_BENCH_ROUNDS", 2);
    let emu = Emulators::start(&[Service::PubSub])?;
    let host = emu.pubsub_host().ok_or("no emulator host")?;
    let project = emu.project().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = Bench::connect(&host, &project).await?;
        // Warm the emulator's JIT on both paths.
        let t = b.fresh_topic("warm").await?;
        b.raw_publish(&t, 20_000).await?;
        b.raw_streaming(&format!("{t}-sub"), 2_000).await?;

        println!("\nPub/Sub emulator, {n} messages of {PAYLOAD} bytes to publish, {n_stream} to receive by StreamingPull, {rounds} rounds\n");
        println!("| client | msgs/s | raw ceiling of the round (msgs/s) | ratio |");
        println!("|---|---:|---:|---:|");
        for round in 0..rounds {
            println!("| *round {} (load {})* | | | |", round + 1, load());
            // Publish: the ceiling first, then the clients in alternating order.
            let t = b.fresh_topic("raw-pub").await?;
            let ceiling = rate(b.raw_publish(&t, n)).await?;
            row("raw `Publish` x1000, 4 in flight (ceiling)", ceiling, ceiling);
            let mut order = vec![0, 1, 2];
            if round % 2 == 1 {
                order.reverse();
            }
            for which in &order {
                let t = b.fresh_topic("pub").await?;
                let (name, r) = match which {
                    0 => (
                        "official `Publisher`, default batching",
                        rate(b.official_publish(&t, n, None)).await?,
                    ),
                    1 => (
                        "official `Publisher`, 1,000 per request",
                        rate(b.official_publish(&t, n, Some(1000))).await?,
                    ),
                    _ => (
                        "`gcloud-pubsub` `Publisher`, 4 workers, 1,000 per bundle",
                        rate(b.gcloud_publish(&t, n)).await?,
                    ),
                };
                row(name, r, ceiling);
            }
            // Receive by StreamingPull.
            let t = b.fresh_topic("raw-stream").await?;
            b.raw_publish(&t, n_stream).await?;
            let ceiling = rate(b.raw_streaming(&format!("{t}-sub"), n_stream)).await?;
            row("raw `StreamingPull` + `Acknowledge` per response (ceiling)", ceiling, ceiling);
            let mut order = vec![0, 1];
            if round % 2 == 1 {
                order.reverse();
            }
            for which in &order {
                let t = b.fresh_topic("stream").await?;
                b.raw_publish(&t, n_stream).await?;
                let sub = format!("{t}-sub");
                let (name, r) = match which {
                    0 => (
                        "official `Subscriber`, handler ack per message",
                        rate(b.official_streaming(&sub, n_stream)).await?,
                    ),
                    _ => (
                        "`gcloud-pubsub` `subscribe`, ack call per message",
                        rate(b.gcloud_streaming(&sub, n_stream)).await?,
                    ),
                };
                row(name, r, ceiling);
            }
        }
        Ok::<(), BoxError>(())
    })?;
    drop(emu);
    Ok(())
}
