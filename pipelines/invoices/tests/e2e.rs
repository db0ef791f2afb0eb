//! The invoices pipeline end to end on the real emulators (Pub/Sub, Bigtable, fake-gcs-server,
//! bqemulator): every valid invoice lands in Bigtable and BigQuery with exact totals, every malformed
//! record is a dead letter with the right code (in Cloud Storage and on the dead-letter topic), the run
//! report equals what the stores hold when counted independently, a replay of the raw archive writes
//! identical Bigtable cells and BigQuery rows, and a worker killed with SIGKILL or stopped with SIGTERM
//! loses nothing.

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

use common::{drain, profile, profile_toml, run_until_idle, start_stack, trim_decimal};

/// What the generator sent: valid records by id, and the expected code of each malformed one.
struct Sent {
    valid: BTreeMap<i64, nfe::Invoice>,
    codes: BTreeMap<String, u64>,
    messages: u64,
}

/// Publishes records 1..=count of a generator with 5% malformed records, plus one copy of record 1
/// flagged by `ingest` as a repeated id within its page.
async fn publish(p: &Profile, count: u64) -> Sent {
    let g = Generator::new(GeneratorConfig {
        seed: 11,
        count,
        malformed_share: 0.05,
        ..GeneratorConfig::default()
    })
    .unwrap();
    let validator = nfe::ValidationConfig::default().build().unwrap();
    let client = PubsubClient::connect(Endpoint::resolve(None).unwrap(), &p.project)
        .await
        .unwrap();
    let topic = client.topic_path(&p.topic).unwrap();
    let mut sent = Sent {
        valid: BTreeMap::new(),
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

async fn bigquery_rows(p: &Profile, table: &str, columns: &str) -> Vec<String> {
    let admin = BigQueryAdmin::connect(&p.project, &ClientConfig::default())
        .await
        .unwrap();
    let sql = format!(
        "SELECT DISTINCT {columns} FROM `{}.{}.{table}`",
        p.project, p.bigquery_dataset
    );
    let mut rows: Vec<String> = admin
        .query(&sql)
        .await
        .unwrap()
        .records()
        .into_iter()
        .map(|r| serde_json::to_string(&r).unwrap())
        .collect();
    rows.sort();
    rows
}

const INVOICE_COLUMNS: &str = "nfe_id, nfe_number, emission_time, emission_date, emission_raw, \
    creation_time, creation_raw, CAST(discount AS STRING) AS discount, CAST(gross AS STRING) AS gross, \
    CAST(net AS STRING) AS net, item_count, content_hash, message_id, publish_time";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_then_replay_land_everything_exactly_once_per_invoice() {
    let emulators = start_stack().await;
    let project = emulators.project().to_string();
    let p = profile(&project, "stream", "");
    invoices::provision(&p).await.unwrap();
    invoices::provision(&p)
        .await
        .expect("provisioning twice is fine");
    let client = PubsubClient::connect(Endpoint::resolve(None).unwrap(), &project)
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

    let report = run_until_idle(&p).await;
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

    // Counted from the stores themselves.
    let inv = query::inventory(&p).await.unwrap();
    assert_eq!(inv.bigtable_invoice_rows, valid);
    assert_eq!(inv.bigtable_index_rows, valid);
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

    // Exact totals in BigQuery (NUMERIC comes back at scale 9: compare without trailing zeros).
    let admin = BigQueryAdmin::connect(&project, &ClientConfig::default())
        .await
        .unwrap();
    let nets: BTreeMap<i64, String> = admin
        .query(&format!(
            "SELECT nfe_id, CAST(net AS STRING) AS net FROM `{project}.{}.invoices`",
            p.bigquery_dataset
        ))
        .await
        .unwrap()
        .records()
        .into_iter()
        .map(|r| {
            let id = match &r["nfe_id"] {
                serde_json::Value::String(s) => s.parse().unwrap(),
                v => v.as_i64().unwrap(),
            };
            (id, trim_decimal(r["net"].as_str().unwrap()))
        })
        .collect();
    let expected: BTreeMap<i64, String> = sent
        .valid
        .values()
        .map(|i| (i.nfe_id, trim_decimal(&i.net.to_string())))
        .collect();
    let wrong = expected
        .iter()
        .filter(|(id, net)| nets.get(id) != Some(net))
        .count();
    assert_eq!((nets.len(), wrong), (expected.len(), 0), "BigQuery nets");

    // Replay of the raw archive into another table and dataset: identical cells and rows.
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
    for table_columns in [
        ("invoices", INVOICE_COLUMNS),
        (
            "invoice_items",
            "nfe_id, line_number, emission_date, product_name, product_key, \
             CAST(unit_value AS STRING) AS unit_value, CAST(quantity AS STRING) AS quantity, \
             CAST(line_total AS STRING) AS line_total, content_hash",
        ),
    ] {
        let a = bigquery_rows(&p, table_columns.0, table_columns.1).await;
        let b = bigquery_rows(&r, table_columns.0, table_columns.1).await;
        assert_eq!(a.len(), b.len(), "{}", table_columns.0);
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "replayed {} rows differ", table_columns.0);
    }
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
    assert_eq!(inv.bigtable_index_rows, valid);
    assert_eq!(inv.bigquery_invoices_distinct, valid);
    assert_eq!(inv.dead_letters_by_code, sent.codes);
    assert!(inv.raw_records >= sent.messages);
    let _ = std::fs::remove_dir_all(&dir);
}
