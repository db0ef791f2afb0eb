//! Named additional outputs of a [`crate::DoFn`] (Beam's `TupleTag` / `withOutputs`): a typed
//! [`OutputTag`] the `DoFn` emits to ([`crate::DoFnContext::output_to`]) and the pipeline reads
//! ([`crate::Tagged::output`]).
//!
//! A step keeps one buffer per requested tag for each batch; a `DoFn` that emits to no additional
//! output costs nothing (no buffer is made). Buffers are type-erased (`Box<dyn Any>`) because the tags
//! of one step have different types; the cost is one type check per emitted element.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::channel::Watermark;
use crate::element::{Data, Element};
use crate::finalizer::Status;
use crate::operator::Output;

static TAG_IDS: AtomicU64 = AtomicU64::new(1);

/// A typed name for an additional output of a `DoFn`. Create it once, give a clone to the `DoFn` (which
/// emits with [`crate::DoFnContext::output_to`]) and read the output with [`crate::Tagged::output`].
///
/// ```
/// use fluxo::{DoFn, DoFnContext, OutputTag, Pipeline, RunOptions, SinkConfig, Timestamp};
/// use fluxo::testing::{CollectingSink, TestStream};
///
/// #[derive(Clone)]
/// struct SplitNegatives(OutputTag<i64>);
/// impl DoFn for SplitNegatives {
///     type In = i64;
///     type Out = i64;
///     type Dead = std::convert::Infallible;
///     fn process(&mut self, n: i64, ctx: &mut DoFnContext<'_, i64, Self::Dead>) {
///         if n < 0 { ctx.output_to(&self.0, n) } else { ctx.output(n) }
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let negative = OutputTag::<i64>::new("negative");
/// let p = Pipeline::new("split");
/// let (pos_sink, pos) = CollectingSink::new();
/// let (neg_sink, neg) = CollectingSink::new();
/// let split = p
///     .read("Read", TestStream::new().add_values([(3, Timestamp(0)), (-2, Timestamp(1))]))
///     .par_do("Split", SplitNegatives(negative.clone()));
/// split.main.write_default("Positive", pos_sink);
/// split.output(&negative).write_default("Negative", neg_sink);
/// p.run(RunOptions::default()).await.unwrap();
/// assert_eq!((pos.values(), neg.values()), (vec![3], vec![-2]));
/// # });
/// ```
pub struct OutputTag<T> {
    id: u64,
    name: Arc<str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag {
            id: self.id,
            name: Arc::clone(&self.name),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for OutputTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputTag({})", self.name)
    }
}

impl<T: Data> OutputTag<T> {
    /// A new tag; `name` labels the output in metrics and logs (`<step>/<name>`).
    pub fn new(name: &str) -> Self {
        OutputTag {
            id: TAG_IDS.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            _t: PhantomData,
        }
    }

    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// The elements one batch emitted to one additional output.
pub(crate) trait SideBuffer: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    /// Marks every element as not delivered (the batch's result was dropped).
    fn fail_all(&self);
}

impl<T: Data> SideBuffer for Vec<Element<T>> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn fail_all(&self) {
        for e in self {
            e.finalizers.update(Status::Errored);
        }
    }
}

/// The additional outputs of one batch, in the step's tag order.
#[derive(Default)]
pub(crate) struct SideBuffers {
    bufs: Vec<(u64, Box<dyn SideBuffer>)>,
    step: Arc<str>,
}

