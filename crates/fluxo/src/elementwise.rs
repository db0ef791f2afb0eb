//! Element-wise steps: `map`, `flat_map`, `filter`, `ParDo` with bundle hooks and tagged outputs, window
//! assignment. They run batch by batch, optionally on several batches at once (parallelism), and always
//! emit in input order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::channel::Watermark;
use crate::element::{Data, Element, PaneInfo, Timestamp, Window};
use crate::finalizer::{Finalizers, Status};
use crate::metrics::{MetricScope, StepMetrics};
use crate::operator::{Operator, Output};
use crate::tagged::{OutputTag, SideBuffers, SideOutputs};
use crate::window::{WindowAssigner, WindowFn};

impl Data for Infallible {}

/// Processes one batch into main and dead-letter outputs; returns how many inputs were dropped on purpose.
/// Every element-wise step is one of these.
pub(crate) trait BatchFn: Send + 'static {
    type In: Data;
    type Out: Data;
    type Dead: Data;
    fn process_batch(
        &mut self,
        batch: Vec<Element<Self::In>>,
        out: &mut Vec<Element<Self::Out>>,
        dead: &mut Vec<Element<Self::Dead>>,
        side: &mut SideBuffers,
    ) -> u64;

    /// The step's input watermark when the next batch is processed (only [`DoFn`]s look at it).
    fn set_input_watermark(&mut self, _watermark: Timestamp) {}

    /// Once per instance when the step starts (only [`DoFn`]s have a hook).
    fn setup(&mut self) {}

    /// Once per instance when the step's input ended (only [`DoFn`]s have a hook).
    fn teardown(&mut self) {}

    /// Lets the step's user code register its metrics (only [`DoFn`]s have any).
    fn register_metrics(&mut self, _metrics: &MetricScope) {}
}

/// `map`: one output per input.
pub(crate) struct MapFn<T, U, F>(pub(crate) Arc<F>, pub(crate) PhantomData<fn(T) -> U>);

impl<T, U, F> BatchFn for MapFn<T, U, F>
where
    T: Data,
    U: Data,
    F: Fn(T) -> U + Send + Sync + 'static,
{
    type In = T;
    type Out = U;
    type Dead = Infallible;
    #[inline]
    fn process_batch(
        &mut self,
        batch: Vec<Element<T>>,
        out: &mut Vec<Element<U>>,
        _dead: &mut Vec<Element<Infallible>>,
        _side: &mut SideBuffers,
    ) -> u64 {
        let f = &*self.0;
        out.extend(batch.into_iter().map(|e| {
            let Element {
                value,
                timestamp,
                window,
                pane,
                finalizers,
            } = e;
            Element {
                value: f(value),
                timestamp,
                window,
                pane,
                finalizers,
            }
        }));
        0
    }
}

/// `flat_map`: zero or more outputs per input; outputs share the input's finalizers.
pub(crate) struct FlatMapFn<T, I, F>(pub(crate) Arc<F>, pub(crate) PhantomData<fn(T) -> I>);

impl<T, I, F> BatchFn for FlatMapFn<T, I, F>
where
    T: Data,
    I: IntoIterator + 'static,
    I::Item: Data,
    F: Fn(T) -> I + Send + Sync + 'static,
{
    type In = T;
    type Out = I::Item;
    type Dead = Infallible;
    fn process_batch(
        &mut self,
        batch: Vec<Element<T>>,
        out: &mut Vec<Element<I::Item>>,
        _dead: &mut Vec<Element<Infallible>>,
        _side: &mut SideBuffers,
    ) -> u64 {
        let f = &*self.0;
        let mut dropped = 0;
        for e in batch {
            let Element {
                value,
                timestamp,
                window,
                pane,
                finalizers,
            } = e;
            let mut items = f(value).into_iter().peekable();
            if items.peek().is_none() {
                dropped += 1;
                continue;
            }
            let mut finalizers = Some(finalizers);
            while let Some(item) = items.next() {
                let fins = if items.peek().is_some() {
                    finalizers.clone().unwrap_or_default()
                } else {
                    finalizers.take().unwrap_or_default()
                };
                out.push(Element {
                    value: item,
                    timestamp,
                    window,
                    pane,
                    finalizers: fins,
                });
            }
        }
        dropped
    }
}

