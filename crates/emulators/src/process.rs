//! Process groups, free ports, log tails and readiness probes.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Whether any live (non-zombie) process is in process group `pgid`.
///
/// Reads `/proc`, so it also sees grandchildren (the Pub/Sub emulator's launcher script
/// `exec`s Java; bqemulator's Python may fork workers) and ignores zombies that nobody reaped.
pub fn process_group_alive(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        // No procfs: fall back to signal 0, which also counts zombies.
        // SAFETY: kill(2) with signal 0 sends nothing; it only checks the group exists.
        return unsafe { libc::kill(-pgid, 0) } == 0;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let _ppid = fields.next();
        let pgrp = fields.next().and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

/// Sends `signal` to every process of group `pgid`.
pub(crate) fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: plain kill(2) on a process group we created; errors (ESRCH) are ignored.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Stops the process group led by `child`: SIGTERM, then SIGKILL after `grace`; reaps the leader
/// and waits (bounded) until no process of the group is left.
pub(crate) fn terminate_group(child: &mut Child, grace: Duration) {
    let pgid = child.id() as i32;
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut leader_done = false;
    while Instant::now() < deadline {
        if !leader_done {
            leader_done = matches!(child.try_wait(), Ok(Some(_)));
        }
        if leader_done && !process_group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reserves `n` distinct free loopback ports. The listeners are held until all ports are picked
/// so that the kernel does not hand out the same port twice.
pub(crate) fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The loopback socket address of `port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Whether something accepts TCP connections on `addr`.
pub(crate) fn tcp_open(addr: SocketAddr) -> Result<(), String> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map(drop)
        .map_err(|e| format!("TCP connect to {addr}: {e}"))
}

/// Sends `GET path` over HTTP/1.1 and returns the status code.
pub(crate) fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let fail = |e: io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: no HTTP status line (got {line:?})"))
}

/// The last `lines` lines of the log file from byte `from` on, each prefixed for display;
/// empty when there is nothing.
pub(crate) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Read at most the last 64 KiB.
    let start = from.max(len.saturating_sub(64 * 1024));
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if all.is_empty() {
        return String::new();
    }
    let shown = &all[all.len().saturating_sub(lines)..];
    let mut out = String::from(", last lines:");
    for line in shown {
        let line: String = line.chars().take(400).collect();
        out.push_str("\n    | ");
        out.push_str(&line);
    }
    out
}

/// Whether the log (from byte `from` on) says a port was already taken.
pub(crate) fn log_says_port_in_use(path: &Path, from: u64) -> bool {
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    text.contains("address already in use") || text.contains("bindexception")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
    }

    #[test]
    fn http_probe_reads_the_status_line() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // Read the whole request first: closing a socket with unread bytes resets the
            // connection, and the client could then see a reset instead of the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(http_get_status(addr, "/x"), Ok(204));
        server.join().unwrap();
    }

    #[test]
    fn probes_of_a_closed_port_fail_with_the_address() {
        let port = free_ports(1).unwrap()[0];
        let err = tcp_open(loopback(port)).unwrap_err();
        assert!(err.contains(&port.to_string()), "{err}");
    }

    #[test]
    fn log_tail_shows_the_last_lines_only() {
        let dir = std::env::temp_dir().join(format!("emulators-tail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        fs::write(&path, "one\ntwo\n\nthree\nAddress already in use\n").unwrap();
        let tail = log_tail(&path, 0, 2);
        assert_eq!(
            tail,
            ", last lines:\n    | three\n    | Address already in use"
        );
        assert!(log_says_port_in_use(&path, 0));
        assert!(!log_says_port_in_use(&path, 18));
        assert_eq!(log_tail(&dir.join("missing.log"), 0, 2), "");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_group_is_gone_after_terminate() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_group_alive(pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(process_group_alive(pgid));
        terminate_group(&mut child, Duration::from_secs(2));
        assert!(!process_group_alive(pgid));
    }
}
