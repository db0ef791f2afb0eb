//! The Pub/Sub source: pullers (unary `Pull` or `StreamingPull`) bounded by outstanding messages and
//! bytes, one acknowledgement batch per pull, a lease extender, and a batching acker.
//!
//! Tasks and what they own:
//! - pullers fetch messages while the outstanding limits allow it and hand them to the run loop;
//! - the run loop (the only holder of the [`SourceContext`]) turns them into elements, attaches one
//!   finalizer per message, emits, and advances the watermark;
//! - one waiter per pulled batch awaits the batch's statuses, records them, queues the ack ids for the
//!   acker (acks for delivered messages, nacks for the others) and then releases the flow-control
//!   budget;
//! - the lease extender periodically sends `ModifyAckDeadline` for the ack ids still in flight;
//! - the acker sends `Acknowledge` / `ModifyAckDeadline(0)` in chunks of `ack_batch_size`.
//!
//! Failed deliveries are remembered ([`FailureMemory`]): a message nacked because a sink refused it
//! or failed to store it comes back with its [`DeliveryHistory`], so the pipeline can dead-letter it
//! (a poison message) instead of receiving it forever.
//!
//! Emulator pacing (unary pull against an emulator only, see [`PullPace`]): the emulator copies its
//! whole undelivered backlog on every `Pull` made while any message of the subscription is delivered
//! and not yet acked, so there a puller briefly waits for the previous acks to be confirmed before
//! pulling again, for at most what an overlapped pull was measured to cost extra.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxo::{
    ack_batch_with_ids, record_id, BoxError, Element, Outcomes, Source, SourceContext, Status,
    Timestamp,
};
use gcloud_gax::grpc::{Code, Status as GrpcStatus};
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, ModifyAckDeadlineRequest, PullRequest, ReceivedMessage,
    StreamingPullRequest,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::client::{no_retry, PubsubClient};
use super::config::{Endpoint, PubsubSourceConfig, ReceiveMode, SourceSettings};
use super::message::{DeliveryHistory, PubsubMessage};
use super::sink::PubsubError;
use crate::error::{grpc_code_is_retriable, ConfigError};

/// Concurrent `Acknowledge` / `ModifyAckDeadline(0)` requests.
const ACK_CONCURRENCY: usize = 4;
/// Longest wait of a partial chunk of ack ids for more ids before it is sent.
const ACK_FLUSH: Duration = Duration::from_millis(20);
/// Attempts of one ack or lease request on retriable errors.
const ACK_ATTEMPTS: u32 = 3;
/// Backoff bounds of the pullers after an error.
const PULL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest wait of an emulator puller for outstanding acks before it pulls anyway.
const PACE_MAX_WAIT: Duration = Duration::from_millis(50);
/// Every this many pulls an emulator puller does not wait, to keep measuring overlapped pulls.
const PACE_PROBE_EVERY: u64 = 32;
/// Failed deliveries remembered per worker (message ids; the oldest are forgotten first). About 100
/// bytes each: at most about 10 MB, reached only when that many distinct messages failed.
const FAILURE_MEMORY: usize = 100_000;

/// Counters of a running source, readable while it runs (tests, benchmarks, tools). Acked and nacked
/// messages are also counted in the engine's source metrics.
#[derive(Debug, Clone, Default)]
pub struct PubsubSourceStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    outstanding_messages: AtomicU64,
    outstanding_bytes: AtomicU64,
    peak_outstanding_messages: AtomicU64,
    received: AtomicU64,
    pulls: AtomicU64,
    empty_pulls: AtomicU64,
    pull_errors: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    ack_errors: AtomicU64,
    lease_extensions: AtomicU64,
    invalid_timestamps: AtomicU64,
    redelivered_with_history: AtomicU64,
    last_pull_error: Mutex<Option<String>>,
}

