//! The ingest pipeline against the reference invoice API and the real Pub/Sub and Bigtable emulators:
//! every invoice arrives exactly once without faults and at least once with each fault switch on, the
//! checkpoint never skips, a killed run resumes from its checkpoint, and concurrent runs do not both
//! advance it. Oversize input never freezes it: records above the limit and oversize pages become
//! bounded dead letters while the checkpoint moves past them, positions longer than a Pub/Sub attribute
//! work end to end, and the lease holds while a run waits out a `Retry-After` longer than it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::bigtable::{AdminClient, BigtableSinkConfig, FamilySpec, TableSpec};
use fluxo_gcp::pubsub::raw::proto::{AcknowledgeRequest, PullRequest};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, PubsubSinkConfig, SubscriptionOptions};
use fluxo_http::{Auth, CheckpointStore, HttpSourceConfig, Outcome};
use ingest::{
    attr, default_publish, BigtableCheckpointStore, IngestConfig, IngestError, IngestLimits,
};
use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};
use sha2::{Digest, Sha256};

const PROJECT: &str = "ingest-test";
const INSTANCE: &str = "ingest-instance";
const TABLE: &str = "checkpoints";

struct Stack {
    _emulators: Emulators,
    pubsub_host: String,
    bigtable_host: String,
    api: RunningApi,
    client: PubsubClient,
}

async fn stack(count: u64, faults: Faults) -> Stack {
    let emulators = tokio::task::spawn_blocking(|| {
        Emulators::start(&[Service::PubSub, Service::Bigtable]).expect("emulators")
    })
    .await
    .unwrap();
    let pubsub_host = emulators.pubsub_host().unwrap();
    let bigtable_host = emulators.bigtable_host().unwrap();
    let g = Generator::new(GeneratorConfig {
        count,
        malformed_share: 0.05,
        ..GeneratorConfig::default()
    })
    .unwrap();
    let api = RunningApi::start("127.0.0.1:0", g, None, faults)
        .await
        .unwrap();
    let client = PubsubClient::connect(Endpoint::Emulator(pubsub_host.clone()), PROJECT)
        .await
        .unwrap();
    for t in ["invoices", "dead-letters"] {
        client.create_topic(t).await.unwrap();
    }
    client
        .create_subscription("all", "invoices", SubscriptionOptions::default())
        .await
        .unwrap();
    client
        .create_subscription("broken", "dead-letters", SubscriptionOptions::default())
        .await
        .unwrap();
    let s = Stack {
        _emulators: emulators,
        pubsub_host,
        bigtable_host,
        api,
        client,
    };
    let b = s.checkpoint_config().validate().unwrap();
    AdminClient::connect(&b)
        .await
        .unwrap()
        .provision_table(
            TABLE,
            &TableSpec {
                families: vec![FamilySpec::max_versions(ingest::checkpoint::FAMILY, 1)],
            },
        )
        .await
        .unwrap();
    s
}

impl Stack {
    fn checkpoint_config(&self) -> BigtableSinkConfig {
        BigtableSinkConfig {
            project: PROJECT.into(),
            instance: INSTANCE.into(),
            table: TABLE.into(),
            endpoint: Some(self.bigtable_host.clone()),
            families: vec![ingest::checkpoint::FAMILY.into()],
            ..BigtableSinkConfig::default()
        }
    }

    fn config(&self, page_size: u64) -> IngestConfig {
        let topic = |t: &str| PubsubSinkConfig {
            project: Some(PROJECT.into()),
            topic: t.into(),
            endpoint: Some(self.pubsub_host.clone()),
            ..PubsubSinkConfig::default()
        };
        IngestConfig {
            source_name: "reference-api".into(),
            api: HttpSourceConfig {
                url: format!("{}/invoices/feed", self.api.url()),
                page_size: Some(page_size),
                page_size_param: "limit".into(),
                auth: Auth::None,
                request_timeout_ms: 1_000,
                retry: fluxo_http::RetryPolicy {
                    max_attempts: 30,
                    initial_backoff_ms: 5,
                    max_backoff_ms: 100,
                    max_retry_after_secs: 5,
                },
                ..HttpSourceConfig::default()
            },
            topic: topic("invoices"),
            dead_letter_topic: topic("dead-letters"),
            checkpoint: self.checkpoint_config(),
            publish: default_publish(),
            metrics_addr: None,
            lease_ttl_secs: 30,
            limits: IngestLimits::default(),
        }
    }

