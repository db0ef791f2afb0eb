//! Bigtable: a sink of generic rows ([`RowMutation`]: a key plus cells to set and deletions) through
//! `MutateRows`, table provisioning through the table admin API ([`AdminClient::provision_table`]), and a
//! reader for tests and tools ([`BigtableReader`]: one row, a key range or prefix, compare-and-set).
//!
//! ```no_run
//! use fluxo_gcp::bigtable::{AdminClient, BigtableSink, BigtableSinkConfig, FamilySpec, RowMutation, TableSpec};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BigtableSinkConfig::new("my-project", "my-instance", "events").with_endpoint("127.0.0.1:8086");
//! let admin = AdminClient::connect(&config.validate()?).await?;
//! admin.provision_table("events", &TableSpec { families: vec![FamilySpec::max_versions("d", 1)] }).await?;
//! let sink = BigtableSink::connect(&config).await?;
//! // pipeline.write("Bigtable", sink, fluxo::SinkConfig::default());
//! let row = RowMutation::new("key-1", vec![]).set("d", "payload", 1_700_000_000_000_000, "value");
//! # let _ = (sink, row);
//! # Ok(()) }
//! ```
//!
//! See `docs/connectors/bigtable.md` for the configuration reference, delivery semantics and limits.

mod admin;
mod client;
mod config;
mod encode;
mod mutation;
mod reader;
mod sink;

pub use admin::{cbt_hint, FamilySpec, Provisioned, TableSpec};
pub use client::{classify, AdminClient, BigtableError};
pub use config::{
    check_family, check_instance, check_project, check_table_like, BigtableSinkConfig, Endpoint,
    ValidConfig, EMULATOR_ENV, MAX_REQUEST_BYTES,
};
pub use encode::mutate_rows_request;
pub use mutation::{
    Delete, Family, RowMutation, SetCell, MAX_KEY_BYTES, MAX_MUTATIONS_PER_REQUEST,
    SERVER_TIMESTAMP,
};
pub use reader::{column_filter, BigtableReader, Expected, KeyRange, ReadCell, ReadRow};
pub use sink::{BigtableSink, SinkStats};

/// The `bigtable_rs` client crate this connector is built on, for raw access (benchmarks, tools).
pub use bigtable_rs as raw;
