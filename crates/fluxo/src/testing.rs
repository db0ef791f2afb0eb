//! Test utilities for pipelines built on the engine: a scripted source (like Beam's `TestStream`), a
//! generated source for volume tests, a redelivering source (like a Pub/Sub subscription), a collecting
//! sink with fault injection, a discarding sink, and helpers to assert on outputs per window and pane.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::element::{Data, Element, PaneInfo, Timestamp, Window};
use crate::finalizer::{ack_batch, ack_batch_with_ids, Status};
use crate::sink::{ErrorClass, Sink, SinkBatch, WriteError};
use crate::source::{BoxError, Source, SourceContext};

#[derive(Debug, Clone)]
enum Event<T> {
    Elements(Vec<(T, Timestamp)>),
    Watermark(Timestamp),
    Idle,
    Sleep(Duration),
}

/// Outcomes of every element emitted by an acknowledging test source, in emission order.
#[derive(Clone, Default)]
pub struct AckLog {
    batches: Arc<Mutex<Vec<JoinHandle<Vec<Status>>>>>,
}

impl AckLog {
    fn push(&self, h: JoinHandle<Vec<Status>>) {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(h);
    }

    /// True when every batch emitted so far has resolved (all its elements finished everywhere).
    pub fn all_resolved(&self) -> bool {
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|h| h.is_finished())
    }

    /// Waits for every batch emitted so far to resolve and returns the statuses in emission order.
    /// Call it after the run finished.
    pub async fn statuses(&self) -> Vec<Status> {
        let handles: Vec<_> =
            std::mem::take(&mut *self.batches.lock().unwrap_or_else(|p| p.into_inner()));
        let mut all = Vec::new();
        for h in handles {
            match h.await {
                Ok(s) => all.extend(s),
                Err(e) => panic!("ack waiter failed: {e}"),
            }
        }
        all
    }
}

fn track<T>(elements: &mut [Element<T>], log: &AckLog) {
    let (fins, rx) = ack_batch(elements.len());
    for (e, f) in elements.iter_mut().zip(fins) {
        e.finalizers = f.into();
    }
    log.push(tokio::spawn(rx.wait()));
}

/// A scripted source: elements with timestamps, watermark advances, idle periods and pauses, replayed in
/// order. Bounded by default; [`TestStream::until_shutdown`] makes it wait for shutdown like a stream.
#[derive(Debug, Clone)]
pub struct TestStream<T> {
    events: Vec<Event<T>>,
    acks: Option<AckLogHandle>,
    until_shutdown: bool,
}

#[derive(Clone)]
struct AckLogHandle(AckLog);

impl Debug for AckLogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckLog")
    }
}

impl<T: Data> Default for TestStream<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Data> TestStream<T> {
    /// An empty script.
    pub fn new() -> Self {
        TestStream {
            events: Vec::new(),
            acks: None,
            until_shutdown: false,
        }
    }

    /// Emits these values with these event times as one batch.
    pub fn add_values(mut self, values: impl IntoIterator<Item = (T, Timestamp)>) -> Self {
        self.events
            .push(Event::Elements(values.into_iter().collect()));
        self
    }

    /// Advances the source watermark.
    pub fn advance_watermark(mut self, to: Timestamp) -> Self {
        self.events.push(Event::Watermark(to));
        self
    }

    /// Declares the source idle.
    pub fn idle(mut self) -> Self {
        self.events.push(Event::Idle);
        self
    }

    /// Waits this long (processing time) before the next event.
    pub fn sleep(mut self, d: Duration) -> Self {
        self.events.push(Event::Sleep(d));
        self
    }

    /// Tracks acknowledgement of every element; the returned log reports the outcomes.
    pub fn with_acks(mut self) -> (Self, AckLog) {
        let log = AckLog::default();
        self.acks = Some(AckLogHandle(log.clone()));
        (self, log)
    }

    /// After the script, keep running until shutdown (behaves like an unbounded source).
    pub fn until_shutdown(mut self) -> Self {
        self.until_shutdown = true;
        self
    }
}

impl<T: Data> Source for TestStream<T> {
    type Output = T;

