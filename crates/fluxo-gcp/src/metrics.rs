//! Metric families of the Google Cloud connectors, registered through the engine's open registry
//! ([`fluxo::metrics`]) when a connector is added to a pipeline.
//!
//! Every request a sink sends to a Google API is counted by outcome and timed
//! ([`REQUESTS`], [`REQUEST_DURATION`], one [`RequestMetrics`] per sink and method); the Pub/Sub
//! source exports the counters it keeps for itself ([`PUBSUB_PULLS`] and the rest) read at scrape
//! time, so its hot path is unchanged.

use std::time::Instant;

use fluxo::metrics::{buckets, Counter, Def, Histogram, MetricScope};
use fluxo::ErrorClass;

/// Outcome label of a request that succeeded.
pub const OUTCOME_OK: &str = "ok";
/// Outcome label of a request that failed with an error worth retrying.
pub const OUTCOME_RETRIABLE: &str = "retriable_error";
/// Outcome label of a request that failed for good.
pub const OUTCOME_FATAL: &str = "fatal_error";

/// Requests sent to a Google Cloud API, by outcome.
pub const REQUESTS: Def = Def::counter(
    "fluxo_gcp_requests",
    "Requests a connector sent to a Google Cloud API (each attempt), by service, method and outcome (ok, retriable_error, fatal_error)",
    &["step", "service", "method", "outcome"],
);

/// Duration of the requests of [`REQUESTS`].
pub const REQUEST_DURATION: Def = Def::histogram(
    "fluxo_gcp_request_duration_seconds",
    "Duration of each request a connector sent to a Google Cloud API (each attempt, any outcome), in seconds",
    &["step", "service", "method"],
    buckets::SINK_REQUEST_SECONDS,
);

/// Outcome counters and the latency histogram of one API method of one step.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    ok: Counter,
    retriable: Counter,
    fatal: Counter,
    duration: Histogram,
}

impl RequestMetrics {
    /// Resolves the series of `service`/`method` in `scope` (which binds `step`); all three
    /// outcomes exist from the start, so rates and ratios are defined before the first error.
    pub fn new(scope: &MetricScope, service: &'static str, method: &'static str) -> Self {
        let outcome = |o| scope.counter(&REQUESTS, &[service, method, o]);
        Self {
            ok: outcome(OUTCOME_OK),
            retriable: outcome(OUTCOME_RETRIABLE),
            fatal: outcome(OUTCOME_FATAL),
            duration: scope.histogram(&REQUEST_DURATION, &[service, method]),
        }
    }

    /// Records one request that started at `started` and ended with `outcome`
    /// ([`OUTCOME_OK`], [`OUTCOME_RETRIABLE`] or [`OUTCOME_FATAL`]).
    pub fn record_outcome(&self, started: Instant, outcome: &'static str) {
        self.duration.observe_duration(started.elapsed());
        match outcome {
            OUTCOME_OK => self.ok.inc(),
            OUTCOME_RETRIABLE => self.retriable.inc(),
            _ => self.fatal.inc(),
        };
    }

    /// Records one request that started at `started` and ended with `result`.
    pub fn record<T, E: ErrorClass>(&self, started: Instant, result: &Result<T, E>) {
        self.duration.observe_duration(started.elapsed());
        match result {
            Ok(_) => self.ok.inc(),
            Err(e) if e.is_retriable() => self.retriable.inc(),
            Err(_) => self.fatal.inc(),
        };
    }
}

/// Records into `metrics` when a sink was registered in a pipeline (a sink used on its own has none).
pub(crate) fn record<T, E: ErrorClass>(
    metrics: Option<&RequestMetrics>,
    started: Instant,
    result: &Result<T, E>,
) {
    if let Some(metrics) = metrics {
        metrics.record(started, result);
    }
}

