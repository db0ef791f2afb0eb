//! Configuration of the BigQuery sink and client: serde structs with documented defaults, validation into
//! checked types, and endpoint resolution.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Environment variable naming a bqemulator REST endpoint (`host:port`, or a URL).
pub const EMULATOR_ENV: &str = "BIGQUERY_EMULATOR_HOST";
/// The real BigQuery REST endpoint.
pub const GOOGLE_ENDPOINT: &str = "https://bigquery.googleapis.com";
/// OAuth scope requested for Application Default Credentials.
pub const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// `tabledata.insertAll` limit: rows per request.
pub const MAX_ROWS_PER_REQUEST: usize = 50_000;
/// `tabledata.insertAll` limit: HTTP request size.
pub const MAX_BYTES_PER_REQUEST: usize = 10_000_000;

/// How the client reaches BigQuery: endpoint, credentials and timeouts. Shared by the sink and by
/// [`BigQueryAdmin`](super::BigQueryAdmin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Base URL of the REST API (`http://127.0.0.1:9050`; the client appends `/bigquery/v2/...`).
    /// Default: none, which means `BIGQUERY_EMULATOR_HOST` when set (bqemulator's REST `host:port`), else
    /// `https://bigquery.googleapis.com`.
    pub endpoint: Option<String>,
    /// Send Application Default Credentials (OAuth scope `https://www.googleapis.com/auth/bigquery`).
    /// Default: none, which means only when the resolved endpoint is `https://bigquery.googleapis.com`;
    /// emulators never need credentials.
    pub authenticate: Option<bool>,
    /// Deadline of one HTTP request, in milliseconds (an expired request is retried). Default: 30000.
    pub request_timeout_ms: u64,
    /// Deadline to open a connection, in milliseconds. Default: 5000.
    pub connect_timeout_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: None,
            authenticate: None,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// `endpoint` in the configuration.
    Config,
    /// `BIGQUERY_EMULATOR_HOST`.
    EmulatorEnv,
    /// The default Google endpoint.
    Google,
}

/// A resolved endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash, for example `http://127.0.0.1:9050`.
    pub url: String,
    /// Where it came from.
    pub source: EndpointSource,
}

/// Resolves the endpoint: explicit value, else `BIGQUERY_EMULATOR_HOST`, else the Google endpoint. A value
/// without a scheme gets `http://` (emulator addresses are plain `host:port`).
pub fn resolve_endpoint(explicit: Option<&str>) -> Endpoint {
    let (raw, source) = match explicit.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) => (e.to_string(), EndpointSource::Config),
        None => match std::env::var(EMULATOR_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            Some(e) => (e.trim().to_string(), EndpointSource::EmulatorEnv),
            None => (GOOGLE_ENDPOINT.to_string(), EndpointSource::Google),
        },
    };
    let mut url = if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    };
    while url.ends_with('/') {
        url.pop();
    }
    Endpoint { url, source }
}