    async fn store(&self) -> BigtableCheckpointStore {
        BigtableCheckpointStore::connect(&self.checkpoint_config(), "reference-api")
            .await
            .unwrap()
    }

    /// Pulls and acknowledges everything on a subscription until it stays empty.
    async fn drain(&self, subscription: &str) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        let sub = format!("projects/{PROJECT}/subscriptions/{subscription}");
        let mut out = Vec::new();
        let mut empty = 0;
        while empty < 3 {
            let resp = self
                .client
                .subscriber()
                .pull(
                    PullRequest {
                        subscription: sub.clone(),
                        max_messages: 1_000,
                        // Deprecated on the real service, honoured by the emulator: an empty
                        // subscription answers at once instead of holding the request open.
                        #[allow(deprecated)]
                        return_immediately: true,
                    },
                    None,
                )
                .await
                .unwrap()
                .into_inner();
            if resp.received_messages.is_empty() {
                empty += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            empty = 0;
            let mut ids = Vec::new();
            for m in resp.received_messages {
                ids.push(m.ack_id);
                let msg = m.message.unwrap();
                out.push((msg.data.to_vec(), msg.attributes));
            }
            self.client
                .subscriber()
                .acknowledge(
                    AcknowledgeRequest {
                        subscription: sub.clone(),
                        ack_ids: ids,
                    },
                    None,
                )
                .await
                .unwrap();
        }
        out
    }
}

