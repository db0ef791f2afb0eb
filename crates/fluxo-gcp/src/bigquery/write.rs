//! Storage Write API client: committed write streams with offsets, one append in flight per stream.
//!
//! Why committed streams and offsets (and not the `_default` stream): an append whose answer is lost (a
//! timeout, a broken connection, a frozen server) may or may not have been written. On the default
//! stream the only safe move is to send it again, which duplicates the rows whenever the first attempt
//! had landed. On a committed stream every append names the offset it must land at: the lane sends the
//! same rows at the same offset until BigQuery answers either with the result or with `ALREADY_EXISTS`
//! (the first attempt had landed), so a retried append is written exactly once. The price is one
//! `CreateWriteStream` per lane when it starts (and when a stream has to be given up) and one append in
//! flight per stream, which `streams_per_table` multiplies.
//!
//! Hand-written on the generated gRPC client (`gcloud-googleapis`): the Rust crates that wrap the API
//! open a new bidirectional call per append and track no offsets, which is the part that matters here.

use crate::metrics::RequestMetrics;
use std::time::{Duration, Instant};

use fluxo::RetryConfig;
use futures::channel::mpsc;
use futures::SinkExt;
use gcloud_gax::conn::{Channel, ConnectionManager, ConnectionOptions, Environment};
use gcloud_googleapis::cloud::bigquery::storage::v1::{
    append_rows_request, append_rows_response, big_query_write_client::BigQueryWriteClient,
    write_stream, AppendRowsRequest, AppendRowsResponse, CreateWriteStreamRequest, ProtoRows,
    ProtoSchema, WriteStream,
};
use tonic::{Code, Streaming};

use super::client::BigQueryError;
use super::config::{EndpointSource, SinkSettings};
use super::proto::WriterSchema;
use super::row::TableRow;
use crate::ConfigError;

const AUDIENCE: &str = "https://bigquerystorage.googleapis.com/";
const DOMAIN: &str = "bigquerystorage.googleapis.com";
const SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/bigquery.insertdata",
    "https://www.googleapis.com/auth/cloud-platform",
];
const TRACE_ID: &str = "fluxo-gcp";

/// Backoff between attempts of one append (full jitter, 100 ms doubling to 5 s).
const BACKOFF: RetryConfig = RetryConfig {
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(5),
    max_retries: u32::MAX,
};

/// The gRPC channel to the Storage Write API, shared by every lane of a sink.
pub(crate) struct WriteClient {
    channel: Channel,
}

impl std::fmt::Debug for WriteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteClient")
    }
}