/// A checked [`ClientConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Whether requests carry Application Default Credentials.
    pub authenticate: bool,
    /// Request deadline.
    pub request_timeout: Duration,
    /// Connect deadline.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Checks the values and resolves the endpoint (reads `BIGQUERY_EMULATOR_HOST` when no endpoint is
    /// set). `prefix` names the configuration section in error messages (for example `bigquery`).
    pub fn validate(&self, prefix: &str) -> Result<ClientSettings, ConfigError> {
        let endpoint = resolve_endpoint(self.endpoint.as_deref());
        if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                format!("{prefix}.endpoint"),
                format!(
                    "'{}' is not an http(s) URL or host:port (from {})",
                    endpoint.url,
                    match endpoint.source {
                        EndpointSource::Config => "the configuration",
                        EndpointSource::EmulatorEnv => EMULATOR_ENV,
                        EndpointSource::Google => "the default",
                    }
                ),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                format!("{prefix}.request_timeout_ms"),
                "must be at least 1",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                format!("{prefix}.connect_timeout_ms"),
                "must be at least 1",
            ));
        }
        let authenticate = self
            .authenticate
            .unwrap_or(endpoint.source == EndpointSource::Google);
        Ok(ClientSettings {
            endpoint,
            authenticate,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

/// Configuration of [`BigQuerySink`](super::BigQuerySink).
///
/// ```
/// let c: fluxo_gcp::bigquery::BigQuerySinkConfig = serde_json::from_str(
///     r#"{"project": "my-project", "dataset": "sales", "tables": ["invoices", "invoice_items"]}"#,
/// ).unwrap();
/// assert!(c.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigQuerySinkConfig {
    /// Project id that owns the dataset. Required (default: empty, which fails validation).
    pub project: String,
    /// Dataset id: letters, digits and underscores, 1-1024 characters. Required.
    pub dataset: String,
    /// Tables this sink writes (at least one). A row names its table; a row without one goes to the first
    /// table. Every table is checked to exist before the pipeline starts. Default: empty (fails validation).
    pub tables: Vec<String>,
    /// Endpoint, credentials and timeouts (flattened: `endpoint`, `authenticate`, `request_timeout_ms`,
    /// `connect_timeout_ms`).
    #[serde(flatten)]
    pub client: ClientConfig,
    /// `skipInvalidRows`: insert the valid rows of a request even when some are invalid; only the invalid
    /// ones are reported (and rejected). With `false`, BigQuery inserts nothing when a row is invalid and
    /// reports the others as `stopped`; the sink then retries them in a second request. Default: true.
    pub skip_invalid_rows: bool,
    /// `ignoreUnknownValues`: drop fields the table does not have instead of rejecting the row.
    /// Default: false.
    pub ignore_unknown_values: bool,
    /// Rows per `insertAll` request (Google recommends 500; the API allows 50,000). A sink batch is split
    /// into requests of at most this many rows per table. Default: 500.
    pub max_rows_per_request: usize,
    /// Bytes of row JSON per request (the API allows 10 MB per HTTP request). Default: 5,000,000.
    pub max_bytes_per_request: usize,
    /// `insertAll` requests of one sink batch sent concurrently (per in-flight batch). Default: 4.
    pub request_concurrency: usize,
}

impl Default for BigQuerySinkConfig {
    fn default() -> Self {
        BigQuerySinkConfig {
            project: String::new(),
            dataset: String::new(),
            tables: Vec::new(),
            client: ClientConfig::default(),
            skip_invalid_rows: true,
            ignore_unknown_values: false,
            max_rows_per_request: 500,
            max_bytes_per_request: 5_000_000,
            request_concurrency: 4,
        }
    }
}

/// A checked [`BigQuerySinkConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// Project id.
    pub project: String,
    /// Dataset id.
    pub dataset: String,
    /// Tables, in configuration order (the first is the default).
    pub tables: Vec<Arc<str>>,
    /// Client settings.
    pub client: ClientSettings,
    /// `skipInvalidRows`.
    pub skip_invalid_rows: bool,
    /// `ignoreUnknownValues`.
    pub ignore_unknown_values: bool,
    /// Rows per request.
    pub max_rows_per_request: usize,
    /// Bytes per request.
    pub max_bytes_per_request: usize,
    /// Requests in flight per batch.
    pub request_concurrency: usize,
}

