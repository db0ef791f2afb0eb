//! Peak memory of the engine benchmark pipeline for growing element counts: each count runs in a fresh
//! child process, which reports its peak resident set size (VmHWM) and throughput.
//!
//! Run: `cargo bench --bench engine_memory` (optionally `-- 1000000 10000000` for the counts).

use std::process::Command;
use std::time::Instant;

#[path = "common/engine_pipeline.rs"]
mod engine_pipeline;

const CHILD: &str = "FLUXO_BENCH_CHILD_ELEMENTS";

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn child(n: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let start = Instant::now();
    let report = rt.block_on(engine_pipeline::run(n));
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n},{secs:.3},{:.0},{},{}",
        n as f64 / secs,
        peak_rss_kib(),
        report.peak_buffered_elements()
    );
}

fn main() {
    if let Ok(n) = std::env::var(CHILD) {
        child(n.parse().expect("element count"));
        return;
    }
    let counts: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        counts
    };
    let exe = std::env::current_exe().expect("current exe");
    println!("| elements | seconds | elements/s | peak RSS (MiB) | peak buffered elements |");
    println!("|---:|---:|---:|---:|---:|");
    for n in counts {
        let out = Command::new(&exe)
            .env(CHILD, n.to_string())
            .output()
            .expect("run child");
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = line.trim().split(',').collect();
        let rss_mib = f[3].parse::<f64>().unwrap_or(0.0) / 1024.0;
        println!(
            "| {} | {} | {} | {:.1} | {} |",
            f[0], f[1], f[2], rss_mib, f[4]
        );
    }
}