    async fn run(self, mut ctx: SourceContext<T>) -> Result<(), BoxError> {
        for event in self.events {
            if ctx.shutdown().is_triggered() {
                break;
            }
            match event {
                Event::Elements(values) => {
                    let mut elements: Vec<_> = values
                        .into_iter()
                        .map(|(v, ts)| Element::new(v, ts))
                        .collect();
                    if let Some(log) = &self.acks {
                        track(&mut elements, &log.0);
                    }
                    ctx.emit(elements).await?;
                }
                Event::Watermark(t) => ctx.advance_watermark(t),
                Event::Idle => ctx.mark_idle(),
                Event::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
        if self.until_shutdown {
            ctx.shutdown().wait().await;
        }
        Ok(())
    }
}

/// A source of `count` generated values (`f(i)` for i in 0..count), emitted in batches of the pipeline's
/// batch size with event time `i` microseconds, optionally with acknowledgement tracking. For volume,
/// backpressure and drain tests and for benchmarks. Stops early on shutdown.
pub struct GeneratorSource<T, F> {
    count: u64,
    f: F,
    acks: Option<AckLog>,
    count_acks: bool,
    pause_every: Option<(u64, Duration)>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Data, F: Fn(u64) -> T + Send + 'static> GeneratorSource<T, F> {
    /// Generates `count` values.
    pub fn new(count: u64, f: F) -> Self {
        GeneratorSource {
            count,
            f,
            acks: None,
            count_acks: false,
            pause_every: None,
            _t: std::marker::PhantomData,
        }
    }

    /// Tracks acknowledgement like a production source: outcomes are counted in the source metrics
    /// (acked / nacked), nothing is retained per element, and the source returns only after every
    /// element resolved (it closes its output first, so pending windows can fire).
    pub fn counting_acks(mut self) -> Self {
        self.count_acks = true;
        self
    }

    /// Tracks acknowledgement of every element.
    pub fn with_acks(mut self) -> (Self, AckLog) {
        let log = AckLog::default();
        self.acks = Some(log.clone());
        (self, log)
    }

    /// Sleeps `pause` after every `n` elements (to simulate a slow stream).
    pub fn pause_every(mut self, n: u64, pause: Duration) -> Self {
        self.pause_every = Some((n.max(1), pause));
        self
    }
}

impl<T: Data, F: Fn(u64) -> T + Send + 'static> Source for GeneratorSource<T, F> {
    type Output = T;

    async fn run(self, mut ctx: SourceContext<T>) -> Result<(), BoxError> {
        let batch = ctx.batch_size() as u64;
        let mut i = 0;
        let mut waiters = tokio::task::JoinSet::new();
        while i < self.count && !ctx.shutdown().is_triggered() {
            let end = (i + batch).min(self.count);
            let mut elements: Vec<_> = (i..end)
                .map(|j| Element::new((self.f)(j), Timestamp(j as i64)))
                .collect();
            if let Some(log) = &self.acks {
                track(&mut elements, log);
            } else if self.count_acks {
                let (fins, rx) = ack_batch(elements.len());
                for (e, f) in elements.iter_mut().zip(fins) {
                    e.finalizers = f.into();
                }
                waiters.spawn(rx.wait());
                while let Some(Ok(statuses)) = waiters.try_join_next() {
                    ctx.record_statuses(&statuses);
                }
            }
            ctx.emit(elements).await?;
            ctx.advance_watermark(Timestamp(end as i64));
            if let Some((n, pause)) = self.pause_every {
                if end / n != i / n {
                    tokio::time::sleep(pause).await;
                }
            }
            i = end;
        }
        ctx.close_output();
        while let Some(r) = waiters.join_next().await {
            if let Ok(statuses) = r {
                ctx.record_statuses(&statuses);
            }
        }
        Ok(())
    }
}

/// A source that behaves towards the pipeline like a Pub/Sub subscription: every record has an id that
/// survives redelivery ([`crate::ack_batch_with_ids`]), and a record that is not delivered (nacked) is
/// emitted again in a later batch, up to `max_deliveries` times. All records are emitted first as one
/// batch; the source then waits for outcomes and redelivers, and returns (end of input) once every
/// record was delivered or ran out of deliveries.
pub struct RedeliveringSource<T> {
    records: Vec<(T, Timestamp)>,
    max_deliveries: u32,
    watermark_after_first: Option<Timestamp>,
    log: DeliveryLog,
}

/// Deliveries per record of a [`RedeliveringSource`], shared with the test.
#[derive(Debug, Clone, Default)]
pub struct DeliveryLog(Arc<Mutex<Vec<(u32, Status)>>>);

impl DeliveryLog {
    /// `(deliveries, last status)` per record, in input order.
    pub fn records(&self) -> Vec<(u32, Status)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<T: Data> RedeliveringSource<T> {
    /// Records with their event times; record `i` has id `i`. At most 10 deliveries per record.
    pub fn new(records: impl IntoIterator<Item = (T, Timestamp)>) -> (Self, DeliveryLog) {
        let log = DeliveryLog::default();
        (
            RedeliveringSource {
                records: records.into_iter().collect(),
                max_deliveries: 10,
                watermark_after_first: None,
                log: log.clone(),
            },
            log,
        )
    }

    /// Delivers each record at most `n` times.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Advances the watermark to `ts` right after the first delivery of every record, so that
    /// redeliveries can arrive behind the watermark (late).
    pub fn watermark_after_first_delivery(mut self, ts: Timestamp) -> Self {
        self.watermark_after_first = Some(ts);
        self
    }
}

impl<T: Data> Source for RedeliveringSource<T> {
    type Output = T;

