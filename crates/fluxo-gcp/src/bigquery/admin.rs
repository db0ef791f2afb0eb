//! Provisioning and read-back: datasets and tables from JSON schema files (idempotent), existence checks,
//! and `jobs.query` for tests and tools.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{api_error, BigQueryClient, BigQueryError};
use super::config::{validate_dataset, validate_table, ClientConfig};
use crate::ConfigError;

/// Time partitioning of a new table (`timePartitioning`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimePartitioning {
    /// `DAY`, `HOUR`, `MONTH` or `YEAR`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Partitioning column (a `DATE`, `TIMESTAMP` or `DATETIME` column); none means ingestion time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Partition expiration in milliseconds; none keeps partitions.
    #[serde(
        rename = "expirationMs",
        skip_serializing_if = "Option::is_none",
        with = "opt_string_u64",
        default
    )]
    pub expiration_ms: Option<u64>,
}

impl TimePartitioning {
    /// Daily partitions on `field`.
    pub fn day(field: impl Into<String>) -> Self {
        TimePartitioning {
            kind: "DAY".into(),
            field: Some(field.into()),
            expiration_ms: None,
        }
    }
}

mod opt_string_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(match v {
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        })
    }
}

/// Options of a new table besides its schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// Time partitioning. Default: none.
    pub time_partitioning: Option<TimePartitioning>,
    /// Clustering columns, in order (at most 4). Default: none.
    pub clustering: Vec<String>,
    /// Table description. Default: none.
    pub description: Option<String>,
}

/// Whether a create call made the resource or found it there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Created now.
    Created,
    /// It existed already (HTTP 409); nothing was changed.
    AlreadyExists,
}

/// Parses a schema file: either a BigQuery `fields` array (the `bq` format) or an object with a `fields`
/// member (`{"fields": [...]}`, the REST `TableSchema`). Every field needs a `name` and a `type`; nested
/// `fields` are checked too.
pub fn parse_schema(schema_json: &str) -> Result<Value, BigQueryError> {
    let v: Value = serde_json::from_str(schema_json)
        .map_err(|e| BigQueryError::Invalid(format!("schema is not JSON: {e}")))?;
    let fields = match v {
        Value::Array(_) => v,
        Value::Object(mut m) => m
            .remove("fields")
            .ok_or_else(|| BigQueryError::Invalid("schema object has no 'fields' member".into()))?,
        _ => {
            return Err(BigQueryError::Invalid(
                "schema must be a fields array or an object with 'fields'".into(),
            ))
        }
    };
    check_fields(&fields, "")?;
    Ok(fields)
}

fn check_fields(fields: &Value, path: &str) -> Result<(), BigQueryError> {
    let Some(list) = fields.as_array() else {
        return Err(BigQueryError::Invalid(format!(
            "schema {path}fields is not an array"
        )));
    };
    if list.is_empty() {
        return Err(BigQueryError::Invalid(format!(
            "schema {path}fields is empty"
        )));
    }
    for (i, f) in list.iter().enumerate() {
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let kind = f.get("type").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() || kind.is_empty() {
            return Err(BigQueryError::Invalid(format!(
                "schema field {path}{i} needs a 'name' and a 'type'"
            )));
        }
        if let Some(sub) = f.get("fields") {
            check_fields(sub, &format!("{path}{name}."))?;
        }
    }
    Ok(())
}

/// Dataset and table administration and queries, on one project.
#[derive(Debug, Clone)]
pub struct BigQueryAdmin {
    client: BigQueryClient,
}

impl BigQueryAdmin {
    /// A client for `project` (endpoint resolution and credentials as for the sink).
    pub async fn connect(project: &str, config: &ClientConfig) -> Result<Self, ConfigError> {
        Ok(BigQueryAdmin {
            client: BigQueryClient::connect(project, config).await?,
        })
    }

    /// Wraps an existing client.
    pub fn new(client: BigQueryClient) -> Self {
        BigQueryAdmin { client }
    }

