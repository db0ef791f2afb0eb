//! The pullers: unary `Pull` (paced against an emulator, see [`PullPace`]) and `StreamingPull`, both
//! bounded by the flow-control budget, and their error handling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gcloud_gax::grpc::{Code, Status as GrpcStatus};
use gcloud_googleapis::pubsub::v1::{PullRequest, ReceivedMessage, StreamingPullRequest};
use tokio::sync::mpsc;

use super::flow::{Pulled, Shared};
use crate::error::grpc_code_is_retriable;
use crate::pubsub::client::no_retry;
use crate::pubsub::sink::PubsubError;

/// Backoff bounds of the pullers after an error.
pub(super) const PULL_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const PULL_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest wait of an emulator puller for outstanding acks before it pulls anyway.
pub(super) const PACE_MAX_WAIT: Duration = Duration::from_millis(50);
/// Every this many pulls an emulator puller does not wait, to keep measuring overlapped pulls.
pub(super) const PACE_PROBE_EVERY: u64 = 32;

/// Pull pacing against an emulator.
///
/// The Pub/Sub emulator (`cloud-pubsub-emulator` 0.8.x, `MessageBacklog.updateExpiredAckDeadlines`)
/// rebuilds its set of undelivered messages, a copy of the whole backlog, on every `Pull` made while
/// any message of the subscription is delivered and not yet acked or nacked. A `Pull` issued after
/// every earlier ack was confirmed skips that copy. With 200,000 messages backlogged an overlapped pull
/// costs milliseconds more, which made the source several times slower than a pull-then-ack loop.
///
/// The puller therefore waits for the outstanding acks to be confirmed before pulling, but never
/// longer than an overlapped pull was measured to cost extra over a pull made with nothing
/// outstanding (exponential averages of both, updated on every non-empty pull; every
/// [`PACE_PROBE_EVERY`]th pull does not wait, to keep the overlapped estimate current). A slow
/// pipeline (acks arriving later than that) keeps overlapping pulls with processing as before, and
/// while no clear pull was ever measured only every [`PACE_PROBE_EVERY`]th pull waits (to measure
/// one); on a small backlog the two costs are equal and nobody waits. Not used against real Pub/Sub.
#[derive(Debug, Default)]
pub(super) struct PullPace {
    /// Average pull time (seconds) with nothing unconfirmed, and with acks outstanding.
    pub(super) clear: Option<f64>,
    pub(super) overlapped: Option<f64>,
    pub(super) pulls: u64,
}

impl PullPace {
    /// How long to wait for outstanding acks before the next pull (zero: pull now).
    pub(super) fn wait_limit(&mut self) -> Duration {
        self.pulls += 1;
        let probe = self.pulls.is_multiple_of(PACE_PROBE_EVERY);
        match (self.clear, self.overlapped) {
            // Every PACE_PROBE_EVERY-th pull overlaps, to keep the overlapped cost measured.
            (Some(c), Some(o)) if o > c && !probe => {
                Duration::from_secs_f64(o - c).min(PACE_MAX_WAIT)
            }
            // Clear cost unknown (acks always outstanding, e.g. a pipeline whose sinks batch for
            // longer than a pull takes): only every PACE_PROBE_EVERY-th pull waits, to measure it,
            // so such a pipeline is never throttled to one pull per PACE_MAX_WAIT.
            (None, Some(_)) if probe => PACE_MAX_WAIT,
            _ => Duration::ZERO,
        }
    }

    pub(super) fn record(&mut self, overlapped: bool, took: Duration) {
        let slot = if overlapped {
            &mut self.overlapped
        } else {
            &mut self.clear
        };
        let t = took.as_secs_f64();
        *slot = Some(slot.map_or(t, |avg| 0.8 * avg + 0.2 * t));
    }
}

pub(super) fn data_bytes(msgs: &[ReceivedMessage]) -> usize {
    msgs.iter()
        .map(|m| m.message.as_ref().map_or(0, |m| m.data.len()))
        .sum()
}

pub(super) fn backoff(attempt: u32) -> Duration {
    fluxo::backoff(PULL_BACKOFF_MIN, PULL_BACKOFF_MAX, attempt)
}

/// Unary puller: reserve budget, pull, hand over, repeat.
pub(super) async fn unary_puller(shared: Arc<Shared>, tx: mpsc::Sender<Pulled>) {
    let per_pull = shared.settings.max_messages_per_pull as usize;
    let mut errors = 0u32;
    loop {
        let overlapped = match &shared.pace {
            Some(pace) => {
                let limit = pace.lock().unwrap_or_else(|p| p.into_inner()).wait_limit();
                shared.wait_confirmed(limit).await
            }
            None => false,
        };
        let want = shared.reserve(per_pull).await;
        let req = PullRequest {
            subscription: shared.settings.subscription.clone(),
            max_messages: want as i32,
            ..Default::default()
        };
        let started = Instant::now();
        match shared.client.subscriber().pull(req, no_retry()).await {
            Ok(resp) => {
                errors = 0;
                shared.engine.set_connected(true);
                let msgs = resp.into_inner().received_messages;
                shared.stats.0.pulls.fetch_add(1, Ordering::Relaxed);
                if msgs.is_empty() {
                    shared.stats.0.empty_pulls.fetch_add(1, Ordering::Relaxed);
                    shared.unreserve(want);
                    continue;
                }
                if let Some(pace) = &shared.pace {
                    pace.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(overlapped, started.elapsed());
                }
                let bytes = data_bytes(&msgs);
                shared.received(want, msgs.len(), bytes);
                if tx.send(Pulled::Messages { msgs, bytes }).await.is_err() {
                    return;
                }
            }
            Err(status) => {
                shared.unreserve(want);
                if !on_pull_error(&shared, &tx, &status, &mut errors).await {
                    return;
                }
            }
        }
    }
}

