//! Building pipelines: [`Pipeline`], typed [`PCollection`]s, labelled steps, composite [`PTransform`]s.
//!
//! A pipeline is built by plain function calls and run separately. Building never fails half-way: problems
//! (duplicate labels, invalid windows) are collected and reported by [`Pipeline::build`].

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use crate::channel::Receiver;
use crate::element::Data;
use crate::metrics::{BufferMetrics, Metrics, SinkMetrics, SourceMetrics};
use crate::report::RunReport;
use crate::runner;
use crate::shutdown::Shutdown;

use crate::source::{run_source, Source};
use crate::window::{WindowFn, Windowing};

mod collection;
mod config;
mod graph;

pub use collection::*;
pub use config::*;
pub(crate) use graph::*;

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
    pub(crate) graph: GraphRef,
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
            // Two instances of one custom strategy print alike: say why they still differ.
            let custom = matches!(windowing.window_fn, WindowFn::Custom(_))
                || matches!(other.windowing.window_fn, WindowFn::Custom(_));
            let hint = if custom {
                " (a custom window strategy is the same only as the clones of its own \
                 WindowFn::custom: create it once and clone it)"
            } else {
                ""
            };
            g.errors.push(format!(
                "step '{full}': inputs have different windowing (input 0: {:?}; input {i}: {:?}): \
                 apply the same window_into to every input before flattening{hint}",
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
    pub(crate) slots: Vec<Option<Box<dyn Any + Send>>>,
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
