//! The configuration file: resource names per profile (`local`, `gcp`, ...) and tuning knobs with
//! documented defaults. Reference: `docs/invoices.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fluxo::SinkConfig;
use fluxo_gcp::pubsub::ReceiveMode;
use serde::{Deserialize, Serialize};

/// The file shipped with the project (`config/invoices.toml`), used when no `--config` is given.
pub const BUILTIN: &str = include_str!("../../../config/invoices.toml");

/// A configuration that cannot be used: one line that names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// Path given.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// Path given.
        path: String,
        /// The parser's message, on one line.
        reason: String,
    },
    /// The profile is not in the file.
    #[error("profile '{profile}' is not in {path} (profiles there: {known})")]
    UnknownProfile {
        /// Profile asked for.
        profile: String,
        /// Path of the file.
        path: String,
        /// Profiles in the file.
        known: String,
    },
    /// A value is out of range.
    #[error("invalid config: {field} = {value}: {reason}")]
    Invalid {
        /// Key.
        field: &'static str,
        /// Value given.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
}

/// The whole file: `[profiles.<name>]` tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
}

/// Resource names of one environment, plus tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Google Cloud project of every resource.
    pub project: String,
    /// Topic the `ingest` pipeline publishes invoices to (provisioning creates it).
    pub topic: String,
    /// Subscription the workers share.
    pub subscription: String,
    /// Topic of the dead letters (malformed records, and messages Pub/Sub gave up on).
    pub dead_letter_topic: String,
    /// Bigtable instance.
    pub bigtable_instance: String,
    /// Bigtable table of invoices and the emission-date index. Default `invoices`.
    #[serde(default = "default_table")]
    pub bigtable_table: String,
    /// BigQuery dataset holding `invoices` and `invoice_items`.
    pub bigquery_dataset: String,
    /// Root of the Cloud Storage archive (`gs://bucket[/prefix]`, or `file:///dir`): `raw/`,
    /// `raw-late/`, `processed/` and `dead-letter/` live under it.
    pub archive_url: String,
    /// Subscription on the dead-letter topic, created at provisioning so that nothing published or
    /// forwarded there is dropped; `invoices dead-letters --subscription` peeks at it. Default:
    /// `<dead_letter_topic>-sub`.
    #[serde(default)]
    pub dead_letter_subscription: Option<String>,
    /// Deliveries of a message before Pub/Sub moves it to the dead-letter topic (5..=100), set on
    /// the subscription at provisioning. Default 10.
    #[serde(default = "default_attempts")]
    pub max_delivery_attempts: i32,
    /// Poison-message guard: a message whose delivery count (Pub/Sub's, or this worker's count of
    /// its failed deliveries) is above this is written as an `NFE_DELIVERY_ATTEMPTS_EXCEEDED` dead
    /// letter and acknowledged instead of being processed again. Below `max_delivery_attempts`, so
    /// the pipeline acts before Pub/Sub forwards the bare message. Default: `max_delivery_attempts -
    /// 1` (9).
    #[serde(default)]
    pub max_failed_deliveries: Option<u32>,
    /// Tuning; every key has a default.
    #[serde(default)]
    pub tuning: Tuning,
    /// Record validation limits (`nfe::ValidationConfig`); every key has a default.
    #[serde(default)]
    pub validation: nfe::ValidationConfig,
    /// Bigtable layout (`index_buckets`); fixed for the life of a table. Default 16 buckets.
    #[serde(default)]
    pub layout: nfe::BigtableLayout,
}

fn default_table() -> String {
    nfe::bigtable::TABLE.to_string()
}

fn default_attempts() -> i32 {
    10
}

