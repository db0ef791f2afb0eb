//! [`BigQuerySink`]: the Storage Write API with committed streams and offsets; one request per table and
//! size limit; per-row outcomes.

use crate::metrics::RequestMetrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fluxo::{Sink, SinkBatch, WriteError};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::Mutex;

use super::admin::BigQueryAdmin;
use super::client::{BigQueryClient, BigQueryError};
use super::config::{BigQuerySinkConfig, SinkSettings};
use super::proto::WriterSchema;
use super::row::TableRow;
use super::write::{Lane, WriteClient};
use crate::ConfigError;

/// Writes [`TableRow`]s to the tables of one dataset through the Storage Write API.
///
/// At start ([`BigQuerySink::connect`]) it reads every table's schema and derives the protobuf layout of
/// its rows ([`BigQuerySink::schema`] gives it to the code that builds rows). Each batch is grouped by
/// table and split into requests of at most `max_rows_per_request` rows and `max_bytes_per_request`
/// bytes; each request goes to one of the table's `streams_per_table` committed streams, one append in
/// flight per stream, at the stream's next offset, so an append retried after a lost answer is written
/// once (see `docs/connectors/bigquery.md`). Outcomes:
/// - rows BigQuery names in `row_errors` fail alone ([`WriteError::Partial`]) and the others are sent
///   again; a request refused as a whole for a data reason is split until the bad rows are alone; those
///   failures are permanent (the element goes to the dead-letter path upstream);
/// - transient failures (unavailable, throttled, no answer) are retried on the stream, at the same
///   offset, for up to `resolve_timeout_ms`, then fail the rows retriably (the engine retries them);
/// - a row for a table the sink does not know, or larger than a request, is rejected without a request.
#[derive(Debug, Clone)]
pub struct BigQuerySink {
    client: BigQueryClient,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: SinkSettings,
    schemas: Vec<WriterSchema>,
    writer: WriteClient,
    /// `streams_per_table` lanes per table, in table order.
    lanes: Vec<Vec<Mutex<Lane>>>,
    /// Round-robin start of the next request, per table.
    next_lane: Vec<AtomicUsize>,
    /// Set when the sink is added to a pipeline ([`Sink::register_metrics`]).
    requests: std::sync::OnceLock<RequestMetrics>,
}

/// One append: the table and the batch indices of its rows.
struct Request {
    table: usize,
    indices: Vec<u32>,
}

impl BigQuerySink {
    /// Validates the configuration, builds the clients (credentials when needed), checks that the
    /// dataset and every table exist and reads their schemas. Errors are one line:
    /// [`ConfigError::Invalid`], [`ConfigError::Unreachable`] or [`ConfigError::NotFound`] with the
    /// provisioning hint.
    pub async fn connect(config: &BigQuerySinkConfig) -> Result<Self, ConfigError> {
        let settings = config.validate()?;
        let client = BigQueryClient::with_settings(&settings.project, &settings.client).await?;
        check(&client, &settings).await?;
        let mut schemas = Vec::with_capacity(settings.tables.len());
        for (i, t) in settings.tables.iter().enumerate() {
            let url = format!(
                "{}/datasets/{}/tables/{}",
                client.project_url(),
                settings.dataset,
                t
            );
            let table: Value = client
                .call(Method::GET, &url, None)
                .await
                .map_err(|e| client.check_error(e))?;
            let fields = table.pointer("/schema/fields").unwrap_or(&Value::Null);
            let index = u16::try_from(i)
                .map_err(|_| ConfigError::invalid("bigquery.tables", "more than 65,536 tables"))?;
            let schema = WriterSchema::from_fields(t, index, fields)
                .map_err(|e| ConfigError::invalid("bigquery.tables", e.to_string()))?;
            schemas.push(schema);
        }
        let writer = WriteClient::connect(&settings).await?;
        Ok(Self::with_parts(settings, client, schemas, writer))
    }

