//! Building pipelines: [`Pipeline`], typed [`PCollection`]s, labelled steps, composite [`PTransform`]s.
//!
//! A pipeline is built by plain function calls and run separately. Building never fails half-way: problems
//! (duplicate labels, invalid windows) are collected and reported by [`Pipeline::build`].

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::channel::{channel, BufferConfig, Receiver, Sender};
use crate::combine::{CombineFn, Count, ToList};
use crate::element::Data;
use crate::elementwise::{
    BatchFn, DoFn, ElementwiseOp, FilterFn, FlatMapFn, MapFn, ParDoFn, WindowIntoFn,
};
use crate::group::GroupOp;
use crate::metrics::{BufferMetrics, Metrics, SinkMetrics, SourceMetrics, StepMetrics};
use crate::operator::{drive, Operator, Output};
use crate::report::RunReport;
use crate::runner;
use crate::shutdown::{Shutdown, ShutdownSignal};
use crate::sink::{run_sink, Sink, SinkConfig};
use crate::source::{run_source, BoxError, Source};
use crate::tagged::{OutputTag, SideOutputs, SideSpecs, TypedSpec};
use crate::window::Windowing;

/// Pipeline-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Name used in metrics (`pipeline` label) and logs. Default: `"pipeline"`.
    pub name: String,
    /// Bounds of every buffer between two steps.
    pub buffer: BufferConfig,
    /// Elements per batch emitted by sources. Default: 1024.
    pub batch_size: usize,
    /// A source that emitted nothing for this long is marked idle, so it does not hold back the
    /// watermark of steps with several inputs. `null` disables idle detection. Default: 30 s.
    #[serde(with = "opt_millis")]
    pub idle_timeout: Option<Duration>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "pipeline".into(),
            buffer: BufferConfig::default(),
            batch_size: 1024,
            idle_timeout: Some(Duration::from_secs(30)),
        }
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// How to run a built pipeline.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stops the sources and drains when fired. Default: never (bounded pipelines end by themselves).
    pub shutdown: ShutdownSignal,
    /// Longest drain after shutdown before the remaining steps are aborted (their elements are then
    /// reported as errored, so acknowledging sources nack them). Default: 25 s, under Kubernetes' default
    /// 30 s termination grace period.
    pub drain_timeout: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address while running. Default: none.
    pub metrics_addr: Option<SocketAddr>,
    /// `/healthz` fails (503, with the reason) once messages are in flight and none was acknowledged
    /// or nacked for this long, and an error is logged; `None` never. Keep it above the longest time a
    /// sink may retry one request (a restart does not mend a sink that is down). Default: 10 minutes.
    pub stall_timeout: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            shutdown: ShutdownSignal::never(),
            drain_timeout: Duration::from_secs(25),
            metrics_addr: None,
            stall_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// A failure to build or run a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The graph is invalid; every problem is listed.
    #[error("invalid pipeline: {}", .0.join("; "))]
    Build(Vec<String>),
    /// A step failed while running (a source error, a sink that could not close, a panic).
    #[error("step '{step}' failed: {source}")]
    Step {
        /// Step label.
        step: String,
        /// The error the step returned, whole (a connector's own error type: see
        /// [`PipelineError::step_error`]), or a [`StepFailure`] for a panic or an abort.
        source: BoxError,
    },
    /// The drain after shutdown did not finish in time.
    #[error("drain did not finish within {0:?}; unfinished elements were reported as errored")]
    DrainTimeout(Duration),
    /// The metrics endpoint could not be served.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// How a step failed when it did not return an error of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepFailure {
    /// The step panicked (with the panic's message).
    #[error("panicked: {0}")]
    Panicked(String),
    /// The step was still running when the drain deadline passed.
    #[error("aborted at the drain deadline")]
    Aborted,
}

