//! The polling source: reads pages until caught up (or the page cap, the deadline, a shutdown), emits
//! one element per page, and commits the checkpoint of a page only once that page and every page before
//! it were acknowledged downstream.

use crate::metrics::SourceMetrics;
use fluxo::MetricScope;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo::{ack_batch, BoxError, Data, Element, Source, SourceContext, Status, Timestamp};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::CheckpointStore;
use crate::config::{Credential, ValidConfig};
use crate::paginate::{PageError, PageOutcome};
use crate::scan::ScanError;

/// Longest request URL an HTTP client can send: the `http` crate's limit (`u16::MAX - 1`), which
/// reqwest enforces with the bare message "Parsed Url is not a valid Uri"; checked here first to say
/// why.
const MAX_URL_BYTES: usize = u16::MAX as usize - 1;

/// Longest URL or position quoted in an error message or a log line; longer ones are clipped with a
/// `...[+N bytes]` marker (they stay whole in pages, checkpoints and requests).
const QUOTE_BYTES: usize = 256;

/// Displays a string clipped to [`QUOTE_BYTES`] (at a character boundary) with a `...[+N bytes]`
/// marker, so that a long URL or cursor keeps an error on one readable line.
pub(crate) struct Short<'a>(pub(crate) &'a str);

impl std::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&fluxo::text::clip(self.0, QUOTE_BYTES))
    }
}

/// Why a page was emitted without records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokenKind {
    /// The body could not be delimited after every attempt (truncated, unbalanced, not the expected
    /// shape); [`HttpPage::records`] holds the whole body.
    Unreadable,
    /// The body is larger than `max_page_bytes`; [`HttpPage::records`] holds only what was read
    /// before the cap (nothing when the server announced the size).
    TooLarge,
}

/// A page emitted without records, for a dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// What is wrong with it.
    pub kind: BrokenKind,
    /// Why, in one line.
    pub reason: Arc<str>,
    /// The size of the whole body in bytes when known: always for an unreadable page; for a page
    /// over the cap, the `Content-Length` the server announced (`None` when it announced none).
    pub body_bytes: Option<u64>,
}

/// One page of records as the API sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPage {
    /// The records array's exact bytes. For a broken page, the body as read (see [`BrokenKind`]):
    /// whole when it could not be delimited, at most `max_page_bytes` of it when it is too large.
    pub records: Bytes,
    /// Number of records (0 when broken).
    pub count: u32,
    /// Page number within this run, from 0.
    pub page: u64,
    /// Checkpoint token that resumes after this page.
    pub position: Arc<str>,
    /// The URL the page came from.
    pub url: Arc<str>,
    /// Set when the page's records could not be taken from it (a body that cannot be delimited after
    /// every retry, or one above `max_page_bytes`) but the next page could be found without it: the
    /// element then carries the body as read, for a dead letter, and the checkpoint moves past it.
    pub broken: Option<Broken>,
}

impl Data for HttpPage {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.records.len() + self.position.len() + self.url.len()
    }
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running.
    #[default]
    Running,
    /// Every page available was read and acknowledged.
    CaughtUp,
    /// The page cap was reached.
    MaxPages,
    /// The deadline was reached.
    Deadline,
    /// The pipeline was asked to stop.
    Shutdown,
    /// Another run holds the lease: nothing was polled.
    LeaseHeld,
    /// The run failed (the message says why); pages acknowledged before the failure are committed.
    Failed(String),
}

