//! Configuration of the Pub/Sub source and sink: serde structs with documented defaults, validated into
//! checked settings before anything connects.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::Api;
pub use crate::endpoint::Endpoint;
use crate::error::ConfigError;

/// Environment variable naming a Pub/Sub emulator (`host:port`), honoured when no endpoint is configured.
pub const EMULATOR_ENV: &str = Api::PubSub.emulator_env();

/// Largest number of messages one `Pull` may return (API limit).
pub const MAX_PULL_MESSAGES: u32 = 1000;
/// Largest number of messages in one `Publish` request (API limit).
pub const MAX_PUBLISH_MESSAGES: usize = 1000;
/// Largest `Publish` request in bytes (API limit: 10 MB).
pub const MAX_PUBLISH_BYTES: usize = 10_000_000;
/// Most attributes on one message (API limit).
pub const MAX_ATTRIBUTES: usize = 100;
/// Longest attribute key in bytes (API limit).
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
/// Longest attribute value in bytes (API limit).
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest ordering key in bytes (API limit).
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Largest ack deadline Pub/Sub accepts, in seconds.
pub const MAX_ACK_DEADLINE_SECS: u32 = 600;
/// Smallest ack deadline Pub/Sub accepts, in seconds.
pub const MIN_ACK_DEADLINE_SECS: u32 = 10;

/// How the source receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiveMode {
    /// The default: `streaming_pull` on Google (what Google recommends for high-throughput
    /// subscribers), `pull` on an emulator (measured faster there: docs/connectors/pubsub.md).
    #[default]
    Auto,
    /// Unary `Pull` requests, several outstanding at once.
    Pull,
    /// One or more `StreamingPull` streams with server-side flow control.
    StreamingPull,
}

impl ReceiveMode {
    /// The mode used on `endpoint`: [`ReceiveMode::Auto`] resolved, the others as they are.
    pub fn resolve(self, endpoint: &Endpoint) -> ReceiveMode {
        match self {
            ReceiveMode::Auto if endpoint.prefers_streaming_pull() => ReceiveMode::StreamingPull,
            ReceiveMode::Auto => ReceiveMode::Pull,
            mode => mode,
        }
    }
}