/// Checks every record of the API arrived; returns the number of records that arrived more than once.
fn check_all(g: &Generator, got: &[(Vec<u8>, HashMap<String, String>)]) -> usize {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for (d, _) in got {
        *counts.entry(d.as_slice()).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=g.count())
        .filter(|&id| !counts.contains_key(g.record(id).as_slice()))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing records, e.g. {missing:?}");
    assert_eq!(counts.len() as u64, g.count(), "unexpected records arrived");
    counts.values().filter(|&&n| n > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_invoices_arrive_exactly_once_with_their_attributes() {
    let s = stack(50_000, Faults::default()).await;
    let g = s.api.api().generator().clone();
    // One registry for both runs, as `ingest serve` keeps it.
    let metrics = fluxo::Metrics::new(ingest::PIPELINE_NAME);
    let report = ingest::run_in(&s.config(1_000), ShutdownSignal::never(), metrics.clone())
        .await
        .unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    assert_eq!(report.published, 50_000);
    assert_eq!(report.dead_letters, 0);
    let got = s.drain("all").await;
    assert_eq!(got.len(), 50_000);
    assert_eq!(check_all(&g, &got), 0);
    // Attributes: id, source, cursor always; emission date and hash on valid records.
    for (data, attrs) in &got {
        assert_eq!(attrs[attr::SOURCE], "reference-api");
        assert!(attrs[attr::PAGE_CURSOR].starts_with("after-"));
        let id: u64 = attrs[attr::NFE_ID].parse().unwrap();
        assert_eq!(data, &g.record(id));
        if g.defect(id).is_none() {
            assert!(attrs[attr::EMISSION_DATE].ends_with("T00:00:00"));
            assert_eq!(attrs[attr::CONTENT_HASH].len(), 64);
        }
    }
    let store = s.store().await;
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-50000"));
    let text = metrics.encode_prometheus_text();
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    };
    let l = r#"{pipeline="ingest",step="PollApi"}"#;
    assert_eq!(
        value(&format!("fluxo_http_records_total{l}")),
        Some(50_000.0)
    );
    assert_eq!(
        value(&format!("fluxo_http_pages_total{l}")),
        Some(report.poll.pages as f64)
    );
    assert!(
        value(&format!("fluxo_http_last_success_timestamp_seconds{l}")).is_some_and(|t| t > 1.7e9)
    );
    assert_eq!(
        value(r#"ingest_runs_total{pipeline="ingest",outcome="caught_up"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"ingest_runs_total{pipeline="ingest",outcome="failed"}"#),
        Some(0.0)
    );
    // Compliance: the job exports every family of the components it is made of, and nothing
    // undeclared.
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let declared = |defs: &[fluxo::metrics::Def]| -> Vec<String> {
        defs.iter().map(|d| d.exposed_name()).collect()
    };
    let required: Vec<String> = [
        declared(fluxo_http::metrics::ALL),
        declared(ingest::metrics::ALL),
        declared(fluxo::metrics::process::ALL),
        declared(&[
            fluxo_gcp::metrics::REQUESTS,
            fluxo_gcp::metrics::REQUEST_DURATION,
        ]),
    ]
    .concat();
    for name in &required {
        assert!(
            exported.contains(name.as_str()),
            "{name} is not exported:\n{text}"
        );
    }
    let known: Vec<String> = [
        declared(fluxo::metrics::names::ALL),
        declared(fluxo::metrics::process::ALL),
        declared(fluxo_gcp::metrics::ALL),
        declared(fluxo_http::metrics::ALL),
        declared(ingest::metrics::ALL),
    ]
    .concat();
    for name in &exported {
        assert!(
            known.iter().any(|k| k == name),
            "{name} is exported but declared nowhere"
        );
    }
    let published = r#"fluxo_gcp_requests_total{pipeline="ingest",step="PublishInvoices",service="pubsub",method="Publish",outcome="ok"}"#;
    assert!(value(published).is_some_and(|n| n >= 50.0), "{text}");
    // A second run finds nothing new and publishes nothing.
    let again = ingest::run_in(&s.config(1_000), ShutdownSignal::never(), metrics.clone())
        .await
        .unwrap();
    assert_eq!((again.published, again.poll.pages), (0, 1));
    assert!(s.drain("all").await.is_empty());
    let text = metrics.encode_prometheus_text();
    assert!(
        text.contains("ingest_runs_total{pipeline=\"ingest\",outcome=\"caught_up\"} 2\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_each_fault_switch_on_no_invoice_is_missing_and_the_checkpoint_never_skips() {
    let switches = [
        Faults {
            rate_429: 0.3,
            ..Faults::default()
        },
        Faults {
            rate_5xx: 0.3,
            ..Faults::default()
        },
        Faults {
            rate_timeout: 0.3,
            hang_secs: 3,
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
    ];
    let s = stack(3_000, Faults::default()).await;
    let g = s.api.api().generator().clone();
    for (i, faults) in switches.iter().enumerate() {
        s.api.api().set_faults(faults.clone()).unwrap();
        let mut cfg = s.config(200);
        cfg.source_name = format!("fault-{i}");
        let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
        assert_eq!(report.poll.outcome, Outcome::CaughtUp, "{faults:?}");
        let got = s.drain("all").await;
        let dups = check_all(&g, &got);
        if faults.rate_duplicate > 0.0 {
            assert!(dups > 0);
        } else {
            assert_eq!(dups, 0, "{faults:?}");
            assert!(report.poll.retries > 0, "{faults:?}: nothing was retried");
        }
        let store = BigtableCheckpointStore::connect(&s.checkpoint_config(), &cfg.source_name)
            .await
            .unwrap();
        assert_eq!(store.load().await.unwrap().as_deref(), Some("after-3000"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_from_its_checkpoint() {
    let s = stack(
        5_000,
        Faults {
            latency_ms: 40,
            ..Faults::default()
        },
    )
    .await;
    let g = s.api.api().generator().clone();
    let args = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"));
        c.args([
            "run",
            "--api-url",
            &format!("{}/invoices/feed", s.api.url()),
            "--auth",
            "none",
            "--page-size",
            "100",
            "--project",
            PROJECT,
            "--topic",
            "invoices",
            "--dead-letter-topic",
            "dead-letters",
            "--bigtable-instance",
            INSTANCE,
            "--checkpoint-table",
            TABLE,
            "--source-name",
            "reference-api",
            "--lease-ttl-secs",
            "3",
        ])
        .args(extra)
        .env("PUBSUB_EMULATOR_HOST", &s.pubsub_host)
        .env("BIGTABLE_EMULATOR_HOST", &s.bigtable_host)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    let mut child = args(&[]).spawn().unwrap();
    // Let it commit some pages, then kill it without warning.
    let store = s.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = store.load().await.unwrap();
        if t.as_deref()
            .and_then(|t| t.trim_start_matches("after-").parse::<u64>().ok())
            .is_some_and(|n| n >= 1_000)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = store.load().await.unwrap().unwrap();
    let n: u64 = at_kill.trim_start_matches("after-").parse().unwrap();
    assert!(n < 5_000, "the run finished before it was killed");
    // The killed run's lease expires (3 s); the restart resumes from the checkpoint.
    // The restart logs as on GKE (KUBERNETES_SERVICE_HOST set): Cloud Logging's JSON lines.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = args(&[])
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .env(
            "RUST_LOG",
            "debug,h2=info,hyper=info,tower=info,rustls=info",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let severities = cloud_logging_lines(&out.stderr);
    assert!(
        severities.contains("INFO") && severities.contains("DEBUG"),
        "{severities:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["poll"]["started_from"], at_kill.as_str());
    assert_eq!(report["poll"]["outcome"], "caught_up");
    let got = s.drain("all").await;
    let dups = check_all(&g, &got);
    // At most the pages in flight after the last commit were published twice.
    assert!(dups <= 16 * 100, "{dups} duplicates");
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-5000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_do_not_both_poll() {
    let s = stack(
        2_000,
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    let g = s.api.api().generator().clone();
    let mut a = s.config(100);
    a.api.run_id = "run-a".into();
    let mut b = s.config(100);
    b.api.run_id = "run-b".into();
    let (ra, rb) = tokio::join!(
        ingest::run(&a, ShutdownSignal::never()),
        ingest::run(&b, ShutdownSignal::never())
    );
    let outcomes = [ra.unwrap().poll.outcome, rb.unwrap().poll.outcome];
    assert!(
        outcomes.contains(&Outcome::CaughtUp) && outcomes.contains(&Outcome::LeaseHeld),
        "{outcomes:?}"
    );
    let got = s.drain("all").await;
    assert_eq!(check_all(&g, &got), 0, "only one run published");
    assert_eq!(
        s.store().await.load().await.unwrap().as_deref(),
        Some("after-2000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_with_one_line() {
    let s = stack(10, Faults::default()).await;
    let mut cfg = s.config(100);
    cfg.topic.topic = "missing-topic".into();
    let e = ingest::run(&cfg, ShutdownSignal::never())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing-topic"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let mut cfg = s.config(100);
    cfg.api.url = "not a url".into();
    let e = ingest::run(&cfg, ShutdownSignal::never())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid http source url"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelimitable_pages_go_to_the_dead_letter_topic_with_the_reason() {
    let s = stack(
        2_000,
        Faults {
            rate_broken_page: 0.3,
            ..Faults::default()
        },
    )
    .await;
    let mut cfg = s.config(250);
    cfg.api.url = format!("{}/invoices", s.api.url());
    cfg.api.page_size_param = "page_size".into();
    cfg.api.pagination = fluxo_http::Pagination::PageNumber {
        page_param: "page".into(),
        first_page: 1,
    };
    cfg.api.retry.max_attempts = 2;
    let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    let dead = s.drain("broken").await;
    assert!(!dead.is_empty(), "no page was broken");
    assert_eq!(report.dead_letters as usize, dead.len());
    assert_eq!(report.poll.broken_pages as usize, dead.len());
    // Pages of 250 records are about 111 KB: the dead letter holds their first 64 KiB, with the whole
    // page's size and SHA-256.
    for (raw, attrs) in &dead {
        assert!(raw.starts_with(b"[["));
        assert_eq!(raw.len(), 65_536);
        assert_eq!(attrs[attr::REASON], "page_unreadable");
        assert!(attrs[attr::DETAIL].contains("not structurally valid"));
        assert_eq!(attrs[attr::STAGE], "ingest");
        assert!(attrs[attr::URL].contains("page="));
        assert_eq!(attrs[attr::TRUNCATED], "true");
        assert!(attrs[attr::RAW_BYTES].parse::<usize>().unwrap() > 65_536);
        assert_eq!(attrs[attr::RAW_SHA256].len(), 64);
    }
    assert_eq!(
        report.dead_letters_by_reason,
        [("page_unreadable".to_string(), dead.len() as u64)].into()
    );
    let invoices = s.drain("all").await;
    assert_eq!(invoices.len() + 250 * dead.len(), 2_000);
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_record_is_a_dead_letter_and_the_checkpoint_moves_past_it() {
    // Records 300, 600 and 900 are 200,001 bytes: one above the limit of 200,000.
    let faults = Faults {
        pad_record_every: 300,
        pad_record_to_bytes: 200_001,
        ..Faults::default()
    };
    let s = stack(1_000, faults).await;
    let api = s.api.api();
    let mut cfg = s.config(100);
    cfg.limits.max_record_bytes = Some(200_000);
    let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    assert_eq!((report.published, report.dead_letters), (997, 3));
    assert_eq!(
        report.dead_letters_by_reason,
        [("record_too_large".to_string(), 3)].into()
    );
    assert_eq!(report.limits.max_record_bytes, 200_000);
    // The valid records of the same pages were published, byte for byte.
    let got = s.drain("all").await;
    assert_eq!(got.len(), 997);
    let mut ids: Vec<u64> = got
        .iter()
        .map(|(d, a)| {
            let id: u64 = a[attr::NFE_ID].parse().unwrap();
            assert_eq!(d, &api.generator().record(id));
            id
        })
        .collect();
    ids.sort_unstable();
    let expected: Vec<u64> = (1..=1_000).filter(|id| id % 300 != 0).collect();
    assert_eq!(ids, expected);
    // One dead letter per oversize record: its first 64 KiB, its size, hash, id and origin.
    let mut dead = s.drain("broken").await;
    dead.sort_by_key(|(_, a)| a[attr::NFE_ID].parse::<u64>().unwrap());
    assert_eq!(dead.len(), 3);
    for ((data, a), id) in dead.iter().zip([300u64, 600, 900]) {
        let full = api.served_record(id);
        assert_eq!(full.len(), 200_001);
        assert_eq!(data.as_slice(), &full[..65_536]);
        assert_eq!(a[attr::REASON], "record_too_large");
        assert_eq!(
            a[attr::DETAIL],
            "record of 200001 bytes is above max_record_bytes (200000)"
        );
        assert_eq!(a[attr::RAW_BYTES], "200001");
        assert_eq!(a[attr::RAW_SHA256], sha256_hex(&full));
        assert_eq!(a[attr::TRUNCATED], "true");
        assert_eq!(a[attr::NFE_ID], id.to_string());
        assert_eq!(a[attr::RECORD_INDEX], ((id - 1) % 100).to_string());
        assert_eq!(a[attr::STAGE], "ingest");
        assert_eq!(a[attr::SOURCE], "reference-api");
        let page_end = id.div_ceil(100) * 100;
        assert_eq!(a[attr::PAGE_CURSOR], format!("after-{page_end}"));
        let page_start = page_end - 100;
        if page_start > 0 {
            assert!(a[attr::URL].contains(&format!("cursor=after-{page_start}")));
        }
    }
    // The checkpoint moved past every page; a second run publishes nothing.
    assert_eq!(
        s.store().await.load().await.unwrap().as_deref(),
        Some("after-1000")
    );
    let again = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!((again.published, again.dead_letters), (0, 0));
    assert!(s.drain("all").await.is_empty());
    assert!(s.drain("broken").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_at_the_default_limit_with_a_long_cursor_fits_one_publish_request() {
    // The default limit is the largest record the invoices topic takes with any attributes: a
    // record of exactly that size, with a 5,000-byte cursor, is published through the real sink;
    // one byte more is a dead letter.
    let limit = ingest::RecordLimits::default().max_record_bytes;
    let faults = |to: usize| Faults {
        pad_record_every: 100,
        pad_record_to_bytes: to as u64,
        pad_position_bytes: 5_000,
        ..Faults::default()
    };
    let s = stack(200, faults(limit)).await;
    let api = s.api.api();
    let mut cfg = s.config(100);
    cfg.api.request_timeout_ms = 30_000;
    let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    assert_eq!(report.limits.max_record_bytes, 8_872_000);
    assert_eq!((report.published, report.dead_letters), (200, 0));
    let got = s.drain("all").await;
    assert_eq!(got.len(), 200);
    let big: Vec<_> = got.iter().filter(|(d, _)| d.len() == limit).collect();
    assert_eq!(big.len(), 2);
    for (data, a) in big {
        let id: u64 = a[attr::NFE_ID].parse().unwrap();
        assert_eq!(data, &api.served_record(id));
        assert_eq!(a[attr::PAGE_CURSOR].len(), 1_024);
        assert!(a[attr::PAGE_CURSOR].ends_with(" bytes]"));
    }
    api.set_faults(faults(limit + 1)).unwrap();
    cfg.source_name = "one-byte-more".into();
    let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    assert_eq!((report.published, report.dead_letters), (198, 2));
    let dead = s.drain("broken").await;
    assert_eq!(dead.len(), 2);
    for (data, a) in &dead {
        assert_eq!(data.len(), 65_536);
        assert_eq!(a[attr::RAW_BYTES], (limit + 1).to_string());
    }
    assert_eq!(s.drain("all").await.len(), 198);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_longer_than_an_attribute_work_end_to_end() {
    // Cursors and next links of more than 5,000 bytes: attributes are clipped, the checkpoint in
    // Bigtable keeps them whole, and the next run resumes from it.
    let faults = Faults {
        pad_position_bytes: 5_000,
        ..Faults::default()
    };
    let s = stack(1_000, faults).await;
    let g = s.api.api().generator().clone();
    for (name, next_link) in [("cursor", false), ("next-link", true)] {
        let mut cfg = s.config(100);
        cfg.source_name = name.into();
        if next_link {
            cfg.api.url = format!("{}/invoices", s.api.url());
            cfg.api.page_size_param = "page_size".into();
            cfg.api.pagination = fluxo_http::Pagination::NextLink;
        }
        let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
        assert_eq!(report.poll.outcome, Outcome::CaughtUp, "{name}");
        assert_eq!(
            (report.published, report.dead_letters),
            (1_000, 0),
            "{name}"
        );
        let got = s.drain("all").await;
        assert_eq!(check_all(&g, &got), 0, "{name}");
        for (_, a) in &got {
            let c = &a[attr::PAGE_CURSOR];
            assert!(c.len() <= 1_024, "{name}: {} bytes", c.len());
            // Pages before the last end with a padded position, clipped with its marker.
            assert!(c.len() < 1_000 || c.ends_with(" bytes]"), "{name}");
        }
        let store = BigtableCheckpointStore::connect(&s.checkpoint_config(), name)
            .await
            .unwrap();
        let committed = store.load().await.unwrap().unwrap();
        assert!(committed.len() > 5_000, "{name}: {}", committed.len());
        assert_eq!(report.poll.committed.as_deref(), Some(committed.as_str()));
        let again = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
        assert_eq!(again.poll.outcome, Outcome::CaughtUp, "{name}");
        assert_eq!(again.poll.started_from.as_deref(), Some(committed.as_str()));
        let republished = s.drain("all").await.len() as u64;
        assert_eq!(again.published, republished);
        if next_link {
            // The checkpoint is the link to the last page, read again.
            assert_eq!(again.published, 100);
        } else {
            assert_eq!(again.published, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_pages_are_dead_letters_or_stop_the_run_with_the_setting_to_change() {
    // Records 500, 1000, 1500 and 2000 are 300,000 bytes: their pages of 250 (about 111 KB
    // otherwise) are above a 256 KiB page limit.
    let faults = Faults {
        pad_record_every: 500,
        pad_record_to_bytes: 300_000,
        ..Faults::default()
    };
    let s = stack(2_000, faults).await;
    let g = s.api.api().generator().clone();
    let mut cfg = s.config(250);
    cfg.source_name = "pages".into();
    cfg.api.url = format!("{}/invoices", s.api.url());
    cfg.api.page_size_param = "page_size".into();
    cfg.api.pagination = fluxo_http::Pagination::PageNumber {
        page_param: "page".into(),
        first_page: 1,
    };
    cfg.api.max_page_bytes = 256 * 1024;
    let report = ingest::run(&cfg, ShutdownSignal::never()).await.unwrap();
    assert_eq!(report.poll.outcome, Outcome::CaughtUp);
    assert_eq!(
        (report.poll.broken_pages, report.poll.oversize_pages),
        (4, 4)
    );
    assert_eq!((report.published, report.dead_letters), (1_000, 4));
    assert_eq!(
        report.dead_letters_by_reason,
        [("page_too_large".to_string(), 4)].into()
    );
    let mut dead = s.drain("broken").await;
    dead.sort_by(|a, b| a.1[attr::URL].cmp(&b.1[attr::URL]));
    assert_eq!(dead.len(), 4);
    for ((data, a), page) in dead.iter().zip([2, 4, 6, 8]) {
        // The server announced the length: the page was refused before a byte was read.
        assert!(data.is_empty());
        assert_eq!(a[attr::REASON], "page_too_large");
        assert!(
            a[attr::DETAIL].starts_with(
                "the page body is larger than max_page_bytes (262144 bytes; Content-Length: "
            ),
            "{}",
            a[attr::DETAIL]
        );
        assert!(a[attr::RAW_BYTES].parse::<u64>().unwrap() > 262_144);
        assert!(!a.contains_key(attr::RAW_SHA256));
        assert_eq!(a[attr::TRUNCATED], "true");
        assert!(
            a[attr::URL].contains(&format!("page={page}&")),
            "{}",
            a[attr::URL]
        );
        assert_eq!(a[attr::PAGE_CURSOR], (page + 1).to_string());
    }
    let got = s.drain("all").await;
    assert_eq!(got.len(), 1_000);
    for (d, a) in &got {
        let id: u64 = a[attr::NFE_ID].parse().unwrap();
        assert_eq!(((id - 1) / 250) % 2, 0, "record {id} of a skipped page");
        assert_eq!(d, &g.record(id));
    }
    let store = BigtableCheckpointStore::connect(&s.checkpoint_config(), "pages")
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().as_deref(), Some("9"));

    // With a cursor in the body the page cannot be skipped: the run fails and says what to change,
    // after committing the page before it.
    let mut cfg = s.config(250);
    cfg.source_name = "cursor".into();
    cfg.api.max_page_bytes = 256 * 1024;
    let e = ingest::run(&cfg, ShutdownSignal::never())
        .await
        .unwrap_err();
    assert!(matches!(e, IngestError::Run(_)));
    let e = e.to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("larger than max_page_bytes (262144 bytes; Content-Length: ")
            && e.ends_with("raise max_page_bytes or lower page_size"),
        "{e}"
    );
    let store = BigtableCheckpointStore::connect(&s.checkpoint_config(), "cursor")
        .await
        .unwrap();
    assert_eq!(store.load().await.unwrap().as_deref(), Some("after-250"));
    assert_eq!(s.drain("all").await.len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holds_while_a_run_waits_out_a_retry_after_longer_than_it() {
    // Every request is answered 503 with Retry-After: 8 until the test clears the switch; the lease
    // lasts 3 s.
    let s = stack(
        500,
        Faults {
            rate_5xx: 1.0,
            retry_after_secs: 8,
            ..Faults::default()
        },
    )
    .await;
    let g = s.api.api().generator().clone();
    let cfg = |run_id: &str| {
        let mut c = s.config(100);
        c.api.run_id = run_id.into();
        c.api.retry.max_retry_after_secs = 10;
        c.lease_ttl_secs = 3;
        c
    };
    let (a, b) = (cfg("run-a"), cfg("run-b"));
    let first = tokio::spawn(async move { ingest::run(&a, ShutdownSignal::never()).await });
    while s.api.api().stats().server_errors == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.api.api().set_faults(Faults::default()).unwrap();
    // Run A now waits 8 s. Once more than a lease duration of it has passed, run B starts: without
    // renewals during the wait, A's lease would have expired and B would poll.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let requests = s.api.api().stats().requests;
    let second = ingest::run(&b, ShutdownSignal::never()).await.unwrap();
    assert_eq!(second.poll.outcome, Outcome::LeaseHeld);
    assert_eq!(second.published, 0);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.poll.outcome, Outcome::CaughtUp);
    assert!(first.poll.retries >= 1);
    assert_eq!(first.published, 500);
    // Only A's retry and pages reached the API after B started.
    assert_eq!(s.api.api().stats().requests - requests, 5);
    assert_eq!(check_all(&g, &s.drain("all").await), 0);
    assert_eq!(
        s.store().await.load().await.unwrap().as_deref(),
        Some("after-500")
    );
}

/// Parses stderr as Cloud Logging reads it: every line one JSON object with a known `severity`, a
/// top-level string `message`, `timestamp` as `{seconds, nanos}` and no `level`/`fields` of the
/// default JSON format. Returns the severities seen.
fn cloud_logging_lines(stderr: &[u8]) -> std::collections::BTreeSet<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let severity = v["severity"].as_str().unwrap_or_default();
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&severity),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
        assert!(
            v["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000,
            "{line}"
        );
        assert!(
            v["timestamp"]["nanos"].as_u64().unwrap() < 1_000_000_000,
            "{line}"
        );
        assert!(
            v.get("level").is_none() && v.get("fields").is_none(),
            "{line}"
        );
        seen.insert(severity.to_string());
    }
    seen
}

#[test]
fn a_failed_run_ends_with_an_error_line_cloud_logging_reads() {
    // Nothing listens on port 9: the run cannot reach Pub/Sub and exits 1 with its one-line error,
    // as an ERROR entry (not as text Cloud Logging would file under DEFAULT).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args([
            "run",
            "--auth",
            "none",
            "--api-url",
            "http://127.0.0.1:9/invoices/feed",
        ])
        .env("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
        .env("BIGTABLE_EMULATOR_HOST", "127.0.0.1:9")
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(cloud_logging_lines(&out.stderr).contains("ERROR"));
    let text = String::from_utf8_lossy(&out.stderr);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["severity"], "ERROR");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("ingest: Pub/Sub at 127.0.0.1:9"),
        "{last}"
    );
}
