//! Pipeline settings, run options and the errors of building and running.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::BufferConfig;
use crate::shutdown::ShutdownSignal;
use crate::source::BoxError;

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
