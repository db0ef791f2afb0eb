//! Upper bounds of the engine's histogram buckets (a `+Inf` bucket is always added).
//!
//! Each series is roughly exponential (1-2.5-5 or 1-2-5 steps per decade, or powers of 4).

/// [`STEP_BATCH_DURATION`](super::names::STEP_BATCH_DURATION): 10 µs to 10 s, 1-2.5-5 per
/// decade (19 bounds).
pub const STEP_BATCH_SECONDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`STEP_BATCH_ELEMENTS`](super::names::STEP_BATCH_ELEMENTS) and
/// [`SINK_BATCH_ELEMENTS`](super::names::SINK_BATCH_ELEMENTS): 1 to 100 000 elements, 1-2-5
/// per decade (16 bounds).
pub const BATCH_ELEMENTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
    20_000.0, 50_000.0, 100_000.0,
];

/// [`SINK_BATCH_BYTES`](super::names::SINK_BATCH_BYTES): 1 KiB to 64 MiB, powers of 4
/// (9 bounds).
pub const SINK_BATCH_BYTES: &[f64] = &[
    1_024.0,
    4_096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// [`SINK_REQUEST_DURATION`](super::names::SINK_REQUEST_DURATION): 1 ms to 60 s, 1-2.5-5 per
/// decade, then 30 s and 60 s (15 bounds).
pub const SINK_REQUEST_SECONDS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
