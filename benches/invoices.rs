//! End-to-end benchmark of the `invoices` pipeline on the four emulators, each result next to the
//! emulators' own ceilings measured in the same run with the same data by raw client loops:
//!
//! 1. ceilings: Pub/Sub `Pull(1000)`+ack, Bigtable `MutateRows` of the pipeline's own rows, BigQuery
//!    `insertAll` of the pipeline's own rows, Cloud Storage uploads; each converted to invoices/s;
//! 2. the whole pipeline (`invoices::run_stream`) over a backlog, against the lowest ceiling;
//! 3. the core path Pub/Sub -> validate/enrich -> Bigtable only;
//! 4. a replay of a raw archive on `file://` into Bigtable only, against the Bigtable ceiling;
//! 5. publish-to-Bigtable latency of the whole pipeline at a fixed moderate publish rate;
//! 6. peak RSS of a worker process doing the same work over a small and a large backlog.
//!
//! Run: `cargo bench --bench invoices`. Sizes: `FLUXO_BENCH_INVOICES` (default 50,000),
//! `FLUXO_BENCH_INVOICES_REPLAY` (100,000), `FLUXO_BENCH_INVOICES_RATE` (latency run, invoices/s,
//! 1,000), `FLUXO_BENCH_INVOICES_RSS` (large backlog of the RSS run, 200,000),
//! `FLUXO_BENCH_INVOICES_REPLAY_ROUNDS` (5). Tuning of the profile
//! (`docs/invoices.md`): `FLUXO_BENCH_INVOICES_TUNING="processed_archive = false; bigquery_batch_rows = 4000"`.
//! Only some phases: `FLUXO_BENCH_INVOICES_PHASES=whole,core` (of `whole,core,replay,latency,rss`).

#[path = "common/ceiling.rs"]
#[allow(dead_code)]
mod ceiling;
#[path = "common/pubsub.rs"]
mod pubsub_ceiling;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ceiling::{env_count, Measured};
use emulators::{Emulators, Service};
use fluxo::testing::DiscardSink;
use fluxo::{Pipeline, PipelineConfig, RunOptions, Shutdown, ShutdownSignal, SinkConfig};
use fluxo_gcp::bigtable::raw::bigtable::BigTableConnection;
use fluxo_gcp::bigtable::raw::google::bigtable::v2::MutateRowsRequest;
use fluxo_gcp::bigtable::{BigtableSink, RowMutation};
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, PubsubSource, PubsubSourceConfig};
use fluxo_gcp::storage::{
    gzip, Location, Record, StorageSource, StorageSourceConfig, Store, StoreOptions,
};
use invoice_api::{Generator, GeneratorConfig};
use invoices::config::{ConfigFile, Profile};
use invoices::graph::{self, ArchivedMessage, Validate, ValidateArchived};
use invoices::RunSettings;
use pubsub_ceiling::raw_pull;

const CHILD_ENV: &str = "FLUXO_BENCH_INVOICES_CHILD";

fn profile(project: &str, name: &str, archive: &str) -> Profile {
    let toml = format!(
        r#"[profiles.bench]
project = "{project}"
topic = "{name}"
subscription = "{name}-sub"
dead_letter_topic = "{name}-dead-letter"
bigtable_instance = "bench-instance"
bigtable_table = "{name}"
bigquery_dataset = "{name}"
archive_url = "{archive}"
[profiles.bench.tuning]
{tuning}
"#,
        tuning = std::env::var("FLUXO_BENCH_INVOICES_TUNING")
            .unwrap_or_default()
            .replace(';', "\n")
    );
    ConfigFile::parse(&toml, "bench")
        .and_then(|f| f.profile("bench", "bench"))
        .expect("bench profile")
}

fn generator(count: u64, seed: u64) -> Generator {
    Generator::new(GeneratorConfig {
        seed,
        count,
        ..GeneratorConfig::default()
    })
    .expect("generator")
}

async fn pubsub(project: &str) -> PubsubClient {
    PubsubClient::connect(Endpoint::resolve(None).expect("endpoint"), project)
        .await
        .expect("pubsub client")
}