/// Handles a failed pull or stream: false when the error is fatal (reported to the run loop).
pub(super) async fn on_pull_error(
    shared: &Shared,
    tx: &mpsc::Sender<Pulled>,
    status: &GrpcStatus,
    errors: &mut u32,
) -> bool {
    shared.stats.0.pull_errors.fetch_add(1, Ordering::Relaxed);
    *shared
        .stats
        .0
        .last_pull_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) =
        Some(format!("{:?}: {}", status.code(), status.message()));
    // DeadlineExceeded on a long pull is how an empty subscription answers on some servers.
    if status.code() != Code::DeadlineExceeded {
        shared.engine.set_connected(false);
    }
    if grpc_code_is_retriable(status.code()) {
        if status.code() != Code::DeadlineExceeded {
            tracing::warn!(subscription = %shared.settings.subscription, code = ?status.code(), message = status.message(), "Pub/Sub pull failed; retrying");
        }
        tokio::time::sleep(backoff(*errors)).await;
        *errors += 1;
        true
    } else {
        let _ = tx
            .send(Pulled::Fatal(PubsubError::rpc("pull", status)))
            .await;
        false
    }
}

/// Streaming puller: one stream, re-opened on errors; reads only while the budget has room.
pub(super) async fn streaming_puller(shared: Arc<Shared>, tx: mpsc::Sender<Pulled>) {
    let mut errors = 0u32;
    let client_id = format!("fluxo-{:016x}", fastrand::u64(..));
    loop {
        let req = StreamingPullRequest {
            subscription: shared.settings.subscription.clone(),
            stream_ack_deadline_seconds: shared.settings.ack_deadline.as_secs() as i32,
            client_id: client_id.clone(),
            max_outstanding_messages: shared.settings.max_outstanding_messages as i64,
            max_outstanding_bytes: shared.settings.max_outstanding_bytes.min(i64::MAX as usize)
                as i64,
            ..Default::default()
        };
        let mut stream = match shared
            .client
            .subscriber()
            .streaming_pull(req, Duration::from_secs(10), no_retry())
            .await
        {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if !on_pull_error(&shared, &tx, &status, &mut errors).await {
                    return;
                }
                continue;
            }
        };
        loop {
            shared.wait_for_room().await;
            match stream.message().await {
                Ok(Some(resp)) => {
                    errors = 0;
                    shared.engine.set_connected(true);
                    shared.stats.0.pulls.fetch_add(1, Ordering::Relaxed);
                    let msgs = resp.received_messages;
                    if msgs.is_empty() {
                        continue;
                    }
                    let bytes = data_bytes(&msgs);
                    shared.received(0, msgs.len(), bytes);
                    if tx.send(Pulled::Messages { msgs, bytes }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    if !on_pull_error(&shared, &tx, &status, &mut errors).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_waits_at_most_the_measured_overlap_cost() {
        let mut p = PullPace::default();
        // Nothing measured: pull at once.
        assert_eq!(p.wait_limit(), Duration::ZERO);
        p.record(false, Duration::from_millis(1));
        p.record(true, Duration::from_millis(5));
        let w = p.wait_limit();
        assert!(
            w > Duration::from_micros(3900) && w < Duration::from_micros(4100),
            "{w:?}"
        );
        // Overlapping costs nothing extra (small backlog, real service): no wait.
        let mut q = PullPace::default();
        q.record(false, Duration::from_millis(3));
        q.record(true, Duration::from_millis(2));
        assert_eq!(q.wait_limit(), Duration::ZERO);
        // Clear cost never measured (acks always outstanding): only every PACE_PROBE_EVERY-th pull
        // waits, to measure it.
        let mut u = PullPace::default();
        u.record(true, Duration::from_millis(5));
        let waits: Vec<Duration> = (0..PACE_PROBE_EVERY).map(|_| u.wait_limit()).collect();
        assert!(waits[..waits.len() - 1].iter().all(|w| w.is_zero()));
        assert_eq!(waits[waits.len() - 1], PACE_MAX_WAIT);
        // Bounded, and every PACE_PROBE_EVERY-th pull does not wait.
        let mut r = PullPace::default();
        r.record(false, Duration::from_millis(1));
        r.record(true, Duration::from_secs(2));
        let waits: Vec<Duration> = (0..PACE_PROBE_EVERY).map(|_| r.wait_limit()).collect();
        assert!(waits[..waits.len() - 1].iter().all(|w| *w == PACE_MAX_WAIT));
        assert_eq!(waits[waits.len() - 1], Duration::ZERO);
    }

    #[test]
    fn backoff_is_bounded() {
        for a in 0..40 {
            assert!(backoff(a) <= PULL_BACKOFF_MAX);
        }
    }
}
