//! The Storage Write API ceiling shared by the BigQuery benchmarks: the generated gRPC client
//! (`gcloud-googleapis`, `google.cloud.bigquery.storage.v1`) over one tonic channel, committed write
//! streams with offsets, one append in flight per stream, no engine and no connector.
//!
//! It sends what `BigQuerySink` sends for the same rows: `streams_per_table` committed streams per table,
//! requests of `rows_per_request` serialized rows at the stream's next offset, the row descriptor with
//! the first request of each call, the routing header; every answer is checked (no error, no row error).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fluxo_gcp::bigquery::{TableRow, WriterSchema};
use gcloud_googleapis::cloud::bigquery::storage::v1::{
    append_rows_request, append_rows_response, big_query_write_client::BigQueryWriteClient,
    write_stream, AppendRowsRequest, AppendRowsResponse, CreateWriteStreamRequest, ProtoRows,
    ProtoSchema, WriteStream,
};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::ceiling::Measured;

/// The rows of one table.
#[derive(Clone)]
pub struct Target {
    /// `projects/P/datasets/D/tables/T`.
    pub parent: String,
    /// The table's row layout (its descriptor goes with the first request of every call).
    pub schema: WriterSchema,
    /// The rows, serialized by the layout.
    pub rows: Arc<Vec<TableRow>>,
}

/// Serialized bytes of `rows` (what the Storage Write API bills: the rows as appended).
pub fn row_bytes(rows: &[TableRow]) -> u64 {
    rows.iter().map(|r| r.data().len() as u64).sum()
}

fn with_routing<T>(msg: T, param: String) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = param.parse() {
        req.metadata_mut().insert("x-goog-request-params", v);
    }
    req
}

/// Appends every row of every target: `streams_per_table` committed streams per table, all tables at
/// once, each stream taking the next `rows_per_request` rows of its table when its previous append is
/// answered. Returns the rows written and the wall time, stream creation included (the sink creates
/// its streams on its first appends too).
pub async fn raw_append_rows(
    endpoint: &str,
    targets: Vec<Target>,
    rows_per_request: usize,
    streams_per_table: usize,
) -> Measured {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("gRPC endpoint")
        .connect()
        .await
        .expect("connect to the Storage Write API");
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    let mut total = 0u64;
    for t in targets {
        total += t.rows.len() as u64;
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..streams_per_table {
            let (channel, t, next) = (channel.clone(), t.clone(), next.clone());
            lanes.spawn(async move { lane(channel, t, next, rows_per_request).await });
        }
    }
    while let Some(done) = lanes.join_next().await {
        done.expect("append lane");
    }
    Measured {
        items: total,
        elapsed: started.elapsed(),
    }
}

/// One committed stream and its `AppendRows` call: appends chunks of its table until none is left.
async fn lane(channel: Channel, t: Target, next: Arc<AtomicUsize>, rows_per_request: usize) {
    let mut start = next.fetch_add(rows_per_request, Ordering::Relaxed);
    if start >= t.rows.len() {
        return;
    }
    let mut client = BigQueryWriteClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let create = CreateWriteStreamRequest {
        parent: t.parent.clone(),
        write_stream: Some(WriteStream {
            r#type: write_stream::Type::Committed as i32,
            ..WriteStream::default()
        }),
    };
    let stream = client
        .create_write_stream(with_routing(create, format!("parent={}", t.parent)))
        .await
        .expect("CreateWriteStream")
        .into_inner()
        .name;
    let (tx, rx) = tokio::sync::mpsc::channel::<AppendRowsRequest>(1);
    let mut rx = Some(rx);
    let mut answers = None;
    let mut offset = 0i64;
    loop {
        let end = (start + rows_per_request).min(t.rows.len());
        let first = answers.is_none();
        let request = AppendRowsRequest {
            write_stream: stream.clone(),
            offset: Some(offset),
            rows: Some(append_rows_request::Rows::ProtoRows(
                append_rows_request::ProtoData {
                    writer_schema: first.then(|| ProtoSchema {
                        proto_descriptor: Some(t.schema.descriptor().clone()),
                    }),
                    rows: Some(ProtoRows {
                        serialized_rows: t.rows[start..end]
                            .iter()
                            .map(|r| r.data().to_vec())
                            .collect(),
                    }),
                },
            )),
            ..AppendRowsRequest::default()
        };
        tx.send(request).await.expect("request channel");
        if let Some(rx) = rx.take() {
            let call = with_routing(ReceiverStream::new(rx), format!("write_stream={stream}"));
            answers = Some(
                client
                    .append_rows(call)
                    .await
                    .expect("AppendRows")
                    .into_inner(),
            );
        }
        let answer: AppendRowsResponse = answers
            .as_mut()
            .expect("open call")
            .message()
            .await
            .expect("AppendRows answer")
            .expect("an answer");
        assert!(
            answer.row_errors.is_empty(),
            "row errors: {:?}",
            answer.row_errors
        );
        if let Some(append_rows_response::Response::Error(e)) = &answer.response {
            panic!("AppendRows error {}: {}", e.code, e.message);
        }
        offset += (end - start) as i64;
        start = next.fetch_add(rows_per_request, Ordering::Relaxed);
        if start >= t.rows.len() {
            break;
        }
    }
    // Ends the call (the stream stays open, as the sink's do).
    drop(tx);
}
