//! Typed collections and the transforms applied to them ([`PCollection`], [`Tagged`], [`Parallel`],
//! keyed grouping).

use std::cell::RefCell;
use std::hash::Hash;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use super::config::StepKind;
use super::graph::{GraphRef, StepEntry, Wiring};
use super::Pipeline;
use crate::combine::{CombineFn, Count, ToList};
use crate::element::Data;
use crate::elementwise::{
    BatchFn, DoFn, ElementwiseOp, FilterFn, FlatMapFn, MapFn, ParDoFn, WindowIntoFn,
};
use crate::group::GroupOp;
use crate::sink::{run_sink, Sink, SinkConfig};
use crate::tagged::{OutputTag, SideOutputs, SideSpecs, TypedSpec};
use crate::window::Windowing;

/// A typed, immutable collection of elements produced by a step. Applying a transform adds a step that
/// consumes it; a collection may be consumed by several steps (each sees every element).
pub struct PCollection<T> {
    pub(crate) graph: GraphRef,
    pub(crate) slot: usize,
    pub(crate) windowing: Windowing,
    pub(crate) _t: PhantomData<fn() -> T>,
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
    pub(crate) step: String,
    pub(crate) sides: SideSpecs,
    /// Additional outputs read so far: tag id -> slot, so reading one twice gives the same output.
    pub(crate) read: RefCell<Vec<(u64, usize)>>,
}

impl<O: Data, D: Data> Tagged<O, D> {
    pub(crate) fn new(
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
    pub(crate) fn new(graph: GraphRef, slot: usize, windowing: Windowing) -> Self {
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

    pub(crate) fn elementwise<F: BatchFn<In = T>>(
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
    pub(crate) fn elementwise_tagged<F: BatchFn<In = T>>(
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
pub(crate) fn may_dead_letter<D: 'static>() -> bool {
    std::any::TypeId::of::<D>() != std::any::TypeId::of::<std::convert::Infallible>()
}

/// Element-wise steps with a chosen parallelism; see [`PCollection::parallel`].
pub struct Parallel<'a, T> {
    pub(crate) input: &'a PCollection<T>,
    pub(crate) n: usize,
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
    pub(crate) fn group<C: CombineFn<V>>(&self, label: &str, combine: C) -> WithLate<K, C::Out, V> {
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
