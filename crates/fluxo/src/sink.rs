//! Sinks: a small trait for the transport, wrapped by the engine with batching (max events, max bytes, max
//! delay), retries with exponential backoff and full jitter driven by [`ErrorClass`], an in-flight request
//! limit, and per-element acknowledgement.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::channel::{Message, Receiver};
use crate::element::{Data, Element, PaneInfo, Timestamp, Window};
use crate::finalizer::{Finalizers, Status};
use crate::metrics::{MetricScope, SinkMetrics, StepMetrics};
use crate::operator::sleep_until;
use crate::source::BoxError;

/// Classifies errors as worth retrying or not, apart from the transport that produced them.
pub trait ErrorClass {
    /// True for transient faults (timeouts, unavailable, throttling): the engine retries with backoff.
    /// False for permanent ones (invalid argument, permission denied): the elements are rejected.
    fn is_retriable(&self) -> bool;
}

/// The error of a sink that cannot fail (printing, discarding): never retried, never produced.
impl ErrorClass for std::convert::Infallible {
    fn is_retriable(&self) -> bool {
        match *self {}
    }
}

/// The failure of one write request.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The whole batch failed.
    All(E),
    /// Only these elements failed (indices into the batch); the others were written.
    Partial(Vec<(usize, E)>),
}

/// Event-time metadata of one element handed to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Event time.
    pub timestamp: Timestamp,
    /// Window.
    pub window: Window,
    /// Pane.
    pub pane: PaneInfo,
}

/// A batch handed to [`Sink::write`]: values plus their event-time metadata, index-aligned.
#[derive(Debug, Clone)]
pub struct SinkBatch<T> {
    values: Vec<T>,
    meta: Vec<Meta>,
    bytes: usize,
}

impl<T> Default for SinkBatch<T> {
    fn default() -> Self {
        SinkBatch {
            values: Vec::new(),
            meta: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T: Data> SinkBatch<T> {
    /// A batch of values with default metadata (tests and tools).
    pub fn from_values(values: Vec<T>) -> Self {
        let bytes = values.iter().map(Data::size_bytes).sum();
        let meta = vec![
            Meta {
                timestamp: Timestamp::MIN,
                window: Window::GLOBAL,
                pane: PaneInfo::default(),
            };
            values.len()
        ];
        SinkBatch {
            values,
            meta,
            bytes,
        }
    }

    /// The values.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// The metadata, aligned with [`SinkBatch::values`].
    pub fn meta(&self) -> &[Meta] {
        &self.meta
    }

    /// Values with their metadata.
    pub fn iter(&self) -> impl Iterator<Item = (&T, &Meta)> {
        self.values.iter().zip(self.meta.iter())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Estimated bytes of the values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Writes batches somewhere durable. `write` may be called concurrently (up to the in-flight limit) and
/// again with the failed part of a batch. It must report success only once the data is durable: the
/// elements are acknowledged right after it returns `Ok`, so a sink must not buffer across calls.
pub trait Sink<T: Data>: Send + Sync + 'static {
    /// Transport error, classified by [`ErrorClass`].
    type Error: std::error::Error + ErrorClass + Send + Sync + 'static;

    /// Called once while the graph is built, with a scope whose label `step` is the sink's step:
    /// declare the sink's own metric families (requests, latencies) and keep the handles (see
    /// [`crate::metrics`]). Does nothing by default.
    fn register_metrics(&mut self, _metrics: &MetricScope) {}

    /// Writes one batch.
    fn write(
        &self,
        batch: &SinkBatch<T>,
    ) -> impl Future<Output = Result<(), WriteError<Self::Error>>> + Send;

    /// Called once after the last write completed, to release resources (connections, clients). Every
    /// element is already acknowledged by then, so nothing written may depend on `close`.
    fn close(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// Retry policy of a sink: exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff ceiling. Default: 100 ms.
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// Largest backoff ceiling. Default: 10 s.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    /// Retries after the first attempt before the remaining elements are marked errored (and so nacked
    /// for redelivery by an acknowledging source). Default: 10.
    pub max_retries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_retries: 10,
        }
    }
}

impl RetryConfig {
    /// The wait before retry `attempt` (0 for the first retry): [`backoff`] between
    /// `initial_backoff` and `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.initial_backoff, self.max_backoff, attempt)
    }
}

/// The one retry wait of the engine and its connectors: exponential backoff with full jitter (the
/// ceiling starts at `initial`, doubles per attempt up to `max`, and the wait is drawn uniformly
/// between zero and the ceiling), so that clients that failed together do not retry together.
/// `attempt` is 0 for the first retry.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Batching and concurrency of a sink step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Largest batch in elements. Default: 500.
    pub max_events: usize,
    /// Largest batch in estimated bytes. Default: 4 MiB.
    pub max_bytes: usize,
    /// Longest time the first element of a batch waits for the batch to fill. Default: 200 ms.
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Write requests in flight at once. Default: 4.
    pub max_in_flight: usize,
    /// Retry policy.
    pub retry: RetryConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            max_events: 500,
            max_bytes: 4 * 1024 * 1024,
            max_delay: Duration::from_millis(200),
            max_in_flight: 4,
            retry: RetryConfig::default(),
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

struct Pending<T> {
    batch: SinkBatch<T>,
    finalizers: Vec<Finalizers>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            batch: SinkBatch::default(),
            finalizers: Vec::new(),
        }
    }
}

