//! The invoices pipeline: Pub/Sub -> parse -> validate -> enrich -> Bigtable, BigQuery and Cloud Storage,
//! the replay of the raw archive through the same steps, provisioning, and the read-back tools.
//!
//! - [`config`]: the configuration file (`config/invoices.toml`), one profile per environment.
//! - [`graph`]: the steps after the source, shared by [`run_stream`] and [`run_replay`].
//! - [`query`]: reads invoices back from Bigtable (by id, by emission-date range) and counts what every
//!   store holds ([`query::inventory`]).
//!
//! Delivery: a message is acknowledged only after Bigtable, BigQuery and the archives stored everything
//! derived from it (or its dead letter was stored); a crash redelivers, and every write is idempotent or
//! de-duplicable (see `docs/invoices.md`).

pub mod bq_rows;
pub mod config;
pub mod graph;
pub mod latency;
pub mod metrics;
pub mod query;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bq_rows::BigQueryLayout;
use fluxo::{Pipeline, PipelineConfig, RunOptions, RunReport, Shutdown, ShutdownSignal};
use fluxo_gcp::bigquery::{
    BigQueryAdmin, BigQuerySink, BigQuerySinkConfig, ClientConfig, TableOptions, TimePartitioning,
};
use fluxo_gcp::bigtable::{AdminClient, BigtableSink, BigtableSinkConfig, FamilySpec, TableSpec};
use fluxo_gcp::pubsub::{
    Endpoint, PubsubClient, PubsubOut, PubsubSink, PubsubSinkConfig, PubsubSource,
    PubsubSourceConfig, SubscriptionOptions,
};
use fluxo_gcp::storage::{
    FormatKind, Location, StorageSink, StorageSinkConfig, StorageSource, StorageSourceConfig,
    Store, StoreOptions,
};
use serde::Serialize;

use crate::config::Profile;
use crate::graph::{ArchivedMessage, GraphSettings, ObjectBytes, Sinks, Validate};
use crate::latency::{Histogram, LatencySink};
use crate::metrics::DeadLetterCodes;

