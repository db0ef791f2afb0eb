//! Configuration of the HTTP polling source, validated into [`ValidConfig`] before a run.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::paginate::Pagination;

/// How requests authenticate. Secrets are read from environment variables named here, never from the
/// configuration itself, and never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials. The default.
    #[default]
    None,
    /// `Authorization: Bearer <token>`, the token read from the variable `token_env`.
    Bearer {
        /// Environment variable holding the token.
        token_env: String,
    },
    /// An API key in a header, read from the variable `key_env`.
    ApiKey {
        /// Header name. Default: `X-API-Key`.
        #[serde(default = "api_key_header")]
        header: String,
        /// Environment variable holding the key.
        key_env: String,
    },
}

fn api_key_header() -> String {
    "X-API-Key".into()
}

/// Retries of one page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per page before the run fails (429, 5xx, timeouts, broken connections, truncated
    /// bodies). Default: 10.
    pub max_attempts: u32,
    /// First backoff ceiling, in milliseconds; it doubles per attempt, and the wait is drawn uniformly
    /// below it (full jitter). Default: 200.
    pub initial_backoff_ms: u64,
    /// Largest backoff ceiling, in milliseconds. Default: 30,000.
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured, in seconds; a longer one fails the run. Default: 300.
    pub max_retry_after_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            max_retry_after_secs: 300,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): full jitter under an exponential ceiling.
    pub fn backoff(&self, attempt: u32) -> Duration {
        fluxo::backoff(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            attempt.saturating_sub(1),
        )
    }
}

/// Default of [`HttpSourceConfig::max_page_bytes`]: 64 MiB.
///
/// A page is held in memory until every record of it was delivered, so the cap bounds what one page
/// costs (and, times `max_pages_in_flight`, what the pages in flight may cost at worst). It is set far
/// above ordinary pages (a page of 1,000 invoices of the reference API is under 1 MiB) and above
/// several records of the largest size a Pub/Sub message can carry (10 MB), so that an oversize
/// *record* is caught by the consumer's record limit (and set aside alone) before its page reaches
/// this cap, which cannot be skipped with a cursor in the body.
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest accepted [`HttpSourceConfig::max_page_bytes`]: 1 KiB.
pub const MIN_MAX_PAGE_BYTES: u64 = 1024;
/// Largest accepted [`HttpSourceConfig::max_page_bytes`]: 1 GiB (a page is one buffer in memory).
pub const MAX_MAX_PAGE_BYTES: u64 = 1024 * 1024 * 1024;

/// The HTTP polling source's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// URL of the first page, with any fixed query parameters (required; `http` or `https`).
    pub url: String,
    /// Extra query parameters added to every request. Default: none.
    pub query: BTreeMap<String, String>,
    /// Pagination strategy. Default: cursor in the body (`items`, `next_cursor`, `has_more`).
    pub pagination: Pagination,
    /// Records per page asked for, sent as `page_size_param`. Default: 500.
    pub page_size: Option<u64>,
    /// Query parameter of the page size. Default: `page_size`.
    pub page_size_param: String,
    /// Authentication. Default: none.
    pub auth: Auth,
    /// Timeout of one request, body included, in milliseconds. Default: 30,000.
    pub request_timeout_ms: u64,
    /// Largest page body read, in bytes ([`MIN_MAX_PAGE_BYTES`]..=[`MAX_MAX_PAGE_BYTES`]). The body is
    /// read chunk by chunk and never buffered beyond this (a `Content-Length` above it is refused
    /// before reading). A larger page is skipped as a broken page when the pagination finds the next
    /// page without the body (page numbers, next links); with a cursor in the body the run fails,
    /// saying to raise this or lower `page_size`. Default: [`DEFAULT_MAX_PAGE_BYTES`] (64 MiB; see
    /// there why).
    pub max_page_bytes: u64,
    /// Retries of one page.
    pub retry: RetryPolicy,
    /// Most pages read in one run; the run then stops cleanly with its checkpoint. Default: no limit.
    pub max_pages: Option<u64>,
    /// Pages read but not yet acknowledged downstream at once (bounds what a crash re-reads). Default: 16.
    pub max_pages_in_flight: usize,
    /// Run deadline in seconds: no page is requested after it, then the run drains and commits. The
    /// default, 1,500 (25 minutes), leaves room under Cloud Scheduler's 30-minute attempt limit.
    pub deadline_secs: u64,
    /// Identifies the run in logs and leases. Default: empty (the host name and process id are used).
    pub run_id: String,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            url: String::new(),
            query: BTreeMap::new(),
            pagination: Pagination::default(),
            page_size: Some(500),
            page_size_param: "page_size".into(),
            auth: Auth::None,
            request_timeout_ms: 30_000,
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES,
            retry: RetryPolicy::default(),
            max_pages: None,
            max_pages_in_flight: 16,
            deadline_secs: 1_500,
            run_id: String::new(),
        }
    }
}

/// A configuration that cannot run. One line that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a bad value.
    #[error("invalid http source {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A secret's environment variable is not set.
    #[error("environment variable {0} is not set (it holds the API credential)")]
    MissingSecret(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A secret value: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the request header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resolved credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// None.
    None,
    /// A header name and its secret value (`Authorization: Bearer ...` or an API-key header).
    Header(reqwest::header::HeaderName, Secret),
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The base URL with the fixed query parameters.
    pub url: Url,
    /// The source config as given.
    pub config: HttpSourceConfig,
    /// Resolved credential.
    pub credential: Credential,
    /// Run identity.
    pub run_id: String,
}