impl PipelineError {
    /// The error a failed step returned, if it is an `E`: lets a caller tell a connector's fatal
    /// error (a missing subscription, a permission denied) from other failures without parsing text.
    pub fn step_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            PipelineError::Step { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// Kind of a step, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Reads input.
    Source,
    /// Transforms.
    Transform,
    /// Writes output.
    Sink,
}

pub(crate) type StepFuture = BoxFuture<'static, Result<(), BoxError>>;
pub(crate) type Launcher = Box<dyn FnOnce(&mut Wiring) -> StepFuture + Send>;

/// Output slots handed to launchers at run time.
pub(crate) struct Wiring {
    slots: Vec<Option<Box<dyn Any + Send>>>,
    pub(crate) shutdown: ShutdownSignal,
}

impl Wiring {
    pub(crate) fn take<T: Data>(&mut self, slot: usize) -> Output<T> {
        let senders = self.slots[slot]
            .take()
            .and_then(|b| b.downcast::<Vec<Sender<T>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        Output::new(senders)
    }
}

struct Slot {
    producer: String,
    /// Which output of the producer (`main`, `dead_letters`, `late`, or a tag's name).
    tag: String,
    senders: Box<dyn Any + Send>,
    consumers: usize,
    warn_unconsumed: bool,
    /// Set when the output must have a consumer: the build error to report otherwise.
    required: Option<String>,
}

pub(crate) struct StepEntry {
    pub(crate) label: String,
    pub(crate) kind: StepKind,
    pub(crate) metrics: StepMetrics,
    pub(crate) launcher: Launcher,
}

pub(crate) struct Graph {
    pub(crate) config: PipelineConfig,
    pub(crate) metrics: Metrics,
    labels: HashSet<String>,
    scope: Vec<String>,
    errors: Vec<String>,
    slots: Vec<Slot>,
    pub(crate) steps: Vec<StepEntry>,
    pub(crate) sources: Vec<(String, SourceMetrics)>,
    pub(crate) sinks: Vec<(String, SinkMetrics)>,
    pub(crate) buffers: Vec<(String, String, BufferMetrics)>,
}

type GraphRef = Rc<RefCell<Graph>>;

impl Graph {
    /// Registers a step label in the current scope; records an error for an empty or duplicate label.
    fn register(&mut self, label: &str) -> String {
        let full = if self.scope.is_empty() {
            label.to_string()
        } else {
            format!("{}/{}", self.scope.join("/"), label)
        };
        if label.trim().is_empty() {
            self.errors
                .push(format!("a step has an empty label (in '{full}')"));
        } else if !self.labels.insert(full.clone()) {
            self.errors.push(format!(
                "duplicate step label '{full}': every step needs a unique label"
            ));
        }
        full
    }

    fn new_slot<T: Data>(&mut self, producer: &str, tag: &'static str, warn: bool) -> usize {
        self.slots.push(Slot {
            producer: producer.to_string(),
            tag: tag.to_string(),
            senders: Box::new(Vec::<Sender<T>>::new()),
            consumers: 0,
            warn_unconsumed: warn,
            required: None,
        });
        self.slots.len() - 1
    }

    /// Adds a transform step run by `drive`; `make` builds its operator at launch from the wiring.
    fn push_operator<O: Operator>(
        &mut self,
        label: String,
        inputs: Vec<Receiver<O::In>>,
        make: impl FnOnce(&mut Wiring, StepMetrics) -> O + Send + 'static,
    ) {
        let metrics = self.metrics.step(&label);
        let m = metrics.clone();
        self.steps.push(StepEntry {
            label,
            kind: StepKind::Transform,
            metrics,
            launcher: Box::new(move |w: &mut Wiring| {
                let op = make(w, m.clone());
                Box::pin(async move {
                    drive(op, inputs, m).await;
                    Ok(())
                })
            }),
        });
    }

