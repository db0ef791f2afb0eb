//! End-to-end benchmark of the `invoices` pipeline on the four emulators, each result next to the
//! emulators' own ceilings measured in the same run with the same data by raw client loops:
//!
//! 1. ceilings: Pub/Sub `Pull(1000)`+ack, Bigtable `MutateRows` of the pipeline's own rows, BigQuery
//!    Storage Write API `AppendRows` of the pipeline's own rows (`BigQueryLayout`, the sink's rows per
//!    request and streams per table, generated gRPC client, `benches/common/bigquery.rs`), Cloud
//!    Storage uploads; each converted to invoices/s;
//! 2. the whole pipeline (`invoices::run_stream`) over a backlog, against every ceiling (the lowest one
//!    binds), and what each invoice costs there: the worker's CPU time (user + system of this process,
//!    which runs the pipeline; the emulators are other processes) per valid invoice next to its CPU per
//!    second when idle, and the bytes each invoice puts into every service (Pub/Sub published and
//!    delivered, Bigtable rows and bytes, BigQuery bytes appended and logical bytes stored, Cloud
//!    Storage bytes and objects, counted by listing what the run wrote);
//! 3. the core path Pub/Sub -> validate/enrich -> Bigtable only;
//! 4. a replay of a raw archive on `file://` into Bigtable only, against the Bigtable ceiling;
//! 5. publish-to-Bigtable latency of the whole pipeline at a fixed moderate publish rate;
//! 6. peak RSS of a worker process doing the same work over a small and a large backlog;
//! 7. peak RSS of a worker process through invoices of 990 items (the NF-e maximum) next to the
//!    same number of usual invoices (1-8 items).
//!
//! Messages are published as `ingest` publishes them: the record's exact bytes and its attributes
//! (`source`, `page_cursor`, `nfe_id`, `emission_date`, `content_hash`).
//!
//! Run: `cargo bench --bench invoices`. Sizes: `FLUXO_BENCH_INVOICES` (default 50,000),
//! `FLUXO_BENCH_INVOICES_REPLAY` (100,000), `FLUXO_BENCH_INVOICES_RATE` (latency run, invoices/s,
//! 1,000), `FLUXO_BENCH_INVOICES_RSS` (large backlog of the RSS run, 200,000),
//! `FLUXO_BENCH_INVOICES_RSS990` (invoices of each kind in the 990-item RSS run, 500),
//! `FLUXO_BENCH_INVOICES_REPLAY_ROUNDS` (5), `FLUXO_BENCH_INVOICES_IDLE_SECS` (the idle CPU
//! measurement, 10; 0 skips it). Tuning of the profile (`docs/invoices.md`):
//! `FLUXO_BENCH_INVOICES_TUNING="processed_archive = false; bigquery_batch_rows = 4000"`.
//! Only some phases: `FLUXO_BENCH_INVOICES_PHASES=core` (of `core,replay,latency,rss,rss990`; `none` for none
//! of them: the ceilings, the whole run and its costs always run).

#[path = "common/bigquery.rs"]
mod bigquery_ceiling;
#[path = "common/ceiling.rs"]
#[allow(dead_code)]
mod ceiling;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/pubsub.rs"]
mod pubsub_ceiling;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigquery_ceiling::{raw_append_rows, row_bytes, Target};
use bytes::Bytes;
use ceiling::{env_count, median, Measured};
use cpu::{group_cpu, process_cpu};
use emulators::{Emulators, Service};
use fluxo::testing::DiscardSink;
use fluxo::{Pipeline, PipelineConfig, RunOptions, Shutdown, ShutdownSignal, SinkConfig};
use fluxo_gcp::bigquery::{BigQuerySink, ColumnType, TableRow, WriterSchema};
use fluxo_gcp::bigtable::raw::bigtable::BigTableConnection;
use fluxo_gcp::bigtable::raw::google::bigtable::v2::MutateRowsRequest;
use fluxo_gcp::bigtable::{BigtableSink, RowMutation};
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, PubsubSource, PubsubSourceConfig};
use fluxo_gcp::storage::{
    gzip, Location, Record, StorageSource, StorageSourceConfig, Store, StoreOptions,
};
use ingest::attr;
use invoice_api::{Generator, GeneratorConfig};
use invoices::bq_rows::BigQueryLayout;
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

