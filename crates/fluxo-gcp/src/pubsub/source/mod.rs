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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxo::{
    ack_batch_with_ids, record_id, BoxError, Element, Source, SourceContext, Status, Timestamp,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::error::ConfigError;
use crate::pubsub::client::PubsubClient;
use crate::pubsub::config::{PubsubSourceConfig, ReceiveMode, SourceSettings};
use crate::pubsub::message::PubsubMessage;
use crate::pubsub::sink::PubsubError;

mod ack;
mod flow;
mod memory;
mod pull;
mod stats;

pub use stats::PubsubSourceStats;

use ack::{acker, lease_extender};
use flow::{AckWork, Budget, Lease, Pulled, Shared};
use memory::{BatchIds, FailureMemory};
use pull::{streaming_puller, unary_puller, PullPace};

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
            pace: (settings.mode == ReceiveMode::Pull && settings.endpoint.paces_unary_pulls())
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
}