    fn connect<T: Data>(&mut self, slot: usize, consumer: &str) -> Receiver<T> {
        let producer = self.slots[slot].producer.clone();
        let bm = self.metrics.buffer(&producer, consumer);
        self.buffers
            .push((producer, consumer.to_string(), bm.clone()));
        let (tx, rx) = channel::<T>(self.config.buffer, bm);
        let slot = &mut self.slots[slot];
        slot.consumers += 1;
        if let Some(v) = slot.senders.downcast_mut::<Vec<Sender<T>>>() {
            v.push(tx);
        }
        rx
    }
}

/// A pipeline under construction.
///
/// The builder and its collections share the graph through `Rc`, so they are neither `Send` nor
/// `Sync`: the compiler keeps a half-built graph on one thread, and an `async` function that holds a
/// `Pipeline` or a `PCollection` across an `.await` is not `Send`. Build, then run:
/// [`Pipeline::run`] and [`Pipeline::build`] consume the builder and return what is `Send` (the run's
/// future, [`Runnable`]); [`Pipeline::define`] scopes the building to a closure, so nothing of the
/// builder can outlive it.
///
/// ```compile_fail
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(fluxo::Pipeline::new("p")); // a builder cannot move to another thread
/// ```
///
/// ```
/// use fluxo::{Pipeline, testing::{TestStream, CollectingSink}, SinkConfig, RunOptions, Timestamp};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let p = Pipeline::new("doc");
/// let (sink, out) = CollectingSink::new();
/// p.read("Read", TestStream::new().add_values([(1u64, Timestamp(0)), (2, Timestamp(1))]))
///     .map("Double", |x| x * 2)
///     .write("Collect", sink, SinkConfig::default());
/// p.run(RunOptions::default()).await.unwrap();
/// assert_eq!(out.values_sorted(), vec![2, 4]);
/// # });
/// ```
pub struct Pipeline {
    graph: GraphRef,
}

impl Pipeline {
    /// A pipeline with default settings and the given name.
    pub fn new(name: &str) -> Self {
        Self::with_config(PipelineConfig {
            name: name.to_string(),
            ..PipelineConfig::default()
        })
    }

    /// A pipeline with explicit settings.
    pub fn with_config(config: PipelineConfig) -> Self {
        let metrics = Metrics::new(&config.name);
        Self::with_metrics(config, metrics)
    }

    /// A pipeline that registers its metrics in `metrics` instead of a registry of its own: for a
    /// process that runs one pipeline after another (a server triggered per run) and serves one
    /// `/metrics` for all of them. Series of the same step resolve to the same counters from one
    /// run to the next; the `pipeline` label is the one `metrics` was created with.
    pub fn with_metrics(config: PipelineConfig, metrics: Metrics) -> Self {
        Pipeline {
            graph: Rc::new(RefCell::new(Graph {
                config,
                metrics,
                labels: HashSet::new(),
                scope: Vec::new(),
                errors: Vec::new(),
                slots: Vec::new(),
                steps: Vec::new(),
                sources: Vec::new(),
                sinks: Vec::new(),
                buffers: Vec::new(),
            })),
        }
    }

    /// The metrics registry of this pipeline (served by [`RunOptions::metrics_addr`]).
    pub fn metrics(&self) -> Metrics {
        self.graph.borrow().metrics.clone()
    }

    /// Adds a source.
    pub fn read<S: Source>(&self, label: &str, mut source: S) -> PCollection<S::Output> {
        let mut g = self.graph.borrow_mut();
        let full = g.register(label);
        source.register_metrics(&g.metrics.scope(&[("step", &full)]));
        let slot = g.new_slot::<S::Output>(&full, "main", true);
        let metrics = g.metrics.source(&full);
        let step_metrics = g.metrics.step(&full);
        g.sources.push((full.clone(), metrics.clone()));
        let batch_size = g.config.batch_size;
        let idle = g.config.idle_timeout;
        let label_owned = full.clone();
        g.steps.push(StepEntry {
            label: full,
            kind: StepKind::Source,
            metrics: step_metrics,
            launcher: Box::new(move |w: &mut Wiring| {
                let out = w.take::<S::Output>(slot);
                let shutdown = w.shutdown.clone();
                Box::pin(async move {
                    run_source(source, out, batch_size, idle, shutdown, metrics)
                        .await
                        .inspect_err(|e| {
                            tracing::error!(source = %label_owned, error = %e, "source failed");
                        })
                })
            }),
        });
        drop(g);
        PCollection::new(Rc::clone(&self.graph), slot, Windowing::default())
    }