/// What a run did; read it through [`HttpSource::summary`] after the pipeline finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// The checkpoint the run started from.
    pub started_from: Option<String>,
    /// The last checkpoint committed.
    pub committed: Option<String>,
    /// Pages fetched (broken ones included).
    pub pages: u64,
    /// Records in those pages.
    pub records: u64,
    /// Retried requests.
    pub retries: u64,
    /// Pages emitted as broken (see [`HttpPage::broken`]), oversize ones included.
    pub broken_pages: u64,
    /// Of the broken pages, those above `max_page_bytes`.
    pub oversize_pages: u64,
    /// Pages whose records were not all acknowledged as delivered.
    pub failed_pages: u64,
    /// How the run ended.
    pub outcome: Outcome,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    /// A response that retrying cannot fix (4xx other than 408/429).
    #[error("{} answered {status}: {body}", Short(.url))]
    Fatal {
        /// The request URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// Every attempt failed.
    #[error("{}: gave up after {attempts} attempts, last error: {last}", Short(.url))]
    GaveUp {
        /// The request URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The server asked to wait longer than allowed.
    #[error("{}: Retry-After of {secs} s is above the configured maximum", Short(.url))]
    RetryAfterTooLong {
        /// The request URL.
        url: String,
        /// Seconds asked.
        secs: u64,
    },
    /// The API returned a cursor already seen in this run: following it would loop forever.
    #[error("the API returned the position '{}' twice in one run; stopping to avoid a loop", Short(.0))]
    RepeatedPosition(String),
    /// A broken page whose successor cannot be found.
    #[error("{}: the page could not be read ({reason}) and the next position is in its body", Short(.url))]
    Unrecoverable {
        /// The request URL.
        url: String,
        /// The scan error.
        reason: String,
    },
    /// Another run advanced the checkpoint.
    #[error("the checkpoint moved under this run (another run advanced it); stopping")]
    Conflict,
    /// The request cannot be sent at all (for example a URL longer than an HTTP client takes, built
    /// from a position the API handed out): not retried.
    #[error("{} ({} bytes): the request cannot be sent: {reason}", Short(.url), .url.len())]
    Unsendable {
        /// The request URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A page above `max_page_bytes` whose successor cannot be found without its body.
    #[error("{}: the page body is larger than max_page_bytes ({limit} bytes{}) and the next position is inside it, so the page cannot be skipped; raise max_page_bytes or lower page_size", Short(.url), .announced.map(|n| format!("; Content-Length: {n}")).unwrap_or_default())]
    PageTooLarge {
        /// The request URL.
        url: String,
        /// The cap.
        limit: u64,
        /// The size the server announced, if it did.
        announced: Option<u64>,
    },
    /// Another run took the lease after this run's lease expired.
    #[error("this run lost its lease to another run; stopping")]
    LeaseLost,
    /// The lease could not be renewed for most of its duration.
    #[error("the lease could not be renewed for {secs} s (last error: {error}); stopping before another run may take it")]
    LeaseNotRenewed {
        /// Seconds since the last renewal.
        secs: u64,
        /// The store's last error.
        error: crate::checkpoint::StoreError,
    },
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] crate::checkpoint::StoreError),
    /// A downstream failure: pages were not delivered.
    #[error("{0} page(s) were not delivered downstream; the checkpoint stays before them")]
    NotDelivered(u64),
}

/// Polls an HTTP API. See the crate documentation.
pub struct HttpSource<S> {
    cfg: ValidConfig,
    store: Arc<S>,
    summary: Arc<Mutex<RunSummary>>,
    lease_ttl: Duration,
    /// Set when the source is added to a pipeline ([`Source::register_metrics`]).
    metrics: Option<SourceMetrics>,
}

impl<S: CheckpointStore> HttpSource<S> {
    /// A source over a checked configuration and a checkpoint store.
    pub fn new(cfg: ValidConfig, store: S) -> Self {
        HttpSource {
            cfg,
            store: Arc::new(store),
            summary: Arc::new(Mutex::new(RunSummary::default())),
            lease_ttl: Duration::from_secs(120),
            metrics: None,
        }
    }

    /// Lease duration; the run renews it in the background every third of it (at least every 10 ms),
    /// whatever it is doing or waiting for. Default: 120 s.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// A handle to the run's summary (complete once the pipeline returned).
    pub fn summary(&self) -> Arc<Mutex<RunSummary>> {
        self.summary.clone()
    }
}

struct Pending {
    position: String,
    acks: Option<JoinHandle<Vec<Status>>>,
}

