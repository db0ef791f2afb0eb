//! Integration tests of the Bigtable connector against the real cbtemulator, started by each test on a
//! free loopback port (through the `emulators` crate). Endpoints are passed in the configuration, never
//! through process-global environment variables, so the tests also run as threads under `cargo test`.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use emulators::{Emulators, Service};
use fluxo::testing::{GeneratorSource, TestStream};
use fluxo::{
    ErrorClass, Pipeline, RetryConfig, RunOptions, Sink, SinkBatch, SinkConfig, Status, Timestamp,
    WriteError,
};
use fluxo_gcp::bigtable::{
    AdminClient, BigtableReader, BigtableSink, BigtableSinkConfig, Delete, Expected, FamilySpec,
    KeyRange, ReadCell, ReadRow, RowMutation, SetCell, TableSpec,
};
use fluxo_gcp::ConfigError;

const INSTANCE: &str = "test-instance";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn start() -> Emulators {
    Emulators::start(&[Service::Bigtable]).expect("cbtemulator starts")
}

fn config(emu: &Emulators, table: &str) -> BigtableSinkConfig {
    BigtableSinkConfig::new(emu.project(), INSTANCE, table)
        .with_endpoint(emu.bigtable_host().expect("bigtable started"))
}

fn spec(families: &[&str]) -> TableSpec {
    TableSpec {
        families: families
            .iter()
            .map(|f| FamilySpec::max_versions(*f, 1))
            .collect(),
    }
}

async fn provision(cfg: &BigtableSinkConfig, families: &[&str]) -> AdminClient {
    let admin = AdminClient::connect(&cfg.validate().expect("valid config"))
        .await
        .expect("admin client");
    admin
        .provision_table(&cfg.table, &spec(families))
        .await
        .expect("provisioned");
    admin
}

/// Row `i`: key `row#<i:06>`, `cells` cells in families `a` (even) and `b` (odd), timestamp
/// `(1_700_000_000_000 + i)` ms.
fn row(i: u64, cells: usize) -> RowMutation {
    let ts = (1_700_000_000_000 + i as i64) * 1000;
    let mut r = RowMutation::new(format!("row#{i:06}"), Vec::with_capacity(cells));
    for c in 0..cells {
        let family = if c % 2 == 0 { "a" } else { "b" };
        r = r.set(
            family,
            format!("q{c:02}"),
            ts,
            format!("value-{i}-{c}-{}", "x".repeat(c)),
        );
    }
    r
}

/// What a reader returns for a row written with `row` (cells sorted by family, then qualifier).
fn expected(r: &RowMutation) -> ReadRow {
    let mut cells: Vec<ReadCell> = r
        .cells
        .iter()
        .map(|c| ReadCell {
            family: c.family.to_string(),
            qualifier: c.qualifier.clone(),
            timestamp_micros: c.timestamp_micros,
            value: c.value.clone(),
        })
        .collect();
    cells.sort_by(|x, y| (&x.family, &x.qualifier).cmp(&(&y.family, &y.qualifier)));
    ReadRow {
        key: r.key.clone(),
        cells,
    }
}

fn fast_retries(max_retries: u32) -> SinkConfig {
    SinkConfig {
        max_events: 200,
        max_delay: Duration::from_millis(20),
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_retries,
        },
        ..SinkConfig::default()
    }
}

