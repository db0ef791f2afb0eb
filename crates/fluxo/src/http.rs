//! The HTTP endpoint of a worker: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/metrics` negotiates the exposition format from the `Accept` header, like the official
//! Prometheus clients: a scraper that asks for `application/openmetrics-text` (Prometheus does by
//! default) gets OpenMetrics 1.0.0 text ending with `# EOF`; any other client (`curl`, a browser,
//! `promtool check metrics` fed by `curl`) gets the Prometheus text format 0.0.4.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{
    Metrics, SourceMetrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE,
};

/// Readiness and liveness shared by the engine and the HTTP server.
///
/// Readiness starts false; the engine sets it once the pipeline runs and clears it when it starts
/// draining on shutdown. Liveness fails when [`Health::watch_progress`] was given a timeout and the
/// sources' messages in flight have seen no acknowledgement (ack or nack) for that long.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    stalled: Arc<Mutex<Option<String>>>,
    /// The sources whose connection readiness follows (label, handles).
    sources: Arc<Mutex<Vec<(String, SourceMetrics)>>>,
}

impl Health {
    /// Sets whether `/readyz` answers 200 (ready) or 503 (not ready).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the worker is ready: set ready, and every watched source connected.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Readiness also requires these sources to report themselves connected
    /// ([`SourceMetrics::set_connected`]).
    pub fn watch_sources(&self, sources: Vec<(String, SourceMetrics)>) {
        *self.sources.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// Why the worker is not ready (`/readyz` answers 503 with this text), or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Acquire) {
            return Some("not ready (starting or draining)".into());
        }
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let down: Vec<&str> = sources
            .iter()
            .filter(|(_, m)| !m.is_connected())
            .map(|(label, _)| label.as_str())
            .collect();
        (!down.is_empty()).then(|| {
            format!(
                "not ready: source {} cannot reach what it reads (its last request failed)",
                down.join(", ")
            )
        })
    }

    /// Why the worker is not live (`/healthz` answers 503 with this text), or `None` when it is.
    pub fn stalled(&self) -> Option<String> {
        self.stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A watch of the sources' progress: call [`ProgressWatch::check`] periodically (the engine does,
    /// every second); it updates this health's liveness.
    pub fn watch_progress(
        &self,
        sources: Vec<SourceMetrics>,
        stall_after: Duration,
    ) -> ProgressWatch {
        ProgressWatch {
            health: self.clone(),
            sources,
            stall_after,
            done: 0,
            since: Instant::now(),
        }
    }
}

/// Detects a pipeline that makes no progress while work waits: messages were received (emitted
/// into the pipeline) and are neither acknowledged nor nacked, and the count of acknowledged plus
/// nacked messages has not moved for `stall_after`. A worker with nothing in flight is live however
/// long it waits for messages.
#[derive(Debug)]
pub struct ProgressWatch {
    health: Health,
    sources: Vec<SourceMetrics>,
    stall_after: Duration,
    done: u64,
    since: Instant,
}

impl ProgressWatch {
    /// Samples the sources' counters and updates the liveness; logs when the worker stalls and
    /// when it recovers. Returns the reason when stalled.
    pub fn check(&mut self) -> Option<String> {
        let emitted: u64 = self.sources.iter().map(|s| s.emitted.get()).sum();
        let done: u64 = self
            .sources
            .iter()
            .map(|s| s.acked.get() + s.nacked.get())
            .sum();
        let in_flight = emitted.saturating_sub(done);
        let now = Instant::now();
        if done != self.done || in_flight == 0 {
            self.done = done;
            self.since = now;
        }
        let idle = now.duration_since(self.since);
        let reason = (in_flight > 0 && idle >= self.stall_after).then(|| {
            format!(
                "no progress for {} s: {in_flight} messages in flight and none acknowledged or \
                 nacked since (a sink or a step is stuck)",
                idle.as_secs()
            )
        });
        let mut stalled = self
            .health
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (&*stalled, &reason) {
            (None, Some(r)) => tracing::error!(reason = %r, "pipeline stalled: /healthz fails"),
            (Some(_), None) => tracing::warn!("pipeline progresses again: /healthz passes"),
            _ => {}
        }
        stalled.clone_from(&reason);
        reason
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// Serves GET /metrics (text exposition, format negotiated from `Accept`: OpenMetrics 1.0.0 when
/// asked for, Prometheus text 0.0.4 otherwise), GET /healthz (200 "ok", or 503 with the reason when
/// the pipeline stalled: see [`ProgressWatch`]),
/// GET /readyz (200 when ready, 503 otherwise), 404 otherwise, until `shutdown` resolves; then
/// stops accepting connections and returns once open requests are answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(AppState { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// [`serve`] on a thread of its own with a single-threaded runtime, so that the endpoints answer
/// promptly however busy the pipeline's runtime is (a liveness probe must not time out because every
/// worker thread is validating large records). Returns when the server is listening; the thread
/// ends once `shutdown` resolves and open requests are answered.
pub(crate) fn serve_on_own_thread(
    listener: std::net::TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("fluxo-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, metrics, health, shutdown).await
            })
        })
}