impl<T> Pending<T> {
    fn with_capacity(n: usize) -> Self {
        Pending {
            batch: SinkBatch {
                values: Vec::with_capacity(n),
                meta: Vec::with_capacity(n),
                bytes: 0,
            },
            finalizers: Vec::with_capacity(n),
        }
    }
}

/// Writes one batch with retries, then resolves every element's finalizers.
async fn write_with_retry<T: Data, S: Sink<T>>(
    sink: Arc<S>,
    mut pending: Pending<T>,
    retry: RetryConfig,
    metrics: SinkMetrics,
    label: Arc<str>,
) {
    metrics.observe_batch(pending.batch.len() as u64, pending.batch.bytes() as u64);
    let mut attempt = 0u32;
    loop {
        let started = std::time::Instant::now();
        let result = sink.write(&pending.batch).await;
        metrics.observe_request(started.elapsed(), result.is_ok());
        let failures = match result {
            Ok(()) => {
                metrics.written.inc_by(pending.batch.len() as u64);
                return;
            }
            Err(WriteError::All(e)) => {
                let retriable = e.is_retriable();
                if !retriable || attempt >= retry.max_retries {
                    let status = if retriable {
                        Status::Errored
                    } else {
                        Status::Rejected
                    };
                    tracing::warn!(sink = %label, error = %e, elements = pending.batch.len(), attempts = attempt + 1, ?status, "sink write failed");
                    metrics.failed.inc_by(pending.batch.len() as u64);
                    let reason: Arc<str> = Arc::from(format!("{label}: {e}"));
                    for f in &pending.finalizers {
                        f.fail(status, &reason);
                    }
                    return;
                }
                tracing::debug!(sink = %label, error = %e, attempt, "retrying sink write");
                None
            }
            Err(WriteError::Partial(failures)) => Some(failures),
        };
        if let Some(failures) = failures {
            // Keep only the elements that failed retriably; settle the rest now.
            let mut retry_idx = vec![false; pending.batch.len()];
            let last_attempt = attempt >= retry.max_retries;
            let mut given_up = 0u64;
            for (i, e) in &failures {
                let Some(f) = pending.finalizers.get(*i) else {
                    continue;
                };
                if e.is_retriable() && !last_attempt {
                    retry_idx[*i] = true;
                } else {
                    given_up += 1;
                    let status = if e.is_retriable() {
                        Status::Errored
                    } else {
                        Status::Rejected
                    };
                    f.fail(status, &Arc::from(format!("{label}: {e}")));
                    tracing::warn!(sink = %label, error = %e, "sink rejected an element");
                }
            }
            metrics.failed.inc_by(given_up);
            let retried = retry_idx.iter().filter(|r| **r).count();
            metrics
                .written
                .inc_by((pending.batch.len() as u64).saturating_sub(failures.len() as u64));
            if retried == 0 {
                return;
            }
            let old = std::mem::take(&mut pending);
            let mut next = Pending::default();
            for (((value, meta), fin), keep) in old
                .batch
                .values
                .into_iter()
                .zip(old.batch.meta)
                .zip(old.finalizers)
                .zip(retry_idx)
            {
                if keep {
                    next.batch.bytes += value.size_bytes();
                    next.batch.values.push(value);
                    next.batch.meta.push(meta);
                    next.finalizers.push(fin);
                }
            }
            pending = next;
        }
        metrics.retries.inc();
        tokio::time::sleep(retry.backoff(attempt)).await;
        attempt += 1;
    }
}

