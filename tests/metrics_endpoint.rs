//! A running pipeline serves its metrics and health over HTTP; readiness follows the run's life.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use fluxo::testing::{CollectingSink, TestStream};
use fluxo::{Pipeline, RunOptions, Shutdown, SinkConfig, Timestamp};

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let status = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body))
}

async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(addr, path))
        .await
        .expect("join")
        .expect("http request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_while_running() {
    let addr = free_port();
    let p = Pipeline::new("served");
    let (sink, out) = CollectingSink::new();
    p.read(
        "Read",
        TestStream::new()
            .add_values((0..100u64).map(|i| (i, Timestamp::from_secs(i as i64))))
            .advance_watermark(Timestamp::from_secs(100))
            .until_shutdown(),
    )
    .map("Double", |x| x * 2)
    .write("Collect", sink, SinkConfig::default());
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        metrics_addr: Some(addr),
        ..RunOptions::default()
    }));

    // Wait until the elements went through, then scrape.
    for _ in 0..100 {
        if out.len() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(out.len(), 100);
    let (status, _) = get_async(addr, "/readyz").await;
    assert_eq!(status, 200, "ready while running");
    let (status, _) = get_async(addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = get_async(addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("fluxo_step_received_elements_total") && l.contains("step=\"Double\"")
        })
        .unwrap_or_else(|| panic!("no received counter for Double in:\n{body}"));
    assert!(line.ends_with(" 100"), "{line}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("fluxo_step_watermark_lag_seconds")
                && l.contains("step=\"Double\"")),
        "watermark lag exported"
    );

    shutdown.trigger();
    let report = run.await.expect("join").expect("run");
    assert_eq!(report.step("Double").map(|s| s.sent), Some(100));
    assert!(
        get(addr, "/healthz").is_err(),
        "server stopped with the run"
    );
}
