//! Local Google Cloud emulators for tests, benchmarks and the demo.
//!
//! [`Emulators::start`] starts the requested emulators on free loopback ports, waits until each
//! one answers a real request, and stops them all (whole process groups: SIGTERM, then SIGKILL)
//! when the value is dropped, also when a test panics. A watchdog process stops them too if
//! the owning process dies without running `Drop` (SIGKILL, test timeout).
//!
//! | service | program | readiness probe | environment variable |
//! |---|---|---|---|
//! | [`Service::PubSub`] | Google Cloud CLI `cloud-pubsub-emulator` | `GET /v1/projects/P/topics` → 200 | `PUBSUB_EMULATOR_HOST=127.0.0.1:port` |
//! | [`Service::Bigtable`] | Google Cloud CLI `cbtemulator` | TCP connect (it listens once ready) | `BIGTABLE_EMULATOR_HOST=127.0.0.1:port` |
//! | [`Service::Storage`] | fake-gcs-server (venv) | `GET /storage/v1/b` → 200 | `STORAGE_EMULATOR_HOST=http://127.0.0.1:port` |
//! | [`Service::BigQuery`] | bqemulator (venv) | `GET /bigquery/v2/projects/P/datasets` → 200, gRPC port open | `BIGQUERY_EMULATOR_HOST=127.0.0.1:rest`, `BIGQUERY_EMULATOR_GRPC_HOST=127.0.0.1:grpc` |
//!
//! The project id is exported as `GOOGLE_CLOUD_PROJECT`. fake-gcs-server and bqemulator live in
//! the project-local virtual environment `.venv/emulators`, created by
//! `scripts/setup-emulators.sh`; [`Emulators::start`] runs that script itself (it is idempotent
//! and fast when nothing changed), so `cargo test` works on a fresh clone.
//!
//! ```no_run
//! use emulators::{Emulators, Service};
//!
//! let emu = Emulators::start(&[Service::PubSub, Service::Storage])?;
//! let pubsub = emu.pubsub_host().expect("started"); // "127.0.0.1:PORT"
//! let storage = emu.storage_url().expect("started"); // "http://127.0.0.1:PORT"
//! # let _ = (pubsub, storage);
//! // ... run the code under test against them; dropping `emu` stops both.
//! # Ok::<(), emulators::Error>(())
//! ```
//!
//! The API is blocking. From an async test, start the set before entering the runtime, or with
//! `tokio::task::spawn_blocking(|| Emulators::start(&[..])).await`; dropping the value blocks for
//! at most a few seconds while the processes stop.

mod error;
mod locate;
mod process;

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use error::Error;
pub use locate::{repo_root, BIGTABLE_PACKAGE, JAVA_PACKAGE, PUBSUB_PACKAGE};
pub use process::process_group_alive;

/// The project id used when [`Options::project`] is not set.
pub const DEFAULT_PROJECT: &str = "local-project";

/// Environment variable with the Pub/Sub emulator's `host:port`.
pub const PUBSUB_ENV: &str = "PUBSUB_EMULATOR_HOST";
/// Environment variable with cbtemulator's `host:port`.
pub const BIGTABLE_ENV: &str = "BIGTABLE_EMULATOR_HOST";
/// Environment variable with fake-gcs-server's base URL (`http://host:port`).
pub const STORAGE_ENV: &str = "STORAGE_EMULATOR_HOST";
/// Environment variable with bqemulator's REST `host:port`.
pub const BIGQUERY_ENV: &str = "BIGQUERY_EMULATOR_HOST";
/// Environment variable with bqemulator's gRPC (Storage Read/Write API) `host:port`.
pub const BIGQUERY_GRPC_ENV: &str = "BIGQUERY_EMULATOR_GRPC_HOST";
/// Environment variable with the project id.
pub const PROJECT_ENV: &str = "GOOGLE_CLOUD_PROJECT";

/// How long a stopping emulator gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many times start-up picks new ports when an emulator finds its port taken.
const PORT_ATTEMPTS: usize = 3;
/// How many log lines an error shows.
const TAIL_LINES: usize = 12;