/// Runs a sink step until its input ends; flushes, waits for in-flight writes, closes the sink.
pub(crate) async fn run_sink<T: Data, S: Sink<T>>(
    sink: S,
    config: SinkConfig,
    mut input: Receiver<T>,
    step: StepMetrics,
    metrics: SinkMetrics,
    label: Arc<str>,
) -> Result<(), BoxError> {
    let sink = Arc::new(sink);
    let max_events = config.max_events.max(1);
    let max_in_flight = config.max_in_flight.max(1);
    let capacity = max_events.min(4096);
    let mut pending: Pending<T> = Pending::with_capacity(capacity);
    let mut deadline: Option<Instant> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut input_open = true;

    let spawn_write = |pending: Pending<T>| {
        write_with_retry(
            Arc::clone(&sink),
            pending,
            config.retry,
            metrics.clone(),
            Arc::clone(&label),
        )
    };

    while input_open || !pending.batch.is_empty() || !in_flight.is_empty() {
        metrics.in_flight().set(in_flight.len() as i64);
        let full = !pending.batch.is_empty()
            && (pending.batch.len() >= max_events
                || pending.batch.bytes() >= config.max_bytes
                || !input_open
                || deadline.is_some_and(|d| d <= Instant::now()));
        if full && in_flight.len() < max_in_flight {
            in_flight.push(spawn_write(std::mem::replace(
                &mut pending,
                Pending::with_capacity(capacity),
            )));
            deadline = None;
            continue;
        }
        let accept_input = input_open && !full;
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            _ = sleep_until(deadline), if deadline.is_some() && !full => {}
            msg = input.recv(), if accept_input => match msg {
                Some(Message::Batch(batch)) => {
                    step.received.inc_by(batch.len() as u64);
                    let started = std::time::Instant::now();
                    let n = batch.len() as u64;
                    for e in batch {
                        if pending.batch.is_empty() {
                            deadline = Some(Instant::now() + config.max_delay);
                        }
                        push(&mut pending, e);
                        if pending.batch.len() >= max_events || pending.batch.bytes() >= config.max_bytes {
                            while in_flight.len() >= max_in_flight {
                                in_flight.next().await;
                            }
                            in_flight.push(spawn_write(std::mem::replace(
                &mut pending,
                Pending::with_capacity(capacity),
            )));
                            deadline = None;
                        }
                    }
                    step.observe_batch(n, started.elapsed());
                }
                Some(Message::Watermark(_)) => {}
                None => input_open = false,
            },
        }
    }
    metrics.in_flight().set(0);
    sink.close().await.map_err(BoxError::from)
}

fn push<T: Data>(pending: &mut Pending<T>, e: Element<T>) {
    pending.batch.bytes += e.value.size_bytes();
    pending.batch.values.push(e.value);
    pending.batch.meta.push(Meta {
        timestamp: e.timestamp,
        window: e.window,
        pane: e.pane,
    });
    pending.finalizers.push(e.finalizers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let r = RetryConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retries: 3,
        };
        for attempt in 0..40 {
            let ceiling = Duration::from_millis(10 * (1u64 << attempt.min(20)))
                .min(Duration::from_millis(50));
            for _ in 0..50 {
                assert!(r.backoff(attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: SinkConfig = serde_json::from_str(r#"{"max_events": 10, "max_delay": 5}"#).unwrap();
        assert_eq!(c.max_events, 10);
        assert_eq!(c.max_delay, Duration::from_millis(5));
        assert_eq!(c.max_in_flight, 4);
        assert!(serde_json::from_str::<SinkConfig>(r#"{"max_event": 10}"#).is_err());
    }
}
