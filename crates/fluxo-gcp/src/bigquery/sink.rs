//! [`BigQuerySink`]: `tabledata.insertAll` with insert ids, one request per table and size limit, per-row
//! outcomes.

use std::sync::Arc;

use bytes::Bytes;
use fluxo::{Sink, SinkBatch, WriteError};
use futures::stream::{self, StreamExt};
use reqwest::Method;
use serde::Deserialize;

use super::admin::BigQueryAdmin;
use super::client::{api_error, BigQueryClient, BigQueryError};
use super::config::{BigQuerySinkConfig, SinkSettings};
use super::row::TableRow;
use crate::ConfigError;

/// Writes [`TableRow`]s to the tables of one dataset with `tabledata.insertAll`.
///
/// Each batch is grouped by table and split into requests of at most `max_rows_per_request` rows and
/// `max_bytes_per_request` bytes, sent concurrently (`request_concurrency`). Outcomes:
/// - rows BigQuery reports in `insertErrors` fail alone ([`WriteError::Partial`]): `invalid` and other
///   data errors are permanent (the element is rejected and goes to the dead-letter path upstream),
///   `stopped` / `timeout` / `backendError` are retried by the engine;
/// - a request that fails as a whole (connection, timeout, 5xx, 429, 404) fails its rows retriably; a
///   400/403 fails them permanently;
/// - a row for a table the sink does not know, or larger than a request, is rejected without a request.
#[derive(Debug, Clone)]
pub struct BigQuerySink {
    client: BigQueryClient,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: SinkSettings,
    /// insertAll URL per table, aligned with `settings.tables`.
    urls: Vec<String>,
    /// `{"skipInvalidRows":..,"ignoreUnknownValues":..,"rows":[`
    prefix: Vec<u8>,
}

/// One insertAll request: the table, the batch indices of its rows, and the body.
struct Request {
    table: usize,
    indices: Vec<u32>,
    body: Bytes,
}

#[derive(Deserialize)]
struct InsertAllResponse {
    #[serde(default, rename = "insertErrors")]
    insert_errors: Vec<InsertError>,
}

#[derive(Deserialize)]
struct InsertError {
    #[serde(deserialize_with = "index")]
    index: u64,
    #[serde(default)]
    errors: Vec<ErrorProto>,
}

#[derive(Deserialize)]
struct ErrorProto {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    message: String,
}

/// `index` is a number in BigQuery's answers; accept a string too.
fn index<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("negative index")),
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("index is not a number")),
    }
}

impl BigQuerySink {
    /// Validates the configuration, builds the client (credentials when needed) and checks that the
    /// dataset and every table exist. Errors are one line: [`ConfigError::Invalid`],
    /// [`ConfigError::Unreachable`] or [`ConfigError::NotFound`] with the provisioning hint.
    pub async fn connect(config: &BigQuerySinkConfig) -> Result<Self, ConfigError> {
        let settings = config.validate()?;
        let client = BigQueryClient::with_settings(&settings.project, &settings.client).await?;
        let sink = Self::with_client(settings, client);
        sink.check().await?;
        Ok(sink)
    }

    /// A sink on an existing client, without checks.
    pub fn with_client(settings: SinkSettings, client: BigQueryClient) -> Self {
        let urls = settings
            .tables
            .iter()
            .map(|t| {
                format!(
                    "{}/datasets/{}/tables/{}/insertAll",
                    client.project_url(),
                    settings.dataset,
                    t
                )
            })
            .collect();
        let prefix = format!(
            r#"{{"skipInvalidRows":{},"ignoreUnknownValues":{},"rows":["#,
            settings.skip_invalid_rows, settings.ignore_unknown_values
        )
        .into_bytes();
        BigQuerySink {
            client,
            inner: Arc::new(Inner {
                settings,
                urls,
                prefix,
            }),
        }
    }

