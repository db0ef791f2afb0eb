//! BigQuery: a sink that writes rows through the Storage Write API (committed streams with offsets, protobuf
//! rows laid out from each table's schema, per-row errors, several tables per sink), table provisioning
//! from JSON schema files, and a query helper to read results back.
//!
//! - [`BigQuerySink`] writes [`TableRow`]s (protobuf rows built with a [`RowEncoder`] from the
//!   [`WriterSchema`] the sink read at start); configure it with [`BigQuerySinkConfig`].
//! - [`BigQueryAdmin`] creates datasets and tables idempotently ([`BigQueryAdmin::create_table`] takes
//!   the schema file's text, partitioning and clustering), checks existence and runs queries.
//!
//! Endpoints: REST (checks, schemas, queries) from `endpoint`, else `BIGQUERY_EMULATOR_HOST` (bqemulator's
//! REST `host:port`), else `https://bigquery.googleapis.com`; Storage Write (gRPC) from `write_endpoint`,
//! else `BIGQUERY_EMULATOR_GRPC_HOST`, else `https://bigquerystorage.googleapis.com`; Application Default
//! Credentials for Google's endpoints. See `docs/connectors/bigquery.md`.

mod admin;
mod client;
mod config;
pub mod proto;
mod row;
mod sink;
mod write;

pub use admin::{
    parse_schema, BigQueryAdmin, Created, QueryResult, TableOptions, TimePartitioning,
};
pub use client::{BigQueryClient, BigQueryError};
pub use config::{
    resolve_endpoint, resolve_write_endpoint, validate_dataset, validate_project, validate_table,
    BigQuerySinkConfig, ClientConfig, ClientSettings, Endpoint, EndpointSource, SinkSettings,
    BIGQUERY_SCOPE, EMULATOR_ENV, GOOGLE_ENDPOINT, GOOGLE_WRITE_ENDPOINT, MAX_BYTES_PER_REQUEST,
    MAX_ROWS_PER_REQUEST, WRITE_EMULATOR_ENV,
};
pub use proto::{Column, ColumnType, RowEncoder, SchemaColumn, WriterSchema};
pub use row::TableRow;
pub use sink::BigQuerySink;

/// The HTTP client crate the connector uses, for tools and benchmarks that call the REST API directly.
pub mod raw {
    pub use reqwest;
}
