//! Cloud Storage connector benchmark, in one run against a real fake-gcs-server and a temporary
//! directory:
//!
//! - raw ceiling: a loop of uploads of ready-made NDJSON objects (`Store::put`, which is one
//!   `gcloud-storage` `upload_object` call for `gs://` and one `object_store` `put` for `file://`), 4 in
//!   flight, no engine, no encoding, no hashing;
//! - connector: a generated source of 500-byte NDJSON lines (invoice-sized) -> `StorageSink` (NDJSON, no gzip, one object
//!   of the same size per batch, 4 writes in flight) in a fluxo pipeline: the engine, the per-element
//!   `String`s, encoding, SHA-256 naming and the upload.
//!
//! Throughput is in bytes of objects stored per second. Sizes: `FLUXO_BENCH_STORAGE_OBJECT_KIB`
//! (default 2048) per object, `FLUXO_BENCH_STORAGE_OBJECTS` (default 64) objects per measurement; each
//! measurement runs three times (alternating raw and connector) and the best run counts.
//!
//! Run: `cargo bench --bench gcp_storage`.

#[path = "common/ceiling.rs"]
mod ceiling;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ceiling::{env_count, print_header, print_row, Measured};
use emulators::{Emulators, Service};
use fluxo::testing::GeneratorSource;
use fluxo::{Pipeline, RetryConfig, RunOptions, SinkConfig};
use fluxo_gcp::storage::{Location, StorageSink, StorageSinkConfig, Store, StoreOptions};

/// Bytes per line, newline included: an invoice-sized JSON record (as in the Pub/Sub benchmark).
const LINE: usize = 500;
/// Alternating raw / connector rounds; the best of each counts.
const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 4;

fn line(i: u64) -> String {
    const PAD: &str = match std::str::from_utf8(&[b'x'; LINE]) {
        Ok(s) => s,
        Err(_) => "",
    };
    let mut s = String::with_capacity(LINE);
    s.push_str("{\"NFeID\":");
    let mut buf = [0u8; 20];
    let mut n = i;
    let mut k = buf.len();
    loop {
        k -= 1;
        buf[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&buf[k..]).unwrap_or("0"));
    s.push_str(",\"ItemList\":\"");
    let pad = (LINE - 3).saturating_sub(s.len());
    s.push_str(&PAD[..pad.min(PAD.len())]);
    s.push_str("\"}");
    s
}

fn object(index: u64, lines: u64) -> Bytes {
    let mut v = Vec::with_capacity((lines as usize) * LINE);
    for i in 0..lines {
        v.extend_from_slice(line(index * lines + i).as_bytes());
        v.push(b'\n');
    }
    Bytes::from(v)
}

async fn open(url: &str, endpoint: Option<&str>) -> Store {
    let location = Location::parse(url, "url").expect("url");
    Store::open(
        &location,
        StoreOptions {
            endpoint: endpoint.map(str::to_string),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store")
}

/// Uploads `objects` ready-made objects, `IN_FLIGHT` at a time.
async fn raw(store: &Store, prefix: &str, objects: u64, lines: u64) -> Measured {
    let bodies: Arc<Vec<Bytes>> =
        Arc::new((0..IN_FLIGHT as u64).map(|i| object(i, lines)).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..IN_FLIGHT as u64 {
        let store = store.clone();
        let bodies = Arc::clone(&bodies);
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let mut bytes = 0u64;
            let mut i = k;
            while i < objects {
                let body = bodies[k as usize].clone();
                bytes += body.len() as u64;
                store
                    .put(
                        &format!("{prefix}/obj-{i:06}.ndjson"),
                        body,
                        "application/x-ndjson",
                    )
                    .await
                    .expect("upload");
                i += IN_FLIGHT as u64;
            }
            bytes
        });
    }
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        bytes += r.expect("task");
    }
    Measured {
        items: bytes,
        elapsed: started.elapsed(),
    }
}

/// Generated lines -> StorageSink, one object per batch of `lines` lines.
async fn connector(
    url: &str,
    endpoint: Option<&str>,
    prefix: &str,
    objects: u64,
    lines: u64,
) -> Measured {
    let mut config = StorageSinkConfig::new(url);
    config.endpoint = endpoint.map(str::to_string);
    config.naming = format!("{prefix}/{{hash}}.{{ext}}");
    let sink = StorageSink::<String>::bytes(&config)
        .expect("config")
        .open()
        .await
        .expect("open");
    let store = sink.store().clone();
    let p = Pipeline::new("bench");
    p.read("Generate", GeneratorSource::new(objects * lines, line))
        .write(
            "Archive",
            sink,
            SinkConfig {
                max_events: lines as usize,
                max_bytes: usize::MAX,
                max_delay: Duration::from_secs(5),
                max_in_flight: IN_FLIGHT,
                retry: RetryConfig::default(),
            },
        );
    let started = Instant::now();
    p.run(RunOptions::default()).await.expect("run");
    let elapsed = started.elapsed();
    let stored = store.list(&format!("{prefix}/")).await.expect("list");
    assert_eq!(stored.len() as u64, objects, "one object per batch");
    Measured {
        items: stored.iter().map(|o| o.size).sum(),
        elapsed,
    }
}

fn best(a: Measured, b: Measured) -> Measured {
    if a.rate() >= b.rate() {
        a
    } else {
        b
    }
}

fn main() {
    let kib = env_count("STORAGE_OBJECT_KIB", 2048);
    let objects = env_count("STORAGE_OBJECTS", 64);
    let lines = (kib * 1024 / LINE as u64).max(1);
    let emu = Emulators::start(&[Service::Storage]).expect("fake-gcs-server");
    let endpoint = emu.storage_url().expect("storage");
    let dir = std::env::temp_dir().join(format!("fluxo-bench-storage-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let gs = format!("gs://fluxo-bench-{}", std::process::id());
        let gcs = open(&gs, Some(&endpoint)).await;
        gcs.create_bucket(emu.project()).await.expect("bucket");
        let file_url = format!("file://{}", dir.display());
        let file = open(&file_url, None).await;

        let mut rows = Vec::new();
        for (name, url, store, ep) in [
            ("gs:// (fake-gcs-server)", gs.as_str(), &gcs, Some(endpoint.as_str())),
            ("file:// (local directory)", file_url.as_str(), &file, None),
        ] {
            let mut r = None;
            let mut c = None;
            for round in 0..ROUNDS {
                let rr = raw(store, &format!("raw{round}"), objects, lines).await;
                let cc = connector(url, ep, &format!("conn{round}"), objects, lines).await;
                r = Some(r.map_or(rr, |b| best(b, rr)));
                c = Some(c.map_or(cc, |b| best(b, cc)));
            }
            let (Some(r), Some(c)) = (r, c) else {
                continue;
            };
            rows.push((name, r, c));
        }
        println!(
            "\nCloud Storage sink, NDJSON without compression, {objects} objects of {} KiB ({lines} lines of {LINE} B), {IN_FLIGHT} uploads in flight",
            lines * LINE as u64 / 1024
        );
        print_header("bytes");
        for (name, r, c) in rows {
            print_row(name, r, c);
            println!(
                "|   (MB/s) | {:.0} | {:.0} | |",
                r.rate() / 1e6,
                c.rate() / 1e6
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