impl WriteClient {
    pub(crate) async fn connect(s: &SinkSettings) -> Result<Self, ConfigError> {
        let url = &s.write_endpoint.url;
        let unreachable = |reason: String| ConfigError::Unreachable {
            service: "BigQuery Storage Write API",
            endpoint: url.clone(),
            reason,
        };
        let options = ConnectionOptions {
            connect_timeout: Some(s.client.connect_timeout),
            // No whole-call timeout: an AppendRows call lives as long as the lane; each answer has its
            // own deadline. Keep-alives find connections that died silently.
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(10)),
            ..ConnectionOptions::default()
        };
        let environment = if s.write_endpoint.source == EndpointSource::Google
            || url.starts_with("https://")
        {
            let config = gcloud_auth::project::Config::default()
                .with_audience(AUDIENCE)
                .with_scopes(&SCOPES);
            let ts = gcloud_auth::token::DefaultTokenSourceProvider::new(config)
                .await
                .map_err(|e| unreachable(format!("no Application Default Credentials ({e}); run `gcloud auth application-default login` or set {}", super::config::WRITE_EMULATOR_ENV)))?;
            Environment::GoogleCloud(Box::new(ts))
        } else {
            Environment::Emulator(url.trim_start_matches("http://").to_string())
        };
        let conns = ConnectionManager::new(1, DOMAIN, AUDIENCE, &environment, &options)
            .await
            .map_err(|e| unreachable(format!("{e}; start bqemulator or check write_endpoint")))?;
        Ok(WriteClient {
            channel: conns.conn(),
        })
    }

    fn grpc(&self) -> BigQueryWriteClient<Channel> {
        BigQueryWriteClient::new(self.channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

fn status_error(context: &str, s: &tonic::Status) -> BigQueryError {
    BigQueryError::Grpc {
        code: s.code(),
        message: format!("{context}: {}", s.message().replace('\n', " ")),
    }
}

fn with_routing<T>(msg: T, param: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = param.parse() {
        req.metadata_mut().insert("x-goog-request-params", v);
    }
    req
}

/// An open `AppendRows` call.
struct Connection {
    tx: mpsc::Sender<AppendRowsRequest>,
    rx: Streaming<AppendRowsResponse>,
}

/// One committed stream of one table and its connection; one append at a time.
pub(crate) struct Lane {
    parent: String,
    /// Committed stream and the offset its next append must land at.
    stream: Option<(String, i64)>,
    conn: Option<Connection>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("parent", &self.parent)
            .field("stream", &self.stream)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// What one append attempt came to.
enum Attempt {
    /// Written (or found written by an earlier attempt).
    Written,
    /// Not written: these rows (request-relative) are invalid; send the rest again.
    RowErrors(Vec<(usize, BigQueryError)>),
    /// Not written, for a reason that holds for the whole request and is not transient.
    Refused(BigQueryError),
    /// Not written; try again after a pause.
    Retry(BigQueryError),
    /// Unknown outcome (no answer): send the same rows at the same offset again.
    Unknown(BigQueryError),
    /// The stream cannot take more appends (finalized, gone, offsets out of step): start a new one.
    NewStream(BigQueryError),
}

impl Attempt {
    /// The request's outcome as the request metrics count it: an answer naming bad rows is a
    /// request that worked; a refusal is fatal; anything that is sent again is retriable.
    fn metric_outcome(&self) -> &'static str {
        match self {
            Attempt::Written | Attempt::RowErrors(_) => crate::metrics::OUTCOME_OK,
            Attempt::Refused(_) => crate::metrics::OUTCOME_FATAL,
            Attempt::Retry(_) | Attempt::Unknown(_) | Attempt::NewStream(_) => {
                crate::metrics::OUTCOME_RETRIABLE
            }
        }
    }
}

/// How an append ended: per-row failures (indices into the rows given), or a failure of all of them.
pub(crate) type AppendOutcome = Result<Vec<(usize, BigQueryError)>, BigQueryError>;

impl Lane {
    pub(crate) fn new(project: &str, dataset: &str, table: &str) -> Self {
        Lane {
            parent: format!("projects/{project}/datasets/{dataset}/tables/{table}"),
            stream: None,
            conn: None,
        }
    }

    /// Appends `indices` of `rows` exactly once, unless the stream had to be given up while an append's
    /// outcome was unknown (then its rows fail retriably and may also have been written once).
    ///
    /// A request BigQuery refuses as a whole for a data reason (an emulator reports a bad value that
    /// way; BigQuery itself names the rows in `row_errors`) is split in halves until the bad rows are
    /// alone, so one bad row never fails its neighbours.
    pub(crate) async fn append(
        &mut self,
        client: &WriteClient,
        schema: &WriterSchema,
        s: &SinkSettings,
        rows: &[TableRow],
        indices: &[u32],
        requests: Option<&RequestMetrics>,
    ) -> AppendOutcome {
        let mut failures = Vec::new();
        // Chunks still to write, as ranges of `indices`, last one on top.
        let mut todo: Vec<(usize, usize)> = vec![(0, indices.len())];
        while let Some((start, end)) = todo.pop() {
            let chunk: Vec<usize> = (start..end).collect();
            match self
                .append_chunk(client, schema, s, rows, indices, chunk, requests)
                .await
            {
                Ok(mut f) => failures.append(&mut f),
                // Only a data refusal is worth splitting; a permission or configuration error would fail
                // every half alike.
                Err(e) if e.grpc_code() == Some(Code::InvalidArgument) && end - start > 1 => {
                    tracing::debug!(error = %e, rows = end - start, "BigQuery refused an append as a whole; splitting it to find the rows");
                    let mid = start + (end - start) / 2;
                    todo.push((mid, end));
                    todo.push((start, mid));
                }
                Err(e) => {
                    // This chunk and everything after it fails alike: a permanent error is the chunk's
                    // own (one row), a retriable one ends the call.
                    let retriable = fluxo::ErrorClass::is_retriable(&e);
                    failures.extend((start..end).map(|i| (i, e.clone())));
                    if retriable {
                        for (a, b) in todo.drain(..) {
                            failures.extend((a..b).map(|i| (i, e.clone())));
                        }
                    }
                }
            }
        }
        if !indices.is_empty()
            && failures.len() == indices.len()
            && failures
                .iter()
                .all(|f| fluxo::ErrorClass::is_retriable(&f.1))
        {
            // Keep a whole transient failure whole (the engine retries and reports it once).
            return Err(failures.swap_remove(0).1);
        }
        Ok(failures)
    }

    /// Writes the rows `chunk` (positions in `indices`) at the stream's next offset. Returns the row
    /// failures (positions in `indices`) or the error of the whole chunk.
    #[allow(clippy::too_many_arguments)]
    async fn append_chunk(
        &mut self,
        client: &WriteClient,
        schema: &WriterSchema,
        s: &SinkSettings,
        rows: &[TableRow],
        indices: &[u32],
        mut chunk: Vec<usize>,
        requests: Option<&RequestMetrics>,
    ) -> AppendOutcome {
        let deadline = Instant::now() + s.resolve_timeout;
        let mut failures = Vec::new();
        let mut uncertain = false;
        let mut attempt: u32 = 0;
        loop {
            if chunk.is_empty() {
                return Ok(failures);
            }
            let started = Instant::now();
            let outcome = self
                .attempt(client, schema, s, rows, indices, &chunk, uncertain)
                .await;
            if let Some(requests) = requests {
                requests.record_outcome(started, outcome.metric_outcome());
            }
            let wait = match outcome {
                Attempt::Written => {
                    if let Some((_, next)) = &mut self.stream {
                        *next += chunk.len() as i64;
                    }
                    return Ok(failures);
                }
                Attempt::RowErrors(errs) => {
                    // Nothing was written: drop the bad rows and send the others at the same offset.
                    let mut bad = vec![false; chunk.len()];
                    for (i, e) in errs {
                        if let Some(slot) = bad.get_mut(i) {
                            if !*slot {
                                *slot = true;
                                failures.push((chunk[i], e));
                            }
                        }
                    }
                    let mut k = 0;
                    chunk.retain(|_| {
                        k += 1;
                        !bad[k - 1]
                    });
                    continue;
                }
                Attempt::Refused(e) => {
                    if uncertain {
                        // An earlier attempt may have been written; the stream's offsets can no longer be
                        // trusted, so the next chunk starts on a new stream.
                        self.give_up_stream();
                    }
                    return Err(e);
                }
                Attempt::NewStream(e) => {
                    tracing::warn!(error = %e, uncertain, "BigQuery write stream given up; continuing on a new one");
                    self.give_up_stream();
                    if uncertain {
                        // The lost attempt may have landed on the old stream: fail the rows retriably (the
                        // engine sends them again, so they may exist twice in the raw table).
                        return Err(BigQueryError::Transport(format!(
                            "an append's outcome is unknown and its stream can take no more ({e})"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(BigQueryError::Transport(format!(
                            "no write stream took the append within resolve_timeout_ms ({e})"
                        )));
                    }
                    // Paced like any retry: a stream that fails at once must not become a loop of
                    // CreateWriteStream calls.
                    BACKOFF.backoff(attempt)
                }
                Attempt::Retry(e) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, "BigQuery append failed; retrying at the same offset");
                    BACKOFF.backoff(attempt)
                }
                Attempt::Unknown(e) => {
                    uncertain = true;
                    self.conn = None;
                    if Instant::now() >= deadline {
                        tracing::warn!(error = %e, "BigQuery append still unresolved at resolve_timeout; giving its stream up");
                        self.give_up_stream();
                        return Err(e);
                    }
                    tracing::info!(error = %e, attempt, "BigQuery append outcome unknown; sending it again at the same offset");
                    BACKOFF.backoff(attempt)
                }
            };
            attempt = attempt.saturating_add(1);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    fn give_up_stream(&mut self) {
        self.stream = None;
        self.conn = None;
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        client: &WriteClient,
        schema: &WriterSchema,
        s: &SinkSettings,
        rows: &[TableRow],
        indices: &[u32],
        chunk: &[usize],
        uncertain: bool,
    ) -> Attempt {
        let (name, offset) = match &self.stream {
            Some(st) => st.clone(),
            None => match self.create_stream(client, s).await {
                Ok(name) => {
                    self.stream = Some((name.clone(), 0));
                    (name, 0)
                }
                // NOT_FOUND: the table was checked at start, so it is being re-created; wait for it.
                Err(e)
                    if fluxo::ErrorClass::is_retriable(&e)
                        || e.grpc_code() == Some(Code::NotFound) =>
                {
                    return Attempt::Retry(e)
                }
                Err(e) => return Attempt::Refused(e),
            },
        };
        // The descriptor goes with the first request of a connection only.
        let first = self.conn.is_none();
        let request = AppendRowsRequest {
            write_stream: name.clone(),
            offset: Some(offset),
            trace_id: if first {
                TRACE_ID.into()
            } else {
                String::new()
            },
            rows: Some(append_rows_request::Rows::ProtoRows(
                append_rows_request::ProtoData {
                    writer_schema: first.then(|| ProtoSchema {
                        proto_descriptor: Some(schema.descriptor().clone()),
                    }),
                    rows: Some(ProtoRows {
                        serialized_rows: chunk
                            .iter()
                            .map(|&i| rows[indices[i] as usize].data().to_vec())
                            .collect(),
                    }),
                },
            )),
            ..AppendRowsRequest::default()
        };
        let sent = match self.conn.as_mut() {
            Some(c) => match tokio::time::timeout(s.append_timeout, c.tx.send(request)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(BigQueryError::Transport(
                    "AppendRows connection closed before the request was sent".into(),
                )),
            },
            None => self.open(client, &name, request, s).await,
        };
        if let Err(e) = sent {
            self.conn = None;
            if matches!(
                e.grpc_code(),
                Some(Code::NotFound | Code::FailedPrecondition | Code::OutOfRange)
            ) {
                return Attempt::NewStream(e);
            }
            // The request may have reached the server before the failure (a frozen server reads it
            // from its socket later): its outcome is unknown. Treating an append that was not written
            // as unknown costs nothing; only this attempt can hold this offset.
            return Attempt::Unknown(e);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Attempt::Unknown(BigQueryError::Transport("no connection".into()));
        };
        let answer = match tokio::time::timeout(s.append_timeout, conn.rx.message()).await {
            Err(_) => {
                return Attempt::Unknown(BigQueryError::Transport(format!(
                    "no AppendRows answer within {} ms",
                    s.append_timeout.as_millis()
                )))
            }
            Ok(Err(status)) => {
                let e = status_error("AppendRows", &status);
                return match status.code() {
                    Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
                        Attempt::NewStream(e)
                    }
                    Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated
                        if !uncertain =>
                    {
                        self.conn = None;
                        Attempt::Refused(e)
                    }
                    _ => Attempt::Unknown(e),
                };
            }
            Ok(Ok(None)) => {
                return Attempt::Unknown(BigQueryError::Transport(
                    "AppendRows connection closed without an answer".into(),
                ))
            }
            Ok(Ok(Some(answer))) => answer,
        };
        let outcome = classify(answer, chunk.len(), uncertain);
        if !matches!(outcome, Attempt::Written) {
            // Start the next attempt on a fresh connection, which carries the descriptor again: after an
            // error, a server may not have kept the schema of the refused request (bqemulator does not).
            self.conn = None;
        }
        outcome
    }

    async fn create_stream(
        &self,
        client: &WriteClient,
        s: &SinkSettings,
    ) -> Result<String, BigQueryError> {
        let req = CreateWriteStreamRequest {
            parent: self.parent.clone(),
            write_stream: Some(WriteStream {
                r#type: write_stream::Type::Committed as i32,
                ..WriteStream::default()
            }),
        };
        let req = with_routing(req, &format!("parent={}", self.parent));
        let mut grpc = client.grpc();
        match tokio::time::timeout(s.append_timeout, grpc.create_write_stream(req)).await {
            Err(_) => Err(BigQueryError::Transport(format!(
                "CreateWriteStream: no answer within {} ms",
                s.append_timeout.as_millis()
            ))),
            Ok(Err(status)) => Err(status_error("CreateWriteStream", &status)),
            Ok(Ok(resp)) => {
                let name = resp.into_inner().name;
                tracing::debug!(stream = %name, "BigQuery committed write stream created");
                Ok(name)
            }
        }
    }

    async fn open(
        &mut self,
        client: &WriteClient,
        stream: &str,
        first: AppendRowsRequest,
        s: &SinkSettings,
    ) -> Result<(), BigQueryError> {
        let (mut tx, rx) = mpsc::channel::<AppendRowsRequest>(1);
        // Queued before the call starts: the server answers the call's headers once it has a request.
        tx.send(first)
            .await
            .map_err(|_| BigQueryError::Transport("request channel closed".into()))?;
        let req = with_routing(rx, &format!("write_stream={stream}"));
        let mut grpc = client.grpc();
        let call = grpc.append_rows(req);
        match tokio::time::timeout(s.append_timeout, call).await {
            Err(_) => Err(BigQueryError::Transport(format!(
                "AppendRows: no answer within {} ms",
                s.append_timeout.as_millis()
            ))),
            Ok(Err(status)) => Err(status_error("AppendRows", &status)),
            Ok(Ok(resp)) => {
                self.conn = Some(Connection {
                    tx,
                    rx: resp.into_inner(),
                });
                Ok(())
            }
        }
    }
}

/// Reads an `AppendRows` answer for a request of `n` rows.
fn classify(answer: AppendRowsResponse, n: usize, uncertain: bool) -> Attempt {
    if !answer.row_errors.is_empty() {
        let errs = answer
            .row_errors
            .into_iter()
            .filter_map(|r| {
                let i = usize::try_from(r.index).ok().filter(|i| *i < n)?;
                Some((
                    i,
                    BigQueryError::Row {
                        reason: format!("row error {}", r.code),
                        location: String::new(),
                        message: r.message.replace('\n', " "),
                    },
                ))
            })
            .collect::<Vec<_>>();
        if !errs.is_empty() {
            return Attempt::RowErrors(errs);
        }
    }
    match answer.response {
        Some(append_rows_response::Response::AppendResult(_)) => Attempt::Written,
        None => Attempt::Written,
        Some(append_rows_response::Response::Error(status)) => {
            let code = Code::from(status.code);
            let e = BigQueryError::Grpc {
                code,
                message: format!("AppendRows: {}", status.message.replace('\n', " ")),
            };
            match code {
                // The offset is already written: by an earlier attempt of this append when its outcome
                // was unknown; otherwise the stream and this lane disagree.
                Code::AlreadyExists if uncertain => Attempt::Written,
                Code::AlreadyExists
                | Code::OutOfRange
                | Code::NotFound
                | Code::FailedPrecondition => Attempt::NewStream(e),
                c if crate::error::grpc_code_is_retriable(c) => Attempt::Retry(e),
                _ => Attempt::Refused(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_googleapis::cloud::bigquery::storage::v1::RowError;
    use gcloud_googleapis::rpc::Status;

    fn error(code: Code) -> AppendRowsResponse {
        AppendRowsResponse {
            response: Some(append_rows_response::Response::Error(Status {
                code: code as i32,
                message: "m".into(),
                details: vec![],
            })),
            ..AppendRowsResponse::default()
        }
    }

    #[test]
    fn answers() {
        let ok = AppendRowsResponse {
            response: Some(append_rows_response::Response::AppendResult(
                append_rows_response::AppendResult { offset: Some(7) },
            )),
            ..AppendRowsResponse::default()
        };
        assert!(matches!(classify(ok, 3, false), Attempt::Written));
        assert!(matches!(
            classify(error(Code::AlreadyExists), 3, true),
            Attempt::Written
        ));
        assert!(matches!(
            classify(error(Code::AlreadyExists), 3, false),
            Attempt::NewStream(_)
        ));
        assert!(matches!(
            classify(error(Code::OutOfRange), 3, true),
            Attempt::NewStream(_)
        ));
        assert!(matches!(
            classify(error(Code::Unavailable), 3, false),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(error(Code::InvalidArgument), 3, false),
            Attempt::Refused(_)
        ));
        let mut rows = error(Code::InvalidArgument);
        rows.row_errors = vec![
            RowError {
                index: 1,
                code: 1,
                message: "bad\nvalue".into(),
            },
            RowError {
                index: 9,
                code: 1,
                message: "outside".into(),
            },
        ];
        match classify(rows, 3, false) {
            Attempt::RowErrors(e) => {
                assert_eq!(e.len(), 1);
                assert_eq!(e[0].0, 1);
                assert!(!e[0].1.to_string().contains('\n'));
            }
            _ => panic!("row errors expected"),
        }
    }
}
