//! BigQuery connector benchmark against bqemulator's Storage Write API, in one run and in rounds:
//!
//! - raw ceiling: the generated gRPC client (`gcloud-googleapis`) over one tonic channel appending the
//!   rows on 4 committed write streams with offsets, 2,000 rows per `AppendRows` request, one append in
//!   flight per stream, no engine (`benches/common/bigquery.rs`);
//! - connector: a generated source -> `BigQuerySink` pipeline with the settings of the `invoices`
//!   pipeline (sink batches of `bigquery_batch_rows` = 4,000 rows, 16 MiB, 100 ms, 4 batches in flight;
//!   the sink's defaults: 2,000 rows per request, 4 streams per table), every element acknowledged end
//!   to end.
//!
//! Both send the same rows, already serialized: invoice-header-shaped rows of 10 columns (INT64,
//! TIMESTAMP, DATE, STRING, NUMERIC), about 140 bytes each, built with the `WriterSchema` /
//! `RowEncoder` of the table. Each measurement writes to its own fresh table and its row count is
//! checked with a query afterwards; raw and connector alternate which goes first from round to round.
//! The CPU time (user + system, `/proc/<pid>/stat`) of this process (the client side) and of
//! bqemulator during each measurement is reported per row.
//!
//! Run: `cargo bench --bench gcp_bigquery`. Rows per measurement: `FLUXO_BENCH_BIGQUERY_ROWS`
//! (default 60,000); rounds: `FLUXO_BENCH_BIGQUERY_ROUNDS` (default 3); `FLUXO_BENCH_BIGQUERY_PLAIN=1`
//! creates the tables without partitioning and clustering.

#[path = "common/bigquery.rs"]
mod bigquery_ceiling;
#[path = "common/ceiling.rs"]
#[allow(dead_code)]
mod ceiling;
#[path = "common/cpu.rs"]
mod cpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bigquery_ceiling::{raw_append_rows, row_bytes, Target};
use ceiling::{env_count, median, Measured};
use cpu::{group_cpu, process_cpu};
use emulators::{Emulators, Service};
use fluxo::testing::GeneratorSource;
use fluxo::{Pipeline, RunOptions, SinkConfig};
use fluxo_gcp::bigquery::proto::{Date, Int64, Text, Timestamp};
use fluxo_gcp::bigquery::{
    BigQueryAdmin, BigQuerySink, BigQuerySinkConfig, ClientConfig, TableOptions, TableRow,
    TimePartitioning, WriterSchema,
};

const SCHEMA: &str = r#"[
  {"name": "nfe_id", "type": "INTEGER", "mode": "REQUIRED"},
  {"name": "nfe_number", "type": "INTEGER", "mode": "REQUIRED"},
  {"name": "emission_time", "type": "TIMESTAMP", "mode": "REQUIRED"},
  {"name": "emission_date", "type": "DATE", "mode": "REQUIRED"},
  {"name": "customer", "type": "STRING", "mode": "REQUIRED"},
  {"name": "discount", "type": "NUMERIC", "mode": "REQUIRED"},
  {"name": "gross", "type": "NUMERIC", "mode": "REQUIRED"},
  {"name": "net", "type": "NUMERIC", "mode": "REQUIRED"},
  {"name": "item_count", "type": "INTEGER", "mode": "REQUIRED"},
  {"name": "content_hash", "type": "STRING", "mode": "REQUIRED"}
]"#;

/// 2024-03-10T12:34:56Z in microseconds, and that day in days since 1970-01-01.
const BASE_MICROS: i64 = 1_710_074_096_000_000;
const BASE_DAY: i32 = 19_792;

fn layout() -> WriterSchema {
    let fields: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema");
    WriterSchema::from_fields("bench", 0, &fields).expect("layout")
}

