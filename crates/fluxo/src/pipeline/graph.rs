//! The graph being built: steps, their output slots and the launchers that start them.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use futures::future::BoxFuture;

use super::config::{PipelineConfig, StepKind};
use crate::channel::{channel, Receiver, Sender};
use crate::element::Data;
use crate::metrics::{BufferMetrics, Metrics, SinkMetrics, SourceMetrics, StepMetrics};
use crate::operator::{drive, Operator, Output};
use crate::shutdown::ShutdownSignal;
use crate::source::BoxError;

pub(crate) type StepFuture = BoxFuture<'static, Result<(), BoxError>>;
pub(crate) type Launcher = Box<dyn FnOnce(&mut Wiring) -> StepFuture + Send>;

/// Output slots handed to launchers at run time.
pub(crate) struct Wiring {
    pub(crate) slots: Vec<Option<Box<dyn Any + Send>>>,
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

pub(crate) struct Slot {
    pub(crate) producer: String,
    /// Which output of the producer (`main`, `dead_letters`, `late`, or a tag's name).
    pub(crate) tag: String,
    pub(crate) senders: Box<dyn Any + Send>,
    pub(crate) consumers: usize,
    pub(crate) warn_unconsumed: bool,
    /// Set when the output must have a consumer: the build error to report otherwise.
    pub(crate) required: Option<String>,
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
    pub(crate) labels: HashSet<String>,
    pub(crate) scope: Vec<String>,
    pub(crate) errors: Vec<String>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) steps: Vec<StepEntry>,
    pub(crate) sources: Vec<(String, SourceMetrics)>,
    pub(crate) sinks: Vec<(String, SinkMetrics)>,
    pub(crate) buffers: Vec<(String, String, BufferMetrics)>,
}

pub(crate) type GraphRef = Rc<RefCell<Graph>>;

impl Graph {
    /// Registers a step label in the current scope; records an error for an empty or duplicate label.
    pub(crate) fn register(&mut self, label: &str) -> String {
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

    pub(crate) fn new_slot<T: Data>(
        &mut self,
        producer: &str,
        tag: &'static str,
        warn: bool,
    ) -> usize {
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
    pub(crate) fn push_operator<O: Operator>(
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

    pub(crate) fn connect<T: Data>(&mut self, slot: usize, consumer: &str) -> Receiver<T> {
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
