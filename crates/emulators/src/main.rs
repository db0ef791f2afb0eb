//! `emulators`: starts local Google Cloud emulators, prints `export VAR=...` lines for them, and
//! keeps them running until Ctrl-C or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use emulators::{Emulators, Options, Service};

/// Start local Google Cloud emulators on free loopback ports.
///
/// Prints `export VAR=value` lines on standard output once every emulator answers (progress and
/// errors go to standard error), then runs until Ctrl-C / SIGTERM / SIGHUP and stops them all.
/// To use them from another shell or a script, run it in the background with `--env-file` and
/// `source` that file once it exists.
#[derive(Debug, Parser)]
#[command(name = "emulators", version, after_help = AFTER_HELP)]
struct Cli {
    /// Start all four emulators (Pub/Sub, Bigtable, Cloud Storage, BigQuery).
    #[arg(long)]
    all: bool,
    /// Start the Pub/Sub emulator (exports PUBSUB_EMULATOR_HOST).
    #[arg(long)]
    pubsub: bool,
    /// Start cbtemulator (exports BIGTABLE_EMULATOR_HOST).
    #[arg(long)]
    bigtable: bool,
    /// Start fake-gcs-server (exports STORAGE_EMULATOR_HOST).
    #[arg(long)]
    storage: bool,
    /// Start bqemulator (exports BIGQUERY_EMULATOR_HOST and BIGQUERY_EMULATOR_GRPC_HOST).
    #[arg(long)]
    bigquery: bool,
    /// Project id for the emulators (exported as GOOGLE_CLOUD_PROJECT).
    #[arg(long, default_value = emulators::DEFAULT_PROJECT, value_name = "ID")]
    project: String,
    /// Seconds each emulator may take to answer.
    #[arg(long, default_value_t = 90, value_name = "SECS")]
    timeout: u64,
    /// Also write the export lines to this file (atomically, once everything answers).
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Do not run scripts/setup-emulators.sh (fail if the venv is missing).
    #[arg(long)]
    no_setup: bool,
    /// Keep the log directory after stopping.
    #[arg(long)]
    keep_logs: bool,
}

const AFTER_HELP: &str = "\
Environment:
  EMULATORS_VENV        venv with bqemulator and fake-gcs-server (default <repo>/.venv/emulators)
  EMULATORS_GCLOUD_SDK  Google Cloud CLI root (default: found from `gcloud` on PATH)

Examples:
  emulators --all
  emulators --pubsub --bigtable --env-file target/emulators.env";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("emulators: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let mut services = Vec::new();
    for (on, service) in [
        (cli.pubsub, Service::PubSub),
        (cli.bigtable, Service::Bigtable),
        (cli.storage, Service::Storage),
        (cli.bigquery, Service::BigQuery),
    ] {
        if on || cli.all {
            services.push(service);
        }
    }
    if services.is_empty() {
        return Err(
            "no emulator chosen: pass --all or any of --pubsub --bigtable --storage --bigquery"
                .into(),
        );
    }
    install_signal_handlers();

    let names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    eprintln!("emulators: starting {}", names.join(", "));
    let started = Instant::now();
    let options = Options {
        project: cli.project,
        start_timeout: Duration::from_secs(cli.timeout),
        run_setup: !cli.no_setup,
        keep_logs: cli.keep_logs || Options::default().keep_logs,
        ..Options::default()
    };
    let mut emu = Emulators::start_with(&services, options).map_err(|e| e.to_string())?;

    let exports: String = emu
        .env_vars()
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    if let Some(path) = &cli.env_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &exports)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    print!("{exports}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "emulators: ready in {:.1} s (logs in {}); Ctrl-C to stop",
        started.elapsed().as_secs_f64(),
        emu.log_dir().display()
    );

    let result = loop {
        if STOP.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Err(e) = emu.check() {
            break Err(e.to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("emulators: stopping");
    drop(emu);
    if let Some(path) = &cli.env_file {
        let _ = std::fs::remove_file(path);
    }
    result
}