/// Whether the client accepts OpenMetrics text.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"))
}

/// The answer to `GET /metrics` for a request with `headers` (format negotiated from `Accept`), for
/// a server that mounts the route itself.
pub fn metrics_response(metrics: &Metrics, headers: &HeaderMap) -> Response {
    let (content_type, body) = if wants_openmetrics(headers) {
        (OPENMETRICS_CONTENT_TYPE, metrics.encode())
    } else {
        (
            PROMETHEUS_TEXT_CONTENT_TYPE,
            metrics.encode_prometheus_text(),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    metrics_response(&state.metrics, &headers)
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.stalled() {
        None => (StatusCode::OK, "ok".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.not_ready() {
        None => (StatusCode::OK, "ready".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// A parsed HTTP/1.1 response.
    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    /// Sends one raw HTTP/1.1 request with `Connection: close` and reads the reply to EOF.
    async fn request(addr: SocketAddr, path: &str, extra: &str) -> anyhow::Result<Reply> {
        let stream = TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
        let mut sent = 0;
        let bytes = request.as_bytes();
        while sent < bytes.len() {
            stream.writable().await?;
            match stream.try_write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let raw = String::from_utf8(raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no header end in {raw:?}"))?;
        let status = head
            .split(' ')
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?
            .parse()?;
        Ok(Reply {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        })
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_until_shutdown() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let metrics = Metrics::new("test");
        metrics.step("parse").received.inc_by(42);
        let health = Health::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), async {
            let _ = stopped.await;
        }));

        let reply = request(addr, "/metrics", "").await?;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .head
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            reply.head
        );
        assert!(reply
            .body
            .contains("fluxo_step_received_elements_total{pipeline=\"test\",step=\"parse\"} 42\n"));
        assert!(!reply.body.contains("# EOF"));

        let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
        let reply = request(addr, "/metrics", accept).await?;
        assert_eq!(reply.status, 200);
        assert!(
            reply.head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{}",
            reply.head
        );
        // The same exposition, but for the process series, which change between two scrapes.
        let stable = |text: &str| {
            text.lines()
                .filter(|l| !l.contains("process_") && !l.contains("fluxo_memory_limit"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(stable(&reply.body), stable(&metrics.encode()));
        assert!(reply.body.ends_with("# EOF\n"));

        let reply = request(addr, "/healthz", "").await?;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

        let reply = request(addr, "/readyz", "").await?;
        assert_eq!(reply.status, 503);
        health.set_ready(true);
        let reply = request(addr, "/readyz", "").await?;
        assert_eq!(reply.status, 200);
        health.set_ready(false);
        assert_eq!(request(addr, "/readyz", "").await?.status, 503);

        assert_eq!(request(addr, "/nope", "").await?.status, 404);
        assert_eq!(request(addr, "/metrics/x", "").await?.status, 404);

        let _ = stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(5), server).await??;
        result?;
        assert!(TcpStream::connect(addr).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn shutdown_waits_for_nothing_when_idle() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = tokio::spawn(serve(
            listener,
            Metrics::new("p"),
            Health::default(),
            std::future::ready(()),
        ));
        tokio::time::timeout(Duration::from_secs(5), server).await???;
        Ok(())
    }

    #[test]
    fn health_defaults_to_not_ready_and_is_shared() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.clone().set_ready(true);
        assert!(health.is_ready());
    }
}
