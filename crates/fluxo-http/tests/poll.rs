//! The polling source against the reference invoice API over real HTTP: every record arrives in every
//! pagination style, with each fault switch on; checkpoints only move over delivered pages and never
//! skip; runs resume from them; leases keep a second run out; fatal answers end the run clearly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluxo::testing::CollectingSink;
use fluxo::{Pipeline, PipelineConfig, RunOptions, SinkConfig};
use fluxo_http::{
    Auth, CheckpointStore, HttpPage, HttpSource, HttpSourceConfig, MemoryCheckpointStore, Outcome,
    Pagination, RetryPolicy, RunSummary,
};
use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};

const TOKEN_ENV: &str = "FLUXO_HTTP_TEST_TOKEN";

async fn api(count: u64, faults: Faults) -> RunningApi {
    let g = Generator::new(GeneratorConfig {
        count,
        malformed_share: 0.05,
        ..GeneratorConfig::default()
    })
    .unwrap();
    RunningApi::start("127.0.0.1:0", g, Some("tok".into()), faults)
        .await
        .unwrap()
}

fn config(api: &RunningApi, pagination: Pagination) -> HttpSourceConfig {
    let (path, size_param) = match pagination {
        Pagination::Cursor { .. } => ("/invoices/feed", "limit"),
        _ => ("/invoices", "page_size"),
    };
    HttpSourceConfig {
        url: format!("{}{path}", api.url()),
        pagination,
        page_size: Some(250),
        page_size_param: size_param.into(),
        auth: Auth::Bearer {
            token_env: TOKEN_ENV.into(),
        },
        request_timeout_ms: 2_000,
        retry: RetryPolicy {
            max_attempts: 30,
            initial_backoff_ms: 5,
            max_backoff_ms: 50,
            max_retry_after_secs: 5,
        },
        run_id: "test-run".into(),
        ..HttpSourceConfig::default()
    }
}

fn page_number() -> Pagination {
    Pagination::PageNumber {
        page_param: "page".into(),
        first_page: 1,
    }
}

/// Splits pages into records' exact bytes (as the ingest pipeline does).
fn records(page: HttpPage) -> Vec<Vec<u8>> {
    match nfe::split_page(&page.records) {
        Ok(p) => p.records.iter().map(|r| r.raw.to_vec()).collect(),
        Err(_) => Vec::new(),
    }
}

struct Run {
    records: Vec<Vec<u8>>,
    summary: RunSummary,
    error: Option<String>,
}

async fn run(
    cfg: &HttpSourceConfig,
    store: MemoryCheckpointStore,
    sink: CollectingSink<Vec<u8>>,
    out: fluxo::testing::Output<Vec<u8>>,
) -> Run {
    let valid = cfg
        .validate_with(|k| (k == TOKEN_ENV).then(|| "tok".to_string()))
        .unwrap();
    let source = HttpSource::new(valid, store);
    let summary = source.summary();
    let p = Pipeline::with_config(PipelineConfig {
        name: "poll-test".into(),
        idle_timeout: None,
        ..PipelineConfig::default()
    });
    p.read("Poll", source)
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    let result = p.run(RunOptions::default()).await;
    let summary = summary.lock().unwrap().clone();
    Run {
        records: out.values(),
        summary,
        error: result.err().map(|e| e.to_string()),
    }
}

async fn run_collecting(cfg: &HttpSourceConfig, store: MemoryCheckpointStore) -> Run {
    let (sink, out) = CollectingSink::new();
    run(cfg, store, sink, out).await
}

/// Every record of the API arrived (at least once); returns how many arrived more than once.
fn assert_all_arrived(g: &Generator, got: &[Vec<u8>]) -> usize {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for r in got {
        *counts.entry(r.as_slice()).or_default() += 1;
    }
    for id in 1..=g.count() {
        assert!(
            counts.contains_key(g.record(id).as_slice()),
            "record {id} is missing"
        );
    }
    assert_eq!(counts.len() as u64, g.count(), "unexpected records");
    counts.values().filter(|&&n| n > 1).count()
}