    /// Merges collections of the same type into one (Beam's `Flatten`). Its watermark is the minimum over
    /// the non-idle inputs. The inputs must have the same windowing (window function, trigger,
    /// lateness, accumulation): the output has one, and a grouping step after it would otherwise
    /// treat some inputs' elements by another input's rules. The build fails otherwise.
    pub fn flatten<T: Data>(&self, label: &str, inputs: &[&PCollection<T>]) -> PCollection<T> {
        let windowing = inputs
            .first()
            .map(|c| c.windowing.clone())
            .unwrap_or_default();
        let mut g = self.graph.borrow_mut();
        let full = g.register(label);
        if inputs.is_empty() {
            g.errors
                .push(format!("step '{full}': flatten needs at least one input"));
        }
        if let Some((i, other)) = inputs
            .iter()
            .enumerate()
            .find(|(_, c)| c.windowing != windowing)
        {
            g.errors.push(format!(
                "step '{full}': inputs have different windowing (input 0: {:?}; input {i}: {:?}): \
                 apply the same window_into to every input before flattening",
                windowing, other.windowing
            ));
        }
        let receivers: Vec<Receiver<T>> = inputs
            .iter()
            .map(|c| g.connect::<T>(c.slot, &full))
            .collect();
        let slot = g.new_slot::<T>(&full, "main", true);
        g.push_operator(full, receivers, move |w, m| {
            crate::operator::FlattenOp::new(w.take::<T>(slot), m)
        });
        drop(g);
        PCollection::new(Rc::clone(&self.graph), slot, windowing)
    }

    /// Builds a pipeline inside `f` and returns it validated, ready to run: the builder and its
    /// collections cannot escape the closure, so the caller's `async` code stays `Send`.
    ///
    /// ```
    /// use fluxo::{Pipeline, PipelineConfig, RunOptions, testing::{CollectingSink, TestStream}, Timestamp};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let (sink, out) = CollectingSink::new();
    /// let job = Pipeline::define(PipelineConfig::default(), |p| {
    ///     p.read("Read", TestStream::new().add_values([(1u64, Timestamp(0))]))
    ///         .map("Double", |x| x * 2)
    ///         .write_default("Collect", sink);
    /// })
    /// .unwrap();
    /// tokio::spawn(job.run(RunOptions::default())).await.unwrap().unwrap();
    /// assert_eq!(out.values(), vec![2]);
    /// # });
    /// ```
    pub fn define(
        config: PipelineConfig,
        f: impl FnOnce(&Pipeline),
    ) -> Result<Runnable, PipelineError> {
        let p = Pipeline::with_config(config);
        f(&p);
        p.build()
    }

    /// Validates the graph and turns it into a runnable job.
    pub fn build(self) -> Result<Runnable, PipelineError> {
        let mut g = self.graph.borrow_mut();
        if !g.errors.is_empty() {
            return Err(PipelineError::Build(std::mem::take(&mut g.errors)));
        }
        if g.steps.is_empty() {
            return Err(PipelineError::Build(vec![
                "the pipeline has no steps".into()
            ]));
        }
        let unconsumed: Vec<String> = g
            .slots
            .iter()
            .filter(|s| s.consumers == 0)
            .filter_map(|s| s.required.clone())
            .collect();
        if !unconsumed.is_empty() {
            return Err(PipelineError::Build(unconsumed));
        }
        for slot in g
            .slots
            .iter()
            .filter(|s| s.consumers == 0 && s.warn_unconsumed)
        {
            tracing::warn!(
                step = %slot.producer,
                output = %slot.tag,
                "output has no consumer: its elements are discarded (and count as handled)"
            );
        }
        let slots = g
            .slots
            .iter_mut()
            .map(|s| Some(std::mem::replace(&mut s.senders, Box::new(()))))
            .collect();
        Ok(Runnable {
            name: g.config.name.clone(),
            metrics: g.metrics.clone(),
            steps: std::mem::take(&mut g.steps),
            sources: std::mem::take(&mut g.sources),
            sinks: std::mem::take(&mut g.sinks),
            buffers: std::mem::take(&mut g.buffers),
            slots,
        })
    }