/// `filter`: keeps the elements for which the predicate holds; the others count as handled.
pub(crate) struct FilterFn<T, F>(pub(crate) Arc<F>, pub(crate) PhantomData<fn(T)>);

impl<T, F> BatchFn for FilterFn<T, F>
where
    T: Data,
    F: Fn(&T) -> bool + Send + Sync + 'static,
{
    type In = T;
    type Out = T;
    type Dead = Infallible;
    #[inline]
    fn process_batch(
        &mut self,
        batch: Vec<Element<T>>,
        out: &mut Vec<Element<T>>,
        _dead: &mut Vec<Element<Infallible>>,
        _side: &mut SideBuffers,
    ) -> u64 {
        let f = &*self.0;
        let before = batch.len();
        out.extend(batch.into_iter().filter(|e| f(&e.value)));
        (before - out.len()) as u64
    }
}

/// Assigns windows (sliding windows copy the element into each of its windows).
pub(crate) struct WindowIntoFn<T>(pub(crate) WindowFn, pub(crate) PhantomData<fn(T)>);

impl<T: Data> BatchFn for WindowIntoFn<T> {
    type In = T;
    type Out = T;
    type Dead = Infallible;
    fn process_batch(
        &mut self,
        batch: Vec<Element<T>>,
        out: &mut Vec<Element<T>>,
        _dead: &mut Vec<Element<Infallible>>,
        _side: &mut SideBuffers,
    ) -> u64 {
        let window_fn = &self.0;
        if let WindowFn::Custom(custom) = window_fn {
            assign_checked(custom.assigner(), batch, out);
        } else if !window_fn.assigns_to_single_window() {
            let mut windows = Vec::with_capacity(4);
            for e in batch {
                windows.clear();
                window_fn.assign(e.timestamp, |w| windows.push(w));
                copy_into_windows(e, &windows, out);
            }
        } else {
            out.extend(batch.into_iter().map(|mut e| {
                window_fn.assign(e.timestamp, |w| e.window = w);
                e.pane = PaneInfo::default();
                e
            }));
        }
        0
    }
}

/// `e` in each of `windows` (copies but for the last, which takes the element itself).
fn copy_into_windows<T: Data>(e: Element<T>, windows: &[Window], out: &mut Vec<Element<T>>) {
    let Some((last, rest)) = windows.split_last() else {
        return;
    };
    for w in rest {
        let mut copy = e.clone();
        copy.window = *w;
        copy.pane = PaneInfo::default();
        out.push(copy);
    }
    let mut e = e;
    e.window = *last;
    e.pane = PaneInfo::default();
    out.push(e);
}

/// Window assignment by a user's [`WindowAssigner`], with its contract checked on every element: at
/// least one window, each containing the element's timestamp, exactly one when the strategy says so.
/// An element that breaks it is failed (`Rejected`, with the reason), not kept in a wrong window.
fn assign_checked<T: Data>(
    assigner: &dyn WindowAssigner,
    batch: Vec<Element<T>>,
    out: &mut Vec<Element<T>>,
) {
    let single = assigner.assigns_to_single_window();
    let mut windows = Vec::with_capacity(4);
    for e in batch {
        windows.clear();
        assigner.assign(e.timestamp, &mut |w| windows.push(w));
        let ts = e.timestamp;
        let broken = if windows.is_empty() {
            Some("assigned no window".to_string())
        } else if single && windows.len() > 1 {
            Some(format!(
                "says it assigns one window per timestamp but assigned {}",
                windows.len()
            ))
        } else {
            windows
                .iter()
                .find(|w| !(w.start <= ts && ts < w.end))
                .map(|w| format!("assigned a window {w:?} that does not contain the timestamp"))
        };
        match broken {
            None => copy_into_windows(e, &windows, out),
            Some(why) => {
                let reason: Arc<str> = Arc::from(format!(
                    "window strategy '{}' {why} (element at {ts:?})",
                    assigner.name()
                ));
                tracing::error!(strategy = assigner.name(), %reason, "window assignment broke its contract: element failed");
                e.finalizers.fail(Status::Rejected, &reason);
            }
        }
    }
}