/// Tuning knobs. Defaults are what the benchmarks in `docs/benchmarks.md` ran with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Batches validated at once (threads of the validate step). Default 0: the number of cores.
    pub parallelism: usize,
    /// Width of the raw archive's event-time windows (publish time), in seconds. Default 3,600.
    pub raw_window_secs: u64,
    /// How long after its window closed a raw record is still written to `raw/`; later ones go to
    /// `raw-late/`. Seconds. Default 3,600.
    pub allowed_lateness_secs: u64,
    /// How the worker receives: `auto` (default: `streaming_pull` on Google, as Google recommends
    /// for high-throughput subscribers; `pull` on the emulator, measured faster there), `pull` or
    /// `streaming_pull`.
    pub receive_mode: ReceiveMode,
    /// Unary `Pull` requests outstanding at once (or streams, in `streaming_pull` mode). Default 2.
    pub concurrent_pulls: usize,
    /// Messages received and not yet acknowledged (flow control). Default 20,000.
    pub max_outstanding_messages: usize,
    /// Bytes of message data received and not yet acknowledged (flow control), at least 1 MiB. A
    /// message grows many times over in the worker (a 990-item invoice of 80 kB of JSON becomes its
    /// parsed invoice, 990 BigQuery rows and 990 archive lines), so with large invoices this, not the
    /// message count, bounds the worker's memory: 2,000 invoices of 990 items peaked at 524 MiB with
    /// 100 MiB and at 392 MiB with 25 MiB, at the same throughput (`docs/benchmarks.md`). Default
    /// 26,214,400 (25 MiB).
    pub max_outstanding_bytes: usize,
    /// Ack deadline the source keeps extending for messages in flight, 10..=600 seconds: after a crash,
    /// the messages the worker held are redelivered this long after its last extension. Default 60.
    pub ack_deadline_secs: u32,
    /// Rows per Bigtable `MutateRows` batch of the pipeline (two rows per invoice). Default 1,000.
    pub bigtable_batch_rows: usize,
    /// BigQuery rows per sink batch (one per invoice plus one per item). Default 4,000 (measured
    /// faster than 2,000 against bqemulator, `docs/benchmarks.md`).
    pub bigquery_batch_rows: usize,
    /// Deadline of one BigQuery `AppendRows` answer, in milliseconds; an append without an answer is
    /// sent again at the same offset (written once either way). Default 20,000.
    pub bigquery_append_timeout_ms: u64,
    /// Bytes of serialized rows per BigQuery `AppendRows` request (1,024..=9,000,000; the API allows 10 MB
    /// per request). A row larger than this is refused (its message becomes an `NFE_SINK_REJECTED` dead
    /// letter). Default 5,000,000.
    pub bigquery_request_bytes: usize,
    /// Longest wait before a partly filled sink batch is written, in milliseconds. Default 100.
    pub max_batch_delay_ms: u64,
    /// Longest wait before a partly filled archive object (raw, processed) is written, in
    /// milliseconds: larger objects, later acknowledgements. Default 2,000.
    pub archive_delay_ms: u64,
    /// Write the processed (Parquet) archive. Default true.
    pub processed_archive: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            parallelism: 0,
            raw_window_secs: 3_600,
            allowed_lateness_secs: 3_600,
            receive_mode: ReceiveMode::Auto,
            concurrent_pulls: 2,
            max_outstanding_messages: 20_000,
            max_outstanding_bytes: 25 * 1024 * 1024,
            ack_deadline_secs: 60,
            bigtable_batch_rows: 1_000,
            bigquery_batch_rows: 4_000,
            bigquery_append_timeout_ms: 20_000,
            bigquery_request_bytes: 5_000_000,
            max_batch_delay_ms: 100,
            archive_delay_ms: 2_000,
            processed_archive: true,
        }
    }
}

/// The batching of one sink step of the pipeline: at most `max_events` elements or 16 MiB (as
/// estimated) per batch, `delay_ms` at most for a batch to fill, `in_flight` requests at once.
fn sink_config(max_events: usize, delay_ms: u64, in_flight: usize) -> SinkConfig {
    SinkConfig {
        max_events,
        max_bytes: 16 * 1024 * 1024,
        max_delay: Duration::from_millis(delay_ms),
        max_in_flight: in_flight,
        ..SinkConfig::default()
    }
}