    fn with_parts(
        settings: SinkSettings,
        client: BigQueryClient,
        schemas: Vec<WriterSchema>,
        writer: WriteClient,
    ) -> Self {
        let lanes = settings
            .tables
            .iter()
            .map(|t| {
                (0..settings.streams_per_table)
                    .map(|_| Mutex::new(Lane::new(&settings.project, &settings.dataset, t)))
                    .collect()
            })
            .collect();
        let next_lane = settings
            .tables
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        BigQuerySink {
            client,
            inner: Arc::new(Inner {
                settings,
                schemas,
                writer,
                lanes,
                next_lane,
                requests: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The client (for [`BigQueryAdmin::new`], for example).
    pub fn client(&self) -> &BigQueryClient {
        &self.client
    }

    /// The checked settings.
    pub fn settings(&self) -> &SinkSettings {
        &self.inner.settings
    }

    /// The row layout of `table` (read from BigQuery at start), to build rows with.
    pub fn schema(&self, table: &str) -> Option<&WriterSchema> {
        self.inner.schemas.iter().find(|s| s.table() == table)
    }

    /// Appends one request on a free lane of its table (the round-robin one when all are busy).
    async fn send(&self, rows: &[TableRow], req: &Request) -> super::write::AppendOutcome {
        let inner = &self.inner;
        let lanes = &inner.lanes[req.table];
        let start = inner.next_lane[req.table].fetch_add(1, Ordering::Relaxed);
        let mut lane = None;
        for k in 0..lanes.len() {
            if let Ok(l) = lanes[(start + k) % lanes.len()].try_lock() {
                lane = Some(l);
                break;
            }
        }
        let mut lane = match lane {
            Some(l) => l,
            None => lanes[start % lanes.len()].lock().await,
        };
        lane.append(
            &inner.writer,
            &inner.schemas[req.table],
            &inner.settings,
            rows,
            &req.indices,
            inner.requests.get(),
        )
        .await
    }
}

/// Splits rows into requests; rows that cannot be sent are reported in `failures`.
fn plan(
    s: &SinkSettings,
    rows: &[TableRow],
    failures: &mut Vec<(usize, BigQueryError)>,
) -> Vec<Request> {
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); s.tables.len()];
    for (i, r) in rows.iter().enumerate() {
        match groups.get_mut(usize::from(r.table_index())) {
            Some(g) => g.push(i as u32),
            None => failures.push((
                i,
                BigQueryError::UnknownTable(format!("number {}", r.table_index())),
            )),
        }
    }
    let budget = s.max_bytes_per_request;
    let mut requests = Vec::new();
    let mut split = fluxo::RequestSplitter::new(s.max_rows_per_request, [budget]);
    for (table, group) in groups.into_iter().enumerate() {
        let mut chunk: Vec<u32> = Vec::new();
        split.reset();
        for i in group {
            let len = rows[i as usize].encoded_len();
            if len > budget {
                failures.push((
                    i as usize,
                    BigQueryError::RowTooLarge {
                        bytes: len,
                        limit: budget,
                    },
                ));
                continue;
            }
            if split.add([len]) {
                requests.push(Request {
                    table,
                    indices: std::mem::take(&mut chunk),
                });
            }
            chunk.push(i);
        }
        if !chunk.is_empty() {
            requests.push(Request {
                table,
                indices: chunk,
            });
        }
    }
    requests
}

/// Checks that the dataset and the tables exist.
async fn check(client: &BigQueryClient, s: &SinkSettings) -> Result<(), ConfigError> {
    let admin = BigQueryAdmin::new(client.clone());
    if !admin
        .dataset_exists(&s.dataset)
        .await
        .map_err(|e| client.check_error(e))?
    {
        return Err(ConfigError::NotFound {
            service: "BigQuery",
            kind: "dataset",
            name: format!("{}:{}", s.project, s.dataset),
            hint: format!(
                "; create it first (BigQueryAdmin::create_dataset, or `bq mk --dataset {}:{}`) at {}",
                s.project,
                s.dataset,
                client.endpoint()
            ),
        });
    }
    for t in &s.tables {
        if !admin
            .table_exists(&s.dataset, t)
            .await
            .map_err(|e| client.check_error(e))?
        {
            return Err(ConfigError::NotFound {
                service: "BigQuery",
                kind: "table",
                name: format!("{}:{}.{}", s.project, s.dataset, t),
                hint: format!(
                    "; create it first (BigQueryAdmin::create_table with its schema file, or `bq mk --table {}:{}.{} schema.json`) at {}",
                    s.project, s.dataset, t, client.endpoint()
                ),
            });
        }
    }
    Ok(())
}

impl Sink<TableRow> for BigQuerySink {
    type Error = BigQueryError;

    fn register_metrics(&mut self, metrics: &fluxo::MetricScope) {
        // Set once: a sink is added to one pipeline step.
        let _ = self
            .inner
            .requests
            .set(RequestMetrics::new(metrics, "bigquery", "AppendRows"));
    }

    async fn write(&self, batch: &SinkBatch<TableRow>) -> Result<(), WriteError<BigQueryError>> {
        let rows = batch.values();
        let mut failures = Vec::new();
        let requests = plan(&self.inner.settings, rows, &mut failures);
        // Every lane of every table may be busy at once; more would only queue.
        let concurrency = self.inner.settings.streams_per_table * self.inner.settings.tables.len();
        // Collected: a lazy iterator of closures held across the sends would defeat the proof
        // that this future is `Send`.
        let sends: Vec<_> = requests.iter().map(|req| {
            let send = async move {
                match self.send(rows, req).await {
                    // Row failures come with indices into the request.
                    Ok(row_failures) => Ok(row_failures
                        .into_iter()
                        .map(|(i, e)| (req.indices[i] as usize, e))
                        .collect()),
                    Err(e) => {
                        tracing::debug!(table = %self.inner.settings.tables[req.table], rows = req.indices.len(), error = %e, "BigQuery append failed");
                        Err(e)
                    }
                }
            };
            (req.indices.iter().map(|&i| i as usize), send)
        }).collect();
        // Requests to several tables or lanes may fail for different reasons: each row keeps its own.
        fluxo::send_requests(
            sends,
            concurrency,
            rows.len(),
            failures,
            fluxo::AllFailed::OneRequest,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bigquery::config::ClientConfig;
    use bytes::Bytes;

    fn settings(max_rows: usize, max_bytes: usize) -> SinkSettings {
        BigQuerySinkConfig {
            project: "my-project".into(),
            dataset: "d".into(),
            tables: vec!["a".into(), "b".into()],
            client: ClientConfig {
                endpoint: Some("http://127.0.0.1:9".into()),
                ..ClientConfig::default()
            },
            write_endpoint: Some("127.0.0.1:9".into()),
            max_rows_per_request: max_rows,
            max_bytes_per_request: max_bytes,
            ..BigQuerySinkConfig::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn plans_by_table_and_limits() {
        let s = settings(2, 1024);
        let row = |t: u16, n: usize| TableRow::from_parts(t, Bytes::from(vec![b'x'; n]));
        let rows = vec![
            row(0, 10),
            row(0, 10),
            row(0, 10),
            row(0, 10),
            row(0, 10),
            row(1, 10),
            row(0, 10),
            row(7, 10),
            row(1, 2000),
        ];
        let mut failures = Vec::new();
        let reqs = plan(&s, &rows, &mut failures);
        let shape: Vec<(usize, Vec<u32>)> =
            reqs.iter().map(|r| (r.table, r.indices.clone())).collect();
        assert_eq!(
            shape,
            vec![
                (0, vec![0, 1]),
                (0, vec![2, 3]),
                (0, vec![4, 6]),
                (1, vec![5])
            ]
        );
        let failed: Vec<usize> = failures.iter().map(|f| f.0).collect();
        assert_eq!(failed, vec![7, 8]);
        assert!(matches!(failures[0].1, BigQueryError::UnknownTable(_)));
        assert!(matches!(failures[1].1, BigQueryError::RowTooLarge { .. }));
    }
}