impl HttpSourceConfig {
    /// Checks every field and reads the credential from the environment.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        self.validate_with(|k| std::env::var(k).ok())
    }

    /// [`HttpSourceConfig::validate`] with an explicit environment lookup (tests, tools).
    pub fn validate_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ValidConfig, ConfigError> {
        if self.url.is_empty() {
            return Err(invalid(
                "url",
                "missing: set the URL of the API's first page",
            ));
        }
        let mut url =
            Url::parse(&self.url).map_err(|e| invalid("url", format!("'{}': {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "url",
                format!("'{}' must start with http:// or https://", self.url),
            ));
        }
        for (k, v) in &self.query {
            url.query_pairs_mut().append_pair(k, v);
        }
        if self.page_size == Some(0) {
            return Err(invalid("page_size", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "must be at least 1"));
        }
        if !(MIN_MAX_PAGE_BYTES..=MAX_MAX_PAGE_BYTES).contains(&self.max_page_bytes) {
            return Err(invalid(
                "max_page_bytes",
                format!(
                    "{} is not between {MIN_MAX_PAGE_BYTES} and {MAX_MAX_PAGE_BYTES}",
                    self.max_page_bytes
                ),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.max_pages_in_flight == 0 {
            return Err(invalid("max_pages_in_flight", "must be at least 1"));
        }
        if self.deadline_secs == 0 {
            return Err(invalid("deadline_secs", "must be at least 1"));
        }
        let credential = match &self.auth {
            Auth::None => Credential::None,
            Auth::Bearer { token_env } => {
                let t = env(token_env)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ConfigError::MissingSecret(token_env.clone()))?;
                Credential::Header(
                    reqwest::header::AUTHORIZATION,
                    Secret(format!("Bearer {t}")),
                )
            }
            Auth::ApiKey { header, key_env } => {
                let name =
                    reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                        invalid("auth.header", format!("'{header}' is not a header name"))
                    })?;
                let k = env(key_env)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ConfigError::MissingSecret(key_env.clone()))?;
                Credential::Header(name, Secret(k))
            }
        };
        let run_id = if self.run_id.is_empty() {
            let host = env("HOSTNAME").unwrap_or_else(|| "local".into());
            format!("{host}-{}", std::process::id())
        } else {
            self.run_id.clone()
        };
        Ok(ValidConfig {
            url,
            config: self.clone(),
            credential,
            run_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_one_line() {
        let c = HttpSourceConfig::default();
        assert_eq!(
            c.validate_with(|_| None).unwrap_err().to_string(),
            "invalid http source url: missing: set the URL of the API's first page"
        );
        let c = HttpSourceConfig {
            url: "ftp://x".into(),
            ..Default::default()
        };
        assert!(c.validate_with(|_| None).is_err());
        let c = HttpSourceConfig {
            url: "http://x/invoices".into(),
            auth: Auth::Bearer {
                token_env: "API_TOKEN".into(),
            },
            ..Default::default()
        };
        assert_eq!(
            c.validate_with(|_| None).unwrap_err().to_string(),
            "environment variable API_TOKEN is not set (it holds the API credential)"
        );
        let v = c
            .validate_with(|k| (k == "API_TOKEN").then(|| "s3cret".to_string()))
            .unwrap();
        assert!(!format!("{v:?}").contains("s3cret"));
    }

    #[test]
    fn config_from_json_with_defaults() {
        let c: HttpSourceConfig = serde_json::from_str(
            r#"{"url":"http://x/i","pagination":{"style":"page_number"},"auth":{"kind":"api_key","key_env":"K"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.pagination,
            Pagination::PageNumber {
                page_param: "page".into(),
                first_page: 1
            }
        );
        assert_eq!(c.page_size, Some(500));
        assert_eq!(c.max_page_bytes, DEFAULT_MAX_PAGE_BYTES);
        assert!(serde_json::from_str::<HttpSourceConfig>(r#"{"urll":"x"}"#).is_err());
        let c: HttpSourceConfig =
            serde_json::from_str(r#"{"url":"http://x/i","max_page_bytes":2048}"#).unwrap();
        assert_eq!(c.max_page_bytes, 2048);
    }

    #[test]
    fn page_cap_bounds() {
        let at = |n: u64| HttpSourceConfig {
            url: "http://x/i".into(),
            max_page_bytes: n,
            ..Default::default()
        };
        for ok in [
            MIN_MAX_PAGE_BYTES,
            DEFAULT_MAX_PAGE_BYTES,
            MAX_MAX_PAGE_BYTES,
        ] {
            assert!(at(ok).validate_with(|_| None).is_ok(), "{ok}");
        }
        for bad in [0, MIN_MAX_PAGE_BYTES - 1, MAX_MAX_PAGE_BYTES + 1] {
            assert_eq!(
                at(bad).validate_with(|_| None).unwrap_err().to_string(),
                format!(
                    "invalid http source max_page_bytes: {bad} is not between 1024 and 1073741824"
                )
            );
        }
    }

    #[test]
    fn backoff_stays_under_the_ceiling() {
        let r = RetryPolicy::default();
        for attempt in 1..40 {
            assert!(r.backoff(attempt) <= Duration::from_millis(r.max_backoff_ms));
        }
        assert!(r.backoff(1) <= Duration::from_millis(200));
    }
}
