//! The ingest pipeline against the reference invoice API and the real Pub/Sub and Bigtable emulators:
//! every invoice arrives exactly once without faults and at least once with each fault switch on, the
//! checkpoint never skips, a killed run resumes from its checkpoint, and concurrent runs do not both
//! advance it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::bigtable::{AdminClient, BigtableSinkConfig, FamilySpec, TableSpec};
use fluxo_gcp::pubsub::raw::proto::{AcknowledgeRequest, PullRequest};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, PubsubSinkConfig, SubscriptionOptions};
use fluxo_http::{Auth, CheckpointStore, HttpSourceConfig, Outcome};
use ingest::{attr, default_publish, BigtableCheckpointStore, IngestConfig};
use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};

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
    let report = ingest::run(&s.config(1_000), ShutdownSignal::never())
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
    // A second run finds nothing new and publishes nothing.
    let again = ingest::run(&s.config(1_000), ShutdownSignal::never())
        .await
        .unwrap();
    assert_eq!((again.published, again.poll.pages), (0, 1));
    assert!(s.drain("all").await.is_empty());
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
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = args(&[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
    for (raw, attrs) in &dead {
        assert!(raw.starts_with(b"[["));
        assert!(attrs[attr::REASON].contains("not structurally valid"));
        assert_eq!(attrs[attr::STAGE], "ingest");
        assert!(attrs[attr::URL].contains("page="));
    }
    let invoices = s.drain("all").await;
    assert_eq!(invoices.len() + 250 * dead.len(), 2_000);
}
