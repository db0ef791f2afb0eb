//! Cloud Storage connector against a real fake-gcs-server (started by the `emulators` crate) and
//! against temporary directories (`file://`). Every test uses its own bucket or directory and compares
//! exact contents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use emulators::{Emulators, Service};
use fluxo::testing::CollectingSink;
use fluxo::{
    ack_batch, BoxError, Element, ErrorClass, Pipeline, RetryConfig, RunOptions, Sink, SinkBatch,
    SinkConfig, Source, SourceContext, Status, Timestamp, Window, Windowing, WriteError,
};
use fluxo_gcp::storage::{
    gunzip, split_records, Compression, ContentHash, FormatKind, ObjectKey, ParquetFormat, Record,
    StorageErrorKind, StorageSink, StorageSinkConfig, StorageSource, StorageSourceConfig, Store,
    StoreOptions, Value,
};
use fluxo_gcp::ConfigError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use sha2::{Digest, Sha256};

const PROJECT: &str = "local-project";
const HOUR: i64 = 3_600_000_000;
/// 2021-05-24T20:00:00Z
const T0: i64 = 1_621_886_400_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn start() -> (Emulators, String) {
    let emu = Emulators::start(&[Service::Storage]).expect("fake-gcs-server starts");
    let url = emu.storage_url().expect("storage started");
    (emu, url)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(name: &str) -> String {
    format!(
        "fluxo-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A sink configuration for a new bucket on the emulator (the bucket is created).
async fn gcs_config(endpoint: &str, name: &str) -> (StorageSinkConfig, Store) {
    let bucket = unique(name);
    let mut config = StorageSinkConfig::new(format!("gs://{bucket}/data"));
    config.endpoint = Some(endpoint.to_string());
    let store = open_store(&config.url, endpoint).await;
    store.create_bucket(PROJECT).await.expect("bucket created");
    (config, store)
}

async fn open_store(url: &str, endpoint: &str) -> Store {
    let location = fluxo_gcp::storage::Location::parse(url, "url").expect("url");
    Store::open(
        &location,
        StoreOptions {
            endpoint: Some(endpoint.to_string()),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store")
}

fn sink_config() -> SinkConfig {
    SinkConfig {
        max_events: 40,
        max_delay: Duration::from_millis(20),
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_retries: 200,
        },
        ..SinkConfig::default()
    }
}

/// Every object under the store: name -> content.
async fn read_all(store: &Store) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    for o in store.list("").await.expect("list") {
        let data = store.get(&o.name).await.expect("get");
        assert_eq!(data.len() as u64, o.size, "{}", o.name);
        out.insert(o.name, data);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Rec {
    id: i64,
    text: String,
}

impl fluxo::Data for Rec {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.text.len()
    }
}

fn record(i: usize) -> Rec {
    Rec {
        id: i as i64,
        text: format!("line {i} with \"quotes\", ünïcödé and a\nnewline"),
    }
}

/// Lines of every object, decompressed by suffix.
fn lines_of(objects: &BTreeMap<String, Bytes>) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, data) in objects {
        let data = if name.ends_with(".gz") {
            Bytes::from(gunzip(data).expect("gunzip"))
        } else {
            data.clone()
        };
        for r in split_records(FormatKind::Ndjson, &data).expect("split") {
            lines.push(String::from_utf8(r.to_vec()).expect("utf8"));
        }
    }
    lines.sort();
    lines
}

fn expected_lines(values: &[Rec]) -> Vec<String> {
    let mut v: Vec<String> = values
        .iter()
        .map(|v| serde_json::to_string(v).expect("json"))
        .collect();
    v.sort();
    v
}

/// NDJSON through a pipeline with hourly windows: one object per window (and batch), named from the
/// window, holding exactly the JSON lines.
async fn ndjson_pipeline_round_trip(config: StorageSinkConfig, store: Store) {
    let values: Vec<Rec> = (0..100).map(record).collect();
    let sink = StorageSink::<Rec>::json(&config)
        .expect("config")
        .open()
        .await
        .expect("open");
    let p = Pipeline::new("ndjson");
    p.read(
        "Read",
        fluxo::IterSource::new(
            values
                .clone()
                .into_iter()
                .enumerate()
                .map(|(i, v)| (v, Timestamp(T0 + (i as i64 % 3) * HOUR + i as i64))),
        ),
    )
    .window_into("Hourly", Windowing::fixed(Duration::from_secs(3600)))
    .write("Archive", sink, sink_config());
    p.run(RunOptions::default()).await.expect("run");

    let objects = read_all(&store).await;
    assert!(objects.len() >= 3, "{:?}", objects.keys());
    for name in objects.keys() {
        assert!(
            name.starts_with("dt=2021-05-24/hour=20/part-1621886400000-0-")
                || name.starts_with("dt=2021-05-24/hour=21/part-1621890000000-0-")
                || name.starts_with("dt=2021-05-24/hour=22/part-1621893600000-0-"),
            "{name}"
        );
        let ext = if config.compression == Compression::Gzip {
            ".ndjson.gz"
        } else {
            ".ndjson"
        };
        assert!(name.ends_with(ext), "{name}");
    }
    assert_eq!(lines_of(&objects), expected_lines(&values));
}

#[test]
fn gcs_ndjson_round_trip_through_a_pipeline() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, store) = gcs_config(&endpoint, "ndjson").await;
        ndjson_pipeline_round_trip(config, store).await;
    });
}

