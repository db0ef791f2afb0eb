//! `invoices`: the invoices pipeline and its tools. See `docs/invoices.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fluxo::ShutdownSignal;
use invoices::config::{ConfigFile, Overrides, Profile};
use invoices::{query, RunSettings};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The invoices pipeline: Pub/Sub -> parse -> validate -> enrich -> Bigtable, BigQuery and \
Cloud Storage; replay of the raw archive; read-back tools.",
    after_help = "Endpoints come from PUBSUB_EMULATOR_HOST, BIGTABLE_EMULATOR_HOST, STORAGE_EMULATOR_HOST \
and BIGQUERY_EMULATOR_HOST when set, else Google Cloud with Application Default Credentials. \
Resource names come from the configuration file's profile (docs/invoices.md)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Configuration file (TOML, `[profiles.<name>]`). Default: the built-in copy of
    /// config/invoices.toml.
    #[arg(long, global = true, env = "INVOICES_CONFIG")]
    config: Option<PathBuf>,
    /// Profile of the configuration file.
    #[arg(long, global = true, env = "INVOICES_PROFILE", default_value = "local")]
    profile: String,
    /// Logs as JSON lines (the default on Kubernetes). Logs go to stderr, reports to stdout.
    #[arg(long, global = true)]
    log_json: bool,
    /// Google Cloud project; replaces the profile's `project`.
    #[arg(long, global = true, env = "INVOICES_PROJECT")]
    project: Option<String>,
    /// Archive location (gs://BUCKET[/PREFIX] or a directory); replaces the profile's `archive_url`.
    #[arg(long, global = true, env = "INVOICES_ARCHIVE_URL")]
    archive_url: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Create the topics, subscription, tables and bucket first (idempotent).
    #[arg(long)]
    provision: bool,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "INVOICES_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Worker name written into every row (`worker`); on GKE set it from the pod name.
    #[arg(long, env = "POD_NAME")]
    worker: Option<String>,
    /// Longest drain after SIGTERM, in seconds (keep it under the pod's grace period).
    #[arg(long, default_value_t = 25)]
    drain_timeout_secs: u64,
    /// /healthz fails (503, with the reason; an error is logged) once messages are in flight and
    /// none was acknowledged or nacked for this many seconds; 0 = never. Keep it above the sinks'
    /// longest retry of one request (BigQuery's resolve_timeout_ms, 600 s by default).
    #[arg(long, default_value_t = 600)]
    stall_timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the streaming pipeline on the profile's subscription until SIGTERM (or until idle with
    /// --exit-when-idle); prints the run report as JSON.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Stop and drain once no message arrived for this many seconds (batch-style runs, demos).
        #[arg(long)]
        exit_when_idle: Option<f64>,
        /// Stop and drain once this many messages were acknowledged.
        #[arg(long)]
        stop_after: Option<u64>,
    },
    /// Replay the raw archive (raw/ and raw-late/) through the same steps into Bigtable, BigQuery and the
    /// dead letters; prints the run report as JSON.
    Replay {
        #[command(flatten)]
        args: RunArgs,
        /// Only objects whose name starts with this, e.g. raw/dt=2026-11-28/ (default: raw).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Create every resource of the profile (idempotent) and exit.
    Provision,
    /// Print one invoice from Bigtable (one row read) as JSON.
    Get {
        /// NFeID.
        nfe_id: i64,
    },
    /// List invoices emitted in [FROM, TO) from the Bigtable emission index, as JSON lines.
    List {
        /// Start, inclusive: RFC 3339 (2021-05-24T00:00:00Z) or a date (2021-05-24, UTC midnight).
        #[arg(long)]
        from: String,
        /// End, exclusive, same forms.
        #[arg(long)]
        to: String,
        /// Most entries printed (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Count what Bigtable, BigQuery and Cloud Storage hold (from the stores themselves) as JSON: plain
    /// counts and exact sums of Bigtable, of the BigQuery views and of the raw BigQuery tables.
    Inventory,
    /// Print the DDL of the BigQuery views invoices_current and invoice_items_current (the query
    /// surface; `provision` runs it) as one script, e.g. for `bq query --use_legacy_sql=false`.
    Views,
    /// List and count the dead letters stored in Cloud Storage (by code and stage, newest first) as
    /// JSON; with --subscription, also peek at what waits on the dead-letter subscription.
    DeadLetters {
        /// Only objects whose name starts with this, e.g. dead-letter/dt=2026-12-04/ (default:
        /// dead-letter/).
        #[arg(long)]
        prefix: Option<String>,
        /// Most entries listed (counts always cover every object).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Also list (without consuming) up to --limit messages waiting on the dead-letter
        /// subscription, including messages Pub/Sub forwarded after max_delivery_attempts.
        #[arg(long)]
        subscription: bool,
    },
}

fn parse_instant(s: &str, flag: &str) -> anyhow::Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        if let Ok(t) = d.to_zoned(jiff::tz::TimeZone::UTC) {
            return Ok(t.timestamp());
        }
    }
    anyhow::bail!("{flag} {s:?} is neither an RFC 3339 instant (2021-05-24T00:00:00Z) nor a date (2021-05-24)")
}

