//! The HTTP server: pages of generated invoices, bearer or API-key auth, fault injection, admin routes.
//!
//! Routes:
//! - `GET /invoices?page=N&page_size=M&since=T` — page-number style; the body is a JSON array of records
//!   (the source shape); a `Link: <...>; rel="next"` header points at the next page while there is one.
//! - `GET /invoices/feed?cursor=C&limit=M&since=T` — cursor style; the body is
//!   `{"items":[...],"next_cursor":"...","has_more":bool}`. `next_cursor` is always present, so a client
//!   that stores it resumes exactly after the last record it read (incremental runs).
//! - `GET /healthz`; `GET`/`PUT /admin/faults` (JSON [`Faults`]); `GET /admin/stats` (JSON [`Stats`]).
//!
//! `since` is a `CreateDate` (`2021-05-24T20:21:34.79`, Sao Paulo time without offset): only records
//! changed strictly after it are served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::generate::{finalize, to_unit, Generator, GOLDEN};

/// Fault injection switches. Rates are probabilities per request (0.0 to 1.0), drawn from the generator
/// seed and the request number, so a run with the same switches sees the same sequence of faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added latency before every answer, in milliseconds. Default: 0.
    pub latency_ms: u64,
    /// Share of requests answered `429 Too Many Requests` with a `Retry-After` header. Default: 0.
    pub rate_429: f64,
    /// `Retry-After` seconds sent with a 429 (default: 0, the header says `0`: retry now). When above
    /// 0, the `rate_5xx` answers are all `503 Service Unavailable` with this `Retry-After` too (a server
    /// in maintenance).
    pub retry_after_secs: u64,
    /// Share of requests answered with a 500 or 503. Default: 0.
    pub rate_5xx: f64,
    /// Share of requests that hang for `hang_secs` before answering (a client timeout). Default: 0.
    pub rate_timeout: f64,
    /// How long a hanging request waits, in seconds. Default: 0 (then 30 is used).
    pub hang_secs: u64,
    /// Share of answers whose body is cut in the middle (the connection closes early). Default: 0.
    pub rate_truncate: f64,
    /// Share of pages that repeat the previous page's last record first (duplicates across pages).
    /// Default: 0.
    pub rate_duplicate: f64,
    /// Share of pages whose body cannot be delimited (an unmatched `[` before the records). Decided by
    /// the page's first record, so the same page is broken on every request, like a bad record at the
    /// source. Default: 0.
    pub rate_broken_page: f64,
    /// Every record whose id is a multiple of this is served padded (see `pad_record_to_bytes`): a
    /// record above a consumer's size limit. Default: 0 (none).
    pub pad_record_every: u64,
    /// Length in bytes of a padded record: a `"Padding":"xx..."` field is added before its closing
    /// brace to reach exactly this length (a record already as long is left as it is). Default: 0.
    pub pad_record_to_bytes: u64,
    /// Bytes of padding added to every position the API hands out: the feed's `next_cursor` becomes
    /// `after-N~xx...` (the API ignores what follows `~` when the cursor comes back) and the `Link` of
    /// `/invoices` gets a `pad=xx...` parameter. Default: 0 (none).
    pub pad_position_bytes: u64,
}

impl Faults {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("rate_429", self.rate_429),
            ("rate_5xx", self.rate_5xx),
            ("rate_timeout", self.rate_timeout),
            ("rate_truncate", self.rate_truncate),
            ("rate_duplicate", self.rate_duplicate),
            ("rate_broken_page", self.rate_broken_page),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} = {v} is not between 0 and 1"));
            }
        }
        if self.pad_record_every > 0 && self.pad_record_to_bytes == 0 {
            return Err("pad_record_every is set but pad_record_to_bytes is 0".into());
        }
        Ok(())
    }
}