/// Cursor checkpoints `after-N` only grow.
fn assert_monotonic(commits: &[String]) {
    let ns: Vec<u64> = commits
        .iter()
        .map(|c| c.trim_start_matches("after-").parse().unwrap())
        .collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
}

#[tokio::test]
async fn every_record_exactly_once_in_each_pagination_style() {
    for pagination in [Pagination::default(), Pagination::NextLink, page_number()] {
        let api = api(3_000, Faults::default()).await;
        let g = api.api().generator().clone();
        let store = MemoryCheckpointStore::new();
        let r = run_collecting(&config(&api, pagination.clone()), store.clone()).await;
        assert_eq!(r.error, None, "{pagination:?}");
        assert_eq!(r.summary.outcome, Outcome::CaughtUp, "{pagination:?}");
        assert_eq!(r.records.len(), 3_000, "{pagination:?}");
        assert_eq!(assert_all_arrived(&g, &r.records), 0, "{pagination:?}");
        assert_eq!(r.summary.records, 3_000);
        // A second run reads nothing new (page-number and next-link styles re-read the last partial
        // page; the cursor style reads nothing).
        let again = run_collecting(&config(&api, pagination.clone()), store.clone()).await;
        assert_eq!(again.summary.outcome, Outcome::CaughtUp);
        assert!(again.records.len() <= 250, "{pagination:?}");
        if matches!(pagination, Pagination::Cursor { .. }) {
            assert_eq!(again.records.len(), 0);
            assert_eq!(store.load().await.unwrap().as_deref(), Some("after-3000"));
        }
    }
}

#[tokio::test]
async fn no_record_is_missing_with_each_fault_switch_on() {
    let switches = [
        Faults {
            rate_429: 0.3,
            retry_after_secs: 0,
            ..Faults::default()
        },
        Faults {
            rate_5xx: 0.3,
            ..Faults::default()
        },
        Faults {
            rate_timeout: 0.3,
            hang_secs: 2,
            ..Faults::default()
        },
        Faults {
            rate_truncate: 0.3,
            ..Faults::default()
        },
        Faults {
            rate_duplicate: 0.5,
            ..Faults::default()
        },
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    ];
    for faults in switches {
        let api = api(2_000, faults.clone()).await;
        let g = api.api().generator().clone();
        let store = MemoryCheckpointStore::new();
        let mut cfg = config(&api, Pagination::default());
        cfg.request_timeout_ms = 500;
        let r = run_collecting(&cfg, store.clone()).await;
        assert_eq!(r.error, None, "{faults:?}");
        assert_eq!(r.summary.outcome, Outcome::CaughtUp, "{faults:?}");
        let dups = assert_all_arrived(&g, &r.records);
        if faults.rate_duplicate > 0.0 {
            assert!(dups > 0, "duplicates were injected");
        } else {
            assert_eq!(dups, 0, "{faults:?}");
        }
        assert_monotonic(&store.commits());
        assert_eq!(store.load().await.unwrap().as_deref(), Some("after-2000"));
        let stats = api.api().stats();
        let injected =
            stats.throttled + stats.server_errors + stats.hung + stats.truncated + stats.duplicated;
        if faults.latency_ms == 0 {
            assert!(injected > 0, "{faults:?}: no fault was injected");
        }
        if faults.rate_duplicate == 0.0 && faults.latency_ms == 0 {
            assert!(r.summary.retries > 0, "{faults:?}");
        }
    }
}

