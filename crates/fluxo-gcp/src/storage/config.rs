//! Configuration of the Cloud Storage sink and source: serde structs with documented defaults, validated
//! into checked types before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

use super::naming::NameTemplate;

/// 256 KiB: Cloud Storage resumable uploads take chunks in multiples of this.
pub const CHUNK_GRANULARITY: u64 = 256 * 1024;
/// 5 GiB: the largest part accepted.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Where objects live, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///absolute/dir`: a directory of the local file system (the embedded default).
    File(PathBuf),
    /// `gs://bucket/optional/prefix`: a Cloud Storage bucket, objects under the prefix.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Prefix inside the bucket without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// `memory://name`: a process-wide in-memory store (tests of pipelines); the same name is the same
    /// store.
    Memory(String),
}

impl Location {
    /// Parses `file:///dir`, `gs://bucket/prefix` or `memory://name`; `field` names the field in errors.
    pub fn parse(url: &str, field: &str) -> Result<Location, ConfigError> {
        if url.is_empty() {
            return Err(ConfigError::invalid(
                field,
                "is required: file:///absolute/dir, gs://bucket/prefix or memory://name",
            ));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ConfigError::invalid(
                    field,
                    format!("'{url}' must name an absolute directory, as in file:///var/data"),
                ));
            }
            return Ok(Location::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket).map_err(|reason| {
                ConfigError::invalid(field, format!("bucket '{bucket}' in '{url}': {reason}"))
            })?;
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|s| s == "." || s == "..") {
                return Err(ConfigError::invalid(
                    field,
                    format!("prefix '{prefix}' must not contain '.' or '..' segments"),
                ));
            }
            return Ok(Location::Gcs {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(name) = url.strip_prefix("memory://") {
            return Ok(Location::Memory(name.trim_matches('/').to_string()));
        }
        let scheme = url.split_once("://").map_or(url, |(s, _)| s);
        Err(ConfigError::invalid(
            field,
            format!("unsupported scheme '{scheme}' in '{url}': use file://, gs:// or memory://"),
        ))
    }
}

/// Checks a bucket name against Cloud Storage's rules: 3-63 characters (up to 222 with dots, each
/// dot-separated part at most 63), lowercase letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit, not an IP address, not starting with `goog` and not containing `google`.
pub fn validate_bucket(name: &str) -> Result<(), String> {
    let max = if name.contains('.') { 222 } else { 63 };
    if name.len() < 3 || name.len() > max {
        return Err(format!(
            "must be 3-{max} characters long (has {})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
    {
        return Err(format!(
            "may contain only lowercase letters, digits, '-', '_' and '.' (found '{c}')"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err("must start and end with a lowercase letter or a digit".into());
    }
    if name.split('.').any(|p| p.len() > 63 || p.is_empty()) {
        return Err("each dot-separated part must be 1-63 characters long".into());
    }
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err("must not be an IP address".into());
    }
    if name.starts_with("goog") || name.contains("google") {
        return Err("must not start with 'goog' or contain 'google'".into());
    }
    Ok(())
}

/// How the elements of a file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    /// Newline-delimited JSON (one JSON value per line), or raw byte lines for byte values (a value with
    /// a newline is rejected). Extension `ndjson`.
    #[default]
    Ndjson,
    /// Exact bytes of each element, framed by a 4-byte big-endian length: binary-safe, newline-safe,
    /// exact. Extension `records`.
    RawRecords,
    /// Exact bytes of each element as its own object, no framing (the object is the element).
    /// Extension `bin` unless the naming says otherwise.
    RawObject,
    /// Apache Parquet, schema and columns supplied in code ([`super::ParquetFormat`]). Extension
    /// `parquet`; compression is Parquet's own (per column), so `compression` must be `none`.
    Parquet,
}

impl FormatKind {
    /// The file extension, without a compression suffix.
    pub fn extension(self) -> &'static str {
        match self {
            FormatKind::Ndjson => "ndjson",
            FormatKind::RawRecords => "records",
            FormatKind::RawObject => "bin",
            FormatKind::Parquet => "parquet",
        }
    }
}

/// Whole-object compression of the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// gzip (RFC 1952); `.gz` is appended to the extension.
    Gzip,
}

/// The content hash in object names (`{hash}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContentHash {
    /// XXH3-128, 32 hex digits: about ten times faster than SHA-256; accidental collisions are
    /// negligible (2^-64 for 2^32 objects of one partition), but it is not collision-resistant against
    /// someone who crafts whole batches on purpose.
    #[default]
    Xxh3_128,
    /// SHA-256, 64 hex digits: collision-resistant; the same digest as `sha256sum` of the
    /// (uncompressed) object, as layouts such as `raw/.../<sha256 of the bytes>.json` expect.
    Sha256,
}