/// Configuration of the Pub/Sub source (`PubsubSource`). JSON/YAML field names are the Rust field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubSourceConfig {
    /// Google Cloud project. Default: none, then the project of a full `subscription` path, else
    /// `GOOGLE_CLOUD_PROJECT`.
    pub project: Option<String>,
    /// Subscription: a short id (`invoices-sub`) or a full path (`projects/P/subscriptions/S`).
    /// Required.
    pub subscription: String,
    /// gRPC endpoint `host:port` of an emulator. Default: none, then `PUBSUB_EMULATOR_HOST`, else the
    /// real Pub/Sub with Application Default Credentials.
    pub endpoint: Option<String>,
    /// `auto` (default: `streaming_pull` on Google, `pull` on an emulator), `pull` (unary) or
    /// `streaming_pull`.
    pub mode: ReceiveMode,
    /// Messages asked for per unary `Pull` (1..=1000). Default: 1000.
    pub max_messages_per_pull: u32,
    /// Unary pulls outstanding at once, or streams in `streaming_pull` mode. Default: 1 (see the
    /// connector documentation for the emulator measurements behind it).
    pub concurrent_pulls: usize,
    /// Most messages pulled and not yet acked or nacked; no pull is made while it is reached.
    /// Default: 10,000.
    pub max_outstanding_messages: usize,
    /// Most bytes of message data pulled and not yet acked or nacked; no pull is made while it is
    /// reached (one pull may overshoot it by its own size). Default: 100 MiB.
    pub max_outstanding_bytes: usize,
    /// Ack deadline (seconds, 10..=600) the source keeps extending for messages still in flight.
    /// Default: 60.
    pub ack_deadline_secs: u32,
    /// Longest total time a message is kept leased; after it the lease is no longer extended and Pub/Sub
    /// redelivers it. Default: 3,600 s.
    pub max_lease_secs: u64,
    /// Ack ids per `Acknowledge` / `ModifyAckDeadline` request (1..=2500). Default: 1000.
    pub ack_batch_size: usize,
    /// Attribute holding the event time (RFC 3339, or integer milliseconds since the epoch). Default:
    /// none: the event time is the publish time. A missing or invalid value falls back to the publish
    /// time and is counted.
    pub timestamp_attribute: Option<String>,
    /// How far the watermark trails the newest event time seen, in milliseconds. Default: 2,000.
    pub watermark_skew_ms: u64,
    /// After this long (milliseconds) without any message, the source declares itself idle and, when
    /// event time is the publish time, advances its watermark to now minus the skew. Default: 5,000.
    pub idle_after_ms: u64,
    /// Longest wait after shutdown for the outstanding messages to resolve before returning (the rest
    /// are redelivered by Pub/Sub after their deadline). Default: 30,000 ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for PubsubSourceConfig {
    fn default() -> Self {
        PubsubSourceConfig {
            project: None,
            subscription: String::new(),
            endpoint: None,
            mode: ReceiveMode::Auto,
            max_messages_per_pull: 1000,
            concurrent_pulls: 1,
            max_outstanding_messages: 10_000,
            max_outstanding_bytes: 100 * 1024 * 1024,
            ack_deadline_secs: 60,
            max_lease_secs: 3600,
            ack_batch_size: 1000,
            timestamp_attribute: None,
            watermark_skew_ms: 2000,
            idle_after_ms: 5000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// Configuration of the Pub/Sub sink (`PubsubSink`). Batching, in-flight requests and retries are the
/// engine's [`fluxo::SinkConfig`]; one engine batch is split into several `Publish` requests when it
/// exceeds the API limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubSinkConfig {
    /// Google Cloud project. Default: none, then the project of a full `topic` path, else
    /// `GOOGLE_CLOUD_PROJECT`.
    pub project: Option<String>,
    /// Topic: a short id or a full path (`projects/P/topics/T`). Required.
    pub topic: String,
    /// gRPC endpoint `host:port` of an emulator. Default: none, then `PUBSUB_EMULATOR_HOST`, else the
    /// real Pub/Sub with Application Default Credentials.
    pub endpoint: Option<String>,
    /// Most messages per `Publish` request (1..=1000). Default: 1000.
    pub max_messages_per_request: usize,
    /// Most bytes per `Publish` request (1..=10,000,000, counted as data + attributes + ordering key +
    /// a small per-message overhead). Default: 9,000,000.
    pub max_bytes_per_request: usize,
    /// Per-request deadline in milliseconds. Default: 60,000.
    pub request_timeout_ms: u64,
}

impl Default for PubsubSinkConfig {
    fn default() -> Self {
        PubsubSinkConfig {
            project: None,
            topic: String::new(),
            endpoint: None,
            max_messages_per_request: MAX_PUBLISH_MESSAGES,
            max_bytes_per_request: 9_000_000,
            request_timeout_ms: 60_000,
        }
    }
}

/// A checked source configuration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Project id.
    pub project: String,
    /// `projects/P/subscriptions/S`.
    pub subscription: String,
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Receive mode, resolved for the endpoint (never `Auto`).
    pub mode: ReceiveMode,
    /// Messages per pull.
    pub max_messages_per_pull: u32,
    /// Concurrent pulls or streams.
    pub concurrent_pulls: usize,
    /// Outstanding message limit.
    pub max_outstanding_messages: usize,
    /// Outstanding byte limit.
    pub max_outstanding_bytes: usize,
    /// Ack deadline kept by lease extension.
    pub ack_deadline: Duration,
    /// Longest lease.
    pub max_lease: Duration,
    /// Ack ids per request.
    pub ack_batch_size: usize,
    /// Event-time attribute.
    pub timestamp_attribute: Option<String>,
    /// Watermark skew.
    pub watermark_skew: Duration,
    /// Idle detection.
    pub idle_after: Duration,
    /// Wait for outstanding acks on shutdown.
    pub shutdown_timeout: Duration,
}

/// A checked sink configuration.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Project id.
    pub project: String,
    /// `projects/P/topics/T`.
    pub topic: String,
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Messages per request.
    pub max_messages_per_request: usize,
    /// Bytes per request.
    pub max_bytes_per_request: usize,
    /// Request deadline.
    pub request_timeout: Duration,
}

impl PubsubSourceConfig {
    /// A configuration for `subscription` with every other field at its default.
    pub fn new(subscription: impl Into<String>) -> Self {
        PubsubSourceConfig {
            subscription: subscription.into(),
            ..Default::default()
        }
    }

