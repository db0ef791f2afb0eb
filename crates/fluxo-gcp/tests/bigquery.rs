//! BigQuery connector against a real bqemulator (started by each test on free loopback ports): table
//! provisioning from the invoice schema files, a round trip through a fluxo pipeline and the Storage
//! Write API into two tables compared exactly with a query, per-row errors, an emulator restart and a
//! frozen emulator in the middle of a run (rows written exactly once), and the one-line configuration
//! errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use emulators::{Emulators, Service};
use fluxo::{
    ack_batch, Element, Pipeline, RetryConfig, RunOptions, SinkConfig, Source, SourceContext,
    Status, Timestamp,
};
use fluxo_gcp::bigquery::{
    proto, BigQueryAdmin, BigQuerySink, BigQuerySinkConfig, ClientConfig, ColumnType, Created,
    TableOptions, TableRow, TimePartitioning, WriterSchema,
};
use fluxo_gcp::ConfigError;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

const INVOICES_SCHEMA: &str = include_str!("../../nfe/schemas/bigquery/invoices.json");
const ITEMS_SCHEMA: &str = include_str!("../../nfe/schemas/bigquery/invoice_items.json");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn start() -> Emulators {
    Emulators::start(&[Service::BigQuery]).expect("bqemulator starts")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn client_config(emu: &Emulators) -> ClientConfig {
    ClientConfig {
        endpoint: emu.bigquery_rest(),
        ..ClientConfig::default()
    }
}

fn sink_config(emu: &Emulators, dataset: &str, tables: &[&str]) -> BigQuerySinkConfig {
    BigQuerySinkConfig {
        project: emu.project().to_string(),
        dataset: dataset.to_string(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        client: client_config(emu),
        write_endpoint: emu.bigquery_grpc(),
        ..BigQuerySinkConfig::default()
    }
}

async fn provision(admin: &BigQueryAdmin, dataset: &str) {
    admin.create_dataset(dataset, None).await.expect("dataset");
    admin
        .create_table(
            dataset,
            "invoices",
            INVOICES_SCHEMA,
            &TableOptions {
                time_partitioning: Some(TimePartitioning::day("emission_date")),
                clustering: vec!["nfe_id".into()],
                description: None,
            },
        )
        .await
        .expect("invoices table");
    admin
        .create_table(
            dataset,
            "invoice_items",
            ITEMS_SCHEMA,
            &TableOptions {
                time_partitioning: Some(TimePartitioning::day("emission_date")),
                clustering: vec!["product_key".into(), "nfe_id".into()],
                description: None,
            },
        )
        .await
        .expect("invoice_items table");
}

/// RFC 3339 UTC text with microseconds, and the civil date, of a time in microseconds.
fn rfc3339(micros: i64) -> (String, String) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}-{m:02}-{d:02}");
    (
        format!(
            "{date}T{:02}:{:02}:{:02}.{frac:06}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        ),
        date,
    )
}

/// A row shaped like the `invoices` schema file (all 16 columns).
#[derive(Serialize)]
struct Header {
    nfe_id: i64,
    nfe_number: i64,
    emission_time: String,
    emission_date: String,
    emission_raw: String,
    creation_time: String,
    creation_raw: String,
    discount: String,
    gross: String,
    net: String,
    item_count: i64,
    content_hash: String,
    message_id: Option<String>,
    publish_time: Option<String>,
    worker: Option<String>,
    pipeline_version: Option<String>,
}

/// A row shaped like the `invoice_items` schema file.
#[derive(Serialize)]
struct Item {
    nfe_id: i64,
    line_number: i64,
    emission_date: String,
    product_name: String,
    product_key: String,
    unit_value: String,
    quantity: String,
    line_total: String,
    content_hash: String,
}

const BASE_MICROS: i64 = 1_700_000_000_000_000;

fn header(i: i64) -> Header {
    let emission = BASE_MICROS + i * 86_400_000_123;
    let (emission_time, emission_date) = rfc3339(emission);
    let (creation_time, _) = rfc3339(emission - 5_000_000);
    Header {
        nfe_id: i,
        nfe_number: 1000 + i,
        emission_time,
        emission_date,
        emission_raw: format!("raw \"{i}\" ção"),
        creation_time,
        creation_raw: format!("c{i}"),
        discount: format!("{}.{:02}", i % 7, i % 100),
        gross: format!("{}.123456789", 100 + i),
        net: format!("-{}.5", i),
        item_count: i % 3 + 1,
        content_hash: format!("{i:064x}"),
        message_id: (i % 2 == 0).then(|| format!("m{i}")),
        publish_time: (i % 2 == 0).then(|| rfc3339(emission + 1).0),
        worker: None,
        pipeline_version: Some("v1".into()),
    }
}

fn items(h: &Header) -> Vec<Item> {
    (1..=h.item_count)
        .map(|l| Item {
            nfe_id: h.nfe_id,
            line_number: l,
            emission_date: h.emission_date.clone(),
            product_name: format!("Produto {l} Ñ"),
            product_key: format!("produto {l} ñ"),
            unit_value: format!("{l}.25"),
            quantity: "2".into(),
            line_total: format!("{}.5", 2 * l),
            content_hash: h.content_hash.clone(),
        })
        .collect()
}

/// Encodes a JSON object into a proto row of `schema` (test-only transcoding: the values' text is the
/// oracle the query results are compared with).
fn encode(schema: &WriterSchema, row: &impl Serialize) -> TableRow {
    let Value::Object(m) = serde_json::to_value(row).expect("json") else {
        panic!("row is not an object")
    };
    let mut enc = schema.encoder();
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        let col = schema
            .columns()
            .iter()
            .find(|c| c.name == k)
            .unwrap_or_else(|| panic!("no column {k}"));
        match col.column_type {
            ColumnType::Int64 => enc.int64(schema.column(&k).unwrap(), v.as_i64().expect("int")),
            ColumnType::Timestamp => enc.timestamp_micros(
                schema.column(&k).unwrap(),
                parse_rfc3339_micros(v.as_str().expect("text")),
            ),
            ColumnType::Date => {
                let text = format!("{}T00:00:00.000000Z", v.as_str().expect("date"));
                let days = parse_rfc3339_micros(&text).div_euclid(86_400_000_000);
                enc.date_days(schema.column(&k).unwrap(), days as i32)
            }
            _ => enc.text(
                schema.column::<proto::Text>(&k).unwrap(),
                v.as_str().expect("text"),
            ),
        }
    }
    enc.finish()
}

