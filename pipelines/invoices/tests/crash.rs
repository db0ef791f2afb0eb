//! BigQuery stays exact through everything at-least-once delivery does, on the emulators: a backlog is
//! streamed by a worker process; BigQuery is frozen (SIGSTOP) longer than the append deadline so the
//! sink's appends time out and are sent again; the worker is killed (SIGKILL) mid-run and a second one
//! takes over the redelivered messages; then the raw archive is replayed into the same dataset. The
//! raw tables then hold copies, and the query surface (the views `invoices_current` and
//! `invoice_items_current`) still returns each valid invoice and each line exactly once, with `SUM(net)`
//! equal to the exact total Python's `decimal` module computes from the same records.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emulators::Service;
use fluxo_gcp::bigquery::{BigQueryAdmin, ClientConfig};
use fluxo_gcp::pubsub::raw::proto::PubsubMessage as RawMessage;
use fluxo_gcp::pubsub::{Endpoint, PubsubClient};
use invoice_api::{Generator, GeneratorConfig};

use common::{profile_toml_tuned, publish, python_totals, trim_decimal};

const INVOICES: u64 = 6_000;

fn signal(target: &str, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), target.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {target}");
}

/// A worker process: `invoices run` on the test profile until idle.
fn worker(config: &std::path::Path, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_invoices"))
        .args(["--config"])
        .arg(config)
        .args([
            "--profile",
            "test",
            "run",
            "--worker",
            name,
            // Longer than the ack deadline: the killed worker's messages come back within it.
            "--exit-when-idle",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("invoices worker starts")
}

/// One cell of the first row of a query, as text.
async fn query_cells(admin: &BigQueryAdmin, sql: &str) -> BTreeMap<String, String> {
    let rec = admin
        .query(sql)
        .await
        .expect("query")
        .records()
        .into_iter()
        .next()
        .expect("a row");
    rec.into_iter()
        .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_default()))
        .collect()
}

