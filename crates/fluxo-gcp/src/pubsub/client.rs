//! Connection to Pub/Sub (emulator or Google with Application Default Credentials) and the admin helpers
//! used by tests, the demo, tools and configuration checks.

use std::time::Duration;

use std::sync::Arc;

use gcloud_gax::conn::{Channel, ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient as RawPublisher;
use gcloud_googleapis::pubsub::v1::{
    DeadLetterPolicy, DeleteSubscriptionRequest, DeleteTopicRequest, GetSubscriptionRequest,
    GetTopicRequest, Subscription, Topic,
};
use gcloud_googleapis::pubsub::v1::{PublishRequest, PublishResponse};
use gcloud_pubsub::apiv1::conn_pool::{ConnectionManager, PUBSUB};
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use gcloud_pubsub::client::ClientConfig;

use super::config::{check_project, resolve_name, Endpoint};
use crate::error::ConfigError;

/// How long the pre-start checks wait for the service.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// No retries inside the client library: the engine (sink) and the source loops retry with their own
/// backoff, so errors surface promptly and are counted.
pub(crate) fn no_retry() -> Option<RetrySetting> {
    Some(RetrySetting {
        take: 0,
        ..RetrySetting::default()
    })
}

/// Largest gRPC message the stubs send or accept (Pub/Sub's 10 MB request limit plus framing).
const GRPC_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// The generated publisher stub over the client's authenticated channel.
pub type PublisherStub = RawPublisher<Channel>;

/// A connected Pub/Sub client for one project: the generated publisher stub (the `gcloud-pubsub`
/// wrapper keeps its own private) and `gcloud-pubsub`'s subscriber client.
#[derive(Clone, Debug)]
pub struct PubsubClient {
    project: String,
    endpoint: Endpoint,
    publisher: Arc<ConnectionManager>,
    subscriber: SubscriberClient,
}

/// Options of a subscription created by [`PubsubClient::create_subscription`].
#[derive(Debug, Clone, Default)]
pub struct SubscriptionOptions {
    /// Ack deadline in seconds (10..=600; 0 = the service default, 10 s).
    pub ack_deadline_secs: i32,
    /// Dead-letter topic (short id or full path) and the delivery attempts before a message goes there
    /// (5..=100).
    pub dead_letter: Option<(String, i32)>,
    /// Deliver messages with the same ordering key in order.
    pub enable_message_ordering: bool,
}

fn unreachable(endpoint: &Endpoint, reason: impl std::fmt::Display) -> ConfigError {
    let what = match endpoint {
        Endpoint::Emulator(_) => "is the emulator running? (gcloud beta emulators pubsub start)",
        Endpoint::Google(_) => "check network access and Application Default Credentials (gcloud auth application-default login)",
    };
    ConfigError::Unreachable {
        service: "Pub/Sub",
        endpoint: endpoint.to_string(),
        reason: format!("{}; {what}", one_line(&reason.to_string())),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Maps a failed check RPC to a one-line configuration error.
pub(crate) fn check_error(endpoint: &Endpoint, status: &Status) -> ConfigError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => ConfigError::Unreachable {
            service: "Pub/Sub",
            endpoint: endpoint.to_string(),
            reason: format!(
                "{:?}: {}; grant the service account the Pub/Sub roles it needs",
                status.code(),
                one_line(status.message())
            ),
        },
        _ => unreachable(
            endpoint,
            format!("{:?}: {}", status.code(), status.message()),
        ),
    }
}

impl PubsubClient {
    /// Connects to `endpoint` for `project`. Fails with [`ConfigError::Unreachable`] when the endpoint
    /// refuses the connection or does not answer within a few seconds.
    pub async fn connect(endpoint: Endpoint, project: &str) -> Result<PubsubClient, ConfigError> {
        check_project(project)?;
        let options = ConnectionOptions {
            connect_timeout: Some(CHECK_TIMEOUT),
            // Detect dead connections (an emulator killed mid-run) instead of hanging on them.
            http2_keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Some(Duration::from_secs(10)),
            keep_alive_while_idle: Some(true),
            ..ConnectionOptions::default()
        };
        let environment = match &endpoint {
            Endpoint::Emulator(host) => Environment::Emulator(host.clone()),
            Endpoint::Google(_) => {
                let config = ClientConfig {
                    project_id: Some(project.to_string()),
                    ..ClientConfig::default()
                };
                let config = tokio::time::timeout(CHECK_TIMEOUT, config.with_auth())
                    .await
                    .map_err(|_| unreachable(&endpoint, "timed out loading credentials"))?
                    .map_err(|e| unreachable(&endpoint, format!("credentials: {e}")))?;
                config.environment
            }
        };
        let pool = endpoint.pubsub_channels();
        let cm = || async {
            match tokio::time::timeout(
                CHECK_TIMEOUT,
                ConnectionManager::new(pool, PUBSUB, &environment, &options),
            )
            .await
            {
                Ok(Ok(cm)) => Ok(cm),
                Ok(Err(e)) => Err(unreachable(&endpoint, error_chain(&e))),
                Err(_) => Err(unreachable(&endpoint, "connection timed out")),
            }
        };
        let publisher = Arc::new(cm().await?);
        let subscriber = SubscriberClient::new(cm().await?, cm().await?);
        Ok(PubsubClient {
            project: project.to_string(),
            endpoint,
            publisher,
            subscriber,
        })
    }

    /// Connects to the emulator at `host:port` (tests and tools).
    pub async fn emulator(host: &str, project: &str) -> Result<PubsubClient, ConfigError> {
        PubsubClient::connect(Endpoint::Emulator(host.to_string()), project).await
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The generated publisher stub (`Publish`, topic admin); cheap, make one per call.
    pub fn publisher(&self) -> PublisherStub {
        RawPublisher::new(self.publisher.conn())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    /// Publishes one request (no retry: callers retry with their own policy).
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        let request = gcloud_gax::create_request(format!("topic={}", req.topic), req);
        self.publisher()
            .publish(request)
            .await
            .map(|r| r.into_inner())
    }

    /// The raw subscriber stub (`Pull`, `StreamingPull`, `Acknowledge`, subscription admin).
    pub fn subscriber(&self) -> &SubscriberClient {
        &self.subscriber
    }

    /// `projects/P/topics/ID` for a short id or a full path.
    pub fn topic_path(&self, topic: &str) -> Result<String, ConfigError> {
        resolve_name(Some(&self.project), topic, "topics", "pubsub.topic").map(|(_, t)| t)
    }

    /// `projects/P/subscriptions/ID` for a short id or a full path.
    pub fn subscription_path(&self, subscription: &str) -> Result<String, ConfigError> {
        resolve_name(
            Some(&self.project),
            subscription,
            "subscriptions",
            "pubsub.subscription",
        )
        .map(|(_, s)| s)
    }

    /// Creates a topic.
    pub async fn create_topic(&self, topic: &str) -> Result<(), Status> {
        let name = self.topic_path(topic).map_err(config_status)?;
        let request = gcloud_gax::create_request(
            format!("name={name}"),
            Topic {
                name: name.clone(),
                ..Default::default()
            },
        );
        self.publisher().create_topic(request).await.map(drop)
    }

    /// Creates a pull subscription on `topic`.
    pub async fn create_subscription(
        &self,
        subscription: &str,
        topic: &str,
        options: SubscriptionOptions,
    ) -> Result<(), Status> {
        let name = self
            .subscription_path(subscription)
            .map_err(config_status)?;
        let topic = self.topic_path(topic).map_err(config_status)?;
        let dead_letter_policy = match options.dead_letter {
            Some((t, attempts)) => Some(DeadLetterPolicy {
                dead_letter_topic: self.topic_path(&t).map_err(config_status)?,
                max_delivery_attempts: attempts,
            }),
            None => None,
        };
        self.subscriber
            .create_subscription(
                Subscription {
                    name,
                    topic,
                    ack_deadline_seconds: options.ack_deadline_secs,
                    enable_message_ordering: options.enable_message_ordering,
                    dead_letter_policy,
                    ..Default::default()
                },
                None,
            )
            .await
            .map(drop)
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Status> {
        let topic = self.topic_path(topic).map_err(config_status)?;
        let request = gcloud_gax::create_request(
            format!("topic={topic}"),
            DeleteTopicRequest {
                topic: topic.clone(),
            },
        );
        self.publisher().delete_topic(request).await.map(drop)
    }

    /// Deletes a subscription.
    pub async fn delete_subscription(&self, subscription: &str) -> Result<(), Status> {
        let subscription = self
            .subscription_path(subscription)
            .map_err(config_status)?;
        self.subscriber
            .delete_subscription(DeleteSubscriptionRequest { subscription }, None)
            .await
            .map(drop)
    }

    /// Whether the topic exists.
    pub async fn topic_exists(&self, topic: &str) -> Result<bool, Status> {
        let topic = self.topic_path(topic).map_err(config_status)?;
        let request = gcloud_gax::create_request(
            format!("topic={topic}"),
            GetTopicRequest {
                topic: topic.clone(),
            },
        );
        match self.publisher().get_topic(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// The subscription, or `None` when it does not exist.
    pub async fn get_subscription(
        &self,
        subscription: &str,
    ) -> Result<Option<Subscription>, Status> {
        let subscription = self
            .subscription_path(subscription)
            .map_err(config_status)?;
        match self
            .subscriber
            .get_subscription(GetSubscriptionRequest { subscription }, no_retry())
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Whether the subscription exists.
    pub async fn subscription_exists(&self, subscription: &str) -> Result<bool, Status> {
        self.get_subscription(subscription)
            .await
            .map(|s| s.is_some())
    }

    /// Checks that the topic exists: a one-line [`ConfigError`] otherwise (`NotFound` with the command
    /// that creates it, or `Unreachable`).
    pub async fn check_topic(&self, topic: &str) -> Result<(), ConfigError> {
        let path = self.topic_path(topic)?;
        match tokio::time::timeout(CHECK_TIMEOUT, self.topic_exists(&path)).await {
            Err(_) => Err(unreachable(&self.endpoint, "no answer within 5 s")),
            Ok(Err(s)) => Err(check_error(&self.endpoint, &s)),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ConfigError::NotFound {
                service: "Pub/Sub",
                kind: "topic",
                name: path.clone(),
                hint: format!(
                    "; create it with: gcloud pubsub topics create {} --project {}",
                    short(&path),
                    self.project
                ),
            }),
        }
    }

    /// Checks that the subscription exists and returns it: a one-line [`ConfigError`] otherwise.
    pub async fn check_subscription(
        &self,
        subscription: &str,
    ) -> Result<Subscription, ConfigError> {
        let path = self.subscription_path(subscription)?;
        match tokio::time::timeout(CHECK_TIMEOUT, self.get_subscription(&path)).await {
            Err(_) => Err(unreachable(&self.endpoint, "no answer within 5 s")),
            Ok(Err(s)) => Err(check_error(&self.endpoint, &s)),
            Ok(Ok(Some(s))) => Ok(s),
            Ok(Ok(None)) => Err(ConfigError::NotFound {
                service: "Pub/Sub",
                kind: "subscription",
                name: path.clone(),
                hint: format!(
                    "; create it with: gcloud pubsub subscriptions create {} --topic TOPIC --project {}",
                    short(&path),
                    self.project
                ),
            }),
        }
    }
}

fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn config_status(e: ConfigError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
