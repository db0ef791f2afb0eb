//! The REST client: one `reqwest` connection pool, the project's base URL, optional Application Default
//! Credentials, and the error type with its retry classification.

use std::sync::Arc;

use bytes::Bytes;
use fluxo::ErrorClass;
use gcloud_auth::token_source::TokenSource;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::config::{ClientConfig, ClientSettings, BIGQUERY_SCOPE, EMULATOR_ENV};
use crate::ConfigError;

/// A failed BigQuery call, or one row that BigQuery refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BigQueryError {
    /// No answer: connection refused or reset, timeout, broken body. Retriable.
    #[error("BigQuery request failed: {0}")]
    Transport(String),
    /// An HTTP error answer. Retriable for 5xx, 429, 408, 401 (token refresh), 404 (a table verified at
    /// start is being re-created) and 403 `rateLimitExceeded`/`quotaExceeded`; permanent otherwise.
    #[error("BigQuery answered HTTP {status} ({reason}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// First `errors[].reason` (`invalid`, `notFound`, `backendError`, ...).
        reason: String,
        /// Error message.
        message: String,
    },
    /// A gRPC call (Storage Write API) failed or an append was refused. Retriable for the codes Google
    /// documents as transient (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`,
    /// `INTERNAL`, ...); permanent otherwise (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, `NOT_FOUND`).
    #[error("BigQuery answered {code:?}: {message}")]
    Grpc {
        /// Status code.
        code: tonic::Code,
        /// What failed, and the status message.
        message: String,
    },
    /// One row was refused (`row_errors` of an append). Permanent unless `reason` is one of `stopped`,
    /// `timeout`, `backendError`, `internalError`.
    #[error("BigQuery did not insert the row ({reason} at '{location}'): {message}")]
    Row {
        /// `insertErrors[].errors[].reason`.
        reason: String,
        /// Field the error refers to.
        location: String,
        /// Message.
        message: String,
    },
    /// The row is larger than one request may be. Permanent.
    #[error("row of {bytes} bytes exceeds max_bytes_per_request ({limit})")]
    RowTooLarge {
        /// Size of the row's JSON and insert id.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The row names a table the sink was not configured for. Permanent.
    #[error("table '{0}' is not one of this sink's tables")]
    UnknownTable(String),
    /// Credentials could not be obtained. Retriable (the metadata server or token endpoint may be busy).
    #[error("BigQuery credentials: {0}")]
    Auth(String),
    /// A request that can never succeed as written (bad schema JSON, failed query). Permanent.
    #[error("{0}")]
    Invalid(String),
    /// An answer the client did not understand. Retriable.
    #[error("unexpected BigQuery answer: {0}")]
    Decode(String),
}

const RETRIABLE_REASONS: &[&str] = &[
    "stopped",
    "timeout",
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "quotaExceeded",
    "jobBackendError",
    "jobInternalError",
];

impl ErrorClass for BigQueryError {
    fn is_retriable(&self) -> bool {
        match self {
            BigQueryError::Transport(_) | BigQueryError::Auth(_) | BigQueryError::Decode(_) => true,
            BigQueryError::Api { status, reason, .. } => {
                *status >= 500
                    || matches!(*status, 401 | 404 | 408 | 429)
                    || (*status == 403 && RETRIABLE_REASONS.contains(&reason.as_str()))
            }
            BigQueryError::Grpc { code, .. } => crate::error::grpc_code_is_retriable(*code),
            BigQueryError::Row { reason, .. } => RETRIABLE_REASONS.contains(&reason.as_str()),
            BigQueryError::RowTooLarge { .. }
            | BigQueryError::UnknownTable(_)
            | BigQueryError::Invalid(_) => false,
        }
    }
}

impl BigQueryError {
    /// HTTP status of an [`BigQueryError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            BigQueryError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Status code of a [`BigQueryError::Grpc`] error.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            BigQueryError::Grpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn transport(e: reqwest::Error) -> Self {
        // The chain says what happened (connection refused, timed out, ...): keep it on one line.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(err) = source {
            let text = err.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = err.source();
        }
        BigQueryError::Transport(msg.replace('\n', " "))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
}

/// Turns an error answer into [`BigQueryError::Api`].
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> BigQueryError {
    let (reason, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (
            b.error
                .errors
                .into_iter()
                .map(|e| e.reason)
                .find(|r| !r.is_empty())
                .unwrap_or(b.error.status),
            b.error.message,
        ),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        ),
    };
    BigQueryError::Api {
        status: status.as_u16(),
        reason,
        message: message.replace('\n', " "),
    }
}

struct Inner {
    http: reqwest::Client,
    /// `{endpoint}/bigquery/v2/projects/{project}`.
    base: String,
    endpoint: String,
    project: String,
    auth: Option<Box<dyn TokenSource>>,
}

/// A BigQuery REST client bound to one project. Cheap to clone (shared connection pool).
#[derive(Clone)]
pub struct BigQueryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BigQueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigQueryClient")
            .field("endpoint", &self.inner.endpoint)
            .field("project", &self.inner.project)
            .field("authenticated", &self.inner.auth.is_some())
            .finish()
    }
}

