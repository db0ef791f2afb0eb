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
/// Environment variable naming bqemulator's gRPC endpoint (Storage Read and Write APIs, `host:port`).
pub const WRITE_EMULATOR_ENV: &str = "BIGQUERY_EMULATOR_GRPC_HOST";
/// The real Storage Write API endpoint.
pub const GOOGLE_WRITE_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";
/// Rows per `AppendRows` request this sink accepts as a setting (the API limits bytes, not rows).
pub const MAX_ROWS_PER_REQUEST: usize = 50_000;
/// Bytes of rows per `AppendRows` request: the API refuses requests above 10 MB; this leaves room for the
/// descriptor and framing.
pub const MAX_BYTES_PER_REQUEST: usize = 9_000_000;

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
    let url = with_scheme(raw);
    Endpoint { url, source }
}

/// `host:port` becomes `http://host:port` (emulator addresses are plain `host:port`); trailing slashes go.
fn with_scheme(raw: String) -> String {
    let mut url = if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    };
    while url.ends_with('/') {
        url.pop();
    }
    url
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
    /// Storage Write API endpoint (gRPC): `host:port` of an emulator or an `http(s)://` URL. Default: none,
    /// which means `BIGQUERY_EMULATOR_GRPC_HOST` when set, else `https://bigquerystorage.googleapis.com`
    /// (an error when `BIGQUERY_EMULATOR_HOST` points the REST calls at an emulator but no gRPC endpoint
    /// is known: rows would go to Google).
    pub write_endpoint: Option<String>,
    /// Rows per `AppendRows` request. A sink batch is split into requests of at most this many rows per
    /// table. Default: 2000.
    pub max_rows_per_request: usize,
    /// Bytes of serialized rows per `AppendRows` request (the API allows 10 MB per request; at most
    /// 9,000,000 here). Default: 5,000,000.
    pub max_bytes_per_request: usize,
    /// Committed write streams per table, each with one append in flight: the sink's concurrency per
    /// table. Default: 4.
    pub streams_per_table: usize,
    /// Deadline of one `AppendRows` answer, in milliseconds. An append without an answer in time has an
    /// unknown outcome: it is sent again at the same offset on a new connection until BigQuery says it
    /// is written or already there. Default: 20000.
    pub append_timeout_ms: u64,
    /// How long an append with an unknown outcome is retried on its stream before the stream is given
    /// up (its rows are then failed retriably and go to a new stream; see `docs/connectors/bigquery.md`
    /// for what that costs). Default: 600000 (10 minutes).
    pub resolve_timeout_ms: u64,
}

impl Default for BigQuerySinkConfig {
    fn default() -> Self {
        BigQuerySinkConfig {
            project: String::new(),
            dataset: String::new(),
            tables: Vec::new(),
            client: ClientConfig::default(),
            write_endpoint: None,
            max_rows_per_request: 2000,
            max_bytes_per_request: 5_000_000,
            streams_per_table: 4,
            append_timeout_ms: 20_000,
            resolve_timeout_ms: 600_000,
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
    /// Client settings (REST: checks and table schemas).
    pub client: ClientSettings,
    /// The Storage Write API endpoint.
    pub write_endpoint: Endpoint,
    /// Rows per request.
    pub max_rows_per_request: usize,
    /// Bytes per request.
    pub max_bytes_per_request: usize,
    /// Streams (appends in flight) per table.
    pub streams_per_table: usize,
    /// Deadline of one append's answer.
    pub append_timeout: Duration,
    /// How long an append with an unknown outcome is retried on its stream.
    pub resolve_timeout: Duration,
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
                    "{} is outside 1..={MAX_ROWS_PER_REQUEST}",
                    self.max_rows_per_request
                ),
            ));
        }
        if !(1024..=MAX_BYTES_PER_REQUEST).contains(&self.max_bytes_per_request) {
            return Err(ConfigError::invalid(
                "bigquery.max_bytes_per_request",
                format!(
                    "{} is outside 1024..={MAX_BYTES_PER_REQUEST} (AppendRows allows 10 MB per request)",
                    self.max_bytes_per_request
                ),
            ));
        }
        if !(1..=64).contains(&self.streams_per_table) {
            return Err(ConfigError::invalid(
                "bigquery.streams_per_table",
                format!("{} is outside 1..=64", self.streams_per_table),
            ));
        }
        if self.append_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "bigquery.append_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.resolve_timeout_ms < self.append_timeout_ms {
            return Err(ConfigError::invalid(
                "bigquery.resolve_timeout_ms",
                format!(
                    "{} is shorter than append_timeout_ms ({})",
                    self.resolve_timeout_ms, self.append_timeout_ms
                ),
            ));
        }
        let client = self.client.validate("bigquery")?;
        let write_endpoint = resolve_write_endpoint(self.write_endpoint.as_deref(), &client)?;
        Ok(SinkSettings {
            project: self.project.clone(),
            dataset: self.dataset.clone(),
            tables,
            client,
            write_endpoint,
            max_rows_per_request: self.max_rows_per_request,
            max_bytes_per_request: self.max_bytes_per_request,
            streams_per_table: self.streams_per_table,
            append_timeout: Duration::from_millis(self.append_timeout_ms),
            resolve_timeout: Duration::from_millis(self.resolve_timeout_ms),
        })
    }
}

/// Resolves the Storage Write API endpoint: explicit value, else `BIGQUERY_EMULATOR_GRPC_HOST`, else the
/// Google endpoint, which is refused when the REST endpoint is not Google's (an emulator for the checks and
/// Google for the rows is never what was meant).
pub fn resolve_write_endpoint(
    explicit: Option<&str>,
    rest: &ClientSettings,
) -> Result<Endpoint, ConfigError> {
    let (raw, source) = match explicit.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) => (e.to_string(), EndpointSource::Config),
        None => match std::env::var(WRITE_EMULATOR_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            Some(e) => (e.trim().to_string(), EndpointSource::EmulatorEnv),
            None => {
                if rest.endpoint.source != EndpointSource::Google {
                    return Err(ConfigError::invalid(
                        "bigquery.write_endpoint",
                        format!(
                            "the REST endpoint is {} but no Storage Write endpoint is set; set {WRITE_EMULATOR_ENV} (bqemulator's gRPC host:port) or write_endpoint",
                            rest.endpoint.url
                        ),
                    ));
                }
                (GOOGLE_WRITE_ENDPOINT.to_string(), EndpointSource::Google)
            }
        },
    };
    let url = with_scheme(raw);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::invalid(
            "bigquery.write_endpoint",
            format!("'{url}' is not an http(s) URL or host:port"),
        ));
    }
    Ok(Endpoint { url, source })
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
            write_endpoint: Some("127.0.0.1:9060".into()),
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
        assert_eq!(c.streams_per_table, 4);
        assert_eq!(c.write_endpoint, None);
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
                    streams_per_table: 0,
                    ..valid()
                },
                "invalid bigquery.streams_per_table",
            ),
            (
                BigQuerySinkConfig {
                    resolve_timeout_ms: 10,
                    ..valid()
                },
                "invalid bigquery.resolve_timeout_ms: 10 is shorter than append_timeout_ms",
            ),
            (
                BigQuerySinkConfig {
                    write_endpoint: None,
                    ..valid()
                },
                "invalid bigquery.write_endpoint: the REST endpoint is http://127.0.0.1:9050 but no Storage Write endpoint is set",
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