/// `n` invoice-header-shaped rows, serialized for `schema`.
fn rows(schema: &WriterSchema, n: u64) -> Vec<TableRow> {
    let nfe_id = schema.column::<Int64>("nfe_id").expect("column");
    let nfe_number = schema.column::<Int64>("nfe_number").expect("column");
    let emission_time = schema.column::<Timestamp>("emission_time").expect("column");
    let emission_date = schema.column::<Date>("emission_date").expect("column");
    let customer = schema.column::<Text>("customer").expect("column");
    let discount = schema.column::<Text>("discount").expect("column");
    let gross = schema.column::<Text>("gross").expect("column");
    let net = schema.column::<Text>("net").expect("column");
    let item_count = schema.column::<Int64>("item_count").expect("column");
    let content_hash = schema.column::<Text>("content_hash").expect("column");
    let mut e = schema.encoder();
    (0..n)
        .map(|i| {
            let day = (i % 18) as i32;
            e.int64(nfe_id, i as i64);
            e.int64(nfe_number, 100_000 + i as i64);
            e.timestamp_micros(
                emission_time,
                BASE_MICROS + i64::from(day) * 86_400_000_000 + (i % 1_000_000) as i64,
            );
            e.date_days(emission_date, BASE_DAY + day);
            e.text_display(customer, format_args!("Cliente {} Comércio Ltda", i % 977));
            e.text_display(discount, format_args!("{}.5", i % 10));
            e.text_display(gross, format_args!("{}.25", 100 + i % 1000));
            e.text_display(net, format_args!("{}.75", 99 + i % 1000));
            e.int64(item_count, 1 + (i % 5) as i64);
            e.text_display(
                content_hash,
                format_args!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            );
            e.finish()
        })
        .collect()
}

async fn count(admin: &BigQueryAdmin, dataset: &str, table: &str) -> u64 {
    let sql = format!(
        "SELECT COUNT(*) FROM `{}.{dataset}.{table}`",
        admin.client().project()
    );
    let r = admin.query(&sql).await.expect("count query");
    r.rows
        .first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .expect("count")
}

/// The sink batches of the `invoices` pipeline (`graph_settings` in `pipelines/invoices/src/lib.rs`):
/// `bigquery_batch_rows` rows, 16 MiB, `max_batch_delay_ms`, 4 batches in flight.
fn pipeline_batches() -> SinkConfig {
    let t = invoices::config::Tuning::default();
    SinkConfig {
        max_events: t.bigquery_batch_rows,
        max_bytes: 16 * 1024 * 1024,
        max_delay: Duration::from_millis(t.max_batch_delay_ms),
        max_in_flight: 4,
        ..SinkConfig::default()
    }
}

/// The connector: generated source (the prepared rows) -> BigQuerySink.
async fn connector(config: BigQuerySinkConfig, rows: Arc<Vec<TableRow>>) -> Measured {
    let sink = BigQuerySink::connect(&config).await.expect("sink");
    let table = &config.tables[0];
    assert_eq!(
        sink.schema(table).expect("schema read at start").columns(),
        layout().columns(),
        "the table's layout is the one the rows were built with"
    );
    let n = rows.len() as u64;
    let p = Pipeline::new("bench-bigquery");
    p.read(
        "Generate",
        GeneratorSource::new(n, move |i| rows[i as usize].clone()).counting_acks(),
    )
    .write("BigQuery", sink, pipeline_batches());
    let started = Instant::now();
    let report = p.run(RunOptions::default()).await.expect("pipeline");
    let elapsed = started.elapsed();
    let src = &report.sources[0];
    assert_eq!(src.acked, n, "every row acknowledged: {src:?}");
    Measured { items: n, elapsed }
}

/// CPU time spent while a measurement ran: this process (the client side), the emulator.
#[derive(Clone, Copy)]
struct Cpu {
    client: Duration,
    emulator: Duration,
}

/// Runs `f`, returning its result and the CPU time this process and the emulator's process group
/// `group` spent meanwhile.
async fn with_cpu<F: std::future::Future<Output = Measured>>(group: i32, f: F) -> (Measured, Cpu) {
    let (client, emulator) = (process_cpu(), group_cpu(group));
    let m = f.await;
    let cpu = Cpu {
        client: process_cpu().saturating_sub(client),
        emulator: group_cpu(group).saturating_sub(emulator),
    };
    (m, cpu)
}

