//! Engine overhead: elements per second through four element-wise steps and a three-way fan-out to
//! discarding sinks, with end-to-end acknowledgement tracking on.
//!
//! Run: `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "common/engine_pipeline.rs"]
mod engine_pipeline;

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let n = 1_000_000u64;
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    group.bench_function("4_maps_3_way_fanout_acks_1M", |b| {
        b.iter(|| rt.block_on(engine_pipeline::run(n)));
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