/// A run that could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration file.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A connector could not start (bad name, unreachable endpoint): one line.
    #[error(transparent)]
    Connector(#[from] fluxo_gcp::ConfigError),
    /// Provisioning failed.
    #[error("provisioning failed: {0}")]
    Provision(String),
    /// The pipeline failed while running; what was acknowledged before is stored.
    #[error(transparent)]
    Pipeline(#[from] fluxo::PipelineError),
    /// Reading back failed.
    #[error("{0}")]
    Read(String),
}

/// Options of a run that are not resource names.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Written into every row's ingestion metadata (`worker`). Default: none.
    pub worker: Option<String>,
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<SocketAddr>,
    /// Streaming only: stop (and drain) once no message arrived for this long and nothing is in
    /// flight. Default: none (run until SIGTERM).
    pub exit_when_idle: Option<Duration>,
    /// Streaming only: stop (and drain) once this many messages were acknowledged (benchmarks, backfills
    /// of a known size). Default: none.
    pub stop_after: Option<u64>,
    /// Log a progress line this often. Default: 2 s.
    pub progress_every: Duration,
    /// Longest drain after a stop before the rest is abandoned (and redelivered). Default: 25 s.
    pub drain_timeout: Duration,
    /// `/healthz` fails once messages are in flight and none was acknowledged or nacked for this
    /// long (`fluxo::RunOptions::stall_timeout`); `None` never. Default: 10 minutes, above BigQuery's
    /// `resolve_timeout_ms`, the longest a sink retries one request.
    pub stall_timeout: Option<Duration>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            worker: None,
            metrics_addr: None,
            exit_when_idle: None,
            stop_after: None,
            progress_every: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(25),
            stall_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Elements observed.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        let ms = |q| h.quantile(q).map(|us| us as f64 / 1000.0);
        Latency {
            count: h.count(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// What a run did (the JSON printed on stdout).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `stream` or `replay`.
    pub mode: &'static str,
    /// Messages read from the source (redeliveries included).
    pub received: u64,
    /// Valid invoices processed.
    pub invoices: u64,
    /// Dead letters produced.
    pub dead_letters: u64,
    /// Dead letters by error code (a record with several codes counts under each).
    pub dead_letters_by_code: BTreeMap<String, u64>,
    /// Bigtable rows written (two per invoice).
    pub bigtable_rows: u64,
    /// BigQuery rows written (one per invoice plus one per item).
    pub bigquery_rows: u64,
    /// Raw records archived within their window's lateness.
    pub raw_archived: u64,
    /// Raw records archived under `raw-late/`.
    pub raw_late: u64,
    /// Invoice lines written to the processed archive.
    pub processed_lines: u64,
    /// Messages acknowledged / negatively acknowledged by the source.
    pub acked: u64,
    /// See `acked`.
    pub nacked: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// `received / seconds`.
    pub messages_per_sec: f64,
    /// Publish time to Bigtable write acknowledged, per Bigtable row.
    pub publish_to_bigtable: Latency,
    /// The engine's full report (every step, sink and buffer).
    pub engine: RunReport,
}

/// The Bigtable data configuration of a profile (sink, query tool, benchmarks).
pub fn bigtable_settings(p: &Profile) -> BigtableSinkConfig {
    BigtableSinkConfig {
        project: p.project.clone(),
        instance: p.bigtable_instance.clone(),
        table: p.bigtable_table.clone(),
        families: nfe::bigtable::FAMILIES
            .iter()
            .map(|f| f.name.to_string())
            .collect(),
        ..BigtableSinkConfig::default()
    }
}

/// The BigQuery sink configuration of a profile (sink and benchmarks).
pub fn bigquery_config(p: &Profile) -> BigQuerySinkConfig {
    BigQuerySinkConfig {
        project: p.project.clone(),
        dataset: p.bigquery_dataset.clone(),
        tables: vec![
            nfe::bigquery::INVOICES.name.to_string(),
            nfe::bigquery::INVOICE_ITEMS.name.to_string(),
        ],
        append_timeout_ms: p.tuning.bigquery_append_timeout_ms,
        max_bytes_per_request: p.tuning.bigquery_request_bytes,
        ..BigQuerySinkConfig::default()
    }
}

fn archive_sink_config(p: &Profile, naming: String) -> StorageSinkConfig {
    StorageSinkConfig {
        naming,
        ..StorageSinkConfig::new(p.archive_url.clone())
    }
}

/// Creates every resource of the profile, idempotently: the topics, the subscription (with the
/// dead-letter policy), the Bigtable table and families, the BigQuery dataset, tables and views
/// (`invoices_current`, `invoice_items_current`: created or replaced), the bucket (or directory) of
/// the archive.
pub async fn provision(p: &Profile) -> Result<(), Error> {
    let prov = |what: &str, e: &dyn std::fmt::Display| Error::Provision(format!("{what}: {e}"));
    let client = PubsubClient::connect(Endpoint::pubsub(None)?, &p.project).await?;
    for topic in [&p.topic, &p.dead_letter_topic] {
        match client.create_topic(topic).await {
            Ok(()) => tracing::info!(%topic, "topic created"),
            Err(e) if e.code() == tonic::Code::AlreadyExists => {}
            Err(e) => return Err(prov(&format!("topic {topic}"), &e.message())),
        }
    }
    let options = SubscriptionOptions {
        ack_deadline_secs: p.tuning.ack_deadline_secs as i32,
        dead_letter: Some((p.dead_letter_topic.clone(), p.max_delivery_attempts)),
        enable_message_ordering: false,
    };
    match client
        .create_subscription(&p.subscription, &p.topic, options)
        .await
    {
        Ok(()) => tracing::info!(subscription = %p.subscription, "subscription created"),
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => {
            return Err(prov(
                &format!("subscription {}", p.subscription),
                &e.message(),
            ))
        }
    }

    // Everything on the dead-letter topic (the pipeline's dead letters, and messages Pub/Sub forwards
    // after `max_delivery_attempts`) is kept by this subscription until someone reads it.
    let dead_letter_sub = p.dead_letter_subscription();
    match client
        .create_subscription(
            &dead_letter_sub,
            &p.dead_letter_topic,
            SubscriptionOptions {
                ack_deadline_secs: 60,
                ..SubscriptionOptions::default()
            },
        )
        .await
    {
        Ok(()) => {
            tracing::info!(subscription = %dead_letter_sub, "dead-letter subscription created")
        }
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => {
            return Err(prov(
                &format!("subscription {dead_letter_sub}"),
                &e.message(),
            ))
        }
    }

    let bt = bigtable_settings(p).validate()?;
    let admin = AdminClient::connect(&bt).await?;
    admin
        .provision_table(
            &p.bigtable_table,
            &TableSpec {
                families: nfe::bigtable::FAMILIES
                    .iter()
                    .map(|f| FamilySpec::max_versions(f.name, f.max_versions))
                    .collect(),
            },
        )
        .await
        .map_err(|e| prov(&format!("Bigtable table {}", p.bigtable_table), &e))?;

    let bq = BigQueryAdmin::connect(&p.project, &ClientConfig::default()).await?;
    bq.create_dataset(&p.bigquery_dataset, None)
        .await
        .map_err(|e| prov(&format!("BigQuery dataset {}", p.bigquery_dataset), &e))?;
    for spec in [nfe::bigquery::INVOICES, nfe::bigquery::INVOICE_ITEMS] {
        let options = TableOptions {
            time_partitioning: Some(TimePartitioning::day(spec.partition_field)),
            clustering: spec.clustering.iter().map(|c| c.to_string()).collect(),
            description: None,
        };
        bq.create_table(&p.bigquery_dataset, spec.name, spec.schema_json, &options)
            .await
            .map_err(|e| prov(&format!("BigQuery table {}", spec.name), &e))?;
    }
    // The query surface: one row per invoice and per line, whatever duplicates the tables hold
    // (docs/bigquery.md). `CREATE OR REPLACE VIEW` through `jobs.query` creates the view or
    // replaces its definition, on BigQuery and on bqemulator alike (`tables.insert` with a `view`
    // works on both too, but leaves an existing, older definition in place). A view whose query is
    // already the one wanted (up to white space: e.g. created by Terraform from infra/sql/) is left
    // untouched. In creation order: the items view reads the invoices view.
    for view in nfe::bigquery::VIEWS {
        let existing = bq
            .view_query(&p.bigquery_dataset, view.name)
            .await
            .map_err(|e| prov(&format!("BigQuery view {}", view.name), &e))?;
        let wanted = view.query_for(&p.project, &p.bigquery_dataset);
        if view_is_current(existing.as_deref(), &wanted) {
            tracing::info!(view = view.name, "BigQuery view up to date");
            continue;
        }
        bq.query(&view.create_or_replace(&p.project, &p.bigquery_dataset))
            .await
            .map_err(|e| prov(&format!("BigQuery view {}", view.name), &e))?;
        tracing::info!(view = view.name, "BigQuery view created or replaced");
    }

    let location = Location::parse(&p.archive_url, "archive_url")?;
    if let Location::File(dir) = &location {
        std::fs::create_dir_all(dir)
            .map_err(|e| prov(&format!("directory {}", dir.display()), &e))?;
    }
    let store = Store::open(&location, StoreOptions::default()).await?;
    store
        .create_bucket(&p.project)
        .await
        .map_err(|e| prov(&format!("bucket of {}", p.archive_url), &e))?;
    Ok(())
}

/// Whether an existing view's query (`None`: no view, or a service that does not report it, as
/// bqemulator) is `wanted`, up to white space.
fn view_is_current(existing: Option<&str>, wanted: &str) -> bool {
    existing.is_some_and(|q| q.split_whitespace().eq(wanted.split_whitespace()))
}

/// Opens every sink of the graph (each checks its resource exists and answers: one-line errors).
async fn open_sinks(
    p: &Profile,
    with_archives: bool,
    latency: Arc<Histogram>,
) -> Result<Sinks, Error> {
    let bigtable = BigtableSink::connect(&bigtable_settings(p)).await?;
    let bigquery = BigQuerySink::connect(&bigquery_config(p)).await?;
    let bigquery_layout = BigQueryLayout::new(&bigquery).map_err(|e| {
        Error::Connector(fluxo_gcp::ConfigError::invalid(
            "bigquery.tables",
            format!("{e}; run `invoices provision` to create the tables from the schema files"),
        ))
    })?;
    let raw = if with_archives {
        let mk = |prefix: &str| {
            let mut c = archive_sink_config(
                p,
                format!("{prefix}/dt={{date}}/hour={{hour}}/part-{{window_start_ms}}-{{pane}}-{{hash16}}.{{ext}}"),
            );
            c.compression = fluxo_gcp::storage::Compression::Gzip;
            c
        };
        let on_time = StorageSink::<ArchivedMessage>::json(&mk(graph::RAW_PREFIX))?
            .open()
            .await?;
        let late = StorageSink::<ArchivedMessage>::json(&mk(graph::RAW_LATE_PREFIX))?
            .open()
            .await?;
        Some((on_time, late))
    } else {
        None
    };
    let processed = if with_archives && p.tuning.processed_archive {
        let mut c = archive_sink_config(
            p,
            format!(
                "{}/dt={{date}}/hour={{hour}}/part-{{window_start_ms}}-{{pane}}-{{hash16}}.{{ext}}",
                graph::PROCESSED_PREFIX
            ),
        );
        c.format = FormatKind::Parquet;
        Some(
            StorageSink::with_format(&c, graph::processed_format()?)?
                .open()
                .await?,
        )
    } else {
        None
    };
    let mut dead = archive_sink_config(p, fluxo_gcp::storage::DEFAULT_NAMING.to_string());
    dead.format = FormatKind::RawObject;
    let dead_letter_objects = StorageSink::<ObjectBytes>::bytes(&dead)?
        .naming(graph::dead_letter_object_name)
        .open()
        .await?;
    let dead_letter_topic = PubsubSink::<PubsubOut>::connect(&PubsubSinkConfig {
        project: Some(p.project.clone()),
        topic: p.dead_letter_topic.clone(),
        ..PubsubSinkConfig::default()
    })
    .await?;
    Ok(Sinks {
        bigtable: LatencySink::reporting(bigtable, latency),
        bigquery,
        bigquery_layout,
        raw,
        processed,
        dead_letter_objects,
        dead_letter_topic,
    })
}

fn graph_settings(p: &Profile, worker: Option<String>) -> Result<GraphSettings, Error> {
    let validator = p.validation.build().map_err(|e| {
        Error::Config(config::ConfigError::Invalid {
            field: "validation",
            value: e.to_string(),
            reason: "see docs/validation.md",
        })
    })?;
    let t = &p.tuning;
    Ok(GraphSettings {
        validate: Validate::new(
            nfe::Intake::new(validator, Some(p.failed_deliveries_guard())),
            worker,
            Some(env!("CARGO_PKG_VERSION").to_string()),
        ),
        parallelism: t.threads(),
        layout: p.layout,
        raw_window: t.raw_window(),
        allowed_lateness: t.allowed_lateness(),
        bigtable_batch: t.bigtable_batch(),
        bigquery_batch: t.bigquery_batch(),
        archive_batch: t.archive_batch(),
        dead_letter_batch: t.dead_letter_batch(),
        archive_url: p.archive_url.clone(),
    })
}

fn pipeline() -> Pipeline {
    Pipeline::with_config(PipelineConfig {
        name: "invoices".into(),
        ..PipelineConfig::default()
    })
}

fn report(
    mode: &'static str,
    engine: RunReport,
    dead_by_code: BTreeMap<String, u64>,
    latency: &Histogram,
    started: Instant,
) -> Report {
    let step = |l: &str| engine.step(l).cloned();
    let written = |l: &str| engine.sink(l).map_or(0, |s| s.written);
    let source = engine.sources.first().cloned();
    let seconds = started.elapsed().as_secs_f64();
    let received = source.as_ref().map_or(0, |s| s.emitted);
    Report {
        mode,
        received,
        invoices: step(graph::steps::VALIDATE).map_or(0, |s| s.sent),
        dead_letters: step(graph::steps::VALIDATE).map_or(0, |s| s.errors),
        dead_letters_by_code: dead_by_code,
        bigtable_rows: written(graph::steps::BIGTABLE),
        bigquery_rows: written(graph::steps::BIGQUERY),
        raw_archived: written(graph::steps::RAW_ARCHIVE),
        raw_late: written(graph::steps::RAW_ARCHIVE_LATE),
        processed_lines: written(graph::steps::PROCESSED_ARCHIVE),
        acked: source.as_ref().map_or(0, |s| s.acked),
        nacked: source.as_ref().map_or(0, |s| s.nacked),
        seconds,
        messages_per_sec: received as f64 / seconds.max(1e-9),
        publish_to_bigtable: Latency::of(latency),
        engine,
    }
}

/// Runs the streaming pipeline on the profile's subscription until `shutdown` fires (SIGTERM), or until
/// it has been idle for `exit_when_idle`; then drains and returns the report.
pub async fn run_stream(
    p: &Profile,
    settings: &RunSettings,
    shutdown: ShutdownSignal,
) -> Result<Report, Error> {
    let started = Instant::now();
    let t = &p.tuning;
    let source = PubsubSource::connect(&PubsubSourceConfig {
        project: Some(p.project.clone()),
        subscription: p.subscription.clone(),
        mode: t.receive_mode,
        concurrent_pulls: t.concurrent_pulls,
        max_outstanding_messages: t.max_outstanding_messages,
        max_outstanding_bytes: t.max_outstanding_bytes,
        ack_deadline_secs: t.ack_deadline_secs,
        ..PubsubSourceConfig::default()
    })
    .await?;
    let stats = source.stats();
    let latency = Arc::new(Histogram::default());
    let sinks = open_sinks(p, true, latency.clone()).await?;
    let gs = graph_settings(p, settings.worker.clone())?;

    // Built in a block so that the (single-threaded) graph builder is gone before the first await: the
    // returned future stays `Send`.
    let (runnable, codes) = {
        let p_ = pipeline();
        let codes = DeadLetterCodes::new(&p_.metrics());
        let messages = p_.read("Pubsub", source);
        graph::build(&messages, sinks, &gs, codes.clone());
        (p_.build()?, codes)
    };

    let stop = Shutdown::new();
    let run_signal = stop.signal();
    let watcher = {
        let idle_after = settings.exit_when_idle;
        let stop_after = settings.stop_after;
        let every = settings.progress_every;
        let latency = latency.clone();
        tokio::spawn(async move {
            let mut last_received = 0;
            let mut last_change = Instant::now();
            let mut last_log = Instant::now();
            let mut last_logged = 0;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => { stop.trigger(); return; }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                let received = stats.received();
                if received != last_received {
                    last_received = received;
                    last_change = Instant::now();
                }
                if last_log.elapsed() >= every {
                    let rate = (received - last_logged) as f64 / last_log.elapsed().as_secs_f64();
                    let lat = Latency::of(&latency);
                    tracing::info!(
                        received,
                        acked = stats.acked(),
                        outstanding = stats.outstanding_messages(),
                        per_sec = rate.round(),
                        p50_ms = lat.p50_ms.unwrap_or(0.0),
                        "progress"
                    );
                    last_log = Instant::now();
                    last_logged = received;
                }
                if stop_after.is_some_and(|n| stats.acked() >= n) {
                    tracing::info!(
                        acked = stats.acked(),
                        "acknowledged the requested count: draining"
                    );
                    stop.trigger();
                    return;
                }
                if let Some(idle) = idle_after {
                    if last_change.elapsed() >= idle && stats.outstanding_messages() == 0 {
                        tracing::info!(
                            idle_secs = idle.as_secs_f64(),
                            "no message for the idle period: draining"
                        );
                        stop.trigger();
                        return;
                    }
                }
            }
        })
    };
    let engine = runnable
        .run(RunOptions {
            shutdown: run_signal,
            drain_timeout: settings.drain_timeout,
            metrics_addr: settings.metrics_addr,
            stall_timeout: settings.stall_timeout,
        })
        .await;
    watcher.abort();
    let engine = engine?;
    let by_code = codes.snapshot();
    Ok(report("stream", engine, by_code, &latency, started))
}

/// Replays the raw archive (`raw/` and `raw-late/`, or only objects under `prefix` when given) through the
/// same steps into Bigtable, BigQuery and the dead letters; the archives are not written again. The
/// rows are the streaming run's rows: same keys, cells, timestamps and insert ids.
pub async fn run_replay(
    p: &Profile,
    prefix: Option<&str>,
    settings: &RunSettings,
    shutdown: ShutdownSignal,
) -> Result<Report, Error> {
    let started = Instant::now();
    let source_config = StorageSourceConfig {
        prefix: prefix.unwrap_or(graph::RAW_PREFIX).to_string(),
        ..StorageSourceConfig::new(p.archive_url.clone())
    };
    // Lines are read as exact bytes and decoded by the parallel `Validate` step
    // (`graph::ValidateArchived`), not by the source task.
    let source = StorageSource::raw(&source_config)?.open().await?;
    let latency = Arc::new(Histogram::default());
    let sinks = open_sinks(p, false, latency.clone()).await?;
    let gs = graph_settings(p, settings.worker.clone())?;
    let (runnable, codes) = {
        let p_ = pipeline();
        let codes = DeadLetterCodes::new(&p_.metrics());
        let lines = p_.read("Archive", source);
        graph::build_replay(&lines, sinks, &gs, codes.clone());
        (p_.build()?, codes)
    };
    let engine = runnable
        .run(RunOptions {
            shutdown,
            drain_timeout: settings.drain_timeout,
            metrics_addr: settings.metrics_addr,
            stall_timeout: settings.stall_timeout,
        })
        .await?;
    let by_code = codes.snapshot();
    Ok(report("replay", engine, by_code, &latency, started))
}

#[cfg(test)]
mod tests {
    use super::view_is_current;

    /// The views Terraform creates (infra/sql/*.sql through `trimspace(templatefile(...))`) are the
    /// ones `provision` wants, so provisioning after a Terraform apply leaves them untouched.
    #[test]
    fn views_made_by_terraform_are_left_alone() {
        for view in nfe::bigquery::VIEWS {
            let path = format!(
                "{}/../../infra/sql/{}.sql",
                env!("CARGO_MANIFEST_DIR"),
                view.name
            );
            let template = std::fs::read_to_string(&path).unwrap();
            let rendered = template
                .replace("${project}", "acme-nfe")
                .replace("${dataset}", "nfe");
            let wanted = view.query_for("acme-nfe", "nfe");
            assert!(view_is_current(Some(rendered.trim()), &wanted), "{path}");
            assert!(!view_is_current(
                Some(&rendered.replace("nfe_id", "id")),
                &wanted
            ));
        }
        assert!(!view_is_current(None, "SELECT 1"));
        assert!(view_is_current(Some("SELECT\n  1 "), "SELECT 1"));
        assert!(!view_is_current(Some("SELECT 2"), "SELECT 1"));
    }
}
