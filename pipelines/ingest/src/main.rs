//! `ingest`: polls the invoice API and publishes every invoice to Pub/Sub.
//!
//! `ingest run` polls until caught up and exits (a Kubernetes CronJob); `ingest serve` waits for
//! `POST /run` (Cloud Scheduler calling Cloud Run). See `docs/ingest.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fluxo::ShutdownSignal;
use fluxo_gcp::bigtable::{AdminClient, BigtableSinkConfig, FamilySpec, TableSpec};
use fluxo_gcp::pubsub::{PubsubClient, PubsubSinkConfig};
use fluxo_http::{Auth, HttpSourceConfig, Outcome, Pagination};
use ingest::{default_publish, IngestConfig, IngestLimits, IngestReport};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Polls the invoice API and publishes each invoice to Pub/Sub with its exact bytes; \
the checkpoint (in Bigtable) moves only after Pub/Sub acknowledged every record of a page."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll until caught up (or the deadline / page cap), then exit: 0 when every page read was
    /// published and committed, or when another run holds the lease; 1 otherwise.
    Run(Opts),
    /// Serve `POST /run` (one run at a time; answers with the run's report as JSON) and `GET /healthz`.
    Serve {
        /// Address to listen on. Default: `0.0.0.0:$PORT` when `PORT` is set (Cloud Run sets it), else
        /// `0.0.0.0:8080`.
        #[arg(long, env = "INGEST_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        opts: Opts,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Style {
    /// `{"items":[...],"next_cursor":..,"has_more":..}`; cursor checkpoint.
    Cursor,
    /// Array body, `Link: <...>; rel="next"`.
    NextLink,
    /// Array body, `?page=N`.
    PageNumber,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthKind {
    /// `Authorization: Bearer $TOKEN_ENV`.
    Bearer,
    /// `X-API-Key: $TOKEN_ENV`.
    ApiKey,
    /// No credential.
    None,
}

#[derive(Debug, Clone, Args)]
struct Opts {
    /// A JSON file with the whole configuration (IngestConfig); replaces the flags below.
    #[arg(long, env = "INGEST_CONFIG")]
    config: Option<PathBuf>,
    /// URL of the API's first page.
    #[arg(
        long,
        env = "INGEST_API_URL",
        default_value = "http://127.0.0.1:8080/invoices/feed"
    )]
    api_url: String,
    /// Pagination style of the API.
    #[arg(long, value_enum, default_value = "cursor")]
    pagination: Style,
    /// Records per page.
    #[arg(long, default_value_t = 500)]
    page_size: u64,
    /// Query parameter of the page size (default: `limit` for cursor pagination, else `page_size`).
    #[arg(long)]
    page_size_param: Option<String>,
    /// How requests authenticate.
    #[arg(long, value_enum, default_value = "bearer")]
    auth: AuthKind,
    /// Environment variable that holds the API token or key (never logged).
    #[arg(long, default_value = "INVOICE_API_TOKEN")]
    token_env: String,
    /// Google Cloud project.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT", default_value = "local-project")]
    project: String,
    /// Topic of the invoices.
    #[arg(long, env = "INGEST_TOPIC", default_value = "invoices")]
    topic: String,
    /// Topic of the dead letters: records above --max-record-bytes, pages that cannot be split into
    /// records or are above --max-page-bytes.
    #[arg(
        long,
        env = "INGEST_DEAD_LETTER_TOPIC",
        default_value = "invoices-dead-letter"
    )]
    dead_letter_topic: String,
    /// Bigtable instance of the checkpoint table.
    #[arg(long, env = "BIGTABLE_INSTANCE", default_value = "local-instance")]
    bigtable_instance: String,
    /// Bigtable table of checkpoints and leases (family `c`).
    #[arg(long, default_value = "ingest_checkpoints")]
    checkpoint_table: String,
    /// Source name: the checkpoint row and the `source` attribute.
    #[arg(long, default_value = "invoice-api")]
    source_name: String,
    /// Seconds after which no page is requested; the run then drains and commits. Stays under Cloud
    /// Scheduler's 30-minute attempt limit by default.
    #[arg(long, default_value_t = 1_500)]
    deadline_secs: u64,
    /// Most pages per run.
    #[arg(long)]
    max_pages: Option<u64>,
    /// Lease duration in seconds (renewed in the background every third of it, through every wait).
    #[arg(long, default_value_t = 120)]
    lease_ttl_secs: u64,
    /// Largest page body read from the API, in bytes (1,024 to 1 GiB). A larger page is skipped as a
    /// dead letter with page-number or next-link pagination; with a cursor it fails the run.
    #[arg(long, default_value_t = fluxo_http::DEFAULT_MAX_PAGE_BYTES)]
    max_page_bytes: u64,
    /// Largest record published to the invoices topic, in bytes; a larger one becomes a dead letter.
    /// Default: the largest the topic takes with its attributes (8,872,000).
    #[arg(long)]
    max_record_bytes: Option<usize>,
    /// Bytes of the raw record or page a dead letter carries as data (its first bytes).
    #[arg(long, default_value_t = ingest::DEFAULT_DEAD_LETTER_PREFIX_BYTES)]
    dead_letter_prefix_bytes: usize,
    /// Serve Prometheus metrics on this address while running (`serve` also serves them at
    /// /metrics on its own port, for every run).
    #[arg(long, env = "INGEST_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Create the topics and the checkpoint table when missing (local stacks; on GCP, Terraform does).
    #[arg(long)]
    provision: bool,
    /// Log as JSON lines (the default on Kubernetes).
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