    /// Builds and runs the pipeline until its sources are exhausted (or shutdown), returning the report.
    pub fn run(
        self,
        options: RunOptions,
    ) -> impl std::future::Future<Output = Result<RunReport, PipelineError>> + Send {
        let built = self.build();
        async move { built?.run(options).await }
    }
}

/// A built pipeline, ready to run (and `Send`, so it can be spawned).
pub struct Runnable {
    pub(crate) name: String,
    pub(crate) metrics: Metrics,
    pub(crate) steps: Vec<StepEntry>,
    pub(crate) sources: Vec<(String, SourceMetrics)>,
    pub(crate) sinks: Vec<(String, SinkMetrics)>,
    pub(crate) buffers: Vec<(String, String, BufferMetrics)>,
    slots: Vec<Option<Box<dyn Any + Send>>>,
}

impl Runnable {
    /// The pipeline's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs until every source is exhausted or shutdown was requested and the drain finished.
    pub async fn run(mut self, options: RunOptions) -> Result<RunReport, PipelineError> {
        let stop = Shutdown::new();
        let mut wiring = Wiring {
            slots: std::mem::take(&mut self.slots),
            shutdown: stop.signal(),
        };
        let mut tasks = Vec::with_capacity(self.steps.len());
        let mut entries = Vec::with_capacity(self.steps.len());
        for step in std::mem::take(&mut self.steps) {
            let fut = (step.launcher)(&mut wiring);
            tasks.push((step.label.clone(), fut));
            entries.push((step.label, step.kind, step.metrics));
        }
        drop(wiring);
        runner::run(self, tasks, entries, options, stop).await
    }
}

/// A typed, immutable collection of elements produced by a step. Applying a transform adds a step that
/// consumes it; a collection may be consumed by several steps (each sees every element).
pub struct PCollection<T> {
    graph: GraphRef,
    slot: usize,
    windowing: Windowing,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for PCollection<T> {
    fn clone(&self) -> Self {
        PCollection {
            graph: Rc::clone(&self.graph),
            slot: self.slot,
            windowing: self.windowing.clone(),
            _t: PhantomData,
        }
    }
}

/// The output of a grouping step and its late output: `(per-pane results, late inputs)`.
pub type WithLate<K, O, V> = (PCollection<(K, O)>, PCollection<(K, V)>);

/// The outputs of a [`DoFn`]: the main output, the dead letters, and any named additional output
/// ([`Tagged::output`]).
pub struct Tagged<O, D> {
    /// Main output.
    pub main: PCollection<O>,
    /// Dead-letter output.
    pub dead_letters: PCollection<D>,
    step: String,
    sides: SideSpecs,
    /// Additional outputs read so far: tag id -> slot, so reading one twice gives the same output.
    read: RefCell<Vec<(u64, usize)>>,
}

impl<O: Data, D: Data> Tagged<O, D> {
    fn new(
        main: PCollection<O>,
        dead_letters: PCollection<D>,
        step: String,
        sides: SideSpecs,
    ) -> Self {
        Tagged {
            main,
            dead_letters,
            step,
            sides,
            read: RefCell::new(Vec::new()),
        }
    }

    /// The additional output named by `tag` (Beam's `PCollectionTuple.get`): the elements the `DoFn`
    /// emitted with [`crate::DoFnContext::output_to`], with their timestamps, windows and
    /// acknowledgement. Elements sent to a tag the pipeline never reads are failed, not dropped.
    pub fn output<T: Data>(&self, tag: &OutputTag<T>) -> PCollection<T> {
        let graph = Rc::clone(&self.main.graph);
        let windowing = self.main.windowing.clone();
        if let Some(&(_, slot)) = self.read.borrow().iter().find(|(id, _)| *id == tag.id()) {
            return PCollection::new(graph, slot, windowing);
        }
        let slot = {
            let mut g = graph.borrow_mut();
            let slot = g.new_slot::<T>(&self.step, "tagged", true);
            g.slots[slot].tag = tag.name().to_string();
            slot
        };
        self.sides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(TypedSpec::<T> {
                id: tag.id(),
                slot,
                _t: PhantomData,
            }));
        self.read.borrow_mut().push((tag.id(), slot));
        PCollection::new(graph, slot, windowing)
    }
}

/// A composite transform: a reusable function from a collection to anything (usually a collection or a
/// tuple of them). Steps added inside are labelled `Outer/Inner`.
pub trait PTransform<In> {
    /// What the transform produces.
    type Output;
    /// Adds the transform's steps.
    fn expand(self, input: &PCollection<In>) -> Self::Output;
}

impl<In, Out, F: FnOnce(&PCollection<In>) -> Out> PTransform<In> for F {
    type Output = Out;
    fn expand(self, input: &PCollection<In>) -> Out {
        self(input)
    }
}

impl<T: Data> PCollection<T> {
    fn new(graph: GraphRef, slot: usize, windowing: Windowing) -> Self {
        PCollection {
            graph,
            slot,
            windowing,
            _t: PhantomData,
        }
    }