struct Poller<S> {
    cfg: ValidConfig,
    client: reqwest::Client,
    store: Arc<S>,
    summary: Arc<Mutex<RunSummary>>,
    metrics: Option<SourceMetrics>,
    committed: Option<String>,
    pending: VecDeque<Pending>,
    failed: u64,
    lease: watch::Receiver<Option<LeaseProblem>>,
}

impl<S: CheckpointStore> Poller<S> {
    fn note(&self, f: impl FnOnce(&mut RunSummary)) {
        f(&mut self.summary.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Commits the positions of acknowledged pages at the front of the queue; with `wait`, waits for
    /// the front page first.
    async fn settle(
        &mut self,
        ctx: &SourceContext<HttpPage>,
        wait: bool,
    ) -> Result<(), HttpSourceError> {
        while let Some(front) = self.pending.front_mut() {
            if let Some(h) = front.acks.take() {
                if !wait && !h.is_finished() {
                    front.acks = Some(h);
                    return Ok(());
                }
                let statuses = h.await.unwrap_or_default();
                ctx.record_statuses(&statuses);
                if statuses.iter().any(|s| !s.is_delivered()) || statuses.is_empty() {
                    // Stop committing: everything from this page on will be read again next run.
                    self.failed += 1;
                    self.note(|s| s.failed_pages += 1);
                    self.pending.clear();
                    return Err(HttpSourceError::NotDelivered(self.failed));
                }
            }
            let p = self.pending.pop_front().map(|p| p.position);
            if let Some(pos) = p {
                if self.committed.as_deref() != Some(pos.as_str()) {
                    if !self
                        .store
                        .commit(self.committed.clone(), pos.clone())
                        .await?
                    {
                        return Err(HttpSourceError::Conflict);
                    }
                    tracing::debug!(position = %Short(&pos), "checkpoint committed");
                    self.committed = Some(pos.clone());
                    self.note(|s| s.committed = Some(pos));
                    if let Some(metrics) = &self.metrics {
                        metrics.committed();
                    }
                }
            }
        }
        Ok(())
    }

    /// Fails when the lease keeper could not keep the lease.
    fn check_lease(&self) -> Result<(), HttpSourceError> {
        match &*self.lease.borrow() {
            None => Ok(()),
            Some(p) => Err(p.to_error()),
        }
    }

    /// One page with retries. Returns the headers, body and its interpretation, or the body and the
    /// reason when it could not be delimited after every attempt.
    async fn fetch(
        &self,
        ctx: &SourceContext<HttpPage>,
        url: &Url,
        token: Option<&str>,
    ) -> Result<Option<(HeaderMap, Bytes, Result<PageOutcome, PageError>)>, HttpSourceError> {
        let c = &self.cfg.config;
        let cap = usize::try_from(c.max_page_bytes).unwrap_or(usize::MAX);
        if url.as_str().len() > MAX_URL_BYTES {
            return Err(HttpSourceError::Unsendable {
                url: url.to_string(),
                reason: format!(
                    "the URL is longer than the {MAX_URL_BYTES} bytes an HTTP request can carry \
                     (the position in it came from the API)"
                ),
            });
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.check_lease()?;
            let mut req = self.client.get(url.clone());
            if let Credential::Header(name, secret) = &self.cfg.credential {
                req = req.header(name, secret.expose());
            }
            let mut retry_after = None;
            let last: String = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if status.is_success() {
                        ctx.metrics().set_connected(true);
                        let announced = resp.content_length();
                        match read_capped(chunks(resp), cap, announced).await {
                            Ok(Body::Whole(body)) => {
                                let outcome =
                                    c.pagination.interpret(token, &headers, &body, c.page_size);
                                match outcome {
                                    Err(PageError::Body(ScanError::Unbalanced(r)))
                                        if attempt < c.retry.max_attempts =>
                                    {
                                        format!("broken body ({r})")
                                    }
                                    other => return Ok(Some((headers, body, other))),
                                }
                            }
                            // Not retried: the same page would be as large again.
                            Ok(Body::TooLarge(prefix)) => {
                                let e = PageError::TooLarge {
                                    limit: c.max_page_bytes,
                                    announced,
                                };
                                return Ok(Some((headers, prefix, Err(e))));
                            }
                            Err(e) => {
                                format!("reading the body: {}", error_chain(&e.without_url()))
                            }
                        }
                    } else if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error()
                    {
                        retry_after = parse_retry_after(&headers);
                        if let Some(ra) = retry_after {
                            if ra > Duration::from_secs(c.retry.max_retry_after_secs) {
                                return Err(HttpSourceError::RetryAfterTooLong {
                                    url: url.to_string(),
                                    secs: ra.as_secs(),
                                });
                            }
                        }
                        format!("status {status}")
                    } else {
                        let body = resp.bytes().await.unwrap_or_default();
                        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                            .replace('\n', " ");
                        return Err(HttpSourceError::Fatal {
                            url: url.to_string(),
                            status,
                            body: text,
                        });
                    }
                }
                // The request cannot be built (a URL above the 65,534 bytes the `http` crate takes):
                // retrying cannot help.
                Err(e) if e.is_builder() => {
                    return Err(HttpSourceError::Unsendable {
                        url: url.to_string(),
                        reason: error_chain(&e.without_url()),
                    })
                }
                Err(e) if e.is_timeout() => "timed out".to_string(),
                // Without the URL: the message already starts with it, and it may be long.
                Err(e) => error_chain(&e.without_url()),
            };
            // Readiness: the API cannot be read right now.
            ctx.metrics().set_connected(false);
            if attempt >= c.retry.max_attempts {
                return Err(HttpSourceError::GaveUp {
                    url: url.to_string(),
                    attempts: attempt,
                    last,
                });
            }
            self.note(|s| s.retries += 1);
            let wait = retry_after
                .unwrap_or_default()
                .max(c.retry.backoff(attempt));
            if let Some(metrics) = &self.metrics {
                metrics.waited(wait);
            }
            tracing::warn!(url = %Short(url.as_str()), attempt, error = %last, wait_ms = wait.as_millis() as u64, "page request failed; retrying");
            // The lease keeper renews the lease meanwhile, however long the wait.
            let mut lease = self.lease.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown().wait() => return Ok(None),
                e = lease_problem(&mut lease) => return Err(e),
            }
        }
    }

    async fn poll(
        &mut self,
        ctx: &mut SourceContext<HttpPage>,
    ) -> Result<Outcome, HttpSourceError> {
        let c = self.cfg.config.clone();
        let start = Instant::now();
        let deadline = Duration::from_secs(c.deadline_secs);
        let mut token = self.committed.clone();
        let mut seen = std::collections::HashSet::new();
        let mut page_no = 0u64;
        loop {
            if ctx.shutdown().is_triggered() {
                return Ok(Outcome::Shutdown);
            }
            if start.elapsed() >= deadline {
                return Ok(Outcome::Deadline);
            }
            if c.max_pages.is_some_and(|m| page_no >= m) {
                return Ok(Outcome::MaxPages);
            }
            self.check_lease()?;
            self.settle(ctx, false).await?;
            while self.pending.len() >= c.max_pages_in_flight {
                self.settle(ctx, true).await?;
            }
            let url = c
                .pagination
                .request_url(
                    &self.cfg.url,
                    token.as_deref(),
                    &c.page_size_param,
                    c.page_size,
                )
                .map_err(|e| HttpSourceError::Unrecoverable {
                    url: self.cfg.url.to_string(),
                    reason: e.to_string(),
                })?;
            let Some((headers, body, outcome)) = self.fetch(ctx, &url, token.as_deref()).await?
            else {
                return Ok(Outcome::Shutdown);
            };
            let url_text: Arc<str> = Arc::from(url.as_str());
            let (element, next, caught_up, count) = match outcome {
                Ok(o) => {
                    let next = o.next.clone().unwrap_or_default();
                    let page = HttpPage {
                        records: body.slice(o.records.clone()),
                        count: o.count as u32,
                        page: page_no,
                        position: Arc::from(next.as_str()),
                        url: url_text,
                        broken: None,
                    };
                    (page, next, o.caught_up, o.count)
                }
                Err(e) => {
                    let Some(next) = c.pagination.skip_broken(token.as_deref(), &headers) else {
                        return Err(match e {
                            PageError::TooLarge { limit, announced } => {
                                HttpSourceError::PageTooLarge {
                                    url: url.to_string(),
                                    limit,
                                    announced,
                                }
                            }
                            e => HttpSourceError::Unrecoverable {
                                url: url.to_string(),
                                reason: e.to_string(),
                            },
                        });
                    };
                    let broken = match &e {
                        PageError::TooLarge { announced, .. } => {
                            tracing::error!(url = %Short(url.as_str()), error = %e, read_bytes = body.len(), "page too large; skipped, emitted as broken for the dead-letter output");
                            self.note(|s| s.oversize_pages += 1);
                            Broken {
                                kind: BrokenKind::TooLarge,
                                reason: Arc::from(e.to_string()),
                                body_bytes: *announced,
                            }
                        }
                        _ => {
                            tracing::error!(url = %Short(url.as_str()), error = %e, "page cannot be delimited; emitted whole for the dead-letter output");
                            Broken {
                                kind: BrokenKind::Unreadable,
                                reason: Arc::from(e.to_string()),
                                body_bytes: Some(body.len() as u64),
                            }
                        }
                    };
                    self.note(|s| s.broken_pages += 1);
                    let page = HttpPage {
                        records: body,
                        count: 0,
                        page: page_no,
                        position: Arc::from(next.as_str()),
                        url: url_text,
                        broken: Some(broken),
                    };
                    (page, next, false, 0)
                }
            };
            page_no += 1;
            self.note(|s| {
                s.pages += 1;
                s.records += count as u64;
            });
            let deliver = count > 0 || element.broken.is_some();
            let acks = if deliver {
                let (mut fins, rx) = ack_batch(1);
                let mut e = Element::new(element, Timestamp::now());
                if let Some(f) = fins.pop() {
                    e.finalizers = f.into();
                }
                ctx.advance_watermark(e.timestamp);
                if ctx.emit(vec![e]).await.is_err() {
                    return Ok(Outcome::Shutdown);
                }
                Some(tokio::spawn(rx.wait()))
            } else {
                None
            };
            self.pending.push_back(Pending {
                position: next.clone(),
                acks,
            });
            if caught_up {
                return Ok(Outcome::CaughtUp);
            }
            if Some(next.as_str()) == token.as_deref() || !seen.insert(next.clone()) {
                return Err(HttpSourceError::RepeatedPosition(next));
            }
            token = Some(next);
        }
    }
}