/// One of the emulated Google Cloud services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Cloud Pub/Sub (Google's `cloud-pubsub-emulator`, Java).
    PubSub,
    /// Cloud Bigtable (Google's `cbtemulator`).
    Bigtable,
    /// Cloud Storage (fake-gcs-server, in-memory backend).
    Storage,
    /// BigQuery (bqemulator: REST plus Storage Read/Write gRPC, in-memory DuckDB).
    BigQuery,
}

impl Service {
    /// All four services.
    pub const ALL: [Service; 4] = [
        Service::PubSub,
        Service::Bigtable,
        Service::Storage,
        Service::BigQuery,
    ];

    /// Short lower-case name: `pubsub`, `bigtable`, `storage`, `bigquery` (also the log file name).
    pub fn name(self) -> &'static str {
        match self {
            Service::PubSub => "pubsub",
            Service::Bigtable => "bigtable",
            Service::Storage => "storage",
            Service::BigQuery => "bigquery",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::PubSub => "Pub/Sub",
            Service::Bigtable => "Bigtable",
            Service::Storage => "Cloud Storage",
            Service::BigQuery => "BigQuery",
        })
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_', '/'], "").as_str() {
            "pubsub" => Ok(Service::PubSub),
            "bigtable" | "cbt" => Ok(Service::Bigtable),
            "storage" | "gcs" => Ok(Service::Storage),
            "bigquery" | "bq" => Ok(Service::BigQuery),
            _ => Err(format!(
                "unknown service '{s}' (expected pubsub, bigtable, storage or bigquery)"
            )),
        }
    }
}

/// Settings of [`Emulators::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Project id the emulators default to and that [`Emulators::env_vars`] exports.
    pub project: String,
    /// How long each emulator may take to answer (default 90 s: the Java Pub/Sub emulator takes
    /// several seconds on a loaded 2-core machine).
    pub start_timeout: Duration,
    /// Root of the Google Cloud CLI (default: `$EMULATORS_GCLOUD_SDK`, else found from `gcloud`).
    pub gcloud_sdk: Option<PathBuf>,
    /// The Python venv with bqemulator and fake-gcs-server (default: `$EMULATORS_VENV`, else
    /// `<repo>/.venv/emulators`).
    pub venv: Option<PathBuf>,
    /// Run `scripts/setup-emulators.sh` before starting Storage or BigQuery (default true).
    pub run_setup: bool,
    /// Keep the log directory after a clean drop (default: `$EMULATORS_KEEP_LOGS` is set).
    /// Logs are always kept after a failed start or when dropped during a panic.
    pub keep_logs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            project: DEFAULT_PROJECT.to_string(),
            start_timeout: Duration::from_secs(90),
            gcloud_sdk: None,
            venv: None,
            run_setup: true,
            keep_logs: std::env::var_os("EMULATORS_KEEP_LOGS").is_some(),
        }
    }
}

/// How to launch one emulator.
#[derive(Debug)]
struct Launch {
    program: PathBuf,
    /// Arguments before the service's own (an interpreter's script).
    prefix: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// Starts bqemulator with three fixes, applied before it starts (Python, run with the venv's
/// interpreter):
/// - a larger default thread pool: its gRPC server runs the `AppendRows` handlers synchronously on the
///   event loop's default executor, `min(32, cores + 4)` threads (6 on a 2-core machine), and each open
///   `AppendRows` call holds one thread while it stays open, so a seventh connection (two workers with a
///   few write streams each) would wait forever;
/// - appends land on the event loop's thread: the handlers insert into the one DuckDB connection from
///   their own threads while REST queries use it from the loop's thread, and DuckDB then deadlocks
///   (seen here: a query during streaming froze the emulator for good). Running the insert on the loop,
///   where `insertAll` and queries already run, serialises every use of the connection.
///
/// - no automatic time-travel snapshot: after every write (each `AppendRows`, each `insertAll`) it copied
///   the whole table into a snapshot (`CREATE TABLE .. AS SELECT *`), which made streaming quadratic in
///   time and memory (5.6 GB after 50,000 invoices, dropping only when its garbage collector ran each
///   minute). Nothing here queries `FOR SYSTEM_TIME AS OF`; snapshots a user asks for still work.
///
/// Real BigQuery has none of these limits, so the fixes belong here, at the emulator's launch.
const BQEMULATOR_LAUNCHER: &str = "\
import asyncio, concurrent.futures, sys, threading
LOOPS = []
class Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        loop = super().new_event_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix='asyncio'))
        LOOPS.append(loop)
        return loop
