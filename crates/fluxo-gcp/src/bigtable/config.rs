//! Configuration of the Bigtable sink and reader: a serde struct with documented defaults, validated into
//! checked settings before anything connects.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mutation::MAX_MUTATIONS_PER_REQUEST;
use crate::endpoint::Api;
pub use crate::endpoint::Endpoint;
use crate::error::ConfigError;

/// Environment variable naming a Bigtable emulator (`host:port`), honoured when no endpoint is configured.
pub const EMULATOR_ENV: &str = Api::Bigtable.emulator_env();
/// Upper bound accepted for `max_bytes_per_request` (64 MiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Configuration of the Bigtable sink ([`super::BigtableSink`]) and reader ([`super::BigtableReader`]).
/// JSON/YAML field names are the Rust field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigtableSinkConfig {
    /// Google Cloud project id. Required (default empty), unless `GOOGLE_CLOUD_PROJECT` is set.
    pub project: String,
    /// Bigtable instance id (6-33 characters, `[a-z][a-z0-9-]*`, not ending with `-`). Required.
    pub instance: String,
    /// Table id (1-50 characters, `[_a-zA-Z0-9][-_.a-zA-Z0-9]*`). Required.
    pub table: String,
    /// gRPC endpoint `host:port` (or `http://host:port`) of an emulator: plaintext, no credentials.
    /// Default: none, then `BIGTABLE_EMULATOR_HOST`, else the real Bigtable
    /// (`bigtable.googleapis.com`, `bigtableadmin.googleapis.com`) with Application Default Credentials.
    pub endpoint: Option<String>,
    /// App profile id for data requests. Default: none (the instance's default profile).
    pub app_profile_id: Option<String>,
    /// Column families that must exist at start-up (checked by [`super::BigtableSink::connect`]).
    /// Default: none. Whatever this says, elements that name a family the table does not have are
    /// rejected without being sent.
    pub families: Vec<String>,
    /// Most entries (rows) in one `MutateRows` request; a larger engine batch is split. Default: 1,000.
    pub max_entries_per_request: usize,
    /// Most mutations (cells plus deletions) in one `MutateRows` request (Bigtable's limit: 100,000).
    /// Default: 100,000.
    pub max_mutations_per_request: usize,
    /// Most bytes (estimated wire size) in one `MutateRows` request; a row larger than this is sent
    /// alone. Default: 16 MiB (cbtemulator accepted 20 MB requests in our probe).
    pub max_bytes_per_request: usize,
    /// Most bytes of `MutateRows` requests in flight at once over all concurrent writes of this sink (flow
    /// control; a request larger than this waits until nothing else is in flight). Default: 64 MiB.
    pub max_outstanding_bytes: usize,
    /// gRPC connections (HTTP/2 channels) requests are balanced over. Default: 2.
    pub channels: usize,
    /// Longest time for one `MutateRows` request, response stream included; after it the request's
    /// entries fail retriably. Default: 60,000 ms.
    pub timeout_ms: u64,
    /// Longest time the start-up check waits for an answer before reporting the endpoint unreachable.
    /// Default: 5,000 ms.
    pub connect_timeout_ms: u64,
}

impl Default for BigtableSinkConfig {
    fn default() -> Self {
        BigtableSinkConfig {
            project: String::new(),
            instance: String::new(),
            table: String::new(),
            endpoint: None,
            app_profile_id: None,
            families: Vec::new(),
            max_entries_per_request: 1_000,
            max_mutations_per_request: MAX_MUTATIONS_PER_REQUEST,
            max_bytes_per_request: 16 * 1024 * 1024,
            max_outstanding_bytes: 64 * 1024 * 1024,
            channels: 2,
            timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
        }
    }
}

impl BigtableSinkConfig {
    /// A configuration with the defaults for one table.
    pub fn new(
        project: impl Into<String>,
        instance: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        BigtableSinkConfig {
            project: project.into(),
            instance: instance.into(),
            table: table.into(),
            ..BigtableSinkConfig::default()
        }
    }