/// Pull responses (unary pulls or stream responses) of a Pub/Sub source.
pub const PUBSUB_PULLS: Def = Def::counter(
    "fluxo_pubsub_pulls",
    "Pull responses the Pub/Sub source received (unary pulls or stream responses)",
    &["step"],
);
/// Failed pulls or streams.
pub const PUBSUB_PULL_ERRORS: Def = Def::counter(
    "fluxo_pubsub_pull_errors",
    "Pull requests or streams of the Pub/Sub source that failed (the source backs off and retries)",
    &["step"],
);
/// Messages received.
pub const PUBSUB_RECEIVED: Def = Def::counter(
    "fluxo_pubsub_received_messages",
    "Messages the Pub/Sub source received (redeliveries included)",
    &["step"],
);
/// Ack ids acknowledged.
pub const PUBSUB_ACKED: Def = Def::counter(
    "fluxo_pubsub_acked_messages",
    "Messages whose Acknowledge request succeeded",
    &["step"],
);
/// Ack ids nacked.
pub const PUBSUB_NACKED: Def = Def::counter(
    "fluxo_pubsub_nacked_messages",
    "Messages whose ModifyAckDeadline(0) request (nack) succeeded",
    &["step"],
);
/// Ack ids whose ack or nack failed after retries.
pub const PUBSUB_ACK_ERRORS: Def = Def::counter(
    "fluxo_pubsub_ack_errors",
    "Messages whose ack or nack request failed after retries (Pub/Sub redelivers them)",
    &["step"],
);
/// Lease extensions.
pub const PUBSUB_LEASE_EXTENSIONS: Def = Def::counter(
    "fluxo_pubsub_lease_extensions",
    "Ack deadline extensions sent (one per message per extension)",
    &["step"],
);
/// Messages whose timestamp attribute was missing or invalid.
pub const PUBSUB_INVALID_TIMESTAMPS: Def = Def::counter(
    "fluxo_pubsub_invalid_timestamps",
    "Messages whose timestamp attribute was missing or invalid (publish time used instead)",
    &["step"],
);
/// Messages received again after a delivery this worker saw fail.
pub const PUBSUB_REDELIVERED: Def = Def::counter(
    "fluxo_pubsub_redelivered_messages",
    "Messages received again after a delivery this worker saw fail",
    &["step"],
);
/// Messages held (received, not yet acked or nacked).
pub const PUBSUB_OUTSTANDING_MESSAGES: Def = Def::gauge(
    "fluxo_pubsub_outstanding_messages",
    "Messages received and not yet acked or nacked (flow control holds this under max_outstanding_messages)",
    &["step"],
);
/// Bytes held.
pub const PUBSUB_OUTSTANDING_BYTES: Def = Def::gauge(
    "fluxo_pubsub_outstanding_bytes",
    "Bytes of message data received and not yet acked or nacked",
    &["step"],
);

/// Exposes the counters of a Pub/Sub source, read at scrape time from `stats`.
pub(crate) fn register_pubsub_source(
    scope: &MetricScope,
    stats: &crate::pubsub::PubsubSourceStats,
) {
    type Read = fn(&crate::pubsub::PubsubSourceStats) -> u64;
    let counters: [(&Def, Read); 9] = [
        (&PUBSUB_PULLS, |s| s.pulls()),
        (&PUBSUB_PULL_ERRORS, |s| s.pull_errors()),
        (&PUBSUB_RECEIVED, |s| s.received()),
        (&PUBSUB_ACKED, |s| s.acked()),
        (&PUBSUB_NACKED, |s| s.nacked()),
        (&PUBSUB_ACK_ERRORS, |s| s.ack_errors()),
        (&PUBSUB_LEASE_EXTENSIONS, |s| s.lease_extensions()),
        (&PUBSUB_INVALID_TIMESTAMPS, |s| s.invalid_timestamps()),
        (&PUBSUB_REDELIVERED, |s| s.redelivered_with_history()),
    ];
    for (def, read) in counters {
        let stats = stats.clone();
        scope.counter_fn(def, &[], move || read(&stats));
    }
    let gauges: [(&Def, Read); 2] = [
        (&PUBSUB_OUTSTANDING_MESSAGES, |s| s.outstanding_messages()),
        (&PUBSUB_OUTSTANDING_BYTES, |s| s.outstanding_bytes()),
    ];
    for (def, read) in gauges {
        let stats = stats.clone();
        scope.gauge_fn(def, &[], move || Some(read(&stats) as f64));
    }
}

/// Every family the connectors can register, for documentation and compliance checks.
pub const ALL: &[Def] = &[
    REQUESTS,
    REQUEST_DURATION,
    PUBSUB_PULLS,
    PUBSUB_PULL_ERRORS,
    PUBSUB_RECEIVED,
    PUBSUB_ACKED,
    PUBSUB_NACKED,
    PUBSUB_ACK_ERRORS,
    PUBSUB_LEASE_EXTENSIONS,
    PUBSUB_INVALID_TIMESTAMPS,
    PUBSUB_REDELIVERED,
    PUBSUB_OUTSTANDING_MESSAGES,
    PUBSUB_OUTSTANDING_BYTES,
];
