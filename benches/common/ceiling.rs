//! Reporting for the connector benchmarks: each benchmark measures the emulator's own ceiling with a raw
//! client loop and the connector in the same run, and prints both with their ratio.

use std::time::Duration;

/// The median of `v` (sorted in place). Not every benchmark takes medians.
#[allow(dead_code)]
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One measured run: `items` moved in `elapsed`.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Items (messages, rows, bytes) moved.
    pub items: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Measured {
    /// Items per second.
    pub fn rate(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }
}

/// Prints the header of the results table (markdown, so it can be pasted into docs/benchmarks.md).
pub fn print_header(unit: &str) {
    println!("| benchmark | raw client ceiling ({unit}/s) | connector ({unit}/s) | ratio |");
    println!("|---|---:|---:|---:|");
}

/// Prints one row: the raw ceiling, the connector's rate and the ratio.
pub fn print_row(name: &str, raw: Measured, connector: Measured) {
    println!(
        "| {name} | {:.0} | {:.0} | {:.0}% |",
        raw.rate(),
        connector.rate(),
        100.0 * connector.rate() / raw.rate()
    );
}

/// Reads a count from the environment (`FLUXO_BENCH_<NAME>`), or the default.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(format!("FLUXO_BENCH_{name}"))
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}
