//! BigQuery: a sink that streams rows with `tabledata.insertAll` (insert ids, per-row errors, several
//! tables per sink), table provisioning from JSON schema files, and a query helper to read results back.
//!
//! - [`BigQuerySink`] writes [`TableRow`]s (pre-serialized JSON objects with an optional insert id and
//!   table); configure it with [`BigQuerySinkConfig`].
//! - [`BigQueryAdmin`] creates datasets and tables idempotently ([`BigQueryAdmin::create_table`] takes
//!   the schema file's text, partitioning and clustering), checks existence and runs queries.
//!
//! Endpoint: `endpoint` in the configuration, else `BIGQUERY_EMULATOR_HOST` (bqemulator's REST
//! `host:port`), else `https://bigquery.googleapis.com` with Application Default Credentials. See
//! `docs/connectors/bigquery.md`.

mod admin;
mod client;
mod config;
mod row;
mod sink;

pub use admin::{
    parse_schema, BigQueryAdmin, Created, QueryResult, TableOptions, TimePartitioning,
};
pub use client::{BigQueryClient, BigQueryError};
pub use config::{
    resolve_endpoint, validate_dataset, validate_project, validate_table, BigQuerySinkConfig,
    ClientConfig, ClientSettings, Endpoint, EndpointSource, SinkSettings, BIGQUERY_SCOPE,
    EMULATOR_ENV, GOOGLE_ENDPOINT, MAX_BYTES_PER_REQUEST, MAX_ROWS_PER_REQUEST,
};
pub use row::TableRow;
pub use sink::BigQuerySink;

/// The HTTP client crate the connector uses, for tools and benchmarks that call the REST API directly.
pub mod raw {
    pub use reqwest;
}
