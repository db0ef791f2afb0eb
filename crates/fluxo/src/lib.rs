//! # fluxo
//!
//! A small, fast dataflow engine in the style of Apache Beam, for one process (one worker): typed
//! [`PCollection`]s, labelled steps, element-wise transforms and [`DoFn`]s with tagged dead-letter
//! outputs, event-time windows (fixed, sliding, sessions, user-defined) with watermarks, triggers and
//! allowed lateness, per-key grouping and combining, bounded buffers with backpressure, sinks with
//! batching and retries, end-to-end acknowledgement through shared finalizers, graceful drain and
//! Prometheus metrics.
//!
//! Scale out by running several workers on one partitioned input (for example replicas sharing a Pub/Sub
//! subscription); there is no cross-worker shuffle. See `docs/engine.md`.
//!
//! ```
//! use fluxo::{Pipeline, RunOptions, SinkConfig, Timestamp, Windowing};
//! use fluxo::testing::{CollectingSink, TestStream};
//! use std::time::Duration;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let p = Pipeline::new("words");
//! let (sink, counts) = CollectingSink::new();
//! p.read("Read", TestStream::new().add_values([
//!         ("a b".to_string(), Timestamp::from_secs(1)),
//!         ("b".to_string(), Timestamp::from_secs(2)),
//!     ]))
//!     .flat_map("Split", |line: String| line.split(' ').map(str::to_string).collect::<Vec<_>>())
//!     // Late data (after a window closed) is dropped here on purpose; by default it goes to the
//!     // grouping step's late output, which must then be consumed (`combine_per_key_with_late`).
//!     .window_into("Minute", Windowing::fixed(Duration::from_secs(60)).drop_late())
//!     .key_by("Key", |w: &String| w.clone())
//!     .count_per_key("Count")
//!     .write("Collect", sink, SinkConfig::default());
//! p.run(RunOptions::default()).await.unwrap();
//! assert_eq!(counts.values_sorted(), vec![("a".to_string(), 1), ("b".to_string(), 2)]);
//! # });
//! ```

pub mod channel;
mod combine;
mod element;
mod elementwise;
mod finalizer;
mod group;
pub mod http;
pub mod metrics;
mod operator;
mod pipeline;
mod report;
mod requests;
mod runner;
mod shutdown;
mod sink;
mod source;
mod tagged;
pub mod testing;
pub mod text;
mod window;

pub use channel::{BufferConfig, Watermark};
pub use combine::{CombineFn, Count, Reduce, Sum, ToList};
pub use element::{Data, Element, PaneInfo, Shared, Timestamp, Timing, Window};
pub use elementwise::{BundleContext, DoFn, DoFnContext};
pub use finalizer::{
    ack_batch, ack_batch_with_ids, record_id, AckReceiver, Failure, Finalizer, Finalizers,
    Outcomes, RecordId, Status,
};
pub use metrics::{MetricScope, Metrics};
pub use pipeline::{
    PCollection, PTransform, Parallel, Pipeline, PipelineConfig, PipelineError, RunOptions,
    Runnable, StepFailure, StepKind, Tagged, WithLate,
};
pub use report::{BufferReport, RunReport, SinkReport, SourceReport, StepReport};
pub use requests::{send_requests, AllFailed, RequestSplitter};
pub use shutdown::{Shutdown, ShutdownSignal};
pub use sink::{backoff, ErrorClass, Meta, RetryConfig, Sink, SinkBatch, SinkConfig, WriteError};
pub use source::{BoxError, IterSource, Source, SourceContext, Stopped};
pub use tagged::OutputTag;
pub use window::{
    Accumulation, CustomWindows, EarlyFiring, LatePolicy, Trigger, WindowAssigner, WindowFn,
    Windowing,
};