#[test]
fn gcs_gzip_round_trip_through_a_pipeline() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (mut config, store) = gcs_config(&endpoint, "gzip").await;
        config.compression = Compression::Gzip;
        ndjson_pipeline_round_trip(config, store).await;
    });
}

#[test]
fn file_ndjson_and_gzip_round_trip_through_a_pipeline() {
    rt().block_on(async {
        for gz in [false, true] {
            let dir = temp_dir("file-ndjson");
            let mut config = StorageSinkConfig::new(format!("file://{}", dir.display()));
            if gz {
                config.compression = Compression::Gzip;
            }
            let store = open_store(&config.url, "http://unused").await;
            ndjson_pipeline_round_trip(config, store).await;
            // The objects are plain files under the directory.
            assert!(dir.join("dt=2021-05-24/hour=20").is_dir());
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

#[derive(Clone, Debug, PartialEq)]
struct Item {
    id: i64,
    name: String,
    price: String,
    at_micros: i64,
    ok: bool,
    weight: f64,
    note: Option<String>,
}

impl fluxo::Data for Item {}

fn items() -> Vec<Item> {
    (0..50)
        .map(|i| Item {
            id: i,
            name: format!("product {i} ç"),
            price: format!("{}.{:02}", i * 7, i % 100),
            at_micros: T0 + i * 1_000_001,
            ok: i % 2 == 0,
            weight: i as f64 * 0.25,
            note: (i % 3 == 0).then(|| format!("note {i}")),
        })
        .collect()
}

fn item_format() -> ParquetFormat<Item> {
    ParquetFormat::new(
        "message item {
            required int64 id;
            required binary name (STRING);
            required int64 price (DECIMAL(18,2));
            required int64 at (TIMESTAMP(MICROS,true));
            required boolean ok;
            required double weight;
            optional binary note (STRING);
        }",
        |i: &Item, row| {
            if i.id < 0 {
                return Err("negative id".into());
            }
            row.push(i.id)?
                .push(&i.name)?
                .push(Value::Decimal(&i.price))?
                .push(i.at_micros)?
                .push(i.ok)?
                .push(i.weight)?
                .push(i.note.as_ref())?;
            Ok(())
        },
    )
    .expect("schema")
}

fn read_parquet(data: Bytes) -> Vec<Item> {
    let reader = SerializedFileReader::new(data).expect("parquet file");
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).expect("rows") {
        let row = row.expect("row");
        let f: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let (
            Field::Long(id),
            Field::Str(name),
            Field::Decimal(price),
            Field::TimestampMicros(at),
            Field::Bool(ok),
            Field::Double(weight),
        ) = (f[0], f[1], f[2], f[3], f[4], f[5])
        else {
            panic!("unexpected fields {f:?}");
        };
        assert_eq!((price.precision(), price.scale()), (18, 2));
        let unscaled = i64::from_be_bytes(price.data().try_into().expect("8 bytes"));
        let note = match f[6] {
            Field::Null => None,
            Field::Str(s) => Some(s.clone()),
            other => panic!("note {other:?}"),
        };
        out.push(Item {
            id: *id,
            name: name.clone(),
            price: format!("{}.{:02}", unscaled / 100, unscaled % 100),
            at_micros: *at,
            ok: *ok,
            weight: *weight,
            note,
        });
    }
    out
}

async fn parquet_round_trip(mut config: StorageSinkConfig, store: Store) {
    config.format = FormatKind::Parquet;
    let sink = StorageSink::with_format(&config, item_format())
        .expect("config")
        .open()
        .await
        .expect("open");
    let mut values = items();
    // One element whose row fails is rejected alone.
    let mut bad = values[0].clone();
    bad.id = -1;
    values.push(bad);
    let result = sink.write(&SinkBatch::from_values(values.clone())).await;
    match result {
        Err(WriteError::Partial(f)) => {
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].0, 50);
            assert!(!f[0].1.is_retriable());
            assert!(f[0].1.to_string().contains("negative id"), "{}", f[0].1);
        }
        other => panic!("expected one rejected element, got {other:?}"),
    }
    let objects = read_all(&store).await;
    assert_eq!(objects.len(), 1, "{:?}", objects.keys());
    let (name, data) = objects.into_iter().next().expect("one object");
    assert!(name.ends_with(".parquet"), "{name}");
    assert_eq!(read_parquet(data), items());
}

