//! The Pub/Sub sink: one engine batch becomes one or more raw `Publish` requests (split at 1,000
//! messages / the byte limit), sent concurrently; failures are reported per element.

use std::marker::PhantomData;

use bytes::Bytes;
use std::time::Duration;

use fluxo::{ErrorClass, Sink, SinkBatch, WriteError};
use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::{PublishRequest, PubsubMessage as RawMessage};

use super::client::PubsubClient;
use super::config::{
    PubsubSinkConfig, SinkSettings, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY_BYTES as MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE_BYTES as MAX_ATTRIBUTE_VALUE, MAX_ORDERING_KEY_BYTES as MAX_ORDERING_KEY,
};
use super::message::ToPubsub;
use crate::error::{grpc_code_is_retriable, ConfigError};
use crate::metrics::RequestMetrics;

/// Protobuf framing counted per message and per attribute in the request size estimate.
const MESSAGE_OVERHEAD: usize = 16;
const ATTRIBUTE_OVERHEAD: usize = 8;

/// A failed Pub/Sub operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PubsubError {
    /// The service answered with an error status.
    #[error("Pub/Sub {op} failed: {code:?}: {message}")]
    Rpc {
        /// The operation (`publish`, `pull`, ...).
        op: &'static str,
        /// gRPC status code.
        code: Code,
        /// Status message.
        message: String,
    },
    /// The request did not finish in time.
    #[error("Pub/Sub {op} timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// A message Pub/Sub would refuse (too large, no data and no attributes, too many attributes).
    #[error("invalid Pub/Sub message: {0}")]
    InvalidMessage(String),
    /// The service answered with a different number of message ids than messages sent.
    #[error("Pub/Sub returned {got} message ids for {sent} messages")]
    BadResponse {
        /// Messages sent.
        sent: usize,
        /// Ids returned.
        got: usize,
    },
}