fn main() {
    let n = env_count("BIGQUERY_ROWS", 60_000);
    let rounds = env_count("BIGQUERY_ROUNDS", 3).max(1);
    let emu = Emulators::start(&[Service::BigQuery]).expect("bqemulator");
    let rest = emu.bigquery_rest().expect("REST endpoint");
    let grpc = emu.bigquery_grpc().expect("gRPC endpoint");
    let project = emu.project().to_string();
    let group = emu
        .process_group(Service::BigQuery)
        .expect("bqemulator process");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = ClientConfig {
            endpoint: Some(rest.clone()),
            ..ClientConfig::default()
        };
        let admin = BigQueryAdmin::connect(&project, &client).await.expect("admin");
        let dataset = "bench";
        admin.create_dataset(dataset, None).await.expect("dataset");
        // Partitioning and clustering as in production; FLUXO_BENCH_BIGQUERY_PLAIN=1 leaves them out.
        let options = if env_count("BIGQUERY_PLAIN", 0) == 1 {
            TableOptions::default()
        } else {
            TableOptions {
                time_partitioning: Some(TimePartitioning::day("emission_date")),
                clustering: vec!["nfe_id".into()],
                description: None,
            }
        };
        let schema = layout();
        let rows = Arc::new(rows(&schema, n));
        let defaults = BigQuerySinkConfig::default();
        let (per_request, streams) = (defaults.max_rows_per_request, defaults.streams_per_table);
        let target = |table: &str, rows: Arc<Vec<TableRow>>| Target {
            parent: format!("projects/{project}/datasets/{dataset}/tables/{table}"),
            schema: schema.clone(),
            rows,
        };
        let create = |table: String| {
            let (admin, options) = (&admin, &options);
            async move {
                admin
                    .create_table(dataset, &table, SCHEMA, options)
                    .await
                    .expect("table");
            }
        };

        // Warm up the emulator (DuckDB, Python imports) and the channel.
        create("warmup".into()).await;
        let warm = Arc::new(rows[..rows.len().min(5_000)].to_vec());
        raw_append_rows(&grpc, vec![target("warmup", warm)], per_request, streams).await;

        let tuning = invoices::config::Tuning::default();
        let batches = pipeline_batches();
        println!();
        println!(
            "bqemulator Storage Write API, {n} invoice-header rows (10 columns, {:.0} bytes serialized on average), \
             {per_request} rows per AppendRows request, {streams} committed streams; connector batches of {} rows, {} in flight",
            row_bytes(&rows) as f64 / n as f64,
            batches.max_events,
            batches.max_in_flight
        );
        println!("| round | order | raw AppendRows ceiling (rows/s) | BigQuerySink in a pipeline (rows/s) | ratio | client CPU per row: raw / connector | bqemulator CPU per row: raw / connector | bqemulator busy: raw / connector |");
        println!("|---:|---|---:|---:|---:|---:|---:|---:|");
        let mut ratios = Vec::new();
        let mut ceilings = Vec::new();
        for round in 1..=rounds {
            let (raw_table, conn_table) = (format!("raw{round}"), format!("connector{round}"));
            create(raw_table.clone()).await;
            create(conn_table.clone()).await;
            let config = BigQuerySinkConfig {
                project: project.clone(),
                dataset: dataset.into(),
                tables: vec![conn_table.clone()],
                client: client.clone(),
                write_endpoint: Some(grpc.clone()),
                append_timeout_ms: tuning.bigquery_append_timeout_ms,
                ..BigQuerySinkConfig::default()
            };
            let raw_first = round % 2 == 1;
            let raw_run = || {
                with_cpu(group, raw_append_rows(
                    &grpc,
                    vec![target(&raw_table, rows.clone())],
                    per_request,
                    streams,
                ))
            };
            let ((raw, raw_cpu), (conn, conn_cpu)) = if raw_first {
                let r = raw_run().await;
                (r, with_cpu(group, connector(config, rows.clone())).await)
            } else {
                let c = with_cpu(group, connector(config, rows.clone())).await;
                (raw_run().await, c)
            };
            assert_eq!(count(&admin, dataset, &raw_table).await, n);
            assert_eq!(count(&admin, dataset, &conn_table).await, n);
            let ratio = 100.0 * conn.rate() / raw.rate();
            ratios.push(ratio);
            ceilings.push(raw.rate());
            let us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / n as f64;
            let busy = |cpu: Duration, m: Measured| 100.0 * cpu.as_secs_f64() / m.elapsed.as_secs_f64();
            println!(
                "| {round} | {} | {:.0} | {:.0} | {ratio:.0}% | {:.1} us / {:.1} us | {:.0} us / {:.0} us | {:.0}% / {:.0}% |",
                if raw_first { "raw, connector" } else { "connector, raw" },
                raw.rate(),
                conn.rate(),
                us(raw_cpu.client),
                us(conn_cpu.client),
                us(raw_cpu.emulator),
                us(conn_cpu.emulator),
                busy(raw_cpu.emulator, raw),
                busy(conn_cpu.emulator, conn),
            );
        }
        let samples: Vec<String> = ceilings.iter().map(|c| format!("{c:.0}")).collect();
        println!(
            "\nceiling samples (rows/s): {}; connector / ceiling: median {:.0}% (target: at least 80%)",
            samples.join(", "),
            median(&mut ratios)
        );
    });
}