impl PubsubSourceStats {
    /// Messages received and not yet acked or nacked.
    pub fn outstanding_messages(&self) -> u64 {
        self.0.outstanding_messages.load(Ordering::Relaxed)
    }
    /// Bytes of data received and not yet acked or nacked.
    pub fn outstanding_bytes(&self) -> u64 {
        self.0.outstanding_bytes.load(Ordering::Relaxed)
    }
    /// The largest [`Self::outstanding_messages`] seen.
    pub fn peak_outstanding_messages(&self) -> u64 {
        self.0.peak_outstanding_messages.load(Ordering::Relaxed)
    }
    /// Messages received.
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }
    /// Pull requests (unary) or stream responses (streaming) that returned.
    pub fn pulls(&self) -> u64 {
        self.0.pulls.load(Ordering::Relaxed)
    }
    /// Unary pulls that returned no message.
    pub fn empty_pulls(&self) -> u64 {
        self.0.empty_pulls.load(Ordering::Relaxed)
    }
    /// Failed pulls or streams.
    pub fn pull_errors(&self) -> u64 {
        self.0.pull_errors.load(Ordering::Relaxed)
    }
    /// Ack ids sent in successful `Acknowledge` requests.
    pub fn acked(&self) -> u64 {
        self.0.acked.load(Ordering::Relaxed)
    }
    /// Ack ids sent in successful `ModifyAckDeadline(0)` requests (nacks).
    pub fn nacked(&self) -> u64 {
        self.0.nacked.load(Ordering::Relaxed)
    }
    /// Ack ids whose ack or nack request failed after retries (Pub/Sub redelivers them).
    pub fn ack_errors(&self) -> u64 {
        self.0.ack_errors.load(Ordering::Relaxed)
    }
    /// Ack ids whose deadline was extended (summed over extensions).
    pub fn lease_extensions(&self) -> u64 {
        self.0.lease_extensions.load(Ordering::Relaxed)
    }
    /// The last pull or stream error, if any (`code: message`).
    pub fn last_pull_error(&self) -> Option<String> {
        self.0
            .last_pull_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Messages whose timestamp attribute was missing or invalid (publish time used instead).
    pub fn invalid_timestamps(&self) -> u64 {
        self.0.invalid_timestamps.load(Ordering::Relaxed)
    }
    /// Messages received again after a delivery this worker saw fail (they carry a
    /// [`DeliveryHistory`]).
    pub fn redelivered_with_history(&self) -> u64 {
        self.0.redelivered_with_history.load(Ordering::Relaxed)
    }
}

/// Failed deliveries by message id, bounded at [`FAILURE_MEMORY`] entries (oldest forgotten first).
/// An entry is taken out when its message is received again.
#[derive(Debug, Default)]
struct FailureMemory {
    entries: HashMap<String, (u64, DeliveryHistory)>,
    /// Insertion order as (sequence, id); an id whose entry was replaced or taken has a stale
    /// sequence here and is skipped when evicted.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

impl FailureMemory {
    /// Records a failed delivery of `id`, on top of what an earlier delivery left.
    fn record(
        &mut self,
        id: &str,
        earlier: Option<&DeliveryHistory>,
        status: Status,
        reason: Arc<str>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let history = DeliveryHistory {
            failed_deliveries: earlier.map_or(0, |h| h.failed_deliveries).saturating_add(1),
            permanent: status == Status::Rejected,
            reason,
        };
        self.entries.insert(id.to_owned(), (seq, history));
        self.order.push_back((seq, id.to_owned()));
        while self.order.len() > FAILURE_MEMORY {
            if let Some((old, id)) = self.order.pop_front() {
                if self.entries.get(&id).is_some_and(|(s, _)| *s == old) {
                    self.entries.remove(&id);
                }
            }
        }
    }

    fn take(&mut self, id: &str) -> Option<DeliveryHistory> {
        self.entries.remove(id).map(|(_, h)| h)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Message ids of one pulled batch, in one buffer (no allocation per message), with what each
/// message already carried, so that failures can be remembered by id.
#[derive(Default)]
struct BatchIds {
    text: String,
    ends: Vec<usize>,
    earlier: Vec<(usize, Arc<DeliveryHistory>)>,
}

impl BatchIds {
    fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }
}

/// Reads a subscription. Build it with [`PubsubSource::connect`] (validates the configuration, connects,
/// checks that the subscription exists) and hand it to `Pipeline::read`.
pub struct PubsubSource {
    client: PubsubClient,
    settings: SourceSettings,
    /// The subscription's own ack deadline: the lease must be renewed before it expires.
    subscription_deadline: Duration,
    stats: PubsubSourceStats,
}

impl std::fmt::Debug for PubsubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubSource")
            .field("subscription", &self.settings.subscription)
            .field("endpoint", &self.settings.endpoint)
            .field("mode", &self.settings.mode)
            .finish()
    }
}