impl SideBuffers {
    /// Adds `e` to `tag`'s buffer. An element for a tag the pipeline never read (no
    /// [`crate::Tagged::output`] for it) has nowhere to go: it is failed as rejected, with the
    /// reason, so the source does not acknowledge it.
    pub(crate) fn push<T: Data>(&mut self, tag: &OutputTag<T>, e: Element<T>) {
        let found = self
            .bufs
            .iter_mut()
            .find(|(id, _)| *id == tag.id())
            .and_then(|(_, b)| b.as_any_mut().downcast_mut::<Vec<Element<T>>>());
        match found {
            Some(buf) => buf.push(e),
            None => {
                let reason: Arc<str> = Arc::from(format!(
                    "step '{}': output '{}' is not read by the pipeline (Tagged::output)",
                    self.step,
                    tag.name()
                ));
                tracing::error!(step = %self.step, output = tag.name(), "element sent to an output nothing reads: failed");
                e.finalizers.fail(Status::Rejected, &reason);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bufs.iter().map(|(_, b)| b.len()).sum()
    }
}

impl Drop for SideBuffers {
    fn drop(&mut self) {
        // Buffers are taken out when emitted; what is left was not delivered.
        for (_, b) in &self.bufs {
            b.fail_all();
        }
    }
}

/// The wiring of one requested additional output, declared at build time: makes the step's output at
/// launch.
pub(crate) trait SideSpec: Send {
    fn launch(self: Box<Self>, wiring: &mut crate::pipeline::Wiring) -> Box<dyn SideOutput>;
}

pub(crate) struct TypedSpec<T> {
    pub(crate) id: u64,
    pub(crate) slot: usize,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Data> SideSpec for TypedSpec<T> {
    fn launch(self: Box<Self>, wiring: &mut crate::pipeline::Wiring) -> Box<dyn SideOutput> {
        Box::new(TypedOutput {
            id: self.id,
            output: wiring.take::<T>(self.slot),
        })
    }
}

/// The additional outputs requested for a step so far (shared by the graph, which adds to it, and the
/// step's launcher, which takes it at run time).
pub(crate) type SideSpecs = Arc<Mutex<Vec<Box<dyn SideSpec>>>>;

/// One additional output of a running step.
pub(crate) trait SideOutput: Send + Sync {
    fn id(&self) -> u64;
    fn new_buffer(&self) -> Box<dyn SideBuffer>;
    /// Sends a buffer made by [`SideOutput::new_buffer`]; returns `(sent, unconsumed)`.
    fn send(&self, buf: Box<dyn SideBuffer>) -> BoxFuture<'_, (u64, u64)>;
    fn send_watermark(&self, wm: Watermark);
}

struct TypedOutput<T> {
    id: u64,
    output: Output<T>,
}

impl<T: Data> SideOutput for TypedOutput<T> {
    fn id(&self) -> u64 {
        self.id
    }

    fn new_buffer(&self) -> Box<dyn SideBuffer> {
        Box::new(Vec::<Element<T>>::new())
    }

    fn send(&self, mut buf: Box<dyn SideBuffer>) -> BoxFuture<'_, (u64, u64)> {
        let batch = buf
            .as_any_mut()
            .downcast_mut::<Vec<Element<T>>>()
            .map(std::mem::take)
            .unwrap_or_default();
        Box::pin(async move {
            let n = batch.len() as u64;
            if n == 0 {
                return (0, 0);
            }
            (n, self.output.send(batch).await)
        })
    }

    fn send_watermark(&self, wm: Watermark) {
        self.output.send_watermark(wm);
    }
}

/// The additional outputs of a running step.
#[derive(Default)]
pub(crate) struct SideOutputs {
    outputs: Vec<Box<dyn SideOutput>>,
    step: Arc<str>,
}

impl SideOutputs {
    pub(crate) fn launch(
        specs: &SideSpecs,
        step: &str,
        wiring: &mut crate::pipeline::Wiring,
    ) -> Self {
        let specs = std::mem::take(&mut *specs.lock().unwrap_or_else(|p| p.into_inner()));
        SideOutputs {
            outputs: specs.into_iter().map(|s| s.launch(wiring)).collect(),
            step: Arc::from(step),
        }
    }

    /// Empty buffers for one batch (no allocation when the step has no additional output).
    pub(crate) fn buffers(&self) -> SideBuffers {
        SideBuffers {
            bufs: self
                .outputs
                .iter()
                .map(|o| (o.id(), o.new_buffer()))
                .collect(),
            step: Arc::clone(&self.step),
        }
    }

    /// Sends every buffer of a batch; returns `(sent, unconsumed)`.
    pub(crate) async fn send(&self, mut buffers: SideBuffers) -> (u64, u64) {
        let mut totals = (0, 0);
        for ((_, buf), out) in std::mem::take(&mut buffers.bufs)
            .into_iter()
            .zip(&self.outputs)
        {
            let (sent, unconsumed) = out.send(buf).await;
            totals.0 += sent;
            totals.1 += unconsumed;
        }
        totals
    }

    pub(crate) fn send_watermark(&self, wm: Watermark) {
        for o in &self.outputs {
            o.send_watermark(wm);
        }
    }
}