/// How the source decides whether an object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceCompression {
    /// gzip when the name ends in `.gz`, else none.
    #[default]
    Auto,
    /// Never decompress.
    None,
    /// Always gunzip.
    Gzip,
}

/// Where the source takes each element's event time from (a function given in code overrides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventTimeFrom {
    /// The Hive-style partition in the object name (`dt=YYYY-MM-DD`, optional `hour=HH`,
    /// `minute=MM`), the object's last-modified time when the name has none.
    #[default]
    ObjectName,
    /// The object's last-modified time.
    LastModified,
}

/// What the source does with a record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDecodeError {
    /// Stop the run with an error naming the object and record.
    #[default]
    Fail,
    /// Log a warning, count it in the source's `rejected` metric, go on.
    Skip,
}

/// The default object naming template of the sink (see [`NameTemplate`]).
pub const DEFAULT_NAMING: &str =
    "dt={date}/hour={hour}/part-{window_start_ms}-{pane}-{hash16}.{ext}";

/// Cloud Storage (or local directory) sink: one object per (window, pane) of each batch, named
/// deterministically from the window and a hash of the content, so a retried write replaces the object
/// instead of adding a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSinkConfig {
    /// Where to write: `file:///absolute/dir`, `gs://bucket/prefix` or `memory://name`. Required
    /// (default: empty, which fails validation).
    pub url: String,
    /// File layout: `ndjson`, `raw_records`, `raw_object` or `parquet`. Default: `ndjson`.
    pub format: FormatKind,
    /// Whole-object compression: `none` or `gzip`. Default: `none`.
    pub compression: Compression,
    /// gzip level 0-9. Default: 6.
    pub gzip_level: u32,
    /// Object name template relative to the URL's prefix; placeholders `{date}` (YYYY-MM-DD),
    /// `{hour}`, `{minute}`, `{year}`, `{month}`, `{day}`, `{window_start_ms}`, `{window_end_ms}`,
    /// `{pane}`, `{timing}`, `{hash}` (the `content_hash` of the uncompressed content, in hex),
    /// `{hash16}` (its first 16), `{ext}`. Must contain `{hash}` or `{hash16}`. Default:
    /// `dt={date}/hour={hour}/part-{window_start_ms}-{pane}-{hash16}.{ext}`.
    pub naming: String,
    /// The hash of the uncompressed content used in names: `xxh3_128` (32 hex digits) or `sha256` (64).
    /// Default: `xxh3_128`.
    pub content_hash: ContentHash,
    /// Objects of at least this many bytes are uploaded in parts (Cloud Storage resumable upload,
    /// object_store multipart). Default: 8 MiB.
    pub multipart_threshold: u64,
    /// Size of each part of a multipart upload; a multiple of 256 KiB, at most 5 GiB. Default: 8 MiB.
    pub part_size: u64,
    /// Cloud Storage endpoint, for example `http://127.0.0.1:4443` (fake-gcs-server). Default: none,
    /// then `STORAGE_EMULATOR_HOST`, then `https://storage.googleapis.com` with Application Default
    /// Credentials.
    pub endpoint: Option<String>,
    /// Uploads of one write (one per window and pane in the batch) in flight at once. Default: 8.
    pub max_concurrent_uploads: usize,
    /// Time limit of one request (an upload, one part, a listing page, a download), in milliseconds.
    /// Default: 60000.
    pub request_timeout_ms: u64,
}

impl Default for StorageSinkConfig {
    fn default() -> Self {
        StorageSinkConfig {
            url: String::new(),
            format: FormatKind::Ndjson,
            compression: Compression::None,
            gzip_level: 6,
            naming: DEFAULT_NAMING.to_string(),
            content_hash: ContentHash::Xxh3_128,
            multipart_threshold: 8 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            endpoint: None,
            max_concurrent_uploads: 8,
            request_timeout_ms: 60_000,
        }
    }
}

/// Settings of the object store client shared by the sink and the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Explicit Cloud Storage endpoint (else `STORAGE_EMULATOR_HOST`, else Google with ADC).
    pub endpoint: Option<String>,
    /// Multipart threshold in bytes.
    pub multipart_threshold: u64,
    /// Part size in bytes.
    pub part_size: u64,
    /// Time limit of one request.
    pub request_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            endpoint: None,
            multipart_threshold: 8 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A validated [`StorageSinkConfig`].
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Parsed URL.
    pub location: Location,
    /// File layout.
    pub format: FormatKind,
    /// Compression.
    pub compression: Compression,
    /// gzip level.
    pub gzip_level: u32,
    /// Parsed naming template.
    pub naming: NameTemplate,
    /// Content hash.
    pub content_hash: ContentHash,
    /// Client settings.
    pub store: StoreOptions,
    /// Uploads in flight per write.
    pub max_concurrent_uploads: usize,
}