#[test]
fn gcs_parquet_round_trip_reads_back_exact_values() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, store) = gcs_config(&endpoint, "parquet").await;
        parquet_round_trip(config, store).await;
    });
}

#[test]
fn file_parquet_round_trip_reads_back_exact_values() {
    rt().block_on(async {
        let dir = temp_dir("file-parquet");
        let config = StorageSinkConfig::new(format!("file://{}", dir.display()));
        let store = open_store(&config.url, "http://unused").await;
        parquet_round_trip(config, store).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn tricky_bytes() -> Vec<Vec<u8>> {
    vec![
        b"{\"NFeID\": 1, \"x\": \"a\r\nb\"}\n".to_vec(),
        vec![],
        vec![0xff, 0xfe, 0, 10, 13, 0x80],
        b"  {\"NFeID\":2}  ".to_vec(),
        (0..=255u8).collect(),
    ]
}

async fn raw_bytes_exact(config: StorageSinkConfig, store: Store) {
    // Length-framed records: one object, records exactly as given.
    let mut rc = config.clone();
    rc.format = FormatKind::RawRecords;
    rc.naming = "records/{date}/{hash}.{ext}".into();
    let sink = StorageSink::<Vec<u8>>::bytes(&rc)
        .expect("config")
        .open()
        .await
        .expect("open");
    sink.write(&SinkBatch::from_values(tricky_bytes()))
        .await
        .expect("write");
    // One object per element, named like the invoice pipeline's raw archive.
    let mut oc = config.clone();
    oc.format = FormatKind::RawObject;
    oc.content_hash = ContentHash::Sha256;
    let sink = StorageSink::<Vec<u8>>::bytes(&oc)
        .expect("config")
        .naming(|k: &ObjectKey<'_>| {
            let (date, hour) = fluxo_gcp::storage::utc_date_hour(k.min_timestamp);
            format!("raw/dt={date}/hour={hour:02}/{}.json", k.hash)
        })
        .open()
        .await
        .expect("open");
    sink.write(&SinkBatch::from_values(tricky_bytes()))
        .await
        .expect("write");

    let objects = read_all(&store).await;
    let records: Vec<_> = objects
        .iter()
        .filter(|(n, _)| n.starts_with("records/"))
        .collect();
    assert_eq!(records.len(), 1);
    assert!(records[0].0.ends_with(".records"), "{}", records[0].0);
    let back: Vec<Vec<u8>> = split_records(FormatKind::RawRecords, records[0].1)
        .expect("frames")
        .into_iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(back, tricky_bytes());

    let raw: BTreeMap<&String, &Bytes> = objects
        .iter()
        .filter(|(n, _)| n.starts_with("raw/"))
        .collect();
    let mut expected: Vec<(String, Vec<u8>)> = tricky_bytes()
        .into_iter()
        .map(|b| {
            let hash: String = Sha256::digest(&b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            // Unwindowed elements at Timestamp::MIN: the namer gets the clamped calendar minimum.
            (hash, b)
        })
        .collect();
    expected.sort();
    let mut got: Vec<(String, Vec<u8>)> = raw
        .iter()
        .map(|(n, b)| {
            let file = n.rsplit('/').next().expect("file");
            (file.trim_end_matches(".json").to_string(), b.to_vec())
        })
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn gcs_raw_bytes_are_exact() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, store) = gcs_config(&endpoint, "raw").await;
        raw_bytes_exact(config, store).await;
    });
}