    /// The windowing strategy of this collection.
    pub fn windowing(&self) -> Windowing {
        self.windowing.clone()
    }

    fn elementwise<F: BatchFn<In = T>>(
        &self,
        label: &str,
        instances: Vec<F>,
        windowing: Windowing,
        warn_dead: bool,
    ) -> (PCollection<F::Out>, PCollection<F::Dead>) {
        let (main, dead, _, _) = self.elementwise_tagged(label, instances, windowing, warn_dead);
        (main, dead)
    }

    /// An element-wise step with its main and dead-letter outputs, its full label and the list its
    /// additional outputs are added to ([`Tagged::output`]).
    fn elementwise_tagged<F: BatchFn<In = T>>(
        &self,
        label: &str,
        mut instances: Vec<F>,
        windowing: Windowing,
        warn_dead: bool,
    ) -> (PCollection<F::Out>, PCollection<F::Dead>, String, SideSpecs) {
        let mut g = self.graph.borrow_mut();
        let full = g.register(label);
        let scope = g.metrics.scope(&[("step", &full)]);
        for instance in &mut instances {
            instance.register_metrics(&scope);
        }
        let rx = g.connect::<T>(self.slot, &full);
        let main = g.new_slot::<F::Out>(&full, "main", true);
        let dead = g.new_slot::<F::Dead>(&full, "dead_letters", warn_dead);
        let sides = SideSpecs::default();
        let specs = Arc::clone(&sides);
        let step = full.clone();
        g.push_operator(full.clone(), vec![rx], move |w, m| {
            let sides = SideOutputs::launch(&specs, &step, w);
            ElementwiseOp::new(
                instances,
                w.take::<F::Out>(main),
                w.take::<F::Dead>(dead),
                sides,
                m,
            )
        });
        drop(g);
        (
            PCollection::new(Rc::clone(&self.graph), main, windowing.clone()),
            PCollection::new(Rc::clone(&self.graph), dead, windowing),
            full,
            sides,
        )
    }

    /// One output per element.
    pub fn map<U: Data>(
        &self,
        label: &str,
        f: impl Fn(T) -> U + Send + Sync + 'static,
    ) -> PCollection<U> {
        self.parallel(1).map(label, f)
    }