#[tokio::test]
async fn a_failed_delivery_holds_the_checkpoint_and_the_next_run_fills_the_gap() {
    let api = api(2_000, Faults::default()).await;
    let g = api.api().generator().clone();
    let store = MemoryCheckpointStore::new();
    let cfg = config(&api, Pagination::default());
    // The sink rejects one record of the fourth page (ids 751..=1000).
    let poison = g.record(800);
    let (sink, out) = CollectingSink::new();
    let sink = sink.rejecting(move |r: &Vec<u8>| *r == poison);
    let first = run(&cfg, store.clone(), sink, out).await;
    assert!(matches!(first.summary.outcome, Outcome::Failed(_)));
    let committed = store.load().await.unwrap().unwrap();
    let n: u64 = committed.trim_start_matches("after-").parse().unwrap();
    assert!(
        n < 800,
        "the checkpoint moved past an undelivered record: {n}"
    );
    assert_monotonic(&store.commits());
    // The next run resumes after the checkpoint: together, the two runs delivered everything.
    let second = run_collecting(&cfg, store.clone()).await;
    assert_eq!(second.summary.outcome, Outcome::CaughtUp);
    assert_eq!(
        second.summary.started_from.as_deref(),
        Some(committed.as_str())
    );
    let mut all = first.records.clone();
    all.extend(second.records.clone());
    assert_all_arrived(&g, &all);
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-2000"));
}

#[tokio::test]
async fn page_cap_stops_cleanly_and_the_next_run_continues() {
    let api = api(2_000, Faults::default()).await;
    let g = api.api().generator().clone();
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, Pagination::default());
    cfg.max_pages = Some(3);
    let first = run_collecting(&cfg, store.clone()).await;
    assert_eq!(first.summary.outcome, Outcome::MaxPages);
    assert_eq!(first.records.len(), 750);
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-750"));
    cfg.max_pages = None;
    let second = run_collecting(&cfg, store.clone()).await;
    assert_eq!(second.records.len(), 1_250);
    let mut all = first.records;
    all.extend(second.records);
    assert_eq!(assert_all_arrived(&g, &all), 0);
}

#[tokio::test]
async fn a_second_run_does_not_poll_while_the_lease_is_held() {
    let api = api(100, Faults::default()).await;
    let store = MemoryCheckpointStore::new();
    assert!(store
        .acquire_lease("other-run".into(), Duration::from_secs(60))
        .await
        .unwrap());
    let r = run_collecting(&config(&api, Pagination::default()), store.clone()).await;
    assert_eq!(r.summary.outcome, Outcome::LeaseHeld);
    assert_eq!(r.error, None);
    assert_eq!(api.api().stats().requests, 0);
    assert_eq!(store.load().await.unwrap(), None);
}

#[tokio::test]
async fn a_concurrent_commit_stops_the_run() {
    // Two runs that both got past the lease (e.g. a store without leases): the compare-and-set lets
    // only one advance; the other stops with a conflict instead of moving the checkpoint backwards.
    let api = api(2_000, Faults::default()).await;
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, Pagination::default());
    cfg.max_pages_in_flight = 1;
    let valid = cfg
        .validate_with(|k| (k == TOKEN_ENV).then(|| "tok".to_string()))
        .unwrap();
    // Another writer advances the checkpoint as soon as this run starts.
    let meddler = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let current = meddler.load().await.unwrap();
        meddler.commit(current, "after-1999".into()).await.unwrap();
    });
    api.api()
        .set_faults(Faults {
            latency_ms: 20,
            ..Faults::default()
        })
        .unwrap();
    let source = HttpSource::new(valid, store.clone());
    let summary = source.summary();
    let p = Pipeline::new("conflict");
    let (sink, _out) = CollectingSink::new();
    p.read("Poll", source)
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    let result = p.run(RunOptions::default()).await;
    let s = summary.lock().unwrap().clone();
    assert!(
        matches!(&s.outcome, Outcome::Failed(m) if m.contains("checkpoint moved")),
        "{:?}",
        s.outcome
    );
    assert!(result.is_err());
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-1999"));
}

