//! The ingest pipeline: invoice API -> Pub/Sub.
//!
//! ```text
//! HttpSource (pages, checkpoint in Bigtable) -> Split (one message per record, exact bytes)
//!     -> Invoices  -> Pub/Sub topic
//!     -> Dead      -> Pub/Sub dead-letter topic (records above the size limit, pages that cannot be
//!                     delimited or are above the page limit: a bounded prefix, the reason, the size
//!                     and the SHA-256)
//! ```
//!
//! A page's checkpoint is committed only after Pub/Sub acknowledged every message of the page (the
//! page's finalizer is shared by its records), so a crash re-publishes at most the pages after the last
//! commit: duplicates downstream, never gaps. Nothing from the API can make a publish fail for good
//! (which would hold the checkpoint forever): a record is published only when it fits one publish
//! request with its attributes ([`IngestLimits::max_record_bytes`]), every attribute value taken from
//! data is clipped to Pub/Sub's 1,024-byte limit, and a dead letter carries at most
//! [`IngestLimits::dead_letter_prefix_bytes`] of data. A lease in the same Bigtable row keeps a second
//! run from polling while one is running.

pub mod checkpoint;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo::{Data, Metrics, Pipeline, PipelineConfig, RunOptions, ShutdownSignal, SinkConfig};
use fluxo_gcp::bigtable::BigtableSinkConfig;
use fluxo_gcp::pubsub::{
    clip_attribute_value, PubsubOut, PubsubSink, PubsubSinkConfig, MAX_ATTRIBUTES,
    MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_PUBLISH_BYTES,
};
use fluxo_http::{BrokenKind, HttpPage, HttpSource, HttpSourceConfig, Outcome, RunSummary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use checkpoint::BigtableCheckpointStore;

/// Everything a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Name of the source: the checkpoint row (`ingest/<name>`) and the `source` attribute.
    pub source_name: String,
    /// The API poller.
    pub api: HttpSourceConfig,
    /// Topic of the invoices.
    pub topic: PubsubSinkConfig,
    /// Topic of the pages that cannot be delimited.
    pub dead_letter_topic: PubsubSinkConfig,
    /// Bigtable table (with family `c`) of checkpoints and leases.
    pub checkpoint: BigtableSinkConfig,
    /// Batching of the publish steps (default: 1,000 messages, 50 ms, 4 requests in flight).
    pub publish: SinkConfig,
    /// Serve `/metrics`, `/healthz`, `/readyz` here while running.
    pub metrics_addr: Option<SocketAddr>,
    /// Lease duration in seconds (renewed in the background every third of it, through every wait).
    /// Default: 120.
    pub lease_ttl_secs: u64,
    /// Size limits of records and dead letters (defaults when absent).
    #[serde(default)]
    pub limits: IngestLimits,
}

/// Bytes of a publish request kept for one message's attributes: Pub/Sub's own bound for them,
/// [`MAX_ATTRIBUTES`] × ([`MAX_ATTRIBUTE_KEY_BYTES`] + [`MAX_ATTRIBUTE_VALUE_BYTES`]) = 128,000. The
/// messages of ingest carry at most 12 attributes with keys under 16 bytes and values clipped to
/// 1,024 bytes, far below it with their framing; keeping Pub/Sub's whole bound means no attribute
/// added later can make a record that passed [`IngestLimits::max_record_bytes`] overflow its request.
pub const ATTRIBUTE_RESERVE_BYTES: usize =
    MAX_ATTRIBUTES * (MAX_ATTRIBUTE_KEY_BYTES + MAX_ATTRIBUTE_VALUE_BYTES);

/// The largest record a topic whose requests hold `max_bytes_per_request` bytes takes with its
/// attributes: `max_bytes_per_request` − [`ATTRIBUTE_RESERVE_BYTES`]. With Pub/Sub's own limit
/// ([`MAX_PUBLISH_BYTES`], 10,000,000) that is 9,872,000; with the sink's default (9,000,000),
/// 8,872,000.
pub const fn record_limit(max_bytes_per_request: usize) -> usize {
    max_bytes_per_request.saturating_sub(ATTRIBUTE_RESERVE_BYTES)
}

/// The largest [`IngestLimits::max_record_bytes`] any topic configuration can take:
/// [`record_limit`] of [`MAX_PUBLISH_BYTES`].
pub const MAX_RECORD_BYTES: usize = record_limit(MAX_PUBLISH_BYTES);