/// A user function with Beam's `DoFn` shape: `setup`/`teardown` per instance, bundle hooks around
/// per-element processing, the main output, the dead-letter output for bad data, and any number of
/// named additional outputs ([`crate::OutputTag`], [`DoFnContext::output_to`]).
///
/// A bundle is one batch of input. Outputs of [`DoFn::process`] share the input's acknowledgement;
/// outputs of [`DoFn::finish_bundle`] share the acknowledgement of every input of the bundle, so a `DoFn`
/// that buffers inside a bundle and emits at its end still never acknowledges early.
///
/// ```
/// use fluxo::{DoFn, DoFnContext};
/// struct ParseNumber;
/// impl DoFn for ParseNumber {
///     type In = String;
///     type Out = i64;
///     type Dead = (String, String);
///     fn process(&mut self, line: String, ctx: &mut DoFnContext<'_, i64, (String, String)>) {
///         match line.trim().parse() {
///             Ok(n) => ctx.output(n),
///             Err(e) => ctx.dead_letter((line, e.to_string())),
///         }
///     }
/// }
/// ```
pub trait DoFn: Send + 'static {
    /// Input type.
    type In: Data;
    /// Main output type.
    type Out: Data;
    /// Dead-letter output type.
    type Dead: Data;

    /// Called once per instance while the graph is built, with a scope whose label `step` is the
    /// DoFn's step: declare its own metric families and keep the handles (see
    /// [`crate::metrics`]); instances of a parallel step resolve the same series. Does nothing by
    /// default.
    fn register_metrics(&mut self, _metrics: &MetricScope) {}

    /// Called once per instance when the pipeline starts running, before its first bundle: open
    /// clients, load reference data.
    fn setup(&mut self) {}

    /// Called once per instance after its last bundle, when the step's input ended (the end of a
    /// bounded input, or a drain): close what `setup` opened. Best effort, as in Beam: not called
    /// when the step fails or is aborted.
    fn teardown(&mut self) {}

    /// Called before the first element of each bundle.
    fn start_bundle(&mut self) {}

    /// Called for every element.
    fn process(&mut self, input: Self::In, ctx: &mut DoFnContext<'_, Self::Out, Self::Dead>);

    /// Called after the last element of each bundle; may emit with explicit timestamps.
    fn finish_bundle(&mut self, _ctx: &mut BundleContext<'_, Self::Out, Self::Dead>) {}
}

/// What [`DoFn::process`] sees of the current element and where it emits.
pub struct DoFnContext<'a, O, D> {
    out: &'a mut Vec<Element<O>>,
    dead: &'a mut Vec<Element<D>>,
    side: &'a mut SideBuffers,
    timestamp: Timestamp,
    window: Window,
    pane: PaneInfo,
    finalizers: &'a Finalizers,
    input_watermark: Timestamp,
}

impl<O, D> DoFnContext<'_, O, D> {
    /// The step's input watermark when the bundle started: every element with an earlier event time is
    /// expected to have arrived (`Timestamp::MIN` before the first watermark). An element whose window
    /// ended, plus the allowed lateness, before it is late data.
    pub fn input_watermark(&self) -> Timestamp {
        self.input_watermark
    }

    /// Event time of the current element.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Window of the current element.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Pane of the current element.
    pub fn pane(&self) -> PaneInfo {
        self.pane
    }

    /// Emits to the main output with the input's timestamp.
    pub fn output(&mut self, value: O) {
        let ts = self.timestamp;
        self.output_at(value, ts);
    }

    /// Emits to the main output with another event time (for example one parsed from the payload).
    pub fn output_at(&mut self, value: O, timestamp: Timestamp) {
        self.out.push(Element {
            value,
            timestamp,
            window: self.window,
            pane: self.pane,
            finalizers: self.finalizers.clone(),
        });
    }

    /// Emits to the additional output named by `tag`, with the input's timestamp and window. The
    /// pipeline reads it with [`crate::Tagged::output`]; an element sent to a tag the pipeline does not
    /// read is failed (rejected, with the reason), never acknowledged silently.
    pub fn output_to<T: Data>(&mut self, tag: &OutputTag<T>, value: T) {
        let e = Element {
            value,
            timestamp: self.timestamp,
            window: self.window,
            pane: self.pane,
            finalizers: self.finalizers.clone(),
        };
        self.side.push(tag, e);
    }

    /// Emits to the dead-letter output. The source element counts as delivered once the dead letter is
    /// stored by the sink that consumes this output.
    pub fn dead_letter(&mut self, value: D) {
        self.dead.push(Element {
            value,
            timestamp: self.timestamp,
            window: self.window,
            pane: self.pane,
            finalizers: self.finalizers.clone(),
        });
    }
}

