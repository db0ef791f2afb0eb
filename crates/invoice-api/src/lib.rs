//! A reference invoice (NF-e) API for the demo, tests and benchmarks.
//!
//! It serves deterministic pages of invoices in the source JSON shape (see
//! `shared/data/challenge-invoices.json`), generated from a seed, with a configurable share of malformed
//! records, in page-number and cursor styles, incrementally (records changed since a watermark), behind a
//! bearer token, with fault switches (latency, 429 with `Retry-After`, 5xx, hangs, truncated bodies,
//! records duplicated across pages, pages that cannot be delimited, oversize records, long cursors and
//! next links). See [`server`] for the routes.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use invoice_api::{Faults, Generator, GeneratorConfig, RunningApi};
//! let generator = Generator::new(GeneratorConfig { count: 1_000, ..Default::default() }).unwrap();
//! let api = RunningApi::start("127.0.0.1:0", generator, Some("secret".into()), Faults::default()).await?;
//! println!("serving on http://{}", api.addr());
//! # Ok(()) }
//! ```

pub mod generate;
pub mod server;

use std::net::SocketAddr;

pub use generate::{Defect, Generator, GeneratorConfig};
pub use server::{Api, Faults, Stats};

/// A server running in the background of the current tokio runtime; stops when dropped.
pub struct RunningApi {
    addr: SocketAddr,
    api: Api,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningApi {
    /// Binds `listen` (use port 0 for a free port) and serves in a background task.
    pub async fn start(
        listen: &str,
        generator: Generator,
        token: Option<String>,
        faults: Faults,
    ) -> std::io::Result<RunningApi> {
        let api = Api::new(generator, token, faults).map_err(std::io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = api.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(RunningApi {
            addr,
            api,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's state: switch faults, read counters.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Stops accepting connections and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            // Hanging requests (fault injection) would hold a graceful stop; do not wait for them long.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
    }
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
