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

    /// Data arrived on `input`: an idle input becomes active again at its last watermark.
    pub(crate) fn on_data(&mut self, input: usize) {
        if let InputState::Idle(t) = self.inputs[input] {
            self.inputs[input] = InputState::Active(t);
            self.idle = false;
        }
    }

    /// Applies a watermark from one input; returns the new combined watermark when it changed.
    pub(crate) fn update(&mut self, input: usize, wm: Watermark) -> Option<Watermark> {
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
    pub(crate) fn close(&mut self, input: usize) -> Option<Watermark> {
        self.inputs[input] = InputState::Closed;
        self.recompute()
    }

    fn recompute(&mut self) -> Option<Watermark> {
        let mut min: Option<Timestamp> = None;
        let mut any_idle = false;
        for s in &self.inputs {
            match *s {
                InputState::Active(t) => min = Some(min.map_or(t, |m| m.min(t))),
                InputState::Idle(_) => any_idle = true,
                InputState::Closed => {}
            }
        }
        match min {
            Some(t) => {
                self.idle = false;
                if t > self.current {
                    self.current = t;
                    return Some(Watermark::EventTime(t));
                }
                None
            }
            None if any_idle => {
                if self.idle {
                    None
                } else {
                    self.idle = true;
                    Some(Watermark::Idle)
                }
            }
            None => {
                self.idle = false;
                if self.current != Timestamp::MAX {
                    self.current = Timestamp::MAX;
                    Some(Watermark::EventTime(Timestamp::MAX))
                } else {
                    None
                }
            }
        }
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
        if let Some(wm) = tracker.recompute() {
            metrics.set_watermark(Timestamp::MAX.0);
            op.on_watermark(wm).await;
        }
    }
    loop {
        let timer = op.next_timer();
        let next = tokio::select! {
            biased;
            _ = sleep_until(timer), if timer.is_some() => {
                op.on_timer().await;
                continue;
            }
            next = streams.next() => next,
        };
        let Some((idx, msg)) = next else { break };
        let advanced = match msg {
            Some(Message::Batch(batch)) => {
                tracker.on_data(idx);
                op.process(idx, batch).await;
                None
            }
            Some(Message::Watermark(wm)) => tracker.update(idx, wm),
            None => tracker.close(idx),
        };
        if let Some(wm) = advanced {
            if let Watermark::EventTime(t) = wm {
                metrics.set_watermark(t.0);
            }
            op.on_watermark(wm).await;
        }
    }
    op.on_close().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn et(t: i64) -> Watermark {
        Watermark::EventTime(Timestamp(t))
    }

    #[test]
    fn min_over_inputs() {
        let mut w = WatermarkTracker::new(2);
        assert_eq!(w.update(0, et(10)), None, "input 1 still at MIN");
        assert_eq!(w.update(1, et(5)), Some(et(5)));
        assert_eq!(w.update(1, et(20)), Some(et(10)));
        assert_eq!(w.update(0, et(8)), None, "never backwards");
        assert_eq!(w.current(), Timestamp(10));
    }

    #[test]
    fn idle_input_is_ignored_until_it_speaks() {
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(100));
        assert_eq!(w.update(1, Watermark::Idle), Some(et(100)));
        assert_eq!(w.update(0, et(200)), Some(et(200)));
        assert_eq!(w.update(0, Watermark::Idle), Some(Watermark::Idle));
        assert_eq!(w.update(1, Watermark::Idle), None);
        // Input 1 comes back with data: it is active again at its old watermark (MIN), which holds the
        // minimum back without moving the output backwards.
        w.on_data(1);
        assert_eq!(w.update(0, et(300)), None);
        assert_eq!(w.update(1, et(250)), Some(et(250)));
    }

    #[test]
    fn closed_inputs_end_time() {
        let mut w = WatermarkTracker::new(2);
        w.update(0, et(1));
        assert_eq!(w.close(1), Some(et(1)));
        assert_eq!(w.close(0), Some(Watermark::EventTime(Timestamp::MAX)));
    }
}