    async fn run(self, mut ctx: SourceContext<T>) -> Result<(), BoxError> {
        let n = self.records.len();
        *self.log.0.lock().unwrap_or_else(|p| p.into_inner()) = vec![(0, Status::Errored); n];
        let mut pending: Vec<usize> = (0..n).collect();
        let mut waiters = tokio::task::JoinSet::new();
        let mut first = true;
        loop {
            if !pending.is_empty() {
                let ids = pending.iter().map(|&i| i as u64).collect();
                let (fins, rx) = ack_batch_with_ids(ids);
                let mut elements = Vec::with_capacity(pending.len());
                {
                    let mut log = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
                    for (&i, f) in pending.iter().zip(fins) {
                        log[i].0 += 1;
                        let (v, ts) = &self.records[i];
                        elements.push(Element::new(v.clone(), *ts).with_finalizers(f));
                    }
                }
                let batch = std::mem::take(&mut pending);
                waiters.spawn(async move { (batch, rx.wait().await) });
                ctx.emit(elements).await?;
                if let (true, Some(ts)) = (first, self.watermark_after_first) {
                    ctx.advance_watermark(ts);
                }
                first = false;
            }
            let Some(done) = waiters.join_next().await else {
                break;
            };
            let (batch, statuses) = done?;
            ctx.record_statuses(&statuses);
            let mut log = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
            for (i, status) in batch.into_iter().zip(statuses) {
                log[i].1 = status;
                if !status.is_delivered() && log[i].0 < self.max_deliveries {
                    pending.push(i);
                }
            }
        }
        Ok(())
    }
}

/// One element as a sink saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected<T> {
    /// Value.
    pub value: T,
    /// Event time.
    pub timestamp: Timestamp,
    /// Window.
    pub window: Window,
    /// Pane.
    pub pane: PaneInfo,
}

/// What a [`CollectingSink`] received, shared with the test.
#[derive(Debug)]
pub struct Output<T> {
    items: Arc<Mutex<Vec<Collected<T>>>>,
    writes: Arc<Mutex<u64>>,
}

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Output {
            items: Arc::clone(&self.items),
            writes: Arc::clone(&self.writes),
        }
    }
}

impl<T: Data> Output<T> {
    /// Everything received, in arrival order.
    pub fn elements(&self) -> Vec<Collected<T>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Values in arrival order.
    pub fn values(&self) -> Vec<T> {
        self.elements().into_iter().map(|c| c.value).collect()
    }

    /// Values, sorted.
    pub fn values_sorted(&self) -> Vec<T>
    where
        T: Ord,
    {
        let mut v = self.values();
        v.sort();
        v
    }