/// An error and its sources on one line (`a: b: c`), as reqwest's own `Display` shows only the first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace('\n', " ")
}

/// A body read under a cap.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// The whole body.
    Whole(Bytes),
    /// The body is above the cap: what was read before it (at most the cap).
    TooLarge(Bytes),
}

/// A response's body as a stream of chunks (reqwest's own `bytes_stream` needs its `stream` feature and
/// its dependencies; `chunk()` is all it takes).
fn chunks(resp: reqwest::Response) -> impl Stream<Item = reqwest::Result<Bytes>> + Unpin {
    Box::pin(futures::stream::unfold(resp, |mut r| async move {
        match r.chunk().await {
            Ok(Some(c)) => Some((Ok(c), r)),
            Ok(None) => None,
            Err(e) => Some((Err(e), r)),
        }
    }))
}

/// Reads a body chunk by chunk, never keeping more than `cap` bytes: a `Content-Length` above the cap
/// is refused before reading, and reading stops at the chunk that would cross it (that chunk is
/// dropped, and the rest of the body is never requested). Hand-written rather than
/// `reqwest::Response::bytes`, which reads the whole body whatever its size. A body that comes as one
/// chunk is returned as that chunk, without a copy.
async fn read_capped<S, E>(mut chunks: S, cap: usize, announced: Option<u64>) -> Result<Body, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    if announced.is_some_and(|n| n > cap as u64) {
        return Ok(Body::TooLarge(Bytes::new()));
    }
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let held = first.as_ref().map_or(buf.len(), Bytes::len);
        if held + chunk.len() > cap {
            let prefix = first.unwrap_or_else(|| Bytes::from(buf));
            return Ok(Body::TooLarge(prefix));
        }
        if held == 0 && first.is_none() {
            first = Some(chunk);
            continue;
        }
        if let Some(f) = first.take() {
            // Room for the announced body, else doubling, never beyond the cap.
            let want = announced
                .map_or(2 * (f.len() + chunk.len()), |n| n as usize)
                .min(cap);
            buf.reserve_exact(want.max(f.len() + chunk.len()));
            buf.extend_from_slice(&f);
        } else if buf.capacity() - buf.len() < chunk.len() {
            let want = (2 * buf.len()).max(buf.len() + chunk.len()).min(cap);
            buf.reserve_exact(want - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(first.unwrap_or_else(|| Bytes::from(buf))))
}