impl BigQuerySinkConfig {
    /// Checks names and limits and resolves the endpoint.
    pub fn validate(&self) -> Result<SinkSettings, ConfigError> {
        validate_project(&self.project).map_err(|r| ConfigError::invalid("bigquery.project", r))?;
        validate_dataset(&self.dataset).map_err(|r| ConfigError::invalid("bigquery.dataset", r))?;
        if self.tables.is_empty() {
            return Err(ConfigError::invalid(
                "bigquery.tables",
                "list at least one table",
            ));
        }
        let mut tables: Vec<Arc<str>> = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            validate_table(t).map_err(|r| ConfigError::invalid("bigquery.tables", r))?;
            if tables.iter().any(|x| **x == **t) {
                return Err(ConfigError::invalid(
                    "bigquery.tables",
                    format!("'{t}' is listed twice"),
                ));
            }
            tables.push(Arc::from(t.as_str()));
        }
        if !(1..=MAX_ROWS_PER_REQUEST).contains(&self.max_rows_per_request) {
            return Err(ConfigError::invalid(
                "bigquery.max_rows_per_request",
                format!(
                    "{} is outside 1..={MAX_ROWS_PER_REQUEST} (insertAll limit; 500 is recommended)",
                    self.max_rows_per_request
                ),
            ));
        }
        if !(1024..=MAX_BYTES_PER_REQUEST).contains(&self.max_bytes_per_request) {
            return Err(ConfigError::invalid(
                "bigquery.max_bytes_per_request",
                format!(
                    "{} is outside 1024..={MAX_BYTES_PER_REQUEST} (insertAll allows 10 MB per request)",
                    self.max_bytes_per_request
                ),
            ));
        }
        if self.request_concurrency == 0 {
            return Err(ConfigError::invalid(
                "bigquery.request_concurrency",
                "must be at least 1",
            ));
        }
        Ok(SinkSettings {
            project: self.project.clone(),
            dataset: self.dataset.clone(),
            tables,
            client: self.client.validate("bigquery")?,
            skip_invalid_rows: self.skip_invalid_rows,
            ignore_unknown_values: self.ignore_unknown_values,
            max_rows_per_request: self.max_rows_per_request,
            max_bytes_per_request: self.max_bytes_per_request,
            request_concurrency: self.request_concurrency,
        })
    }
}

/// Google's project id rules: 6-30 characters, lowercase letters, digits and hyphens, starting with a
/// letter and not ending with a hyphen; optionally prefixed by a domain (`example.com:my-project`).
pub fn validate_project(project: &str) -> Result<(), String> {
    if project.is_empty() {
        return Err("set the Google Cloud project id".into());
    }
    let id = match project.rsplit_once(':') {
        Some((domain, id)) => {
            let domain_ok = !domain.is_empty()
                && domain.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !domain_ok {
                return Err(format!("'{project}' has an invalid domain prefix"));
            }
            id
        }
        None => project,
    };
    let bytes = id.as_bytes();
    let ok = (6..=30).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{project}' is not a project id (6-30 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen)"
        ))
    }
}

/// Dataset ids: letters, digits and underscores, 1-1024 characters.
pub fn validate_dataset(dataset: &str) -> Result<(), String> {
    let ok = (1..=1024).contains(&dataset.len())
        && dataset
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else if dataset.is_empty() {
        Err("set the dataset id".into())
    } else {
        Err(format!(
            "'{dataset}' is not a dataset id (1-1024 letters, digits or underscores)"
        ))
    }
}