/// Where [`DoFn::finish_bundle`] emits: the main output, the dead letters and the named outputs, each
/// element with an explicit event time and window. Everything emitted here carries the
/// acknowledgement of every input of the bundle: no input is acknowledged before all of them are
/// stored, and a failure of any of them fails (and nacks) every input of the bundle, as in Beam,
/// where the outputs of `finishBundle` belong to the whole bundle.
pub struct BundleContext<'a, O, D> {
    out: &'a mut Vec<Element<O>>,
    dead: &'a mut Vec<Element<D>>,
    side: &'a mut SideBuffers,
    /// The finalizers of the bundle's inputs, merged into `all` on the first emission only (a
    /// bundle that emits nothing here costs nothing).
    inputs: &'a mut Vec<Finalizers>,
    all: Option<Finalizers>,
}

impl<O, D> BundleContext<'_, O, D> {
    fn element<T>(&mut self, value: T, timestamp: Timestamp, window: Window) -> Element<T> {
        let inputs = &mut *self.inputs;
        let all = self.all.get_or_insert_with(|| {
            let mut all = Finalizers::None;
            for f in inputs.drain(..) {
                all.merge(f);
            }
            all
        });
        Element {
            value,
            timestamp,
            window,
            pane: PaneInfo::default(),
            finalizers: all.clone(),
        }
    }

    /// Emits to the main output.
    pub fn output(&mut self, value: O, timestamp: Timestamp, window: Window) {
        let e = self.element(value, timestamp, window);
        self.out.push(e);
    }

    /// Emits to the dead-letter output.
    pub fn dead_letter(&mut self, value: D, timestamp: Timestamp, window: Window) {
        let e = self.element(value, timestamp, window);
        self.dead.push(e);
    }

    /// Emits to the additional output named by `tag` (see [`DoFnContext::output_to`]: an output the
    /// pipeline does not read fails its elements, and so every input of the bundle).
    pub fn output_to<T: Data>(
        &mut self,
        tag: &OutputTag<T>,
        value: T,
        timestamp: Timestamp,
        window: Window,
    ) {
        let e = self.element(value, timestamp, window);
        self.side.push(tag, e);
    }
}

/// Runs a [`DoFn`] over bundles.
pub(crate) struct ParDoFn<D: DoFn> {
    pub(crate) dofn: D,
    bundle_finalizers: Vec<Finalizers>,
    input_watermark: Timestamp,
}

impl<D: DoFn> ParDoFn<D> {
    pub(crate) fn new(dofn: D) -> Self {
        ParDoFn {
            dofn,
            bundle_finalizers: Vec::new(),
            input_watermark: Timestamp::MIN,
        }
    }
}

impl<D: DoFn> BatchFn for ParDoFn<D> {
    type In = D::In;
    type Out = D::Out;
    type Dead = D::Dead;

    fn set_input_watermark(&mut self, watermark: Timestamp) {
        self.input_watermark = watermark;
    }

    fn register_metrics(&mut self, metrics: &MetricScope) {
        self.dofn.register_metrics(metrics);
    }

    fn setup(&mut self) {
        self.dofn.setup();
    }

    fn teardown(&mut self) {
        self.dofn.teardown();
    }