#[test]
fn file_raw_bytes_are_exact() {
    rt().block_on(async {
        let dir = temp_dir("file-raw");
        let config = StorageSinkConfig::new(format!("file://{}", dir.display()));
        let store = open_store(&config.url, "http://unused").await;
        raw_bytes_exact(config, store).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn same_batch_twice(config: StorageSinkConfig, store: Store) {
    let sink = StorageSink::<Rec>::json(&config)
        .expect("config")
        .open()
        .await
        .expect("open");
    let batch = SinkBatch::from_values((0..20).map(record).collect());
    sink.write(&batch).await.expect("first write");
    let first = read_all(&store).await;
    sink.write(&batch).await.expect("retried write");
    let second = read_all(&store).await;
    assert_eq!(first.len(), 1, "{:?}", first.keys());
    assert_eq!(first, second);
    // A different batch is a different object.
    sink.write(&SinkBatch::from_values(vec![record(99)]))
        .await
        .expect("other write");
    assert_eq!(read_all(&store).await.len(), 2);
}

#[test]
fn gcs_the_same_batch_twice_is_one_object() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, store) = gcs_config(&endpoint, "twice").await;
        same_batch_twice(config, store).await;
    });
}

#[test]
fn file_the_same_batch_twice_is_one_object() {
    rt().block_on(async {
        let dir = temp_dir("file-twice");
        let config = StorageSinkConfig::new(format!("file://{}", dir.display()));
        let store = open_store(&config.url, "http://unused").await;
        same_batch_twice(config, store).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn multipart(mut config: StorageSinkConfig) {
    config.multipart_threshold = 1024 * 1024;
    config.part_size = 256 * 1024;
    config.format = FormatKind::RawRecords;
    let sink = StorageSink::<Vec<u8>>::bytes(&config)
        .expect("config")
        .open()
        .await
        .expect("open");
    // About 3.2 MiB of pseudo-random bytes in 100 records: 13 parts of 256 KiB.
    let mut rng = fastrand::Rng::with_seed(7);
    let values: Vec<Vec<u8>> = (0..100)
        .map(|_| (0..32 * 1024).map(|_| rng.u8(..)).collect())
        .collect();
    sink.write(&SinkBatch::from_values(values.clone()))
        .await
        .expect("write");
    let stats = sink.store().stats();
    assert_eq!(stats.multipart_uploads.load(Ordering::Relaxed), 1);
    assert_eq!(stats.parts.load(Ordering::Relaxed), 13);
    let objects = read_all(sink.store()).await;
    assert_eq!(objects.len(), 1);
    let data = objects.values().next().expect("object");
    assert_eq!(data.len(), 100 * (32 * 1024 + 4));
    let back: Vec<Vec<u8>> = split_records(FormatKind::RawRecords, data)
        .expect("frames")
        .into_iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(back, values);
}

#[test]
fn gcs_large_objects_are_uploaded_in_parts() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, _store) = gcs_config(&endpoint, "multipart").await;
        multipart(config).await;
    });
}