impl Opts {
    fn to_config(&self) -> anyhow::Result<IngestConfig> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| {
                format!("{} is not a valid ingest configuration", path.display())
            });
        }
        let (pagination, size_param) = match self.pagination {
            Style::Cursor => (Pagination::default(), "limit"),
            Style::NextLink => (Pagination::NextLink, "page_size"),
            Style::PageNumber => (
                Pagination::PageNumber {
                    page_param: "page".into(),
                    first_page: 1,
                },
                "page_size",
            ),
        };
        let auth = match self.auth {
            AuthKind::Bearer => Auth::Bearer {
                token_env: self.token_env.clone(),
            },
            AuthKind::ApiKey => Auth::ApiKey {
                header: "X-API-Key".into(),
                key_env: self.token_env.clone(),
            },
            AuthKind::None => Auth::None,
        };
        let topic = |t: &str| PubsubSinkConfig {
            project: Some(self.project.clone()),
            topic: t.to_string(),
            ..PubsubSinkConfig::default()
        };
        Ok(IngestConfig {
            source_name: self.source_name.clone(),
            api: HttpSourceConfig {
                url: self.api_url.clone(),
                pagination,
                page_size: Some(self.page_size),
                page_size_param: self
                    .page_size_param
                    .clone()
                    .unwrap_or_else(|| size_param.into()),
                auth,
                max_pages: self.max_pages,
                deadline_secs: self.deadline_secs,
                max_page_bytes: self.max_page_bytes,
                ..HttpSourceConfig::default()
            },
            topic: topic(&self.topic),
            dead_letter_topic: topic(&self.dead_letter_topic),
            checkpoint: BigtableSinkConfig {
                project: self.project.clone(),
                instance: self.bigtable_instance.clone(),
                table: self.checkpoint_table.clone(),
                families: vec![ingest::checkpoint::FAMILY.into()],
                ..BigtableSinkConfig::default()
            },
            publish: default_publish(),
            metrics_addr: self.metrics_addr,
            lease_ttl_secs: self.lease_ttl_secs,
            limits: IngestLimits {
                max_record_bytes: self.max_record_bytes,
                dead_letter_prefix_bytes: self.dead_letter_prefix_bytes,
            },
        })
    }
}

/// Creates the topics and the checkpoint table when missing.
async fn provision(cfg: &IngestConfig) -> anyhow::Result<()> {
    for t in [&cfg.topic, &cfg.dead_letter_topic] {
        let s = t.validate()?;
        let client = PubsubClient::connect(s.endpoint.clone(), &s.project).await?;
        match client.create_topic(&s.topic).await {
            Ok(()) => tracing::info!(topic = %s.topic, "topic created"),
            Err(e) if e.code() == tonic::Code::AlreadyExists => {}
            Err(e) => anyhow::bail!("cannot create topic {}: {}", s.topic, e.message()),
        }
    }
    let b = cfg.checkpoint.validate()?;
    let admin = AdminClient::connect(&b).await?;
    admin
        .provision_table(
            &b.table,
            &TableSpec {
                families: vec![FamilySpec::max_versions(ingest::checkpoint::FAMILY, 1)],
            },
        )
        .await
        .with_context(|| format!("cannot create Bigtable table {}", b.table))?;
    Ok(())
}

