//! The engine's own metric families.
//!
//! Counters are exposed with a `_total` suffix added by the encoder (`fluxo_step_received_elements`
//! is scraped as `fluxo_step_received_elements_total`); histograms expose `_bucket`, `_sum` and
//! `_count` series; gauges are exposed as named. Every series also carries the label `pipeline`.

use super::buckets;
pub use super::def::{Def, Kind};

/// Elements received by a step (label `step`).
pub const STEP_RECEIVED: Def = Def::counter(
    "fluxo_step_received_elements",
    "Elements received by the step",
    &["step"],
);
/// Elements emitted by a step on all its outputs (label `step`).
pub const STEP_SENT: Def = Def::counter(
    "fluxo_step_sent_elements",
    "Elements emitted by the step on all its outputs",
    &["step"],
);
/// Elements routed to a dead-letter output or failed (label `step`).
pub const STEP_ERRORS: Def = Def::counter(
    "fluxo_step_errors",
    "Elements the step routed to its dead-letter output or failed on",
    &["step"],
);
/// Elements dropped on purpose (label `step`).
pub const STEP_DISCARDED: Def = Def::counter(
    "fluxo_step_discarded_elements",
    "Elements the step dropped on purpose (filtered, too late, or output without consumer)",
    &["step"],
);
/// Late elements (label `step`).
pub const STEP_LATE: Def = Def::counter(
    "fluxo_step_late_elements",
    "Elements that arrived behind the watermark (discarded or routed to a late output)",
    &["step"],
);
/// Redelivered records a grouping step did not add again (label `step`).
pub const GROUP_REDELIVERED: Def = Def::counter(
    "fluxo_group_redelivered_elements",
    "Elements of a record delivered again (after a nack) whose value the grouping step's pane already held: not added twice",
    &["step"],
);
/// Processing time per batch (label `step`).
pub const STEP_BATCH_DURATION: Def = Def::histogram(
    "fluxo_step_batch_duration_seconds",
    "Time the step took to process one batch, in seconds",
    &["step"],
    buckets::STEP_BATCH_SECONDS,
);
/// Elements per processed batch (label `step`).
pub const STEP_BATCH_ELEMENTS: Def = Def::histogram(
    "fluxo_step_batch_elements",
    "Number of elements in each batch the step processed",
    &["step"],
    buckets::BATCH_ELEMENTS,
);
/// Output watermark of a step (label `step`).
pub const STEP_WATERMARK: Def = Def::gauge(
    "fluxo_step_watermark_timestamp_seconds",
    "Output watermark of the step, in seconds since the Unix epoch (absent before the first watermark and after end of input)",
    &["step"],
);
/// Wall clock minus the step's output watermark (label `step`).
pub const STEP_WATERMARK_LAG: Def = Def::gauge(
    "fluxo_step_watermark_lag_seconds",
    "Wall-clock time at scrape minus the output watermark of the step, in seconds",
    &["step"],
);

/// Elements emitted by a source (label `step`).
pub const SOURCE_EMITTED: Def = Def::counter(
    "fluxo_source_emitted_elements",
    "Elements the source emitted into the pipeline",
    &["step"],
);
/// Source messages acknowledged (label `step`).
pub const SOURCE_ACKED: Def = Def::counter(
    "fluxo_source_acked_elements",
    "Source messages acknowledged after every copy was durably written or dead-lettered",
    &["step"],
);
/// Source messages negatively acknowledged (label `step`).
pub const SOURCE_NACKED: Def = Def::counter(
    "fluxo_source_nacked_elements",
    "Source messages negatively acknowledged for redelivery after a failure",
    &["step"],
);
/// Source messages refused before entering the pipeline (label `step`).
pub const SOURCE_REJECTED: Def = Def::counter(
    "fluxo_source_rejected_elements",
    "Source messages refused before entering the pipeline",
    &["step"],
);
/// Watermark of a source (label `step`).
pub const SOURCE_WATERMARK: Def = Def::gauge(
    "fluxo_source_watermark_timestamp_seconds",
    "Watermark of the source, in seconds since the Unix epoch (absent before the first watermark and after end of input)",
    &["step"],
);
/// Wall clock minus the source watermark (label `step`).
pub const SOURCE_WATERMARK_LAG: Def = Def::gauge(
    "fluxo_source_watermark_lag_seconds",
    "Wall-clock time at scrape minus the watermark of the source, in seconds",
    &["step"],
);
/// Whether a source is idle (label `step`).
pub const SOURCE_IDLE: Def = Def::gauge(
    "fluxo_source_idle",
    "1 while the source is idle (its watermark is ignored downstream), 0 otherwise",
    &["step"],
);

/// Whether a source reaches what it reads (label `step`).
pub const SOURCE_CONNECTED: Def = Def::gauge(
    "fluxo_source_connected",
    "1 while the source reaches what it reads (its last request succeeded), 0 after a failed one; /readyz fails while a source is at 0",
    &["step"],
);