fn settings(args: &RunArgs, exit_when_idle: Option<f64>) -> anyhow::Result<RunSettings> {
    let exit_when_idle = match exit_when_idle {
        Some(s) if !(s.is_finite() && s > 0.0 && s < 86_400.0) => {
            anyhow::bail!("--exit-when-idle {s} must be between 0 and 86400 seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    Ok(RunSettings {
        worker: args.worker.clone(),
        metrics_addr: args.metrics_addr,
        exit_when_idle,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        stall_timeout: (args.stall_timeout_secs > 0)
            .then(|| Duration::from_secs(args.stall_timeout_secs)),
        ..RunSettings::default()
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli, profile: Profile) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run {
            args,
            exit_when_idle,
            stop_after,
        } => {
            let mut s = settings(&args, exit_when_idle)?;
            s.stop_after = stop_after;
            if args.provision {
                invoices::provision(&profile).await?;
            }
            let report =
                invoices::run_stream(&profile, &s, ShutdownSignal::on_os_signals()).await?;
            print_json(&report)?;
        }
        Command::Replay { args, prefix } => {
            let s = settings(&args, None)?;
            if args.provision {
                invoices::provision(&profile).await?;
            }
            let report = invoices::run_replay(
                &profile,
                prefix.as_deref(),
                &s,
                ShutdownSignal::on_os_signals(),
            )
            .await?;
            print_json(&report)?;
        }
        Command::Provision => {
            invoices::provision(&profile).await?;
            eprintln!("provisioned profile '{}'", cli.global.profile);
        }
        Command::Get { nfe_id } => {
            let reader = query::reader(&profile).await?;
            match query::get_invoice(&reader, nfe_id).await? {
                Some(row) => print_json(&row)?,
                None => {
                    eprintln!(
                        "invoice {nfe_id} is not in Bigtable table {}",
                        profile.bigtable_table
                    );
                    return Ok(1);
                }
            }
        }
        Command::List { from, to, limit } => {
            let (from, to) = (parse_instant(&from, "--from")?, parse_instant(&to, "--to")?);
            if from >= to {
                anyhow::bail!("--from must be before --to");
            }
            let reader = query::reader(&profile).await?;
            let entries =
                query::list_by_emission(&reader, &profile.layout, from, to, limit).await?;
            for e in &entries {
                println!("{}", serde_json::to_string(e)?);
            }
            eprintln!("{} invoices", entries.len());
        }
        Command::Inventory => print_json(&query::inventory(&profile).await?)?,
        Command::Views => {
            for view in nfe::bigquery::VIEWS {
                println!(
                    "{};\n",
                    view.create_or_replace(&profile.project, &profile.bigquery_dataset)
                );
            }
        }
        Command::DeadLetters {
            prefix,
            limit,
            subscription,
        } => {
            let stored = query::dead_letters(&profile, prefix.as_deref(), limit).await?;
            let mut out = serde_json::json!({ "stored": stored });
            if subscription {
                let pending = query::peek_dead_letter_subscription(&profile, limit).await?;
                out["subscription"] = serde_json::json!({
                    "name": profile.dead_letter_subscription(),
                    "peeked": pending.len(),
                    "messages": pending,
                });
            }
            print_json(&out)?;
        }
    }
    Ok(0)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let json = fluxo_gcp::logging::init(cli.global.log_json, "info,bigtable_rs=warn");
    let profile = ConfigFile::load(cli.global.config.as_deref()).and_then(|(file, path)| {
        let overrides = Overrides {
            project: cli.global.project.clone(),
            archive_url: cli.global.archive_url.clone(),
        };
        file.profile_with(&cli.global.profile, &path, &overrides)
    });
    let code = match profile {
        Err(e) => {
            fluxo_gcp::logging::fatal(json, &format!("error: {e}"));
            2
        }
        Ok(profile) => match run(cli, profile).await {
            Ok(code) => code,
            Err(e) => {
                fluxo_gcp::logging::fatal(json, &format!("error: {e:#}"));
                1
            }
        },
    };
    std::process::exit(code);
}