#[test]
fn file_large_objects_are_uploaded_in_parts() {
    rt().block_on(async {
        let dir = temp_dir("file-multipart");
        multipart(StorageSinkConfig::new(format!("file://{}", dir.display()))).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Writes windowed JSON and raw objects, then replays them with the source in a pipeline.
async fn source_replays(config: StorageSinkConfig, store: Store, endpoint: Option<&str>) {
    // Three hours of JSON, gzip in one hour and plain in the others (written by two sinks).
    let values: Vec<Rec> = (0..300).map(record).collect();
    for (gz, range) in [(false, 0..200), (true, 200..300)] {
        let mut c = config.clone();
        c.naming = "json/dt={date}/hour={hour}/{hash}.{ext}".into();
        if gz {
            c.compression = Compression::Gzip;
        }
        let sink = StorageSink::<Rec>::json(&c)
            .expect("config")
            .open()
            .await
            .expect("open");
        let p = Pipeline::new("write");
        p.read(
            "Read",
            fluxo::IterSource::new(Vec::from(&values[range]).into_iter().map(|v| {
                let i = v.id;
                (v, Timestamp(T0 + (i / 100) * HOUR + i))
            })),
        )
        .window_into("Hourly", Windowing::fixed(Duration::from_secs(3600)))
        .write("Archive", sink, sink_config());
        p.run(RunOptions::default()).await.expect("write run");
    }
    // Something else under another prefix that the replay must not read.
    store
        .put(
            "other/x.ndjson",
            Bytes::from_static(b"{\"id\": -1}\n"),
            "text/plain",
        )
        .await
        .expect("put");

    let mut sc = StorageSourceConfig::new(config.url.clone());
    sc.prefix = "json/".into();
    sc.endpoint = endpoint.map(str::to_string);
    let source = StorageSource::<Rec>::json(&sc)
        .expect("config")
        .open()
        .await
        .expect("open");
    let (collect, out) = CollectingSink::new();
    let p = Pipeline::new("replay");
    p.read("Replay", source)
        .write("Collect", collect, SinkConfig::default());
    p.run(RunOptions::default()).await.expect("replay run");

    let got = out.elements();
    let mut lines: Vec<String> = got
        .iter()
        .map(|c| serde_json::to_string(&c.value).expect("json"))
        .collect();
    lines.sort();
    assert_eq!(lines, expected_lines(&values));
    // Event time: the hour partition of the object the record came from.
    for c in &got {
        let i = c.value.id;
        assert_eq!(
            c.timestamp,
            Timestamp(T0 + (i / 100) * HOUR),
            "{:?}",
            c.value
        );
    }

    // Windowed counts downstream: the watermark never passes an object not yet read, so no record
    // is dropped as late and every hour holds its 100 records.
    let source = StorageSource::<Rec>::json(&sc)
        .expect("config")
        .open()
        .await
        .expect("open");
    let (collect, counts) = CollectingSink::new();
    let p = Pipeline::new("replay-windowed");
    p.read("Replay", source)
        // A bounded replay ends with the watermark at the end of time: nothing is late.
        .window_into(
            "Hourly",
            Windowing::fixed(Duration::from_secs(3600)).drop_late(),
        )
        .key_by("Key", |_: &Rec| 0u8)
        .count_per_key("Count")
        .write("Collect", collect, SinkConfig::default());
    p.run(RunOptions::default())
        .await
        .expect("windowed replay run");
    let mut per_window: Vec<(Timestamp, u64)> = counts
        .elements()
        .into_iter()
        .map(|c| (c.window.start, c.value.1))
        .collect();
    per_window.sort();
    assert_eq!(
        per_window,
        vec![
            (Timestamp(T0), 100),
            (Timestamp(T0 + HOUR), 100),
            (Timestamp(T0 + 2 * HOUR), 100)
        ]
    );

    // Exact bytes through the raw decoder.
    let mut oc = config.clone();
    oc.format = FormatKind::RawRecords;
    oc.naming = "rec/dt={date}/{hash}.{ext}".into();
    let sink = StorageSink::<Vec<u8>>::bytes(&oc)
        .expect("config")
        .open()
        .await
        .expect("open");
    sink.write(&SinkBatch::from_values(tricky_bytes()))
        .await
        .expect("write");
    let mut rc = StorageSourceConfig::new(config.url.clone());
    rc.prefix = "rec/".into();
    rc.format = FormatKind::RawRecords;
    rc.endpoint = endpoint.map(str::to_string);
    let (collect, out) = CollectingSink::<Record>::new();
    let p = Pipeline::new("replay-raw");
    p.read(
        "Replay",
        StorageSource::raw(&rc)
            .expect("config")
            .open()
            .await
            .expect("open"),
    )
    .write("Collect", collect, SinkConfig::default());
    p.run(RunOptions::default()).await.expect("raw replay run");
    let mut back: Vec<Vec<u8>> = out
        .values()
        .into_iter()
        .map(|r| r.as_bytes().to_vec())
        .collect();
    back.sort();
    let mut expected = tricky_bytes();
    expected.sort();
    assert_eq!(back, expected);
}

#[test]
fn gcs_source_replays_everything_under_a_prefix() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (config, store) = gcs_config(&endpoint, "source").await;
        source_replays(config, store, Some(&endpoint)).await;
    });
}

