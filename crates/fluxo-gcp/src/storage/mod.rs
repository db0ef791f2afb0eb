//! Cloud Storage connector: a sink that writes each batch as deterministically named objects
//! (newline-delimited JSON, gzip, length-framed raw records, one raw object per element, Parquet) and a
//! bounded source that reads them back for replays and backfills.
//!
//! Locations: `gs://bucket/prefix` (Cloud Storage through the `gcloud-storage` crate; endpoint from the
//! configuration, else `STORAGE_EMULATOR_HOST`, else Google with Application Default Credentials),
//! `file:///dir` (the embedded default, through `object_store`'s local file system) and `memory://name`
//! (in-process, for pipeline tests).
//!
//! Delivery: the sink stores every object of a batch before `write` returns, so acknowledged elements
//! are durable. Object names are a function of the window, the pane and a SHA-256 of the content: a
//! retried write of the same batch replaces its object rather than adding a copy. Elements redelivered
//! in a different batch land in a different object (at-least-once); with `raw_object` each element is
//! its own object named by its hash, so exact duplicates collapse. See `docs/connectors/storage.md`.
//!
//! ```no_run
//! use fluxo::{Pipeline, RunOptions, SinkConfig, Timestamp};
//! use fluxo::testing::TestStream;
//! use fluxo_gcp::storage::{StorageSink, StorageSinkConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = StorageSinkConfig::new("gs://my-archive/events");
//! config.compression = fluxo_gcp::storage::Compression::Gzip;
//! // JSON text lines as they are (`StorageSink::json` serializes serde values instead).
//! let sink = StorageSink::<String>::bytes(&config)?.open().await?;
//! let p = Pipeline::new("archive");
//! p.read("Read", TestStream::new().add_values([(r#"{"a":1}"#.to_string(), Timestamp::from_secs(1))]))
//!     .write("Archive", sink, SinkConfig::default());
//! p.run(RunOptions::default()).await?;
//! # Ok(()) }
//! ```

mod bucket;
mod config;
mod endpoint;
mod error;
mod format;
mod naming;
mod objects;
mod parquet;
mod sink;
mod source;
mod store;
mod upload;

pub use config::{
    validate_bucket, Compression, ContentHash, EventTimeFrom, FormatKind, Location, OnDecodeError,
    SinkSettings, SourceCompression, SourceSettings, StorageSinkConfig, StorageSourceConfig,
    StoreOptions, DEFAULT_NAMING,
};
pub use endpoint::{resolve_endpoint, STORAGE_EMULATOR_ENV};
pub use error::{StorageError, StorageErrorKind};
pub use format::{
    gunzip, gzip, split_records, EncodeError, Format, Lines, Ndjson, PerValue, RawObject,
    RawRecords, MAX_RECORD,
};
pub use naming::{partition_time, utc_date_hour, NameTemplate, ObjectKey, ObjectNamer};
pub use parquet::{parse_decimal, ParquetFormat, RowWriter, Value};
pub use sink::{StorageSink, StorageSinkBuilder};
pub use source::{Decode, JsonDecoder, RawDecoder, Record, StorageSource};
pub use store::{ObjectInfo, Store, StoreStats};