#[tokio::test]
async fn fatal_answers_end_the_run_with_one_line() {
    let api = api(100, Faults::default()).await;
    let store = MemoryCheckpointStore::new();
    let cfg = config(&api, Pagination::default());
    let valid = cfg
        .validate_with(|k| (k == TOKEN_ENV).then(|| "s3cr3t-value".to_string()))
        .unwrap();
    let source = HttpSource::new(valid, store.clone());
    let summary = source.summary();
    let p = Pipeline::new("fatal");
    let (sink, _out) = CollectingSink::new();
    p.read("Poll", source)
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    let err = p.run(RunOptions::default()).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    assert!(!format!("{:?}", summary.lock().unwrap()).contains("s3cr3t"));
    assert_eq!(api.api().stats().requests, 1, "4xx must not be retried");
    assert_eq!(store.load().await.unwrap(), None);
}

#[tokio::test]
async fn a_repeated_cursor_is_a_loop_and_stops_the_run() {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/loop",
        get(|| async { r#"{"items":[{"NFeID":1}],"next_cursor":"same","has_more":true}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = HttpSourceConfig {
        url: format!("http://{addr}/loop"),
        run_id: "loop".into(),
        ..HttpSourceConfig::default()
    };
    let store = MemoryCheckpointStore::new();
    let source = HttpSource::new(cfg.validate().unwrap(), store.clone());
    let summary = source.summary();
    let p = Pipeline::new("loop");
    let (sink, out) = CollectingSink::new();
    p.read("Poll", source)
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    let err = p.run(RunOptions::default()).await.unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    assert_eq!(
        out.len(),
        2,
        "two pages were read before the repeat was seen"
    );
    let s: Arc<RunSummary> = Arc::new(summary.lock().unwrap().clone());
    assert_eq!(s.pages, 2);
    // Delivered pages are still committed.
    assert_eq!(store.load().await.unwrap().as_deref(), Some("same"));
}

#[tokio::test]
async fn undelimitable_pages_are_emitted_whole_and_skipped_when_the_next_page_is_known() {
    let faults = Faults {
        rate_broken_page: 0.3,
        ..Faults::default()
    };
    let api = api(2_000, faults).await;
    let g = api.api().generator().clone();
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, page_number());
    cfg.retry.max_attempts = 2;
    let valid = cfg
        .validate_with(|k| (k == TOKEN_ENV).then(|| "tok".to_string()))
        .unwrap();
    let source = HttpSource::new(valid, store.clone());
    let summary = source.summary();
    let p = Pipeline::new("broken");
    let (sink, out) = CollectingSink::new();
    let (broken_sink, broken_out) = CollectingSink::new();
    let pages = p.read("Poll", source);
    pages
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    pages
        .flat_map("Broken", |page: HttpPage| {
            page.broken
                .map(|reason| (reason.to_string(), page.records.to_vec()))
        })
        .write("Dead", broken_sink, SinkConfig::default());
    p.run(RunOptions::default()).await.unwrap();
    let s = summary.lock().unwrap().clone();
    assert_eq!(s.outcome, Outcome::CaughtUp);
    let broken = broken_out.values();
    assert!(!broken.is_empty(), "no page was broken");
    assert_eq!(s.broken_pages as usize, broken.len());
    for (reason, raw) in &broken {
        assert!(reason.contains("not structurally valid"), "{reason}");
        assert!(raw.starts_with(b"[["), "the raw body is kept");
    }
    // Every record is either in a delivered page or inside a broken page's raw bytes.
    let got = out.values();
    assert_eq!(got.len() + 250 * broken.len(), 2_000);
    for id in 1..=g.count() {
        let rec = g.record(id);
        let in_broken = broken
            .iter()
            .any(|(_, raw)| raw.windows(rec.len()).any(|w| w == rec.as_slice()));
        assert!(got.contains(&rec) || in_broken, "record {id} is lost");
    }
}

#[tokio::test]
async fn an_undelimitable_cursor_page_stops_the_run_at_its_checkpoint() {
    let faults = Faults {
        rate_broken_page: 0.3,
        ..Faults::default()
    };
    let api = api(2_000, faults).await;
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, Pagination::default());
    cfg.retry.max_attempts = 2;
    let r = run_collecting(&cfg, store.clone()).await;
    let err = r.error.expect("the run must fail");
    assert!(err.contains("next position is in its body"), "{err}");
    assert_monotonic(&store.commits());
}
