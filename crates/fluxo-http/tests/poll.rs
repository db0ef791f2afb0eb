//! The polling source against the reference invoice API over real HTTP: every record arrives in every
//! pagination style, with each fault switch on; checkpoints only move over delivered pages and never
//! skip; runs resume from them; leases keep a second run out, also while a run waits out a long
//! `Retry-After`; fatal answers end the run clearly; page bodies are read under a cap, oversize pages
//! are skipped or end the run with an actionable error; positions longer than a Pub/Sub attribute
//! work end to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluxo::testing::CollectingSink;
use fluxo::{Pipeline, PipelineConfig, RunOptions, SinkConfig};
use fluxo_http::{
    Auth, BrokenKind, CheckpointStore, HttpPage, HttpSource, HttpSourceConfig,
    MemoryCheckpointStore, Outcome, Pagination, RetryPolicy, RunSummary,
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
    let metrics = p.metrics();
    let result = p.run(RunOptions::default()).await;
    let summary = summary.lock().unwrap().clone();
    metrics_agree_with_the_summary(&metrics.encode(), &summary);
    Run {
        records: out.values(),
        summary,
        error: result.err().map(|e| e.to_string()),
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// The source's exported metrics tell what its summary tells (every run of these tests checks it).
fn metrics_agree_with_the_summary(text: &str, s: &fluxo_http::RunSummary) {
    let labels = r#"{pipeline="poll-test",step="Poll"}"#;
    let value = |name: &str| sample(text, &format!("{name}{labels}"));
    assert_eq!(
        value("fluxo_http_pages_total"),
        Some(s.pages as f64),
        "{text}"
    );
    assert_eq!(value("fluxo_http_records_total"), Some(s.records as f64));
    assert_eq!(value("fluxo_http_retries_total"), Some(s.retries as f64));
    assert_eq!(
        value("fluxo_http_broken_pages_total"),
        Some(s.broken_pages as f64)
    );
    assert_eq!(
        value("fluxo_http_failed_pages_total"),
        Some(s.failed_pages as f64)
    );
    // Every retry waited once, and the wait was recorded.
    assert_eq!(
        value("fluxo_http_retry_wait_seconds_count"),
        Some(s.retries as f64)
    );
    let commits = value("fluxo_http_checkpoint_commits_total").unwrap_or(0.0);
    assert_eq!(commits > 0.0, s.committed != s.started_from, "{s:?}");
    let committed_at = value("fluxo_http_checkpoint_commit_timestamp_seconds").unwrap_or(0.0);
    assert_eq!(committed_at > 1.7e9, commits > 0.0);
    let success = value("fluxo_http_last_success_timestamp_seconds").unwrap_or(0.0);
    assert_eq!(
        success > 1.7e9,
        s.outcome == fluxo_http::Outcome::CaughtUp,
        "{s:?}"
    );
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
    let (run, pages) = run_with_broken(&cfg, store.clone()).await;
    assert!(run.error.is_none(), "{:?}", run.error);
    let s = run.summary;
    assert_eq!(s.outcome, Outcome::CaughtUp);
    let broken: Vec<(String, Vec<u8>)> = pages
        .iter()
        .map(|page| {
            let b = page
                .broken
                .as_ref()
                .expect("only broken pages are collected");
            assert_eq!(b.kind, BrokenKind::Unreadable);
            assert_eq!(b.body_bytes, Some(page.records.len() as u64));
            (b.reason.to_string(), page.records.to_vec())
        })
        .collect();
    assert!(!broken.is_empty(), "no page was broken");
    assert_eq!(s.broken_pages as usize, broken.len());
    for (reason, raw) in &broken {
        assert!(reason.contains("not structurally valid"), "{reason}");
        assert!(raw.starts_with(b"[["), "the raw body is kept");
    }
    // Every record is either in a delivered page or inside a broken page's raw bytes.
    let got = run.records;
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

/// Runs `cfg` over `store` collecting records and broken pages.
async fn run_with_broken(
    cfg: &HttpSourceConfig,
    store: MemoryCheckpointStore,
) -> (Run, Vec<HttpPage>) {
    let valid = cfg
        .validate_with(|k| (k == TOKEN_ENV).then(|| "tok".to_string()))
        .unwrap();
    let source = HttpSource::new(valid, store);
    let summary = source.summary();
    let p = Pipeline::new("broken-pages");
    let (sink, out) = CollectingSink::new();
    let (broken_sink, broken_out) = CollectingSink::new();
    let pages = p.read("Poll", source);
    pages
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    pages
        .flat_map("Broken", |page: HttpPage| {
            page.broken.is_some().then_some(page)
        })
        .write("Dead", broken_sink, SinkConfig::default());
    let result = p.run(RunOptions::default()).await;
    let summary = summary.lock().unwrap().clone();
    (
        Run {
            records: out.values(),
            summary,
            error: result.err().map(|e| e.to_string()),
        },
        broken_out.values(),
    )
}

/// Records 500, 1000, 1500 and 2000 are 300,000 bytes: their pages of 250 are above a 256 KiB cap
/// (the others are about 111 KB).
fn oversize_faults() -> Faults {
    Faults {
        pad_record_every: 500,
        pad_record_to_bytes: 300_000,
        ..Faults::default()
    }
}

const PAGE_CAP: u64 = 256 * 1024;

#[tokio::test]
async fn oversize_pages_are_skipped_as_broken_when_the_next_page_is_known() {
    let api = api(2_000, oversize_faults()).await;
    let g = api.api().generator().clone();
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, page_number());
    cfg.max_page_bytes = PAGE_CAP;
    let (r, broken) = run_with_broken(&cfg, store.clone()).await;
    assert_eq!(r.error, None);
    assert_eq!(r.summary.outcome, Outcome::CaughtUp);
    // Pages 2, 4, 6 and 8 hold a padded record.
    assert_eq!((r.summary.broken_pages, r.summary.oversize_pages), (4, 4));
    assert_eq!(broken.len(), 4);
    for page in &broken {
        let b = page.broken.as_ref().unwrap();
        assert_eq!(b.kind, BrokenKind::TooLarge);
        assert!(
            b.reason
                .contains("larger than max_page_bytes (262144 bytes"),
            "{}",
            b.reason
        );
        // The server announced the length: nothing was read.
        assert!(b.body_bytes.unwrap() > PAGE_CAP);
        assert!(page.records.is_empty());
        assert_eq!(page.count, 0);
    }
    let pages: Vec<u64> = broken
        .iter()
        .map(|p| {
            let url = p.url.to_string();
            let n = url.split("page=").nth(1).unwrap();
            n.split('&').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(pages, vec![2, 4, 6, 8]);
    // Every record of the other pages arrived, exactly once; the checkpoint is past the last page.
    assert_eq!(r.records.len(), 1_000);
    for id in (1..=2_000u64).filter(|id| ((id - 1) / 250) % 2 == 0) {
        assert!(r.records.contains(&g.record(id)), "record {id}");
    }
    assert_eq!(store.load().await.unwrap().as_deref(), Some("9"));
}

#[tokio::test]
async fn an_oversize_cursor_page_stops_the_run_with_an_actionable_error() {
    let api = api(2_000, oversize_faults()).await;
    let store = MemoryCheckpointStore::new();
    let mut cfg = config(&api, Pagination::default());
    cfg.max_page_bytes = PAGE_CAP;
    let r = run_collecting(&cfg, store.clone()).await;
    let err = r.error.expect("the run must fail");
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.contains("larger than max_page_bytes (262144 bytes; Content-Length: ")
            && err.contains("raise max_page_bytes or lower page_size"),
        "{err}"
    );
    assert!(matches!(&r.summary.outcome, Outcome::Failed(m) if m.contains("max_page_bytes")));
    // The first page was delivered and committed; the run stopped before the second (251..=500).
    assert_eq!(r.records.len(), 250);
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-250"));
    // Not retried: one request per page.
    assert_eq!(api.api().stats().requests, 2);
}

/// A server whose first page is an endless chunked body (no `Content-Length`), counting the bytes it
/// produced; its `Link` points at an empty second page.
async fn endless_api() -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::atomic::{AtomicU64, Ordering};
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let app = axum::Router::new()
        .route(
            "/endless",
            get(move || {
                let counter = counter.clone();
                async move {
                    // Up to 1 GiB in chunks of 64 KiB, produced only as the connection takes them.
                    let chunks = futures::stream::iter(0..16_384u32).map(move |i| {
                        counter.fetch_add(64 * 1024, Ordering::Relaxed);
                        let mut c = vec![b'1'; 64 * 1024];
                        c[0] = if i == 0 { b'[' } else { b',' };
                        Ok::<_, std::io::Error>(bytes::Bytes::from(c))
                    });
                    (
                        [(axum::http::header::LINK, "</done>; rel=\"next\"")],
                        axum::body::Body::from_stream(chunks),
                    )
                        .into_response()
                }
            }),
        )
        .route("/done", get(|| async { "[]" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/endless"), produced)
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_read_up_to_the_cap_only() {
    use std::sync::atomic::Ordering;
    const CAP: u64 = 1024 * 1024;
    // Next links: the page is skipped as broken, with what was read before the cap.
    let (url, produced) = endless_api().await;
    let cfg = HttpSourceConfig {
        url,
        pagination: Pagination::NextLink,
        page_size: None,
        max_page_bytes: CAP,
        run_id: "endless".into(),
        ..HttpSourceConfig::default()
    };
    let store = MemoryCheckpointStore::new();
    let (r, broken) = run_with_broken(&cfg, store.clone()).await;
    assert_eq!(r.error, None);
    assert_eq!(r.summary.outcome, Outcome::CaughtUp);
    assert_eq!(broken.len(), 1);
    let b = broken[0].broken.as_ref().unwrap();
    assert_eq!((b.kind, b.body_bytes), (BrokenKind::TooLarge, None));
    assert_eq!(
        b.reason.as_ref(),
        "the page body is larger than max_page_bytes (1048576 bytes)"
    );
    let read = broken[0].records.len() as u64;
    assert!(read <= CAP, "{read} bytes kept");
    assert!(broken[0].records.starts_with(b"[111"));
    assert_eq!(store.load().await.unwrap().as_deref(), Some("/done"));
    // The server produced what the connection took before the client hung up: far from the 1 GiB
    // body (the rest is kernel and HTTP buffers).
    let sent = produced.load(Ordering::Relaxed);
    println!("endless body, cap {CAP}: {read} bytes kept, {sent} bytes produced by the server");
    assert!(sent < 64 * CAP, "{sent} bytes produced");

    // A cursor in the body: the run fails, saying what to change.
    let (url, produced) = endless_api().await;
    let cfg = HttpSourceConfig {
        url,
        max_page_bytes: CAP,
        run_id: "endless-cursor".into(),
        ..HttpSourceConfig::default()
    };
    let r = run_collecting(&cfg, MemoryCheckpointStore::new()).await;
    let err = r.error.expect("the run must fail");
    assert!(
        err.ends_with(
            "/endless?page_size=500: the page body is larger than max_page_bytes (1048576 bytes) \
             and the next position is inside it, so the page cannot be skipped; raise \
             max_page_bytes or lower page_size"
        ),
        "{err}"
    );
    assert!(produced.load(Ordering::Relaxed) < 64 * CAP);
}

#[tokio::test]
async fn positions_longer_than_a_pubsub_attribute_work_end_to_end() {
    let faults = Faults {
        pad_position_bytes: 5_000,
        ..Faults::default()
    };
    for pagination in [Pagination::default(), Pagination::NextLink] {
        let api = api(1_000, faults.clone()).await;
        let g = api.api().generator().clone();
        let store = MemoryCheckpointStore::new();
        let cfg = config(&api, pagination.clone());
        let r = run_collecting(&cfg, store.clone()).await;
        assert_eq!(r.error, None, "{pagination:?}");
        assert_eq!(r.summary.outcome, Outcome::CaughtUp);
        assert_eq!(assert_all_arrived(&g, &r.records), 0);
        // The checkpoint holds the whole position, and the next run resumes from it.
        let pos = store.load().await.unwrap().unwrap();
        assert!(pos.len() > 5_000, "{pagination:?}: {} bytes", pos.len());
        let again = run_collecting(&cfg, store.clone()).await;
        assert_eq!(again.error, None);
        assert_eq!(again.summary.started_from.as_deref(), Some(pos.as_str()));
        if matches!(pagination, Pagination::Cursor { .. }) {
            assert!(pos.starts_with("after-1000~xxx"), "{}", &pos[..20]);
            assert!(again.records.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_while_a_retry_after_longer_than_it_is_waited_out() {
    // Every request is answered 503 with Retry-After: 3 until the test clears the switch.
    let api = api(
        500,
        Faults {
            rate_5xx: 1.0,
            retry_after_secs: 3,
            ..Faults::default()
        },
    )
    .await;
    let g = api.api().generator().clone();
    let store = MemoryCheckpointStore::new();
    let lease = Duration::from_secs(1);
    let source = |run_id: &str| {
        let mut cfg = config(&api, Pagination::default());
        cfg.run_id = run_id.into();
        let valid = cfg
            .validate_with(|k| (k == TOKEN_ENV).then(|| "tok".to_string()))
            .unwrap();
        HttpSource::new(valid, store.clone()).with_lease_ttl(lease)
    };
    let first = source("first-run");
    let first_summary = first.summary();
    let (sink, out) = CollectingSink::new();
    let p = Pipeline::new("waits");
    p.read("Poll", first)
        .flat_map("Split", records)
        .write("Collect", sink, SinkConfig::default());
    let first_run = tokio::spawn(p.run(RunOptions::default()));
    while api.api().stats().server_errors == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    api.api().set_faults(Faults::default()).unwrap();
    // The first run now waits 3 s; after more than a lease duration of it, a second run starts.
    tokio::time::sleep(lease * 3 / 2).await;
    let second = source("second-run");
    let second_summary = second.summary();
    let (sink2, out2) = CollectingSink::new();
    let p2 = Pipeline::new("second");
    p2.read("Poll", second).flat_map("Split", records).write(
        "Collect",
        sink2,
        SinkConfig::default(),
    );
    p2.run(RunOptions::default()).await.unwrap();
    assert_eq!(second_summary.lock().unwrap().outcome, Outcome::LeaseHeld);
    assert!(out2.values().is_empty());
    first_run.await.unwrap().unwrap();
    let s = first_summary.lock().unwrap().clone();
    assert_eq!(s.outcome, Outcome::CaughtUp);
    assert!(s.retries >= 1);
    assert_eq!(assert_all_arrived(&g, &out.values()), 0);
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-500"));
}

#[tokio::test]
async fn a_cursor_too_long_for_the_api_to_take_back_fails_the_run_with_one_short_line() {
    // The API hands out a 1 MiB cursor: no HTTP client can send a URL that long (the `http` crate
    // takes up to 65,534 bytes). The page that carried it was delivered, so its cursor is committed
    // whole; the next request fails at once, not retried, with the URL clipped in the message.
    use axum::routing::get;
    const CURSOR: usize = 1024 * 1024;
    let app = axum::Router::new().route(
        "/huge",
        get(|| async {
            format!(
                r#"{{"items":[{{"NFeID":1}}],"next_cursor":"{}","has_more":true}}"#,
                "c".repeat(CURSOR)
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = HttpSourceConfig {
        url: format!("http://{addr}/huge"),
        run_id: "huge".into(),
        ..HttpSourceConfig::default()
    };
    let store = MemoryCheckpointStore::new();
    let r = run_collecting(&cfg, store.clone()).await;
    let err = r.error.expect("the run must fail");
    println!("{err}");
    assert!(!err.contains('\n'));
    assert!(err.len() < 1_000, "{} bytes", err.len());
    let url_len = format!("http://{addr}/huge?cursor=&page_size=500").len() + CURSOR;
    // The quote keeps 256 bytes in all: the head of the URL, then the marker.
    let kept = 256 - format!("...[+{url_len} bytes]").len();
    assert!(
        err.ends_with(&format!(
            "...[+{} bytes] ({url_len} bytes): the request cannot be sent: the URL is longer than \
             the 65534 bytes an HTTP request can carry (the position in it came from the API)",
            url_len - kept
        )),
        "{err}"
    );
    assert_eq!(r.summary.retries, 0);
    assert_eq!(r.records.len(), 1);
    assert_eq!(store.load().await.unwrap().map(|c| c.len()), Some(CURSOR));
}
