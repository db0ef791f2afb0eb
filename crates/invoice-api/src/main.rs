//! `invoice-api`: the reference invoice API server.

use anyhow::Context;
use clap::Parser;
use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};

/// Serves deterministic pages of invoices (NF-e) in the source JSON shape, for the demo, tests and
/// benchmarks. Routes: GET /invoices?page=N&page_size=M&since=T (JSON array, Link header),
/// GET /invoices/feed?cursor=C&limit=M&since=T ({"items":[...],"next_cursor":..,"has_more":..}),
/// GET/PUT /admin/faults, GET /admin/stats, GET /healthz.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080", env = "INVOICE_API_LISTEN")]
    listen: String,
    /// Bearer token (or X-API-Key) that requests must carry; none when unset.
    #[arg(long, env = "INVOICE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seed of the generated data and of the fault sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of invoices served (ids 1..=count).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Fewest items per invoice.
    #[arg(long, default_value_t = 1)]
    min_items: u32,
    /// Most items per invoice.
    #[arg(long, default_value_t = 8)]
    max_items: u32,
    /// Share of malformed records (0 to 1).
    #[arg(long, default_value_t = 0.02)]
    malformed_share: f64,
    /// Compact records on one line instead of the sample's multi-line layout.
    #[arg(long)]
    compact: bool,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// Retry-After seconds sent with a 429; above 0, the 5xx answers are 503 with it too.
    #[arg(long, default_value_t = 0)]
    retry_after_secs: u64,
    /// Share of requests answered 500/503.
    #[arg(long, default_value_t = 0.0)]
    rate_5xx: f64,
    /// Share of requests that hang (client timeout).
    #[arg(long, default_value_t = 0.0)]
    rate_timeout: f64,
    /// Seconds a hanging request waits.
    #[arg(long, default_value_t = 30)]
    hang_secs: u64,
    /// Share of answers with a truncated body.
    #[arg(long, default_value_t = 0.0)]
    rate_truncate: f64,
    /// Share of pages that repeat the previous page's last record.
    #[arg(long, default_value_t = 0.0)]
    rate_duplicate: f64,
    /// Share of pages that cannot be delimited (always the same pages).
    #[arg(long, default_value_t = 0.0)]
    rate_broken_page: f64,
    /// Serve every record whose id is a multiple of this padded to --pad-record-to-bytes (0: none).
    #[arg(long, default_value_t = 0)]
    pad_record_every: u64,
    /// Length in bytes of a padded record.
    #[arg(long, default_value_t = 0)]
    pad_record_to_bytes: u64,
    /// Bytes of padding added to every cursor and next link handed out.
    #[arg(long, default_value_t = 0)]
    pad_position_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let a = Args::parse();
    let generator = Generator::new(GeneratorConfig {
        seed: a.seed,
        count: a.count,
        min_items: a.min_items,
        max_items: a.max_items,
        malformed_share: a.malformed_share,
        pretty: !a.compact,
        ..GeneratorConfig::default()
    })?;
    let faults = Faults {
        latency_ms: a.latency_ms,
        rate_429: a.rate_429,
        retry_after_secs: a.retry_after_secs,
        rate_5xx: a.rate_5xx,
        rate_timeout: a.rate_timeout,
        hang_secs: a.hang_secs,
        rate_truncate: a.rate_truncate,
        rate_duplicate: a.rate_duplicate,
        rate_broken_page: a.rate_broken_page,
        pad_record_every: a.pad_record_every,
        pad_record_to_bytes: a.pad_record_to_bytes,
        pad_position_bytes: a.pad_position_bytes,
    };
    let api = RunningApi::start(&a.listen, generator, a.token, faults)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    println!("invoice-api serving {} invoices on {}", a.count, api.url());
    tracing::info!(addr = %api.addr(), "listening");
    wait_for_signal().await;
    api.stop().await;
    Ok(())
}

/// Ctrl-C or SIGTERM (a pod being stopped).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    tokio::signal::ctrl_c().await.ok();
}