impl PubsubSource {
    /// Validates the configuration, connects and checks that the subscription exists. Errors are one
    /// line: `Invalid` (names, limits), `Unreachable` (endpoint, credentials), `NotFound` (with the
    /// command that creates the subscription).
    pub async fn connect(config: &PubsubSourceConfig) -> Result<PubsubSource, ConfigError> {
        let settings = config.validate()?;
        let client = PubsubClient::connect(settings.endpoint.clone(), &settings.project).await?;
        let sub = client.check_subscription(&settings.subscription).await?;
        let secs = if sub.ack_deadline_seconds > 0 {
            sub.ack_deadline_seconds as u64
        } else {
            10
        };
        Ok(PubsubSource {
            client,
            settings,
            subscription_deadline: Duration::from_secs(secs),
            stats: PubsubSourceStats::default(),
        })
    }

    /// A handle on the source's counters, valid after the source is moved into a pipeline.
    pub fn stats(&self) -> PubsubSourceStats {
        self.stats.clone()
    }

    /// The subscription (`projects/P/subscriptions/S`).
    pub fn subscription(&self) -> &str {
        &self.settings.subscription
    }
}

/// Messages handed from a puller to the run loop.
enum Pulled {
    Messages {
        msgs: Vec<ReceivedMessage>,
        bytes: usize,
    },
    Fatal(PubsubError),
}

/// Ack ids of one resolved batch.
struct AckWork {
    ack: Vec<String>,
    nack: Vec<String>,
}

struct Lease {
    ack_ids: Arc<Vec<String>>,
    since: Instant,
}

/// Flow-control budget: reserved-or-received messages and received bytes.
#[derive(Default)]
struct Budget {
    messages: usize,
    bytes: usize,
}

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
struct PullPace {
    /// Average pull time (seconds) with nothing unconfirmed, and with acks outstanding.
    clear: Option<f64>,
    overlapped: Option<f64>,
    pulls: u64,
}

impl PullPace {
    /// How long to wait for outstanding acks before the next pull (zero: pull now).
    fn wait_limit(&mut self) -> Duration {
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

    fn record(&mut self, overlapped: bool, took: Duration) {
        let slot = if overlapped {
            &mut self.overlapped
        } else {
            &mut self.clear
        };
        let t = took.as_secs_f64();
        *slot = Some(slot.map_or(t, |avg| 0.8 * avg + 0.2 * t));
    }
}

struct Shared {
    client: PubsubClient,
    settings: SourceSettings,
    stats: PubsubSourceStats,
    /// The engine's handles of this source: pulls report the connection through it (readiness).
    engine: fluxo::metrics::SourceMetrics,
    budget: Mutex<Budget>,
    freed: Notify,
    leases: Mutex<HashMap<u64, Lease>>,
    /// Ack ids received whose `Acknowledge` / `ModifyAckDeadline(0)` has not returned yet.
    unconfirmed: AtomicU64,
    /// Signalled when `unconfirmed` drops to zero.
    confirmed: Notify,
    /// Pull pacing (unary pull against an emulator only).
    pace: Option<Mutex<PullPace>>,
    /// Failed deliveries, and their count (read without the lock on every batch).
    failures: Mutex<FailureMemory>,
    remembered: AtomicUsize,
}

impl Shared {
    /// Remembers the failed deliveries of a resolved batch.
    fn remember_failures(&self, ids: &BatchIds, outcomes: &Outcomes) {
        if outcomes.statuses.iter().all(|s| s.is_delivered()) {
            return;
        }
        let mut memory = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let unknown: Arc<str> = Arc::from("not stored (no reason reported)");
        // Both lists are in index order: walk them alongside the statuses.
        let mut reasons = outcomes.failures.iter().peekable();
        let mut earlier = ids.earlier.iter().peekable();
        for (i, status) in outcomes.statuses.iter().enumerate() {
            let reason = reasons.next_if(|f| f.index == i).map(|f| f.reason.clone());
            let before = earlier.next_if(|(at, _)| *at == i).map(|(_, h)| h.as_ref());
            if status.is_delivered() {
                continue;
            }
            let Some(id) = ids.get(i) else { continue };
            memory.record(
                id,
                before,
                *status,
                reason.unwrap_or_else(|| unknown.clone()),
            );
        }
        self.remembered.store(memory.len(), Ordering::Release);
    }

