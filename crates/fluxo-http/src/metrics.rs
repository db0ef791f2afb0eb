//! Metric families of the HTTP source, registered when it is added to a pipeline.
//!
//! Counts (pages, records, retries) are read at scrape time from the run's [`RunSummary`]; the
//! waits between attempts and the times of the last commit and the last caught-up run are
//! recorded as they happen.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fluxo::metrics::{Def, Gauge, Histogram, MetricScope};

use crate::source::RunSummary;

/// Pages fetched.
pub const PAGES: Def = Def::counter(
    "fluxo_http_pages",
    "Pages the HTTP source fetched (broken ones included)",
    &["step"],
);
/// Broken pages.
pub const BROKEN_PAGES: Def = Def::counter(
    "fluxo_http_broken_pages",
    "Pages emitted as broken (unreadable body after every retry, or above max_page_bytes)",
    &["step"],
);
/// Records in the fetched pages.
pub const RECORDS: Def = Def::counter(
    "fluxo_http_records",
    "Records in the pages the HTTP source fetched",
    &["step"],
);
/// Retried requests.
pub const RETRIES: Def = Def::counter(
    "fluxo_http_retries",
    "Page requests retried after a timeout, a 408, a 429 or a 5xx answer",
    &["step"],
);
/// Pages whose records were not all delivered.
pub const FAILED_PAGES: Def = Def::counter(
    "fluxo_http_failed_pages",
    "Pages whose records were not all acknowledged downstream (the checkpoint stays before them)",
    &["step"],
);
/// Waits before retries (backoff or Retry-After, whichever is longer).
pub const RETRY_WAIT: Def = Def::histogram(
    "fluxo_http_retry_wait_seconds",
    "Wait before each retried page request (the backoff, or the server's Retry-After when longer), in seconds",
    &["step"],
    &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
);
/// When the checkpoint last moved.
pub const CHECKPOINT_COMMITTED: Def = Def::gauge(
    "fluxo_http_checkpoint_commit_timestamp_seconds",
    "When the HTTP source last committed a new checkpoint position, in seconds since the Unix epoch (the position itself is opaque text: see the logs and the checkpoint row)",
    &["step"],
);
/// Checkpoint commits.
pub const CHECKPOINT_COMMITS: Def = Def::counter(
    "fluxo_http_checkpoint_commits",
    "Checkpoint positions the HTTP source committed (one per acknowledged page that moved it)",
    &["step"],
);
/// When a run last caught up.
pub const LAST_SUCCESS: Def = Def::gauge(
    "fluxo_http_last_success_timestamp_seconds",
    "When a run of the HTTP source last ended caught up (every available page read and acknowledged), in seconds since the Unix epoch",
    &["step"],
);

/// Every family of this crate.
pub const ALL: &[Def] = &[
    PAGES,
    BROKEN_PAGES,
    RECORDS,
    RETRIES,
    FAILED_PAGES,
    RETRY_WAIT,
    CHECKPOINT_COMMITS,
    CHECKPOINT_COMMITTED,
    LAST_SUCCESS,
];

/// The handles a running source records into.
#[derive(Clone, Debug)]
pub(crate) struct SourceMetrics {
    retry_wait: Histogram,
    commits: fluxo::metrics::Counter,
    committed_at: Gauge,
    last_success: Gauge,
}

impl SourceMetrics {
    pub(crate) fn register(scope: &MetricScope, summary: &Arc<Mutex<RunSummary>>) -> Self {
        type Read = fn(&RunSummary) -> u64;
        let counters: [(&Def, Read); 5] = [
            (&PAGES, |s| s.pages),
            (&BROKEN_PAGES, |s| s.broken_pages),
            (&RECORDS, |s| s.records),
            (&RETRIES, |s| s.retries),
            (&FAILED_PAGES, |s| s.failed_pages),
        ];
        for (def, read) in counters {
            let summary = Arc::clone(summary);
            scope.counter_fn(def, &[], move || {
                read(&summary.lock().unwrap_or_else(|p| p.into_inner()))
            });
        }
        Self {
            retry_wait: scope.histogram(&RETRY_WAIT, &[]),
            commits: scope.counter(&CHECKPOINT_COMMITS, &[]),
            committed_at: scope.gauge(&CHECKPOINT_COMMITTED, &[]),
            last_success: scope.gauge(&LAST_SUCCESS, &[]),
        }
    }

    pub(crate) fn waited(&self, wait: Duration) {
        self.retry_wait.observe_duration(wait);
    }

    pub(crate) fn committed(&self) {
        self.commits.inc();
        self.committed_at.set(unix_seconds());
    }

    pub(crate) fn caught_up(&self) {
        self.last_success.set(unix_seconds());
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