    /// Number of elements received.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Successful write requests.
    pub fn writes(&self) -> u64 {
        *self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The values of one window, sorted.
    pub fn in_window(&self, window: Window) -> Vec<T>
    where
        T: Ord,
    {
        let mut v: Vec<T> = self
            .elements()
            .into_iter()
            .filter(|c| c.window == window)
            .map(|c| c.value)
            .collect();
        v.sort();
        v
    }

    /// The panes of one window, in arrival order.
    pub fn panes(&self, window: Window) -> Vec<(PaneInfo, T)> {
        self.elements()
            .into_iter()
            .filter(|c| c.window == window)
            .map(|c| (c.pane, c.value))
            .collect()
    }

    /// The distinct windows seen, sorted.
    pub fn windows(&self) -> Vec<Window> {
        let mut w: Vec<Window> = self.elements().into_iter().map(|c| c.window).collect();
        w.sort();
        w.dedup();
        w
    }
}

/// The error a [`CollectingSink`] injects.
#[derive(Debug, Clone, thiserror::Error)]
#[error("injected {} sink failure", if *.retriable { "transient" } else { "permanent" })]
pub struct InjectedError {
    /// Whether the engine should retry.
    pub retriable: bool,
}

impl ErrorClass for InjectedError {
    fn is_retriable(&self) -> bool {
        self.retriable
    }
}

type Predicate<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A sink that stores what it receives in memory, with optional delay and injected failures.
pub struct CollectingSink<T> {
    out: Output<T>,
    delay: Duration,
    fail_first: Mutex<(u64, bool)>,
    reject: Option<Predicate<T>>,
}

impl<T: Data> CollectingSink<T> {
    /// A sink and the handle to what it receives.
    pub fn new() -> (Self, Output<T>) {
        let out = Output {
            items: Arc::default(),
            writes: Arc::default(),
        };
        (
            CollectingSink {
                out: out.clone(),
                delay: Duration::ZERO,
                fail_first: Mutex::new((0, true)),
                reject: None,
            },
            out,
        )
    }

    /// Waits this long in every write (a slow sink).
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Fails the first `n` write requests entirely, with a transient or permanent error.
    pub fn failing_first(self, n: u64, retriable: bool) -> Self {
        *self.fail_first.lock().unwrap_or_else(|p| p.into_inner()) = (n, retriable);
        self
    }

    /// Permanently refuses the elements matching `pred` (partial failure); stores the others.
    pub fn rejecting(mut self, pred: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.reject = Some(Arc::new(pred));
        self
    }
}

impl<T: Data> Sink<T> for CollectingSink<T> {
    type Error = InjectedError;

    async fn write(&self, batch: &SinkBatch<T>) -> Result<(), WriteError<InjectedError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        {
            let mut f = self.fail_first.lock().unwrap_or_else(|p| p.into_inner());
            if f.0 > 0 {
                f.0 -= 1;
                return Err(WriteError::All(InjectedError { retriable: f.1 }));
            }
        }
        let mut failed = Vec::new();
        let mut items = self.out.items.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (v, m)) in batch.iter().enumerate() {
            if self.reject.as_ref().is_some_and(|r| r(v)) {
                failed.push((i, InjectedError { retriable: false }));
                continue;
            }
            items.push(Collected {
                value: v.clone(),
                timestamp: m.timestamp,
                window: m.window,
                pane: m.pane,
            });
        }
        *self.out.writes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Partial(failed))
        }
    }
}

/// A sink that accepts and drops everything (benchmarks of engine overhead).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl<T: Data> Sink<T> for DiscardSink {
    type Error = std::convert::Infallible;

    async fn write(&self, _batch: &SinkBatch<T>) -> Result<(), WriteError<Self::Error>> {
        Ok(())
    }
}

/// Asserts that two collections hold the same elements, in any order.
#[track_caller]
pub fn assert_in_any_order<T: Ord + Debug + Clone>(actual: &[T], expected: &[T]) {
    let mut a = actual.to_vec();
    let mut e = expected.to_vec();
    a.sort();
    e.sort();
    assert_eq!(a, e, "collections differ (compared in any order)");
}
