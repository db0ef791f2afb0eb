//! The run report: what every step, source, sink and buffer did.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::pipeline::StepKind;

/// Counters of one step at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// Step label.
    pub label: String,
    /// Source, transform or sink.
    pub kind: StepKind,
    /// Elements received (sources: emitted).
    pub received: u64,
    /// Elements sent to the main output(s).
    pub sent: u64,
    /// Elements sent to the dead-letter output.
    pub errors: u64,
    /// Elements dropped on purpose (filtered, too late, no consumer).
    pub discarded: u64,
    /// Late elements (dropped or routed to the late output).
    pub late: u64,
}

/// Acknowledgement counters of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// Step label.
    pub label: String,
    /// Elements emitted.
    pub emitted: u64,
    /// Elements acknowledged as delivered.
    pub acked: u64,
    /// Elements negatively acknowledged (errored or rejected).
    pub nacked: u64,
    /// Of the nacked, those rejected by a fatal sink error.
    pub rejected: u64,
}

/// Counters of one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkReport {
    /// Step label.
    pub label: String,
    /// Elements written.
    pub written: u64,
    /// Elements given up on.
    pub failed: u64,
    /// Retried requests.
    pub retries: u64,
    /// Write requests started (first attempts).
    pub batches: u64,
}

/// Peak fill of one buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferReport {
    /// Producing step.
    pub from: String,
    /// Consuming step.
    pub to: String,
    /// Most elements buffered at once.
    pub peak_elements: u64,
    /// Most estimated bytes buffered at once.
    pub peak_bytes: u64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Pipeline name.
    pub pipeline: String,
    /// Wall-clock duration.
    pub elapsed: Duration,
    /// Every step, in the order they were added.
    pub steps: Vec<StepReport>,
    /// Every source.
    pub sources: Vec<SourceReport>,
    /// Every sink.
    pub sinks: Vec<SinkReport>,
    /// Every buffer.
    pub buffers: Vec<BufferReport>,
    /// Most elements held by all buffers together at one time (since the registry was created).
    pub peak_total_elements: u64,
    /// Most estimated bytes held by all buffers together at one time.
    pub peak_total_bytes: u64,
}

impl RunReport {
    /// The report of a step by label.
    pub fn step(&self, label: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.label == label)
    }

    /// The report of a source by label.
    pub fn source(&self, label: &str) -> Option<&SourceReport> {
        self.sources.iter().find(|s| s.label == label)
    }

    /// The report of a sink by label.
    pub fn sink(&self, label: &str) -> Option<&SinkReport> {
        self.sinks.iter().find(|s| s.label == label)
    }

    /// The counts of this report minus those of `earlier` (same graph, an earlier snapshot),
    /// saturating at 0; the buffer peaks are kept as they are (the highest since the registry was
    /// created).
    pub fn since(mut self, earlier: &RunReport) -> RunReport {
        for (now, then) in self.steps.iter_mut().zip(&earlier.steps) {
            now.received = now.received.saturating_sub(then.received);
            now.sent = now.sent.saturating_sub(then.sent);
            now.errors = now.errors.saturating_sub(then.errors);
            now.discarded = now.discarded.saturating_sub(then.discarded);
            now.late = now.late.saturating_sub(then.late);
        }
        for (now, then) in self.sources.iter_mut().zip(&earlier.sources) {
            now.emitted = now.emitted.saturating_sub(then.emitted);
            now.acked = now.acked.saturating_sub(then.acked);
            now.nacked = now.nacked.saturating_sub(then.nacked);
            now.rejected = now.rejected.saturating_sub(then.rejected);
        }
        for (now, then) in self.sinks.iter_mut().zip(&earlier.sinks) {
            now.written = now.written.saturating_sub(then.written);
            now.failed = now.failed.saturating_sub(then.failed);
            now.retries = now.retries.saturating_sub(then.retries);
            now.batches = now.batches.saturating_sub(then.batches);
        }
        self
    }

    /// Most elements held by all buffers together at one time: what the pipeline kept in flight
    /// between its steps.
    pub fn peak_buffered_elements(&self) -> u64 {
        self.peak_total_elements
    }

    /// Most estimated bytes held by all buffers together at one time.
    pub fn peak_buffered_bytes(&self) -> u64 {
        self.peak_total_bytes
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline '{}' ran for {:.3?}",
            self.pipeline, self.elapsed
        )?;
        writeln!(
            f,
            "{:<32} {:>9} {:>12} {:>12} {:>10} {:>10} {:>8}",
            "step", "kind", "received", "sent", "errors", "discarded", "late"
        )?;
        for s in &self.steps {
            let kind = match s.kind {
                StepKind::Source => "source",
                StepKind::Transform => "transform",
                StepKind::Sink => "sink",
            };
            writeln!(
                f,
                "{:<32} {:>9} {:>12} {:>12} {:>10} {:>10} {:>8}",
                s.label, kind, s.received, s.sent, s.errors, s.discarded, s.late
            )?;
        }
        for s in &self.sources {
            writeln!(
                f,
                "source {}: acked {} nacked {} (rejected {})",
                s.label, s.acked, s.nacked, s.rejected
            )?;
        }
        for s in &self.sinks {
            writeln!(
                f,
                "sink {}: written {} failed {} retries {} batches {}",
                s.label, s.written, s.failed, s.retries, s.batches
            )?;
        }
        writeln!(
            f,
            "buffers: at most {} elements, {} estimated bytes in flight together",
            self.peak_total_elements, self.peak_total_bytes
        )?;
        Ok(())
    }
}
