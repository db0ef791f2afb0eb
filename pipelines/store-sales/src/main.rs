//! `store-sales`: sales per store in sliding hourly windows, from a Pub/Sub subscription to Cloud
//! Storage (see the library's documentation for the graph). Runs until SIGTERM or Ctrl-C, then drains:
//! every open window fires and is written before the process exits.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fluxo::{Pipeline, RunOptions, ShutdownSignal, SinkConfig};
use fluxo_gcp::pubsub::{PubsubSource, PubsubSourceConfig};
use fluxo_gcp::storage::{StorageSink, StorageSinkConfig};
use store_sales::{build, Outputs, Settings, EVENT_TIME_ATTRIBUTE};

/// Sums sales per store in sliding windows (Pub/Sub in, Cloud Storage out). Messages are JSON
/// `{"store": "SP-01", "cents": 1250}` with the sale's time in the `sold_at` attribute (RFC 3339 or
/// milliseconds). Emulators are used when PUBSUB_EMULATOR_HOST / STORAGE_EMULATOR_HOST are set.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Google Cloud project (default: GOOGLE_CLOUD_PROJECT).
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    project: Option<String>,
    /// Subscription to read: a short id or `projects/P/subscriptions/S`.
    #[arg(long)]
    subscription: String,
    /// Where to write: `gs://bucket/prefix` (or `file:///dir`); totals, late sales and dead letters
    /// go under `totals/`, `late/` and `dead/`.
    #[arg(long)]
    output: String,
    /// Window length, in minutes.
    #[arg(long, default_value_t = 60)]
    window_minutes: u64,
    /// A new window every this many minutes (at most the window length).
    #[arg(long, default_value_t = 15)]
    period_minutes: u64,
    /// Minutes after a window's end during which late sales still count in it.
    #[arg(long, default_value_t = 60)]
    allowed_lateness_minutes: u64,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9400).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log JSON lines (the default on Kubernetes).
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let json = fluxo_gcp::logging::init(cli.log_json, "info");
    if let Err(e) = run(cli).await {
        fluxo_gcp::logging::fatal(json, &format!("store-sales: error: {e:#}"));
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let minutes = |m: u64| Duration::from_secs(m.saturating_mul(60));
    let settings = Settings {
        window: minutes(cli.window_minutes),
        period: minutes(cli.period_minutes),
        allowed_lateness: minutes(cli.allowed_lateness_minutes),
    };
    let source = PubsubSource::connect(&PubsubSourceConfig {
        project: cli.project.clone(),
        subscription: cli.subscription.clone(),
        timestamp_attribute: Some(EVENT_TIME_ATTRIBUTE.to_string()),
        ..PubsubSourceConfig::default()
    })
    .await
    .context("connecting to the subscription")?;
    let out = cli.output.trim_end_matches('/');
    let sink_config = |dir: &str| StorageSinkConfig::new(format!("{out}/{dir}"));
    let outputs = Outputs {
        totals: StorageSink::json(&sink_config("totals"))?.open().await?,
        late: StorageSink::json(&sink_config("late"))?.open().await?,
        dead: StorageSink::json(&sink_config("dead"))?.open().await?,
        batch: SinkConfig::default(),
    };
    let p = Pipeline::new("store-sales");
    let messages = p.read("Pubsub", source);
    build(&messages, settings, outputs);

    let report = p
        .run(RunOptions {
            shutdown: ShutdownSignal::on_os_signals(),
            metrics_addr: cli.metrics_addr,
            ..RunOptions::default()
        })
        .await?;
    println!("{report}");
    Ok(())
}
