//! The invoices pipeline end to end on the real emulators (Pub/Sub, Bigtable, fake-gcs-server,
//! bqemulator): every valid invoice lands in Bigtable and BigQuery with exact totals, every malformed
//! record is a dead letter with the right code (in Cloud Storage and on the dead-letter topic), the run
//! report equals what the stores hold when counted independently, a replay of the raw archive writes
//! identical Bigtable cells and BigQuery rows, re-deliveries and corrected versions leave the BigQuery
//! views (`invoices_current`, `invoice_items_current`) with each invoice and line exactly once and the
//! totals of an independent oracle (Python's `decimal`), and a worker killed with SIGKILL or stopped
//! with SIGTERM loses nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo::ShutdownSignal;
use fluxo_gcp::bigquery::{BigQueryAdmin, ClientConfig};
use fluxo_gcp::bigtable::ReadRow;
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, SubscriptionOptions};
use invoice_api::{Generator, GeneratorConfig};
use invoices::config::{ConfigFile, Profile};
use invoices::{query, RunSettings};
use nfe::bigquery::{Numeric, INVOICES_CURRENT, INVOICE_ITEMS_CURRENT};
use serde_json::{Map, Value};

use common::{drain, profile, profile_toml, start_stack};

/// What the generator sent: valid records by id (parsed, and their exact bytes), and the expected code
/// of each malformed one.
struct Sent {
    valid: BTreeMap<i64, nfe::Invoice>,
    records: BTreeMap<i64, Vec<u8>>,
    codes: BTreeMap<String, u64>,
    messages: u64,
}

/// Exact totals of a set of valid records.
#[derive(Debug, PartialEq, Eq)]
struct Totals {
    invoices: u64,
    net: Numeric,
    items: u64,
    line_total: Numeric,
    /// id -> net.
    nets: BTreeMap<i64, Numeric>,
}

/// Exact totals of valid records (per invoice and summed) computed by Python's `decimal` module,
/// reading each record with Python's own JSON parser: an oracle independent of the code under test,
/// like `common::python_totals`, which gives per-invoice totals only.
fn decimal_totals<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Totals {
    let script = r#"
import json, sys
from decimal import Decimal, getcontext
getcontext().prec = 200
nets, net, items, line_total = {}, Decimal(0), 0, Decimal(0)
for text in json.load(sys.stdin):
    r = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    lines = [Decimal(i["Value"]) * Decimal(i["Quantity"]) for i in r["ItemList"]]
    n = sum(lines, Decimal(0)) - Decimal(r["Discount"])
    nets[str(int(r["NFeID"]))] = format(n, "f")
    net, items, line_total = net + n, items + len(lines), line_total + sum(lines, Decimal(0))
print(json.dumps({"nets": nets, "net": format(net, "f"), "items": items,
                  "line_total": format(line_total, "f")}))
"#;
    // The records' texts as one JSON array of strings (valid records are UTF-8).
    let texts: Vec<&str> = records
        .into_iter()
        .map(|r| std::str::from_utf8(r).unwrap())
        .collect();
    let out = common::python_json(script, &texts);
    let v: Value = serde_json::from_slice(&out).unwrap();
    let num = |v: &Value| v.as_str().unwrap().parse::<Numeric>().unwrap();
    let nets: BTreeMap<i64, Numeric> = v["nets"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.parse().unwrap(), num(n)))
        .collect();
    Totals {
        invoices: nets.len() as u64,
        net: num(&v["net"]),
        items: v["items"].as_u64().unwrap(),
        line_total: num(&v["line_total"]),
        nets,
    }
}

/// Checks the inventory against the oracle: Bigtable and the BigQuery views hold exactly the
/// expected invoices and lines (plain counts, exact sums); the raw tables hold at least as much.
fn assert_totals(inv: &query::Inventory, want: &Totals) {
    let got = |invoices, net, items, line_total| Totals {
        invoices,
        net,
        items,
        line_total,
        nets: want.nets.clone(),
    };
    let bigtable = got(
        inv.bigtable_invoice_rows,
        inv.bigtable_net,
        inv.bigtable_items,
        inv.bigtable_line_total,
    );
    assert_eq!(&bigtable, want, "Bigtable");
    assert_eq!(inv.bigtable_index_rows, want.invoices, "Bigtable index");
    let views = got(
        inv.bigquery_invoices_current,
        inv.bigquery_net_current,
        inv.bigquery_items_current,
        inv.bigquery_line_total_current,
    );
    assert_eq!(&views, want, "BigQuery views");
    assert!(inv.bigquery_invoices >= want.invoices, "{inv:?}");
    assert!(inv.bigquery_items >= want.items, "{inv:?}");
}

