//! Ingest benchmark: reference invoice API -> `ingest` pipeline -> Pub/Sub emulator, next to the
//! emulator's raw publish ceiling measured in the same run with the same messages (the invoices' exact
//! bytes and attributes, 1,000 per `Publish`, 4 requests in flight).
//!
//! Run: `cargo bench --bench ingest` (count: `FLUXO_BENCH_INGEST_INVOICES`, default 50,000).

#[path = "common/ceiling.rs"]
mod ceiling;

use std::collections::HashMap;
use std::time::Instant;

use ceiling::{env_count, print_header, print_row, Measured};
use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::bigtable::{AdminClient, BigtableSinkConfig, FamilySpec, TableSpec};
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, PubsubSinkConfig};
use fluxo_http::{Auth, HttpSourceConfig};
use ingest::{attr, default_publish, IngestConfig};
use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};

const PROJECT: &str = "bench-project";

async fn raw_publish(client: &PubsubClient, g: &Generator) -> Measured {
    let topic = client.topic_path("raw").expect("topic");
    let n = g.count();
    // Messages are built before the clock starts: the ceiling is the emulator's, not the generator's.
    let batches: Vec<Vec<PubsubMessage>> = (1..=n)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|ids| {
            ids.iter()
                .map(|&id| PubsubMessage {
                    data: g.record(id).into(),
                    attributes: HashMap::from([
                        (attr::SOURCE.to_string(), "reference-api".to_string()),
                        (attr::PAGE_CURSOR.to_string(), format!("after-{id}")),
                        (attr::NFE_ID.to_string(), id.to_string()),
                        (
                            attr::EMISSION_DATE.to_string(),
                            "2021-05-24T00:00:00".to_string(),
                        ),
                        (attr::CONTENT_HASH.to_string(), "0".repeat(64)),
                    ]),
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for messages in batches {
        if in_flight.len() >= 4 {
            in_flight.join_next().await.expect("task").expect("join");
        }
        let client = client.clone();
        let topic = topic.clone();
        in_flight.spawn(async move {
            client
                .publish(PublishRequest { topic, messages })
                .await
                .expect("publish");
        });
    }
    while let Some(r) = in_flight.join_next().await {
        r.expect("join");
    }
    Measured {
        items: n,
        elapsed: started.elapsed(),
    }
}

fn main() {
    let n = env_count("INGEST_INVOICES", 50_000);
    let emulators = Emulators::start(&[Service::PubSub, Service::Bigtable]).expect("emulators");
    let pubsub = emulators.pubsub_host().expect("pubsub");
    let bigtable = emulators.bigtable_host().expect("bigtable");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let g = Generator::new(GeneratorConfig {
            count: n,
            ..GeneratorConfig::default()
        })
        .expect("generator");
        let api = RunningApi::start("127.0.0.1:0", g.clone(), None, Faults::default())
            .await
            .expect("api");
        let client = PubsubClient::connect(Endpoint::Emulator(pubsub.clone()), PROJECT)
            .await
            .expect("client");
        for t in ["raw", "invoices", "dead-letters"] {
            client.create_topic(t).await.expect("topic");
        }
        let checkpoint = BigtableSinkConfig {
            project: PROJECT.into(),
            instance: "bench-instance".into(),
            table: "checkpoints".into(),
            endpoint: Some(bigtable.clone()),
            families: vec![ingest::checkpoint::FAMILY.into()],
            ..BigtableSinkConfig::default()
        };
        AdminClient::connect(&checkpoint.validate().expect("config"))
            .await
            .expect("admin")
            .provision_table(
                "checkpoints",
                &TableSpec {
                    families: vec![FamilySpec::max_versions(ingest::checkpoint::FAMILY, 1)],
                },
            )
            .await
            .expect("table");
        // Warm the emulator up (JIT) before measuring either side.
        let warm = Generator::new(GeneratorConfig {
            count: 20_000,
            ..GeneratorConfig::default()
        })
        .expect("generator");
        raw_publish(&client, &warm).await;

        let raw = raw_publish(&client, &g).await;
        let topic = |t: &str| PubsubSinkConfig {
            project: Some(PROJECT.into()),
            topic: t.into(),
            endpoint: Some(pubsub.clone()),
            ..PubsubSinkConfig::default()
        };
        let cfg = IngestConfig {
            source_name: "bench".into(),
            api: HttpSourceConfig {
                url: format!("{}/invoices/feed", api.url()),
                page_size: Some(1_000),
                page_size_param: "limit".into(),
                auth: Auth::None,
                ..HttpSourceConfig::default()
            },
            topic: topic("invoices"),
            dead_letter_topic: topic("dead-letters"),
            checkpoint,
            publish: default_publish(),
            metrics_addr: None,
            lease_ttl_secs: 120,
            limits: Default::default(),
        };
        let started = Instant::now();
        let report = ingest::run(&cfg, ShutdownSignal::never())
            .await
            .expect("ingest run");
        let ingest = Measured {
            items: report.published,
            elapsed: started.elapsed(),
        };
        assert_eq!(report.published, n, "every invoice must be published");
        println!(
            "ingest: {n} invoices, API pages of 1,000, publish batches of 1,000 x 4 in flight"
        );
        print_header("invoices");
        print_row("API -> ingest -> Pub/Sub", raw, ingest);
    });
}
