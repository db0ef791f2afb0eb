//! Google Cloud connectors for the fluxo engine: a Pub/Sub source (streaming or unary pull) and sink, a
//! Bigtable sink with table provisioning and a reader, a BigQuery sink with table provisioning, and a
//! Cloud Storage sink (rolled files per window: newline-delimited JSON, gzip, Parquet) and bounded source.
//!
//! The connectors are generic: they move bytes, rows and mutations and know nothing of the data's meaning.
//! Every connector honours its emulator variable (`PUBSUB_EMULATOR_HOST`, `BIGTABLE_EMULATOR_HOST`,
//! `STORAGE_EMULATOR_HOST`, `BIGQUERY_EMULATOR_HOST`) or an explicit endpoint in its configuration, and
//! uses Application Default Credentials otherwise. Each configuration is a serde struct with documented
//! defaults that is validated (names, limits, reachability) before a pipeline starts; see
//! `docs/connectors.md`.

pub mod bigquery;
pub mod bigtable;
pub mod endpoint;
mod error;
pub mod logging;
pub mod metrics;
pub mod pubsub;
pub mod storage;
mod text;

pub use error::{grpc_code_is_retriable, ConfigError};