fn rows_of(i: i64, sink: &BigQuerySink) -> Vec<TableRow> {
    let h = header(i);
    let inv = sink.schema("invoices").expect("invoices schema");
    let mut out = vec![encode(inv, &h)];
    if let Some(items_schema) = sink.schema("invoice_items") {
        for it in items(&h) {
            out.push(encode(items_schema, &it));
        }
    }
    out
}

/// What a query returns for a row: every value as the REST API's text (TIMESTAMP in microseconds,
/// NUMERIC normalized), nulls as null.
fn expected_record(
    row: &impl Serialize,
    timestamps: &[&str],
    numerics: &[&str],
) -> Map<String, Value> {
    let Value::Object(m) = serde_json::to_value(row).expect("json") else {
        panic!("row is not an object")
    };
    m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Null => Value::Null,
                Value::String(s) if timestamps.contains(&k.as_str()) => {
                    Value::String(parse_rfc3339_micros(&s).to_string())
                }
                Value::String(s) if numerics.contains(&k.as_str()) => {
                    Value::String(normalize_numeric(&s))
                }
                Value::String(s) => Value::String(s),
                other => Value::String(other.to_string()),
            };
            (k, v)
        })
        .collect()
}

fn parse_rfc3339_micros(s: &str) -> i64 {
    // Inverse of `rfc3339` for the values these tests write.
    let y: i64 = s[0..4].parse().expect("year");
    let m: i64 = s[5..7].parse().expect("month");
    let d: i64 = s[8..10].parse().expect("day");
    let hh: i64 = s[11..13].parse().expect("hour");
    let mm: i64 = s[14..16].parse().expect("minute");
    let ss: i64 = s[17..19].parse().expect("second");
    let frac: i64 = s[20..26].parse().expect("micros");
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + frac
}