fn exit_code(report: &IngestReport) -> i32 {
    match report.poll.outcome {
        Outcome::Failed(_) | Outcome::Running => 1,
        _ => 0,
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let opts = match &cli.command {
        Command::Run(o) => o,
        Command::Serve { opts, .. } => opts,
    };
    // Logs go to stderr: stdout carries the run report (JSON).
    let json = fluxo_gcp::logging::init(opts.log_json, "info");
    let code = match real_main(&cli).await {
        Ok(code) => code,
        Err(e) => {
            fluxo_gcp::logging::fatal(json, &format!("ingest: {e:#}"));
            1
        }
    };
    std::process::exit(code);
}

async fn real_main(cli: &Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Run(opts) => {
            let cfg = opts.to_config()?;
            if opts.provision {
                provision(&cfg).await?;
            }
            let report = ingest::run(&cfg, ShutdownSignal::on_os_signals()).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(exit_code(&report))
        }
        Command::Serve { listen, opts } => {
            let cfg = opts.to_config()?;
            if opts.provision {
                provision(&cfg).await?;
            }
            let port = std::env::var("PORT").ok();
            serve(listen_address(*listen, port.as_deref())?, cfg).await?;
            Ok(0)
        }
    }
}

/// The address `serve` listens on: `--listen` / `INGEST_LISTEN`, else all interfaces on `PORT` (the
/// variable Cloud Run sets), else port 8080.
fn listen_address(listen: Option<SocketAddr>, port: Option<&str>) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = listen {
        return Ok(addr);
    }
    let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => p.parse::<u16>().map_err(|_| {
            anyhow::anyhow!("PORT={p:?} is not a port number (1-65535); unset it or pass --listen")
        })?,
        None => 8080,
    };
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

struct ServeState {
    cfg: IngestConfig,
    running: tokio::sync::Mutex<()>,
    shutdown: ShutdownSignal,
    /// One registry for every run, served on the same port as `/run`.
    metrics: fluxo::Metrics,
}

async fn serve(listen: SocketAddr, cfg: IngestConfig) -> anyhow::Result<()> {
    let shutdown = ShutdownSignal::on_os_signals();
    let state = Arc::new(ServeState {
        cfg,
        running: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        metrics: fluxo::Metrics::new(ingest::PIPELINE_NAME),
    });
    // Registered before the first run, so a scrape before it sees every outcome at 0.
    ingest::metrics::RunMetrics::new(&state.metrics);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(
                |State(state): State<Arc<ServeState>>, headers: axum::http::HeaderMap| async move {
                    fluxo::http::metrics_response(&state.metrics, &headers)
                },
            ),
        )
        .route("/run", post(trigger))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "waiting for POST /run");
    let signal = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { signal.wait().await })
        .await?;
    Ok(())
}

async fn trigger(State(state): State<Arc<ServeState>>) -> axum::response::Response {
    let Ok(_guard) = state.running.try_lock() else {
        return (StatusCode::CONFLICT, "a run is already in progress\n").into_response();
    };
    match ingest::run_in(&state.cfg, state.shutdown.clone(), state.metrics.clone()).await {
        Ok(report) => {
            let status = if exit_code(&report) == 0 {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, Json(report)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_honours_listen_then_port() {
        let explicit: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            listen_address(Some(explicit), Some("7000")).unwrap(),
            explicit
        );
        assert_eq!(
            listen_address(None, Some("7000")).unwrap(),
            "0.0.0.0:7000".parse().unwrap()
        );
        assert_eq!(
            listen_address(None, None).unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            listen_address(None, Some(" ")).unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        let err = listen_address(None, Some("http")).unwrap_err().to_string();
        assert_eq!(
            err,
            "PORT=\"http\" is not a port number (1-65535); unset it or pass --listen"
        );
        assert!(listen_address(None, Some("70000")).is_err());
    }
}