#[test]
fn file_source_replays_everything_under_a_prefix() {
    rt().block_on(async {
        let dir = temp_dir("file-source");
        let config = StorageSinkConfig::new(format!("file://{}", dir.display()));
        let store = open_store(&config.url, "http://unused").await;
        source_replays(config, store, None).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn memory_store_is_shared_by_name() {
    rt().block_on(async {
        let url = format!("memory://{}", unique("mem"));
        let config = StorageSinkConfig::new(url.clone());
        let sink = StorageSink::<String>::bytes(&config)
            .expect("config")
            .open()
            .await
            .expect("open");
        sink.write(&SinkBatch::from_values(vec!["a".to_string(), "b".into()]))
            .await
            .expect("write");
        let (collect, out) = CollectingSink::<Record>::new();
        let p = Pipeline::new("mem");
        p.read(
            "Replay",
            StorageSource::raw(&StorageSourceConfig::new(url))
                .expect("config")
                .open()
                .await
                .expect("open"),
        )
        .write("Collect", collect, SinkConfig::default());
        p.run(RunOptions::default()).await.expect("run");
        assert_eq!(
            out.values_sorted(),
            vec![Record::from("a"), Record::from("b")]
        );
    });
}

/// Emits `first`, waits for the gate, emits `second`; records every element's acknowledgement.
struct GatedSource {
    first: Vec<String>,
    second: Vec<String>,
    gate: tokio::sync::oneshot::Receiver<()>,
    statuses: Arc<Mutex<Vec<tokio::task::JoinHandle<Vec<Status>>>>>,
}

impl GatedSource {
    fn track(&self, values: &[String], at: i64) -> Vec<Element<String>> {
        let (fins, rx) = ack_batch(values.len());
        self.statuses
            .lock()
            .expect("lock")
            .push(tokio::spawn(rx.wait()));
        values
            .iter()
            .zip(fins)
            .map(|(v, f)| Element::new(v.clone(), Timestamp(at)).with_finalizers(f))
            .collect()
    }
}

impl Source for GatedSource {
    type Output = String;

    async fn run(mut self, mut ctx: SourceContext<String>) -> Result<(), BoxError> {
        let first = self.track(&self.first, T0);
        ctx.emit(first).await?;
        let gate = std::mem::replace(&mut self.gate, tokio::sync::oneshot::channel().1);
        let _ = gate.await;
        let second = self.track(&self.second, T0 + HOUR);
        ctx.emit(second).await?;
        Ok(())
    }
}

#[test]
fn gcs_sink_rides_out_an_emulator_restart() {
    let (emu, endpoint) = start();
    let emu = Arc::new(Mutex::new(emu));
    rt().block_on(async {
        let (mut config, store) = gcs_config(&endpoint, "restart").await;
        config.naming = "{date}/{hour}/{hash}.{ext}".into();
        config.format = FormatKind::Ndjson;
        let sink = StorageSink::<String>::bytes(&config)
            .expect("config")
            .open()
            .await
            .expect("open");
        let first: Vec<String> = (0..30).map(|i| format!("before-{i}")).collect();
        let second: Vec<String> = (0..120).map(|i| format!("after-{i}")).collect();
        let (open_gate, gate) = tokio::sync::oneshot::channel();
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let source = GatedSource {
            first: first.clone(),
            second: second.clone(),
            gate,
            statuses: Arc::clone(&statuses),
        };
        let p = Pipeline::new("restart");
        p.read("Read", source).write("Archive", sink, sink_config());
        let run = tokio::spawn(p.run(RunOptions::default()));

        // Wait until the first elements are stored.
        let mut stored = Vec::new();
        for _ in 0..200 {
            stored = lines_of(&read_all(&store).await);
            if stored.len() == first.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut expected_first = first.clone();
        expected_first.sort();
        assert_eq!(stored, expected_first);

        // Stop the emulator, let the second part arrive and fail for a while, then restart.
        let e = Arc::clone(&emu);
        tokio::task::spawn_blocking(move || e.lock().expect("lock").stop(Service::Storage))
            .await
            .expect("join")
            .expect("stop");
        let _ = open_gate.send(());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !run.is_finished(),
            "the sink must keep retrying while the emulator is down"
        );
        let e = Arc::clone(&emu);
        tokio::task::spawn_blocking(move || e.lock().expect("lock").restart(Service::Storage))
            .await
            .expect("join")
            .expect("restart");
        // In-memory backend: the bucket is gone; re-create it.
        store
            .create_bucket(PROJECT)
            .await
            .expect("bucket re-created");
        let report = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run finishes after the restart")
            .expect("join")
            .expect("run");
        let _ = report;

        // Everything emitted after the restart is stored exactly once per line; nothing was lost.
        let mut expected_second = second.clone();
        expected_second.sort();
        assert_eq!(lines_of(&read_all(&store).await), expected_second);
        let handles: Vec<_> = std::mem::take(&mut *statuses.lock().expect("lock"));
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("statuses"));
        }
        assert_eq!(all.len(), first.len() + second.len());
        assert!(all.iter().all(|s| *s == Status::Delivered), "{all:?}");
    });
}

fn one_line(e: &ConfigError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    s
}

#[test]
fn configuration_errors_are_one_line() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        // Bad bucket name.
        let e = StorageSink::<String>::bytes(&StorageSinkConfig::new("gs://Bad_Bucket/x"))
            .err()
            .expect("invalid");
        assert_eq!(
            one_line(&e),
            "invalid storage.url: bucket 'Bad_Bucket' in 'gs://Bad_Bucket/x': may contain only lowercase letters, digits, '-', '_' and '.' (found 'B')"
        );
        // Unknown scheme.
        let e = StorageSourceConfig::new("s3://b").validate().expect_err("invalid");
        assert!(one_line(&e).contains("unsupported scheme 's3'"));
        // Missing bucket.
        let mut c = StorageSinkConfig::new(format!("gs://{}", unique("missing")));
        c.endpoint = Some(endpoint.clone());
        let e = StorageSink::<String>::bytes(&c)
            .expect("config")
            .open()
            .await
            .err()
            .expect("not found");
        let msg = one_line(&e);
        assert!(matches!(e, ConfigError::NotFound { kind: "bucket", .. }), "{msg}");
        assert!(msg.contains("does not exist at http://127.0.0.1:"), "{msg}");
        // Unreachable endpoint (a port nobody listens on).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let mut c = StorageSinkConfig::new("gs://some-bucket");
        c.endpoint = Some(format!("http://127.0.0.1:{port}"));
        c.request_timeout_ms = 2000;
        let e = StorageSource::<Record>::raw(&StorageSourceConfig {
            url: c.url.clone(),
            endpoint: c.endpoint.clone(),
            request_timeout_ms: 2000,
            ..StorageSourceConfig::default()
        })
        .expect("config")
        .open()
        .await
        .err()
        .expect("unreachable");
        let msg = one_line(&e);
        assert!(matches!(e, ConfigError::Unreachable { .. }), "{msg}");
        assert!(msg.starts_with(&format!("Cloud Storage at http://127.0.0.1:{port} is not reachable")), "{msg}");
        // A directory that cannot be written.
        let e = StorageSink::<String>::bytes(&StorageSinkConfig::new("file:///proc/fluxo-not-writable"))
            .expect("config")
            .open()
            .await
            .err()
            .expect("not writable");
        one_line(&e);
        // Bad sizes.
        let mut c = StorageSinkConfig::new("file:///tmp/x");
        c.part_size = 100;
        let e = c.validate().expect_err("invalid");
        assert!(one_line(&e).starts_with("invalid storage.part_size"));
    });
}

