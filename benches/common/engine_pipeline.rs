//! The pipeline measured by the engine benchmarks: a generated source with acknowledgement tracking,
//! four element-wise steps, and a three-way fan-out to discarding sinks.

use std::time::Duration;

use fluxo::testing::{DiscardSink, GeneratorSource};
use fluxo::{Pipeline, PipelineConfig, RunOptions, RunReport, SinkConfig};

/// Builds and runs the benchmark pipeline over `n` elements; panics if any element was not acknowledged
/// as delivered (so a broken engine cannot post a number).
pub async fn run(n: u64) -> RunReport {
    let p = Pipeline::with_config(PipelineConfig {
        name: "bench".into(),
        idle_timeout: None,
        ..PipelineConfig::default()
    });
    let mapped = p
        .read("Read", GeneratorSource::new(n, |i| i).counting_acks())
        .map("Scale", |x: u64| x.wrapping_mul(3))
        .map("Mix", |x| x ^ 0x5555_5555)
        .map("Rotate", |x| x.rotate_left(7))
        .map("Offset", |x| x.wrapping_add(1));
    let sink = SinkConfig {
        max_events: 1024,
        max_delay: Duration::from_millis(50),
        ..SinkConfig::default()
    };
    for i in 0..3 {
        mapped.write(&format!("Discard{i}"), DiscardSink, sink);
    }
    let report = p
        .run(RunOptions::default())
        .await
        .expect("benchmark pipeline failed");
    let source = report.source("Read").expect("source report");
    assert_eq!(
        source.acked, n,
        "every element must be acknowledged as delivered"
    );
    report
}