/// Table ids: 1-1024 bytes of letters, marks, digits, connectors (`_`), dashes and spaces (Google's rule
/// is Unicode categories L, M, N, Pc, Pd, Zs; this accepts letters and digits of any script, `_`, `-`
/// and space). Decorators (`$`) and paths (`.`, `/`) are refused.
pub fn validate_table(table: &str) -> Result<(), String> {
    let ok = (1..=1024).contains(&table.len())
        && table
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ');
    if ok {
        Ok(())
    } else if table.is_empty() {
        Err("a table id is empty".into())
    } else {
        Err(format!(
            "'{table}' is not a table id (1-1024 bytes of letters, digits, '_', '-' or spaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> BigQuerySinkConfig {
        BigQuerySinkConfig {
            project: "my-project".into(),
            dataset: "sales_1".into(),
            tables: vec!["invoices".into(), "invoice_items".into()],
            client: ClientConfig {
                endpoint: Some("127.0.0.1:9050/".into()),
                ..ClientConfig::default()
            },
            ..BigQuerySinkConfig::default()
        }
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c: BigQuerySinkConfig = serde_json::from_str(
            r#"{"project":"my-project","dataset":"d","tables":["t"],"endpoint":"http://x:1","max_rows_per_request":100}"#,
        )
        .unwrap();
        assert_eq!(c.max_rows_per_request, 100);
        assert_eq!(c.client.endpoint.as_deref(), Some("http://x:1"));
        assert!(c.skip_invalid_rows);
        assert!(!c.ignore_unknown_values);
        assert_eq!(c.client.request_timeout_ms, 30_000);
        assert!(serde_json::from_str::<BigQuerySinkConfig>(r#"{"projet":"x"}"#).is_err());
    }

    #[test]
    fn validates_and_resolves() {
        let s = valid().validate().unwrap();
        assert_eq!(s.client.endpoint.url, "http://127.0.0.1:9050");
        assert_eq!(s.client.endpoint.source, EndpointSource::Config);
        assert!(!s.client.authenticate);
        assert_eq!(&*s.tables[1], "invoice_items");
    }

    #[test]
    fn one_line_errors() {
        let cases: Vec<(BigQuerySinkConfig, &str)> = vec![
            (
                BigQuerySinkConfig {
                    project: "My_Project".into(),
                    ..valid()
                },
                "invalid bigquery.project: 'My_Project' is not a project id",
            ),
            (
                BigQuerySinkConfig {
                    project: "".into(),
                    ..valid()
                },
                "invalid bigquery.project: set the Google Cloud project id",
            ),
            (
                BigQuerySinkConfig {
                    dataset: "a-b".into(),
                    ..valid()
                },
                "invalid bigquery.dataset: 'a-b' is not a dataset id",
            ),
            (
                BigQuerySinkConfig {
                    tables: vec![],
                    ..valid()
                },
                "invalid bigquery.tables: list at least one table",
            ),
            (
                BigQuerySinkConfig {
                    tables: vec!["a.b".into()],
                    ..valid()
                },
                "invalid bigquery.tables: 'a.b' is not a table id",
            ),
            (
                BigQuerySinkConfig {
                    tables: vec!["t".into(), "t".into()],
                    ..valid()
                },
                "invalid bigquery.tables: 't' is listed twice",
            ),
            (
                BigQuerySinkConfig {
                    max_rows_per_request: 50_001,
                    ..valid()
                },
                "invalid bigquery.max_rows_per_request: 50001 is outside",
            ),
            (
                BigQuerySinkConfig {
                    max_rows_per_request: 0,
                    ..valid()
                },
                "invalid bigquery.max_rows_per_request: 0 is outside",
            ),
            (
                BigQuerySinkConfig {
                    max_bytes_per_request: 10_000_001,
                    ..valid()
                },
                "invalid bigquery.max_bytes_per_request",
            ),
            (
                BigQuerySinkConfig {
                    request_concurrency: 0,
                    ..valid()
                },
                "invalid bigquery.request_concurrency",
            ),
            (
                BigQuerySinkConfig {
                    client: ClientConfig {
                        endpoint: Some("ftp://x".into()),
                        ..ClientConfig::default()
                    },
                    ..valid()
                },
                "invalid bigquery.endpoint",
            ),
        ];
        for (c, want) in cases {
            let msg = c.validate().unwrap_err().to_string();
            assert!(
                msg.starts_with(want),
                "{msg:?} does not start with {want:?}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn names() {
        assert!(validate_project("example.com:my-project").is_ok());
        assert!(validate_project("abcde").is_err());
        assert!(validate_project("abcdef-").is_err());
        assert!(validate_project("1abcdef").is_err());
        assert!(validate_dataset(&"a".repeat(1024)).is_ok());
        assert!(validate_dataset(&"a".repeat(1025)).is_err());
        assert!(validate_table("notas fiscais-2024_é").is_ok());
        assert!(validate_table("t$20240101").is_err());
    }
}