    fn process_batch(
        &mut self,
        batch: Vec<Element<D::In>>,
        out: &mut Vec<Element<D::Out>>,
        dead: &mut Vec<Element<D::Dead>>,
        side: &mut SideBuffers,
    ) -> u64 {
        self.dofn.start_bundle();
        let mut dropped = 0;
        for e in batch {
            let (o, d, t) = (out.len(), dead.len(), side.len());
            let mut ctx = DoFnContext {
                out: &mut *out,
                dead: &mut *dead,
                side: &mut *side,
                timestamp: e.timestamp,
                window: e.window,
                pane: e.pane,
                finalizers: &e.finalizers,
                input_watermark: self.input_watermark,
            };
            self.dofn.process(e.value, &mut ctx);
            if out.len() == o && dead.len() == d && side.len() == t {
                dropped += 1;
            }
            if !e.finalizers.is_empty() {
                self.bundle_finalizers.push(e.finalizers);
            }
        }
        let mut ctx = BundleContext {
            out,
            dead,
            side,
            inputs: &mut self.bundle_finalizers,
            all: None,
        };
        self.dofn.finish_bundle(&mut ctx);
        // What `finish_bundle` emitted holds every input of the bundle (their acknowledgement waits
        // for it), so none of them was dropped, even those that emitted nothing in `process`.
        let emitted_at_finish = ctx.all.is_some();
        self.bundle_finalizers.clear();
        if emitted_at_finish {
            0
        } else {
            dropped
        }
    }
}

struct Done<F: BatchFn> {
    f: Option<F>,
    out: Vec<Element<F::Out>>,
    dead: Vec<Element<F::Dead>>,
    /// Dropped with the result: its own `Drop` fails what was not sent.
    side: SideBuffers,
    received: u64,
    dropped: u64,
    elapsed: Duration,
}

impl<F: BatchFn> Done<F> {
    fn f_take(&mut self) -> F {
        match self.f.take() {
            Some(f) => f,
            None => unreachable!("a batch result is emitted once"),
        }
    }
}

impl<F: BatchFn> Drop for Done<F> {
    /// A result that is dropped instead of emitted (its step failed or was aborted) was not delivered.
    fn drop(&mut self) {
        for e in &self.out {
            e.finalizers.update(Status::Errored);
        }
        for e in &self.dead {
            e.finalizers.update(Status::Errored);
        }
    }
}

fn run_batch<F: BatchFn>(mut f: F, batch: Vec<Element<F::In>>, mut side: SideBuffers) -> Done<F> {
    let start = Instant::now();
    let received = batch.len() as u64;
    let mut out = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    let dropped = f.process_batch(batch, &mut out, &mut dead, &mut side);
    Done {
        f: Some(f),
        out,
        dead,
        side,
        received,
        dropped,
        elapsed: start.elapsed(),
    }
}

enum Pending<F: BatchFn> {
    Batch(JoinHandle<Done<F>>),
    Watermark(Watermark),
}

/// The operator behind every element-wise step. With parallelism 1 it processes batches inline; with
/// more it runs up to that many batches at once on the runtime's blocking threads, one function
/// instance each, and emits results (and watermarks) in input order.
pub(crate) struct ElementwiseOp<F: BatchFn> {
    pool: Vec<F>,
    parallelism: usize,
    pending: VecDeque<Pending<F>>,
    in_flight: usize,
    /// The oldest batch, finished and taken from `pending`, not yet emitted.
    completed: Option<Done<F>>,
    /// The last event-time watermark received (idle marks do not move it).
    input_watermark: Timestamp,
    main: Output<F::Out>,
    dead: Output<F::Dead>,
    sides: SideOutputs,
    metrics: StepMetrics,
}

impl<F: BatchFn> ElementwiseOp<F> {
    pub(crate) fn new(
        mut instances: Vec<F>,
        main: Output<F::Out>,
        dead: Output<F::Dead>,
        sides: SideOutputs,
        metrics: StepMetrics,
    ) -> Self {
        let parallelism = instances.len().max(1);
        instances.iter_mut().for_each(BatchFn::setup);
        ElementwiseOp {
            pool: instances,
            parallelism,
            pending: VecDeque::new(),
            in_flight: 0,
            completed: None,
            input_watermark: Timestamp::MIN,
            main,
            dead,
            sides,
            metrics,
        }
    }