    /// The client.
    pub fn client(&self) -> &BigQueryClient {
        &self.client
    }

    fn dataset_url(&self, dataset: &str) -> String {
        format!("{}/datasets/{dataset}", self.client.project_url())
    }

    fn table_url(&self, dataset: &str, table: &str) -> String {
        format!(
            "{}/datasets/{dataset}/tables/{}",
            self.client.project_url(),
            crate::text::percent_encode(table)
        )
    }

    async fn exists(&self, url: &str) -> Result<bool, BigQueryError> {
        let (status, body) = self.client.send(Method::GET, url, None).await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(api_error(s, &body)),
        }
    }

    async fn create(&self, url: String, body: Value) -> Result<Created, BigQueryError> {
        let body = Bytes::from(body.to_string());
        let (status, resp) = self.client.send(Method::POST, &url, Some(body)).await?;
        match status {
            s if s.is_success() => Ok(Created::Created),
            StatusCode::CONFLICT => Ok(Created::AlreadyExists),
            s => Err(api_error(s, &resp)),
        }
    }

    /// Whether the dataset exists.
    pub async fn dataset_exists(&self, dataset: &str) -> Result<bool, BigQueryError> {
        validate_dataset(dataset).map_err(BigQueryError::Invalid)?;
        self.exists(&self.dataset_url(dataset)).await
    }

    /// Whether the table exists.
    pub async fn table_exists(&self, dataset: &str, table: &str) -> Result<bool, BigQueryError> {
        validate_dataset(dataset).map_err(BigQueryError::Invalid)?;
        validate_table(table).map_err(BigQueryError::Invalid)?;
        self.exists(&self.table_url(dataset, table)).await
    }

    /// The GoogleSQL query of a view (`view.query` of `tables.get`); `None` when the table does not
    /// exist or is not a view.
    pub async fn view_query(
        &self,
        dataset: &str,
        table: &str,
    ) -> Result<Option<String>, BigQueryError> {
        validate_dataset(dataset).map_err(BigQueryError::Invalid)?;
        validate_table(table).map_err(BigQueryError::Invalid)?;
        let url = self.table_url(dataset, table);
        let (status, body) = self.client.send(Method::GET, &url, None).await?;
        match status {
            s if s.is_success() => {
                let table: Value = serde_json::from_slice(&body).map_err(|e| {
                    BigQueryError::Invalid(format!("tables.get {dataset}.{table}: {e}"))
                })?;
                Ok(table["view"]["query"].as_str().map(str::to_string))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(api_error(s, &body)),
        }
    }

    /// Creates a dataset (in `location`, or the service's default); an existing one is left as is.
    pub async fn create_dataset(
        &self,
        dataset: &str,
        location: Option<&str>,
    ) -> Result<Created, BigQueryError> {
        validate_dataset(dataset).map_err(BigQueryError::Invalid)?;
        let mut body = json!({
            "datasetReference": {"projectId": self.client.project(), "datasetId": dataset},
        });
        if let Some(loc) = location {
            body["location"] = json!(loc);
        }
        let url = format!("{}/datasets", self.client.project_url());
        let created = self.create(url, body).await?;
        tracing::info!(dataset, ?created, "BigQuery dataset");
        Ok(created)
    }

    /// Creates a table from a schema file's text (see [`parse_schema`]) with partitioning and clustering;
    /// an existing table is left as is (its schema is not compared or changed).
    pub async fn create_table(
        &self,
        dataset: &str,
        table: &str,
        schema_json: &str,
        options: &TableOptions,
    ) -> Result<Created, BigQueryError> {
        validate_dataset(dataset).map_err(BigQueryError::Invalid)?;
        validate_table(table).map_err(BigQueryError::Invalid)?;
        let fields = parse_schema(schema_json)?;
        let mut body = json!({
            "tableReference": {
                "projectId": self.client.project(),
                "datasetId": dataset,
                "tableId": table,
            },
            "schema": {"fields": fields},
        });
        if let Some(tp) = &options.time_partitioning {
            body["timePartitioning"] = serde_json::to_value(tp)
                .map_err(|e| BigQueryError::Invalid(format!("time partitioning: {e}")))?;
        }
        if !options.clustering.is_empty() {
            body["clustering"] = json!({"fields": options.clustering});
        }
        if let Some(d) = &options.description {
            body["description"] = json!(d);
        }
        let url = format!("{}/tables", self.dataset_url(dataset));
        let created = self.create(url, body).await?;
        tracing::info!(dataset, table, ?created, "BigQuery table");
        Ok(created)
    }

    /// Runs a GoogleSQL query (`jobs.query`, then `jobs.getQueryResults` until complete and every page is
    /// read) and returns all rows. Cells are JSON: scalars as strings (as the REST API gives them;
    /// `TIMESTAMP` as microseconds since the epoch), `null`, arrays for `REPEATED`, objects for `RECORD`.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, BigQueryError> {
        const WAIT_MS: u64 = 10_000;
        let body = json!({
            "query": sql,
            "useLegacySql": false,
            "timeoutMs": WAIT_MS,
            "formatOptions": {"useInt64Timestamp": true},
        });
        let url = format!("{}/queries", self.client.project_url());
        let mut page: QueryPage = self
            .client
            .call(Method::POST, &url, Some(Bytes::from(body.to_string())))
            .await?;
        let mut result = QueryResult::default();
        let mut schema: Option<Vec<FieldSchema>> = None;
        let started = std::time::Instant::now();
        loop {
            if let Some(e) = page.errors.first() {
                return Err(BigQueryError::Invalid(format!(
                    "query failed ({}): {}",
                    e.reason,
                    e.message.replace('\n', " ")
                )));
            }
            if page.job_complete {
                if schema.is_none() {
                    if let Some(s) = page.schema.take() {
                        result.columns = s.fields.iter().map(|f| f.name.clone()).collect();
                        schema = Some(s.fields);
                    }
                }
                let fields = schema.as_deref().unwrap_or_default();
                for row in page.rows.drain(..) {
                    result.rows.push(convert_row(fields, row));
                }
                if page.page_token.is_none() {
                    return Ok(result);
                }
            } else if started.elapsed() > Duration::from_secs(600) {
                return Err(BigQueryError::Decode(
                    "query did not complete in 10 minutes".into(),
                ));
            }
            let Some(job) = &page.job_reference else {
                return Err(BigQueryError::Decode(
                    "query answer without jobReference".into(),
                ));
            };
            let mut next = format!(
                "{}/queries/{}?formatOptions.useInt64Timestamp=true&timeoutMs={WAIT_MS}",
                self.client.project_url(),
                crate::text::percent_encode(&job.job_id)
            );
            if let Some(loc) = &job.location {
                next.push_str("&location=");
                next.push_str(&crate::text::percent_encode(loc));
            }
            if let Some(token) = &page.page_token {
                next.push_str("&pageToken=");
                next.push_str(&crate::text::percent_encode(token));
            }
            page = self.client.call(Method::GET, &next, None).await?;
        }
    }
}