impl Tuning {
    /// Batching of the Bigtable sink (8 requests in flight).
    pub fn bigtable_batch(&self) -> SinkConfig {
        sink_config(self.bigtable_batch_rows, self.max_batch_delay_ms, 8)
    }

    /// Batching of the BigQuery sink (4 requests in flight).
    pub fn bigquery_batch(&self) -> SinkConfig {
        sink_config(self.bigquery_batch_rows, self.max_batch_delay_ms, 4)
    }

    /// Batching of the archive sinks (raw and processed): large objects, `archive_delay_ms`.
    pub fn archive_batch(&self) -> SinkConfig {
        sink_config(20_000, self.archive_delay_ms, 4)
    }

    /// Batching of the dead-letter sinks.
    pub fn dead_letter_batch(&self) -> SinkConfig {
        sink_config(500, self.max_batch_delay_ms, 4)
    }

    /// Threads of the validate step.
    pub fn threads(&self) -> usize {
        if self.parallelism == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.parallelism
        }
    }

    /// The raw archive's window width.
    pub fn raw_window(&self) -> Duration {
        Duration::from_secs(self.raw_window_secs)
    }

    /// The allowed lateness of the raw archive.
    pub fn allowed_lateness(&self) -> Duration {
        Duration::from_secs(self.allowed_lateness_secs)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl ConfigFile {
    /// Parses TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            reason: one_line(&e.to_string()),
        })
    }

    /// Reads a file, or the built-in one when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<(ConfigFile, String), ConfigError> {
        match path {
            None => Ok((
                ConfigFile::parse(BUILTIN, "config/invoices.toml (built in)")?,
                "config/invoices.toml (built in)".to_string(),
            )),
            Some(p) => {
                let shown = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                Ok((ConfigFile::parse(&text, &shown)?, shown))
            }
        }
    }

    /// The named profile, checked.
    pub fn profile(&self, name: &str, path: &str) -> Result<Profile, ConfigError> {
        self.profile_with(name, path, &Overrides::default())
    }

    /// The named profile with `overrides` applied, then checked.
    pub fn profile_with(
        &self,
        name: &str,
        path: &str,
        overrides: &Overrides,
    ) -> Result<Profile, ConfigError> {
        let mut p = self
            .profiles
            .get(name)
            .ok_or_else(|| ConfigError::UnknownProfile {
                profile: name.to_string(),
                path: path.to_string(),
                known: self.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
            })?
            .clone();
        if let Some(project) = &overrides.project {
            p.project.clone_from(project);
        }
        if let Some(url) = &overrides.archive_url {
            p.archive_url.clone_from(url);
        }
        p.check()?;
        Ok(p)
    }
}

/// Values that replace a profile's own, given on the command line or in the environment
/// (`--project` / `INVOICES_PROJECT`, `--archive-url` / `INVOICES_ARCHIVE_URL`): the names that
/// differ between Google Cloud projects, so one file serves every project (the Kubernetes overlays
/// set them per environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `project`.
    pub project: Option<String>,
    /// Replaces `archive_url`.
    pub archive_url: Option<String>,
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}

impl Profile {
    /// The dead-letter topic's subscription (see [`Profile::dead_letter_subscription`] field).
    pub fn dead_letter_subscription(&self) -> String {
        self.dead_letter_subscription
            .clone()
            .unwrap_or_else(|| format!("{}-sub", self.dead_letter_topic))
    }

    /// The poison-message guard's delivery count (see the `max_failed_deliveries` field).
    pub fn failed_deliveries_guard(&self) -> u32 {
        self.max_failed_deliveries
            .unwrap_or_else(|| (self.max_delivery_attempts.max(2) - 1) as u32)
    }

