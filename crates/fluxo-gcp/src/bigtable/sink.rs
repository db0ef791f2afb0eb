//! The Bigtable sink: each engine batch becomes one or more `MutateRows` requests (split by entries,
//! mutations and bytes), sent concurrently under an outstanding-bytes limit; the per-entry statuses of the
//! response stream become per-element outcomes, so the engine retries only the failed rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxo::metrics::MetricScope;
use fluxo::{Sink, SinkBatch, WriteError};
use tokio::sync::Semaphore;

use super::admin::table_not_found;
use super::client::{AdminClient, BigtableError, WriteClient};
use super::config::{BigtableSinkConfig, ValidConfig};
use super::encode::mutate_rows_request;
use super::mutation::RowMutation;
use crate::error::ConfigError;
use crate::metrics::RequestMetrics;

/// How often, at most, the sink re-reads the table's families after an element named an unknown one.
const FAMILY_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The table's column families as last read.
struct Families {
    names: Arc<HashSet<String>>,
    read_at: Instant,
}

/// Writes [`RowMutation`]s to one Bigtable table with `MutateRows`. Create it with
/// [`BigtableSink::connect`], which checks the table and the configured families first.
pub struct BigtableSink {
    client: WriteClient,
    cfg: Arc<ValidConfig>,
    admin: Option<AdminClient>,
    /// `None` when the schema cannot be read (no admin permission): families are then checked by the
    /// server only.
    families: Option<Mutex<Families>>,
    outstanding: Arc<Semaphore>,
    stats: SinkStats,
    /// Set when the sink is added to a pipeline ([`Sink::register_metrics`]).
    requests: Option<RequestMetrics>,
}

/// Counters of a [`BigtableSink`], shared with the caller (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    requests: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
}

impl SinkStats {
    /// `MutateRows` requests sent (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Entries (rows) sent in those requests (retries included).
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for BigtableSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigtableSink")
            .field("table", &self.cfg.table_path)
            .field("endpoint", &self.cfg.endpoint)
            .finish()
    }
}

/// One `MutateRows` request: batch indices of its rows.
struct Chunk {
    rows: Vec<usize>,
    bytes: usize,
}

impl BigtableSink {
    /// Validates the configuration, connects, and checks within `connect_timeout_ms` that the table and
    /// the configured families exist. Errors are one line: [`ConfigError::Invalid`],
    /// [`ConfigError::Unreachable`] (no answer, refused, no credentials) or [`ConfigError::NotFound`]
    /// (with the `cbt` command that creates what is missing).
    pub async fn connect(config: &BigtableSinkConfig) -> Result<Self, ConfigError> {
        let cfg = config.validate()?;
        let unreachable = |reason: String| ConfigError::Unreachable {
            service: "Bigtable",
            endpoint: cfg.endpoint.to_string(),
            reason,
        };
        let client = WriteClient::connect(&cfg).await?;
        let admin = AdminClient::connect(&cfg).await?;
        let schema = tokio::time::timeout(
            cfg.connect_timeout,
            admin.get_table(&cfg.table, cfg.connect_timeout),
        )
        .await
        .map_err(|_| unreachable(no_answer(&cfg)))?;
        let families = match schema {
            Ok(Some(families)) => {
                let names: HashSet<String> = families.into_keys().collect();
                if let Some(missing) = cfg.families.iter().find(|f| !names.contains(*f)) {
                    return Err(ConfigError::NotFound {
                        service: "Bigtable",
                        kind: "column family",
                        name: format!("{}:{missing}", cfg.table_path),
                        hint: format!(
                            "; add it with `cbt -project {} -instance {} createfamily {} {missing}` or fluxo_gcp::bigtable::AdminClient::provision_table",
                            cfg.project, cfg.instance, cfg.table
                        ),
                    });
                }
                Some(Mutex::new(Families {
                    names: Arc::new(names),
                    read_at: Instant::now(),
                }))
            }
            Ok(None) => return Err(table_not_found(&cfg)),
            Err(e) if e.code() == Some(tonic::Code::PermissionDenied) => {
                tracing::warn!(table = %cfg.table_path, error = %e, "cannot read the Bigtable schema; column families are checked by the server only");
                None
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
                ) =>
            {
                return Err(unreachable(no_answer(&cfg)))
            }
            Err(e) => return Err(unreachable(e.to_string().replace('\n', " "))),
        };
        let max_outstanding = cfg.max_outstanding_bytes;
        Ok(BigtableSink {
            client,
            admin: families.is_some().then_some(admin),
            families,
            outstanding: Arc::new(Semaphore::new(max_outstanding)),
            stats: SinkStats::default(),
            requests: None,
            cfg: Arc::new(cfg),
        })
    }

