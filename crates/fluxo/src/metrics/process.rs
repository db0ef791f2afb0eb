//! Process metrics with the conventional names of the official Prometheus clients
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), plus the memory the process
//! may use, so a dashboard and an alert can show memory against its limit without Kubernetes'
//! own metrics.
//!
//! Read from `/proc` (Linux) when `/metrics` is scraped; on other systems the series are absent.
//! Hand-written: the Rust prometheus-client has no process collector, and the crates that add one
//! bring a second metrics stack; these are a few reads of text files.

use std::path::Path;
use std::sync::OnceLock;

use super::{Def, Metrics};

/// CPU time (user + system) of the process.
pub const CPU_SECONDS: Def = Def::counter(
    "process_cpu_seconds",
    "Total user and system CPU time spent by the process, in seconds",
    &[],
);
/// Resident memory.
pub const RESIDENT_MEMORY: Def = Def::gauge(
    "process_resident_memory_bytes",
    "Resident memory size of the process, in bytes",
    &[],
);
/// Virtual memory.
pub const VIRTUAL_MEMORY: Def = Def::gauge(
    "process_virtual_memory_bytes",
    "Virtual memory size of the process, in bytes",
    &[],
);
/// Start time.
pub const START_TIME: Def = Def::gauge(
    "process_start_time_seconds",
    "Start time of the process, in seconds since the Unix epoch",
    &[],
);
/// Open file descriptors.
pub const OPEN_FDS: Def = Def::gauge(
    "process_open_fds",
    "Number of open file descriptors of the process",
    &[],
);
/// File descriptor limit.
pub const MAX_FDS: Def = Def::gauge(
    "process_max_fds",
    "Soft limit of open file descriptors of the process",
    &[],
);
/// Threads.
pub const THREADS: Def = Def::gauge("process_threads", "Number of threads of the process", &[]);
/// The memory the process may use.
pub const MEMORY_LIMIT: Def = Def::gauge(
    "fluxo_memory_limit_bytes",
    "Memory the process may use: its cgroup's limit (the container's memory limit on Kubernetes), else the machine's total memory, in bytes",
    &[],
);

/// Every process family.
pub const ALL: &[Def] = &[
    CPU_SECONDS,
    RESIDENT_MEMORY,
    VIRTUAL_MEMORY,
    START_TIME,
    OPEN_FDS,
    MAX_FDS,
    THREADS,
    MEMORY_LIMIT,
];

/// `/proc` reports CPU times in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space on
/// every architecture.
const USER_HZ: f64 = 100.0;

/// Registers the process families in `metrics`.
pub(super) fn register(metrics: &Metrics) {
    metrics.seconds_fn(&CPU_SECONDS, || {
        stat_fields().map_or(0.0, |f| (f.utime + f.stime) as f64 / USER_HZ)
    });
    metrics.gauge_fn(&RESIDENT_MEMORY, &[], || {
        status_kib("VmRSS:").map(|k| k * 1024.0)
    });
    metrics.gauge_fn(&VIRTUAL_MEMORY, &[], || {
        status_kib("VmSize:").map(|k| k * 1024.0)
    });
    metrics.gauge_fn(&START_TIME, &[], start_time);
    metrics.gauge_fn(&OPEN_FDS, &[], || {
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64)
    });
    metrics.gauge_fn(&MAX_FDS, &[], max_fds);
    metrics.gauge_fn(&THREADS, &[], || status_kib("Threads:"));
    metrics.gauge_fn(&MEMORY_LIMIT, &[], memory_limit);
}

struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
}

fn stat_fields() -> Option<StatFields> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The number on the `/proc/self/status` line starting with `key` (kB for memory lines).
fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn start_time() -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(boot + stat_fields()?.starttime as f64 / USER_HZ)
    })
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The cgroup v2 (`memory.max`) or v1 (`memory.limit_in_bytes`) limit, else `MemTotal`.
fn memory_limit() -> Option<f64> {
    let machine = || -> Option<f64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024.0)
    };
    let machine = machine();
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| read_limit(Path::new(p)));
    match (cgroup, machine) {
        // cgroup v1 reports "no limit" as a huge number.
        (Some(c), Some(m)) => Some(c.min(m)),
        (Some(c), None) => Some(c),
        (None, m) => m,
    }
}

fn read_limit(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok()
}