asyncio.set_event_loop_policy(Policy())
from bqemulator.grpc_api import write_servicer
flush = write_servicer.BigQueryWriteHandler._flush_to_target
def flush_on_loop(self, stream, rows):
    async def run():
        return flush(self, stream, rows)
    loop = LOOPS[-1]
    if loop.is_running() and loop._thread_id != threading.get_ident():
        return asyncio.run_coroutine_threadsafe(run(), loop).result()
    return flush(self, stream, rows)
write_servicer.BigQueryWriteHandler._flush_to_target = flush_on_loop
from bqemulator.versioning import snapshots
capture = snapshots.SnapshotManager.capture
def capture_asked(self, *args, kind='AUTO', **kwargs):
    return None if kind == 'AUTO' else capture(self, *args, kind=kind, **kwargs)
snapshots.SnapshotManager.capture = capture_asked
from bqemulator.cli import main
sys.argv[0] = 'bqemulator'
sys.exit(main())
";

/// One emulator of the set.
#[derive(Debug)]
struct Instance {
    service: Service,
    launch: Launch,
    /// Main port (REST for BigQuery).
    port: u16,
    /// Second port (BigQuery's gRPC).
    grpc_port: Option<u16>,
    log: PathBuf,
    /// Length of the log when the current process was spawned (errors show only its lines).
    log_from: u64,
    child: Option<Child>,
}

impl Instance {
    fn args(&self, project: &str) -> Vec<String> {
        let port = self.port.to_string();
        match self.service {
            Service::PubSub => vec!["--host=127.0.0.1".into(), format!("--port={port}")],
            Service::Bigtable => vec!["-host".into(), "127.0.0.1".into(), "-port".into(), port],
            Service::Storage => vec![
                "-backend".into(),
                "memory".into(),
                "-scheme".into(),
                "http".into(),
                "-host".into(),
                "127.0.0.1".into(),
                "-port".into(),
                port.clone(),
                "-public-host".into(),
                format!("127.0.0.1:{port}"),
                "-external-url".into(),
                format!("http://127.0.0.1:{port}"),
            ],
            Service::BigQuery => vec![
                "start".into(),
                "--project".into(),
                project.into(),
                "--rest-host".into(),
                "127.0.0.1".into(),
                "--rest-port".into(),
                port,
                "--grpc-host".into(),
                "127.0.0.1".into(),
                "--grpc-port".into(),
                self.grpc_port.unwrap_or(0).to_string(),
                "--ephemeral".into(),
            ],
        }
    }