fn validate_endpoint(endpoint: &Option<String>, field: &str) -> Result<(), ConfigError> {
    if let Some(e) = endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= "https://".len() {
            return Err(ConfigError::invalid(
                field,
                format!("'{e}' must be an http:// or https:// URL such as http://127.0.0.1:4443"),
            ));
        }
    }
    Ok(())
}

fn validate_timeout(ms: u64, field: &str) -> Result<Duration, ConfigError> {
    if ms == 0 || ms > 3_600_000 {
        return Err(ConfigError::invalid(
            field,
            format!("{ms} must be between 1 and 3600000 milliseconds"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

impl StorageSinkConfig {
    /// A configuration writing to `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        StorageSinkConfig {
            url: url.into(),
            ..StorageSinkConfig::default()
        }
    }

    /// Checks every field and returns the validated settings, or a one-line error.
    pub fn validate(&self) -> Result<SinkSettings, ConfigError> {
        let location = Location::parse(&self.url, "storage.url")?;
        if self.gzip_level > 9 {
            return Err(ConfigError::invalid(
                "storage.gzip_level",
                format!("{} must be 0-9", self.gzip_level),
            ));
        }
        if self.format == FormatKind::Parquet && self.compression != Compression::None {
            return Err(ConfigError::invalid(
                "storage.compression",
                "must be none for parquet (Parquet compresses its columns itself)",
            ));
        }
        let naming = NameTemplate::parse(&self.naming).map_err(|reason| {
            ConfigError::invalid("storage.naming", format!("'{}': {reason}", self.naming))
        })?;
        if self.part_size < CHUNK_GRANULARITY
            || !self.part_size.is_multiple_of(CHUNK_GRANULARITY)
            || self.part_size > MAX_PART_SIZE
        {
            return Err(ConfigError::invalid(
                "storage.part_size",
                format!(
                    "{} must be a multiple of 262144 (256 KiB) between 256 KiB and 5 GiB",
                    self.part_size
                ),
            ));
        }
        if self.multipart_threshold == 0 {
            return Err(ConfigError::invalid(
                "storage.multipart_threshold",
                "must be at least 1 byte",
            ));
        }
        if self.max_concurrent_uploads == 0 || self.max_concurrent_uploads > 256 {
            return Err(ConfigError::invalid(
                "storage.max_concurrent_uploads",
                format!("{} must be 1-256", self.max_concurrent_uploads),
            ));
        }
        validate_endpoint(&self.endpoint, "storage.endpoint")?;
        let request_timeout =
            validate_timeout(self.request_timeout_ms, "storage.request_timeout_ms")?;
        Ok(SinkSettings {
            location,
            format: self.format,
            compression: self.compression,
            gzip_level: self.gzip_level,
            naming,
            content_hash: self.content_hash,
            store: StoreOptions {
                endpoint: self.endpoint.clone(),
                multipart_threshold: self.multipart_threshold,
                part_size: self.part_size,
                request_timeout,
            },
            max_concurrent_uploads: self.max_concurrent_uploads,
        })
    }
}

/// Bounded Cloud Storage (or local directory) source for replays and backfills: lists the objects under
/// a prefix in name order, reads each one, splits it into records and emits them with an event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSourceConfig {
    /// Where to read: `file:///absolute/dir`, `gs://bucket/prefix` or `memory://name`. Required
    /// (default: empty, which fails validation).
    pub url: String,
    /// Only objects whose name (relative to the URL's prefix) starts with this. Default: empty (all).
    pub prefix: String,
    /// Record layout: `ndjson` (one record per line, empty lines skipped), `raw_records` (4-byte
    /// big-endian length framing) or `raw_object` (the whole object is one record). Default: `ndjson`.
    pub format: FormatKind,
    /// Decompression: `auto` (gzip when the name ends in `.gz`), `none` or `gzip`. Default: `auto`.
    pub compression: SourceCompression,
    /// Event time of each record: `object_name` (Hive partition `dt=`/`hour=`/`minute=` in the name,
    /// else last-modified) or `last_modified`. A function given in code overrides it. Default:
    /// `object_name`.
    pub event_time: EventTimeFrom,
    /// What to do with a record that does not decode: `fail` or `skip`. Default: `fail`.
    pub on_decode_error: OnDecodeError,
    /// Objects downloaded ahead of the one being emitted. Default: 4.
    pub read_ahead: usize,
    /// Largest object read, in bytes (objects are read whole into memory). Default: 1 GiB.
    pub max_object_bytes: u64,
    /// Cloud Storage endpoint (see [`StorageSinkConfig::endpoint`]). Default: none.
    pub endpoint: Option<String>,
    /// Time limit of one request, in milliseconds. Default: 60000.
    pub request_timeout_ms: u64,
}

impl Default for StorageSourceConfig {
    fn default() -> Self {
        StorageSourceConfig {
            url: String::new(),
            prefix: String::new(),
            format: FormatKind::Ndjson,
            compression: SourceCompression::Auto,
            event_time: EventTimeFrom::ObjectName,
            on_decode_error: OnDecodeError::Fail,
            read_ahead: 4,
            max_object_bytes: 1024 * 1024 * 1024,
            endpoint: None,
            request_timeout_ms: 60_000,
        }
    }
}

/// A validated [`StorageSourceConfig`].
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Parsed URL.
    pub location: Location,
    /// Name prefix.
    pub prefix: String,
    /// Record layout.
    pub format: FormatKind,
    /// Decompression.
    pub compression: SourceCompression,
    /// Event time origin.
    pub event_time: EventTimeFrom,
    /// Decode failures.
    pub on_decode_error: OnDecodeError,
    /// Read-ahead.
    pub read_ahead: usize,
    /// Object size limit.
    pub max_object_bytes: u64,
    /// Client settings.
    pub store: StoreOptions,
}

impl StorageSourceConfig {
    /// A configuration reading everything under `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        StorageSourceConfig {
            url: url.into(),
            ..StorageSourceConfig::default()
        }
    }

    /// Checks every field and returns the validated settings, or a one-line error.
    pub fn validate(&self) -> Result<SourceSettings, ConfigError> {
        let location = Location::parse(&self.url, "storage.url")?;
        if self.format == FormatKind::Parquet {
            return Err(ConfigError::invalid(
                "storage.format",
                "the source reads ndjson, raw_records and raw_object (read Parquet with the parquet crate)",
            ));
        }
        if self.prefix.starts_with('/') {
            return Err(ConfigError::invalid(
                "storage.prefix",
                format!("'{}' must be relative (no leading '/')", self.prefix),
            ));
        }
        if self.read_ahead == 0 || self.read_ahead > 64 {
            return Err(ConfigError::invalid(
                "storage.read_ahead",
                format!("{} must be 1-64", self.read_ahead),
            ));
        }
        if self.max_object_bytes == 0 {
            return Err(ConfigError::invalid(
                "storage.max_object_bytes",
                "must be at least 1",
            ));
        }
        validate_endpoint(&self.endpoint, "storage.endpoint")?;
        let request_timeout =
            validate_timeout(self.request_timeout_ms, "storage.request_timeout_ms")?;
        Ok(SourceSettings {
            location,
            prefix: self.prefix.clone(),
            format: self.format,
            compression: self.compression,
            event_time: self.event_time,
            on_decode_error: self.on_decode_error,
            read_ahead: self.read_ahead,
            max_object_bytes: self.max_object_bytes,
            store: StoreOptions {
                endpoint: self.endpoint.clone(),
                request_timeout,
                ..StoreOptions::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket_1", "a.b.c", "0bucket9"] {
            assert!(validate_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            "a b",
            "googlebucket",
            "goog-x",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            Location::parse("gs://bkt/a/b/", "u").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("file:///tmp/x", "u").unwrap(),
            Location::File("/tmp/x".into())
        );
        let e = Location::parse("s3://b/x", "storage.url")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid storage.url: unsupported scheme 's3' in 's3://b/x': use file://, gs:// or memory://"
        );
        let e = Location::parse("gs://Bad_Bucket/x", "storage.url")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowercase"), "{e}");
        assert!(Location::parse("file://rel/dir", "u").is_err());
    }

    #[test]
    fn sink_defaults_and_validation() {
        let c: StorageSinkConfig = serde_json::from_str(r#"{"url":"gs://bkt"}"#).unwrap();
        assert_eq!(c.part_size, 8 * 1024 * 1024);
        assert_eq!(c.naming, DEFAULT_NAMING);
        assert!(c.validate().is_ok());
        assert!(serde_json::from_str::<StorageSinkConfig>(r#"{"urll":"x"}"#).is_err());
        let mut c = StorageSinkConfig::new("gs://bkt");
        c.part_size = 1000;
        assert!(c.validate().unwrap_err().to_string().contains("part_size"));
        let mut c = StorageSinkConfig::new("gs://bkt");
        c.naming = "{date}/x.{ext}".into();
        assert!(c.validate().unwrap_err().to_string().contains("{hash}"));
        let mut c = StorageSinkConfig::new("gs://bkt");
        c.format = FormatKind::Parquet;
        c.compression = Compression::Gzip;
        assert!(c.validate().is_err());
        assert!(StorageSinkConfig::default().validate().is_err());
    }
}