    /// The sink's counters (keep a clone before handing the sink to a pipeline).
    pub fn stats(&self) -> SinkStats {
        self.stats.clone()
    }

    /// The checked configuration.
    pub fn config(&self) -> &ValidConfig {
        &self.cfg
    }

    fn known_families(&self) -> Option<Arc<HashSet<String>>> {
        self.families
            .as_ref()
            .map(|f| Arc::clone(&f.lock().unwrap_or_else(|p| p.into_inner()).names))
    }

    /// Re-reads the families when an element named an unknown one (the table may have gained it), at
    /// most every 30 s. Returns the new set when it changed.
    async fn refresh_families(&self) -> Option<Arc<HashSet<String>>> {
        let (families, admin) = (self.families.as_ref()?, self.admin.as_ref()?);
        {
            let mut f = families.lock().unwrap_or_else(|p| p.into_inner());
            if f.read_at.elapsed() < FAMILY_REFRESH_INTERVAL {
                return None;
            }
            // Claim the refresh so concurrent writes do not repeat it.
            f.read_at = Instant::now();
        }
        let read = admin
            .get_table(&self.cfg.table, self.cfg.connect_timeout)
            .await;
        let Ok(Some(cf)) = read else {
            return None;
        };
        let names: Arc<HashSet<String>> = Arc::new(cf.into_keys().collect());
        let mut f = families.lock().unwrap_or_else(|p| p.into_inner());
        f.names = Arc::clone(&names);
        Some(names)
    }

    /// Splits the valid rows of `values` into requests; invalid rows go to `failures`.
    fn plan(
        &self,
        values: &[RowMutation],
        known: Option<&HashSet<String>>,
        failures: &mut Vec<(usize, BigtableError)>,
        unknown_family: &mut Vec<usize>,
    ) -> Vec<Chunk> {
        let cfg = &self.cfg;
        let is_known = |f: &str| match known {
            None => true,
            Some(k) => k.contains(f),
        };
        let mut chunks = Vec::new();
        let mut cur = Chunk {
            rows: Vec::with_capacity(cfg.max_entries_per_request.min(values.len())),
            bytes: 0,
        };
        let mut split = fluxo::RequestSplitter::new(
            cfg.max_entries_per_request,
            [cfg.max_mutations_per_request, cfg.max_bytes_per_request],
        );
        for (i, row) in values.iter().enumerate() {
            if let Err(reason) = row.check(Some(&is_known)) {
                if reason.contains("does not exist in the table") {
                    unknown_family.push(i);
                }
                failures.push((i, BigtableError::InvalidElement(reason)));
                continue;
            }
            let n = row.mutation_count();
            if n == 0 {
                // Nothing to write (Bigtable refuses entries without mutations): done.
                continue;
            }
            let b = row.wire_bytes();
            if split.add([n, b]) {
                let rest = values.len() - i;
                chunks.push(std::mem::replace(
                    &mut cur,
                    Chunk {
                        rows: Vec::with_capacity(cfg.max_entries_per_request.min(rest)),
                        bytes: 0,
                    },
                ));
            }
            cur.rows.push(i);
            cur.bytes += b;
        }
        if !cur.rows.is_empty() {
            chunks.push(cur);
        }
        chunks
    }