/// Why the lease keeper gave up.
#[derive(Debug, Clone)]
enum LeaseProblem {
    /// Another run holds the lease now.
    Lost,
    /// The store failed for most of the lease's duration.
    NotRenewed {
        since: Duration,
        error: crate::checkpoint::StoreError,
    },
}

impl LeaseProblem {
    fn to_error(&self) -> HttpSourceError {
        match self {
            LeaseProblem::Lost => HttpSourceError::LeaseLost,
            LeaseProblem::NotRenewed { since, error } => HttpSourceError::LeaseNotRenewed {
                secs: since.as_secs(),
                error: error.clone(),
            },
        }
    }
}

/// Waits until the lease keeper reports a problem (forever when it stopped without one).
async fn lease_problem(rx: &mut watch::Receiver<Option<LeaseProblem>>) -> HttpSourceError {
    loop {
        if let Some(p) = &*rx.borrow_and_update() {
            return p.to_error();
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Renews the run's lease in the background every third of its duration, for as long as the run
/// holds it: through every wait (a `Retry-After`, a backoff, a slow request, a full pipeline,
/// acknowledgements), so no other run can take it while this one waits. A store error is retried
/// (every twelfth of the duration) until two thirds of the duration passed without a renewal; then,
/// or when another run holds the lease, it reports the problem and stops.
struct LeaseKeeper {
    problem: watch::Receiver<Option<LeaseProblem>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    fn start<S: CheckpointStore>(store: Arc<S>, owner: String, ttl: Duration) -> LeaseKeeper {
        let (tx, rx) = watch::channel(None);
        let every = (ttl / 3).max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut last_ok = Instant::now();
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                match store.acquire_lease(owner.clone(), ttl).await {
                    Ok(true) => {
                        tracing::debug!(run = %owner, "lease renewed");
                        last_ok = Instant::now();
                        wait = every;
                    }
                    Ok(false) => {
                        tracing::error!(run = %owner, "another run holds the lease");
                        let _ = tx.send(Some(LeaseProblem::Lost));
                        return;
                    }
                    Err(error) => {
                        let since = last_ok.elapsed();
                        if since >= ttl * 2 / 3 {
                            tracing::error!(run = %owner, %error, "lease not renewed in time");
                            let _ = tx.send(Some(LeaseProblem::NotRenewed { since, error }));
                            return;
                        }
                        tracing::warn!(run = %owner, %error, "lease renewal failed; retrying");
                        wait = (every / 4).max(Duration::from_millis(10));
                    }
                }
            }
        });
        LeaseKeeper { problem: rx, task }
    }

    /// Stops renewing (before the lease is released, so no renewal follows the release).
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl<S: CheckpointStore> Source for HttpSource<S> {
    type Output = HttpPage;

    fn register_metrics(&mut self, metrics: &MetricScope) {
        self.metrics = Some(SourceMetrics::register(metrics, &self.summary));
    }

    async fn run(self, mut ctx: SourceContext<HttpPage>) -> Result<(), BoxError> {
        let c = &self.cfg.config;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.request_timeout_ms))
            .build()?;
        let owner = self.cfg.run_id.clone();
        if !self
            .store
            .acquire_lease(owner.clone(), self.lease_ttl)
            .await?
        {
            tracing::warn!(run = %owner, "another run holds the lease; not polling");
            self.summary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .outcome = Outcome::LeaseHeld;
            ctx.close_output();
            return Ok(());
        }
        let committed = match self.store.load().await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.store.release_lease(owner).await;
                return Err(e.into());
            }
        };
        tracing::info!(
            run = %owner,
            from = %committed.as_deref().map_or("(start)".into(), |c| Short(c).to_string()),
            url = %Short(self.cfg.url.as_str()),
            "polling"
        );
        {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            s.started_from = committed.clone();
            s.committed = committed.clone();
        }
        let keeper = LeaseKeeper::start(self.store.clone(), owner.clone(), self.lease_ttl);
        let mut poller = Poller {
            cfg: self.cfg.clone(),
            client,
            store: self.store.clone(),
            summary: self.summary.clone(),
            metrics: self.metrics.clone(),
            committed,
            pending: VecDeque::new(),
            failed: 0,
            lease: keeper.problem.clone(),
        };
        let polled = poller.poll(&mut ctx).await;
        ctx.close_output();
        // Commit what was delivered, page by page, even when polling failed.
        let mut result = polled;
        while !poller.pending.is_empty() {
            if let Err(e) = poller.settle(&ctx, true).await {
                if result.is_ok() {
                    result = Err(e);
                }
                break;
            }
        }
        keeper.stop().await;
        let _ = self.store.release_lease(owner).await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        if outcome == Outcome::CaughtUp {
            if let Some(metrics) = &self.metrics {
                metrics.caught_up();
            }
        }
        let summary = {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            s.outcome = outcome;
            s.clone()
        };
        tracing::info!(
            pages = summary.pages,
            records = summary.records,
            retries = summary.retries,
            committed = %summary.committed.as_deref().map_or("(none)".into(), |c| Short(c).to_string()),
            outcome = ?summary.outcome,
            "polling finished"
        );
        result.map(|_| ()).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An endless body of `chunk`-byte chunks that counts the chunks pulled.
    fn endless(chunk: usize, pulled: Arc<AtomicUsize>) -> impl Stream<Item = Result<Bytes, ()>> {
        futures::stream::repeat_with(move || {
            pulled.fetch_add(1, Ordering::Relaxed);
            Ok(Bytes::from(vec![b'x'; chunk]))
        })
    }

    #[tokio::test]
    async fn an_endless_body_is_read_up_to_the_cap_and_no_further() {
        for (cap, chunk) in [(1_000, 100), (1_000, 300), (1_024, 1_024), (10, 64)] {
            let pulled = Arc::new(AtomicUsize::new(0));
            let body = read_capped(Box::pin(endless(chunk, pulled.clone())), cap, None)
                .await
                .unwrap();
            let Body::TooLarge(prefix) = body else {
                panic!("an endless body must be too large")
            };
            // Whole chunks up to the cap are kept; the chunk that crosses it is the last pulled.
            assert_eq!(
                prefix.len(),
                cap / chunk * chunk,
                "cap {cap}, chunk {chunk}"
            );
            assert_eq!(pulled.load(Ordering::Relaxed), cap / chunk + 1);
        }
    }

    #[tokio::test]
    async fn bodies_at_the_cap_are_whole_and_one_byte_more_is_too_large() {
        let parts = |sizes: &[usize]| {
            futures::stream::iter(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| Ok::<_, ()>(Bytes::from(vec![b'a' + i as u8; n])))
                    .collect::<Vec<_>>(),
            )
        };
        let whole = read_capped(parts(&[400, 400, 200]), 1_000, None)
            .await
            .unwrap();
        let mut expected = vec![b'a'; 400];
        expected.extend([b'b'; 400]);
        expected.extend([b'c'; 200]);
        assert_eq!(whole, Body::Whole(Bytes::from(expected.clone())));
        // With the size announced, the same.
        let whole = read_capped(parts(&[400, 400, 200]), 1_000, Some(1_000))
            .await
            .unwrap();
        assert_eq!(whole, Body::Whole(Bytes::from(expected)));
        let over = read_capped(parts(&[400, 400, 201]), 1_000, None)
            .await
            .unwrap();
        assert!(matches!(over, Body::TooLarge(p) if p.len() == 800));
        // An empty body is whole.
        assert_eq!(
            read_capped(parts(&[]), 1_000, None).await.unwrap(),
            Body::Whole(Bytes::new())
        );
    }

    #[tokio::test]
    async fn an_announced_size_above_the_cap_is_refused_before_reading() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = read_capped(Box::pin(endless(10, pulled.clone())), 1_000, Some(1_001))
            .await
            .unwrap();
        assert_eq!(body, Body::TooLarge(Bytes::new()));
        assert_eq!(pulled.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_single_chunk_is_returned_without_a_copy() {
        let chunk = Bytes::from(vec![7u8; 4_096]);
        let ptr = chunk.as_ptr();
        let body = read_capped(futures::stream::iter([Ok::<_, ()>(chunk)]), 8_192, None)
            .await
            .unwrap();
        let Body::Whole(b) = body else { panic!() };
        assert_eq!(b.as_ptr(), ptr);
    }

    #[tokio::test]
    async fn a_read_error_is_returned() {
        let s = futures::stream::iter([Ok(Bytes::from_static(b"[1,")), Err("reset")]);
        assert_eq!(read_capped(s, 1_000, None).await, Err("reset"));
    }

    #[test]
    fn long_quotes_are_clipped_at_a_character_boundary() {
        assert_eq!(Short("short").to_string(), "short");
        let long = format!("http://api/x?cursor={}", "é".repeat(3_000));
        let s = Short(&long).to_string();
        let (head, marker) = s.split_once("...[+").unwrap();
        assert!(head.len() <= QUOTE_BYTES && long.starts_with(head));
        let cut: usize = marker.trim_end_matches(" bytes]").parse().unwrap();
        assert_eq!(head.len() + cut, long.len());
    }

    /// A store whose lease calls answer what the test says.
    struct LeaseAnswers(Result<bool, StoreError>);

    impl CheckpointStore for LeaseAnswers {
        async fn load(&self) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        async fn commit(&self, _: Option<String>, _: String) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn acquire_lease(&self, _: String, _: Duration) -> Result<bool, StoreError> {
            self.0.clone()
        }
        async fn release_lease(&self, _: String) -> Result<(), StoreError> {
            Ok(())
        }
    }

    use crate::checkpoint::StoreError;

    #[tokio::test]
    async fn the_lease_keeper_reports_a_lost_lease_and_a_store_that_keeps_failing() {
        let ttl = Duration::from_millis(300);
        let lost = LeaseKeeper::start(Arc::new(LeaseAnswers(Ok(false))), "a".into(), ttl);
        let mut rx = lost.problem.clone();
        assert!(matches!(
            lease_problem(&mut rx).await,
            HttpSourceError::LeaseLost
        ));
        lost.stop().await;
        let failing = LeaseKeeper::start(
            Arc::new(LeaseAnswers(Err(StoreError("unavailable".into())))),
            "a".into(),
            ttl,
        );
        let mut rx = failing.problem.clone();
        let e = lease_problem(&mut rx).await;
        // It kept retrying until two thirds of the lease had passed without a renewal.
        match &e {
            HttpSourceError::LeaseNotRenewed { error, .. } => {
                assert_eq!(error.0, "unavailable")
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("the lease could not be renewed"));
        failing.stop().await;
    }

    #[tokio::test]
    async fn the_lease_keeper_renews_while_nothing_else_happens() {
        let store = Arc::new(crate::MemoryCheckpointStore::new());
        let ttl = Duration::from_secs(1);
        assert!(store.acquire_lease("a".into(), ttl).await.unwrap());
        let keeper = LeaseKeeper::start(store.clone(), "a".into(), ttl);
        // Two and a half lease durations later, "a" still holds it: a second owner cannot take it.
        tokio::time::sleep(ttl * 5 / 2).await;
        assert!(!store.acquire_lease("b".into(), ttl).await.unwrap());
        assert!(keeper.problem.borrow().is_none());
        keeper.stop().await;
    }
}