/// Default of [`IngestLimits::dead_letter_prefix_bytes`]: 64 KiB, enough to read a record's first
/// fields or a page's first records, small enough that thousands of dead letters fit one publish
/// request.
pub const DEFAULT_DEAD_LETTER_PREFIX_BYTES: usize = 64 * 1024;

/// Size limits of what ingest publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    /// Largest record published to the invoices topic, in bytes (1..=[`MAX_RECORD_BYTES`], and at
    /// most [`record_limit`] of the topic's `max_bytes_per_request`). A larger record is not
    /// published there: one dead letter (reason `record_too_large`) takes its place and the
    /// checkpoint moves past it. Default: `None`, the largest the invoices topic takes with any
    /// attributes, [`record_limit`] of `topic.max_bytes_per_request` (8,872,000 with the sink's
    /// default of 9,000,000).
    pub max_record_bytes: Option<usize>,
    /// Bytes of the raw record or page a dead letter carries as data: its first bytes (the attributes
    /// give the whole size and SHA-256), so no input can make a dead letter too large to publish. At
    /// most [`record_limit`] of `dead_letter_topic.max_bytes_per_request`. Default:
    /// [`DEFAULT_DEAD_LETTER_PREFIX_BYTES`] (65,536).
    pub dead_letter_prefix_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_record_bytes: None,
            dead_letter_prefix_bytes: DEFAULT_DEAD_LETTER_PREFIX_BYTES,
        }
    }
}

/// Limits checked against the topics' configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecordLimits {
    /// Largest record published as an invoice, in bytes.
    pub max_record_bytes: usize,
    /// Bytes of raw input a dead letter carries.
    pub dead_letter_prefix_bytes: usize,
}

impl Default for RecordLimits {
    /// The limits with both topics at the sink's default configuration.
    fn default() -> Self {
        let request = PubsubSinkConfig::default().max_bytes_per_request;
        RecordLimits {
            max_record_bytes: record_limit(request),
            dead_letter_prefix_bytes: DEFAULT_DEAD_LETTER_PREFIX_BYTES,
        }
    }
}

/// A size limit that does not fit its topic. One line that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ingest limits.{field}: {reason}")]
pub struct LimitError {
    /// The field.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

impl IngestLimits {
    /// Checks the limits against the topics they publish to: a record at the limit, or a dead letter
    /// of the prefix size, must fit one publish request with its attributes.
    pub fn check(
        &self,
        topic: &PubsubSinkConfig,
        dead_letter_topic: &PubsubSinkConfig,
    ) -> Result<RecordLimits, LimitError> {
        let fits = |field: &'static str, value: usize, t: &PubsubSinkConfig, name: &str| {
            let limit = record_limit(t.max_bytes_per_request);
            if value > limit {
                Err(LimitError {
                    field,
                    reason: format!(
                        "{value} bytes plus {ATTRIBUTE_RESERVE_BYTES} kept for attributes is above \
                         {name}.max_bytes_per_request ({}): lower it to at most {limit} or raise \
                         {name}.max_bytes_per_request (at most {MAX_PUBLISH_BYTES})",
                        t.max_bytes_per_request
                    ),
                })
            } else {
                Ok(value)
            }
        };
        let max_record_bytes = match self.max_record_bytes {
            Some(0) => {
                return Err(LimitError {
                    field: "max_record_bytes",
                    reason: "must be at least 1".into(),
                })
            }
            Some(n) => fits("max_record_bytes", n, topic, "topic")?,
            None => {
                let n = record_limit(topic.max_bytes_per_request);
                if n == 0 {
                    return Err(LimitError {
                        field: "max_record_bytes",
                        reason: format!(
                            "topic.max_bytes_per_request ({}) leaves no room for a record next to \
                             the {ATTRIBUTE_RESERVE_BYTES} bytes kept for attributes: raise it",
                            topic.max_bytes_per_request
                        ),
                    });
                }
                n
            }
        };
        let dead_letter_prefix_bytes = fits(
            "dead_letter_prefix_bytes",
            self.dead_letter_prefix_bytes,
            dead_letter_topic,
            "dead_letter_topic",
        )?;
        Ok(RecordLimits {
            max_record_bytes,
            dead_letter_prefix_bytes,
        })
    }
}

