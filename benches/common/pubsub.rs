//! The Pub/Sub emulator's receive ceiling shared by the benchmarks: a unary `Pull(1000)` then
//! `Acknowledge` loop, no engine.

use std::time::Instant;

use fluxo_gcp::pubsub::raw::proto::{AcknowledgeRequest, PubsubMessage, PullRequest};
use fluxo_gcp::pubsub::PubsubClient;

use super::ceiling::Measured;

/// One `Pull(1000)` on the subscription path `subscription`, then one `Acknowledge` of what came; the
/// messages. `wait`: let the emulator hold the pull until messages arrive.
pub async fn pull_and_ack(
    client: &PubsubClient,
    subscription: &str,
    wait: bool,
) -> Vec<PubsubMessage> {
    #[allow(deprecated)]
    let req = PullRequest {
        subscription: subscription.to_string(),
        max_messages: 1000,
        return_immediately: !wait,
    };
    let received = client
        .subscriber()
        .pull(req, None)
        .await
        .expect("pull")
        .into_inner()
        .received_messages;
    if received.is_empty() {
        return Vec::new();
    }
    let (ack_ids, messages) = received
        .into_iter()
        .map(|m| (m.ack_id, m.message.unwrap_or_default()))
        .unzip();
    client
        .subscriber()
        .acknowledge(
            AcknowledgeRequest {
                subscription: subscription.to_string(),
                ack_ids,
            },
            None,
        )
        .await
        .expect("ack");
    messages
}

/// Pulls and acks `n` messages of `sub`, one request at a time.
pub async fn raw_pull(client: &PubsubClient, sub: &str, n: u64) -> Measured {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let started = Instant::now();
    let mut got = 0u64;
    while got < n {
        got += pull_and_ack(client, &subscription, true).await.len() as u64;
    }
    Measured {
        items: got,
        elapsed: started.elapsed(),
    }
}