/// Publishes records 1..=n of `g`, 1,000 per request, 4 requests in flight.
async fn publish(client: &PubsubClient, topic: &str, g: &Generator) {
    let topic = client.topic_path(topic).expect("topic");
    let mut tasks = tokio::task::JoinSet::new();
    let mut id = 1;
    while id <= g.count() {
        let end = (id + 1000).min(g.count() + 1);
        let messages: Vec<RawMessage> = (id..end)
            .map(|i| RawMessage {
                data: g.record(i).into(),
                ..Default::default()
            })
            .collect();
        id = end;
        if tasks.len() >= 4 {
            tasks.join_next().await;
        }
        let (c, topic) = (client.clone(), topic.clone());
        tasks.spawn(async move {
            c.publish(PublishRequest { topic, messages })
                .await
                .expect("publish");
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Publishes at `rate` records per second (in 20 ms slices) for `n` records.
async fn publish_at(client: &PubsubClient, topic: &str, g: &Generator, rate: u64) {
    let topic = client.topic_path(topic).expect("topic");
    let per_slice = (rate / 50).max(1);
    let started = Instant::now();
    let mut id = 1;
    let mut slice = 0u32;
    while id <= g.count() {
        let end = (id + per_slice).min(g.count() + 1);
        let messages = (id..end)
            .map(|i| RawMessage {
                data: g.record(i).into(),
                ..Default::default()
            })
            .collect();
        id = end;
        client
            .publish(PublishRequest {
                topic: topic.clone(),
                messages,
            })
            .await
            .expect("publish");
        slice += 1;
        let due = started + Duration::from_millis(20) * slice;
        tokio::time::sleep_until(due.into()).await;
    }
}

/// The valid invoices of `g`.
fn invoices_of(g: &Generator) -> Vec<nfe::Invoice> {
    let v = nfe::ValidationConfig::default().build().expect("validator");
    (1..=g.count())
        .filter_map(|i| v.process(&g.record(i)).ok())
        .collect()
}

/// Raw `MutateRows` of the given rows, 1,000 per request, 8 in flight (the sink's defaults).
async fn raw_bigtable(p: &Profile, rows: Vec<RowMutation>) -> Measured {
    let host = std::env::var("BIGTABLE_EMULATOR_HOST").expect("BIGTABLE_EMULATOR_HOST");
    let conn = BigTableConnection::new_with_emulator(
        &host,
        &p.project,
        &p.bigtable_instance,
        false,
        2,
        Some(Duration::from_secs(60)),
    )
    .expect("connection");
    let client = conn.client();
    let table_name = client.get_full_table_name(&p.bigtable_table);
    let total = rows.len() as u64;
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for chunk in rows.chunks(1000) {
        let req = MutateRowsRequest {
            table_name: table_name.clone(),
            entries: chunk.iter().map(RowMutation::to_entry).collect(),
            ..MutateRowsRequest::default()
        };
        if pending.len() >= 8 {
            pending.join_next().await;
        }
        let mut c = client.clone();
        pending.spawn(async move {
            let mut stream = c.mutate_rows(req).await.expect("MutateRows");
            while let Some(msg) = stream.message().await.expect("response") {
                assert!(msg
                    .entries
                    .iter()
                    .all(|e| !matches!(&e.status, Some(s) if s.code != 0)));
            }
        });
    }
    while pending.join_next().await.is_some() {}
    Measured {
        items: total,
        elapsed: started.elapsed(),
    }
}

/// Raw `insertAll` of the given rows, 500 per request, 4 in flight (the sink's defaults).
async fn raw_bigquery(p: &Profile, rows: Vec<fluxo_gcp::bigquery::TableRow>) -> Measured {
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").expect("BIGQUERY_EMULATOR_HOST");
    let http = fluxo_gcp::bigquery::raw::reqwest::Client::new();
    let total = rows.len() as u64;
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    // One table per request, as the sink sends them.
    let (head, items): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.table() == Some("invoices"));
    for chunk in head.chunks(500).chain(items.chunks(500)) {
        let table = chunk[0].table().unwrap_or("invoices").to_string();
        let url = format!(
            "http://{host}/bigquery/v2/projects/{}/datasets/{}/tables/{table}/insertAll",
            p.project, p.bigquery_dataset
        );
        let mut body = Vec::with_capacity(chunk.len() * 600);
        body.extend_from_slice(br#"{"skipInvalidRows":true,"rows":["#);
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let _ = write!(
                body,
                r#"{{"insertId":"{}","json":"#,
                r.insert_id().unwrap_or("")
            );
            body.extend_from_slice(r.json());
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        if pending.len() >= 4 {
            pending.join_next().await;
        }
        let http = http.clone();
        pending.spawn(async move {
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("insertAll");
            assert!(resp.status().is_success(), "insertAll {}", resp.status());
        });
    }
    while pending.join_next().await.is_some() {}
    Measured {
        items: total,
        elapsed: started.elapsed(),
    }
}

/// Raw uploads of `objects` objects of `size` bytes, 4 in flight.
async fn raw_storage(url: &str, objects: u64, size: usize) -> Measured {
    let store = Store::open(
        &Location::parse(url, "url").expect("url"),
        StoreOptions::default(),
    )
    .await
    .expect("store");
    let body = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..objects {
        if pending.len() >= 4 {
            pending.join_next().await;
        }
        let (store, body) = (store.clone(), body.clone());
        pending.spawn(async move {
            store
                .put(
                    &format!("ceiling/obj-{i:05}"),
                    body,
                    "application/octet-stream",
                )
                .await
                .expect("upload");
        });
    }
    while pending.join_next().await.is_some() {}
    Measured {
        items: objects * size as u64,
        elapsed: started.elapsed(),
    }
}

/// Bytes written to the archive per invoice in a finished run (raw + processed + dead letters).
async fn archive_bytes(p: &Profile) -> u64 {
    let store = Store::open(
        &Location::parse(&p.archive_url, "url").expect("url"),
        StoreOptions::default(),
    )
    .await
    .expect("store");
    let mut total = 0;
    for prefix in ["raw/", "raw-late/", "processed/", "dead-letter/"] {
        for o in store.list(prefix).await.expect("list") {
            total += o.size;
        }
    }
    total
}

fn validate_step() -> Validate {
    // The pipeline's own rules (validation defaults, the poison-message guard at its default).
    Validate::new(
        nfe::Intake::new(
            nfe::ValidationConfig::default().build().expect("validator"),
            Some(9),
        ),
        None,
        None,
    )
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn bigtable_batch() -> SinkConfig {
    SinkConfig {
        max_events: 1000,
        max_delay: Duration::from_millis(100),
        max_in_flight: 8,
        ..SinkConfig::default()
    }
}

/// The pipeline's validation output -> row step -> Bigtable, dead letters discarded.
fn validated_into_bigtable(
    validated: fluxo::Tagged<Arc<nfe::Invoice>, Arc<nfe::DeadLetter>>,
    layout: nfe::BigtableLayout,
    sink: BigtableSink,
) {
    validated
        .main
        .parallel(threads())
        .flat_map("BigtableRows", move |inv: Arc<nfe::Invoice>| {
            graph::bigtable_mutations(&layout, &inv)
        })
        .write("Bigtable", sink, bigtable_batch());
    validated
        .dead_letters
        .write("Dead", DiscardSink, SinkConfig::default());
}

/// Pub/Sub -> Validate -> Bigtable (dead letters discarded): invoices per second until `n` acked.
async fn core_path(p: &Profile, n: u64) -> (Measured, u64) {
    let source = PubsubSource::connect(&PubsubSourceConfig {
        project: Some(p.project.clone()),
        subscription: p.subscription.clone(),
        concurrent_pulls: 2,
        max_outstanding_messages: 20_000,
        ..PubsubSourceConfig::default()
    })
    .await
    .expect("source");
    let stats = source.stats();
    let sink = BigtableSink::connect(&invoices::bigtable_settings(p))
        .await
        .expect("bigtable");
    let pipeline = Pipeline::with_config(PipelineConfig {
        name: "core".into(),
        ..PipelineConfig::default()
    });
    let validated = pipeline
        .read("Pubsub", source)
        .parallel(threads())
        .par_do("Validate", validate_step());
    validated_into_bigtable(validated, p.layout, sink);
    let stop = Shutdown::new();
    let signal = stop.signal();
    let started = Instant::now();
    let watcher = tokio::spawn(async move {
        while stats.acked() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at = started.elapsed();
        stop.trigger();
        at
    });
    let report = pipeline
        .run(RunOptions {
            shutdown: signal,
            ..RunOptions::default()
        })
        .await
        .expect("core path");
    let elapsed = watcher.await.expect("watcher");
    let invoices = report.step("Validate").map_or(0, |s| s.sent);
    (
        Measured {
            items: invoices,
            elapsed,
        },
        n,
    )
}

/// Writes `g`'s records as a raw archive on `file://` (gzip NDJSON, 10,000 per object).
async fn write_archive(dir: &std::path::Path, g: &Generator) {
    let mut object = Vec::new();
    let mut index = 0;
    let publish = 1_764_300_000_000_000i64;
    for id in 1..=g.count() {
        let m = ArchivedMessage {
            message_id: id.to_string(),
            publish_time_micros: publish + id as i64,
            attributes: Default::default(),
            data: nfe::RawBytes(g.record(id)),
        };
        serde_json::to_writer(&mut object, &m).expect("json");
        object.push(b'\n');
        if id % 10_000 == 0 || id == g.count() {
            let path = dir.join(format!(
                "raw/dt=2025-11-28/hour=03/part-{index:05}.ndjson.gz"
            ));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, gzip(&object, 6).expect("gzip")).expect("write");
            object.clear();
            index += 1;
        }
    }
}

/// The raw archive's lines under `url` (exact bytes) and `p`'s Bigtable sink.
async fn replay_ends(p: &Profile, url: &str) -> (StorageSource<Record>, BigtableSink) {
    let source = StorageSource::raw(&StorageSourceConfig {
        prefix: "raw".into(),
        ..StorageSourceConfig::new(url)
    })
    .expect("source config")
    .open()
    .await
    .expect("source");
    let sink = BigtableSink::connect(&invoices::bigtable_settings(p))
        .await
        .expect("bigtable");
    (source, sink)
}

/// Raw archive on `file://` -> the replay's Validate step (decodes the archived line, validates;
/// `graph::ValidateArchived`) -> row step -> Bigtable (dead letters discarded).
async fn replay_to_bigtable(p: &Profile, url: &str) -> Measured {
    let (source, sink) = replay_ends(p, url).await;
    let pipeline = Pipeline::new("replay");
    let validated = pipeline
        .read("Archive", source)
        .parallel(threads())
        .par_do("Validate", ValidateArchived(validate_step()));
    validated_into_bigtable(validated, p.layout, sink);
    let started = Instant::now();
    let report = pipeline.run(RunOptions::default()).await.expect("replay");
    Measured {
        items: report.step("Validate").map_or(0, |s| s.sent),
        elapsed: started.elapsed(),
    }
}

/// Raw archive on `file://` -> one parallel step that decodes the archived line, validates and
/// encodes the Bigtable rows -> Bigtable (invalid records dropped): the same work as
/// [`replay_to_bigtable`] with one step instead of two (Validate, row step).
async fn replay_to_bigtable_fused(p: &Profile, url: &str) -> Measured {
    let (source, sink) = replay_ends(p, url).await;
    let validator = nfe::ValidationConfig::default().build().expect("validator");
    let layout = p.layout;
    let pipeline = Pipeline::new("replay-fused");
    pipeline
        .read("Archive", source)
        .parallel(threads())
        .flat_map("Rows", move |r: Record| {
            serde_json::from_slice::<ArchivedMessage>(r.as_bytes())
                .ok()
                .and_then(|m| validator.process(&m.data.0).ok())
                .map(|inv| graph::bigtable_mutations(&layout, &inv).to_vec())
                .unwrap_or_default()
        })
        .write("Bigtable", sink, bigtable_batch());
    let started = Instant::now();
    let report = pipeline.run(RunOptions::default()).await.expect("replay");
    Measured {
        items: report.sink("Bigtable").map_or(0, |s| s.written) / 2,
        elapsed: started.elapsed(),
    }
}

/// Drops `p`'s Bigtable table, so cbtemulator (which keeps every table in memory) does not grow
/// across phases.
async fn drop_table(p: &Profile) {
    let admin = fluxo_gcp::bigtable::AdminClient::connect(
        &invoices::bigtable_settings(p)
            .validate()
            .expect("bigtable config"),
    )
    .await
    .expect("bigtable admin");
    admin
        .delete_table(&p.bigtable_table)
        .await
        .expect("delete table");
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: run the whole pipeline until `n` messages are acknowledged, print `peak_rss_kib=<n>`.
fn child() {
    let n: u64 = std::env::var(CHILD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("child count");
    let name = std::env::var("FLUXO_BENCH_INVOICES_CHILD_NAME").expect("child name");
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").expect("project");
    let archive = std::env::var("FLUXO_BENCH_INVOICES_CHILD_ARCHIVE").expect("archive");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(async {
        let p = profile(&project, &name, &archive);
        invoices::run_stream(
            &p,
            &RunSettings {
                stop_after: Some(n),
                progress_every: Duration::from_secs(3600),
                // After the stop, up to `max_outstanding_messages` received messages drain at the
                // BigQuery emulator's pace (~1,000 invoices/s): longer than the 25 s default.
                drain_timeout: Duration::from_secs(600),
                ..RunSettings::default()
            },
            ShutdownSignal::never(),
        )
        .await
        .expect("run")
    });
    println!(
        "peak_rss_kib={} received={} seconds={:.2}",
        peak_rss_kib(),
        report.received,
        report.seconds
    );
}

/// Publishes a backlog of `backlog` records, then runs the whole pipeline in a child process until
/// it has processed `n` of them; returns the child's peak RSS.
async fn rss_run(project: &str, name: &str, archive: &str, backlog: u64, n: u64) -> (u64, String) {
    let p = profile(project, name, archive);
    invoices::provision(&p).await.expect("provision");
    let client = pubsub(project).await;
    publish(&client, &p.topic, &generator(backlog, 99)).await;
    let (name, archive) = (name.to_string(), archive.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD_ENV, n.to_string())
            .env("FLUXO_BENCH_INVOICES_CHILD_NAME", name)
            .env("FLUXO_BENCH_INVOICES_CHILD_ARCHIVE", archive)
            .env("RUST_LOG", "warn")
            .output()
    })
    .await
    .expect("child task")
    .expect("child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("peak_rss_kib="))
        .expect("child report")
        .to_string();
    let kib = line["peak_rss_kib=".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("rss");
    (kib, line)
}

fn phase(name: &str) -> bool {
    std::env::var("FLUXO_BENCH_INVOICES_PHASES")
        .map(|v| v.split(',').any(|p| p.trim() == name))
        .unwrap_or(true)
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let n = env_count("INVOICES", 50_000);
    let replay_n = env_count("INVOICES_REPLAY", 100_000);
    let rate = env_count("INVOICES_RATE", 1_000);
    let rss_n = env_count("INVOICES_RSS", 200_000);
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
        let g = generator(n, 7);
        let invoices = invoices_of(&g);
        let valid = invoices.len() as f64;
        let items: f64 = invoices.iter().map(|i| f64::from(i.item_count)).sum();
        println!(
            "invoices pipeline benchmark: {n} records ({} valid, {:.2} items per invoice), {} cores",
            invoices.len(),
            items / valid,
            threads()
        );

        // 1. Ceilings, with the pipeline's own data.
        let c = profile(&project, "ceiling", "gs://bench-ceiling");
        invoices::provision(&c).await.expect("provision");
        let client = pubsub(&project).await;
        publish(&client, &c.topic, &generator(20_000, 3)).await; // warm-up (JIT)
        raw_pull(&client, &c.subscription, 20_000).await;
        publish(&client, &c.topic, &g).await;
        let pull = raw_pull(&client, &c.subscription, n).await;
        let layout = c.layout;
        let rows: Vec<RowMutation> = invoices
            .iter()
            .flat_map(|i| graph::bigtable_mutations(&layout, i))
            .collect();
        let bigtable = raw_bigtable(&c, rows.clone()).await;
        let (head, item): (Arc<str>, Arc<str>) = (Arc::from("invoices"), Arc::from("invoice_items"));
        let bq_rows: Vec<_> = invoices
            .iter()
            .flat_map(|i| graph::bigquery_rows(&head, &item, i))
            .collect();
        let bigquery = raw_bigquery(&c, bq_rows).await;
        let storage = raw_storage("gs://bench-ceiling", 200, 1 << 20).await;

        // 2. The whole pipeline over a backlog of n.
        let w = profile(&project, "whole", "gs://bench-whole");
        invoices::provision(&w).await.expect("provision");
        publish(&client, &w.topic, &g).await;
        let report = invoices::run_stream(
            &w,
            &RunSettings {
                stop_after: Some(n),
                progress_every: Duration::from_secs(3600),
                ..RunSettings::default()
            },
            ShutdownSignal::never(),
        )
        .await
        .expect("whole pipeline");
        let whole = Measured {
            items: report.invoices,
            elapsed: Duration::from_secs_f64(report.seconds),
        };
        let per_invoice_bytes = archive_bytes(&w).await as f64 / valid;

        let ceilings = [
            ("Pub/Sub pull+ack", pull.rate() * valid / n as f64, format!("{:.0} msgs/s", pull.rate())),
            ("Bigtable MutateRows", bigtable.rate() / 2.0, format!("{:.0} rows/s", bigtable.rate())),
            (
                "BigQuery insertAll",
                bigquery.rate() / (1.0 + items / valid),
                format!("{:.0} rows/s", bigquery.rate()),
            ),
            (
                "Cloud Storage uploads",
                storage.rate() / per_invoice_bytes,
                format!("{:.1} MB/s, {per_invoice_bytes:.0} archive bytes per invoice", storage.rate() / 1e6),
            ),
        ];
        println!("\n| emulator ceiling (raw client, same data) | measured | as invoices/s |");
        println!("|---|---:|---:|");
        for (name, inv, raw) in &ceilings {
            println!("| {name} | {raw} | {inv:.0} |");
        }
        let (binding, lowest, _) = ceilings
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("ceilings");
        println!(
            "\nwhole pipeline: {:.0} valid invoices/s ({} in {:.2} s) = {:.0}% of the binding ceiling ({binding}, {lowest:.0}/s); \
             publish->Bigtable p50 {:?} ms p99 {:?} ms under backlog",
            whole.rate(),
            whole.items,
            report.seconds,
            100.0 * whole.rate() / lowest,
            report.publish_to_bigtable.p50_ms,
            report.publish_to_bigtable.p99_ms
        );

        if phase("core") {
            // 3. Core path.
            let k = profile(&project, "core", "gs://bench-core");
            invoices::provision(&k).await.expect("provision");
            publish(&client, &k.topic, &g).await;
            let (core, _) = core_path(&k, n).await;
            drop_table(&k).await;
            println!(
                "core path Pub/Sub -> validate/enrich -> Bigtable: {:.0} valid invoices/s ({} in {:.2} s); \
                 Pub/Sub ceiling {:.0}/s, Bigtable ceiling {:.0}/s",
                core.rate(),
                core.items,
                core.elapsed.as_secs_f64(),
                ceilings[0].1,
                ceilings[1].1
            );
        }
        if phase("replay") {
            // 4. Replay from file:// into Bigtable against the Bigtable ceiling with the same rows,
            // in rounds (ceiling, pipeline, fused pipeline), each into a fresh table dropped after
            // it: cbtemulator keeps every table in memory and slows down as it grows, so measuring
            // in turn on an emulator of the same size keeps the ratio fair.
            for done in [&c, &w] {
                drop_table(done).await;
            }
            let dir = std::env::temp_dir().join(format!("invoices-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let rg = generator(replay_n, 5);
            write_archive(&dir, &rg).await;
            let url = format!("file://{}", dir.display());
            let replay_rows: Vec<RowMutation> = invoices_of(&rg)
                .iter()
                .flat_map(|i| graph::bigtable_mutations(&layout, i))
                .collect();
            let replay_valid = replay_rows.len() as u64 / 2;
            let rounds = env_count("INVOICES_REPLAY_ROUNDS", 5).max(1);
            let (mut steps_ratio, mut fused_ratio) = (Vec::new(), Vec::new());
            println!(
                "\nreplay of {replay_n} archived records ({replay_valid} valid) from file:// into Bigtable, {rounds} rounds:"
            );
            println!("| round | Bigtable ceiling (invoices/s) | pipeline steps (invoices/s) | ratio | fused step (invoices/s) | ratio |");
            println!("|---:|---:|---:|---:|---:|---:|");
            for round in 1..=rounds {
                let r = profile(&project, &format!("replayceiling{round}"), &url);
                invoices::provision(&r).await.expect("provision");
                let ceiling = raw_bigtable(&r, replay_rows.clone()).await.rate() / 2.0;
                drop_table(&r).await;
                let r = profile(&project, &format!("replay{round}"), &url);
                invoices::provision(&r).await.expect("provision");
                let steps = replay_to_bigtable(&r, &url).await;
                assert_eq!(steps.items, replay_valid);
                drop_table(&r).await;
                let r = profile(&project, &format!("replayfused{round}"), &url);
                invoices::provision(&r).await.expect("provision");
                let fused = replay_to_bigtable_fused(&r, &url).await;
                assert_eq!(fused.items, replay_valid);
                drop_table(&r).await;
                steps_ratio.push(100.0 * steps.rate() / ceiling);
                fused_ratio.push(100.0 * fused.rate() / ceiling);
                println!(
                    "| {round} | {ceiling:.0} | {:.0} | {:.0}% | {:.0} | {:.0}% |",
                    steps.rate(),
                    steps_ratio[round as usize - 1],
                    fused.rate(),
                    fused_ratio[round as usize - 1]
                );
            }
            println!(
                "replay median: pipeline steps (Validate decoding the archived line, row step) {:.0}% of the Bigtable ceiling; \
                 one fused decode+validate+encode step {:.0}%",
                median(&mut steps_ratio),
                median(&mut fused_ratio)
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        if phase("latency") {
            // 5. Latency at a fixed moderate rate.
            let l = profile(&project, "latency", "gs://bench-latency");
            invoices::provision(&l).await.expect("provision");
            let lg = generator(rate * 15, 13);
            let lp = l.clone();
            let runner = tokio::spawn(async move {
                invoices::run_stream(
                    &lp,
                    &RunSettings {
                        stop_after: Some(rate * 15),
                        progress_every: Duration::from_secs(3600),
                        ..RunSettings::default()
                    },
                    ShutdownSignal::never(),
                )
                .await
                .expect("latency run")
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            publish_at(&client, &l.topic, &lg, rate).await;
            let lat = runner.await.expect("latency run");
            drop_table(&l).await;
            println!(
                "latency at {rate} invoices/s for 15 s: publish->Bigtable p50 {:.1} ms, p99 {:.1} ms over {} rows",
                lat.publish_to_bigtable.p50_ms.unwrap_or(f64::NAN),
                lat.publish_to_bigtable.p99_ms.unwrap_or(f64::NAN),
                lat.publish_to_bigtable.count
            );
        }
        if phase("rss") {
            // 6. Peak RSS of a worker process doing the same work (the first `n` records) over a
            // backlog of `n` and over a backlog of `rss_n`: the difference is the backlog's cost.
            for (name, backlog) in [("rsssmall", n), ("rsslarge", rss_n.max(n))] {
                let (kib, line) =
                    rss_run(&project, name, &format!("gs://bench-{name}"), backlog, n).await;
                drop_table(&profile(&project, name, "gs://unused")).await;
                println!(
                    "peak RSS of a worker stopped once {n} records were acknowledged, over a backlog of {backlog}: {:.0} MiB ({line})",
                    kib as f64 / 1024.0
                );
            }
        }
    });
    drop(emulators);
}