    /// Checks that the dataset and the tables exist.
    pub async fn check(&self) -> Result<(), ConfigError> {
        let s = &self.inner.settings;
        let admin = BigQueryAdmin::new(self.client.clone());
        let hint_dataset = format!(
            "; create it first (BigQueryAdmin::create_dataset, or `bq mk --dataset {}:{}`)",
            s.project, s.dataset
        );
        if !admin
            .dataset_exists(&s.dataset)
            .await
            .map_err(|e| self.client.check_error(e))?
        {
            return Err(ConfigError::NotFound {
                service: "BigQuery",
                kind: "dataset",
                name: format!("{}:{}", s.project, s.dataset),
                hint: format!("{hint_dataset} at {}", self.client.endpoint()),
            });
        }
        for t in &s.tables {
            if !admin
                .table_exists(&s.dataset, t)
                .await
                .map_err(|e| self.client.check_error(e))?
            {
                return Err(ConfigError::NotFound {
                    service: "BigQuery",
                    kind: "table",
                    name: format!("{}:{}.{}", s.project, s.dataset, t),
                    hint: format!(
                        "; create it first (BigQueryAdmin::create_table with its schema file, or `bq mk --table {}:{}.{} schema.json`) at {}",
                        s.project, s.dataset, t, self.client.endpoint()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The client (for [`BigQueryAdmin::new`], for example).
    pub fn client(&self) -> &BigQueryClient {
        &self.client
    }

    /// The checked settings.
    pub fn settings(&self) -> &SinkSettings {
        &self.inner.settings
    }

    fn table_index(&self, row: &TableRow) -> Option<usize> {
        let tables = &self.inner.settings.tables;
        match row.table_arc() {
            None => Some(0),
            Some(t) => tables
                .iter()
                .position(|x| Arc::ptr_eq(x, t))
                .or_else(|| tables.iter().position(|x| **x == **t)),
        }
    }

    /// Splits rows into requests; rows that cannot be sent are reported in `failures`.
    fn plan(&self, rows: &[TableRow], failures: &mut Vec<(usize, BigQueryError)>) -> Vec<Request> {
        let s = &self.inner.settings;
        let mut groups: Vec<Vec<u32>> = vec![Vec::new(); s.tables.len()];
        if s.tables.len() == 1 {
            groups[0].reserve(rows.len());
        }
        for (i, r) in rows.iter().enumerate() {
            match self.table_index(r) {
                Some(t) => groups[t].push(i as u32),
                None => failures.push((
                    i,
                    BigQueryError::UnknownTable(r.table().unwrap_or_default().to_string()),
                )),
            }
        }
        let budget = s.max_bytes_per_request;
        let mut requests = Vec::new();
        for (table, group) in groups.into_iter().enumerate() {
            let mut chunk: Vec<u32> = Vec::new();
            let mut bytes = 0usize;
            for i in group {
                let row = &rows[i as usize];
                let len = row.encoded_len();
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
                if !chunk.is_empty()
                    && (chunk.len() >= s.max_rows_per_request || bytes + len > budget)
                {
                    requests.push(self.request(table, rows, std::mem::take(&mut chunk), bytes));
                    bytes = 0;
                }
                if chunk.is_empty() {
                    chunk.reserve(s.max_rows_per_request.min(rows.len()));
                }
                chunk.push(i);
                bytes += len;
            }
            if !chunk.is_empty() {
                requests.push(self.request(table, rows, chunk, bytes));
            }
        }
        requests
    }

    fn request(&self, table: usize, rows: &[TableRow], indices: Vec<u32>, bytes: usize) -> Request {
        let prefix = &self.inner.prefix;
        let mut body = Vec::with_capacity(prefix.len() + bytes + 2);
        body.extend_from_slice(prefix);
        for (n, i) in indices.iter().enumerate() {
            let row = &rows[*i as usize];
            if n > 0 {
                body.push(b',');
            }
            match row.insert_id() {
                Some(id) => {
                    body.extend_from_slice(br#"{"insertId":"#);
                    write_json_string(&mut body, id);
                    body.extend_from_slice(br#","json":"#);
                }
                None => body.extend_from_slice(br#"{"json":"#),
            }
            body.extend_from_slice(row.json());
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        Request {
            table,
            indices,
            body: Bytes::from(body),
        }
    }

    /// Sends one request; returns the per-row failures (request-relative indices) or a whole-request
    /// error.
    async fn send(&self, req: &Request) -> Result<Vec<(usize, BigQueryError)>, BigQueryError> {
        let url = &self.inner.urls[req.table];
        let (status, body) = self
            .client
            .send(Method::POST, url, Some(req.body.clone()))
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        let resp: InsertAllResponse =
            serde_json::from_slice(&body).map_err(|e| BigQueryError::Decode(e.to_string()))?;
        let mut failed = Vec::with_capacity(resp.insert_errors.len());
        for e in resp.insert_errors {
            let Ok(i) = usize::try_from(e.index) else {
                continue;
            };
            if i >= req.indices.len() {
                tracing::warn!(
                    index = i,
                    rows = req.indices.len(),
                    "BigQuery reported an error for a row index outside the request; ignored"
                );
                continue;
            }
            // A row may carry several errors: a permanent one decides.
            let chosen = e
                .errors
                .iter()
                .find(|p| p.reason != "stopped")
                .or(e.errors.first());
            let err = match chosen {
                Some(p) => BigQueryError::Row {
                    reason: p.reason.clone(),
                    location: p.location.clone(),
                    message: p.message.replace('\n', " "),
                },
                None => BigQueryError::Row {
                    reason: "unknown".into(),
                    location: String::new(),
                    message: "insertErrors entry without errors".into(),
                },
            };
            failed.push((i, err));
        }
        Ok(failed)
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing a &str to a Vec cannot fail; keep the body valid regardless.
        out.extend_from_slice(b"\"\"");
    }
}

impl Sink<TableRow> for BigQuerySink {
    type Error = BigQueryError;

    async fn write(&self, batch: &SinkBatch<TableRow>) -> Result<(), WriteError<BigQueryError>> {
        let rows = batch.values();
        let mut failures = Vec::new();
        let requests = self.plan(rows, &mut failures);
        let single = requests.len() == 1 && failures.is_empty();
        let concurrency = self.inner.settings.request_concurrency;
        let results: Vec<(Request, Result<_, _>)> = stream::iter(requests)
            .map(|req| async move {
                let r = self.send(&req).await;
                (req, r)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (req, result) in results {
            match result {
                Ok(row_failures) => {
                    for (i, e) in row_failures {
                        failures.push((req.indices[i] as usize, e));
                    }
                }
                Err(e) => {
                    tracing::debug!(table = %self.inner.settings.tables[req.table], rows = req.indices.len(), error = %e, "BigQuery insertAll failed");
                    if single {
                        return Err(WriteError::All(e));
                    }
                    for i in &req.indices {
                        failures.push((*i as usize, e.clone()));
                    }
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Partial(failures))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bigquery::config::ClientConfig;

    async fn sink(max_rows: usize, max_bytes: usize) -> BigQuerySink {
        let config = BigQuerySinkConfig {
            project: "my-project".into(),
            dataset: "d".into(),
            tables: vec!["a".into(), "b".into()],
            client: ClientConfig {
                endpoint: Some("http://127.0.0.1:9".into()),
                ..ClientConfig::default()
            },
            max_rows_per_request: max_rows,
            max_bytes_per_request: max_bytes,
            ..BigQuerySinkConfig::default()
        };
        let settings = config.validate().unwrap();
        let client = BigQueryClient::with_settings(&settings.project, &settings.client)
            .await
            .unwrap();
        BigQuerySink::with_client(settings, client)
    }

    #[tokio::test]
    async fn plans_by_table_and_limits() {
        let s = sink(2, 1024).await;
        let a: Arc<str> = Arc::from("a");
        let mut rows = Vec::new();
        for i in 0..5 {
            rows.push(
                TableRow::from_json_bytes(format!("{{\"i\":{i}}}"))
                    .unwrap()
                    .with_table(a.clone())
                    .with_insert_id(format!("id\"{i}")),
            );
        }
        rows.push(
            TableRow::from_json_bytes(&b"{\"x\":1}"[..])
                .unwrap()
                .with_table("b"),
        );
        rows.push(TableRow::from_json_bytes(&b"{\"x\":2}"[..]).unwrap());
        rows.push(
            TableRow::from_json_bytes(&b"{\"x\":3}"[..])
                .unwrap()
                .with_table("zzz"),
        );
        let big = format!("{{\"s\":\"{}\"}}", "x".repeat(2000));
        rows.push(TableRow::from_json_bytes(big).unwrap().with_table("b"));
        let mut failures = Vec::new();
        let reqs = s.plan(&rows, &mut failures);
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
        let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"skipInvalidRows":true,"ignoreUnknownValues":false,"rows":[
                {"insertId":"id\"0","json":{"i":0}},{"insertId":"id\"1","json":{"i":1}}]})
        );
        let body: serde_json::Value = serde_json::from_slice(&reqs[3].body).unwrap();
        assert_eq!(body["rows"], serde_json::json!([{"json":{"x":1}}]));
    }
}