    /// Checks names and limits; resolves the endpoint.
    pub fn validate(&self) -> Result<SourceSettings, ConfigError> {
        let (project, subscription) = resolve_name(
            self.project.as_deref(),
            &self.subscription,
            "subscriptions",
            "pubsub.subscription",
        )?;
        let endpoint = Endpoint::pubsub(self.endpoint.as_deref())?;
        in_range(
            "pubsub.max_messages_per_pull",
            self.max_messages_per_pull as u64,
            1,
            MAX_PULL_MESSAGES as u64,
        )?;
        in_range(
            "pubsub.concurrent_pulls",
            self.concurrent_pulls as u64,
            1,
            64,
        )?;
        in_range(
            "pubsub.max_outstanding_messages",
            self.max_outstanding_messages as u64,
            1,
            u32::MAX as u64,
        )?;
        in_range(
            "pubsub.max_outstanding_bytes",
            self.max_outstanding_bytes as u64,
            1,
            u64::MAX,
        )?;
        in_range(
            "pubsub.ack_deadline_secs",
            self.ack_deadline_secs as u64,
            MIN_ACK_DEADLINE_SECS as u64,
            MAX_ACK_DEADLINE_SECS as u64,
        )?;
        in_range(
            "pubsub.max_lease_secs",
            self.max_lease_secs,
            1,
            7 * 24 * 3600,
        )?;
        in_range("pubsub.ack_batch_size", self.ack_batch_size as u64, 1, 2500)?;
        in_range("pubsub.idle_after_ms", self.idle_after_ms, 1, u64::MAX)?;
        if let Some(a) = &self.timestamp_attribute {
            if a.is_empty() || a.len() > 256 {
                return Err(ConfigError::invalid(
                    "pubsub.timestamp_attribute",
                    "an attribute name is 1 to 256 bytes",
                ));
            }
        }
        Ok(SourceSettings {
            project,
            subscription,
            mode: self.mode.resolve(&endpoint),
            endpoint,
            max_messages_per_pull: self.max_messages_per_pull,
            concurrent_pulls: self.concurrent_pulls,
            max_outstanding_messages: self.max_outstanding_messages,
            max_outstanding_bytes: self.max_outstanding_bytes,
            ack_deadline: Duration::from_secs(self.ack_deadline_secs as u64),
            max_lease: Duration::from_secs(self.max_lease_secs),
            ack_batch_size: self.ack_batch_size,
            timestamp_attribute: self.timestamp_attribute.clone(),
            watermark_skew: Duration::from_millis(self.watermark_skew_ms),
            idle_after: Duration::from_millis(self.idle_after_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
        })
    }
}

impl PubsubSinkConfig {
    /// A configuration for `topic` with every other field at its default.
    pub fn new(topic: impl Into<String>) -> Self {
        PubsubSinkConfig {
            topic: topic.into(),
            ..Default::default()
        }
    }

    /// Checks names and limits; resolves the endpoint.
    pub fn validate(&self) -> Result<SinkSettings, ConfigError> {
        let (project, topic) = resolve_name(
            self.project.as_deref(),
            &self.topic,
            "topics",
            "pubsub.topic",
        )?;
        let endpoint = Endpoint::pubsub(self.endpoint.as_deref())?;
        in_range(
            "pubsub.max_messages_per_request",
            self.max_messages_per_request as u64,
            1,
            MAX_PUBLISH_MESSAGES as u64,
        )?;
        in_range(
            "pubsub.max_bytes_per_request",
            self.max_bytes_per_request as u64,
            1,
            MAX_PUBLISH_BYTES as u64,
        )?;
        in_range(
            "pubsub.request_timeout_ms",
            self.request_timeout_ms,
            1,
            u64::MAX,
        )?;
        Ok(SinkSettings {
            project,
            topic,
            endpoint,
            max_messages_per_request: self.max_messages_per_request,
            max_bytes_per_request: self.max_bytes_per_request,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        })
    }
}

fn in_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        let range = if max == u64::MAX {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        return Err(ConfigError::invalid(
            field,
            format!("{v} is out of range: must be {range}"),
        ));
    }
    Ok(())
}

/// Splits a short id or a full `projects/P/<kind>/ID` path into the project and the full path, checking
/// both names. `kind` is `topics` or `subscriptions`.
pub fn resolve_name(
    project: Option<&str>,
    name: &str,
    kind: &str,
    field: &str,
) -> Result<(String, String), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "required (a short id or projects/P/.../ID)",
        ));
    }
    let (project, id) = if let Some(rest) = name.strip_prefix("projects/") {
        let mut parts = rest.splitn(3, '/');
        let (Some(p), Some(k), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ConfigError::invalid(
                field,
                format!("'{name}' is not projects/PROJECT/{kind}/ID"),
            ));
        };
        if k != kind {
            return Err(ConfigError::invalid(
                field,
                format!("'{name}' is not projects/PROJECT/{kind}/ID"),
            ));
        }
        if let Some(cp) = project {
            if cp != p {
                return Err(ConfigError::invalid(
                    field,
                    format!("'{name}' names project '{p}' but pubsub.project is '{cp}'"),
                ));
            }
        }
        (p.to_string(), id)
    } else {
        let p = match project {
            Some(p) => p.to_string(),
            None => std::env::var("GOOGLE_CLOUD_PROJECT").map_err(|_| {
                ConfigError::invalid(
                    "pubsub.project",
                    format!("required for the short name '{name}' (or use projects/P/{kind}/{name}, or set GOOGLE_CLOUD_PROJECT)"),
                )
            })?,
        };
        (p, name)
    };
    check_project(&project)?;
    check_resource_id(id)
        .map_err(|reason| ConfigError::invalid(field, format!("'{id}' {reason}")))?;
    Ok((project.clone(), format!("projects/{project}/{kind}/{id}")))
}