/// The publish batching used by default.
pub fn default_publish() -> SinkConfig {
    SinkConfig {
        max_events: 1_000,
        max_delay: Duration::from_millis(50),
        max_in_flight: 4,
        ..SinkConfig::default()
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The poller's summary (pages, records, retries, checkpoints, outcome).
    pub poll: RunSummary,
    /// Invoice messages published.
    pub published: u64,
    /// Dead-letter messages published.
    pub dead_letters: u64,
    /// Dead letters routed to the dead-letter topic, by reason (`record_too_large`, `page_too_large`,
    /// `page_unreadable`); on a run that did not fail they add up to `dead_letters`.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// The size limits the run applied.
    pub limits: RecordLimits,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// A run that could not start or did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad configuration or unreachable service (one line).
    #[error(transparent)]
    Config(#[from] fluxo_gcp::ConfigError),
    /// Bad API configuration (one line).
    #[error(transparent)]
    Api(#[from] fluxo_http::ConfigError),
    /// Size limits that do not fit their topics (one line).
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The run failed; what was delivered before the failure is committed.
    #[error("{0}")]
    Run(String),
}

/// A record or a dead letter, routed to its topic.
#[derive(Debug, Clone)]
pub enum Routed {
    /// An invoice record (valid or not: validation happens in the invoices pipeline).
    Invoice(PubsubOut),
    /// A record above the size limit, or a page that could not be split into records.
    DeadLetter(PubsubOut),
}

impl Data for Routed {
    fn size_bytes(&self) -> usize {
        match self {
            Routed::Invoice(m) | Routed::DeadLetter(m) => m.size_bytes(),
        }
    }
}

/// Attribute names of the published messages.
/// Labels of the steps the run report and the metrics (`step` label) name; one declaration, used by
/// the graph and by the report.
pub mod steps {
    /// Step label of the sink that publishes invoices to the topic.
    pub const PUBLISH_INVOICES: &str = "PublishInvoices";
    /// Step label of the sink that publishes dead letters to their topic.
    pub const PUBLISH_DEAD_LETTERS: &str = "PublishDeadLetters";
}

pub mod attr {
    /// `NFeID` when the record has a readable one.
    pub const NFE_ID: &str = "nfe_id";
    /// `EmissionDate` exactly as sent, when the record validates.
    pub const EMISSION_DATE: &str = "emission_date";
    /// Content hash (hex) of the record, when it parses.
    pub const CONTENT_HASH: &str = "content_hash";
    /// The source name.
    pub const SOURCE: &str = "source";
    /// The checkpoint position after the record's page (clipped to 1,024 bytes with a
    /// `...[+N bytes]` marker; the checkpoint itself keeps it whole).
    pub const PAGE_CURSOR: &str = "page_cursor";
    /// Set on a record whose `NFeID` already appeared earlier in the same page: the index of that first
    /// record (the invoices pipeline turns it into an `NFE_DUPLICATE_ID` dead letter).
    pub const DUPLICATE_OF: &str = "duplicate_of";
    /// Dead letters: why, as a code (see [`super::reason`]).
    pub const REASON: &str = "reason";
    /// Dead letters: why, in words.
    pub const DETAIL: &str = "detail";
    /// Dead letters: the page URL.
    pub const URL: &str = "url";
    /// Dead letters: the stage that produced it (`ingest`).
    pub const STAGE: &str = "stage";
    /// Dead letters: size in bytes of the whole record or page, when known (a page above the page
    /// limit is not read whole: then only when the server announced its length).
    pub const RAW_BYTES: &str = "raw_bytes";
    /// Dead letters: SHA-256 (hex) of the whole record or page, when it was read whole.
    pub const RAW_SHA256: &str = "raw_sha256";
    /// Dead letters: `true` when the data holds only the first bytes of the record or page.
    pub const TRUNCATED: &str = "truncated";
    /// Dead letters of records: the record's position in its page (0-based).
    pub const RECORD_INDEX: &str = "record_index";
}

/// Reason codes of the dead letters (attribute [`attr::REASON`]).
pub mod reason {
    /// A record above [`super::IngestLimits::max_record_bytes`].
    pub const RECORD_TOO_LARGE: &str = "record_too_large";
    /// A page above the API's `max_page_bytes`, skipped (page numbers, next links).
    pub const PAGE_TOO_LARGE: &str = "page_too_large";
    /// A page that cannot be split into records.
    pub const PAGE_UNREADABLE: &str = "page_unreadable";
}

/// What a dead letter says about its raw input.
struct Raw<'a> {
    /// The bytes held (the whole input, or the first bytes read of a page above the page limit).
    bytes: &'a Bytes,
    /// The input's whole size, when known.
    size: Option<u64>,
    /// Whether `bytes` is the whole input.
    whole: bool,
}

/// One dead letter: the first `prefix` bytes of the raw input as data, the reason, the input's size and
/// SHA-256, and where it came from. Every value taken from data is clipped to Pub/Sub's limit.
fn dead_letter(
    page: &HttpPage,
    source: &str,
    raw: Raw<'_>,
    code: &str,
    detail: &str,
    prefix: usize,
) -> PubsubOut {
    let data = raw.bytes.slice(..raw.bytes.len().min(prefix));
    let truncated = !raw.whole || data.len() < raw.bytes.len();
    let mut m = PubsubOut::new(data)
        .with_attribute(attr::REASON, code)
        .with_clipped_attribute(attr::DETAIL, detail)
        .with_clipped_attribute(attr::URL, page.url.as_ref())
        .with_clipped_attribute(attr::SOURCE, source)
        .with_attribute(attr::STAGE, "ingest")
        .with_clipped_attribute(attr::PAGE_CURSOR, page.position.as_ref())
        .with_attribute(attr::TRUNCATED, truncated.to_string());
    if let Some(n) = raw.size {
        m = m.with_attribute(attr::RAW_BYTES, n.to_string());
    }
    if raw.whole {
        m = m.with_attribute(attr::RAW_SHA256, sha256_hex(raw.bytes));
    }
    m
}

/// Hex SHA-256, as the invoices pipeline's `raw_sha256`.
fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn clip(value: &str) -> String {
    clip_attribute_value(value).into_owned()
}

/// Splits a page into one message per record (exact bytes, no copy) with its attributes. A record
/// above `limits.max_record_bytes` becomes a dead letter (reason `record_too_large`) instead; a page
/// that cannot be split, or that the source emitted as broken, becomes one dead letter. Dead letters
/// carry the first `limits.dead_letter_prefix_bytes` of the raw input.
pub fn page_messages(
    page: HttpPage,
    validator: &nfe::Validator,
    source: &str,
    limits: &RecordLimits,
) -> Vec<Routed> {
    let prefix = limits.dead_letter_prefix_bytes;
    let whole_page = |page: &HttpPage, code: &str, detail: &str| {
        let raw = Raw {
            bytes: &page.records,
            size: Some(page.records.len() as u64),
            whole: true,
        };
        Routed::DeadLetter(dead_letter(page, source, raw, code, detail, prefix))
    };
    if let Some(b) = &page.broken {
        let raw = Raw {
            bytes: &page.records,
            size: b.body_bytes,
            whole: b.kind == BrokenKind::Unreadable,
        };
        let code = match b.kind {
            BrokenKind::Unreadable => reason::PAGE_UNREADABLE,
            BrokenKind::TooLarge => reason::PAGE_TOO_LARGE,
        };
        return vec![Routed::DeadLetter(dead_letter(
            &page, source, raw, code, &b.reason, prefix,
        ))];
    }
    let split = match nfe::split_page(&page.records) {
        Ok(s) => s,
        Err(e) => return vec![whole_page(&page, reason::PAGE_UNREADABLE, &e.to_string())],
    };
    let base = page.records.as_ptr() as usize;
    let cursor = clip(&page.position);
    let source_attr = clip(source);
    split
        .records
        .iter()
        .map(|r| {
            // `r.raw` borrows from `page.records`: slice the shared buffer instead of copying.
            let start = r.raw.as_ptr() as usize - base;
            let data = page.records.slice(start..start + r.raw.len());
            if data.len() > limits.max_record_bytes {
                let detail = format!(
                    "record of {} bytes is above max_record_bytes ({})",
                    data.len(),
                    limits.max_record_bytes
                );
                let raw = Raw {
                    bytes: &data,
                    size: Some(data.len() as u64),
                    whole: true,
                };
                let mut m = dead_letter(
                    &page,
                    source,
                    raw,
                    reason::RECORD_TOO_LARGE,
                    &detail,
                    prefix,
                )
                .with_attribute(attr::RECORD_INDEX, r.index.to_string());
                if let Some(id) = r.nfe_id {
                    m = m.with_attribute(attr::NFE_ID, id.to_string());
                }
                return Routed::DeadLetter(m);
            }
            let mut attributes = HashMap::with_capacity(6);
            attributes.insert(attr::SOURCE.to_string(), source_attr.clone());
            attributes.insert(attr::PAGE_CURSOR.to_string(), cursor.clone());
            if let Some(id) = r.nfe_id {
                attributes.insert(attr::NFE_ID.to_string(), id.to_string());
            }
            if let Some(first) = r.duplicate_of {
                attributes.insert(attr::DUPLICATE_OF.to_string(), first.to_string());
            }
            match validator.validate(r.raw) {
                Ok(v) => {
                    attributes.insert(attr::EMISSION_DATE.to_string(), clip(&v.emission.original));
                    attributes.insert(attr::CONTENT_HASH.to_string(), v.content_hash.to_hex());
                }
                Err(_) => {
                    if let Ok(h) = nfe::content_hash_of(r.raw) {
                        attributes.insert(attr::CONTENT_HASH.to_string(), h.to_hex());
                    }
                }
            }
            Routed::Invoice(PubsubOut {
                data,
                attributes,
                ordering_key: None,
            })
        })
        .collect()
}

/// Counts dead letters by reason and logs each one.
#[derive(Clone, Default)]
struct DeadLetterLog(Arc<Mutex<BTreeMap<String, u64>>>);

impl DeadLetterLog {
    fn note(&self, routed: &[Routed]) {
        for r in routed {
            let Routed::DeadLetter(m) = r else { continue };
            let a = |k: &str| m.attributes.get(k).map_or("", String::as_str);
            tracing::warn!(
                reason = a(attr::REASON),
                detail = a(attr::DETAIL),
                raw_bytes = a(attr::RAW_BYTES),
                nfe_id = a(attr::NFE_ID),
                url = a(attr::URL),
                "dead letter: set aside on the dead-letter topic"
            );
            *self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(a(attr::REASON).to_string())
                .or_default() += 1;
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs one ingest: polls until caught up (or the deadline, the page cap, `shutdown`), publishing every
/// record, then returns the report. Checks the configuration and every service first.
pub async fn run(
    cfg: &IngestConfig,
    shutdown: ShutdownSignal,
) -> Result<IngestReport, IngestError> {
    run_in(cfg, shutdown, Metrics::new(PIPELINE_NAME)).await
}

/// The pipeline name: the `pipeline` label of every series.
pub const PIPELINE_NAME: &str = "ingest";

/// [`run`], registering the run's metrics in `metrics` (`ingest serve` keeps one registry for
/// every run it is asked for, and serves it on its own port) and counting the run in
/// [`metrics::RUNS`] whatever its outcome.
pub async fn run_in(
    cfg: &IngestConfig,
    shutdown: ShutdownSignal,
    metrics: Metrics,
) -> Result<IngestReport, IngestError> {
    let runs = metrics::RunMetrics::new(&metrics);
    let result = run_registered(cfg, shutdown, metrics).await;
    runs.ended(match &result {
        Ok(report) => metrics::outcome_label(&report.poll.outcome),
        Err(_) => "failed",
    });
    result
}

async fn run_registered(
    cfg: &IngestConfig,
    shutdown: ShutdownSignal,
    metrics: Metrics,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let api = cfg.api.validate()?;
    let limits = cfg.limits.check(&cfg.topic, &cfg.dead_letter_topic)?;
    let topic = PubsubSink::<PubsubOut>::connect(&cfg.topic).await?;
    let dead_topic = PubsubSink::<PubsubOut>::connect(&cfg.dead_letter_topic).await?;
    let store = BigtableCheckpointStore::connect(&cfg.checkpoint, &cfg.source_name).await?;
    let validator = nfe::ValidationConfig::default()
        .build()
        .map_err(|e| IngestError::Run(e.to_string()))?;
    let source =
        HttpSource::new(api, store).with_lease_ttl(Duration::from_secs(cfg.lease_ttl_secs.max(3)));
    let summary = source.summary();
    let dead_log = DeadLetterLog::default();
    tracing::info!(
        max_record_bytes = limits.max_record_bytes,
        dead_letter_prefix_bytes = limits.dead_letter_prefix_bytes,
        max_page_bytes = cfg.api.max_page_bytes,
        "size limits"
    );

    // The builder is single-threaded; only the built graph crosses await points.
    let runnable = {
        let p = Pipeline::with_metrics(
            PipelineConfig {
                name: PIPELINE_NAME.into(),
                idle_timeout: None,
                ..PipelineConfig::default()
            },
            metrics,
        );
        let name: Arc<str> = Arc::from(cfg.source_name.as_str());
        let log = dead_log.clone();
        let routed = p
            .read("PollApi", source)
            .flat_map("SplitRecords", move |page: HttpPage| {
                let routed = page_messages(page, &validator, &name, &limits);
                log.note(&routed);
                routed
            });
        routed
            .flat_map("Invoices", |r: Routed| match r {
                Routed::Invoice(m) => Some(m),
                Routed::DeadLetter(_) => None,
            })
            .write(steps::PUBLISH_INVOICES, topic, cfg.publish);
        routed
            .flat_map("DeadLetters", |r: Routed| match r {
                Routed::DeadLetter(m) => Some(m),
                Routed::Invoice(_) => None,
            })
            .write(steps::PUBLISH_DEAD_LETTERS, dead_topic, cfg.publish);
        p.build().map_err(|e| IngestError::Run(e.to_string()))?
    };
    let result = runnable
        .run(RunOptions {
            shutdown,
            metrics_addr: cfg.metrics_addr,
            ..RunOptions::default()
        })
        .await;
    let poll = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(IngestError::Run(match &poll.outcome {
                Outcome::Failed(m) => m.clone(),
                _ => e.to_string(),
            }))
        }
    };
    let report = IngestReport {
        published: report
            .sink(steps::PUBLISH_INVOICES)
            .map_or(0, |s| s.written),
        dead_letters: report
            .sink(steps::PUBLISH_DEAD_LETTERS)
            .map_or(0, |s| s.written),
        dead_letters_by_reason: dead_log.counts(),
        limits,
        poll,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        published = report.published,
        dead_letters = report.dead_letters,
        by_reason = ?report.dead_letters_by_reason,
        "ingest finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo_http::Broken;

    fn validator() -> nfe::Validator {
        nfe::ValidationConfig::default().build().unwrap()
    }

    fn record(id: u64, pad: usize) -> String {
        format!(
            r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0.00,"NFeNumber":{n},"NFeID":{id},"ItemList":[{{"ProductName":"Arroz","Value":10.50,"Quantity":2}}],"Padding":"{p}"}}"#,
            n = 500 + id,
            p = "x".repeat(pad)
        )
    }

    fn page(records: &[String], position: &str) -> HttpPage {
        HttpPage {
            records: Bytes::from(format!("[{}]", records.join(","))),
            count: records.len() as u32,
            page: 0,
            position: Arc::from(position),
            url: Arc::from(format!("http://api.test/invoices/feed?cursor={position}").as_str()),
            broken: None,
        }
    }

    fn limits(max_record_bytes: usize) -> RecordLimits {
        RecordLimits {
            max_record_bytes,
            dead_letter_prefix_bytes: 1_000,
        }
    }

    /// Every attribute value within Pub/Sub's limit, and all of them within the reserve.
    fn assert_attributes_fit(m: &PubsubOut) {
        assert!(m.attributes.len() <= 12, "{:?}", m.attributes.keys());
        let mut bytes = 16;
        for (k, v) in &m.attributes {
            assert!(k.len() < 16, "{k}");
            assert!(
                v.len() <= MAX_ATTRIBUTE_VALUE_BYTES,
                "{k}: {} bytes",
                v.len()
            );
            bytes += k.len() + v.len() + 8;
        }
        assert!(bytes <= ATTRIBUTE_RESERVE_BYTES / 8, "{bytes}");
    }

    #[test]
    fn the_default_record_limit_fits_one_request_of_the_default_sink() {
        assert_eq!(ATTRIBUTE_RESERVE_BYTES, 128_000);
        assert_eq!(MAX_RECORD_BYTES, 9_872_000);
        let l = IngestLimits::default()
            .check(&PubsubSinkConfig::default(), &PubsubSinkConfig::default())
            .unwrap();
        assert_eq!(l, RecordLimits::default());
        assert_eq!(l.max_record_bytes, 8_872_000);
        assert_eq!(l.dead_letter_prefix_bytes, 65_536);
    }

    #[test]
    fn limits_that_do_not_fit_their_topic_are_one_line_errors() {
        let t = PubsubSinkConfig::default();
        let check = |max_record_bytes, dead_letter_prefix_bytes| {
            IngestLimits {
                max_record_bytes,
                dead_letter_prefix_bytes,
            }
            .check(&t, &t)
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            check(Some(8_872_001), 1).unwrap_err(),
            "invalid ingest limits.max_record_bytes: 8872001 bytes plus 128000 kept for attributes \
             is above topic.max_bytes_per_request (9000000): lower it to at most 8872000 or raise \
             topic.max_bytes_per_request (at most 10000000)"
        );
        assert_eq!(
            check(Some(0), 1).unwrap_err(),
            "invalid ingest limits.max_record_bytes: must be at least 1"
        );
        assert!(check(Some(8_872_000), 8_872_000).is_ok());
        assert!(check(None, 0).is_ok());
        assert!(check(None, 8_872_001)
            .unwrap_err()
            .starts_with("invalid ingest limits.dead_letter_prefix_bytes: 8872001 bytes"));
        // A topic allowing whole requests takes records up to MAX_RECORD_BYTES.
        let big = PubsubSinkConfig {
            max_bytes_per_request: MAX_PUBLISH_BYTES,
            ..PubsubSinkConfig::default()
        };
        let l = IngestLimits::default().check(&big, &t).unwrap();
        assert_eq!(l.max_record_bytes, MAX_RECORD_BYTES);
        let tiny = PubsubSinkConfig {
            max_bytes_per_request: 100_000,
            ..PubsubSinkConfig::default()
        };
        assert!(IngestLimits::default()
            .check(&tiny, &t)
            .unwrap_err()
            .to_string()
            .contains("leaves no room for a record"));
        let json: IngestLimits = serde_json::from_str(r#"{"max_record_bytes":1000}"#).unwrap();
        assert_eq!(json.dead_letter_prefix_bytes, 65_536);
        assert!(serde_json::from_str::<IngestLimits>(r#"{"max_record_byte":1}"#).is_err());
    }

    #[test]
    fn an_oversize_record_is_a_dead_letter_and_its_neighbours_are_published() {
        let recs = vec![record(1, 0), record(2, 5_000), record(3, 0)];
        let big = recs[1].clone();
        let p = page(&recs, "after-3");
        let out = page_messages(p, &validator(), "api", &limits(2_000));
        assert_eq!(out.len(), 3);
        let Routed::Invoice(first) = &out[0] else {
            panic!("{:?}", out[0])
        };
        assert_eq!(first.data, recs[0].as_bytes());
        assert_eq!(first.attributes[attr::NFE_ID], "1");
        assert!(matches!(&out[2], Routed::Invoice(m) if m.data == recs[2].as_bytes()));
        let Routed::DeadLetter(d) = &out[1] else {
            panic!("{:?}", out[1])
        };
        assert_eq!(d.data, big.as_bytes()[..1_000]);
        let a = &d.attributes;
        assert_eq!(a[attr::REASON], "record_too_large");
        assert_eq!(
            a[attr::DETAIL],
            format!(
                "record of {} bytes is above max_record_bytes (2000)",
                big.len()
            )
        );
        assert_eq!(a[attr::RAW_BYTES], big.len().to_string());
        assert_eq!(a[attr::RAW_SHA256], format!("{:x}", Sha256::digest(&big)));
        assert_eq!(a[attr::TRUNCATED], "true");
        assert_eq!(a[attr::NFE_ID], "2");
        assert_eq!(a[attr::RECORD_INDEX], "1");
        assert_eq!(a[attr::STAGE], "ingest");
        assert_eq!(a[attr::SOURCE], "api");
        assert_eq!(a[attr::PAGE_CURSOR], "after-3");
        assert!(a[attr::URL].ends_with("cursor=after-3"));
        // At the limit exactly, a record is published.
        let at = page(&[record(4, 0)], "after-4");
        let n = at.records.len() - 2;
        assert!(matches!(
            &page_messages(at, &validator(), "api", &limits(n))[0],
            Routed::Invoice(_)
        ));
    }

    #[test]
    fn attribute_values_from_data_are_clipped() {
        let cursor = format!("after-2~{}", "y".repeat(5_000));
        let recs = vec![record(1, 0), record(2, 3_000)];
        let source = "s".repeat(2_000);
        let out = page_messages(page(&recs, &cursor), &validator(), &source, &limits(2_000));
        for r in &out {
            let (Routed::Invoice(m) | Routed::DeadLetter(m)) = r;
            assert_attributes_fit(m);
            assert!(m.attributes[attr::PAGE_CURSOR].ends_with(" bytes]"));
            assert!(cursor.starts_with(
                m.attributes[attr::PAGE_CURSOR]
                    .split("...[+")
                    .next()
                    .unwrap()
            ));
        }
        let Routed::DeadLetter(d) = &out[1] else {
            panic!()
        };
        assert!(d.attributes[attr::URL].len() <= MAX_ATTRIBUTE_VALUE_BYTES);
    }

    #[test]
    fn a_huge_unreadable_page_is_a_bounded_dead_letter() {
        let mut body = vec![b'['; 1];
        body.resize(50 * 1024 * 1024, b'x');
        let body = Bytes::from(body);
        let p = HttpPage {
            records: body.clone(),
            count: 0,
            page: 3,
            position: Arc::from("4"),
            url: Arc::from("http://api.test/invoices?page=3"),
            broken: Some(Broken {
                kind: BrokenKind::Unreadable,
                reason: Arc::from("the body is not structurally valid JSON: unclosed bracket"),
                body_bytes: Some(body.len() as u64),
            }),
        };
        let out = page_messages(p, &validator(), "api", &RecordLimits::default());
        let [Routed::DeadLetter(d)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(d.data.len(), DEFAULT_DEAD_LETTER_PREFIX_BYTES);
        assert_eq!(d.data, body.slice(..DEFAULT_DEAD_LETTER_PREFIX_BYTES));
        let a = &d.attributes;
        assert_eq!(a[attr::REASON], "page_unreadable");
        assert!(a[attr::DETAIL].contains("not structurally valid"));
        assert_eq!(a[attr::RAW_BYTES], (50 * 1024 * 1024).to_string());
        assert_eq!(a[attr::RAW_SHA256], format!("{:x}", Sha256::digest(&body)));
        assert_eq!(a[attr::TRUNCATED], "true");
        assert_eq!(a[attr::PAGE_CURSOR], "4");
        assert!(!a.contains_key(attr::NFE_ID));
        assert_attributes_fit(d);
    }

    #[test]
    fn an_oversize_page_is_a_dead_letter_without_a_hash() {
        let read = Bytes::from(vec![b'['; 3_000]);
        let p = HttpPage {
            records: read.clone(),
            count: 0,
            page: 1,
            position: Arc::from("3"),
            url: Arc::from("http://api.test/invoices?page=2"),
            broken: Some(Broken {
                kind: BrokenKind::TooLarge,
                reason: Arc::from("the page body is larger than max_page_bytes (3000 bytes)"),
                body_bytes: None,
            }),
        };
        let out = page_messages(p, &validator(), "api", &limits(10));
        let [Routed::DeadLetter(d)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(d.data, read.slice(..1_000));
        let a = &d.attributes;
        assert_eq!(a[attr::REASON], "page_too_large");
        assert_eq!(a[attr::TRUNCATED], "true");
        assert!(!a.contains_key(attr::RAW_SHA256));
        assert!(!a.contains_key(attr::RAW_BYTES));
        // An unsplittable page the source could delimit (not an array) is whole when small.
        let p = page(&[], "x");
        let p = HttpPage {
            records: Bytes::from_static(b"{\"not\":\"an array\"}"),
            ..p
        };
        let out = page_messages(p, &validator(), "api", &limits(10));
        let [Routed::DeadLetter(d)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(d.data, &b"{\"not\":\"an array\"}"[..]);
        assert_eq!(d.attributes[attr::TRUNCATED], "false");
        assert_eq!(d.attributes[attr::REASON], "page_unreadable");
    }
}