    /// Sends one request and returns the failed rows (batch indices), or the request-level error.
    async fn send(
        &self,
        values: &[RowMutation],
        chunk: &Chunk,
    ) -> Result<Vec<(usize, BigtableError)>, BigtableError> {
        let permits = chunk.bytes.clamp(1, self.cfg.max_outstanding_bytes) as u32;
        let _permit =
            self.outstanding
                .acquire_many(permits)
                .await
                .map_err(|_| BigtableError::Transport {
                    op: "MutateRows",
                    reason: "sink closed".into(),
                })?;
        let body = mutate_rows_request(
            &self.cfg.table_path,
            &self.cfg.app_profile_id,
            values,
            &chunk.rows,
        );
        let n = chunk.rows.len();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.entries.fetch_add(n as u64, Ordering::Relaxed);
        let call = async {
            let mut stream = self.client.mutate_rows(body, self.cfg.timeout).await?;
            let mut reported = vec![false; n];
            let mut failed = Vec::new();
            loop {
                let msg = match stream.message().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    // The stream broke: entries already reported keep their status, the others retry.
                    Err(status) if reported.iter().any(|r| *r) => {
                        tracing::debug!(%status, "MutateRows stream ended early");
                        break;
                    }
                    Err(status) => {
                        return Err(BigtableError::from_status_on(
                            &self.cfg.endpoint,
                            "MutateRows",
                            &status,
                        ))
                    }
                };
                for entry in msg.entries {
                    let Some(idx) = usize::try_from(entry.index).ok().filter(|i| *i < n) else {
                        continue;
                    };
                    reported[idx] = true;
                    if let Some(st) = entry.status.filter(|s| s.code != 0) {
                        let status = tonic::Status::new(tonic::Code::from(st.code), st.message);
                        failed.push((
                            chunk.rows[idx],
                            BigtableError::from_status_on(
                                &self.cfg.endpoint,
                                "MutateRows",
                                &status,
                            ),
                        ));
                    }
                }
            }
            for (idx, _) in reported.iter().enumerate().filter(|(_, r)| !**r) {
                failed.push((
                    chunk.rows[idx],
                    BigtableError::Transport {
                        op: "MutateRows",
                        reason: "no status for this entry in the response".into(),
                    },
                ));
            }
            Ok(failed)
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(BigtableError::Transport {
                op: "MutateRows",
                reason: format!("timed out after {} ms", self.cfg.timeout.as_millis()),
            }),
        };
        crate::metrics::record(self.requests.as_ref(), started, &result);
        result
    }
}

fn no_answer(cfg: &ValidConfig) -> String {
    format!(
        "no answer within {} ms; check that the server runs and the endpoint (or BIGTABLE_EMULATOR_HOST) is right",
        cfg.connect_timeout.as_millis()
    )
}

/// A request-level failure: a missing table (deleted or not yet re-created) is retried like an
/// unavailable server rather than rejecting every row, since the rows themselves are fine.
fn request_level(e: BigtableError) -> BigtableError {
    match e {
        BigtableError::Status {
            op,
            code: tonic::Code::NotFound,
            message,
            ..
        } => BigtableError::Status {
            op,
            code: tonic::Code::NotFound,
            message,
            retriable: true,
        },
        other => other,
    }
}

impl Sink<RowMutation> for BigtableSink {
    type Error = BigtableError;

    fn register_metrics(&mut self, metrics: &MetricScope) {
        self.requests = Some(RequestMetrics::new(metrics, "bigtable", "MutateRows"));
    }

    async fn write(&self, batch: &SinkBatch<RowMutation>) -> Result<(), WriteError<BigtableError>> {
        let values = batch.values();
        let mut failures = Vec::new();
        let mut unknown = Vec::new();
        let known = self.known_families();
        let mut chunks = self.plan(values, known.as_deref(), &mut failures, &mut unknown);
        if !unknown.is_empty() {
            if let Some(fresh) = self.refresh_families().await {
                // The table may have gained the family: plan those rows again.
                let retry: Vec<RowMutation> = unknown.iter().map(|&i| values[i].clone()).collect();
                let mut again = Vec::new();
                let mut still = Vec::new();
                let extra = self.plan(&retry, Some(&fresh), &mut again, &mut still);
                let now_ok: HashSet<usize> = unknown
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| !again.iter().any(|(k, _)| k == j))
                    .map(|(_, &i)| i)
                    .collect();
                failures.retain(|(i, _)| !now_ok.contains(i));
                for c in extra {
                    chunks.push(Chunk {
                        rows: c.rows.iter().map(|&j| unknown[j]).collect(),
                        bytes: c.bytes,
                    });
                }
            }
        }
        // Collected: a lazy iterator of closures held across the sends would defeat the proof
        // that this future is `Send`.
        let sends: Vec<_> = chunks
            .iter()
            .map(|c| {
                let send = async move { self.send(values, c).await.map_err(request_level) };
                (c.rows.iter().copied(), send)
            })
            .collect();
        // Every request at once: the outstanding-bytes semaphore in `send` bounds them. When every
        // row failed with its request (server down, timeout): one failure for the batch.
        let out = fluxo::send_requests(
            sends,
            chunks.len(),
            values.len(),
            failures,
            fluxo::AllFailed::EveryRequest,
        )
        .await;
        if let Err(WriteError::Partial(failures)) = &out {
            log_failures(failures);
        }
        out
    }
}

fn log_failures(failures: &[(usize, BigtableError)]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let mut by_kind: HashMap<String, usize> = HashMap::new();
    for (_, e) in failures {
        *by_kind.entry(e.to_string()).or_default() += 1;
    }
    for (error, rows) in by_kind {
        tracing::debug!(rows, %error, "Bigtable rows failed");
    }
}
