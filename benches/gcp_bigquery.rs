//! BigQuery connector benchmark against bqemulator, in one run:
//!
//! - raw ceiling: a `reqwest` loop posting `tabledata.insertAll` requests of 500 rows (JSON built by hand,
//!   insert ids, `skipInvalidRows`), 4 requests in flight, no engine;
//! - connector: a generated source -> `TableRow` -> `BigQuerySink` pipeline with the same batch size (500
//!   events) and concurrency (4 in flight), every element acknowledged end to end.
//!
//! Rows are shaped like an invoice header (10 columns: INT64, TIMESTAMP, DATE, STRING, NUMERIC), about
//! 330 bytes of JSON each. Each phase writes to its own fresh table and the row count is checked with a
//! query afterwards. Count: `FLUXO_BENCH_BIGQUERY_ROWS` (default 60,000).
//!
//! Run: `cargo bench --bench gcp_bigquery`.

#[path = "common/ceiling.rs"]
mod ceiling;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ceiling::{env_count, print_header, print_row, Measured};
use emulators::{Emulators, Service};
use fluxo::testing::GeneratorSource;
use fluxo::{Pipeline, RunOptions, SinkConfig};
use fluxo_gcp::bigquery::raw::reqwest;
use fluxo_gcp::bigquery::{
    BigQueryAdmin, BigQuerySink, BigQuerySinkConfig, ClientConfig, TableOptions, TableRow,
    TimePartitioning,
};

const BATCH: usize = 500;
const IN_FLIGHT: usize = 4;

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

/// One invoice-header-shaped row as JSON.
fn row_json(i: u64, out: &mut Vec<u8>) {
    let day = 10 + i % 18;
    let _ = write!(
        out,
        r#"{{"nfe_id":{i},"nfe_number":{},"emission_time":"2024-03-{day}T12:34:56.{:06}Z","emission_date":"2024-03-{day}","customer":"Cliente {} Comércio Ltda","discount":"{}.50","gross":"{}.25","net":"{}.75","item_count":{},"content_hash":"{:064x}"}}"#,
        100_000 + i,
        i % 1_000_000,
        i % 977,
        i % 10,
        100 + i % 1000,
        99 + i % 1000,
        1 + i % 5,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
}

fn insert_id(i: u64) -> String {
    format!("bench-{i}")
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

/// The ceiling: hand-built insertAll bodies posted with `reqwest`, `IN_FLIGHT` requests at a time.
async fn raw_insert_all(url: String, n: u64) -> Measured {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (http, next, url) = (http.clone(), next.clone(), url.clone());
        workers.spawn(async move {
            loop {
                let start = next.fetch_add(BATCH as u64, Ordering::Relaxed);
                if start >= n {
                    break;
                }
                let end = (start + BATCH as u64).min(n);
                let mut body = Vec::with_capacity(BATCH * 400);
                body.extend_from_slice(
                    br#"{"skipInvalidRows":true,"ignoreUnknownValues":false,"rows":["#,
                );
                for i in start..end {
                    if i > start {
                        body.push(b',');
                    }
                    let _ = write!(body, r#"{{"insertId":"{}","json":"#, insert_id(i));
                    row_json(i, &mut body);
                    body.push(b'}');
                }
                body.extend_from_slice(b"]}");
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("insertAll");
                assert!(resp.status().is_success(), "insertAll: {}", resp.status());
                let text = resp.text().await.expect("body");
                assert!(!text.contains("\"index\""), "row errors: {text}");
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Measured {
        items: n,
        elapsed: started.elapsed(),
    }
}

/// The connector: generated source -> TableRow -> BigQuerySink.
async fn connector(config: BigQuerySinkConfig, n: u64) -> Measured {
    let sink = BigQuerySink::connect(&config).await.expect("sink");
    let p = Pipeline::new("bench-bigquery");
    let table: Arc<str> = Arc::from(config.tables[0].as_str());
    p.read(
        "Generate",
        GeneratorSource::new(n, move |i| {
            let mut json = Vec::with_capacity(400);
            row_json(i, &mut json);
            TableRow::from_json_bytes(json)
                .expect("valid row")
                .with_table(table.clone())
                .with_insert_id(insert_id(i))
        })
        .counting_acks(),
    )
    .write(
        "BigQuery",
        sink,
        SinkConfig {
            max_events: BATCH,
            max_in_flight: IN_FLIGHT,
            ..SinkConfig::default()
        },
    );
    let started = Instant::now();
    let report = p.run(RunOptions::default()).await.expect("pipeline");
    let elapsed = started.elapsed();
    let src = &report.sources[0];
    assert_eq!(src.acked, n, "every row acknowledged: {src:?}");
    Measured { items: n, elapsed }
}

fn main() {
    let n = env_count("BIGQUERY_ROWS", 60_000);
    let emu = Emulators::start(&[Service::BigQuery]).expect("bqemulator");
    let rest = emu.bigquery_rest().expect("REST endpoint");
    let project = emu.project().to_string();
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
        for t in ["warmup", "raw", "connector"] {
            admin
                .create_table(dataset, t, SCHEMA, &options)
                .await
                .expect("table");
        }
        let url = |t: &str| format!("{rest}/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{t}/insertAll");
        // Warm up the emulator (DuckDB, Python imports) and the connection pool.
        raw_insert_all(url("warmup"), 5_000).await;

        let raw = raw_insert_all(url("raw"), n).await;
        assert_eq!(count(&admin, dataset, "raw").await, n);
        let config = BigQuerySinkConfig {
            project: project.clone(),
            dataset: dataset.into(),
            tables: vec!["connector".into()],
            client,
            ..BigQuerySinkConfig::default()
        };
        let conn = connector(config, n).await;
        assert_eq!(count(&admin, dataset, "connector").await, n);

        println!();
        println!("bqemulator insertAll, {n} invoice-header rows (10 columns), {BATCH} rows per request, {IN_FLIGHT} in flight");
        print_header("rows");
        print_row("insertAll: raw reqwest loop vs generated source -> BigQuerySink", raw, conn);
    });
}
