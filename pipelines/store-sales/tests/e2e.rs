//! The store-sales pipeline end to end against the Pub/Sub and Cloud Storage emulators (started by the
//! `emulators` crate): sales published with their event times, one sale after its windows closed, and
//! bad messages. The oracle sums each sale into its sliding windows by plain arithmetic here, not with
//! the engine's window assignment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use emulators::{Emulators, Service};
use fluxo::{Pipeline, RunOptions, Shutdown, SinkConfig};
use fluxo_gcp::pubsub::raw::proto::{PublishRequest, PubsubMessage as RawMessage};
use fluxo_gcp::pubsub::{PubsubClient, PubsubSource, PubsubSourceConfig, SubscriptionOptions};
use fluxo_gcp::storage::{Location, StorageSink, StorageSinkConfig, Store, StoreOptions};
use store_sales::{build, LateSale, Outputs, Rejected, Settings, StoreTotal, EVENT_TIME_ATTRIBUTE};

/// 2026-12-01T00:00:00Z, in seconds.
const T0: i64 = 1_796_083_200;
const MINUTE: i64 = 60;
const STORES: [&str; 4] = ["SP-01", "RJ-02", "MG-03", "RS-04"];

fn sales() -> Vec<(String, u64, i64)> {
    // Over three hours, unevenly: store i sells every (7 + i) minutes, amounts vary.
    let mut out = Vec::new();
    for (i, store) in STORES.iter().enumerate() {
        let step = (7 + i as i64) * MINUTE;
        let mut t = T0 + i as i64 * 61;
        let mut k = 0u64;
        while t < T0 + 180 * MINUTE {
            out.push((
                store.to_string(),
                100 + (k * 37 + i as u64 * 1_000) % 9_900,
                t,
            ));
            t += step;
            k += 1;
        }
    }
    // 64-bit edge: a large amount still sums exactly (the totals stay far below 2^64).
    out.push(("SP-01".into(), 1u64 << 50, T0 + 30 * MINUTE));
    out
}

/// Every window `[s, s + 1 h)` with `s` a multiple of 15 min that holds `t`.
fn windows_of(t: i64) -> Vec<i64> {
    let period = 15 * MINUTE;
    let last = t.div_euclid(period) * period;
    (0..4).map(|k| last - k * period).collect()
}

