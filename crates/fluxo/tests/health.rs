//! Liveness that means something: `/healthz` fails, with the reason, when messages are in flight and
//! none is acknowledged for `RunOptions::stall_timeout`, and passes again once they are; an idle
//! worker (nothing in flight) stays live however long it waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use fluxo::testing::{CollectingSink, GeneratorSource, TestStream};
use fluxo::{Pipeline, RunOptions, Shutdown, SinkConfig};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// (status, body) of GET `path`, or None while the server is not up.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

/// Polls `/healthz` until `want(status, body)` or the deadline; returns the last answer.
async fn wait_for(
    addr: SocketAddr,
    within: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    wait_for_path(addr, "/healthz", within, want).await
}

/// Polls `path` until `want(status, body)` or the deadline; returns the last answer.
async fn wait_for_path(
    addr: SocketAddr,
    path: &'static str,
    within: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let answer = tokio::task::spawn_blocking(move || get(addr, path))
            .await
            .unwrap();
        if let Some((status, body)) = &answer {
            if want(*status, body) || Instant::now() > deadline {
                return (*status, body.clone());
            }
        }
        assert!(Instant::now() < deadline, "no answer from {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sink_fails_liveness_with_the_reason_and_recovery_passes_it() {
    let p = Pipeline::new("stall");
    // Acknowledgements counted in the source metrics, as a production source does.
    let source = GeneratorSource::new(u64::MAX, |i| i).counting_acks();
    // Every write takes 3 s: its messages stay in flight, unacknowledged, for 3 s at a time.
    let (sink, out) = CollectingSink::new();
    p.read("Read", source).write(
        "Slow",
        sink.with_delay(Duration::from_secs(3)),
        SinkConfig::default(),
    );
    let addr = free_addr();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        drain_timeout: Duration::from_secs(1),
        metrics_addr: Some(addr),
        stall_timeout: Some(Duration::from_secs(1)),
    }));

    let (status, body) = wait_for(addr, Duration::from_secs(6), |s, _| s == 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("no progress for "), "{body}");
    assert!(body.contains("messages in flight"), "{body}");

    // Once a write returns, its messages are acknowledged and liveness passes again (until the
    // next 3 s write has been in flight for a second).
    let (status, body) = wait_for(addr, Duration::from_secs(10), |s, _| s == 200).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    // The slow sink cannot drain 1 s: the rest is nacked (redelivered), as the run reports.
    shutdown.trigger();
    let result = run.await.unwrap();
    assert!(
        matches!(&result, Err(e) if e.to_string().starts_with("drain did not finish")),
        "{result:?}"
    );
    assert!(!out.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_stays_live() {
    let p = Pipeline::new("idle");
    let source = TestStream::<u64>::new().until_shutdown();
    let (sink, _out) = CollectingSink::new();
    p.read("Read", source)
        .write("Sink", sink, SinkConfig::default());
    let addr = free_addr();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        metrics_addr: Some(addr),
        stall_timeout: Some(Duration::from_millis(500)),
        ..RunOptions::default()
    }));
    wait_for(addr, Duration::from_secs(5), |s, _| s == 200).await;
    // Well past the stall timeout with nothing in flight: still live.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, body) = wait_for(addr, Duration::from_secs(1), |_, _| true).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    shutdown.trigger();
    run.await.unwrap().unwrap();
}

/// A source that reports its connection as told by `connected`, and emits nothing until shutdown.
struct Flaky {
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl fluxo::Source for Flaky {
    type Output = u64;

    async fn run(self, ctx: fluxo::SourceContext<u64>) -> Result<(), fluxo::BoxError> {
        loop {
            ctx.metrics()
                .set_connected(self.connected.load(std::sync::atomic::Ordering::Relaxed));
            tokio::select! {
                _ = ctx.shutdown().wait() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_sources_connection() {
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let p = Pipeline::new("ready");
    let (sink, _out) = CollectingSink::new();
    p.read(
        "Subscription",
        Flaky {
            connected: connected.clone(),
        },
    )
    .write("Collect", sink, SinkConfig::default());
    let addr = free_addr();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(p.run(RunOptions {
        shutdown: shutdown.signal(),
        metrics_addr: Some(addr),
        ..RunOptions::default()
    }));
    let within = Duration::from_secs(10);
    let ready = wait_for_path(addr, "/readyz", within, |s, _| s == 200).await;
    assert_eq!(ready, (200, "ready".into()));

    connected.store(false, std::sync::atomic::Ordering::Relaxed);
    let down = wait_for_path(addr, "/readyz", within, |s, _| s == 503).await;
    assert_eq!(down.0, 503);
    assert!(
        down.1.contains("source Subscription cannot reach"),
        "{}",
        down.1
    );
    // Liveness is a different question: the worker is not stuck.
    assert_eq!(get(addr, "/healthz").map(|a| a.0), Some(200));
    let metrics = get(addr, "/metrics").unwrap().1;
    assert!(
        metrics.contains("fluxo_source_connected{pipeline=\"ready\",step=\"Subscription\"} 0"),
        "{metrics}"
    );

    connected.store(true, std::sync::atomic::Ordering::Relaxed);
    let back = wait_for_path(addr, "/readyz", within, |s, _| s == 200).await;
    assert_eq!(back, (200, "ready".into()));

    shutdown.trigger();
    run.await.unwrap().unwrap();
}