    /// Checks what the connectors do not check themselves (they validate names when they start).
    pub fn check(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("project", &self.project),
            ("topic", &self.topic),
            ("subscription", &self.subscription),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("bigtable_instance", &self.bigtable_instance),
            ("bigtable_table", &self.bigtable_table),
            ("bigquery_dataset", &self.bigquery_dataset),
            ("archive_url", &self.archive_url),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(field, "\"\"", "must not be empty"));
            }
        }
        if !(5..=100).contains(&self.max_delivery_attempts) {
            return Err(invalid(
                "max_delivery_attempts",
                self.max_delivery_attempts,
                "must be 5..=100 (Pub/Sub's limits)",
            ));
        }
        if let Some(n) = self.max_failed_deliveries {
            if n == 0 || i64::from(n) >= i64::from(self.max_delivery_attempts) {
                return Err(invalid(
                    "max_failed_deliveries",
                    n,
                    "must be 1..max_delivery_attempts (the pipeline must act before Pub/Sub forwards the message)",
                ));
            }
        }
        if self
            .dead_letter_subscription
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(invalid(
                "dead_letter_subscription",
                "\"\"",
                "must not be empty",
            ));
        }
        let t = &self.tuning;
        if t.raw_window_secs == 0 || t.raw_window_secs > 86_400 || 86_400 % t.raw_window_secs != 0 {
            return Err(invalid(
                "tuning.raw_window_secs",
                t.raw_window_secs,
                "must divide a day (60, 300, 900, 3600, ...)",
            ));
        }
        if t.allowed_lateness_secs > 7 * 86_400 {
            return Err(invalid(
                "tuning.allowed_lateness_secs",
                t.allowed_lateness_secs,
                "must be at most 604800 (one week)",
            ));
        }
        if t.parallelism > 256 {
            return Err(invalid(
                "tuning.parallelism",
                t.parallelism,
                "must be 0..=256",
            ));
        }
        if t.concurrent_pulls == 0 || t.concurrent_pulls > 64 {
            return Err(invalid(
                "tuning.concurrent_pulls",
                t.concurrent_pulls,
                "must be 1..=64",
            ));
        }
        if t.max_outstanding_messages < 1_000 {
            return Err(invalid(
                "tuning.max_outstanding_messages",
                t.max_outstanding_messages,
                "must be at least 1000 (one full Pull)",
            ));
        }
        if t.max_outstanding_bytes < 1024 * 1024 {
            return Err(invalid(
                "tuning.max_outstanding_bytes",
                t.max_outstanding_bytes,
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !(10..=600).contains(&t.ack_deadline_secs) {
            return Err(invalid(
                "tuning.ack_deadline_secs",
                t.ack_deadline_secs,
                "must be 10..=600 (Pub/Sub's limits)",
            ));
        }
        for (field, v) in [
            ("tuning.bigtable_batch_rows", t.bigtable_batch_rows),
            ("tuning.bigquery_batch_rows", t.bigquery_batch_rows),
        ] {
            if v == 0 || v > 100_000 {
                return Err(invalid(field, v, "must be 1..=100000"));
            }
        }
        if !(1_024..=9_000_000).contains(&t.bigquery_request_bytes) {
            return Err(invalid(
                "tuning.bigquery_request_bytes",
                t.bigquery_request_bytes,
                "must be 1024..=9000000 (AppendRows allows 10 MB per request)",
            ));
        }
        if !(100..=600_000).contains(&t.bigquery_append_timeout_ms) {
            return Err(invalid(
                "tuning.bigquery_append_timeout_ms",
                t.bigquery_append_timeout_ms,
                "must be 100..=600000",
            ));
        }
        if t.max_batch_delay_ms == 0 || t.archive_delay_ms == 0 {
            return Err(invalid(
                "tuning.max_batch_delay_ms / archive_delay_ms",
                format!("{} / {}", t.max_batch_delay_ms, t.archive_delay_ms),
                "must be positive",
            ));
        }
        self.validation
            .build()
            .map_err(|e| invalid("validation", e, "see docs/validation.md"))?;
        self.layout
            .checked()
            .map_err(|e| invalid("layout.index_buckets", e.0, "must be 1..=256"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_has_valid_local_and_gcp_profiles() {
        let (file, path) = ConfigFile::load(None).unwrap();
        let local = file.profile("local", &path).unwrap();
        assert_eq!(local.bigtable_table, "invoices");
        assert_eq!(local.tuning, Tuning::default());
        assert_eq!(local.max_delivery_attempts, 10);
        assert_eq!(local.failed_deliveries_guard(), 9);
        assert_eq!(local.dead_letter_subscription(), "invoices-dead-letter-sub");
        file.profile("gcp", &path).unwrap();
        let err = file.profile("prod", &path).unwrap_err().to_string();
        assert_eq!(
            err,
            "profile 'prod' is not in config/invoices.toml (built in) (profiles there: gcp, local)"
        );
    }

    #[test]
    fn overrides_replace_the_project_and_archive_and_are_checked() {
        let (file, path) = ConfigFile::load(None).unwrap();
        let gcp = file.profile("gcp", &path).unwrap();
        let overrides = Overrides {
            project: Some("acme-nfe".into()),
            archive_url: Some("gs://acme-nfe-nfe-archive".into()),
        };
        let p = file.profile_with("gcp", &path, &overrides).unwrap();
        assert_eq!(p.project, "acme-nfe");
        assert_eq!(p.archive_url, "gs://acme-nfe-nfe-archive");
        assert_eq!(p.subscription, gcp.subscription);
        assert_eq!(
            file.profile_with("gcp", &path, &Overrides::default())
                .unwrap(),
            gcp
        );
        let empty = Overrides {
            project: Some(" ".into()),
            archive_url: None,
        };
        assert_eq!(
            file.profile_with("gcp", &path, &empty)
                .unwrap_err()
                .to_string(),
            "invalid config: project = \"\": must not be empty"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let base = BUILTIN.replace("[profiles.gcp]", "[profiles.other]");
        let typo = base.replace("archive_url = \"gs://nfe-archive\"", "archiv_url = \"x\"");
        let err = ConfigFile::parse(&typo, "f.toml").unwrap_err().to_string();
        assert!(err.starts_with("invalid config file f.toml: "), "{err}");
        assert!(err.contains("archiv_url"), "{err}");
        assert!(!err.contains('\n'));

        let bad = format!("{base}\n[profiles.local.tuning]\nraw_window_secs = 7\n");
        let file = ConfigFile::parse(&bad, "f.toml").unwrap();
        assert_eq!(
            file.profile("local", "f.toml").unwrap_err().to_string(),
            "invalid config: tuning.raw_window_secs = 7: must divide a day (60, 300, 900, 3600, ...)"
        );
        let small = format!("{base}\n[profiles.local.tuning]\nmax_outstanding_bytes = 1048575\n");
        let file = ConfigFile::parse(&small, "f.toml").unwrap();
        assert_eq!(
            file.profile("local", "f.toml").unwrap_err().to_string(),
            "invalid config: tuning.max_outstanding_bytes = 1048575: must be at least 1048576 (1 MiB)"
        );
        let guard = base.replace(
            "dead_letter_subscription = \"invoices-dead-letter-sub\"\nbigtable_instance = \"local-instance\"",
            "dead_letter_subscription = \"invoices-dead-letter-sub\"\nmax_failed_deliveries = 10\nbigtable_instance = \"local-instance\"",
        );
        assert_ne!(guard, base);
        let file = ConfigFile::parse(&guard, "f.toml").unwrap();
        assert_eq!(
            file.profile("local", "f.toml").unwrap_err().to_string(),
            "invalid config: max_failed_deliveries = 10: must be 1..max_delivery_attempts (the pipeline must act before Pub/Sub forwards the message)"
        );
        let zone = format!("{base}\n[profiles.local.validation]\ntime_zone = \"Mars/Base\"\n");
        let file = ConfigFile::parse(&zone, "f.toml").unwrap();
        assert!(file
            .profile("local", "f.toml")
            .unwrap_err()
            .to_string()
            .contains("Mars/Base"));
    }
}