/// Google's rule for topic and subscription ids: 3 to 255 characters, starting with a letter, made of
/// letters, digits and `-_.~+%`, not starting with `goog`.
pub fn check_resource_id(id: &str) -> Result<(), String> {
    if id.len() < 3 || id.len() > 255 {
        return Err(format!(
            "must be 3 to 255 characters long (it has {})",
            id.len()
        ));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    if id.len() >= 4 && id[..4].eq_ignore_ascii_case("goog") {
        return Err("must not start with 'goog'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.~+%".contains(*c)))
    {
        return Err(format!(
            "contains '{c}': only letters, digits and - _ . ~ + % are allowed"
        ));
    }
    Ok(())
}

/// Google's rule for project ids: 6 to 30 lowercase letters, digits or hyphens, starting with a letter,
/// not ending with a hyphen (an optional `domain:` prefix is accepted for legacy projects).
pub fn check_project(project: &str) -> Result<(), ConfigError> {
    let id = project.rsplit_once(':').map_or(project, |(_, id)| id);
    let ok = (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "pubsub.project",
            format!("'{project}' is not a project id (6 to 30 lowercase letters, digits or hyphens, starting with a letter)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_resource_id("abc").is_ok());
        assert!(check_resource_id("a-b_c.d~e+f%g").is_ok());
        assert!(check_resource_id("ab").is_err());
        assert!(check_resource_id("1abc").is_err());
        assert!(check_resource_id("google-x").is_err());
        assert!(check_resource_id("Goog-x").is_err());
        assert!(check_resource_id("a b c").is_err());
        assert!(check_resource_id(&"a".repeat(256)).is_err());
        assert!(check_project("my-project").is_ok());
        assert!(check_project("example.com:my-project").is_ok());
        assert!(check_project("My-Project").is_err());
        assert!(check_project("proj-").is_err());
    }

    #[test]
    fn full_and_short_paths() {
        let (p, s) = resolve_name(
            None,
            "projects/my-project/subscriptions/sub-1",
            "subscriptions",
            "f",
        )
        .unwrap();
        assert_eq!(
            (p.as_str(), s.as_str()),
            ("my-project", "projects/my-project/subscriptions/sub-1")
        );
        let (_, s) = resolve_name(Some("my-project"), "sub-1", "subscriptions", "f").unwrap();
        assert_eq!(s, "projects/my-project/subscriptions/sub-1");
        assert!(
            resolve_name(None, "projects/my-project/topics/t-1", "subscriptions", "f").is_err()
        );
        assert!(resolve_name(
            Some("other-project"),
            "projects/my-project/subscriptions/s-1",
            "subscriptions",
            "f"
        )
        .is_err());
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c: PubsubSourceConfig = serde_json::from_str(
            r#"{"project": "my-project", "subscription": "sub-1", "endpoint": "127.0.0.1:1", "mode": "streaming_pull"}"#,
        )
        .unwrap();
        assert_eq!(c.mode, ReceiveMode::StreamingPull);
        assert_eq!(c.max_messages_per_pull, 1000);
        // The default depends on the endpoint.
        let auto = PubsubSourceConfig::default();
        assert_eq!(auto.mode, ReceiveMode::Auto);
        let emulator = Endpoint::Emulator("127.0.0.1:1".into());
        assert_eq!(auto.mode.resolve(&emulator), ReceiveMode::Pull);
        assert_eq!(
            auto.mode.resolve(&Endpoint::Google(Api::PubSub)),
            ReceiveMode::StreamingPull
        );
        assert_eq!(
            ReceiveMode::Pull.resolve(&Endpoint::Google(Api::PubSub)),
            ReceiveMode::Pull
        );
        let auto_settings = PubsubSourceConfig {
            project: Some("my-project".into()),
            subscription: "sub-1".into(),
            endpoint: Some("127.0.0.1:1".into()),
            ..PubsubSourceConfig::default()
        }
        .validate()
        .unwrap();
        assert_eq!(auto_settings.mode, ReceiveMode::Pull);
        let s = c.validate().unwrap();
        assert_eq!(s.endpoint, Endpoint::Emulator("127.0.0.1:1".into()));
        assert!(serde_json::from_str::<PubsubSourceConfig>(r#"{"subscriptions": "x"}"#).is_err());
        let mut bad = c.clone();
        bad.max_messages_per_pull = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_messages_per_pull"));
        let mut bad = c;
        bad.ack_deadline_secs = 5;
        assert!(bad.validate().is_err());
        let sink = PubsubSinkConfig {
            project: Some("my-project".into()),
            topic: "t".into(),
            endpoint: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        assert!(sink
            .validate()
            .unwrap_err()
            .to_string()
            .contains("3 to 255"));
    }
}