/// Canonical NUMERIC text: no exponent, no trailing fractional zeros (bqemulator answers `1.500000000`
/// and `0E-9`, BigQuery `1.5` and `0`).
fn normalize_numeric(s: &str) -> String {
    if let Some((mantissa, exp)) = s.split_once(['E', 'e']) {
        let exp: i32 = exp.parse().expect("exponent");
        let (neg, digits) = match mantissa.strip_prefix('-') {
            Some(m) => (true, m),
            None => (false, mantissa),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all = format!("{int}{frac}");
        let point = int.len() as i32 + exp;
        let text = if point <= 0 {
            format!("0.{}{all}", "0".repeat((-point) as usize))
        } else if point as usize >= all.len() {
            format!("{all}{}", "0".repeat(point as usize - all.len()))
        } else {
            format!("{}.{}", &all[..point as usize], &all[point as usize..])
        };
        let text = normalize_numeric(&text);
        let text = text.trim_start_matches('0');
        let text = if text.is_empty() || text.starts_with('.') {
            format!("0{text}")
        } else {
            text.to_string()
        };
        return if neg && text != "0" {
            format!("-{text}")
        } else {
            text
        };
    }
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

fn normalize_records(
    mut recs: Vec<Map<String, Value>>,
    numerics: &[&str],
) -> Vec<Map<String, Value>> {
    for r in &mut recs {
        for n in numerics {
            if let Some(Value::String(s)) = r.get_mut(*n) {
                *s = normalize_numeric(s);
            }
        }
    }
    recs
}

fn assert_same(got: &[Map<String, Value>], want: &[Map<String, Value>]) {
    assert_eq!(got.len(), want.len(), "row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "row {i} differs");
    }
}

#[test]
fn numeric_text_is_normalized() {
    assert_eq!(normalize_numeric("0E-9"), "0");
    assert_eq!(normalize_numeric("1.500000000"), "1.5");
    assert_eq!(normalize_numeric("-1.5E2"), "-150");
    assert_eq!(normalize_numeric("1.5E-3"), "0.0015");
    assert_eq!(normalize_numeric("0.00"), "0");
    assert_eq!(normalize_numeric("12"), "12");
}

const INVOICE_TS: &[&str] = &["emission_time", "creation_time", "publish_time"];
const INVOICE_NUM: &[&str] = &["discount", "gross", "net"];
const ITEM_NUM: &[&str] = &["unit_value", "quantity", "line_total"];

async fn select(
    admin: &BigQueryAdmin,
    dataset: &str,
    table: &str,
    order: &str,
    numerics: &[&str],
) -> Vec<Map<String, Value>> {
    let sql = format!(
        "SELECT * FROM `{}.{dataset}.{table}` ORDER BY {order}",
        admin.client().project()
    );
    normalize_records(admin.query(&sql).await.expect("query").records(), numerics)
}

/// Counts of each insert-id-like key in a table: `key -> occurrences`.
async fn id_counts(admin: &BigQueryAdmin, dataset: &str) -> BTreeMap<i64, i64> {
    let sql = format!(
        "SELECT nfe_id, COUNT(*) AS n FROM `{}.{dataset}.invoices` GROUP BY nfe_id",
        admin.client().project()
    );
    admin
        .query(&sql)
        .await
        .expect("query")
        .rows
        .into_iter()
        .map(|r| {
            let id = r[0].as_str().and_then(|s| s.parse().ok()).expect("id");
            let n = r[1].as_str().and_then(|s| s.parse().ok()).expect("count");
            (id, n)
        })
        .collect()
}

#[test]
fn provisions_tables_from_schema_files_idempotently() {
    let emu = start();
    runtime().block_on(async {
        let admin = BigQueryAdmin::connect(emu.project(), &client_config(&emu))
            .await
            .expect("admin");
        let ds = unique("prov");
        assert!(!admin.dataset_exists(&ds).await.unwrap());
        assert_eq!(
            admin.create_dataset(&ds, None).await.unwrap(),
            Created::Created
        );
        assert_eq!(
            admin.create_dataset(&ds, None).await.unwrap(),
            Created::AlreadyExists
        );
        assert!(admin.dataset_exists(&ds).await.unwrap());
        let opts = TableOptions {
            time_partitioning: Some(TimePartitioning::day("emission_date")),
            clustering: vec!["nfe_id".into()],
            description: Some("test".into()),
        };
        assert!(!admin.table_exists(&ds, "invoices").await.unwrap());
        assert_eq!(
            admin
                .create_table(&ds, "invoices", INVOICES_SCHEMA, &opts)
                .await
                .unwrap(),
            Created::Created
        );
        assert_eq!(
            admin
                .create_table(&ds, "invoices", INVOICES_SCHEMA, &opts)
                .await
                .unwrap(),
            Created::AlreadyExists
        );
        // The REST TableSchema shape is accepted too.
        let wrapped = format!("{{\"fields\": {ITEMS_SCHEMA}}}");
        assert_eq!(
            admin
                .create_table(&ds, "invoice_items", &wrapped, &TableOptions::default())
                .await
                .unwrap(),
            Created::Created
        );
        assert!(admin.table_exists(&ds, "invoices").await.unwrap());
        assert!(admin.table_exists(&ds, "invoice_items").await.unwrap());
        assert!(!admin.table_exists(&ds, "nope").await.unwrap());
        // The created table has the file's columns, in order, with their types.
        let q = admin
            .query(&format!(
                "SELECT * FROM `{}.{ds}.invoices` LIMIT 0",
                emu.project()
            ))
            .await
            .unwrap();
        let file: Vec<Value> = serde_json::from_str(INVOICES_SCHEMA).unwrap();
        let names: Vec<&str> = file.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(q.columns, names);
        assert!(q.rows.is_empty());
        // A bad schema is a permanent error, not a panic.
        let err = admin
            .create_table(&ds, "bad", r#"[{"name":"x"}]"#, &TableOptions::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("needs a 'name' and a 'type'"),
            "{err}"
        );
    });
}

#[test]
fn pipeline_writes_two_tables_exactly() {
    let emu = start();
    runtime().block_on(async {
        let admin = BigQueryAdmin::connect(emu.project(), &client_config(&emu))
            .await
            .unwrap();
        let ds = unique("rt");
        provision(&admin, &ds).await;
        let sink = BigQuerySink::connect(&sink_config(&emu, &ds, &["invoices", "invoice_items"]))
            .await
            .expect("sink connects");
        let n: i64 = 1_500;
        let (source, acks) =
            fluxo::testing::GeneratorSource::new(n as u64, |i| i as i64).with_acks();
        let p = Pipeline::new("bq-round-trip");
        let layout = sink.clone();
        p.read("Generate", source)
            .flat_map("Rows", move |i: i64| rows_of(i, &layout))
            .write(
                "BigQuery",
                sink,
                SinkConfig {
                    max_events: 700,
                    ..SinkConfig::default()
                },
            );
        let report = p.run(RunOptions::default()).await.expect("pipeline runs");
        let statuses = acks.statuses().await;
        assert_eq!(statuses.len(), n as usize);
        assert!(
            statuses.iter().all(|s| *s == Status::Delivered),
            "{statuses:?}"
        );
        let sink_report = &report.sinks[0];
        assert_eq!(sink_report.failed, 0);

        let want_inv: Vec<_> = (0..n)
            .map(|i| expected_record(&header(i), INVOICE_TS, INVOICE_NUM))
            .collect();
        let got_inv = select(&admin, &ds, "invoices", "nfe_id", INVOICE_NUM).await;
        assert_same(&got_inv, &want_inv);

        let want_items: Vec<_> = (0..n)
            .flat_map(|i| items(&header(i)))
            .map(|it| expected_record(&it, &[], ITEM_NUM))
            .collect();
        let got_items = select(
            &admin,
            &ds,
            "invoice_items",
            "nfe_id, line_number",
            ITEM_NUM,
        )
        .await;
        assert_same(&got_items, &want_items);
    });
}

/// A source fed by the test: each message is a batch of elements (with finalizers attached by the test).
struct ChannelSource(mpsc::Receiver<Vec<Element<TableRow>>>);

impl Source for ChannelSource {
    type Output = TableRow;

    async fn run(mut self, mut ctx: SourceContext<TableRow>) -> Result<(), fluxo::BoxError> {
        while let Some(batch) = self.0.recv().await {
            ctx.emit(batch).await?;
        }
        Ok(())
    }
}

/// Sends rows as one acknowledged batch; returns the per-row outcomes once resolved.
async fn send_tracked(
    tx: &mpsc::Sender<Vec<Element<TableRow>>>,
    rows: Vec<TableRow>,
) -> tokio::task::JoinHandle<Vec<Status>> {
    let (fins, rx) = ack_batch(rows.len());
    let elements = rows
        .into_iter()
        .zip(fins)
        .map(|(r, f)| {
            let mut e = Element::new(r, Timestamp::from_secs(1));
            e.finalizers = f.into();
            e
        })
        .collect();
    tx.send(elements).await.expect("source is running");
    tokio::spawn(rx.wait())
}

#[test]
fn bad_row_is_rejected_alone() {
    let emu = start();
    runtime().block_on(async {
        let admin = BigQueryAdmin::connect(emu.project(), &client_config(&emu))
            .await
            .unwrap();
        let ds = unique("bad");
        provision(&admin, &ds).await;
        let sink = BigQuerySink::connect(&sink_config(&emu, &ds, &["invoices", "invoice_items"]))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let p = Pipeline::new("bq-bad-row");
        let schema = sink.schema("invoices").unwrap().clone();
        p.read("Rows", ChannelSource(rx)).write(
            "BigQuery",
            sink,
            SinkConfig {
                max_events: 100,
                max_delay: Duration::from_millis(50),
                ..SinkConfig::default()
            },
        );
        let run = tokio::spawn(p.run(RunOptions::default()));
        let mut rows: Vec<TableRow> = (0..10).map(|i| encode(&schema, &header(i))).collect();
        // Row 4: a NUMERIC with 10 fractional digits (NUMERIC keeps 9). Row 7: a table the sink does
        // not write.
        let mut bad = serde_json::to_value(header(4)).unwrap();
        bad["net"] = json!("1.0000000001");
        rows[4] = encode(&schema, &bad);
        rows[7] = TableRow::from_parts(5, rows[7].data().to_vec().into());
        let statuses = send_tracked(&tx, rows).await.await.unwrap();
        drop(tx);
        let report = run.await.unwrap().expect("pipeline runs");
        let mut want = vec![Status::Delivered; 10];
        want[4] = Status::Rejected;
        want[7] = Status::Rejected;
        assert_eq!(statuses, want);
        assert_eq!(report.sinks[0].failed, 2);
        let counts = id_counts(&admin, &ds).await;
        let want: BTreeMap<i64, i64> = [0, 1, 2, 3, 5, 6, 8, 9]
            .into_iter()
            .map(|i| (i, 1))
            .collect();
        assert_eq!(counts, want);
    });
}

/// A fresh dataset with both tables, and a sink on `invoices` configured by `configure`.
async fn provisioned_sink(
    emu: &Emulators,
    prefix: &str,
    configure: impl FnOnce(BigQuerySinkConfig) -> BigQuerySinkConfig,
) -> (BigQueryAdmin, String, BigQuerySink) {
    let admin = BigQueryAdmin::connect(emu.project(), &client_config(emu))
        .await
        .unwrap();
    let ds = unique(prefix);
    provision(&admin, &ds).await;
    let sink = BigQuerySink::connect(&configure(sink_config(emu, &ds, &["invoices"])))
        .await
        .unwrap();
    (admin, ds, sink)
}

/// A pipeline from a test-fed channel into `sink`, retrying patiently (the tests stop the emulator).
fn channel_pipeline(
    name: &str,
    sink: BigQuerySink,
    max_events: usize,
    delay_ms: u64,
) -> (mpsc::Sender<Vec<Element<TableRow>>>, Pipeline) {
    let (tx, rx) = mpsc::channel(64);
    let p = Pipeline::new(name);
    p.read("Rows", ChannelSource(rx)).write(
        "BigQuery",
        sink,
        SinkConfig {
            max_events,
            max_delay: Duration::from_millis(delay_ms),
            retry: RetryConfig {
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                max_retries: 200,
            },
            ..SinkConfig::default()
        },
    );
    (tx, p)
}

#[test]
fn sink_retries_through_an_emulator_restart() {
    let mut emu = start();
    let rt = runtime();
    let (admin, ds, sink) = rt.block_on(provisioned_sink(&emu, "restart", |c| c));
    let schema = sink.schema("invoices").unwrap().clone();
    let (tx, p) = channel_pipeline("bq-restart", sink, 50, 20);
    let run = rt.spawn(p.run(RunOptions::default()));
    let rows = |range: std::ops::Range<i64>| -> Vec<TableRow> {
        range.map(|i| encode(&schema, &header(i))).collect()
    };
    // Phase 1: written to the first emulator process.
    let s1 = rt.block_on(async { send_tracked(&tx, rows(0..100)).await.await.unwrap() });
    assert!(s1.iter().all(|s| *s == Status::Delivered));
    // Phase 2: the emulator is down; the sink keeps retrying.
    emu.stop(Service::BigQuery).unwrap();
    let pending = rt.block_on(send_tracked(&tx, rows(100..300)));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !pending.is_finished(),
        "rows were acknowledged while BigQuery was down"
    );
    // The emulator comes back empty (in memory): re-create the dataset and table.
    emu.restart(Service::BigQuery).unwrap();
    rt.block_on(provision(&admin, &ds));
    let s2 = rt.block_on(pending).unwrap();
    assert!(s2.iter().all(|s| *s == Status::Delivered), "{s2:?}");
    // Phase 3: after the restart.
    let s3 = rt.block_on(async { send_tracked(&tx, rows(300..400)).await.await.unwrap() });
    assert!(s3.iter().all(|s| *s == Status::Delivered));
    drop(tx);
    let report = rt.block_on(run).unwrap().expect("pipeline runs");
    // The lanes retried on their streams (and moved to new ones after the restart); nothing failed.
    assert_eq!(report.sinks[0].failed, 0);
    let counts = rt.block_on(id_counts(&admin, &ds));
    let want: BTreeMap<i64, i64> = (100..400).map(|i| (i, 1)).collect();
    assert_eq!(
        counts, want,
        "every row sent after the stop arrives exactly once"
    );
}

/// Sends a signal to a process group with `kill` (no libc binding needed in a test).
fn signal_group(pgid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} -{pgid}");
}