#[test]
fn provisioning_is_idempotent_and_adds_missing_families() {
    let emu = start();
    runtime().block_on(async {
        let cfg = config(&emu, "prov_table");
        let admin = AdminClient::connect(&cfg.validate().unwrap())
            .await
            .unwrap();
        let spec1 = TableSpec {
            families: vec![
                FamilySpec::max_versions("a", 1),
                FamilySpec {
                    name: "b".into(),
                    max_versions: Some(3),
                    max_age_secs: Some(86_400),
                },
            ],
        };
        let first = admin.provision_table("prov_table", &spec1).await.unwrap();
        assert!(first.created_table);
        let second = admin.provision_table("prov_table", &spec1).await.unwrap();
        assert!(!second.created_table);
        assert!(second.added_families.is_empty());
        assert!(second.differing_families.is_empty(), "{second:?}");
        let mut spec2 = spec1.clone();
        spec2.families.push(FamilySpec::max_versions("c", 2));
        let third = admin.provision_table("prov_table", &spec2).await.unwrap();
        assert!(!third.created_table);
        assert_eq!(third.added_families, vec!["c".to_string()]);
        assert_eq!(
            admin.family_names("prov_table").await.unwrap(),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(admin.family_names("no_such_table").await.unwrap(), None);
        // The sink accepts the provisioned table with its families.
        let mut sink_cfg = cfg.clone();
        sink_cfg.families = vec!["a".into(), "c".into()];
        BigtableSink::connect(&sink_cfg)
            .await
            .expect("sink connects");
    });
}

#[test]
fn pipeline_round_trip_writes_exact_cells() {
    let emu = start();
    runtime().block_on(async {
        let cfg = config(&emu, "round_trip");
        provision(&cfg, &["a", "b"]).await;
        let n = 3_000u64;
        let sink = BigtableSink::connect(&cfg).await.unwrap();
        let stats = sink.stats();
        let (source, acks) = GeneratorSource::new(n, |i| row(i, 6)).with_acks();
        let p = Pipeline::new("bigtable-round-trip");
        p.read("Generate", source)
            .write("Bigtable", sink, fast_retries(3));
        p.run(RunOptions::default()).await.unwrap();
        let statuses = acks.statuses().await;
        assert_eq!(statuses.len(), n as usize);
        assert!(statuses.iter().all(|s| s.is_delivered()));
        assert_eq!(stats.entries(), n, "every row sent exactly once");

        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let rows = reader.scan_prefix("row#", 0).await.unwrap();
        let want: Vec<ReadRow> = (0..n).map(|i| expected(&row(i, 6))).collect();
        assert_eq!(rows.len(), want.len());
        assert_eq!(rows, want);
        // One row by key, a range with a limit.
        assert_eq!(
            reader.read_row("row#000042").await.unwrap(),
            Some(expected(&row(42, 6)))
        );
        assert_eq!(reader.read_row("row#999999").await.unwrap(), None);
        let range = reader
            .scan(
                KeyRange {
                    start: Bytes::from_static(b"row#000010"),
                    end: Bytes::from_static(b"row#000020"),
                },
                5,
            )
            .await
            .unwrap();
        assert_eq!(
            range,
            (10..15).map(|i| expected(&row(i, 6))).collect::<Vec<_>>()
        );
    });
}

#[test]
fn invalid_rows_are_rejected_and_the_others_written() {
    let emu = start();
    runtime().block_on(async {
        let cfg = config(&emu, "partial");
        provision(&cfg, &["a", "b"]).await;
        let sink = BigtableSink::connect(&cfg).await.unwrap();
        let mut values = Vec::new();
        for i in 0..20u64 {
            values.push((row(i, 4), Timestamp(i as i64)));
        }
        // Row 5 names a family the table lacks; row 11 has a timestamp that is not whole milliseconds.
        values[5]
            .0
            .cells
            .push(SetCell::new("missing", "q", 1_000, "v"));
        values[11].0.cells[0].timestamp_micros += 1;
        let (stream, acks) = TestStream::new().add_values(values.clone()).with_acks();
        let p = Pipeline::new("bigtable-partial");
        p.read("Script", stream)
            .write("Bigtable", sink, fast_retries(3));
        p.run(RunOptions::default()).await.unwrap();
        let statuses = acks.statuses().await;
        for (i, s) in statuses.iter().enumerate() {
            let want = if i == 5 || i == 11 {
                Status::Rejected
            } else {
                Status::Delivered
            };
            assert_eq!(*s, want, "row {i}");
        }
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let rows = reader.scan_prefix("row#", 0).await.unwrap();
        let want: Vec<ReadRow> = (0..20)
            .filter(|i| *i != 5 && *i != 11)
            .map(|i| expected(&row(i, 4)))
            .collect();
        assert_eq!(rows, want);
    });
}

#[test]
fn entry_failures_reported_by_the_server_are_partial() {
    let emu = start();
    let host = emu.bigtable_host().unwrap();
    let cfg = config(&emu, "server_partial");
    let rt = runtime();
    let sink = rt.block_on(async {
        provision(&cfg, &["a", "b", "gone"]).await;
        BigtableSink::connect(&cfg).await.unwrap()
    });
    // Drop a family behind the sink's back: its cached schema still lists it, so the server decides.
    let out = Command::new("/usr/lib/google-cloud-sdk/bin/cbt")
        .args(["-project", emu.project(), "-instance", INSTANCE])
        .args(["deletefamily", "server_partial", "gone"])
        .env("BIGTABLE_EMULATOR_HOST", &host)
        .output()
        .expect("cbt runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        let mut values: Vec<RowMutation> = (0..10).map(|i| row(i, 2)).collect();
        // Only the dropped family in row 3: cbtemulator applies a row's mutations one by one and keeps
        // those before a failing one (real Bigtable applies a row atomically).
        values[3].cells = vec![SetCell::new("gone", "q", 1_000, "v")];
        let batch = SinkBatch::from_values(values);
        match sink.write(&batch).await {
            Err(WriteError::Partial(failures)) => {
                assert_eq!(failures.len(), 1, "{failures:?}");
                assert_eq!(failures[0].0, 3);
                eprintln!("server said: {}", failures[0].1);
                assert!(!failures[0].1.is_retriable(), "{}", failures[0].1);
            }
            other => panic!("expected a partial failure, got {other:?}"),
        }
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let keys: Vec<Bytes> = reader
            .scan_prefix("row#", 0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        let want: Vec<Bytes> = (0..10).filter(|i| *i != 3).map(|i| row(i, 2).key).collect();
        assert_eq!(keys, want);
    });
}

#[test]
fn rewriting_the_same_cells_keeps_one_version() {
    let emu = start();
    runtime().block_on(async {
        let cfg = config(&emu, "idempotent");
        provision(&cfg, &["a", "b"]).await;
        for run in 0..2 {
            let sink = BigtableSink::connect(&cfg).await.unwrap();
            let (source, acks) = GeneratorSource::new(100, |i| row(i, 4)).with_acks();
            let p = Pipeline::new(&format!("bigtable-rewrite-{run}"));
            p.read("Generate", source)
                .write("Bigtable", sink, fast_retries(3));
            p.run(RunOptions::default()).await.unwrap();
            assert!(acks.statuses().await.iter().all(|s| s.is_delivered()));
        }
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let rows = reader.scan_prefix("row#", 0).await.unwrap();
        let want: Vec<ReadRow> = (0..100).map(|i| expected(&row(i, 4))).collect();
        assert_eq!(
            rows, want,
            "each cell exactly once after two identical writes"
        );
    });
}

#[test]
fn a_batch_over_the_request_limits_is_split() {
    let emu = start();
    runtime().block_on(async {
        let mut cfg = config(&emu, "split");
        provision(&cfg, &["a", "b"]).await;
        cfg.max_entries_per_request = 10;
        cfg.max_mutations_per_request = 35; // 3 rows of 10 cells per request at most
        let sink = BigtableSink::connect(&cfg).await.unwrap();
        let stats = sink.stats();
        let rows: Vec<RowMutation> = (0..30).map(|i| row(i, 10)).collect();
        sink.write(&SinkBatch::from_values(rows.clone()))
            .await
            .expect("written");
        assert_eq!(
            stats.requests(),
            10,
            "30 rows of 10 cells, 35 mutations per request"
        );
        let rows2: Vec<RowMutation> = (100..125).map(|i| row(i, 1)).collect();
        sink.write(&SinkBatch::from_values(rows2.clone()))
            .await
            .expect("written");
        assert_eq!(stats.requests(), 13, "25 rows, 10 entries per request");
        // A row with deletions: applied before its cells.
        let replace = RowMutation::new("row#000000", vec![])
            .delete(Delete::Row)
            .set("a", "only", 5_000, "v");
        sink.write(&SinkBatch::from_values(vec![replace]))
            .await
            .unwrap();
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let got = reader.scan_prefix("row#", 0).await.unwrap();
        let mut want: Vec<ReadRow> = vec![ReadRow {
            key: Bytes::from_static(b"row#000000"),
            cells: vec![ReadCell {
                family: "a".into(),
                qualifier: Bytes::from_static(b"only"),
                timestamp_micros: 5_000,
                value: Bytes::from_static(b"v"),
            }],
        }];
        want.extend((1..30).map(|i| expected(&row(i, 10))));
        want.extend((100..125).map(|i| expected(&row(i, 1))));
        assert_eq!(got, want);
    });
}

#[test]
fn writes_survive_an_emulator_restart() {
    let emu = Arc::new(Mutex::new(start()));
    let cfg = config(&emu.lock().unwrap(), "restart");
    runtime().block_on(async {
        provision(&cfg, &["a", "b"]).await;
        let sink = BigtableSink::connect(&cfg).await.unwrap();
        let stats = sink.stats();
        let n = 4_000u64;
        // Index of the next row the source generates, to know which rows were made after the restart.
        let generated = Arc::new(AtomicU64::new(0));
        let g = Arc::clone(&generated);
        let (source, acks) = GeneratorSource::new(n, move |i| {
            g.store(i, Ordering::SeqCst);
            row(i, 4)
        })
        .pause_every(20, Duration::from_millis(25))
        .with_acks();
        let p = Pipeline::with_config(fluxo::PipelineConfig {
            name: "bigtable-restart".into(),
            batch_size: 20,
            ..fluxo::PipelineConfig::default()
        });
        let sink_config = SinkConfig {
            max_events: 100,
            max_delay: Duration::from_millis(20),
            retry: RetryConfig {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                max_retries: 60,
            },
            ..SinkConfig::default()
        };
        p.read("Generate", source)
            .write("Bigtable", sink, sink_config);
        // Let some rows through, stop the emulator for a while, restart it empty and re-create the table.
        let control = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let e = Arc::clone(&emu);
            tokio::task::spawn_blocking(move || e.lock().unwrap().stop(Service::Bigtable))
                .await
                .unwrap()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let e = Arc::clone(&emu);
            tokio::task::spawn_blocking(move || e.lock().unwrap().restart(Service::Bigtable))
                .await
                .unwrap()
                .unwrap();
            provision(&cfg, &["a", "b"]).await;
            generated.load(Ordering::SeqCst) + 1
        };
        let (run, after_restart) = tokio::join!(p.run(RunOptions::default()), control);
        run.unwrap();
        assert!(
            after_restart < n,
            "the source finished before the restart; slow it down"
        );
        let statuses = acks.statuses().await;
        assert_eq!(statuses.len(), n as usize);
        let not_delivered = statuses.iter().filter(|s| !s.is_delivered()).count();
        assert_eq!(not_delivered, 0, "no element lost or nacked");
        assert!(
            stats.entries() > n,
            "some rows were retried: {} sent",
            stats.entries()
        );
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let rows = reader.scan_prefix("row#", 0).await.unwrap();
        let after: Vec<ReadRow> = rows
            .into_iter()
            .filter(|r| r.key.as_ref() >= format!("row#{after_restart:06}").as_bytes())
            .collect();
        let want: Vec<ReadRow> = (after_restart..n).map(|i| expected(&row(i, 4))).collect();
        assert_eq!(after.len(), want.len());
        assert_eq!(after, want);
    });
}

