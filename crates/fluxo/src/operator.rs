//! The task that runs one step: it reads its input buffers, tracks the input watermark and calls the
//! step's operator hooks.

use std::future::Future;

use futures::stream::{self, SelectAll, StreamExt};
use tokio::time::Instant;

use crate::channel::{Message, Receiver, Sender, Watermark};
use crate::element::{Data, Element, Timestamp};
use crate::metrics::StepMetrics;

/// Fan-out of one output: every consumer receives every element (the last one gets the original batch, the
/// others clones that share finalizers).
pub(crate) struct Output<T> {
    senders: Vec<Sender<T>>,
}

impl<T: Data> Output<T> {
    pub(crate) fn new(senders: Vec<Sender<T>>) -> Self {
        Output { senders }
    }

    pub(crate) fn has_consumers(&self) -> bool {
        !self.senders.is_empty()
    }

    /// True when there were consumers and every one of them is gone.
    pub(crate) fn all_closed(&self) -> bool {
        !self.senders.is_empty() && self.senders.iter().all(Sender::is_closed)
    }

    /// Sends a batch to every consumer. Returns how many elements had no consumer at all (dropped as
    /// handled). A consumer that is gone is skipped; its copy is marked errored by the buffer.
    pub(crate) async fn send(&self, batch: Vec<Element<T>>) -> u64 {
        let Some((last, rest)) = self.senders.split_last() else {
            return batch.len() as u64;
        };
        for s in rest {
            let _ = s.send_batch(batch.clone()).await;
        }
        let _ = last.send_batch(batch).await;
        0
    }

    pub(crate) fn send_watermark(&self, wm: Watermark) {
        for s in &self.senders {
            let _ = s.send_watermark(wm);
        }
    }
}