#[test]
fn window_metadata_reaches_the_namer() {
    // Elements of one window and pane share an object named from the window start.
    rt().block_on(async {
        let url = format!("memory://{}", unique("names"));
        let config = StorageSinkConfig::new(url.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let sink = StorageSink::<String>::bytes(&config)
            .expect("config")
            .naming(move |k: &ObjectKey<'_>| {
                s2.lock().expect("lock").push((k.window, k.records));
                format!("w/{}-{}", k.partition_time.micros(), k.hash)
            })
            .open()
            .await
            .expect("open");
        let p = Pipeline::new("names");
        p.read(
            "Read",
            fluxo::IterSource::new(
                (0..10).map(|i| (format!("v{i}"), Timestamp(T0 + (i % 2) * HOUR))),
            ),
        )
        .window_into("Hourly", Windowing::fixed(Duration::from_secs(3600)))
        .write("Archive", sink, SinkConfig::default());
        p.run(RunOptions::default()).await.expect("run");
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (Window::new(Timestamp(T0), Timestamp(T0 + HOUR)), 5),
                (
                    Window::new(Timestamp(T0 + HOUR), Timestamp(T0 + 2 * HOUR)),
                    5
                )
            ]
        );
    });
}

#[test]
fn creating_an_existing_bucket_succeeds_and_errors_carry_the_http_status() {
    let (_emu, endpoint) = start();
    rt().block_on(async {
        let (_, store) = gcs_config(&endpoint, "twice").await;
        // The second creation gets 409 Conflict from the service: the bucket exists, which is fine.
        store.create_bucket(PROJECT).await.expect("created again");
        let missing = store.get("no-such-object").await.unwrap_err();
        assert_eq!(missing.kind, StorageErrorKind::NotFound, "{missing}");
        assert_eq!(missing.status, Some(404), "{missing}");
    });
}
