//! The invoices pipeline under hostile records, on the four emulators: records of about 1 MB full of
//! strings that are not UTF-8 (each an issue), mixed with valid invoices, processed by
//! `invoices::run_stream` with its metrics endpoint on, while a prober asks `/healthz` every 20 ms.
//! Prints the probe latencies (p50, p99, max) and the hostile bytes validated per second.
//!
//! Run: `cargo bench --bench hostile`. Sizes: `FLUXO_BENCH_HOSTILE` (hostile records, default 200),
//! `FLUXO_BENCH_HOSTILE_KIB` (their size, default 1,000 KiB, under the 1 MiB `max_record_bytes`, so
//! every one is parsed), `FLUXO_BENCH_HOSTILE_VALID` (valid invoices, default 5,000).

#[path = "common/ceiling.rs"]
#[allow(dead_code)]
mod ceiling;
#[path = "common/hostile.rs"]
mod hostile_records;

use std::time::{Duration, Instant};

use ceiling::env_count;
use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient};
use invoice_api::{Generator, GeneratorConfig};
use invoices::config::ConfigFile;
use invoices::RunSettings;

/// One `GET /healthz` from a plain blocking socket (like an external prober, outside the pipeline's
/// runtime): the time to a complete `200` answer, or `None` on an error, a non-200 or 5 s without one.
fn probe(addr: std::net::SocketAddr) -> Option<Duration> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    reply
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() {
    let hostile = env_count("HOSTILE", 200);
    let kib = env_count("HOSTILE_KIB", 1_000) as usize;
    let valid = env_count("HOSTILE_VALID", 5_000);
    let emulators = Emulators::start(&[
        Service::PubSub,
        Service::Bigtable,
        Service::Storage,
        Service::BigQuery,
    ])
    .expect("emulators");
    emulators.export_env();
    let project = emulators.project().to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let toml = format!(
            r#"[profiles.bench]
project = "{project}"
topic = "hostile"
subscription = "hostile-sub"
dead_letter_topic = "hostile-dead-letter"
bigtable_instance = "bench-instance"
bigtable_table = "hostile"
bigquery_dataset = "hostile"
archive_url = "gs://bench-hostile"
"#
        );
        let p = ConfigFile::parse(&toml, "bench")
            .and_then(|f| f.profile("bench", "bench"))
            .expect("profile");
        invoices::provision(&p).await.expect("provision");
        let client = PubsubClient::connect(Endpoint::pubsub(None).expect("endpoint"), &project)
            .await
            .expect("pubsub");
        let topic = client.topic_path(&p.topic).expect("topic");
        let g = Generator::new(GeneratorConfig {
            seed: 5,
            count: valid,
            ..GeneratorConfig::default()
        })
        .expect("generator");
        // Interleaved: one hostile record every valid/hostile valid ones.
        let every = (valid / hostile.max(1)).max(1);
        let mut batch: Vec<RawMessage> = Vec::new();
        let mut bytes = 0usize;
        let mut hostile_bytes = 0u64;
        let mut sent_hostile = 0u64;
        for id in 1..=valid.max(hostile * every) {
            let mut records = Vec::new();
            if id <= valid {
                records.push(g.record(id));
            }
            if id % every == 0 && sent_hostile < hostile {
                let r = hostile_records::hostile(kib * 1024, sent_hostile % 2 == 1, 1_000_000 + id);
                hostile_bytes += r.len() as u64;
                sent_hostile += 1;
                records.push(r);
            }
            for data in records {
                if bytes + data.len() > 8_000_000 {
                    client
                        .publish(PublishRequest {
                            topic: topic.clone(),
                            messages: std::mem::take(&mut batch),
                        })
                        .await
                        .expect("publish");
                    bytes = 0;
                }
                bytes += data.len();
                batch.push(RawMessage {
                    data: data.into(),
                    ..Default::default()
                });
            }
        }
        if !batch.is_empty() {
            client
                .publish(PublishRequest {
                    topic,
                    messages: batch,
                })
                .await
                .expect("publish");
        }
        println!(
            "hostile benchmark: {sent_hostile} hostile records of {kib} KiB ({:.1} MB) among {valid} valid invoices",
            hostile_bytes as f64 / 1e6
        );

        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr")
        };
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The prober is a thread of its own, outside the pipeline's runtime.
        let prober = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                // Wait for the endpoint to come up, then probe every 20 ms until the run ends.
                while probe(addr).is_none() && !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    match probe(addr) {
                        Some(d) => latencies.push(d),
                        None => failures += 1,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (latencies, failures)
            })
        };
        let report = invoices::run_stream(
            &p,
            &RunSettings {
                metrics_addr: Some(addr),
                exit_when_idle: Some(Duration::from_secs(3)),
                progress_every: Duration::from_secs(3600),
                ..RunSettings::default()
            },
            ShutdownSignal::never(),
        )
        .await
        .expect("run");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut latencies, failures) = prober.join().expect("prober");
        latencies.sort();
        let busy = report.seconds - 3.0;
        println!(
            "run: {} received, {} invoices, {} dead letters, {} nacked in {:.2} s (3 s of it idle): \
             {:.1} MB of hostile records validated at {:.1} MB/s overall",
            report.received,
            report.invoices,
            report.dead_letters,
            report.nacked,
            report.seconds,
            hostile_bytes as f64 / 1e6,
            hostile_bytes as f64 / 1e6 / busy.max(1e-3)
        );
        println!(
            "/healthz while processing: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {failures} failed",
            latencies.len(),
            quantile(&latencies, 0.5).as_secs_f64() * 1e3,
            quantile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    });
}