    async fn emit(&mut self, mut done: Done<F>) {
        let out = std::mem::take(&mut done.out);
        let dead = std::mem::take(&mut done.dead);
        let side = std::mem::take(&mut done.side);
        let m = &self.metrics;
        m.received.inc_by(done.received);
        m.observe_batch(done.received, done.elapsed);
        let (sent, errors) = (out.len() as u64, dead.len() as u64);
        let mut discarded = done.dropped;
        self.pool.push(done.f_take());
        if sent > 0 {
            discarded += self.main.send(out).await;
        }
        if errors > 0 {
            discarded += self.dead.send(dead).await;
        }
        let (side_sent, side_unconsumed) = self.sides.send(side).await;
        let sent = sent + side_sent;
        discarded += side_unconsumed;
        m.sent.inc_by(sent);
        m.errors.inc_by(errors);
        if discarded > 0 {
            m.discarded.inc_by(discarded);
        }
    }

    /// Waits until the oldest in-flight batch finished and moves its result to `completed`. Cancel-safe:
    /// nothing is lost if the wait is dropped before it returns.
    async fn wait_front(&mut self) {
        if self.completed.is_some() {
            return;
        }
        match self.pending.front_mut() {
            Some(Pending::Batch(handle)) => {
                let result = handle.await;
                self.pending.pop_front();
                self.in_flight -= 1;
                match result {
                    Ok(done) => self.completed = Some(done),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => {}
                }
            }
            Some(Pending::Watermark(_)) => {}
            None => std::future::pending().await,
        }
    }

    /// Emits the completed batch, then forwards the watermarks queued behind it.
    async fn emit_completed(&mut self) {
        if let Some(done) = self.completed.take() {
            self.emit(done).await;
        }
        while let Some(Pending::Watermark(_)) = self.pending.front() {
            if let Some(Pending::Watermark(wm)) = self.pending.pop_front() {
                self.forward_watermark(wm);
            }
        }
    }

    async fn complete_front(&mut self) {
        self.wait_front().await;
        self.emit_completed().await;
    }

    fn forward_watermark(&self, wm: Watermark) {
        self.main.send_watermark(wm);
        self.dead.send_watermark(wm);
        self.sides.send_watermark(wm);
    }
}

impl<F: BatchFn> Operator for ElementwiseOp<F> {
    type In = F::In;

    async fn process(&mut self, _input: usize, batch: Vec<Element<F::In>>) {
        if self.parallelism == 1 {
            if let Some(mut f) = self.pool.pop() {
                f.set_input_watermark(self.input_watermark);
                let done = run_batch(f, batch, self.sides.buffers());
                self.emit(done).await;
            }
            return;
        }
        while self.in_flight >= self.parallelism || self.completed.is_some() {
            self.complete_front().await;
        }
        if let Some(mut f) = self.pool.pop() {
            f.set_input_watermark(self.input_watermark);
            self.in_flight += 1;
            // On the blocking pool, not a runtime worker: a batch is CPU work (a batch of large
            // records can take tens of milliseconds), and the runtime's workers must stay free for
            // sources, sinks, acknowledgements, lease extensions and the health endpoint. A result
            // nobody receives (the step was aborted) is dropped as not delivered (see `Done`).
            let side = self.sides.buffers();
            let handle = tokio::task::spawn_blocking(move || run_batch(f, batch, side));
            self.pending.push_back(Pending::Batch(handle));
        }
    }

    fn has_ready_work(&self) -> bool {
        !self.pending.is_empty() || self.completed.is_some()
    }

    async fn wait_ready(&mut self) {
        self.wait_front().await;
    }

    async fn on_ready(&mut self) {
        self.emit_completed().await;
    }

    async fn on_watermark(&mut self, wm: Watermark) {
        if let Watermark::EventTime(t) = wm {
            self.input_watermark = self.input_watermark.max(t);
        }
        if self.pending.is_empty() && self.completed.is_none() {
            self.forward_watermark(wm);
        } else {
            self.pending.push_back(Pending::Watermark(wm));
        }
    }