/// Rows of a query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows; cells aligned with [`QueryResult::columns`].
    pub rows: Vec<Vec<Value>>,
}

impl QueryResult {
    /// The rows as objects keyed by column name.
    pub fn records(&self) -> Vec<Map<String, Value>> {
        self.rows
            .iter()
            .map(|r| {
                self.columns
                    .iter()
                    .cloned()
                    .zip(r.iter().cloned())
                    .collect()
            })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryPage {
    #[serde(default)]
    job_complete: bool,
    #[serde(default)]
    schema: Option<SchemaDoc>,
    #[serde(default)]
    rows: Vec<Value>,
    #[serde(default)]
    page_token: Option<String>,
    #[serde(default)]
    job_reference: Option<JobReference>,
    #[serde(default)]
    errors: Vec<QueryErrorItem>,
}

#[derive(Deserialize)]
struct QueryErrorItem {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobReference {
    job_id: String,
    #[serde(default)]
    location: Option<String>,
}

#[derive(Deserialize)]
struct SchemaDoc {
    #[serde(default)]
    fields: Vec<FieldSchema>,
}

#[derive(Deserialize)]
struct FieldSchema {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    fields: Vec<FieldSchema>,
}

fn convert_row(fields: &[FieldSchema], row: Value) -> Vec<Value> {
    match row {
        Value::Object(mut m) => match m.remove("f") {
            Some(Value::Array(cells)) => cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| match fields.get(i) {
                    Some(f) => convert_cell(f, unwrap_v(c)),
                    None => unwrap_v(c),
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn unwrap_v(cell: Value) -> Value {
    match cell {
        Value::Object(mut m) => m.remove("v").unwrap_or(Value::Null),
        other => other,
    }
}

fn convert_cell(field: &FieldSchema, v: Value) -> Value {
    if field.mode.eq_ignore_ascii_case("REPEATED") {
        return match v {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|x| convert_scalar_or_record(field, unwrap_v(x)))
                    .collect(),
            ),
            Value::Null => Value::Array(Vec::new()),
            other => other,
        };
    }
    convert_scalar_or_record(field, v)
}

fn convert_scalar_or_record(field: &FieldSchema, v: Value) -> Value {
    let record =
        field.kind.eq_ignore_ascii_case("RECORD") || field.kind.eq_ignore_ascii_case("STRUCT");
    if !record {
        return v;
    }
    match v {
        Value::Object(mut m) => match m.remove("f") {
            Some(Value::Array(cells)) => Value::Object(
                field
                    .fields
                    .iter()
                    .zip(cells)
                    .map(|(f, c)| (f.name.clone(), convert_cell(f, unwrap_v(c))))
                    .collect(),
            ),
            _ => Value::Null,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_shapes() {
        let a = parse_schema(r#"[{"name":"a","type":"STRING"}]"#).unwrap();
        let b = parse_schema(r#"{"fields":[{"name":"a","type":"STRING"}]}"#).unwrap();
        assert_eq!(a, b);
        assert!(parse_schema(r#"[{"name":"a"}]"#).is_err());
        assert!(parse_schema(r#"[]"#).is_err());
        assert!(
            parse_schema(r#"[{"name":"r","type":"RECORD","fields":[{"type":"INT64"}]}]"#).is_err()
        );
        assert!(parse_schema("nope").is_err());
    }

    #[test]
    fn nested_cells() {
        let fields: Vec<FieldSchema> = serde_json::from_value(json!([
            {"name":"a","type":"INTEGER","mode":"REPEATED"},
            {"name":"s","type":"RECORD","fields":[{"name":"x","type":"INTEGER"},
                {"name":"z","type":"RECORD","mode":"REPEATED","fields":[{"name":"y","type":"STRING"}]}]},
            {"name":"n","type":"NUMERIC"}
        ]))
        .unwrap();
        let row = json!({"f":[{"v":[{"v":"1"},{"v":"2"}]},{"v":{"f":[{"v":"1"},{"v":[{"v":{"f":[{"v":"q"}]}}]}]}},{"v":null}]});
        assert_eq!(
            convert_row(&fields, row),
            vec![
                json!(["1", "2"]),
                json!({"x":"1","z":[{"y":"q"}]}),
                Value::Null
            ]
        );
    }

    #[test]
    fn partitioning_json() {
        let tp = TimePartitioning {
            expiration_ms: Some(86_400_000),
            ..TimePartitioning::day("d")
        };
        assert_eq!(
            serde_json::to_value(&tp).unwrap(),
            json!({"type":"DAY","field":"d","expirationMs":"86400000"})
        );
    }
}