    fn spawn(&mut self, project: &str, watchdog: &mut Option<Watchdog>) -> Result<(), Error> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        self.log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        let mut cmd = Command::new(&self.launch.program);
        cmd.args(&self.launch.prefix)
            .args(self.args(project))
            .envs(self.launch.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Run in the log directory: bqemulator's DuckDB spills temporary files (gigabytes under
            // load) into its working directory, which is then removed with the logs.
            .current_dir(self.log.parent().unwrap_or(std::path::Path::new(".")))
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            service: self.service,
            program: self.launch.program.clone(),
            source,
        })?;
        if let Some(w) = watchdog {
            w.watch(child.id());
        }
        self.child = Some(child);
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One readiness probe: Ok when the emulator answered a real request.
    fn probe(&self, project: &str) -> Result<(), String> {
        let addr = process::loopback(self.port);
        let expect_200 = |path: &str| match process::http_get_status(addr, path)? {
            200 => Ok(()),
            code => Err(format!("GET http://{addr}{path} answered {code}")),
        };
        match self.service {
            Service::PubSub => expect_200(&format!("/v1/projects/{project}/topics")),
            Service::Bigtable => process::tcp_open(addr),
            Service::Storage => expect_200("/storage/v1/b"),
            Service::BigQuery => {
                expect_200(&format!("/bigquery/v2/projects/{project}/datasets"))?;
                process::tcp_open(process::loopback(self.grpc_port.unwrap_or(0)))
            }
        }
    }

    fn exited(&mut self) -> Option<Error> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                let pgid = child.id() as i32;
                // Stop what the leader may have left behind, and forget the process.
                process::signal_group(pgid, libc::SIGKILL);
                self.child = None;
                Some(Error::Exited {
                    service: self.service,
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: process::log_tail(&self.log, self.log_from, TAIL_LINES),
                })
            }
            _ => None,
        }
    }

    /// Waits until the emulator answers, exits, or `deadline` passes.
    fn wait_ready(
        &mut self,
        project: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), Error> {
        loop {
            if let Some(err) = self.exited() {
                return Err(err);
            }
            let last = match self.probe(project) {
                Ok(()) => return self.exited().map_or(Ok(()), Err),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    service: self.service,
                    endpoint: self.endpoint(),
                    timeout,
                    last,
                    log: self.log.clone(),
                    tail: process::log_tail(&self.log, self.log_from, TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate_group(&mut child, STOP_GRACE);
        }
    }

    fn port_was_taken(&self, err: &Error) -> bool {
        matches!(err, Error::Exited { .. })
            && process::log_says_port_in_use(&self.log, self.log_from)
    }
}

/// A `sh` process that stops the emulators' process groups when its standard input closes, that
/// is when the owning process dies without running `Drop` (SIGKILL, test-runner timeout).
#[derive(Debug)]
struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

const WATCHDOG_SCRIPT: &str = r#"groups=""
while read -r g; do groups="$groups $g"; done
for g in $groups; do kill -TERM "-$g" 2>/dev/null; done
sleep 3
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done"#;

impl Watchdog {
    fn spawn() -> Option<Watchdog> {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        Some(Watchdog { child, stdin })
    }

    fn watch(&mut self, pgid: u32) {
        let _ = writeln!(self.stdin, "{pgid}");
        let _ = self.stdin.flush();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // The emulators are already stopped: end the watchdog before it reads EOF.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SET_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running set of emulators. Dropping it stops every emulator of the set (also during a panic).
#[derive(Debug)]
pub struct Emulators {
    project: String,
    timeout: Duration,
    log_dir: PathBuf,
    keep_logs: bool,
    instances: Vec<Instance>,
    watchdog: Option<Watchdog>,
}

impl Emulators {
    /// Starts `services` with the default [`Options`] and waits until each one answers.
    pub fn start(services: &[Service]) -> Result<Emulators, Error> {
        Emulators::start_with(services, Options::default())
    }

    /// Starts `services` and waits until each one answers a real request, at most
    /// `options.start_timeout` each (they start in parallel).
    ///
    /// Errors name what to install when a program is missing, and show the log tail when an
    /// emulator exits or does not answer; the processes already started are stopped again.
    pub fn start_with(services: &[Service], options: Options) -> Result<Emulators, Error> {
        let mut services = services.to_vec();
        services.sort_unstable();
        services.dedup();

        let launches = services
            .iter()
            .map(|&s| resolve(s, &options))
            .collect::<Result<Vec<_>, _>>()?;
        if services
            .iter()
            .any(|s| matches!(s, Service::Storage | Service::BigQuery))
        {
            locate::ensure_venv(&options, &locate::venv_dir(&options))?;
        }

        let log_dir = std::env::temp_dir().join(format!(
            "emulators-{}-{}",
            std::process::id(),
            SET_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&log_dir);
        fs::create_dir_all(&log_dir)
            .map_err(|e| Error::io(format!("creating {}", log_dir.display()), e))?;

        let mut set = Emulators {
            project: options.project.clone(),
            timeout: options.start_timeout,
            log_dir,
            keep_logs: options.keep_logs,
            instances: Vec::new(),
            watchdog: Watchdog::spawn(),
        };
        let ports = process::free_ports(services.len() + 1)
            .map_err(|e| Error::io("picking free loopback ports", e))?;
        let mut ports = ports.into_iter();
        for (service, launch) in services.into_iter().zip(launches) {
            let port = ports.next().unwrap_or(0);
            let grpc_port = (service == Service::BigQuery).then(|| ports.next().unwrap_or(0));
            set.instances.push(Instance {
                service,
                launch,
                port,
                grpc_port,
                log: set.log_dir.join(format!("{}.log", service.name())),
                log_from: 0,
                child: None,
            });
        }
        match set.spawn_and_wait_all() {
            Ok(()) => Ok(set),
            Err(e) => {
                set.keep_logs = true;
                Err(e)
            }
        }
    }

    fn spawn_and_wait_all(&mut self) -> Result<(), Error> {
        for inst in &mut self.instances {
            inst.spawn(&self.project, &mut self.watchdog)?;
        }
        let deadline = Instant::now() + self.timeout;
        for i in 0..self.instances.len() {
            let mut attempt = 1;
            loop {
                let inst = &mut self.instances[i];
                match inst.wait_ready(&self.project, deadline, self.timeout) {
                    Ok(()) => break,
                    Err(e) if attempt < PORT_ATTEMPTS && inst.port_was_taken(&e) => {
                        // Another process took the port between picking and binding: pick anew.
                        attempt += 1;
                        let ports = process::free_ports(2)
                            .map_err(|e| Error::io("picking free loopback ports", e))?;
                        inst.port = ports[0];
                        inst.grpc_port = inst.grpc_port.map(|_| ports[1]);
                        inst.spawn(&self.project, &mut self.watchdog)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn instance(&self, service: Service) -> Option<&Instance> {
        self.instances.iter().find(|i| i.service == service)
    }

    fn instance_mut(&mut self, service: Service) -> Result<&mut Instance, Error> {
        self.instances
            .iter_mut()
            .find(|i| i.service == service)
            .ok_or(Error::NotStarted(service))
    }

    /// The project id the emulators were started for.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The services of this set, in a fixed order.
    pub fn services(&self) -> Vec<Service> {
        self.instances.iter().map(|i| i.service).collect()
    }

    /// The loopback address of a service (REST for BigQuery); stays the same across
    /// [`Emulators::restart`].
    pub fn addr(&self, service: Service) -> Option<SocketAddr> {
        self.instance(service).map(|i| process::loopback(i.port))
    }

    /// Pub/Sub emulator `host:port` (gRPC and REST on the same port).
    pub fn pubsub_host(&self) -> Option<String> {
        self.instance(Service::PubSub).map(Instance::endpoint)
    }

    /// cbtemulator `host:port` (gRPC).
    pub fn bigtable_host(&self) -> Option<String> {
        self.instance(Service::Bigtable).map(Instance::endpoint)
    }

    /// fake-gcs-server base URL, `http://127.0.0.1:PORT` (JSON API under `/storage/v1`,
    /// uploads under `/upload/storage/v1`).
    pub fn storage_url(&self) -> Option<String> {
        self.instance(Service::Storage)
            .map(|i| format!("http://{}", i.endpoint()))
    }

    /// bqemulator REST base URL, `http://127.0.0.1:PORT` (API under `/bigquery/v2`).
    pub fn bigquery_rest(&self) -> Option<String> {
        self.instance(Service::BigQuery)
            .map(|i| format!("http://{}", i.endpoint()))
    }

    /// bqemulator gRPC endpoint (Storage Read and Write APIs), `http://127.0.0.1:PORT`.
    pub fn bigquery_grpc(&self) -> Option<String> {
        self.instance(Service::BigQuery)
            .and_then(|i| i.grpc_port)
            .map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The environment variables that point clients at this set (see the crate docs), plus
    /// `GOOGLE_CLOUD_PROJECT`.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for inst in &self.instances {
            let host = inst.endpoint();
            match inst.service {
                Service::PubSub => vars.push((PUBSUB_ENV.into(), host)),
                Service::Bigtable => vars.push((BIGTABLE_ENV.into(), host)),
                Service::Storage => vars.push((STORAGE_ENV.into(), format!("http://{host}"))),
                Service::BigQuery => {
                    vars.push((BIGQUERY_ENV.into(), host));
                    if let Some(p) = inst.grpc_port {
                        vars.push((BIGQUERY_GRPC_ENV.into(), format!("127.0.0.1:{p}")));
                    }
                }
            }
        }
        vars.push((PROJECT_ENV.into(), self.project.clone()));
        vars
    }

    /// Sets [`Emulators::env_vars`] in this process's environment. Call it before starting
    /// threads that read the environment (setting variables races with concurrent reads).
    pub fn export_env(&self) {
        for (k, v) in self.env_vars() {
            std::env::set_var(k, v);
        }
    }

    /// Whether the service's process is running (it may have been stopped or have exited).
    pub fn is_running(&mut self, service: Service) -> bool {
        match self.instance_mut(service) {
            Ok(inst) => inst.exited().is_none() && inst.child.is_some(),
            Err(_) => false,
        }
    }

    /// The process group id (= pid of the process that was spawned) of a running service.
    pub fn process_group(&self, service: Service) -> Option<i32> {
        self.instance(service)?
            .child
            .as_ref()
            .map(|c| c.id() as i32)
    }

    /// The log file of a service (its standard output and error, across restarts).
    pub fn log_path(&self, service: Service) -> Option<&Path> {
        self.instance(service).map(|i| i.log.as_path())
    }

    /// The directory holding the log files.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Checks that every started emulator is still running; the error tells which one exited
    /// and shows its log tail. Stopped services ([`Emulators::stop`]) are not reported.
    pub fn check(&mut self) -> Result<(), Error> {
        for inst in &mut self.instances {
            if let Some(err) = inst.exited() {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Stops one emulator (process group: SIGTERM, SIGKILL after 5 s). Its port is kept for
    /// [`Emulators::restart`]; its state (topics, tables, buckets, rows) is lost.
    pub fn stop(&mut self, service: Service) -> Result<(), Error> {
        self.instance_mut(service)?.stop();
        Ok(())
    }

    /// (Re)starts one emulator on the same port(s) and waits until it answers. A running one is
    /// stopped first. It starts empty: the emulators keep their state in memory only.
    pub fn restart(&mut self, service: Service) -> Result<(), Error> {
        let project = self.project.clone();
        let timeout = self.timeout;
        let watchdog = &mut self.watchdog;
        let inst = self
            .instances
            .iter_mut()
            .find(|i| i.service == service)
            .ok_or(Error::NotStarted(service))?;
        inst.stop();
        // The port may still be held briefly by the old process's sockets: retry a few times.
        let deadline = Instant::now() + timeout;
        loop {
            inst.spawn(&project, watchdog)?;
            match inst.wait_ready(&project, deadline, timeout) {
                Ok(()) => return Ok(()),
                Err(e) if inst.port_was_taken(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    self.keep_logs = true;
                    return Err(e);
                }
            }
        }
    }

    /// Stops every emulator (the same as dropping the value).
    pub fn shutdown(self) {}
}

impl Drop for Emulators {
    fn drop(&mut self) {
        // Stop all at once, then wait for each: SIGTERM everything first so that the grace
        // periods overlap.
        for inst in &self.instances {
            if let Some(child) = &inst.child {
                process::signal_group(child.id() as i32, libc::SIGTERM);
            }
        }
        for inst in &mut self.instances {
            inst.stop();
        }
        self.watchdog = None;
        if std::thread::panicking() || self.keep_logs {
            eprintln!("emulators: logs kept in {}", self.log_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Finds the program of `service`, or says which package provides it.
fn resolve(service: Service, options: &Options) -> Result<Launch, Error> {
    match service {
        Service::PubSub => {
            let sdk = locate::gcloud_sdk(options);
            let program = sdk.join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
            require(&program, "Pub/Sub emulator", PUBSUB_PACKAGE)?;
            let java_home = std::env::var_os("JAVA_HOME").map(PathBuf::from);
            let java_ok = java_home
                .as_ref()
                .is_some_and(|h| locate::is_executable(&h.join("bin/java")))
                || locate::which("java").is_some();
            if !java_ok {
                return Err(Error::MissingPackage {
                    what: "Java runtime for the Pub/Sub emulator".into(),
                    looked: "java on PATH, $JAVA_HOME/bin/java".into(),
                    package: JAVA_PACKAGE,
                });
            }
            Ok(Launch {
                program,
                prefix: Vec::new(),
                envs: Vec::new(),
            })
        }
        Service::Bigtable => {
            let sdk = locate::gcloud_sdk(options);
            let program = sdk.join("platform/bigtable-emulator/cbtemulator");
            require(
                &program,
                "Bigtable emulator (cbtemulator)",
                BIGTABLE_PACKAGE,
            )?;
            Ok(Launch {
                program,
                prefix: Vec::new(),
                envs: Vec::new(),
            })
        }
        Service::Storage => Ok(Launch {
            program: locate::venv_dir(options).join("bin/fake-gcs-server"),
            prefix: Vec::new(),
            envs: Vec::new(),
        }),
        Service::BigQuery => {
            let venv = locate::venv_dir(options);
            // DuckDB finds the spatial extension under $HOME/.duckdb/extensions; the set-up script
            // installed it in the venv, so nothing is read from or written to the real home.
            Ok(Launch {
                program: venv.join("bin/python"),
                prefix: vec!["-c".into(), BQEMULATOR_LAUNCHER.into()],
                envs: vec![
                    ("HOME".into(), venv.join("duckdb-home").into_os_string()),
                    ("PYTHONUNBUFFERED".into(), "1".into()),
                    // Automatic snapshots are off (BQEMULATOR_LAUNCHER); snapshots a user takes expire
                    // at once too, so none accumulates.
                    ("BQEMU_TIME_TRAVEL_RETENTION_DAYS".into(), "0".into()),
                ],
            })
        }
    }
}

fn require(program: &Path, what: &str, package: &'static str) -> Result<(), Error> {
    if locate::is_executable(program) {
        Ok(())
    } else {
        Err(Error::MissingPackage {
            what: what.into(),
            looked: program.display().to_string(),
            package,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_round_trip() {
        for s in Service::ALL {
            assert_eq!(s.name().parse::<Service>(), Ok(s));
        }
        assert_eq!("Pub/Sub".parse::<Service>(), Ok(Service::PubSub));
        assert!("spanner".parse::<Service>().unwrap_err().contains("pubsub"));
    }

    #[test]
    fn a_missing_sdk_names_the_debian_package() {
        let options = Options {
            gcloud_sdk: Some("/nonexistent-sdk".into()),
            ..Options::default()
        };
        for (service, package) in [
            (Service::PubSub, PUBSUB_PACKAGE),
            (Service::Bigtable, BIGTABLE_PACKAGE),
        ] {
            let err = Emulators::start_with(&[service], options.clone()).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::MissingPackage { .. }), "{msg}");
            assert!(
                msg.contains(&format!("apt-get install -y {package}")),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn a_missing_venv_without_setup_is_one_actionable_line() {
        let options = Options {
            venv: Some("/nonexistent-venv".into()),
            run_setup: false,
            ..Options::default()
        };
        let msg = Emulators::start_with(&[Service::Storage], options)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("scripts/setup-emulators.sh"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