async fn publish(client: &PubsubClient, topic: &str, messages: Vec<(Vec<u8>, i64)>) {
    let topic = client.topic_path(topic).expect("topic path");
    let messages = messages
        .into_iter()
        .map(|(data, at)| RawMessage {
            data: data.into(),
            attributes: [(EVENT_TIME_ATTRIBUTE.to_string(), (at * 1000).to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .collect();
    client
        .publish(PublishRequest { topic, messages })
        .await
        .expect("publish");
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_emitted(metrics: &fluxo::Metrics, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let emitted = counter(
            &metrics.encode_prometheus_text(),
            "fluxo_source_emitted_elements_total",
        );
        if emitted >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {emitted} of {n} emitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lines<T: serde::de::DeserializeOwned>(store: &Store, prefix: &str) -> Vec<T> {
    let mut out = Vec::new();
    for o in store.list(prefix).await.expect("list") {
        let data = store.get(&o.name).await.expect("get");
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).expect("a JSON line"));
        }
    }
    out
}

#[test]
fn sliding_totals_late_sales_and_dead_letters_land_in_cloud_storage() {
    let emu = Emulators::start(&[Service::PubSub, Service::Storage]).expect("emulators start");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let host = emu.pubsub_host().expect("pubsub");
        let endpoint = emu.storage_url().expect("storage");
        let client = PubsubClient::emulator(&host, emu.project())
            .await
            .expect("connect");
        let (topic, sub) = ("store-sales", "store-sales-sub");
        client.create_topic(topic).await.expect("topic");
        client
            .create_subscription(sub, topic, SubscriptionOptions::default())
            .await
            .expect("subscription");
        let bucket_url = "gs://store-sales-e2e/out";
        let store = Store::open(
            &Location::parse(bucket_url, "url").expect("url"),
            StoreOptions {
                endpoint: Some(endpoint.clone()),
                ..StoreOptions::default()
            },
        )
        .await
        .expect("store");
        store.create_bucket(emu.project()).await.expect("bucket");

        let source = PubsubSource::connect(&PubsubSourceConfig {
            project: Some(emu.project().to_string()),
            subscription: sub.to_string(),
            endpoint: Some(host.clone()),
            timestamp_attribute: Some(EVENT_TIME_ATTRIBUTE.to_string()),
            ..PubsubSourceConfig::default()
        })
        .await
        .expect("source");
        let sink = |dir: &str| {
            let mut c = StorageSinkConfig::new(format!("{bucket_url}/{dir}"));
            c.endpoint = Some(endpoint.clone());
            c
        };
        let outputs = Outputs {
            totals: StorageSink::json(&sink("totals"))
                .unwrap()
                .open()
                .await
                .unwrap(),
            late: StorageSink::json(&sink("late"))
                .unwrap()
                .open()
                .await
                .unwrap(),
            dead: StorageSink::json(&sink("dead"))
                .unwrap()
                .open()
                .await
                .unwrap(),
            batch: SinkConfig {
                max_delay: Duration::from_millis(50),
                ..SinkConfig::default()
            },
        };
        let settings = Settings {
            // Generous lateness: messages pulled out of order within the three hours still count
            // in their windows (as late panes at worst).
            allowed_lateness: Duration::from_secs(6 * 3600),
            ..Settings::default()
        };
        let p = Pipeline::new("store-sales");
        let metrics = p.metrics();
        build(&p.read("Pubsub", source), settings, outputs);
        let shutdown = Shutdown::new();
        let run = tokio::spawn(p.run(RunOptions {
            shutdown: shutdown.signal(),
            ..RunOptions::default()
        }));

        // Phase 1: the sales and the bad messages.
        let sales = sales();
        let mut messages: Vec<(Vec<u8>, i64)> = sales
            .iter()
            .map(|(store, cents, at)| {
                (
                    format!(r#"{{"store":"{store}","cents":{cents}}}"#).into_bytes(),
                    *at,
                )
            })
            .collect();
        let bad: Vec<&[u8]> = vec![
            b"not json",
            br#"{"store":"SP-01","cents":-5}"#,
            br#"{"store":"","cents":5}"#,
            br#"{"store":"SP-01","cents":5,"extra":1}"#,
        ];
        messages.extend(bad.iter().map(|b| (b.to_vec(), T0)));
        publish(&client, topic, messages).await;
        let phase1 = (sales.len() + bad.len()) as u64;
        wait_emitted(&metrics, phase1).await;

        // Phase 2: a sale a day older than the watermark (now about T0 + 3 h): past every window's
        // end plus the allowed lateness.
        let late_at = T0 - 24 * 3600;
        publish(
            &client,
            topic,
            vec![(br#"{"store":"RJ-02","cents":777}"#.to_vec(), late_at)],
        )
        .await;
        wait_emitted(&metrics, phase1 + 1).await;
        shutdown.trigger();
        let report = run.await.expect("join").expect("run");

        // Every message acknowledged: nothing left for redelivery, nothing lost.
        let source = report.source("Pubsub").expect("source report");
        assert_eq!((source.acked, source.nacked), (phase1 + 1, 0), "{report}");

        // Totals: the panes of each (store, window) add up to the oracle's sum.
        let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for (store, cents, at) in &sales {
            for start in windows_of(*at) {
                *expected
                    .entry((store.clone(), start * 1_000_000))
                    .or_default() += cents;
            }
        }
        let totals: Vec<StoreTotal> = lines(&store, "totals/").await;
        let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for t in &totals {
            assert_eq!(t.window_end_micros - t.window_start_micros, 3_600_000_000);
            assert!(t.timing == "on_time" || t.timing == "late", "{t:?}");
            *got.entry((t.store.clone(), t.window_start_micros))
                .or_default() += t.cents;
        }
        assert_eq!(got, expected);

        // The late sale: kept once per window it missed, not counted in any total.
        let mut late: Vec<LateSale> = lines(&store, "late/").await;
        late.sort_by_key(|l| l.window_start_micros);
        let mut missed: Vec<i64> = windows_of(late_at).iter().map(|s| s * 1_000_000).collect();
        missed.sort();
        assert_eq!(
            late.iter()
                .map(|l| l.window_start_micros)
                .collect::<Vec<_>>(),
            missed
        );
        assert!(late.iter().all(|l| l.store == "RJ-02" && l.cents == 777));

        // Bad messages: one dead letter each, with the raw text and a reason.
        let mut dead: Vec<Rejected> = lines(&store, "dead/").await;
        dead.sort_by(|a, b| a.raw.cmp(&b.raw));
        let mut raws: Vec<String> = bad
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        raws.sort();
        assert_eq!(dead.iter().map(|d| d.raw.clone()).collect::<Vec<_>>(), raws);
        assert!(dead.iter().all(|d| !d.reason.is_empty()), "{dead:?}");
    });
}
