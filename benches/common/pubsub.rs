//! The Pub/Sub emulator's receive ceiling shared by the benchmarks: a unary `Pull(1000)` then
//! `Acknowledge` loop, no engine.

use std::time::Instant;

use fluxo_gcp::pubsub::raw::proto::{
    AcknowledgeRequest, PubsubMessage, PullRequest, ReceivedMessage,
};
use fluxo_gcp::pubsub::PubsubClient;

use super::ceiling::Measured;

/// One `Pull(1000)` on the subscription path `subscription`. `wait`: let the emulator hold the pull
/// until messages arrive.
async fn pull_1000(client: &PubsubClient, subscription: &str, wait: bool) -> Vec<ReceivedMessage> {
    #[allow(deprecated)]
    let req = PullRequest {
        subscription: subscription.to_string(),
        max_messages: 1000,
        return_immediately: !wait,
    };
    client
        .subscriber()
        .pull(req, None)
        .await
        .expect("pull")
        .into_inner()
        .received_messages
}

/// One `Acknowledge` of `ack_ids`.
async fn acknowledge(client: &PubsubClient, subscription: &str, ack_ids: Vec<String>) {
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
}

/// One `Pull(1000)` on the subscription path `subscription`, then one `Acknowledge` of what came; the
/// messages. `wait`: let the emulator hold the pull until messages arrive.
pub async fn pull_and_ack(
    client: &PubsubClient,
    subscription: &str,
    wait: bool,
) -> Vec<PubsubMessage> {
    let received = pull_1000(client, subscription, wait).await;
    if received.is_empty() {
        return Vec::new();
    }
    let (ack_ids, messages) = received
        .into_iter()
        .map(|m| (m.ack_id, m.message.unwrap_or_default()))
        .unzip();
    acknowledge(client, subscription, ack_ids).await;
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

/// The receive ceiling of a pipeline whose sink batches: `Pull(1000)` in a loop, and one
/// `Acknowledge` once `ack_every` messages were pulled or the oldest unacked one waited `max_delay`
/// (what a sink configured with `max_events` / `max_delay` does before the source acks). Against the
/// emulator every pull made while acks are held pays the emulator's own cost of copying the backlog,
/// so this loop, with no engine, shows what that pattern costs there.
#[allow(dead_code)] // used by gcp_pubsub only
pub async fn raw_pull_held_acks(
    client: &PubsubClient,
    sub: &str,
    n: u64,
    ack_every: usize,
    max_delay: std::time::Duration,
) -> Measured {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let started = Instant::now();
    let (mut got, mut held, mut oldest) = (0u64, Vec::<String>::new(), None::<Instant>);
    while got < n {
        let received = pull_1000(client, &subscription, true).await;
        got += received.len() as u64;
        if !received.is_empty() {
            oldest.get_or_insert_with(Instant::now);
        }
        held.extend(received.into_iter().map(|m| m.ack_id));
        let due = oldest.is_some_and(|t| t.elapsed() >= max_delay);
        if !held.is_empty() && (held.len() >= ack_every || due || got >= n) {
            acknowledge(client, &subscription, std::mem::take(&mut held)).await;
            oldest = None;
        }
    }
    Measured {
        items: got,
        elapsed: started.elapsed(),
    }
}