    /// Sets the emulator endpoint (builder style).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Checks names and limits and resolves the endpoint (config, then `BIGTABLE_EMULATOR_HOST`, then
    /// Google), without connecting.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let project = if self.project.is_empty() {
            std::env::var("GOOGLE_CLOUD_PROJECT").unwrap_or_default()
        } else {
            self.project.clone()
        };
        check_project(&project)?;
        check_instance(&self.instance)?;
        check_table_like("bigtable.table", &self.table, 50)?;
        if let Some(p) = &self.app_profile_id {
            check_table_like("bigtable.app_profile_id", p, 50)?;
        }
        for f in &self.families {
            check_family("bigtable.families", f)?;
        }
        limit(
            "bigtable.max_entries_per_request",
            self.max_entries_per_request,
            MAX_MUTATIONS_PER_REQUEST,
        )?;
        limit(
            "bigtable.max_mutations_per_request",
            self.max_mutations_per_request,
            MAX_MUTATIONS_PER_REQUEST,
        )?;
        limit(
            "bigtable.max_bytes_per_request",
            self.max_bytes_per_request,
            MAX_REQUEST_BYTES,
        )?;
        limit(
            "bigtable.max_outstanding_bytes",
            self.max_outstanding_bytes,
            u32::MAX as usize,
        )?;
        limit("bigtable.channels", self.channels, 64)?;
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "bigtable.timeout_ms",
                "must be at least 1",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "bigtable.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        let endpoint = Endpoint::bigtable(self.endpoint.as_deref())?;
        let instance_path = format!("projects/{project}/instances/{}", self.instance);
        Ok(ValidConfig {
            table_path: format!("{instance_path}/tables/{}", self.table),
            instance_path,
            project,
            instance: self.instance.clone(),
            table: self.table.clone(),
            endpoint,
            app_profile_id: self.app_profile_id.clone().unwrap_or_default(),
            families: self.families.clone(),
            max_entries_per_request: self.max_entries_per_request,
            max_mutations_per_request: self.max_mutations_per_request,
            max_bytes_per_request: self.max_bytes_per_request,
            max_outstanding_bytes: self.max_outstanding_bytes,
            channels: self.channels,
            timeout: Duration::from_millis(self.timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

/// A checked [`BigtableSinkConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig {
    /// Project id.
    pub project: String,
    /// Instance id.
    pub instance: String,
    /// Table id.
    pub table: String,
    /// `projects/P/instances/I`.
    pub instance_path: String,
    /// `projects/P/instances/I/tables/T`.
    pub table_path: String,
    /// Resolved endpoint.
    pub endpoint: Endpoint,
    /// App profile id ("" = default).
    pub app_profile_id: String,
    /// Families required at start-up.
    pub families: Vec<String>,
    /// Entries per request.
    pub max_entries_per_request: usize,
    /// Mutations per request.
    pub max_mutations_per_request: usize,
    /// Bytes per request.
    pub max_bytes_per_request: usize,
    /// Bytes in flight.
    pub max_outstanding_bytes: usize,
    /// gRPC channels.
    pub channels: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Start-up check timeout.
    pub connect_timeout: Duration,
}

fn limit(field: &str, v: usize, max: usize) -> Result<(), ConfigError> {
    if v == 0 || v > max {
        Err(ConfigError::invalid(
            field,
            format!("{v} is out of range; must be 1..={max}"),
        ))
    } else {
        Ok(())
    }
}

/// Google project id: 6-30 characters, lower-case letters, digits and hyphens, starting with a letter and
/// not ending with a hyphen; an optional `domain.com:` prefix (domain-scoped projects).
pub fn check_project(p: &str) -> Result<(), ConfigError> {
    let id = p.rsplit_once(':').map_or(p, |(_, id)| id);
    let ok = (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "bigtable.project",
            format!("'{p}' is not a project id (6-30 characters: a-z, 0-9, '-', starting with a letter); set it or GOOGLE_CLOUD_PROJECT"),
        ))
    }
}

/// Bigtable instance id: 6-33 characters, `[a-z][a-z0-9-]*`, not ending with a hyphen.
pub fn check_instance(i: &str) -> Result<(), ConfigError> {
    let ok = (6..=33).contains(&i.len())
        && i.starts_with(|c: char| c.is_ascii_lowercase())
        && !i.ends_with('-')
        && i.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "bigtable.instance",
            format!("'{i}' is not an instance id (6-33 characters: a-z, 0-9, '-', starting with a letter, not ending with '-')"),
        ))
    }
}

/// Table and app profile ids: `[_a-zA-Z0-9][-_.a-zA-Z0-9]*`, at most `max` characters.
pub fn check_table_like(field: &str, t: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !t.is_empty()
        && t.len() <= max
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("'{t}' is not a valid id (1-{max} characters: letters, digits, '_', '-', '.', not starting with '-' or '.')"),
        ))
    }
}

/// Column family: 1-64 characters of `[-_.a-zA-Z0-9]`.
pub fn check_family(field: &str, f: &str) -> Result<(), ConfigError> {
    let ok = !f.is_empty()
        && f.len() <= 64
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("'{f}' is not a column family name (1-64 characters: letters, digits, '_', '-', '.')"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BigtableSinkConfig {
        BigtableSinkConfig::new("my-project", "my-instance", "my_table.v1")
            .with_endpoint("127.0.0.1:8086")
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c: BigtableSinkConfig = serde_json::from_str(
            r#"{"project":"my-project","instance":"my-instance","table":"t","max_entries_per_request":10}"#,
        )
        .unwrap();
        assert_eq!(c.max_entries_per_request, 10);
        assert_eq!(c.max_outstanding_bytes, 64 * 1024 * 1024);
        assert!(serde_json::from_str::<BigtableSinkConfig>(r#"{"tabel":"t"}"#).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(base().validate().is_ok());
        for (field, bad) in [
            ("instance", "short"),
            ("instance", "Upper-case"),
            ("instance", "ends-with-"),
            ("instance", "1starts-with-digit"),
            ("table", ""),
            ("table", "-dash"),
            ("table", "has space"),
            ("project", "ab"),
        ] {
            let mut c = base();
            match field {
                "instance" => c.instance = bad.into(),
                "table" => c.table = bad.into(),
                _ => c.project = bad.into(),
            }
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}={bad}: {err}");
            assert!(!err.contains('\n'));
        }
        let mut c = base();
        c.table = "t".repeat(51);
        assert!(c.validate().is_err());
        c.table = "t".repeat(50);
        assert!(c.validate().is_ok());
        c.families = vec!["bad/family".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn limits_and_endpoints_are_checked() {
        let mut c = base();
        c.max_entries_per_request = 0;
        assert!(c.validate().is_err());
        let mut c = base();
        c.max_mutations_per_request = 100_001;
        assert!(c.validate().is_err());
        for bad in ["nohost", "http://", "a:b", "https://x:1"] {
            let c = base().with_endpoint(bad);
            assert!(c.validate().is_err(), "{bad}");
        }
        let v = base()
            .with_endpoint("http://localhost:9000/")
            .validate()
            .unwrap();
        assert_eq!(v.endpoint, Endpoint::Emulator("localhost:9000".into()));
        assert_eq!(
            v.table_path,
            "projects/my-project/instances/my-instance/tables/my_table.v1"
        );
    }
}
