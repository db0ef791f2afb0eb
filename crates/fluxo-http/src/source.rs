//! The polling source: reads pages until caught up (or the page cap, the deadline, a shutdown), emits
//! one element per page, and commits the checkpoint of a page only once that page and every page before
//! it were acknowledged downstream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxo::{ack_batch, BoxError, Data, Element, Source, SourceContext, Status, Timestamp};
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::checkpoint::CheckpointStore;
use crate::config::{Credential, ValidConfig};
use crate::paginate::{PageError, PageOutcome};
use crate::scan::ScanError;

/// One page of records as the API sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPage {
    /// The records array's exact bytes (the whole body when the page is broken).
    pub records: Bytes,
    /// Number of records (0 when broken).
    pub count: u32,
    /// Page number within this run, from 0.
    pub page: u64,
    /// Checkpoint token that resumes after this page.
    pub position: Arc<str>,
    /// The URL the page came from.
    pub url: Arc<str>,
    /// Set when the body could not be delimited after every retry: the reason (the element then
    /// carries the raw body for a dead letter).
    pub broken: Option<Arc<str>>,
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
    /// Pages that could not be delimited and were emitted whole.
    pub broken_pages: u64,
    /// Pages whose records were not all acknowledged as delivered.
    pub failed_pages: u64,
    /// How the run ended.
    pub outcome: Outcome,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    /// A response that retrying cannot fix (4xx other than 408/429).
    #[error("{url} answered {status}: {body}")]
    Fatal {
        /// The request URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// Every attempt failed.
    #[error("{url}: gave up after {attempts} attempts, last error: {last}")]
    GaveUp {
        /// The request URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The server asked to wait longer than allowed.
    #[error("{url}: Retry-After of {secs} s is above the configured maximum")]
    RetryAfterTooLong {
        /// The request URL.
        url: String,
        /// Seconds asked.
        secs: u64,
    },
    /// The API returned a cursor already seen in this run: following it would loop forever.
    #[error("the API returned the position '{0}' twice in one run; stopping to avoid a loop")]
    RepeatedPosition(String),
    /// A broken page whose successor cannot be found.
    #[error("{url}: the page could not be read ({reason}) and the next position is in its body")]
    Unrecoverable {
        /// The request URL.
        url: String,
        /// The scan error.
        reason: String,
    },
    /// Another run advanced the checkpoint.
    #[error("the checkpoint moved under this run (another run advanced it); stopping")]
    Conflict,
    /// Another run took the lease after this run's lease expired.
    #[error("this run lost its lease to another run; stopping")]
    LeaseLost,
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
}

impl<S: CheckpointStore> HttpSource<S> {
    /// A source over a checked configuration and a checkpoint store.
    pub fn new(cfg: ValidConfig, store: S) -> Self {
        HttpSource {
            cfg,
            store: Arc::new(store),
            summary: Arc::new(Mutex::new(RunSummary::default())),
            lease_ttl: Duration::from_secs(120),
        }
    }

    /// Lease duration; the run renews it every third of it. Default: 120 s.
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
    committed: Option<String>,
    pending: VecDeque<Pending>,
    failed: u64,
    lease_ttl: Duration,
    last_lease: Instant,
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
                    tracing::debug!(position = %pos, "checkpoint committed");
                    self.committed = Some(pos.clone());
                    self.note(|s| s.committed = Some(pos));
                }
            }
        }
        Ok(())
    }

    async fn renew_lease(&mut self) -> Result<(), HttpSourceError> {
        if self.last_lease.elapsed() >= self.lease_ttl / 3 {
            if !self
                .store
                .acquire_lease(self.cfg.run_id.clone(), self.lease_ttl)
                .await?
            {
                return Err(HttpSourceError::LeaseLost);
            }
            self.last_lease = Instant::now();
        }
        Ok(())
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
        let mut attempt = 0u32;
        loop {
            attempt += 1;
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
                        match resp.bytes().await {
                            Ok(body) => {
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
                            Err(e) => format!("reading the body: {e}"),
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
                Err(e) if e.is_timeout() => "timed out".to_string(),
                Err(e) => format!("{e}"),
            };
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
            tracing::warn!(%url, attempt, error = %last, wait_ms = wait.as_millis() as u64, "page request failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown().wait() => return Ok(None),
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
            self.renew_lease().await?;
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
                        return Err(HttpSourceError::Unrecoverable {
                            url: url.to_string(),
                            reason: e.to_string(),
                        });
                    };
                    tracing::error!(%url, error = %e, "page cannot be delimited; emitted whole for the dead-letter output");
                    self.note(|s| s.broken_pages += 1);
                    let page = HttpPage {
                        records: body,
                        count: 0,
                        page: page_no,
                        position: Arc::from(next.as_str()),
                        url: url_text,
                        broken: Some(Arc::from(e.to_string())),
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
        let committed = self.store.load().await?;
        tracing::info!(run = %owner, from = ?committed, url = %self.cfg.url, "polling");
        {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            s.started_from = committed.clone();
            s.committed = committed.clone();
        }
        let mut poller = Poller {
            cfg: self.cfg.clone(),
            client,
            store: self.store.clone(),
            summary: self.summary.clone(),
            committed,
            pending: VecDeque::new(),
            failed: 0,
            lease_ttl: self.lease_ttl,
            last_lease: Instant::now(),
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
        let _ = self.store.release_lease(owner).await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let summary = {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            s.outcome = outcome;
            s.clone()
        };
        tracing::info!(
            pages = summary.pages,
            records = summary.records,
            retries = summary.retries,
            committed = ?summary.committed,
            outcome = ?summary.outcome,
            "polling finished"
        );
        result.map(|_| ()).map_err(Into::into)
    }
}