/// Counters of what the server did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Page requests received (authorized or not).
    pub requests: u64,
    /// Records sent in complete answers.
    pub records_served: u64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: u64,
    /// 429 answers.
    pub throttled: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Hanging answers.
    pub hung: u64,
    /// Truncated bodies.
    pub truncated: u64,
    /// Pages with a duplicated record.
    pub duplicated: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    records_served: AtomicU64,
    unauthorized: AtomicU64,
    throttled: AtomicU64,
    server_errors: AtomicU64,
    hung: AtomicU64,
    truncated: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            requests: g(&self.requests),
            records_served: g(&self.records_served),
            unauthorized: g(&self.unauthorized),
            throttled: g(&self.throttled),
            server_errors: g(&self.server_errors),
            hung: g(&self.hung),
            truncated: g(&self.truncated),
            duplicated: g(&self.duplicated),
        }
    }
}

/// Largest page the API serves.
pub const MAX_PAGE_SIZE: u64 = 1_000;
/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

struct AppState {
    generator: Generator,
    token: Option<String>,
    faults: RwLock<Faults>,
    counters: Counters,
}

/// Shared handle to a server's state (faults can be switched while it runs).
#[derive(Clone)]
pub struct Api {
    state: Arc<AppState>,
}

impl Api {
    /// A server over `generator`; requests must carry `token` (as `Authorization: Bearer <token>` or
    /// `X-API-Key: <token>`) when it is set.
    pub fn new(generator: Generator, token: Option<String>, faults: Faults) -> Result<Api, String> {
        faults.check()?;
        Ok(Api {
            state: Arc::new(AppState {
                generator,
                token,
                faults: RwLock::new(faults),
                counters: Counters::default(),
            }),
        })
    }

    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.check()?;
        *self.state.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// The generator behind the pages.
    pub fn generator(&self) -> &Generator {
        &self.state.generator
    }

    /// The exact bytes of record `id` as served under the current fault switches (padded when
    /// [`Faults::pad_record_every`] selects it, else [`Generator::record`]).
    pub fn served_record(&self, id: u64) -> Vec<u8> {
        let faults = self
            .state
            .faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::with_capacity(512);
        write_served_record(&self.state.generator, id, &faults, &mut out);
        out
    }

    /// The axum router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/invoices", get(pages))
            .route("/invoices/feed", get(feed))
            .route("/admin/faults", get(get_faults).put(put_faults))
            .route("/admin/stats", get(get_stats))
            .with_state(self.state.clone())
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<u64>,
    page_size: Option<u64>,
    since: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FeedQuery {
    cursor: Option<String>,
    limit: Option<u64>,
    since: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(
            serde_json::json!({ "error": { "code": status.as_u16(), "message": message.into() } }),
        ),
    )
        .into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer == Some(token.as_str()) || key == Some(token.as_str())
}

/// A refused request: 400 with a message.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn page_size(requested: Option<u64>) -> Result<u64, BadRequest> {
    match requested.unwrap_or(DEFAULT_PAGE_SIZE) {
        0 => Err(BadRequest("page size must be at least 1".into())),
        n if n > MAX_PAGE_SIZE => Err(BadRequest(format!(
            "page size {n} is above the maximum {MAX_PAGE_SIZE}"
        ))),
        n => Ok(n),
    }
}

fn first_id(state: &AppState, since: Option<&str>) -> Result<u64, BadRequest> {
    match since {
        None => Ok(1),
        Some(s) => s
            .parse::<jiff::civil::DateTime>()
            .map(|t| state.generator.first_id_after(t))
            .map_err(|e| {
                BadRequest(format!(
                    "since '{s}' is not a date-time like 2021-05-24T20:21:34.79: {e}"
                ))
            }),
    }
}

/// The fault drawn for request number `n`.
enum Fault {
    None,
    Throttle,
    ServerError(StatusCode),
    Hang,
    Truncate,
}

fn draw(state: &AppState, n: u64, faults: &Faults) -> (Fault, bool) {
    let mut z = state.generator.config().seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407);
    let mut unit = || {
        z = z.wrapping_add(GOLDEN);
        to_unit(finalize(z))
    };
    let fault = if unit() < faults.rate_429 {
        Fault::Throttle
    } else if unit() < faults.rate_5xx {
        if n.is_multiple_of(2) {
            Fault::ServerError(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            Fault::ServerError(StatusCode::SERVICE_UNAVAILABLE)
        }
    } else if unit() < faults.rate_timeout {
        Fault::Hang
    } else if unit() < faults.rate_truncate {
        Fault::Truncate
    } else {
        Fault::None
    };
    let duplicate = unit() < faults.rate_duplicate;
    (fault, duplicate)
}

