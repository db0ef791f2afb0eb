//! Metric families of the ingest job itself (the HTTP source and the Pub/Sub sinks register their
//! own: `fluxo_http_*`, `fluxo_gcp_*`).

use fluxo::metrics::{Counter, Def, Gauge, Metrics};
use fluxo_http::Outcome;

/// Runs by outcome.
pub const RUNS: Def = Def::counter(
    "ingest_runs",
    "Ingest runs by outcome: caught_up, max_pages, deadline, shutdown, lease_held, failed (a run that could not start counts as failed)",
    &["outcome"],
);
/// When the last run ended, by outcome.
pub const LAST_RUN: Def = Def::gauge(
    "ingest_last_run_timestamp_seconds",
    "When the last run with this outcome ended, in seconds since the Unix epoch",
    &["outcome"],
);

/// Every family of this crate.
pub const ALL: &[Def] = &[RUNS, LAST_RUN];

/// Every outcome label value, created up front so a rate over failures is 0 before the first one.
const OUTCOMES: [&str; 6] = [
    "caught_up",
    "max_pages",
    "deadline",
    "shutdown",
    "lease_held",
    "failed",
];

/// The label value of an outcome (a run still `Running` when it returned counts as failed).
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::CaughtUp => "caught_up",
        Outcome::MaxPages => "max_pages",
        Outcome::Deadline => "deadline",
        Outcome::Shutdown => "shutdown",
        Outcome::LeaseHeld => "lease_held",
        Outcome::Failed(_) | Outcome::Running => "failed",
    }
}

/// Counts runs into a registry.
#[derive(Clone, Debug)]
pub struct RunMetrics {
    runs: Vec<(&'static str, Counter, Gauge)>,
}

impl RunMetrics {
    /// Registers [`RUNS`] and [`LAST_RUN`] with every outcome.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            runs: OUTCOMES
                .iter()
                .map(|o| {
                    (
                        *o,
                        metrics.counter(&RUNS, &[o]),
                        metrics.gauge(&LAST_RUN, &[o]),
                    )
                })
                .collect(),
        }
    }

    /// Counts one run that ended with `outcome` (a label of [`outcome_label`]).
    pub fn ended(&self, outcome: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if let Some((_, runs, last)) = self.runs.iter().find(|(o, _, _)| *o == outcome) {
            runs.inc();
            last.set(now);
        }
    }
}