/// Every row of a query, as objects.
async fn bq_records(p: &Profile, sql: &str) -> Vec<Map<String, Value>> {
    let admin = BigQueryAdmin::connect(&p.project, &ClientConfig::default())
        .await
        .unwrap();
    admin.query(sql).await.unwrap().records()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_i64().unwrap(),
    }
}

/// A record of the generator with another `CreateDate` (`minutes` later, or earlier when negative)
/// and other content: only the first item, with `quantity`, and no discount. Valid when the
/// original is.
fn other_version(g: &Generator, id: i64, minutes: i64, quantity: u64) -> Vec<u8> {
    let mut r: Value = serde_json::from_slice(&g.record(id as u64)).unwrap();
    let created = g
        .create_date(id as u64)
        .checked_add(jiff::Span::new().minutes(minutes))
        .unwrap();
    r["CreateDate"] = Value::from(created.strftime("%Y-%m-%dT%H:%M:%S%.f").to_string());
    r["Discount"] = Value::from(0);
    let first = r["ItemList"][0].clone();
    r["ItemList"] = Value::Array(vec![first]);
    r["ItemList"][0]["Quantity"] = Value::from(quantity);
    serde_json::to_vec_pretty(&r).unwrap()
}

fn generator(count: u64) -> Generator {
    Generator::new(GeneratorConfig {
        seed: 11,
        count,
        malformed_share: 0.05,
        ..GeneratorConfig::default()
    })
    .unwrap()
}

/// Publishes records 1..=count of [`generator`] (5% malformed records), plus one copy of record 1
/// flagged by `ingest` as a repeated id within its page.
async fn publish(p: &Profile, count: u64) -> Sent {
    let g = generator(count);
    let validator = nfe::ValidationConfig::default().build().unwrap();
    let client = PubsubClient::connect(Endpoint::pubsub(None).unwrap(), &p.project)
        .await
        .unwrap();
    let topic = client.topic_path(&p.topic).unwrap();
    let mut sent = Sent {
        valid: BTreeMap::new(),
        records: BTreeMap::new(),
        codes: BTreeMap::new(),
        messages: 0,
    };
    let mut batch = Vec::new();
    for id in 1..=count {
        let raw = g.record(id);
        match g.defect(id) {
            Some(d) => *sent.codes.entry(d.expected_code().to_string()).or_default() += 1,
            None => {
                let inv = validator
                    .process(&raw)
                    .expect("a record without defect is valid");
                sent.records.insert(inv.nfe_id, raw.clone());
                sent.valid.insert(inv.nfe_id, inv);
            }
        }
        batch.push(RawMessage {
            data: raw.into(),
            ..Default::default()
        });
    }
    let first_valid = *sent.valid.keys().next().unwrap();
    let mut attributes = std::collections::HashMap::new();
    attributes.insert("duplicate_of".to_string(), "0".to_string());
    batch.push(RawMessage {
        data: g.record(first_valid as u64).into(),
        attributes,
        ..Default::default()
    });
    *sent.codes.entry("NFE_DUPLICATE_ID".into()).or_default() += 1;
    sent.messages = batch.len() as u64;
    for chunk in batch.chunks(1000) {
        client
            .publish(PublishRequest {
                topic: topic.clone(),
                messages: chunk.to_vec(),
            })
            .await
            .expect("publish");
    }
    sent
}

async fn all_rows(p: &Profile) -> Vec<ReadRow> {
    let reader = query::reader(p).await.unwrap();
    let mut rows = reader.scan_prefix(Bytes::new(), 0).await.unwrap();
    rows.sort();
    rows
}

/// Every row of a table or view (duplicates kept), as sorted JSON texts.
async fn bigquery_rows(p: &Profile, table: &str, columns: &str) -> Vec<String> {
    let sql = format!(
        "SELECT {columns} FROM `{}.{}.{table}`",
        p.project, p.bigquery_dataset
    );
    let mut rows: Vec<String> = bq_records(p, &sql)
        .await
        .into_iter()
        .map(|r| serde_json::to_string(&r).unwrap())
        .collect();
    rows.sort();
    rows
}

