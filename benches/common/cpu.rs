//! CPU time of processes, read from `/proc/<pid>/stat` (Linux): user plus system time of every thread,
//! finished ones included, in clock ticks of 1/100 s (`USER_HZ`, 100 on every Linux architecture the
//! project runs on). A process's children are not counted in its own times.

use std::time::Duration;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`.
const TICKS_PER_SECOND: u64 = 100;

/// Process group (field 5) and user + system ticks (fields 14 and 15) of one `stat` line.
fn parse_stat(s: &str) -> Option<(i32, u64)> {
    // `pid (comm) state ppid pgrp ...`: the name may hold spaces and parentheses, so the fields are
    // counted from the last ')': pgrp is the 3rd after it, utime and stime the 12th and 13th.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().take(13).collect();
    let group = fields.get(2)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((group, user + system))
}

fn ticks(t: u64) -> Duration {
    Duration::from_millis(t * 1000 / TICKS_PER_SECOND)
}

/// User and system CPU time used so far by this process (zero where `/proc` is not available).
pub fn process_cpu() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(Duration::ZERO, |(_, t)| ticks(t))
}

/// User and system CPU time used so far by the live processes of process group `group` (an emulator
/// and the processes it started).
pub fn group_cpu(group: i32) -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let total = dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .filter(|(g, _)| *g == group)
        .map(|(_, t)| t)
        .sum();
    ticks(total)
}
