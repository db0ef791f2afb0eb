//! Sources: bounded (finite: the run ends when they are exhausted) and unbounded (streams: they run until
//! shutdown) through one trait, so the same graph runs on a stream or on a replay.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::Watermark;
use crate::element::{Data, Element, Timestamp};
use crate::finalizer::Status;
use crate::metrics::{MetricScope, SourceMetrics};
use crate::operator::Output;
use crate::shutdown::ShutdownSignal;

/// A boxed error from user code (sources and the like).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Produces elements. `run` emits through the context until the input is exhausted (a bounded source:
/// return `Ok(())`, the watermark then jumps to the end of time) or until the context's shutdown signal
/// fires (an unbounded source: stop reading, wait for outstanding acknowledgements if it tracks them, and
/// return). An `Err` stops the pipeline: everything emitted so far is still drained.
pub trait Source: Send + 'static {
    /// Element type.
    type Output: Data;

    /// Called once while the graph is built, with a scope whose label `step` is the source's
    /// step: declare the source's own metric families and keep the handles (see
    /// [`crate::metrics`]). Does nothing by default.
    fn register_metrics(&mut self, _metrics: &MetricScope) {}

    /// Reads and emits.
    fn run(
        self,
        ctx: SourceContext<Self::Output>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The downstream steps are gone (the pipeline is failing); the source should stop.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline no longer accepts elements from this source")]
pub struct Stopped;

/// What a running source uses to emit elements and watermarks.
pub struct SourceContext<T> {
    output: Option<Arc<Output<T>>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    batch_size: usize,
    watermark: Timestamp,
    activity: Arc<Activity>,
    shutdown: ShutdownSignal,
    metrics: SourceMetrics,
}

struct Activity {
    start: Instant,
    last_micros: AtomicU64,
    idle: AtomicBool,
    /// An emit is waiting for room downstream: the source is busy, not idle.
    emitting: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.last_micros
            .store(self.start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl<T: Data> SourceContext<T> {
    /// Emits elements, waiting while the pipeline is full (backpressure). Large vectors are split into
    /// batches of the pipeline's batch size.
    pub async fn emit(&mut self, mut elements: Vec<Element<T>>) -> Result<(), Stopped> {
        if elements.is_empty() {
            return Ok(());
        }
        let Some(output) = self.output.clone() else {
            for e in &elements {
                e.finalizers.update(Status::Errored);
            }
            return Err(Stopped);
        };
        self.mark_active();
        self.metrics.emitted.inc_by(elements.len() as u64);
        if !output.has_consumers() {
            return Ok(());
        }
        self.activity.emitting.store(true, Ordering::Relaxed);
        while elements.len() > self.batch_size {
            let rest = elements.split_off(self.batch_size);
            output.send(elements).await;
            elements = rest;
        }
        output.send(elements).await;
        self.activity.emitting.store(false, Ordering::Relaxed);
        self.activity.touch();
        if output.all_closed() {
            return Err(Stopped);
        }
        Ok(())
    }

    /// Emits values with their event times and no acknowledgement tracking.
    pub async fn emit_values(
        &mut self,
        values: impl IntoIterator<Item = (T, Timestamp)>,
    ) -> Result<(), Stopped> {
        let elements = values
            .into_iter()
            .map(|(v, ts)| Element::new(v, ts))
            .collect();
        self.emit(elements).await
    }

    fn mark_active(&self) {
        self.activity.touch();
        if self.activity.idle.swap(false, Ordering::Relaxed) {
            self.metrics.set_idle(false);
        }
    }

    /// Declares that no element with an event time before `ts` will follow. Ignored if not an advance.
    pub fn advance_watermark(&mut self, ts: Timestamp) {
        if ts > self.watermark {
            // Progress is activity: a source that only advances its watermark is not idle.
            self.mark_active();
            self.watermark = ts;
            self.metrics.set_watermark(ts.0);
            if let Some(o) = &self.output {
                o.send_watermark(Watermark::EventTime(ts));
            }
        }
    }

    /// Declares the source idle now (the engine also does so after the configured idle timeout).
    pub fn mark_idle(&mut self) {
        if !self.activity.idle.swap(true, Ordering::Relaxed) {
            self.metrics.set_idle(true);
            if let Some(o) = &self.output {
                o.send_watermark(Watermark::Idle);
            }
        }
    }

    /// Ends this source's output while the source keeps running: downstream steps see the end of the
    /// input (windows fire, sinks flush), so outstanding acknowledgements can resolve and the source can
    /// still act on them (ack or nack upstream) before returning. Later emits fail with [`Stopped`].
    pub fn close_output(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.output = None;
    }

    /// The watermark declared so far.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// Fires when the pipeline is asked to stop: stop reading new input then.
    pub fn shutdown(&self) -> &ShutdownSignal {
        &self.shutdown
    }

    /// Preferred number of elements per emitted batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// This source's metrics.
    pub fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }

    /// Counts acknowledgement outcomes in the source metrics (acked / nacked / rejected).
    pub fn record_statuses(&self, statuses: &[Status]) {
        let (mut ok, mut err, mut rej) = (0, 0, 0);
        for s in statuses {
            match s {
                Status::Delivered => ok += 1,
                Status::Errored => err += 1,
                Status::Rejected => rej += 1,
            }
        }
        self.metrics.acked.inc_by(ok);
        self.metrics.nacked.inc_by(err + rej);
        self.metrics.rejected.inc_by(rej);
    }
}

impl<T> Drop for SourceContext<T> {
    fn drop(&mut self) {
        // The idle ticker holds a handle to the output; stop it so the output closes with the source.
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

/// A bounded source over an in-memory iterator of values and event times (replays, examples, tools).
/// The watermark follows the largest event time emitted so far, so out-of-order input is fine as long as
/// it is not older than what was already emitted in earlier batches.
pub struct IterSource<I> {
    iter: I,
}

impl<I> IterSource<I> {
    /// Wraps an iterator of `(value, event time)`.
    pub fn new(iter: I) -> Self {
        IterSource { iter }
    }
}

impl<T, I> Source for IterSource<I>
where
    T: Data,
    I: Iterator<Item = (T, Timestamp)> + Send + 'static,
{
    type Output = T;

    async fn run(mut self, mut ctx: SourceContext<T>) -> Result<(), BoxError> {
        let batch = ctx.batch_size();
        let mut max = Timestamp::MIN;
        loop {
            let elements: Vec<Element<T>> = self
                .iter
                .by_ref()
                .take(batch)
                .map(|(v, ts)| {
                    max = max.max(ts);
                    Element::new(v, ts)
                })
                .collect();
            if elements.is_empty() || ctx.shutdown().is_triggered() {
                return Ok(());
            }
            ctx.emit(elements).await?;
            ctx.advance_watermark(max);
        }
    }
}

/// Runs a source with idle detection; returns when it finishes.
pub(crate) async fn run_source<S: Source>(
    source: S,
    output: Output<S::Output>,
    batch_size: usize,
    idle_timeout: Option<Duration>,
    shutdown: ShutdownSignal,
    metrics: SourceMetrics,
) -> Result<(), BoxError> {
    let output = Arc::new(output);
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_micros: AtomicU64::new(0),
        idle: AtomicBool::new(false),
        emitting: AtomicBool::new(false),
    });
    let ticker = idle_timeout.map(|timeout| {
        let output = Arc::clone(&output);
        let activity = Arc::clone(&activity);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let period = (timeout / 4).max(Duration::from_millis(1));
            loop {
                tokio::time::sleep(period).await;
                let now = activity.start.elapsed().as_micros() as u64;
                let last = activity.last_micros.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= timeout.as_micros() as u64
                    && !activity.emitting.load(Ordering::Relaxed)
                    && !activity.idle.swap(true, Ordering::Relaxed)
                {
                    metrics.set_idle(true);
                    output.send_watermark(Watermark::Idle);
                }
            }
        })
    });
    let ctx = SourceContext {
        output: Some(output),
        ticker,
        batch_size: batch_size.max(1),
        watermark: Timestamp::MIN,
        activity,
        shutdown,
        metrics: metrics.clone(),
    };
    let result = source.run(ctx).await;
    metrics.set_watermark(Timestamp::MAX.0);
    result
}