    /// The remembered history of a message being received again (taken out of the memory).
    fn history_of(&self, id: &str) -> Option<DeliveryHistory> {
        if self.remembered.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.take(id);
        self.remembered.store(m.len(), Ordering::Release);
        h
    }

    fn lock_budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ack or nack requests for `n` ids returned (successfully or not).
    fn confirmed(&self, n: u64) {
        let before = self
            .unconfirmed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        if before <= n {
            self.confirmed.notify_waiters();
        }
    }

    /// Waits at most `limit` for every received ack id to be confirmed; true when some are still
    /// outstanding (the next pull overlaps them).
    async fn wait_confirmed(&self, limit: Duration) -> bool {
        if limit.is_zero() {
            return self.unconfirmed.load(Ordering::Acquire) > 0;
        }
        let wait = async {
            loop {
                let done = self.confirmed.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.unconfirmed.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.unconfirmed.load(Ordering::Acquire) > 0
    }

    /// Waits until at least one message fits the budget; reserves up to `want` messages.
    async fn reserve(&self, want: usize) -> usize {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut b = self.lock_budget();
                let free = self
                    .settings
                    .max_outstanding_messages
                    .saturating_sub(b.messages);
                if free > 0 && b.bytes < self.settings.max_outstanding_bytes {
                    let n = free.min(want);
                    b.messages += n;
                    return n;
                }
            }
            freed.await;
        }
    }

    /// Waits until the budget has room (streaming: the server does its own flow control).
    async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let b = self.lock_budget();
                if b.messages < self.settings.max_outstanding_messages
                    && b.bytes < self.settings.max_outstanding_bytes
                {
                    return;
                }
            }
            freed.await;
        }
    }

    /// Accounts for received messages (`reserved` of them were reserved before the pull).
    fn received(&self, reserved: usize, got: usize, bytes: usize) {
        let s = &self.stats.0;
        let mut b = self.lock_budget();
        b.messages = b.messages.saturating_sub(reserved) + got;
        b.bytes += bytes;
        s.outstanding_bytes.store(b.bytes as u64, Ordering::Relaxed);
        drop(b);
        self.unconfirmed.fetch_add(got as u64, Ordering::AcqRel);
        let now = s
            .outstanding_messages
            .fetch_add(got as u64, Ordering::Relaxed)
            + got as u64;
        s.peak_outstanding_messages
            .fetch_max(now, Ordering::Relaxed);
        s.received.fetch_add(got as u64, Ordering::Relaxed);
        if reserved > got {
            self.freed.notify_waiters();
        }
    }

    /// Returns an unused reservation.
    fn unreserve(&self, n: usize) {
        if n > 0 {
            let mut b = self.lock_budget();
            b.messages = b.messages.saturating_sub(n);
            drop(b);
            self.freed.notify_waiters();
        }
    }

    /// Releases resolved messages.
    fn release(&self, messages: usize, bytes: usize) {
        let s = &self.stats.0;
        let mut b = self.lock_budget();
        b.messages = b.messages.saturating_sub(messages);
        b.bytes = b.bytes.saturating_sub(bytes);
        s.outstanding_bytes.store(b.bytes as u64, Ordering::Relaxed);
        drop(b);
        s.outstanding_messages
            .fetch_sub(messages as u64, Ordering::Relaxed);
        self.freed.notify_waiters();
    }
}

fn data_bytes(msgs: &[ReceivedMessage]) -> usize {
    msgs.iter()
        .map(|m| m.message.as_ref().map_or(0, |m| m.data.len()))
        .sum()
}

fn backoff(attempt: u32) -> Duration {
    fluxo::backoff(PULL_BACKOFF_MIN, PULL_BACKOFF_MAX, attempt)
}