const INVOICE_COLUMNS: &str = "nfe_id, nfe_number, emission_time, emission_date, emission_raw, \
    creation_time, creation_raw, CAST(discount AS STRING) AS discount, CAST(gross AS STRING) AS gross, \
    CAST(net AS STRING) AS net, item_count, content_hash, message_id, publish_time";

const ITEM_COLUMNS: &str = "nfe_id, line_number, emission_date, product_name, product_key, \
    CAST(unit_value AS STRING) AS unit_value, CAST(quantity AS STRING) AS quantity, \
    CAST(line_total AS STRING) AS line_total, content_hash";

/// GET `path` on `addr` (plain HTTP/1.1, the Prometheus text format); the body, or `None`.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Runs the stream until idle with `/metrics` served, scraping it every 200 ms the way Prometheus
/// would; returns the report and the last scrape (taken during the idle period before the drain).
async fn run_until_idle_scraping(p: &Profile) -> (invoices::Report, String) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let settings = RunSettings {
        exit_when_idle: Some(Duration::from_secs(3)),
        metrics_addr: Some(addr),
        ..RunSettings::default()
    };
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let scraper = {
        let last = last.clone();
        tokio::spawn(async move {
            loop {
                let body = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
                    .await
                    .ok()
                    .flatten();
                if let Some(body) = body {
                    *last.lock().unwrap() = body;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let report = invoices::run_stream(p, &settings, ShutdownSignal::never())
        .await
        .expect("pipeline run");
    scraper.abort();
    let scraped = last.lock().unwrap().clone();
    (report, scraped)
}

fn sample_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Compliance: every family the engine, the connectors and the pipeline declare is exported by the
/// running worker (none silently missing), nothing undeclared is, and the values agree with the run.
fn every_family_is_exported(text: &str, sent: &Sent, valid: u64) {
    use std::collections::BTreeSet;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let declared: BTreeSet<String> = fluxo::metrics::names::ALL
        .iter()
        .chain(fluxo::metrics::process::ALL)
        .chain(fluxo_gcp::metrics::ALL)
        .chain(invoices::metrics::ALL)
        .map(|d| d.exposed_name())
        .collect();
    let missing: Vec<&String> = declared
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "declared but not exported: {missing:?}\n{text}"
    );
    let undeclared: Vec<&&str> = exported
        .iter()
        .filter(|n| !declared.contains(**n))
        .collect();
    assert!(
        undeclared.is_empty(),
        "exported but not declared: {undeclared:?}"
    );

    let dead: u64 = sent.codes.values().sum();
    assert_eq!(
        sample_sum(text, "invoices_dead_letters_total{") as u64,
        dead
    );
    for (code, n) in &sent.codes {
        let series =
            format!("invoices_dead_letters_total{{pipeline=\"invoices\",code=\"{code}\"}}");
        assert_eq!(sample_sum(text, &series) as u64, *n, "{code}");
    }
    let bigtable = r#"invoices_publish_to_sink_seconds_count{pipeline="invoices",step="Bigtable"}"#;
    assert_eq!(sample_sum(text, bigtable) as u64, 2 * valid);
    let ok = |service: &str| {
        text.lines().any(|l| {
            l.starts_with("fluxo_gcp_requests_total{")
                && l.contains(&format!("service=\"{service}\""))
                && l.contains("outcome=\"ok\"")
                && !l.ends_with(" 0")
        })
    };
    for service in ["bigtable", "bigquery", "storage", "pubsub"] {
        assert!(ok(service), "no successful {service} request counted");
    }
    assert_eq!(
        sample_sum(text, "fluxo_pubsub_received_messages_total{") as u64,
        sent.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_then_replay_land_everything_exactly_once_per_invoice() {
    let emulators = start_stack().await;
    let project = emulators.project().to_string();
    let p = profile(&project, "stream", "");
    invoices::provision(&p).await.unwrap();
    invoices::provision(&p)
        .await
        .expect("provisioning twice is fine");
    let client = PubsubClient::connect(Endpoint::pubsub(None).unwrap(), &project)
        .await
        .unwrap();
    client
        .create_subscription(
            "dead-letter-check",
            &p.dead_letter_topic,
            SubscriptionOptions::default(),
        )
        .await
        .unwrap();

    let sent = publish(&p, 1_500).await;
    let valid = sent.valid.len() as u64;
    let dead: u64 = sent.codes.values().sum();
    assert!(valid > 1_300 && dead > 40, "{valid} valid, {dead} dead");

    let (report, scraped) = run_until_idle_scraping(&p).await;
    assert_eq!(report.received, sent.messages);
    assert_eq!(report.acked, sent.messages);
    assert_eq!(report.invoices, valid);
    assert_eq!(report.dead_letters, dead);
    assert_eq!(report.dead_letters_by_code, sent.codes);
    assert_eq!(report.bigtable_rows, 2 * valid);
    let items: u64 = sent.valid.values().map(|i| u64::from(i.item_count)).sum();
    assert_eq!(report.bigquery_rows, valid + items);
    assert_eq!(report.raw_archived + report.raw_late, sent.messages);
    assert_eq!(report.processed_lines, items);
    assert_eq!(report.publish_to_bigtable.count, 2 * valid);
    assert!(report.publish_to_bigtable.p99_ms.is_some());
    every_family_is_exported(&scraped, &sent, valid);

    // Counted from the stores themselves: plain counts and exact sums, against the oracle.
    let want = decimal_totals(sent.records.values().map(Vec::as_slice));
    assert_eq!((want.invoices, want.items), (valid, items));
    let inv = query::inventory(&p).await.unwrap();
    assert_totals(&inv, &want);
    assert_eq!(inv.bigquery_invoices_distinct, valid);
    assert_eq!(inv.bigquery_items_distinct, items);
    assert_eq!(inv.raw_records, sent.messages);
    assert_eq!(inv.dead_letters_by_code, sent.codes);
    assert!(inv.objects["processed/invoice_lines"] >= 1);
    // One object per dead letter, named by its raw bytes' hash.
    assert_eq!(inv.objects["dead-letter"], dead);
    let on_topic = drain(&client, "dead-letter-check").await;
    assert_eq!(on_topic.len() as u64, dead);
    assert!(on_topic
        .iter()
        .all(|m| m.attributes["codes"].starts_with("NFE_")));

    // Exact totals in Bigtable, by id, and the date index.
    let reader = query::reader(&p).await.unwrap();
    for inv in sent.valid.values().step_by(7) {
        let row = query::get_invoice(&reader, inv.nfe_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row["gross"], inv.gross.to_string(), "{}", inv.nfe_id);
        assert_eq!(row["net"], inv.net.to_string(), "{}", inv.nfe_id);
        assert_eq!(row["items"].as_array().unwrap().len(), inv.items.len());
    }
    assert!(query::get_invoice(&reader, 999_999_999)
        .await
        .unwrap()
        .is_none());
    let first = sent.valid.values().map(|i| i.emission.utc).min().unwrap();
    let last = sent.valid.values().map(|i| i.emission.utc).max().unwrap();
    let listed = query::list_by_emission(
        &reader,
        &p.layout,
        first,
        last + jiff::SignedDuration::from_millis(1),
        0,
    )
    .await
    .unwrap();
    assert_eq!(listed.len() as u64, valid);
    assert!(listed
        .windows(2)
        .all(|w| w[0].emission_utc <= w[1].emission_utc));
    let ids: BTreeSet<i64> = listed.iter().map(|e| e.nfe_id).collect();
    assert_eq!(ids, sent.valid.keys().copied().collect());

    // The views have the tables' columns, and each invoice once with the oracle's exact net.
    let dataset = p.bigquery_dataset.as_str();
    for (view, table) in [
        (INVOICES_CURRENT, nfe::bigquery::INVOICES),
        (INVOICE_ITEMS_CURRENT, nfe::bigquery::INVOICE_ITEMS),
    ] {
        let columns = BigQueryAdmin::connect(&project, &ClientConfig::default())
            .await
            .unwrap()
            .query(&format!(
                "SELECT * FROM {} LIMIT 1",
                view.qualified(&project, dataset)
            ))
            .await
            .unwrap()
            .columns;
        let schema: Vec<String> = table
            .fields()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(columns, schema, "columns of {}", view.name);
    }
    let nets: Vec<(i64, Numeric)> = bq_records(
        &p,
        &format!(
            "SELECT nfe_id, net FROM {} ORDER BY nfe_id",
            INVOICES_CURRENT.qualified(&project, dataset)
        ),
    )
    .await
    .iter()
    .map(|r| {
        (
            int(&r["nfe_id"]),
            r["net"].as_str().unwrap().parse().unwrap(),
        )
    })
    .collect();
    assert_eq!(nets, want.nets.clone().into_iter().collect::<Vec<_>>());

    // Replay of the raw archive into another table and dataset: identical cells, and identical rows
    // in the views (the rows of the tables are the same too: nothing was delivered twice).
    let r = profile(&project, "replay", "");
    let r = Profile {
        archive_url: p.archive_url.clone(),
        ..r
    };
    invoices::provision(&r).await.unwrap();
    let replay = invoices::run_replay(&r, None, &RunSettings::default(), ShutdownSignal::never())
        .await
        .unwrap();
    assert_eq!(replay.received, sent.messages);
    assert_eq!(replay.invoices, valid);
    assert_eq!(replay.dead_letters_by_code, sent.codes);
    let (streamed, replayed) = (all_rows(&p).await, all_rows(&r).await);
    assert_eq!(streamed.len() as u64, 2 * valid);
    assert!(streamed == replayed, "replayed Bigtable rows differ");
    for (table, columns) in [
        (INVOICES_CURRENT.name, INVOICE_COLUMNS),
        (INVOICE_ITEMS_CURRENT.name, ITEM_COLUMNS),
    ] {
        let a = bigquery_rows(&p, table, columns).await;
        let b = bigquery_rows(&r, table, columns).await;
        assert_eq!(a.len(), b.len(), "{table}");
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "replayed {table} rows differ");
    }
    assert_totals(&query::inventory(&r).await.unwrap(), &want);

    // Everything delivered again (a replay of the raw archive into the first dataset), then
    // corrected versions of some invoices: a newer one (published twice) and, after it, an older one.
    // The raw tables now hold duplicates and three versions of those invoices; the views still hold
    // each invoice once, in the version Bigtable serves (the newest `CreateDate`), with only its lines.
    let again = invoices::run_replay(&p, None, &RunSettings::default(), ShutdownSignal::never())
        .await
        .unwrap();
    assert_eq!(again.invoices, valid);
    let g = generator(1_500);
    let corrected: Vec<i64> = sent.valid.keys().copied().step_by(150).collect();
    let mut records = sent.records.clone();
    let (mut newer, mut older) = (Vec::new(), Vec::new());
    for &id in &corrected {
        let n = other_version(&g, id, 60, 2);
        older.push(other_version(&g, id, -60, 3));
        records.insert(id, n.clone());
        newer.push(n);
    }
    let messages = [newer.clone(), newer, older]
        .concat()
        .into_iter()
        .map(|data| RawMessage {
            data: data.into(),
            ..Default::default()
        })
        .collect();
    common::publish(&client, &p, messages).await;
    // Until all are acknowledged: the Pub/Sub emulator may hold messages published after an earlier
    // streaming pull closed until the ack deadline (10 s) passes.
    let settings = RunSettings {
        stop_after: Some(3 * corrected.len() as u64),
        exit_when_idle: Some(Duration::from_secs(30)),
        ..RunSettings::default()
    };
    let report = invoices::run_stream(&p, &settings, ShutdownSignal::never())
        .await
        .unwrap();
    assert_eq!(
        (report.received, report.invoices),
        (3 * corrected.len() as u64, 3 * corrected.len() as u64),
        "{:?}",
        report.dead_letters_by_code
    );
    let want = decimal_totals(records.values().map(Vec::as_slice));
    assert_eq!(want.invoices, valid);
    assert_ne!(
        want.net,
        decimal_totals(sent.records.values().map(Vec::as_slice)).net
    );
    let inv = query::inventory(&p).await.unwrap();
    assert_totals(&inv, &want);
    assert_eq!(
        inv.bigquery_invoices_distinct,
        valid + 2 * corrected.len() as u64,
        "versions"
    );
    assert!(
        inv.bigquery_invoices >= 2 * valid + 3 * corrected.len() as u64,
        "the raw table keeps every copy: {inv:?}"
    );
    assert!(inv.bigquery_items >= 2 * items, "{inv:?}");
    assert_ne!(inv.bigquery_net, inv.bigquery_net_current);
    // The version in the views is the one Bigtable serves, with its single line.
    let list = corrected
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let heads = bq_records(
        &p,
        &format!(
            "SELECT nfe_id, net, content_hash FROM {} WHERE nfe_id IN ({list})",
            INVOICES_CURRENT.qualified(&project, dataset)
        ),
    )
    .await;
    assert_eq!(heads.len(), corrected.len());
    for h in &heads {
        let id = int(&h["nfe_id"]);
        let row = query::get_invoice(&reader, id).await.unwrap().unwrap();
        assert_eq!(h["content_hash"], row["hash"], "{id}");
        let net: Numeric = h["net"].as_str().unwrap().parse().unwrap();
        assert_eq!(net, row["net"].as_str().unwrap().parse().unwrap(), "{id}");
        assert_eq!(Some(&net), want.nets.get(&id), "{id}");
    }
    let lines = bq_records(
        &p,
        &format!(
            "SELECT nfe_id, line_number, CAST(quantity AS STRING) AS quantity FROM {} \
             WHERE nfe_id IN ({list})",
            INVOICE_ITEMS_CURRENT.qualified(&project, dataset)
        ),
    )
    .await;
    assert_eq!(lines.len(), corrected.len(), "{lines:?}");
    assert!(lines.iter().all(|l| int(&l["line_number"]) == 1
        && l["quantity"].as_str().unwrap().parse::<Numeric>().unwrap() == "2".parse().unwrap()));
    // Provisioning again replaces the views with the same definitions: nothing changes.
    invoices::provision(&p).await.unwrap();
    assert_eq!(query::inventory(&p).await.unwrap(), inv);
}

fn spawn_worker(config: &std::path::Path, idle_secs: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_invoices"))
        .args(["--config"])
        .arg(config)
        .args(["--profile", "test", "run", "--exit-when-idle"])
        .arg(idle_secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the invoices binary")
}

async fn wait_for_rows(p: &Profile, at_least: u64, within: Duration) -> u64 {
    let reader = query::reader(p).await.unwrap();
    let end = Instant::now() + within;
    loop {
        let n = reader
            .scan_prefix(Bytes::from_static(nfe::bigtable::INVOICE_PREFIX), 0)
            .await
            .unwrap()
            .len() as u64;
        if n >= at_least || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_and_sigterm_drains_and_exits_zero() {
    let emulators = start_stack().await;
    let project = emulators.project().to_string();
    // Small batches and one pull at a time, so the worker is mid-run when the signals arrive.
    let extra = "";
    let toml = profile_toml(&project, "crash", extra)
        + "max_outstanding_messages = 2000\nconcurrent_pulls = 1\nbigtable_batch_rows = 200\n";
    let dir = std::env::temp_dir().join(format!("invoices-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("invoices.toml");
    std::fs::write(&config, &toml).unwrap();
    let p = ConfigFile::parse(&toml, "t")
        .unwrap()
        .profile("test", "t")
        .unwrap();
    invoices::provision(&p).await.unwrap();
    let sent = publish(&p, 20_000).await;
    let valid = sent.valid.len() as u64;

    // SIGKILL mid-run.
    let mut worker = spawn_worker(&config, 30);
    let seen = wait_for_rows(&p, 1_000, Duration::from_secs(60)).await;
    assert!(
        seen >= 1_000 && seen < valid,
        "killed too late: {seen} of {valid}"
    );
    signal(&worker, "-KILL");
    assert!(!worker.wait().unwrap().success());

    // SIGTERM mid-run: drains, prints its report, exits 0.
    let mut worker = spawn_worker(&config, 30);
    let before = wait_for_rows(&p, seen + 500, Duration::from_secs(60)).await;
    assert!(before < valid, "stopped too late: {before} of {valid}");
    signal(&worker, "-TERM");
    let started = Instant::now();
    let status = worker.wait().unwrap();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(25));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut worker.stdout.take().unwrap(), &mut out).unwrap();
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report on stdout");
    assert_eq!(report["nacked"], 0, "a drained worker nacks nothing");
    assert_eq!(report["acked"], report["received"]);

    // A last worker takes the rest, including what the killed one held (redelivered after its lease).
    let last = spawn_worker(&config, 15);
    let out = last.wait_with_output().unwrap();
    assert!(out.status.success());
    let inv = query::inventory(&p).await.unwrap();
    assert_eq!(inv.bigtable_invoice_rows, valid, "no invoice lost");
    assert_totals(
        &inv,
        &decimal_totals(sent.records.values().map(Vec::as_slice)),
    );
    assert_eq!(inv.bigquery_invoices_distinct, valid);
    assert_eq!(inv.dead_letters_by_code, sent.codes);
    assert!(inv.raw_records >= sent.messages);
    let _ = std::fs::remove_dir_all(&dir);
}
