//! The Pub/Sub emulator's receive ceiling shared by the benchmarks: a unary `Pull(1000)` then
//! `Acknowledge` loop, no engine.

use std::time::Instant;

use fluxo_gcp::pubsub::raw::proto::{AcknowledgeRequest, PullRequest};
use fluxo_gcp::pubsub::PubsubClient;

use super::ceiling::Measured;

/// Pulls and acks `n` messages of `sub`, one request at a time.
pub async fn raw_pull(client: &PubsubClient, sub: &str, n: u64) -> Measured {
    let subscription = client.subscription_path(sub).expect("subscription path");
    let started = Instant::now();
    let mut got = 0u64;
    while got < n {
        #[allow(deprecated)]
        let req = PullRequest {
            subscription: subscription.clone(),
            max_messages: 1000,
            return_immediately: false,
        };
        let msgs = client
            .subscriber()
            .pull(req, None)
            .await
            .expect("pull")
            .into_inner()
            .received_messages;
        got += msgs.len() as u64;
        let ack_ids = msgs.into_iter().map(|m| m.ack_id).collect();
        client
            .subscriber()
            .acknowledge(
                AcknowledgeRequest {
                    subscription: subscription.clone(),
                    ack_ids,
                },
                None,
            )
            .await
            .expect("ack");
    }
    Measured {
        items: got,
        elapsed: started.elapsed(),
    }
}