/// Common path of both page styles: auth, faults, body. `render` builds the body from the id range.
async fn serve<F>(state: &AppState, headers: &HeaderMap, render: F) -> Response
where
    F: FnOnce(
        bool,
        &Faults,
    ) -> Result<(Vec<u8>, u64, Vec<(header::HeaderName, String)>), BadRequest>,
{
    let c = &state.counters;
    let n = c.requests.fetch_add(1, Ordering::Relaxed);
    if !authorized(state, headers) {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <token> or X-API-Key: <token>",
        );
    }
    let faults = state
        .faults
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let (fault, duplicate) = draw(state, n, &faults);
    match fault {
        Fault::Throttle => {
            c.throttled.fetch_add(1, Ordering::Relaxed);
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "slow down");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(faults.retry_after_secs),
            );
            return r;
        }
        Fault::ServerError(code) => {
            c.server_errors.fetch_add(1, Ordering::Relaxed);
            if faults.retry_after_secs > 0 {
                let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "injected maintenance");
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(faults.retry_after_secs),
                );
                return r;
            }
            return error(code, "injected server error");
        }
        Fault::Hang => {
            c.hung.fetch_add(1, Ordering::Relaxed);
            let secs = if faults.hang_secs == 0 {
                30
            } else {
                faults.hang_secs
            };
            tokio::time::sleep(Duration::from_secs(secs)).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "injected hang");
        }
        Fault::Truncate | Fault::None => {}
    }
    let (body, records, extra) = match render(duplicate, &faults) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        builder = builder.header(k, v);
    }
    if matches!(fault, Fault::Truncate) && body.len() > 1 {
        c.truncated.fetch_add(1, Ordering::Relaxed);
        // Announce the full length, send half, then fail the stream: the connection closes early and
        // the client sees an incomplete body, as with a proxy that dropped the connection.
        let half = bytes::Bytes::from(body[..body.len() / 2].to_vec());
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(half) }).chain(
            futures::stream::once(async {
                // Let the headers and the first half reach the client before the connection drops.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other("injected truncation"))
            }),
        );
        return builder
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from_stream(stream))
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    if duplicate {
        c.duplicated.fetch_add(1, Ordering::Relaxed);
    }
    c.records_served.fetch_add(records, Ordering::Relaxed);
    builder
        .body(Body::from(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Whether the page starting at `first` is broken (see [`Faults::rate_broken_page`]).
fn broken_page(g: &Generator, first: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let z = (g.config().seed ^ 0x5EED_B40C_E000_0000).wrapping_add(first.wrapping_mul(GOLDEN));
    let unit = to_unit(finalize(z));
    unit < rate
}

/// Appends record `id` as served under `faults` (padded, see [`Faults::pad_record_every`]).
fn write_served_record(g: &Generator, id: u64, faults: &Faults, out: &mut Vec<u8>) {
    let start = out.len();
    g.write_record(id, out);
    if faults.pad_record_every == 0 || !id.is_multiple_of(faults.pad_record_every) {
        return;
    }
    const FIELD: &[u8] = b",\"Padding\":\"";
    // The record ends with its closing brace: the field goes just before it.
    let len = (out.len() - start) as u64;
    let fixed = (FIELD.len() + 1) as u64; // the field's name and quotes
    let Some(pad) = faults.pad_record_to_bytes.checked_sub(len + fixed) else {
        return;
    };
    out.pop();
    out.extend_from_slice(FIELD);
    out.resize(out.len() + pad as usize, b'x');
    out.extend_from_slice(b"\"}");
}

/// Writes records `ids` as a JSON array (pretty like the sample when the generator is); a broken page
/// gets an unmatched `[` first.
fn write_array(
    g: &Generator,
    ids: impl Iterator<Item = u64>,
    broken: bool,
    faults: &Faults,
    out: &mut Vec<u8>,
) -> u64 {
    let pretty = g.config().pretty;
    out.push(b'[');
    if broken {
        out.push(b'[');
    }
    let mut n = 0;
    for id in ids {
        if n > 0 {
            out.push(b',');
        }
        if pretty {
            out.extend_from_slice(b"\n   ");
        }
        write_served_record(g, id, faults, out);
        n += 1;
    }
    if pretty {
        out.push(b'\n');
    }
    out.push(b']');
    n
}

/// The ids of a page starting at `first` (inclusive), with the previous record first when duplicating.
fn page_ids(g: &Generator, first: u64, size: u64, duplicate: bool) -> impl Iterator<Item = u64> {
    let end = first.saturating_add(size).min(g.count() + 1);
    let dup = (duplicate && first > 1 && first <= g.count()).then_some(first - 1);
    dup.into_iter().chain(first..end.max(first))
}

async fn pages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = state.clone();
    serve(&state, &headers, move |duplicate, faults| {
        let size = page_size(q.page_size)?;
        let page = q.page.unwrap_or(1);
        if page == 0 {
            return Err(BadRequest("page numbers start at 1".into()));
        }
        let start = first_id(&st, q.since.as_deref())?;
        let first = start.saturating_add((page - 1).saturating_mul(size));
        let g = &st.generator;
        let mut body = Vec::with_capacity(size as usize * 600);
        let broken = broken_page(g, first, faults.rate_broken_page);
        let ids = page_ids(g, first, size, duplicate);
        let records = write_array(g, ids, broken, faults, &mut body);
        let mut extra = Vec::new();
        if first.saturating_add(size) <= g.count() {
            let mut next = format!("/invoices?page={}&page_size={size}", page + 1);
            if let Some(s) = &q.since {
                next.push_str("&since=");
                next.push_str(s);
            }
            if faults.pad_position_bytes > 0 {
                next.push_str("&pad=");
                next.push_str(&position_padding(faults));
            }
            extra.push((header::LINK, format!("<{next}>; rel=\"next\"")));
        }
        Ok((body, records, extra))
    })
    .await
}

/// The padding of positions (see [`Faults::pad_position_bytes`]).
fn position_padding(faults: &Faults) -> String {
    "x".repeat(faults.pad_position_bytes as usize)
}

/// `after-N`, ignoring a `~padding` suffix.
fn parse_cursor(c: &str) -> Option<u64> {
    let c = c.split_once('~').map_or(c, |(head, _)| head);
    c.strip_prefix("after-")?.parse().ok()
}

async fn feed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Response {
    let st = state.clone();
    serve(&state, &headers, move |duplicate, faults| {
        let size = page_size(q.limit)?;
        let first = match &q.cursor {
            Some(c) => parse_cursor(c)
                .map(|last| last + 1)
                .ok_or_else(|| BadRequest(format!("cursor '{c}' was not issued by this API")))?,
            None => first_id(&st, q.since.as_deref())?,
        };
        let g = &st.generator;
        let end = first.saturating_add(size).min(g.count() + 1).max(first);
        let mut body = Vec::with_capacity(size as usize * 600 + 64);
        body.extend_from_slice(b"{\"items\":");
        let broken = broken_page(g, first, faults.rate_broken_page);
        let ids = page_ids(g, first, size, duplicate);
        let records = write_array(g, ids, broken, faults, &mut body);
        let next = end - 1;
        let has_more = end <= g.count();
        let pad = if faults.pad_position_bytes > 0 {
            format!("~{}", position_padding(faults))
        } else {
            String::new()
        };
        body.extend_from_slice(
            format!(",\"next_cursor\":\"after-{next}{pad}\",\"has_more\":{has_more}}}").as_bytes(),
        );
        Ok((body, records, Vec::new()))
    })
    .await
}

async fn get_faults(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let f = state
        .faults
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(f).into_response()
}

async fn put_faults(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(f): Json<Faults>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    if let Err(e) = f.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    *state.faults.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
    Json(f).into_response()
}

async fn get_stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    Json(state.counters.snapshot()).into_response()
}
