//! The ingest pipeline: invoice API -> Pub/Sub.
//!
//! ```text
//! HttpSource (pages, checkpoint in Bigtable) -> Split (one message per record, exact bytes)
//!     -> Invoices  -> Pub/Sub topic
//!     -> Broken    -> Pub/Sub dead-letter topic (pages that cannot be delimited, with the reason)
//! ```
//!
//! A page's checkpoint is committed only after Pub/Sub acknowledged every record of the page (the
//! page's finalizer is shared by its records), so a crash re-publishes at most the pages after the last
//! commit: duplicates downstream, never gaps. A lease in the same Bigtable row keeps a second run from
//! polling while one is running.

pub mod checkpoint;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxo::{Data, Pipeline, PipelineConfig, RunOptions, ShutdownSignal, SinkConfig};
use fluxo_gcp::bigtable::BigtableSinkConfig;
use fluxo_gcp::pubsub::{PubsubOut, PubsubSink, PubsubSinkConfig};
use fluxo_http::{HttpPage, HttpSource, HttpSourceConfig, Outcome, RunSummary};
use serde::{Deserialize, Serialize};

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
    /// Lease duration in seconds (renewed every third of it). Default: 120.
    pub lease_ttl_secs: u64,
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
    /// The run failed; what was delivered before the failure is committed.
    #[error("{0}")]
    Run(String),
}

/// A record or a broken page, routed to its topic.
#[derive(Debug, Clone)]
pub enum Routed {
    /// An invoice record (valid or not: validation happens in the invoices pipeline).
    Invoice(PubsubOut),
    /// A page that could not be split into records.
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
pub mod attr {
    /// `NFeID` when the record has a readable one.
    pub const NFE_ID: &str = "nfe_id";
    /// `EmissionDate` exactly as sent, when the record validates.
    pub const EMISSION_DATE: &str = "emission_date";
    /// Content hash (hex) of the record, when it parses.
    pub const CONTENT_HASH: &str = "content_hash";
    /// The source name.
    pub const SOURCE: &str = "source";
    /// The checkpoint position after the record's page.
    pub const PAGE_CURSOR: &str = "page_cursor";
    /// Set on a record whose `NFeID` already appeared earlier in the same page: the index of that first
    /// record (the invoices pipeline turns it into an `NFE_DUPLICATE_ID` dead letter).
    pub const DUPLICATE_OF: &str = "duplicate_of";
    /// Dead letters: why the page could not be split.
    pub const REASON: &str = "reason";
    /// Dead letters: the page URL.
    pub const URL: &str = "url";
    /// Dead letters: the stage that produced it (`ingest`).
    pub const STAGE: &str = "stage";
}

/// Splits a page into one message per record (exact bytes, no copy) with its attributes; a page that
/// cannot be split becomes one dead-letter message with its raw bytes and the reason.
pub fn page_messages(page: HttpPage, validator: &nfe::Validator, source: &str) -> Vec<Routed> {
    let dead = |reason: String| {
        Routed::DeadLetter(
            PubsubOut::new(page.records.clone())
                .with_attribute(attr::REASON, reason)
                .with_attribute(attr::URL, page.url.to_string())
                .with_attribute(attr::SOURCE, source)
                .with_attribute(attr::STAGE, "ingest")
                .with_attribute(attr::PAGE_CURSOR, page.position.to_string()),
        )
    };
    if let Some(broken) = &page.broken {
        return vec![dead(broken.reason.to_string())];
    }
    let split = match nfe::split_page(&page.records) {
        Ok(s) => s,
        Err(e) => return vec![dead(e.to_string())],
    };
    let base = page.records.as_ptr() as usize;
    split
        .records
        .iter()
        .map(|r| {
            // `r.raw` borrows from `page.records`: slice the shared buffer instead of copying.
            let start = r.raw.as_ptr() as usize - base;
            let data = page.records.slice(start..start + r.raw.len());
            let mut attributes = HashMap::with_capacity(6);
            attributes.insert(attr::SOURCE.to_string(), source.to_string());
            attributes.insert(attr::PAGE_CURSOR.to_string(), page.position.to_string());
            if let Some(id) = r.nfe_id {
                attributes.insert(attr::NFE_ID.to_string(), id.to_string());
            }
            if let Some(first) = r.duplicate_of {
                attributes.insert(attr::DUPLICATE_OF.to_string(), first.to_string());
            }
            match validator.validate(r.raw) {
                Ok(v) => {
                    attributes.insert(attr::EMISSION_DATE.to_string(), v.emission.original.clone());
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

/// Runs one ingest: polls until caught up (or the deadline, the page cap, `shutdown`), publishing every
/// record, then returns the report. Checks the configuration and every service first.
pub async fn run(
    cfg: &IngestConfig,
    shutdown: ShutdownSignal,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let api = cfg.api.validate()?;
    let topic = PubsubSink::<PubsubOut>::connect(&cfg.topic).await?;
    let dead_topic = PubsubSink::<PubsubOut>::connect(&cfg.dead_letter_topic).await?;
    let store = BigtableCheckpointStore::connect(&cfg.checkpoint, &cfg.source_name).await?;
    let validator = nfe::ValidationConfig::default()
        .build()
        .map_err(|e| IngestError::Run(e.to_string()))?;
    let source =
        HttpSource::new(api, store).with_lease_ttl(Duration::from_secs(cfg.lease_ttl_secs.max(3)));
    let summary = source.summary();

    // The builder is single-threaded; only the built graph crosses await points.
    let runnable = {
        let p = Pipeline::with_config(PipelineConfig {
            name: "ingest".into(),
            idle_timeout: None,
            ..PipelineConfig::default()
        });
        let name: Arc<str> = Arc::from(cfg.source_name.as_str());
        let routed = p
            .read("PollApi", source)
            .flat_map("SplitRecords", move |page: HttpPage| {
                page_messages(page, &validator, &name)
            });
        routed
            .flat_map("Invoices", |r: Routed| match r {
                Routed::Invoice(m) => Some(m),
                Routed::DeadLetter(_) => None,
            })
            .write("PublishInvoices", topic, cfg.publish);
        routed
            .flat_map("BrokenPages", |r: Routed| match r {
                Routed::DeadLetter(m) => Some(m),
                Routed::Invoice(_) => None,
            })
            .write("PublishDeadLetters", dead_topic, cfg.publish);
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
    Ok(IngestReport {
        published: report.sink("PublishInvoices").map_or(0, |s| s.written),
        dead_letters: report.sink("PublishDeadLetters").map_or(0, |s| s.written),
        poll,
        seconds: started.elapsed().as_secs_f64(),
    })
}
