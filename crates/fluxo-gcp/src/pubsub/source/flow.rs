//! The state the source's tasks share ([`Shared`]): the flow-control budget, the leases, the
//! unconfirmed acknowledgements, the failure memory; and what the tasks hand each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxo::Outcomes;
use gcloud_googleapis::pubsub::v1::ReceivedMessage;
use tokio::sync::Notify;

use super::memory::{BatchIds, FailureMemory};
use super::pull::PullPace;
use super::stats::PubsubSourceStats;
use crate::pubsub::client::PubsubClient;
use crate::pubsub::config::SourceSettings;
use crate::pubsub::message::DeliveryHistory;
use crate::pubsub::sink::PubsubError;

/// Messages handed from a puller to the run loop.
pub(super) enum Pulled {
    Messages {
        msgs: Vec<ReceivedMessage>,
        bytes: usize,
    },
    Fatal(PubsubError),
}

/// Ack ids of one resolved batch.
pub(super) struct AckWork {
    pub(super) ack: Vec<String>,
    pub(super) nack: Vec<String>,
}

pub(super) struct Lease {
    pub(super) ack_ids: Arc<Vec<String>>,
    pub(super) since: Instant,
}

/// Flow-control budget: reserved-or-received messages and received bytes.
#[derive(Default)]
pub(super) struct Budget {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

pub(super) struct Shared {
    pub(super) client: PubsubClient,
    pub(super) settings: SourceSettings,
    pub(super) stats: PubsubSourceStats,
    /// The engine's handles of this source: pulls report the connection through it (readiness).
    pub(super) engine: fluxo::metrics::SourceMetrics,
    pub(super) budget: Mutex<Budget>,
    pub(super) freed: Notify,
    pub(super) leases: Mutex<HashMap<u64, Lease>>,
    /// Ack ids received whose `Acknowledge` / `ModifyAckDeadline(0)` has not returned yet.
    pub(super) unconfirmed: AtomicU64,
    /// Signalled when `unconfirmed` drops to zero.
    pub(super) confirmed: Notify,
    /// Pull pacing (unary pull against an emulator only).
    pub(super) pace: Option<Mutex<PullPace>>,
    /// Failed deliveries, and their count (read without the lock on every batch).
    pub(super) failures: Mutex<FailureMemory>,
    pub(super) remembered: AtomicUsize,
}

impl Shared {
    /// Remembers the failed deliveries of a resolved batch.
    pub(super) fn remember_failures(&self, ids: &BatchIds, outcomes: &Outcomes) {
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
    pub(super) fn history_of(&self, id: &str) -> Option<DeliveryHistory> {
        if self.remembered.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.take(id);
        self.remembered.store(m.len(), Ordering::Release);
        h
    }

    pub(super) fn lock_budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ack or nack requests for `n` ids returned (successfully or not).
    pub(super) fn confirmed(&self, n: u64) {
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
    pub(super) async fn wait_confirmed(&self, limit: Duration) -> bool {
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
    pub(super) async fn reserve(&self, want: usize) -> usize {
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
    pub(super) async fn wait_for_room(&self) {
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
    pub(super) fn received(&self, reserved: usize, got: usize, bytes: usize) {
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
    pub(super) fn unreserve(&self, n: usize) {
        if n > 0 {
            let mut b = self.lock_budget();
            b.messages = b.messages.saturating_sub(n);
            drop(b);
            self.freed.notify_waiters();
        }
    }

    /// Releases resolved messages.
    pub(super) fn release(&self, messages: usize, bytes: usize) {
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