/// Elements durably written by a sink (label `step`).
pub const SINK_WRITTEN: Def = Def::counter(
    "fluxo_sink_written_elements",
    "Elements the sink durably wrote",
    &["step"],
);
/// Elements a sink gave up on (label `step`).
pub const SINK_FAILED: Def = Def::counter(
    "fluxo_sink_failed_elements",
    "Elements the sink gave up on (fatal error or retries exhausted)",
    &["step"],
);
/// Retried sink requests (label `step`).
pub const SINK_RETRIES: Def = Def::counter(
    "fluxo_sink_retries",
    "Sink requests retried after a transient error",
    &["step"],
);
/// Batches flushed by a sink (label `step`).
pub const SINK_BATCHES: Def =
    Def::counter("fluxo_sink_batches", "Batches the sink flushed", &["step"]);
/// Elements per sink batch (label `step`).
pub const SINK_BATCH_ELEMENTS: Def = Def::histogram(
    "fluxo_sink_batch_elements",
    "Number of elements in each batch the sink flushed",
    &["step"],
    buckets::BATCH_ELEMENTS,
);
/// Bytes per sink batch (label `step`).
pub const SINK_BATCH_BYTES: Def = Def::histogram(
    "fluxo_sink_batch_bytes",
    "Size in bytes of each batch the sink flushed",
    &["step"],
    buckets::SINK_BATCH_BYTES,
);
/// Sink request latency (labels `step`, `outcome`).
pub const SINK_REQUEST_DURATION: Def = Def::histogram(
    "fluxo_sink_request_duration_seconds",
    "Duration of each sink request (one attempt), in seconds, by outcome (ok or error)",
    &["step", "outcome"],
    buckets::SINK_REQUEST_SECONDS,
);
/// Sink requests in flight (label `step`).
pub const SINK_IN_FLIGHT: Def = Def::gauge(
    "fluxo_sink_requests_in_flight",
    "Sink requests currently in flight",
    &["step"],
);

/// Elements queued in a buffer (labels `from`, `to`).
pub const BUFFER_ELEMENTS: Def = Def::gauge(
    "fluxo_buffer_elements",
    "Elements currently queued in the buffer between two steps",
    &["from", "to"],
);
/// Bytes queued in a buffer (labels `from`, `to`).
pub const BUFFER_BYTES: Def = Def::gauge(
    "fluxo_buffer_bytes",
    "Bytes currently queued in the buffer between two steps",
    &["from", "to"],
);
/// Element capacity of a buffer (labels `from`, `to`).
pub const BUFFER_CAPACITY_ELEMENTS: Def = Def::gauge(
    "fluxo_buffer_capacity_elements",
    "Capacity of the buffer in elements",
    &["from", "to"],
);
/// Byte capacity of a buffer (labels `from`, `to`).
pub const BUFFER_CAPACITY_BYTES: Def = Def::gauge(
    "fluxo_buffer_capacity_bytes",
    "Capacity of the buffer in bytes",
    &["from", "to"],
);
/// Highest element depth of a buffer (labels `from`, `to`).
pub const BUFFER_PEAK_ELEMENTS: Def = Def::gauge(
    "fluxo_buffer_peak_elements",
    "Highest number of elements queued in the buffer since the run started",
    &["from", "to"],
);
/// Highest byte depth of a buffer (labels `from`, `to`).
pub const BUFFER_PEAK_BYTES: Def = Def::gauge(
    "fluxo_buffer_peak_bytes",
    "Highest number of bytes queued in the buffer since the run started",
    &["from", "to"],
);

/// Always 1; labels `version` (of the engine crate) and `pipeline`: which build runs where.
pub const BUILD_INFO: Def = Def::gauge(
    "fluxo_build_info",
    "Always 1; the label version is the engine's version (join on it to see which build runs)",
    &["version"],
);

/// Families of grouping steps (`group_by_key`, `combine_per_key`, ...), registered by a pipeline
/// that has one.
pub const GROUPING: &[Def] = &[GROUP_REDELIVERED];

/// Every family, in exposition order.
pub const ALL: &[Def] = &[
    BUILD_INFO,
    STEP_RECEIVED,
    STEP_SENT,
    STEP_ERRORS,
    STEP_DISCARDED,
    STEP_LATE,
    STEP_BATCH_DURATION,
    STEP_BATCH_ELEMENTS,
    SOURCE_EMITTED,
    SOURCE_ACKED,
    SOURCE_NACKED,
    SOURCE_REJECTED,
    SOURCE_IDLE,
    SOURCE_CONNECTED,
    SINK_WRITTEN,
    SINK_FAILED,
    SINK_RETRIES,
    SINK_BATCHES,
    SINK_BATCH_ELEMENTS,
    SINK_BATCH_BYTES,
    SINK_REQUEST_DURATION,
    SINK_IN_FLIGHT,
    BUFFER_ELEMENTS,
    BUFFER_BYTES,
    BUFFER_CAPACITY_ELEMENTS,
    BUFFER_CAPACITY_BYTES,
    BUFFER_PEAK_ELEMENTS,
    BUFFER_PEAK_BYTES,
    STEP_WATERMARK,
    STEP_WATERMARK_LAG,
    SOURCE_WATERMARK,
    SOURCE_WATERMARK_LAG,
];