impl PubsubError {
    pub(crate) fn rpc(op: &'static str, status: &gcloud_gax::grpc::Status) -> Self {
        PubsubError::Rpc {
            op,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

impl ErrorClass for PubsubError {
    fn is_retriable(&self) -> bool {
        match self {
            PubsubError::Rpc { code, .. } => grpc_code_is_retriable(*code),
            PubsubError::Timeout { .. } | PubsubError::BadResponse { .. } => true,
            PubsubError::InvalidMessage(_) => false,
        }
    }
}

/// Publishes values to a topic. Use it with the engine's [`fluxo::SinkConfig`] for batching (up to
/// 1,000 events per batch is one request), in-flight requests and retries.
pub struct PubsubSink<T> {
    client: PubsubClient,
    settings: SinkSettings,
    /// Set when the sink is added to a pipeline ([`Sink::register_metrics`]).
    requests: Option<RequestMetrics>,
    _t: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for PubsubSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubSink")
            .field("topic", &self.settings.topic)
            .field("endpoint", &self.settings.endpoint)
            .finish()
    }
}

impl<T: ToPubsub> PubsubSink<T> {
    /// Validates the configuration, connects, and checks that the topic exists (one-line
    /// [`ConfigError`] otherwise).
    pub async fn connect(config: &PubsubSinkConfig) -> Result<Self, ConfigError> {
        let settings = config.validate()?;
        let client = PubsubClient::connect(settings.endpoint.clone(), &settings.project).await?;
        client.check_topic(&settings.topic).await?;
        Ok(PubsubSink {
            client,
            settings,
            requests: None,
            _t: PhantomData,
        })
    }

    /// The topic (`projects/P/topics/T`).
    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    fn check(&self, v: &T, data: &[u8]) -> Result<usize, PubsubError> {
        let mut size = MESSAGE_OVERHEAD + data.len();
        let attributes = v.pubsub_attributes();
        if let Some(a) = attributes {
            if a.len() > MAX_ATTRIBUTES {
                return Err(PubsubError::InvalidMessage(format!(
                    "{} attributes (at most {MAX_ATTRIBUTES})",
                    a.len()
                )));
            }
            for (k, val) in a {
                if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || val.len() > MAX_ATTRIBUTE_VALUE {
                    return Err(PubsubError::InvalidMessage(format!(
                        "attribute '{}' has a key of {} bytes (1..={MAX_ATTRIBUTE_KEY}) or a value of {} bytes (at most {MAX_ATTRIBUTE_VALUE})",
                        k.chars().take(64).collect::<String>(),
                        k.len(),
                        val.len()
                    )));
                }
                size += k.len() + val.len() + ATTRIBUTE_OVERHEAD;
            }
        }
        if data.is_empty() && attributes.is_none_or(|a| a.is_empty()) {
            return Err(PubsubError::InvalidMessage(
                "a message needs data or at least one attribute".into(),
            ));
        }
        if let Some(k) = v.pubsub_ordering_key() {
            if k.len() > MAX_ORDERING_KEY {
                return Err(PubsubError::InvalidMessage(format!(
                    "ordering key of {} bytes (at most {MAX_ORDERING_KEY})",
                    k.len()
                )));
            }
            size += k.len();
        }
        if size > self.settings.max_bytes_per_request {
            return Err(PubsubError::InvalidMessage(format!(
                "{size} bytes is over the request limit of {} bytes",
                self.settings.max_bytes_per_request
            )));
        }
        Ok(size)
    }

    async fn publish(&self, messages: Vec<RawMessage>) -> Result<(), PubsubError> {
        let sent = messages.len();
        let req = PublishRequest {
            topic: self.settings.topic.clone(),
            messages,
        };
        let timeout = self.settings.request_timeout;
        let started = std::time::Instant::now();
        let result = self.publish_once(req, timeout, sent).await;
        crate::metrics::record(self.requests.as_ref(), started, &result);
        result
    }

    async fn publish_once(
        &self,
        req: PublishRequest,
        timeout: Duration,
        sent: usize,
    ) -> Result<(), PubsubError> {
        match tokio::time::timeout(timeout, self.client.publish(req)).await {
            Err(_) => Err(PubsubError::Timeout {
                op: "publish",
                timeout,
            }),
            Ok(Err(s)) => Err(PubsubError::rpc("publish", &s)),
            Ok(Ok(r)) => {
                let got = r.message_ids.len();
                if got == sent {
                    Ok(())
                } else {
                    Err(PubsubError::BadResponse { sent, got })
                }
            }
        }
    }
}

fn to_raw<T: ToPubsub>(v: &T, data: Bytes) -> RawMessage {
    RawMessage {
        data,
        attributes: v.pubsub_attributes().cloned().unwrap_or_default(),
        ordering_key: v.pubsub_ordering_key().unwrap_or_default().to_string(),
        ..Default::default()
    }
}

impl<T: ToPubsub> Sink<T> for PubsubSink<T> {
    type Error = PubsubError;

    fn register_metrics(&mut self, metrics: &fluxo::MetricScope) {
        self.requests = Some(RequestMetrics::new(metrics, "pubsub", "Publish"));
    }

    async fn write(&self, batch: &SinkBatch<T>) -> Result<(), WriteError<PubsubError>> {
        let mut failures: Vec<(usize, PubsubError)> = Vec::new();
        // (indices, messages) per request.
        let mut requests: Vec<(Vec<usize>, Vec<RawMessage>)> = Vec::new();
        let (mut idx, mut msgs) = (Vec::new(), Vec::new());
        let mut split = fluxo::RequestSplitter::new(
            self.settings.max_messages_per_request,
            [self.settings.max_bytes_per_request],
        );
        for (i, v) in batch.values().iter().enumerate() {
            let data = v.pubsub_data();
            let size = match self.check(v, &data) {
                Ok(s) => s,
                Err(e) => {
                    failures.push((i, e));
                    continue;
                }
            };
            if split.add([size]) {
                requests.push((std::mem::take(&mut idx), std::mem::take(&mut msgs)));
            }
            idx.push(i);
            msgs.push(to_raw(v, data));
        }
        if !msgs.is_empty() {
            requests.push((idx, msgs));
        }
        // Every request of the batch at once (the engine bounds the batches in flight).
        let concurrency = requests.len();
        let sends = requests.into_iter().map(|(idx, msgs)| {
            // A `Publish` succeeds or fails as a whole.
            (
                idx,
                async move { self.publish(msgs).await.map(|()| Vec::new()) },
            )
        });
        // A batch sent as one request fails as one; across several requests the errors may differ
        // in class (a refused message next to a timeout), so each element keeps its own.
        fluxo::send_requests(
            sends,
            concurrency,
            batch.len(),
            failures,
            fluxo::AllFailed::OneRequest,
        )
        .await
    }
}