/// Unary puller: reserve budget, pull, hand over, repeat.
async fn unary_puller(shared: Arc<Shared>, tx: mpsc::Sender<Pulled>) {
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
async fn on_pull_error(
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
async fn streaming_puller(shared: Arc<Shared>, tx: mpsc::Sender<Pulled>) {
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

/// Sends ack ids in chunks, a few requests at a time, retrying transient failures.
async fn acker(shared: Arc<Shared>, mut rx: mpsc::Receiver<AckWork>) {
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

async fn send_ack(shared: &Shared, ack_ids: Vec<String>) -> bool {
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

async fn send_modack(shared: &Shared, ack_ids: Vec<String>, seconds: i32) -> bool {
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

async fn retry_rpc<F, Fut, R>(op: &str, shared: &Shared, mut f: F) -> bool
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
async fn lease_extender(shared: Arc<Shared>, period: Duration) {
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

/// Event time from an attribute: integer milliseconds since the epoch, or RFC 3339.
fn parse_event_time(v: &str) -> Option<Timestamp> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Some(Timestamp::from_millis(ms));
    }
    v.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| Timestamp::from_micros(t.as_microsecond()))
}

impl Source for PubsubSource {
    type Output = PubsubMessage;

    fn register_metrics(&mut self, metrics: &fluxo::MetricScope) {
        crate::metrics::register_pubsub_source(metrics, &self.stats);
    }

    async fn run(self, mut ctx: SourceContext<PubsubMessage>) -> Result<(), BoxError> {
        let settings = self.settings.clone();
        let shared = Arc::new(Shared {
            client: self.client,
            settings: self.settings,
            stats: self.stats,
            engine: ctx.metrics().clone(),
            budget: Mutex::new(Budget::default()),
            freed: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            unconfirmed: AtomicU64::new(0),
            confirmed: Notify::new(),
            pace: (settings.mode == ReceiveMode::Pull
                && matches!(settings.endpoint, Endpoint::Emulator(_)))
            .then(|| Mutex::new(PullPace::default())),
            failures: Mutex::new(FailureMemory::default()),
            remembered: AtomicUsize::new(0),
        });
        let metrics = ctx.metrics().clone();
        let (tx, mut rx) = mpsc::channel::<Pulled>(settings.concurrent_pulls * 2);
        let (ack_tx, ack_rx) = mpsc::channel::<AckWork>(64);
        let mut pullers = JoinSet::new();
        for _ in 0..settings.concurrent_pulls {
            let (shared, tx) = (Arc::clone(&shared), tx.clone());
            match settings.mode {
                // `Auto` is resolved by the settings; unary pull is the fallback.
                ReceiveMode::Pull | ReceiveMode::Auto => pullers.spawn(unary_puller(shared, tx)),
                ReceiveMode::StreamingPull => pullers.spawn(streaming_puller(shared, tx)),
            };
        }
        drop(tx);
        let acker = tokio::spawn(acker(Arc::clone(&shared), ack_rx));
        let period =
            (self.subscription_deadline.min(settings.ack_deadline) / 3).max(Duration::from_secs(1));
        let leaser = tokio::spawn(lease_extender(Arc::clone(&shared), period));
        tracing::info!(subscription = %settings.subscription, endpoint = %settings.endpoint, mode = ?settings.mode, "Pub/Sub source started");

        let mut waiters: JoinSet<()> = JoinSet::new();
        let mut next_batch = 0u64;
        let mut newest = Timestamp::MIN;
        let mut last_message = Instant::now();
        let mut idle_tick =
            tokio::time::interval((settings.idle_after / 4).max(Duration::from_millis(10)));
        idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned_timestamp = false;
        let shutdown = ctx.shutdown().clone();
        let mut fatal: Option<PubsubError> = None;

        loop {
            let pulled = tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                p = rx.recv() => p,
                Some(_) = waiters.join_next(), if !waiters.is_empty() => continue,
                _ = idle_tick.tick() => {
                    if last_message.elapsed() >= settings.idle_after {
                        if settings.timestamp_attribute.is_none() {
                            ctx.advance_watermark(Timestamp::now().minus(settings.watermark_skew));
                        }
                        ctx.mark_idle();
                    }
                    continue;
                }
            };
            let (msgs, bytes) = match pulled {
                Some(Pulled::Messages { msgs, bytes }) => (msgs, bytes),
                Some(Pulled::Fatal(e)) => {
                    tracing::error!(subscription = %settings.subscription, error = %e, "Pub/Sub source stopping");
                    fatal = Some(e);
                    break;
                }
                None => break,
            };
            last_message = Instant::now();
            let n = msgs.len();
            // The message id survives redelivery: grouping steps use it not to count a
            // redelivered message twice (fluxo::ack_batch_with_ids).
            let record_ids = msgs
                .iter()
                .map(|rm| {
                    rm.message
                        .as_ref()
                        .map_or(0, |m| record_id(m.message_id.as_bytes()))
                })
                .collect();
            let (fins, acks) = ack_batch_with_ids(record_ids);
            let mut ack_ids = Vec::with_capacity(n);
            let mut elements = Vec::with_capacity(n);
            let mut batch_max = Timestamp::MIN;
            let mut ids = BatchIds {
                text: String::with_capacity(n * 20),
                ends: Vec::with_capacity(n),
                earlier: Vec::new(),
            };
            for (rm, fin) in msgs.into_iter().zip(fins) {
                ack_ids.push(rm.ack_id);
                // A received message without a body has nothing to process: its finalizer drops now
                // (delivered) and it is acked.
                let Some(m) = rm.message else {
                    ids.push("");
                    continue;
                };
                let mut msg = PubsubMessage::from_raw(m, rm.delivery_attempt);
                ids.push(&msg.message_id);
                if let Some(h) = shared.history_of(&msg.message_id) {
                    shared
                        .stats
                        .0
                        .redelivered_with_history
                        .fetch_add(1, Ordering::Relaxed);
                    let h = Arc::new(h);
                    ids.earlier.push((ids.ends.len() - 1, Arc::clone(&h)));
                    msg.history = Some(h);
                }
                let ts = match &settings.timestamp_attribute {
                    None => msg.publish_time,
                    Some(attr) => {
                        match msg.attributes.get(attr).and_then(|v| parse_event_time(v)) {
                            Some(t) => t,
                            None => {
                                shared
                                    .stats
                                    .0
                                    .invalid_timestamps
                                    .fetch_add(1, Ordering::Relaxed);
                                if !warned_timestamp {
                                    warned_timestamp = true;
                                    tracing::warn!(subscription = %settings.subscription, attribute = %attr, message_id = %msg.message_id, "missing or invalid timestamp attribute; using the publish time (counted in invalid_timestamps, logged once)");
                                }
                                msg.publish_time
                            }
                        }
                    }
                };
                batch_max = batch_max.max(ts);
                elements.push(Element::new(msg, ts).with_finalizers(fin));
            }
            let ack_ids = Arc::new(ack_ids);
            let id = next_batch;
            next_batch += 1;
            shared.lock_leases().insert(
                id,
                Lease {
                    ack_ids: Arc::clone(&ack_ids),
                    since: Instant::now(),
                },
            );
            drop(ack_ids);
            let (shared2, ack_tx2, metrics2) =
                (Arc::clone(&shared), ack_tx.clone(), metrics.clone());
            waiters.spawn(async move {
                let outcomes = acks.wait_outcomes().await;
                // Before the nacks go out, so that a redelivery finds the history.
                shared2.remember_failures(&ids, &outcomes);
                let statuses = outcomes.statuses;
                let (mut ok, mut err, mut rej) = (0, 0, 0);
                for s in &statuses {
                    match s {
                        Status::Delivered => ok += 1,
                        Status::Errored => err += 1,
                        Status::Rejected => rej += 1,
                    }
                }
                metrics2.acked.inc_by(ok);
                metrics2.nacked.inc_by(err + rej);
                metrics2.rejected.inc_by(rej);
                let lease = shared2.lock_leases().remove(&id);
                if let Some(lease) = lease {
                    let ids = Arc::try_unwrap(lease.ack_ids).unwrap_or_else(|a| (*a).clone());
                    let work = if err + rej == 0 {
                        AckWork {
                            ack: ids,
                            nack: Vec::new(),
                        }
                    } else {
                        let mut w = AckWork {
                            ack: Vec::new(),
                            nack: Vec::new(),
                        };
                        for (id, s) in ids.into_iter().zip(
                            statuses
                                .iter()
                                .copied()
                                .chain(std::iter::repeat(Status::Errored)),
                        ) {
                            if s.is_delivered() {
                                w.ack.push(id)
                            } else {
                                w.nack.push(id)
                            }
                        }
                        w
                    };
                    let _ = ack_tx2.send(work).await;
                }
                shared2.release(n, bytes);
            });
            if ctx.emit(elements).await.is_err() {
                break;
            }
            if batch_max > newest {
                newest = batch_max;
                ctx.advance_watermark(newest.minus(settings.watermark_skew));
            }
        }

        // Shutdown: stop pulling, hand back what was pulled but not emitted, let the pipeline drain,
        // then ack or nack everything that resolved.
        pullers.abort_all();
        while pullers.join_next().await.is_some() {}
        rx.close();
        while let Ok(p) = rx.try_recv() {
            if let Pulled::Messages { msgs, bytes } = p {
                let n = msgs.len();
                let nack = msgs.into_iter().map(|m| m.ack_id).collect();
                let _ = ack_tx
                    .send(AckWork {
                        ack: Vec::new(),
                        nack,
                    })
                    .await;
                shared.release(n, bytes);
            }
        }
        ctx.close_output();
        let drained = tokio::time::timeout(settings.shutdown_timeout, async {
            while waiters.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let left: Vec<String> = shared
                .lock_leases()
                .drain()
                .flat_map(|(_, l)| Arc::try_unwrap(l.ack_ids).unwrap_or_else(|a| (*a).clone()))
                .collect();
            tracing::warn!(subscription = %settings.subscription, messages = left.len(), "shutdown timeout: nacking messages still in flight");
            waiters.abort_all();
            let _ = ack_tx
                .send(AckWork {
                    ack: Vec::new(),
                    nack: left,
                })
                .await;
        }
        leaser.abort();
        drop(ack_tx);
        if tokio::time::timeout(Duration::from_secs(10), acker)
            .await
            .is_err()
        {
            tracing::warn!(subscription = %settings.subscription, "acks not confirmed within 10 s after shutdown; Pub/Sub may redeliver them");
        }
        tracing::info!(subscription = %settings.subscription, received = shared.stats.received(), acked = shared.stats.acked(), nacked = shared.stats.nacked(), "Pub/Sub source stopped");
        match fatal {
            Some(e) => Err(Box::new(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_attribute() {
        assert_eq!(
            parse_event_time("1700000000123"),
            Some(Timestamp::from_millis(1_700_000_000_123))
        );
        assert_eq!(
            parse_event_time("2021-05-24T20:21:34.5Z"),
            Some(Timestamp::from_micros(1_621_887_694_500_000))
        );
        assert_eq!(
            parse_event_time("2021-05-24T17:21:34.5-03:00"),
            Some(Timestamp::from_micros(1_621_887_694_500_000))
        );
        assert_eq!(parse_event_time("yesterday"), None);
        assert_eq!(parse_event_time("2021-05-24T20:21:34"), None);
    }

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
    fn failure_memory_counts_failed_deliveries_and_forgets_the_oldest() {
        let mut m = FailureMemory::default();
        let reason: Arc<str> = Arc::from("BigQuery: invalid row");
        m.record("a", None, Status::Errored, reason.clone());
        let first = m.take("a").unwrap();
        assert_eq!((first.failed_deliveries, first.permanent), (1, false));
        assert!(m.take("a").is_none(), "taken on redelivery");
        m.record("a", Some(&first), Status::Rejected, reason.clone());
        let second = m.take("a").unwrap();
        assert_eq!((second.failed_deliveries, second.permanent), (2, true));
        assert_eq!(&*second.reason, "BigQuery: invalid row");

        // Bounded: the oldest are forgotten; a replaced entry is not evicted by its stale slot.
        m.record("keep", None, Status::Errored, reason.clone());
        m.record("keep", None, Status::Errored, reason.clone());
        for i in 0..FAILURE_MEMORY - 1 {
            m.record(&i.to_string(), None, Status::Errored, reason.clone());
        }
        assert!(m.len() <= FAILURE_MEMORY);
        assert!(
            m.take("keep").is_some(),
            "the newer record of `keep` survives"
        );
        assert!(m.take("0").is_some());
        // Three more records push out the stale slots of `keep` and `0`, then `1`, the oldest.
        for id in ["x", "y", "z"] {
            m.record(id, None, Status::Errored, reason.clone());
        }
        assert!(m.take("1").is_none(), "the oldest entry was evicted");
        assert!(m.take("2").is_some());
        assert!(m.order.len() <= FAILURE_MEMORY);
    }

    #[test]
    fn batch_ids_index_one_buffer() {
        let mut ids = BatchIds::default();
        for id in ["17", "", "123456789"] {
            ids.push(id);
        }
        assert_eq!(
            (ids.get(0), ids.get(1), ids.get(2), ids.get(3)),
            (Some("17"), Some(""), Some("123456789"), None)
        );
    }

    #[test]
    fn backoff_is_bounded() {
        for a in 0..40 {
            assert!(backoff(a) <= PULL_BACKOFF_MAX);
        }
    }
}
