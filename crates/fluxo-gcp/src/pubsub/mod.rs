//! Google Cloud Pub/Sub: a source (unary pull with several outstanding requests, or streaming pull)
//! with flow control, lease extension and end-to-end acknowledgement, a batched publishing sink with
//! per-message outcomes, and admin helpers.
//!
//! ```no_run
//! use fluxo::{Pipeline, RunOptions, SinkConfig};
//! use fluxo_gcp::pubsub::{PubsubOut, PubsubSink, PubsubSinkConfig, PubsubSource, PubsubSourceConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut source = PubsubSourceConfig::new("projects/my-project/subscriptions/in");
//! source.endpoint = Some("127.0.0.1:8085".into());
//! let mut sink = PubsubSinkConfig::new("projects/my-project/topics/out");
//! sink.endpoint = Some("127.0.0.1:8085".into());
//! let p = Pipeline::new("copy");
//! p.read("Read", PubsubSource::connect(&source).await?)
//!     .map("ToOut", |m| PubsubOut { data: m.data, attributes: m.attributes, ordering_key: None })
//!     .write("Publish", PubsubSink::connect(&sink).await?, SinkConfig { max_events: 1000, ..Default::default() });
//! p.run(RunOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/connectors/pubsub.md` for the configuration reference, delivery semantics and measurements.

mod client;
mod config;
mod message;
mod sink;
mod source;

pub use client::{PublisherStub, PubsubClient, SubscriptionOptions};
pub use config::{
    check_project, check_resource_id, Endpoint, PubsubSinkConfig, PubsubSourceConfig, ReceiveMode,
    SinkSettings, SourceSettings, EMULATOR_ENV, MAX_ACK_DEADLINE_SECS, MAX_ATTRIBUTES,
    MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ORDERING_KEY_BYTES, MAX_PUBLISH_BYTES,
    MAX_PUBLISH_MESSAGES, MAX_PULL_MESSAGES, MIN_ACK_DEADLINE_SECS,
};
pub use message::{clip_attribute_value, DeliveryHistory, PubsubMessage, PubsubOut, ToPubsub};
pub use sink::{PubsubError, PubsubSink};
pub use source::{PubsubSource, PubsubSourceStats};

/// The raw generated types and stubs of the client crate, for tools and benchmarks.
pub mod raw {
    pub use super::client::PublisherStub;
    pub use gcloud_googleapis::pubsub::v1 as proto;
    pub use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
}