/// The emulator freezes (SIGSTOP) with appends in flight, longer than the append deadline: the lanes
/// send the same rows again at the same offsets once it thaws, and BigQuery's offset check keeps every
/// row exactly once (an `insertAll` sink duplicated the requests that had landed before the freeze).
#[test]
fn frozen_emulator_loses_and_duplicates_nothing() {
    let emu = start();
    let rt = runtime();
    let (admin, ds, sink) = rt.block_on(provisioned_sink(&emu, "freeze", |c| BigQuerySinkConfig {
        append_timeout_ms: 1_000,
        max_rows_per_request: 100,
        ..c
    }));
    let schema = sink.schema("invoices").unwrap().clone();
    let (tx, p) = channel_pipeline("bq-freeze", sink, 100, 10);
    let run = rt.spawn(p.run(RunOptions::default()));
    let pgid = emu.process_group(Service::BigQuery).unwrap();
    let n: i64 = 4_000;
    let sender = rt.spawn(async move {
        let mut pending = Vec::new();
        for start in (0..n).step_by(100) {
            let rows = (start..start + 100)
                .map(|i| encode(&schema, &header(i)))
                .collect();
            pending.push(send_tracked(&tx, rows).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut statuses = Vec::new();
        for p in pending {
            statuses.extend(p.await.unwrap());
        }
        statuses
    });
    // Freeze while appends are in flight, for three append deadlines.
    std::thread::sleep(Duration::from_millis(300));
    signal_group(pgid, "STOP");
    std::thread::sleep(Duration::from_millis(3_500));
    signal_group(pgid, "CONT");
    let statuses = rt.block_on(sender).unwrap();
    assert_eq!(statuses.len(), n as usize);
    assert!(statuses.iter().all(|s| *s == Status::Delivered));
    let report = rt.block_on(run).unwrap().expect("pipeline runs");
    assert_eq!(report.sinks[0].failed, 0);
    let counts = rt.block_on(id_counts(&admin, &ds));
    let dup: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(dup.is_empty(), "rows not written exactly once: {dup:?}");
    assert_eq!(counts.len(), n as usize);
}

#[test]
fn configuration_errors_are_one_line() {
    let rt = runtime();
    // Nothing listens: Unreachable, quickly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let config = BigQuerySinkConfig {
        project: "local-project".into(),
        dataset: "d".into(),
        tables: vec!["t".into()],
        client: ClientConfig {
            endpoint: Some(format!("127.0.0.1:{port}")),
            ..ClientConfig::default()
        },
        write_endpoint: Some(format!("127.0.0.1:{port}")),
        ..BigQuerySinkConfig::default()
    };
    let started = Instant::now();
    let err = rt.block_on(BigQuerySink::connect(&config)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "BigQuery at http://127.0.0.1:{port} is not reachable: "
        )),
        "{msg}"
    );
    assert!(msg.contains("start bqemulator"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Invalid names.
    let err = rt
        .block_on(BigQuerySink::connect(&BigQuerySinkConfig {
            dataset: "bad-dataset".into(),
            ..config.clone()
        }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid bigquery.dataset: 'bad-dataset' is not a dataset id (1-1024 letters, digits or underscores)"
    );

    // Missing dataset and table: NotFound with the provisioning hint.
    let emu = start();
    rt.block_on(async {
        let ds = unique("cfg");
        let err = BigQuerySink::connect(&sink_config(&emu, &ds, &["invoices"]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "BigQuery dataset '{}:{ds}' does not exist; create it first (BigQueryAdmin::create_dataset, or `bq mk --dataset {}:{ds}`)",
                emu.project(),
                emu.project()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let admin = BigQueryAdmin::connect(emu.project(), &client_config(&emu))
            .await
            .unwrap();
        admin.create_dataset(&ds, None).await.unwrap();
        let err = BigQuerySink::connect(&sink_config(&emu, &ds, &["invoices"]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::NotFound { kind: "table", .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "BigQuery table '{}:{ds}.invoices' does not exist; create it first (BigQueryAdmin::create_table",
                emu.project()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    });
}