/// Invoices of exactly `items` items each (990 is the NF-e maximum).
fn generator_with_items(count: u64, seed: u64, items: u32) -> Generator {
    Generator::new(GeneratorConfig {
        seed,
        count,
        min_items: items,
        max_items: items,
        ..GeneratorConfig::default()
    })
    .expect("generator")
}

async fn pubsub(project: &str) -> PubsubClient {
    PubsubClient::connect(Endpoint::pubsub(None).expect("endpoint"), project)
        .await
        .expect("pubsub client")
}

fn validator() -> nfe::Validator {
    nfe::ValidationConfig::default().build().expect("validator")
}

/// Record `id` of `g` as `ingest` publishes it: the exact bytes, and the attributes it sets for a
/// record of a page of 1,000 from the reference API (`pipelines/ingest/src/lib.rs`).
fn message(g: &Generator, v: &nfe::Validator, id: u64) -> RawMessage {
    let data = g.record(id);
    let mut attributes = HashMap::with_capacity(5);
    attributes.insert(attr::SOURCE.to_string(), "reference-api".to_string());
    attributes.insert(
        attr::PAGE_CURSOR.to_string(),
        format!("after-{}", id.div_ceil(1000) * 1000),
    );
    attributes.insert(attr::NFE_ID.to_string(), id.to_string());
    match v.process(&data) {
        Ok(inv) => {
            attributes.insert(attr::EMISSION_DATE.to_string(), inv.emission.original);
            attributes.insert(attr::CONTENT_HASH.to_string(), inv.content_hash.to_hex());
        }
        Err(_) => {
            if let Ok(h) = nfe::content_hash_of(&data) {
                attributes.insert(attr::CONTENT_HASH.to_string(), h.to_hex());
            }
        }
    }
    RawMessage {
        data: data.into(),
        attributes,
        ..Default::default()
    }
}

/// Bytes Pub/Sub counts for a message's content: data, and each attribute's key and value (its price
/// adds 20 bytes of publish time and the message id's length).
fn message_bytes(m: &RawMessage) -> u64 {
    (m.data.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()) as u64
}