    async fn on_close(&mut self) {
        while self.has_ready_work() {
            self.complete_front().await;
        }
        self.pool.iter_mut().for_each(BatchFn::teardown);
    }
}

impl<F: BatchFn> Drop for ElementwiseOp<F> {
    fn drop(&mut self) {
        // Batches still pending belong to a step that failed or was aborted. One not started yet is
        // cancelled; one running on a blocking thread finishes, and its result, which nobody receives,
        // resolves its elements as errored (see `Done`).
        for p in &self.pending {
            if let Pending::Batch(h) = p {
                h.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el<T>(v: T, ts: i64) -> Element<T> {
        Element::new(v, Timestamp(ts))
    }

    #[test]
    fn flat_map_and_filter_count_drops() {
        let mut fm = FlatMapFn(Arc::new(|n: u32| (0..n).collect::<Vec<_>>()), PhantomData);
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        let dropped = fm.process_batch(
            vec![el(2, 1), el(0, 2), el(1, 3)],
            &mut out,
            &mut dead,
            &mut SideBuffers::default(),
        );
        assert_eq!(dropped, 1);
        let got: Vec<_> = out.iter().map(|e| (e.value, e.timestamp.0)).collect();
        assert_eq!(got, vec![(0, 1), (1, 1), (0, 3)]);

        let mut f = FilterFn(Arc::new(|n: &u32| n.is_multiple_of(2)), PhantomData);
        let mut out = Vec::new();
        let dropped = f.process_batch(
            vec![el(1, 0), el(2, 0), el(4, 0)],
            &mut out,
            &mut dead,
            &mut SideBuffers::default(),
        );
        assert_eq!(dropped, 1);
        assert_eq!(out.len(), 2);
    }

    struct Buffering(Vec<u32>);
    impl DoFn for Buffering {
        type In = u32;
        type Out = u32;
        type Dead = u32;
        fn process(&mut self, input: u32, ctx: &mut DoFnContext<'_, u32, u32>) {
            if input == 13 {
                ctx.dead_letter(input);
            } else {
                self.0.push(input);
            }
        }
        fn finish_bundle(&mut self, ctx: &mut BundleContext<'_, u32, u32>) {
            let sum = self.0.drain(..).sum();
            ctx.output(sum, Timestamp(99), Window::GLOBAL);
        }
    }

    #[tokio::test]
    async fn finish_bundle_outputs_hold_the_bundle_acks() {
        let (fins, rx) = crate::finalizer::ack_batch(3);
        let batch: Vec<_> = [1u32, 13, 2]
            .into_iter()
            .zip(fins)
            .map(|(v, f)| el(v, 0).with_finalizers(f))
            .collect();
        let mut p = ParDoFn::new(Buffering(Vec::new()));
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        let dropped = p.process_batch(batch, &mut out, &mut dead, &mut SideBuffers::default());
        assert_eq!(
            dropped, 0,
            "1 and 2 are held by the total emitted at the end"
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, 3);
        assert_eq!(out[0].timestamp, Timestamp(99));
        assert_eq!(dead.len(), 1);
        let mut waiting = Box::pin(rx.wait());
        assert!(futures::poll!(&mut waiting).is_pending());
        out[0].finalizers.update(crate::Status::Errored);
        drop(out);
        drop(dead);
        assert_eq!(waiting.await, vec![crate::Status::Errored; 3]);
    }

    #[test]
    fn sliding_windows_copy_elements() {
        let mut w = WindowIntoFn(
            WindowFn::sliding(Duration::from_secs(10), Duration::from_secs(5)),
            PhantomData,
        );
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        w.process_batch(
            vec![el("x", 7_000_000)],
            &mut out,
            &mut dead,
            &mut SideBuffers::default(),
        );
        let mut wins: Vec<_> = out.iter().map(|e| e.window.start.0).collect();
        wins.sort();
        assert_eq!(wins, vec![0, 5_000_000]);
    }
}