    /// Zero or more outputs per element.
    pub fn flat_map<I>(
        &self,
        label: &str,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> PCollection<I::Item>
    where
        I: IntoIterator + 'static,
        I::Item: Data,
    {
        self.parallel(1).flat_map(label, f)
    }

    /// Keeps the elements for which `f` holds.
    pub fn filter(
        &self,
        label: &str,
        f: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> PCollection<T> {
        self.parallel(1).filter(label, f)
    }

    /// Runs a [`DoFn`]; returns its main and dead-letter outputs. A dead-letter output nothing
    /// consumes is logged at build (its elements would count as handled), unless its type is
    /// `Infallible` (a `DoFn` without dead letters).
    pub fn par_do<D: DoFn<In = T>>(&self, label: &str, dofn: D) -> Tagged<D::Out, D::Dead> {
        let (main, dead_letters, step, sides) = self.elementwise_tagged(
            label,
            vec![ParDoFn::new(dofn)],
            self.windowing.clone(),
            may_dead_letter::<D::Dead>(),
        );
        Tagged::new(main, dead_letters, step, sides)
    }

    /// Element-wise steps that process up to `n` batches at once (CPU-bound work). Output order is kept.
    pub fn parallel(&self, n: usize) -> Parallel<'_, T> {
        Parallel {
            input: self,
            n: n.max(1),
        }
    }

    /// Pairs every element with a key.
    pub fn key_by<K: Data>(
        &self,
        label: &str,
        f: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> PCollection<(K, T)> {
        self.map(label, move |v| (f(&v), v))
    }

    /// Assigns windows and sets the windowing strategy used by later grouping steps.
    pub fn window_into(&self, label: &str, windowing: Windowing) -> PCollection<T> {
        if let Err(e) = windowing.window_fn.validate() {
            let mut g = self.graph.borrow_mut();
            let full = g.register(label);
            g.errors.push(format!("step '{full}': {e}"));
            drop(g);
            return self.clone();
        }
        let f = WindowIntoFn(windowing.window_fn.clone(), PhantomData);
        self.elementwise(label, vec![f], windowing, false).0
    }

    /// Merges this collection with others of the same type.
    pub fn flatten_with(&self, label: &str, others: &[&PCollection<T>]) -> PCollection<T> {
        let mut all = vec![self];
        all.extend_from_slice(others);
        Pipeline {
            graph: Rc::clone(&self.graph),
        }
        .flatten(label, &all)
    }

    /// Applies a composite transform; its inner steps are labelled `label/...`.
    pub fn apply<Tr: PTransform<T>>(&self, label: &str, transform: Tr) -> Tr::Output {
        {
            let mut g = self.graph.borrow_mut();
            let full = g.register(label);
            let own = full.rsplit('/').next().unwrap_or(&full).to_string();
            g.scope.push(own);
        }
        let out = transform.expand(self);
        self.graph.borrow_mut().scope.pop();
        out
    }

    /// [`PCollection::write`] with the default [`SinkConfig`]: batches of up to 500 elements, 4 MiB or
    /// 200 ms, 4 requests in flight, 10 retries with backoff.
    pub fn write_default<S: Sink<T>>(&self, label: &str, sink: S) {
        self.write(label, sink, SinkConfig::default());
    }

    /// Writes to a sink with batching, retries and an in-flight limit.
    pub fn write<S: Sink<T>>(&self, label: &str, mut sink: S, config: SinkConfig) {
        let mut g = self.graph.borrow_mut();
        let full = g.register(label);
        sink.register_metrics(&g.metrics.scope(&[("step", &full)]));
        let rx = g.connect::<T>(self.slot, &full);
        let step_metrics = g.metrics.step(&full);
        let sink_metrics = g.metrics.sink(&full);
        g.sinks.push((full.clone(), sink_metrics.clone()));
        let m = step_metrics.clone();
        let label_arc: Arc<str> = Arc::from(full.as_str());
        g.steps.push(StepEntry {
            label: full,
            kind: StepKind::Sink,
            metrics: step_metrics,
            launcher: Box::new(move |_w: &mut Wiring| {
                Box::pin(run_sink(sink, config, rx, m, sink_metrics, label_arc))
            }),
        });
    }
}

/// False for a dead-letter type that has no values (`Infallible`): nothing to warn about.
fn may_dead_letter<D: 'static>() -> bool {
    std::any::TypeId::of::<D>() != std::any::TypeId::of::<std::convert::Infallible>()
}

/// Element-wise steps with a chosen parallelism; see [`PCollection::parallel`].
pub struct Parallel<'a, T> {
    input: &'a PCollection<T>,
    n: usize,
}

impl<T: Data> Parallel<'_, T> {
    /// Parallel `map`.
    pub fn map<U: Data>(
        &self,
        label: &str,
        f: impl Fn(T) -> U + Send + Sync + 'static,
    ) -> PCollection<U> {
        let f = Arc::new(f);
        let instances = (0..self.n)
            .map(|_| MapFn(Arc::clone(&f), PhantomData))
            .collect();
        let w = self.input.windowing.clone();
        self.input.elementwise(label, instances, w, false).0
    }

