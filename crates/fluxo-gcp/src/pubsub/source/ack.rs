//! The acker (acknowledgements and nacks in chunks, a few requests at a time, retried) and the lease
//! extender (`ModifyAckDeadline` for the ack ids still in flight).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gcloud_gax::grpc::Status as GrpcStatus;
use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, ModifyAckDeadlineRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::flow::{AckWork, Shared};
use super::pull::backoff;
use crate::error::grpc_code_is_retriable;
use crate::pubsub::client::no_retry;

/// Concurrent `Acknowledge` / `ModifyAckDeadline(0)` requests.
pub(super) const ACK_CONCURRENCY: usize = 4;
/// Longest wait of a partial chunk of ack ids for more ids before it is sent.
pub(super) const ACK_FLUSH: Duration = Duration::from_millis(20);
/// Attempts of one ack or lease request on retriable errors.
pub(super) const ACK_ATTEMPTS: u32 = 3;

/// Sends ack ids in chunks, a few requests at a time, retrying transient failures.
pub(super) async fn acker(shared: Arc<Shared>, mut rx: mpsc::Receiver<AckWork>) {
    let chunk = shared.settings.ack_batch_size;
    // A paced puller waits for these acks: send them at once.
    let flush_after = if shared.pace.is_some() {
        Duration::ZERO
    } else {
        ACK_FLUSH
    };
    let mut ack: Vec<String> = Vec::new();
    let mut nack: Vec<String> = Vec::new();
    let mut rpcs = JoinSet::new();
    let mut open = true;
    // When the oldest queued id arrived: partial chunks wait at most ACK_FLUSH for company, so the
    // service sees few large requests instead of one per pulled batch.
    let mut oldest: Option<tokio::time::Instant> = None;
    loop {
        let backlog = ack.len() + nack.len();
        if !open && backlog == 0 && rpcs.is_empty() {
            return;
        }
        let flush_at = oldest.map(|t| t + flush_after);
        tokio::select! {
            w = rx.recv(), if open && backlog < 4 * chunk => match w {
                Some(w) => {
                    ack.extend(w.ack);
                    nack.extend(w.nack);
                }
                None => open = false,
            },
            Some(_) = rpcs.join_next(), if !rpcs.is_empty() => {}
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {}
        }
        while ack.len() + nack.len() < 4 * chunk {
            match rx.try_recv() {
                Ok(w) => {
                    ack.extend(w.ack);
                    nack.extend(w.nack);
                }
                Err(_) => break,
            }
        }
        if ack.is_empty() && nack.is_empty() {
            oldest = None;
            continue;
        }
        let now = tokio::time::Instant::now();
        let first = *oldest.get_or_insert(now);
        let flush = !open || now >= first + flush_after;
        while rpcs.len() < ACK_CONCURRENCY
            && (ack.len() >= chunk
                || nack.len() >= chunk
                || (flush && !(ack.is_empty() && nack.is_empty())))
        {
            let (ids, is_ack) = if ack.len() >= chunk || (nack.len() < chunk && !ack.is_empty()) {
                let at = ack.len().saturating_sub(chunk);
                (ack.split_off(at), true)
            } else {
                let at = nack.len().saturating_sub(chunk);
                (nack.split_off(at), false)
            };
            let shared = Arc::clone(&shared);
            rpcs.spawn(async move {
                let n = ids.len() as u64;
                let ok = if is_ack {
                    send_ack(&shared, ids).await
                } else {
                    send_modack(&shared, ids, 0).await
                };
                let s = &shared.stats.0;
                match (ok, is_ack) {
                    (true, true) => s.acked.fetch_add(n, Ordering::Relaxed),
                    (true, false) => s.nacked.fetch_add(n, Ordering::Relaxed),
                    (false, _) => s.ack_errors.fetch_add(n, Ordering::Relaxed),
                };
                shared.confirmed(n);
            });
        }
        oldest = if ack.is_empty() && nack.is_empty() {
            None
        } else if flush {
            Some(now)
        } else {
            Some(first)
        };
    }
}

pub(super) async fn send_ack(shared: &Shared, ack_ids: Vec<String>) -> bool {
    let req = AcknowledgeRequest {
        subscription: shared.settings.subscription.clone(),
        ack_ids,
    };
    retry_rpc("acknowledge", shared, || {
        shared
            .client
            .subscriber()
            .acknowledge(req.clone(), no_retry())
    })
    .await
}

pub(super) async fn send_modack(shared: &Shared, ack_ids: Vec<String>, seconds: i32) -> bool {
    let req = ModifyAckDeadlineRequest {
        subscription: shared.settings.subscription.clone(),
        ack_ids,
        ack_deadline_seconds: seconds,
    };
    retry_rpc("modify_ack_deadline", shared, || {
        shared
            .client
            .subscriber()
            .modify_ack_deadline(req.clone(), no_retry())
    })
    .await
}

pub(super) async fn retry_rpc<F, Fut, R>(op: &str, shared: &Shared, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, GrpcStatus>>,
{
    for attempt in 0..ACK_ATTEMPTS {
        match tokio::time::timeout(Duration::from_secs(30), f()).await {
            Ok(Ok(_)) => return true,
            Ok(Err(s)) if grpc_code_is_retriable(s.code()) && attempt + 1 < ACK_ATTEMPTS => {
                tracing::debug!(op, code = ?s.code(), "retrying Pub/Sub request");
            }
            Ok(Err(s)) => {
                tracing::warn!(op, subscription = %shared.settings.subscription, code = ?s.code(), message = s.message(), "Pub/Sub request failed; the messages will be redelivered");
                return false;
            }
            Err(_) if attempt + 1 < ACK_ATTEMPTS => {}
            Err(_) => {
                tracing::warn!(op, subscription = %shared.settings.subscription, "Pub/Sub request timed out; the messages will be redelivered");
                return false;
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
    false
}

/// Extends the deadline of every ack id still in flight, a third of a deadline before it runs out.
pub(super) async fn lease_extender(shared: Arc<Shared>, period: Duration) {
    let seconds = shared.settings.ack_deadline.as_secs() as i32;
    let chunk = shared.settings.ack_batch_size;
    loop {
        tokio::time::sleep(period).await;
        let batches: Vec<Arc<Vec<String>>> = shared
            .lock_leases()
            .values()
            .filter(|l| l.since.elapsed() < shared.settings.max_lease)
            .map(|l| Arc::clone(&l.ack_ids))
            .collect();
        let mut ids: Vec<String> = Vec::new();
        let mut sends = Vec::new();
        for b in &batches {
            for id in b.iter() {
                ids.push(id.clone());
                if ids.len() >= chunk {
                    sends.push(std::mem::take(&mut ids));
                }
            }
        }
        if !ids.is_empty() {
            sends.push(ids);
        }
        drop(batches);
        for ids in sends {
            let n = ids.len() as u64;
            if send_modack(&shared, ids, seconds).await {
                shared
                    .stats
                    .0
                    .lease_extensions
                    .fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}