impl BigQueryClient {
    /// Validates `config` and builds a client for `project`. With credentials enabled this loads
    /// Application Default Credentials (service-account file, `gcloud auth application-default login`, or
    /// the metadata server on GKE/GCE).
    pub async fn connect(project: &str, config: &ClientConfig) -> Result<Self, ConfigError> {
        super::config::validate_project(project)
            .map_err(|r| ConfigError::invalid("bigquery.project", r))?;
        let settings = config.validate("bigquery")?;
        Self::with_settings(project, &settings).await
    }

    /// Builds a client from checked settings.
    pub async fn with_settings(
        project: &str,
        settings: &ClientSettings,
    ) -> Result<Self, ConfigError> {
        let endpoint = settings.endpoint.url.clone();
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ConfigError::Unreachable {
                service: "BigQuery",
                endpoint: endpoint.clone(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let auth = if settings.authenticate {
            Some(adc().await.map_err(|reason| ConfigError::Unreachable {
                service: "BigQuery",
                endpoint: endpoint.clone(),
                reason,
            })?)
        } else {
            None
        };
        tracing::debug!(%endpoint, project, authenticated = auth.is_some(), source = ?settings.endpoint.source, "BigQuery client");
        Ok(BigQueryClient {
            inner: Arc::new(Inner {
                http,
                base: format!("{endpoint}/bigquery/v2/projects/{project}"),
                endpoint,
                project: project.to_string(),
                auth,
            }),
        })
    }

    /// The endpoint (base URL).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The project id.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    /// `{endpoint}/bigquery/v2/projects/{project}`: prefix of every project-scoped URL.
    pub fn project_url(&self) -> &str {
        &self.inner.base
    }

    /// Sends one request and returns the status and body of any answer (error statuses included).
    /// Transport failures and credential failures are errors.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), BigQueryError> {
        let mut req = self.inner.http.request(method, url);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        if let Some(ts) = &self.inner.auth {
            let token = ts
                .token()
                .await
                .map_err(|e| BigQueryError::Auth(e.to_string()))?;
            req = req.header(reqwest::header::AUTHORIZATION, token.value());
        }
        let resp = req.send().await.map_err(BigQueryError::transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(BigQueryError::transport)?;
        Ok((status, body))
    }

    /// Sends one request and decodes a successful JSON answer; an error status becomes
    /// [`BigQueryError::Api`].
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<T, BigQueryError> {
        let (status, bytes) = self.send(method, url, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| BigQueryError::Decode(e.to_string()))
    }

    /// The one-line configuration error for a failed start-up check.
    pub(crate) fn check_error(&self, e: BigQueryError) -> ConfigError {
        let hint = match &e {
            BigQueryError::Transport(_) => format!(
                "; start bqemulator (or check `endpoint` / {EMULATOR_ENV}) or check the network"
            ),
            BigQueryError::Api {
                status: 401 | 403, ..
            } => "; check the credentials and the roles/bigquery.dataEditor grant".to_string(),
            _ => String::new(),
        };
        ConfigError::Unreachable {
            service: "BigQuery",
            endpoint: self.inner.endpoint.clone(),
            reason: format!("{e}{hint}"),
        }
    }
}

/// Loads Application Default Credentials with the BigQuery scope.
async fn adc() -> Result<Box<dyn TokenSource>, String> {
    let project = gcloud_auth::project::project().await.map_err(|e| {
        format!("no Application Default Credentials ({e}); run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or set {EMULATOR_ENV} for an emulator")
    })?;
    let scopes = [BIGQUERY_SCOPE];
    let config = gcloud_auth::project::Config::default().with_scopes(&scopes);
    gcloud_auth::project::create_token_source_from_project(&project, config)
        .await
        .map_err(|e| format!("cannot obtain an access token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let api = |status: u16, reason: &str| BigQueryError::Api {
            status,
            reason: reason.into(),
            message: String::new(),
        };
        assert!(api(500, "internalError").is_retriable());
        assert!(api(503, "backendError").is_retriable());
        assert!(api(429, "").is_retriable());
        assert!(api(404, "notFound").is_retriable());
        assert!(api(403, "rateLimitExceeded").is_retriable());
        assert!(!api(403, "accessDenied").is_retriable());
        assert!(!api(400, "invalid").is_retriable());
        let row = |reason: &str| BigQueryError::Row {
            reason: reason.into(),
            location: String::new(),
            message: String::new(),
        };
        assert!(row("stopped").is_retriable());
        assert!(row("backendError").is_retriable());
        assert!(!row("invalid").is_retriable());
        assert!(!BigQueryError::UnknownTable("t".into()).is_retriable());
        assert!(BigQueryError::Transport("refused".into()).is_retriable());
    }

    #[test]
    fn error_bodies() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":404,"message":"Not found: table:p.d.t","errors":[{"domain":"global","reason":"notFound","message":"x"}],"status":"NOT_FOUND"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "BigQuery answered HTTP 404 (notFound): Not found: table:p.d.t"
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad\ngateway</html>");
        assert_eq!(
            e.to_string(),
            "BigQuery answered HTTP 502 (): <html>bad gateway</html>"
        );
    }
}