    /// Parallel `flat_map`.
    pub fn flat_map<I>(
        &self,
        label: &str,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> PCollection<I::Item>
    where
        I: IntoIterator + 'static,
        I::Item: Data,
    {
        let f = Arc::new(f);
        let instances = (0..self.n)
            .map(|_| FlatMapFn(Arc::clone(&f), PhantomData))
            .collect();
        let w = self.input.windowing.clone();
        self.input.elementwise(label, instances, w, false).0
    }

    /// Parallel `filter`.
    pub fn filter(
        &self,
        label: &str,
        f: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> PCollection<T> {
        let f = Arc::new(f);
        let instances = (0..self.n)
            .map(|_| FilterFn(Arc::clone(&f), PhantomData))
            .collect();
        let w = self.input.windowing.clone();
        self.input.elementwise(label, instances, w, false).0
    }

    /// Parallel `ParDo`: one clone of the `DoFn` per concurrent batch.
    pub fn par_do<D: DoFn<In = T> + Clone>(&self, label: &str, dofn: D) -> Tagged<D::Out, D::Dead> {
        let instances = (0..self.n).map(|_| ParDoFn::new(dofn.clone())).collect();
        let w = self.input.windowing.clone();
        let warn = may_dead_letter::<D::Dead>();
        let (main, dead_letters, step, sides) =
            self.input.elementwise_tagged(label, instances, w, warn);
        Tagged::new(main, dead_letters, step, sides)
    }
}

impl<K, V> PCollection<(K, V)>
where
    K: Data + Hash + Eq,
    V: Data,
{
    fn group<C: CombineFn<V>>(&self, label: &str, combine: C) -> WithLate<K, C::Out, V> {
        let windowing = self.windowing.clone();
        let mut g = self.graph.borrow_mut();
        let full = g.register(label);
        let rx = g.connect::<(K, V)>(self.slot, &full);
        let main = g.new_slot::<(K, C::Out)>(&full, "main", true);
        let route = windowing.late == crate::window::LatePolicy::Route;
        let late = g.new_slot::<(K, V)>(&full, "late", false);
        if route && windowing.can_be_late() {
            g.slots[late].required = Some(format!(
                "step '{full}': data later than the allowed lateness goes to its late output, which \
                 nothing consumes: use combine_per_key_with_late and handle it, or drop it on \
                 purpose with Windowing::drop_late()"
            ));
        }
        let redelivered = g
            .metrics
            .counter(&crate::metrics::names::GROUP_REDELIVERED, &[&full]);
        let op_windowing = windowing.clone();
        g.push_operator(full, vec![rx], move |w, m| {
            GroupOp::new(
                combine,
                op_windowing,
                w.take::<(K, C::Out)>(main),
                w.take::<(K, V)>(late),
                m,
                redelivered,
            )
        });
        drop(g);
        (
            PCollection::new(Rc::clone(&self.graph), main, windowing.clone()),
            PCollection::new(Rc::clone(&self.graph), late, windowing),
        )
    }

    /// Groups values per key and window (Beam's `GroupByKey`).
    pub fn group_by_key(&self, label: &str) -> PCollection<(K, Vec<V>)> {
        self.group(label, ToList).0
    }

    /// Combines values per key and window.
    pub fn combine_per_key<C: CombineFn<V>>(
        &self,
        label: &str,
        combine: C,
    ) -> PCollection<(K, C::Out)> {
        self.group(label, combine).0
    }

    /// Combines values per key and window, and returns the late output too (elements that arrived after
    /// their window expired; routed there when the windowing says [`Windowing::route_late`]).
    pub fn combine_per_key_with_late<C: CombineFn<V>>(
        &self,
        label: &str,
        combine: C,
    ) -> WithLate<K, C::Out, V> {
        self.group(label, combine)
    }

    /// Counts elements per key and window.
    pub fn count_per_key(&self, label: &str) -> PCollection<(K, u64)> {
        self.group(label, Count).0
    }
}