/// `COUNT(*)` of the raw `invoices` table, retried while the emulator recovers from a freeze (it resets
/// the connections that idled while it was stopped).
async fn raw_rows(admin: &BigQueryAdmin, project: &str, dataset: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) AS n FROM `{project}.{dataset}.invoices`");
    let mut attempts = 0;
    loop {
        let n = admin.query(&sql).await.map(|r| {
            r.records()
                .into_iter()
                .next()
                .and_then(|rec| rec.get("n").and_then(|v| v.as_str()?.parse().ok()))
        });
        match n {
            Ok(Some(n)) => return n,
            Ok(None) if attempts < 20 => {
                attempts += 1;
                eprintln!("count answered without a count; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(None) => panic!("count answered without a count"),
            Err(e) if attempts < 20 => {
                attempts += 1;
                eprintln!("count failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("count: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_stay_exact_through_stall_kill_redelivery_and_replay() {
    let emulators = common::start_stack().await;
    let project = emulators.project().to_string();
    let name = "crash";
    // Short append deadline (the freeze below is longer), short ack deadline (fast redelivery).
    let toml = profile_toml_tuned(&project, name, "bigquery_append_timeout_ms = 1500");
    let dir = std::env::temp_dir().join(format!("crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("invoices.toml");
    std::fs::write(&config, &toml).unwrap();
    let p = invoices::config::ConfigFile::parse(&toml, "test.toml")
        .unwrap()
        .profile("test", "test.toml")
        .unwrap();
    invoices::provision(&p).await.unwrap();

    // The API's records (2% malformed) and the exact totals of the valid ones, computed by Python.
    let g = Generator::new(GeneratorConfig {
        seed: 11,
        count: INVOICES,
        ..GeneratorConfig::default()
    })
    .unwrap();
    let records: Vec<Vec<u8>> = (1..=INVOICES).map(|id| g.record(id)).collect();
    let valid: Vec<&[u8]> = (1..=INVOICES)
        .filter(|id| g.defect(*id).is_none())
        .map(|id| &records[id as usize - 1][..])
        .collect();
    let totals = python_totals(&valid);
    assert_eq!(totals.len(), valid.len(), "valid records have distinct ids");
    let expected_items: usize = valid
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(r).unwrap()["ItemList"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    let expected_net = python_sum(&totals.values().map(|(_, n)| n.clone()).collect::<Vec<_>>());

    let client = PubsubClient::connect(Endpoint::pubsub(None).unwrap(), &project)
        .await
        .unwrap();
    publish(
        &client,
        &p,
        records
            .iter()
            .map(|r| RawMessage {
                data: r.clone().into(),
                ..RawMessage::default()
            })
            .collect(),
    )
    .await;

    let admin = BigQueryAdmin::connect(&project, &ClientConfig::default())
        .await
        .unwrap();
    let bq = emulators.process_group(Service::BigQuery).unwrap();
    let mut first = worker(&config, "worker-a");
    let wait_rows = |at_least: u64| {
        let admin = admin.clone();
        let project = project.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let n = raw_rows(&admin, &project, name).await;
                if n >= at_least {
                    return n;
                }
                assert!(Instant::now() < deadline, "no progress: {n} rows");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // 1. Freeze BigQuery mid-stream for four append deadlines: appends time out and are sent again.
    wait_rows(300).await;
    signal(&format!("-{bq}"), "STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(&format!("-{bq}"), "CONT");
    // 2. Kill the worker mid-run: what it wrote and had not acknowledged comes back to the next one.
    let before_kill = wait_rows(INVOICES / 3).await;
    signal(&first.id().to_string(), "KILL");
    let _ = first.wait();
    eprintln!("worker-a killed after {before_kill} rows");
    let mut second = worker(&config, "worker-b");
    let status = tokio::task::spawn_blocking(move || second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker-b: {status}");
    // 3. Replay the raw archive into the same dataset.
    let replay = Command::new(env!("CARGO_BIN_EXE_invoices"))
        .args(["--config"])
        .arg(&config)
        .args(["--profile", "test", "replay"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(replay.success(), "replay: {replay}");

    // The raw table holds copies; the views hold each invoice and line once, with exact totals.
    let raw = raw_rows(&admin, &project, name).await;
    eprintln!(
        "raw invoices table: {raw} rows for {} valid invoices",
        valid.len()
    );
    assert!(
        raw >= 2 * valid.len() as u64,
        "the replay wrote every invoice again: {raw} raw rows"
    );
    let view = |v: &str| format!("`{project}.{name}.{v}`");
    let cells = query_cells(
        &admin,
        &format!(
            "SELECT COUNT(*) AS n, SUM(net) AS net, COUNT(DISTINCT nfe_id) AS ids FROM {}",
            view(nfe::bigquery::INVOICES_CURRENT.name)
        ),
    )
    .await;
    assert_eq!(cells["n"], valid.len().to_string(), "invoices_current rows");
    assert_eq!(cells["ids"], valid.len().to_string());
    assert_eq!(trim_decimal(&cells["net"]), expected_net, "SUM(net)");
    let cells = query_cells(
        &admin,
        &format!(
            "SELECT COUNT(*) AS n FROM {}",
            view(nfe::bigquery::INVOICE_ITEMS_CURRENT.name)
        ),
    )
    .await;
    assert_eq!(
        cells["n"],
        expected_items.to_string(),
        "invoice_items_current rows"
    );
    // Per invoice, too: every net equals Python's.
    let rows = admin
        .query(&format!(
            "SELECT nfe_id, net FROM {}",
            view(nfe::bigquery::INVOICES_CURRENT.name)
        ))
        .await
        .unwrap()
        .records();
    let got: BTreeMap<i64, String> = rows
        .iter()
        .map(|r| {
            (
                r["nfe_id"].as_str().unwrap().parse().unwrap(),
                trim_decimal(r["net"].as_str().unwrap()),
            )
        })
        .collect();
    let want: BTreeMap<i64, String> = totals.iter().map(|(k, (_, n))| (*k, n.clone())).collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The exact sum of decimal texts, by Python's `decimal` module.
fn python_sum(values: &[String]) -> String {
    let out = common::python_json(
        "import sys, json\nfrom decimal import Decimal, getcontext\ngetcontext().prec = 200\nprint(format(sum((Decimal(v) for v in json.load(sys.stdin)), Decimal(0)), 'f'))",
        &values,
    );
    trim_decimal(String::from_utf8(out).unwrap().trim())
}