/// Hooks of a running step, in the style of Arroyo's operators: every hook but `process` has a default.
pub(crate) trait Operator: Send + 'static {
    type In: Data;

    /// A batch arrived on input `input`.
    fn process(
        &mut self,
        input: usize,
        batch: Vec<Element<Self::In>>,
    ) -> impl Future<Output = ()> + Send;

    /// The minimum watermark over the inputs advanced (or every input went idle).
    fn on_watermark(&mut self, wm: Watermark) -> impl Future<Output = ()> + Send;

    /// The next processing-time deadline the operator wants to be woken at.
    fn next_timer(&self) -> Option<Instant> {
        None
    }

    /// A processing-time deadline passed.
    fn on_timer(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// True when work finished in the background is waiting to be emitted (see [`Operator::wait_ready`]).
    fn has_ready_work(&self) -> bool {
        false
    }

    /// Waits until background work finished. Must be cancel-safe: the driver drops it when input arrives
    /// first.
    fn wait_ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Emits background work that [`Operator::wait_ready`] saw finish.
    fn on_ready(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Every input ended: flush state. The watermark has already been advanced to the end of time.
    fn on_close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `Flatten`: forwards every input batch; the driver keeps the minimum watermark over the inputs.
pub(crate) struct FlattenOp<T> {
    output: Output<T>,
    metrics: StepMetrics,
}

impl<T: Data> FlattenOp<T> {
    pub(crate) fn new(output: Output<T>, metrics: StepMetrics) -> Self {
        FlattenOp { output, metrics }
    }
}

impl<T: Data> Operator for FlattenOp<T> {
    type In = T;

    async fn process(&mut self, _input: usize, batch: Vec<Element<T>>) {
        let n = batch.len() as u64;
        self.metrics.received.inc_by(n);
        self.metrics.sent.inc_by(n);
        let unconsumed = self.output.send(batch).await;
        if unconsumed > 0 {
            self.metrics.discarded.inc_by(unconsumed);
        }
    }

    async fn on_watermark(&mut self, wm: Watermark) {
        self.output.send_watermark(wm);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    Active(Timestamp),
    Idle(Timestamp),
    Closed,
}

/// Minimum watermark over several inputs, ignoring idle inputs; never moves backwards.
#[derive(Debug)]
pub(crate) struct WatermarkTracker {
    inputs: Vec<InputState>,
    current: Timestamp,
    idle: bool,
}

impl WatermarkTracker {
    pub(crate) fn new(inputs: usize) -> Self {
        WatermarkTracker {
            inputs: vec![InputState::Active(Timestamp::MIN); inputs],
            current: Timestamp::MIN,
            idle: false,
        }
    }

    /// The current combined event-time watermark.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Timestamp {
        self.current
    }

    /// Data arrived on `input`: an idle input becomes active again at its last watermark (which may now be
    /// the minimum over active inputs and so advance the output, before the data is processed).
    pub(crate) fn on_data(&mut self, input: usize) -> Changes {
        if let InputState::Idle(t) = self.inputs[input] {
            self.inputs[input] = InputState::Active(t);
            return self.recompute();
        }
        Changes::default()
    }

    /// Applies a watermark from one input; returns what changed downstream (at most an event-time advance
    /// followed by a switch to idle).
    pub(crate) fn update(&mut self, input: usize, wm: Watermark) -> Changes {
        let state = &mut self.inputs[input];
        *state = match (*state, wm) {
            (InputState::Closed, _) => InputState::Closed,
            (InputState::Active(t) | InputState::Idle(t), Watermark::EventTime(n)) => {
                InputState::Active(t.max(n))
            }
            (InputState::Active(t) | InputState::Idle(t), Watermark::Idle) => InputState::Idle(t),
        };
        self.recompute()
    }

    /// An input ended (its watermark is the end of time).
    pub(crate) fn close(&mut self, input: usize) -> Changes {
        self.inputs[input] = InputState::Closed;
        self.recompute()
    }

    /// The combined watermark is the minimum over active inputs. When every open input is idle, it is the
    /// minimum of what the idle inputs promised before going quiet, and the output is idle too. When every
    /// input is closed, it is the end of time.
    fn recompute(&mut self) -> Changes {
        let mut active: Option<Timestamp> = None;
        let mut idle: Option<Timestamp> = None;
        for s in &self.inputs {
            match *s {
                InputState::Active(t) => active = Some(active.map_or(t, |m| m.min(t))),
                InputState::Idle(t) => idle = Some(idle.map_or(t, |m| m.min(t))),
                InputState::Closed => {}
            }
        }
        let (target, now_idle) = match (active, idle) {
            (Some(t), _) => (t, false),
            (None, Some(t)) => (t, true),
            (None, None) => (Timestamp::MAX, false),
        };
        let mut changes = Changes::default();
        if target > self.current {
            self.current = target;
            changes.advanced = Some(target);
        }
        if now_idle && !self.idle {
            changes.became_idle = true;
        }
        self.idle = now_idle;
        changes
    }
}

/// What a watermark update changed for the step's output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Changes {
    /// The combined event-time watermark advanced to this.
    pub(crate) advanced: Option<Timestamp>,
    /// Every open input is now idle.
    pub(crate) became_idle: bool,
}

impl Changes {
    fn watermarks(self) -> impl Iterator<Item = Watermark> {
        self.advanced
            .map(Watermark::EventTime)
            .into_iter()
            .chain(self.became_idle.then_some(Watermark::Idle))
    }
}

/// Runs an operator until all its inputs end, then closes it.
pub(crate) async fn drive<O: Operator>(
    mut op: O,
    inputs: Vec<Receiver<O::In>>,
    metrics: StepMetrics,
) {
    let mut tracker = WatermarkTracker::new(inputs.len());
    let mut streams: SelectAll<_> = inputs
        .into_iter()
        .enumerate()
        .map(|(idx, rx)| {
            stream::unfold(Some(rx), move |state| async move {
                let mut rx = state?;
                match rx.recv().await {
                    Some(m) => Some(((idx, Some(m)), Some(rx))),
                    None => Some(((idx, None), None)),
                }
            })
            .boxed()
        })
        .collect();
    if streams.is_empty() {
        for wm in tracker.recompute().watermarks() {
            metrics.set_watermark(Timestamp::MAX.0);
            op.on_watermark(wm).await;
        }
    }
    loop {
        let timer = op.next_timer();
        let ready_work = op.has_ready_work();
        let next = tokio::select! {
            biased;
            _ = op.wait_ready(), if ready_work => {
                op.on_ready().await;
                continue;
            }
            _ = sleep_until(timer), if timer.is_some() => {
                op.on_timer().await;
                continue;
            }
            next = streams.next() => next,
        };
        let Some((idx, msg)) = next else { break };
        let changes = match msg {
            Some(Message::Batch(batch)) => {
                for wm in tracker.on_data(idx).watermarks() {
                    apply(&mut op, &metrics, wm).await;
                }
                op.process(idx, batch).await;
                Changes::default()
            }
            Some(Message::Watermark(wm)) => tracker.update(idx, wm),
            None => tracker.close(idx),
        };
        for wm in changes.watermarks() {
            apply(&mut op, &metrics, wm).await;
        }
    }
    op.on_close().await;
}

async fn apply<O: Operator>(op: &mut O, metrics: &StepMetrics, wm: Watermark) {
    if let Watermark::EventTime(t) = wm {
        metrics.set_watermark(t.0);
    }
    op.on_watermark(wm).await;
}

/// Sleeps until the deadline, or forever without one (for optional `select!` branches).
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(t: i64) -> Changes {
        Changes {
            advanced: Some(Timestamp(t)),
            became_idle: false,
        }
    }

    fn none() -> Changes {
        Changes::default()
    }

    fn et(t: i64) -> Watermark {
        Watermark::EventTime(Timestamp(t))
    }

    #[test]
    fn min_over_inputs() {
        let mut w = WatermarkTracker::new(2);
        assert_eq!(w.update(0, et(10)), none(), "input 1 still at MIN");
        assert_eq!(w.update(1, et(5)), adv(5));
        assert_eq!(w.update(1, et(20)), adv(10));
        assert_eq!(w.update(0, et(8)), none(), "never backwards");
        assert_eq!(w.current(), Timestamp(10));
    }

    #[test]
    fn idle_input_is_ignored_until_it_speaks() {
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(100));
        assert_eq!(w.update(1, Watermark::Idle), adv(100));
        assert_eq!(w.update(0, et(200)), adv(200));
        // Both quiet: the output goes idle at the minimum they promised (input 1 never promised anything).
        assert_eq!(
            w.update(0, Watermark::Idle),
            Changes {
                advanced: None,
                became_idle: true
            }
        );
        assert_eq!(w.update(1, Watermark::Idle), none());
        // Input 1 comes back with data: it is active again at its old watermark (MIN), which holds the
        // minimum back without moving the output backwards.
        assert_eq!(w.on_data(1), none());
        assert_eq!(w.update(0, et(300)), none());
        assert_eq!(w.update(1, et(250)), adv(250));
    }

    #[test]
    fn all_idle_advances_to_the_min_promised() {
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(50));
        w.update(1, et(70));
        assert_eq!(w.current(), Timestamp(50));
        w.update(1, Watermark::Idle);
        assert_eq!(
            w.update(0, Watermark::Idle),
            Changes {
                advanced: None,
                became_idle: true
            }
        );
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(50));
        w.update(0, Watermark::Idle);
        assert_eq!(
            w.update(1, Watermark::Idle),
            Changes {
                advanced: None,
                became_idle: true
            },
            "input 1 promised nothing"
        );
        assert_eq!(w.update(1, et(90)), adv(90), "the idle input is ignored");
    }

    #[test]
    fn closed_inputs_end_time() {
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(1));
        assert_eq!(w.close(1), adv(1));
        assert_eq!(w.close(0), adv(i64::MAX));
    }
}