#[test]
fn configuration_errors_are_one_line() {
    let emu = start();
    runtime().block_on(async {
        // Bad names.
        for (cfg, field) in [
            (config(&emu, "bad table"), "bigtable.table"),
            (
                BigtableSinkConfig {
                    instance: "inst".into(),
                    ..config(&emu, "t")
                },
                "bigtable.instance",
            ),
            (
                BigtableSinkConfig {
                    max_bytes_per_request: 0,
                    ..config(&emu, "t")
                },
                "bigtable.max_bytes_per_request",
            ),
        ] {
            let err = BigtableSink::connect(&cfg).await.unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(field), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        // A missing table names the command that creates it.
        let cfg = config(&emu, "absent_table");
        let err = BigtableSink::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, ConfigError::NotFound { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("absent_table") && msg.contains("cbt"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        // A missing family too.
        let mut cfg = config(&emu, "with_a");
        provision(&cfg, &["a"]).await;
        cfg.families = vec!["a".into(), "zz".into()];
        let msg = BigtableSink::connect(&cfg).await.unwrap_err().to_string();
        assert!(
            msg.contains("column family") && msg.contains("zz") && msg.contains("createfamily"),
            "{msg}"
        );
        // Nothing listening: refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = config(&emu, "t").with_endpoint(format!("127.0.0.1:{port}"));
        let started = Instant::now();
        let err = BigtableSink::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, ConfigError::Unreachable { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        // Something listening that never answers: the connect timeout applies.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = config(&emu, "t").with_endpoint(silent.local_addr().unwrap().to_string());
        cfg.connect_timeout_ms = 1_000;
        let started = Instant::now();
        let err = BigtableSink::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, ConfigError::Unreachable { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("1000 ms"), "{err}");
        drop(silent);
    });
}

#[test]
fn compare_and_set_has_cas_semantics() {
    let emu = start();
    runtime().block_on(async {
        let cfg = config(&emu, "checkpoints");
        provision(&cfg, &["c"]).await;
        let reader = BigtableReader::connect(&cfg).await.unwrap();
        let cell = |v: &'static str| SetCell::new("c", "offset", 1_000, v);
        // Absent: the first writer wins, the second sees the cell.
        assert!(reader
            .compare_and_set("ckpt", Expected::Absent, cell("10"))
            .await
            .unwrap());
        assert!(!reader
            .compare_and_set("ckpt", Expected::Absent, cell("11"))
            .await
            .unwrap());
        // A stale expectation fails and leaves the value.
        assert!(!reader
            .compare_and_set(
                "ckpt",
                Expected::Value(Bytes::from_static(b"1")),
                cell("12")
            )
            .await
            .unwrap());
        let value = |r: Option<ReadRow>| r.map(|r| r.cells[0].value.clone());
        assert_eq!(
            value(reader.read_row("ckpt").await.unwrap()),
            Some(Bytes::from_static(b"10"))
        );
        // The right expectation wins (same timestamp: the cell is replaced).
        assert!(reader
            .compare_and_set(
                "ckpt",
                Expected::Value(Bytes::from_static(b"10")),
                cell("20")
            )
            .await
            .unwrap());
        let row = reader.read_row("ckpt").await.unwrap().unwrap();
        assert_eq!(row.cells.len(), 1);
        assert_eq!(row.cells[0].value, Bytes::from_static(b"20"));
        // Concurrent writers expecting the same value: exactly one wins.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let r = reader.clone();
            tasks.push(tokio::spawn(async move {
                let v = Bytes::from(format!("w{w}"));
                r.compare_and_set(
                    "ckpt",
                    Expected::Value(Bytes::from_static(b"20")),
                    SetCell::new("c", "offset", 1_000, v),
                )
                .await
                .unwrap()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as u32;
        }
        assert_eq!(wins, 1);
        // Generic check-and-mutate: no predicate = "the row has any cell".
        let set = RowMutation::new("", vec![]).set("c", "other", 2_000, "x");
        let none = RowMutation::default();
        assert!(reader
            .check_and_mutate("ckpt", None, &set, &none)
            .await
            .unwrap());
        assert!(!reader
            .check_and_mutate("empty-row", None, &none, &set)
            .await
            .unwrap());
        assert_eq!(
            reader
                .read_row("empty-row")
                .await
                .unwrap()
                .map(|r| r.cells.len()),
            Some(1)
        );
    });
}