/// Publishes records 1..=n of `g`, 1,000 per request, 4 requests in flight; returns the bytes
/// published ([`message_bytes`]).
async fn publish(client: &PubsubClient, topic: &str, g: &Generator) -> u64 {
    let topic = client.topic_path(topic).expect("topic");
    let v = validator();
    let mut tasks = tokio::task::JoinSet::new();
    let mut id = 1;
    let mut bytes = 0;
    while id <= g.count() {
        // At most 1,000 messages and 8 MB per request (Pub/Sub takes 10 MB): large invoices go
        // fewer to a request.
        let mut messages: Vec<RawMessage> = Vec::new();
        let mut request_bytes = 0;
        while id <= g.count() && messages.len() < 1000 && request_bytes < 8_000_000 {
            let m = message(g, &v, id);
            request_bytes += message_bytes(&m);
            messages.push(m);
            id += 1;
        }
        bytes += request_bytes;
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
    bytes
}

/// Publishes at `rate` records per second (in 20 ms slices) for `n` records.
async fn publish_at(client: &PubsubClient, topic: &str, g: &Generator, rate: u64) {
    let topic = client.topic_path(topic).expect("topic");
    let v = validator();
    let per_slice = (rate / 50).max(1);
    let started = Instant::now();
    let mut id = 1;
    let mut slice = 0u32;
    while id <= g.count() {
        let end = (id + per_slice).min(g.count() + 1);
        let messages = (id..end).map(|i| message(g, &v, i)).collect();
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

/// The valid invoices of `g`, with the ingestion metadata `Validate` attaches (message id, publish
/// time, pipeline version; no worker name, as in the benchmark's runs).
fn invoices_of(g: &Generator) -> Vec<nfe::Invoice> {
    let v = validator();
    (1..=g.count())
        .filter_map(|i| {
            let inv = v.process(&g.record(i)).ok()?;
            let meta = nfe::IngestMeta {
                message_id: Some(i.to_string()),
                // A timestamp of the same encoded size as a publish time.
                publish_time: Some(inv.creation.utc),
                worker: None,
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
            };
            Some(inv.with_ingest(meta))
        })
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

/// What the BigQuery rows of a set of invoices cost.
#[derive(Debug, Default, Clone, Copy)]
struct BigQueryBytes {
    /// Rows (one per invoice, one per item).
    rows: u64,
    /// Serialized row bytes appended (what the Storage Write API bills).
    appended: u64,
    /// Logical bytes stored ([`logical_bytes`]).
    logical: u64,
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&byte) = b.get(*at) {
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
        shift += 7;
    }
    v
}

/// Logical bytes of one serialized row, BigQuery's data size calculation (the basis of logical
/// storage pricing): 8 bytes per INT64, FLOAT64, TIMESTAMP, DATE, DATETIME or TIME value, 16 per
/// NUMERIC, 32 per BIGNUMERIC, 1 per BOOL, 2 plus the length per STRING or BYTES, the length per JSON
/// or GEOGRAPHY (neither is in these tables); NULL (absent) values cost nothing.
fn logical_bytes(schema: &WriterSchema, row: &[u8]) -> u64 {
    let columns = schema.columns();
    let mut at = 0;
    let mut total = 0;
    while at < row.len() {
        let key = varint(row, &mut at);
        let len = match key & 7 {
            0 => {
                varint(row, &mut at);
                0
            }
            1 => {
                at += 8;
                0
            }
            2 => {
                let len = varint(row, &mut at);
                at += len as usize;
                len
            }
            5 => {
                at += 4;
                0
            }
            wire => panic!("unexpected wire type {wire} in a row"),
        };
        total += match columns[(key >> 3) as usize - 1].column_type {
            ColumnType::Int64
            | ColumnType::Float64
            | ColumnType::Timestamp
            | ColumnType::Date
            | ColumnType::Datetime
            | ColumnType::Time => 8,
            ColumnType::Numeric => 16,
            ColumnType::BigNumeric => 32,
            ColumnType::Bool => 1,
            ColumnType::String | ColumnType::Bytes => 2 + len,
            ColumnType::Json | ColumnType::Geography => len,
        };
    }
    total
}

/// Raw `AppendRows` of the pipeline's rows of `invoices` (built by `BigQueryLayout` from the schemas the
/// sink reads at start), both tables at once, with the sink's rows per request and streams per table;
/// and what those rows cost.
async fn raw_bigquery(p: &Profile, invoices: &[nfe::Invoice]) -> (Measured, BigQueryBytes) {
    let sink = BigQuerySink::connect(&invoices::bigquery_config(p))
        .await
        .expect("BigQuery sink");
    let layout = BigQueryLayout::new(&sink).expect("BigQuery layout");
    let s = sink.settings();
    let mut per_table: Vec<Vec<TableRow>> = vec![Vec::new(); s.tables.len()];
    for inv in invoices {
        for r in layout.rows(inv) {
            per_table[usize::from(r.table_index())].push(r);
        }
    }
    let mut bytes = BigQueryBytes::default();
    let targets = s
        .tables
        .iter()
        .zip(per_table)
        .map(|(name, rows)| {
            let schema = sink.schema(name).expect("table layout").clone();
            bytes.rows += rows.len() as u64;
            bytes.appended += row_bytes(&rows);
            bytes.logical += rows
                .iter()
                .map(|r| logical_bytes(&schema, r.data()))
                .sum::<u64>();
            Target {
                parent: format!(
                    "projects/{}/datasets/{}/tables/{name}",
                    p.project, p.bigquery_dataset
                ),
                schema,
                rows: Arc::new(rows),
            }
        })
        .collect();
    let measured = raw_append_rows(
        &s.write_endpoint.url,
        targets,
        s.max_rows_per_request,
        s.streams_per_table,
    )
    .await;
    (measured, bytes)
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

/// Objects and bytes a finished run wrote to the archive, per prefix (raw, late raw, processed,
/// dead letters), counted by listing the bucket.
async fn archive_objects(p: &Profile) -> Vec<(&'static str, u64, u64)> {
    let store = Store::open(
        &Location::parse(&p.archive_url, "url").expect("url"),
        StoreOptions::default(),
    )
    .await
    .expect("store");
    let mut out = Vec::new();
    for prefix in ["raw/", "raw-late/", "processed/", "dead-letter/"] {
        let objects = store.list(prefix).await.expect("list");
        out.push((
            prefix,
            objects.len() as u64,
            objects.iter().map(|o| o.size).sum(),
        ));
    }
    out
}

/// Pulls and acknowledges what `sub` holds, until `expected` messages came or nothing more arrives;
/// returns the messages and their [`message_bytes`].
async fn drain_subscription(client: &PubsubClient, sub: &str, expected: u64) -> (u64, u64) {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let (mut got, mut bytes, mut empty) = (0u64, 0u64, 0);
    while got < expected && empty < 3 {
        let msgs = pubsub_ceiling::pull_and_ack(client, &subscription, false).await;
        if msgs.is_empty() {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        got += msgs.len() as u64;
        bytes += msgs.iter().map(message_bytes).sum::<u64>();
    }
    (got, bytes)
}

/// Rows, cells and bytes (keys, qualifiers, values) of Bigtable mutations.
fn bigtable_bytes(rows: &[RowMutation]) -> (u64, u64, u64) {
    let cells = rows.iter().map(|r| r.cells.len() as u64).sum();
    let bytes = rows
        .iter()
        .map(|r| {
            r.key.len()
                + r.cells
                    .iter()
                    .map(|c| c.qualifier.len() + c.value.len())
                    .sum::<usize>()
        })
        .sum::<usize>();
    (rows.len() as u64, cells, bytes as u64)
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
    validated: fluxo::Tagged<fluxo::Shared<nfe::Invoice>, fluxo::Shared<nfe::DeadLetter>>,
    layout: nfe::BigtableLayout,
    sink: BigtableSink,
) {
    validated
        .main
        .parallel(threads())
        .flat_map("BigtableRows", move |inv: fluxo::Shared<nfe::Invoice>| {
            graph::bigtable_mutations(&layout, &inv)
        })
        .write(graph::steps::BIGTABLE, sink, bigtable_batch());
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
        .par_do(graph::steps::VALIDATE, validate_step());
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
    let invoices = report.step(graph::steps::VALIDATE).map_or(0, |s| s.sent);
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
        .par_do(graph::steps::VALIDATE, ValidateArchived(validate_step()));
    validated_into_bigtable(validated, p.layout, sink);
    let started = Instant::now();
    let report = pipeline.run(RunOptions::default()).await.expect("replay");
    Measured {
        items: report.step(graph::steps::VALIDATE).map_or(0, |s| s.sent),
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
        .write(graph::steps::BIGTABLE, sink, bigtable_batch());
    let started = Instant::now();
    let report = pipeline.run(RunOptions::default()).await.expect("replay");
    Measured {
        items: report.sink(graph::steps::BIGTABLE).map_or(0, |s| s.written) / 2,
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
async fn rss_run(
    project: &str,
    name: &str,
    archive: &str,
    backlog: &Generator,
    n: u64,
) -> (u64, String) {
    let p = profile(project, name, archive);
    invoices::provision(&p).await.expect("provision");
    let client = pubsub(project).await;
    publish(&client, &p.topic, backlog).await;
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

/// CPU seconds per second this process spends running the whole pipeline with nothing to do:
/// `run_stream` on `p` (whose subscription is empty), measured over `window` after a 3 s start.
async fn idle_cpu(p: &Profile, window: Duration) -> f64 {
    let stop = Shutdown::new();
    let signal = stop.signal();
    let profile = p.clone();
    let run = tokio::spawn(async move {
        invoices::run_stream(
            &profile,
            &RunSettings {
                progress_every: Duration::from_secs(3600),
                ..RunSettings::default()
            },
            signal,
        )
        .await
        .expect("idle run")
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (before, started) = (process_cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let cpu = process_cpu().saturating_sub(before);
    let elapsed = started.elapsed();
    stop.trigger();
    let report = run.await.expect("idle run");
    assert_eq!(report.received, 0, "the idle run had nothing to read");
    cpu.as_secs_f64() / elapsed.as_secs_f64()
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
    let rss990_n = env_count("INVOICES_RSS990", 500);
    let emulators = Emulators::start(&[
        Service::PubSub,
        Service::Bigtable,
        Service::Storage,
        Service::BigQuery,
    ])
    .expect("emulators");
    emulators.export_env();
    let project = emulators.project().to_string();
    // The emulators' process groups, to read their CPU time.
    let groups: Vec<(&'static str, i32)> = [
        Service::PubSub,
        Service::Bigtable,
        Service::Storage,
        Service::BigQuery,
    ]
    .into_iter()
    .filter_map(|s| Some((s.name(), emulators.process_group(s)?)))
    .collect();
    let emulator_cpu = move || -> Vec<(&'static str, Duration)> {
        groups
            .iter()
            .map(|&(name, g)| (name, group_cpu(g)))
            .collect()
    };
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
        let emu_before = emulator_cpu();
        let (bigquery, bq_bytes) = raw_bigquery(&c, &invoices).await;
        let bq_ceiling_cpu: Vec<(&str, Duration)> = emulator_cpu()
            .into_iter()
            .zip(&emu_before)
            .map(|((name, after), (_, before))| (name, after.saturating_sub(*before)))
            .collect();
        let storage = raw_storage("gs://bench-ceiling", 200, 1 << 20).await;

        // 2. The whole pipeline over a backlog of n, and what it costs.
        let w = profile(&project, "whole", "gs://bench-whole");
        invoices::provision(&w).await.expect("provision");
        let published = publish(&client, &w.topic, &g).await;
        println!("whole pipeline: {n} records published, running");
        let (cpu_before, emu_before) = (process_cpu(), emulator_cpu());
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
        let worker_cpu = process_cpu().saturating_sub(cpu_before);
        let whole_emu_cpu: Vec<(&str, Duration)> = emulator_cpu()
            .into_iter()
            .zip(&emu_before)
            .map(|((name, after), (_, before))| (name, after.saturating_sub(*before)))
            .collect();
        let whole = Measured {
            items: report.invoices,
            elapsed: Duration::from_secs_f64(report.seconds),
        };
        let archive = archive_objects(&w).await;
        let per_invoice_bytes = archive.iter().map(|a| a.2).sum::<u64>() as f64 / valid;

        let ceilings = [
            ("Pub/Sub pull+ack", pull.rate() * valid / n as f64, format!("{:.0} msgs/s", pull.rate())),
            ("Bigtable MutateRows", bigtable.rate() / 2.0, format!("{:.0} rows/s", bigtable.rate())),
            (
                "BigQuery AppendRows",
                bigquery.rate() * valid / bq_bytes.rows as f64,
                format!("{:.0} rows/s", bigquery.rate()),
            ),
            (
                "Cloud Storage uploads",
                storage.rate() / per_invoice_bytes,
                format!("{:.1} MB/s, {per_invoice_bytes:.0} archive bytes per invoice", storage.rate() / 1e6),
            ),
        ];
        println!("\n| emulator ceiling (raw client, same data) | measured | as invoices/s | whole pipeline / ceiling |");
        println!("|---|---:|---:|---:|");
        for (name, inv, raw) in &ceilings {
            println!("| {name} | {raw} | {inv:.0} | {:.0}% |", 100.0 * whole.rate() / inv);
        }
        let (binding, lowest, _) = ceilings
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("ceilings");
        println!(
            "\nwhole pipeline: {:.0} valid invoices/s ({} in {:.2} s) = {:.0}% of the binding ceiling ({binding}, {lowest:.0}/s); \
             targets: at least 3,116/s (4 x 779) and 70% of the binding ceiling; \
             publish->Bigtable p50 {:?} ms p99 {:?} ms under backlog",
            whole.rate(),
            whole.items,
            report.seconds,
            100.0 * whole.rate() / lowest,
            report.publish_to_bigtable.p50_ms,
            report.publish_to_bigtable.p99_ms
        );

        // What each valid invoice cost in the whole run.
        let dead_expected = report.engine.sink(graph::steps::DEAD_LETTER_TOPIC).map_or(0, |s| s.written);
        let (dead_messages, dead_bytes) =
            drain_subscription(&client, &w.dead_letter_subscription(), dead_expected).await;
        let idle_secs = env_count("INVOICES_IDLE_SECS", 10);
        let idle = if idle_secs > 0 {
            Some(idle_cpu(&w, Duration::from_secs(idle_secs)).await)
        } else {
            None
        };
        let (bt_rows, bt_cells, bt_bytes) = bigtable_bytes(&rows);
        let per = |v: f64| v / report.invoices as f64;
        let cpu_us = per(worker_cpu.as_secs_f64() * 1e6);
        println!(
            "\ncost per valid invoice, whole run ({} valid invoices and {} dead letters from {} messages received; \
             per valid invoice = total / valid invoices):",
            report.invoices, report.dead_letters, report.received
        );
        println!("| what | whole run | per valid invoice |");
        println!("|---|---:|---:|");
        println!(
            "| worker CPU, user + system (start, {:.2} s of processing and drain) | {:.2} s | **{cpu_us:.1} us** |",
            report.seconds,
            worker_cpu.as_secs_f64()
        );
        if let Some(idle) = idle {
            println!(
                "| worker CPU when idle (pipeline running, no messages, {idle_secs} s) | {:.1} ms per second | |",
                idle * 1e3
            );
            println!(
                "| worker CPU less the idle rate over the run | {:.2} s | {:.1} us |",
                worker_cpu.as_secs_f64() - idle * report.seconds,
                per((worker_cpu.as_secs_f64() - idle * report.seconds) * 1e6)
            );
        }
        println!(
            "| Pub/Sub published to the invoices topic (data + attributes, {n} messages) | {published} B | {:.0} B |",
            per(published as f64)
        );
        let delivered = published as f64 * report.received as f64 / n as f64;
        println!(
            "| Pub/Sub delivered to the worker ({} messages, redeliveries included) | {delivered:.0} B | {:.0} B |",
            report.received,
            per(delivered)
        );
        println!(
            "| Pub/Sub published to the dead-letter topic (data + attributes, {dead_messages} of {dead_expected} read back) | {dead_bytes} B | {:.0} B |",
            per(dead_bytes as f64)
        );
        println!(
            "| Bigtable rows written | {bt_rows} | {:.2} |",
            per(bt_rows as f64)
        );
        println!(
            "| Bigtable cells written | {bt_cells} | {:.1} |",
            per(bt_cells as f64)
        );
        println!(
            "| Bigtable bytes written (keys + qualifiers + values) | {bt_bytes} B | {:.0} B |",
            per(bt_bytes as f64)
        );
        println!(
            "| BigQuery rows appended (the run reports {}) | {} | {:.2} |",
            report.bigquery_rows,
            bq_bytes.rows,
            per(bq_bytes.rows as f64)
        );
        println!(
            "| BigQuery bytes appended (serialized rows) | {} B | {:.0} B |",
            bq_bytes.appended,
            per(bq_bytes.appended as f64)
        );
        println!(
            "| BigQuery logical bytes stored | {} B | {:.0} B |",
            bq_bytes.logical,
            per(bq_bytes.logical as f64)
        );
        for (prefix, objects, bytes) in &archive {
            println!(
                "| Cloud Storage `{prefix}`: {objects} objects | {bytes} B | {:.0} B |",
                per(*bytes as f64)
            );
        }
        let objects: u64 = archive.iter().map(|a| a.1).sum();
        println!(
            "| Cloud Storage, all objects: {objects} ({:.1} per 1,000 invoices) | {} B | {per_invoice_bytes:.0} B |",
            per(objects as f64) * 1000.0,
            archive.iter().map(|a| a.2).sum::<u64>()
        );
        println!("target: at most 20 us of worker CPU per invoice with all four sinks");
        println!("\nemulator CPU (user + system of each emulator's processes; not part of the worker's cost):");
        println!("| emulator | whole run: CPU | share of one core | per valid invoice | BigQuery ceiling: CPU | share of one core | per invoice's rows |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for ((name, whole_cpu), (_, ceiling_cpu)) in whole_emu_cpu.iter().zip(&bq_ceiling_cpu) {
            println!(
                "| {name} | {:.2} s | {:.0}% | {:.0} us | {:.2} s | {:.0}% | {:.0} us |",
                whole_cpu.as_secs_f64(),
                100.0 * whole_cpu.as_secs_f64() / report.seconds,
                per(whole_cpu.as_secs_f64() * 1e6),
                ceiling_cpu.as_secs_f64(),
                100.0 * ceiling_cpu.as_secs_f64() / bigquery.elapsed.as_secs_f64(),
                ceiling_cpu.as_secs_f64() * 1e6 / valid,
            );
        }

        if phase("core") {
            // 3. Core path.
            let k = profile(&project, "core", "gs://bench-core");
            invoices::provision(&k).await.expect("provision");
            publish(&client, &k.topic, &g).await;
            let cpu_before = process_cpu();
            let (core, _) = core_path(&k, n).await;
            let core_cpu = process_cpu().saturating_sub(cpu_before);
            drop_table(&k).await;
            println!(
                "core path Pub/Sub -> validate/enrich -> Bigtable: {:.0} valid invoices/s ({} in {:.2} s); \
                 Pub/Sub ceiling {:.0}/s, Bigtable ceiling {:.0}/s; worker CPU {:.1} us per valid invoice",
                core.rate(),
                core.items,
                core.elapsed.as_secs_f64(),
                ceilings[0].1,
                ceilings[1].1,
                core_cpu.as_secs_f64() * 1e6 / core.items as f64
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
                    rss_run(&project, name, &format!("gs://bench-{name}"), &generator(backlog, 99), n).await;
                drop_table(&profile(&project, name, "gs://unused")).await;
                println!(
                    "peak RSS of a worker stopped once {n} records were acknowledged, over a backlog of {backlog}: {:.0} MiB ({line})",
                    kib as f64 / 1024.0
                );
            }
        }
        if phase("rss990") {
            // 7. Peak RSS of a worker through invoices of 990 items (the NF-e maximum: each one
            // fans out into 990 BigQuery rows and 990 processed lines) next to the same number of
            // the usual 1-8 item invoices: buffers bound the bytes they hold, so the peak stays
            // bounded although each invoice is ~150 times larger.
            for (name, items) in [("rssitems8", None), ("rssitems990", Some(990))] {
                let g = match items {
                    Some(k) => generator_with_items(rss990_n, 98, k),
                    None => generator(rss990_n, 98),
                };
                let (kib, line) =
                    rss_run(&project, name, &format!("gs://bench-{name}"), &g, rss990_n).await;
                drop_table(&profile(&project, name, "gs://unused")).await;
                println!(
                    "peak RSS of a worker through {rss990_n} invoices of {} items: {:.0} MiB ({line})",
                    items.map_or("1-8".to_string(), |k| k.to_string()),
                    kib as f64 / 1024.0
                );
            }
        }
    });
    drop(emulators);
}
