//! Counters of a running source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of a running source, readable while it runs (tests, benchmarks, tools). Acked and nacked
/// messages are also counted in the engine's source metrics.
#[derive(Debug, Clone, Default)]
pub struct PubsubSourceStats(pub(super) Arc<StatsInner>);

#[derive(Debug, Default)]
pub(super) struct StatsInner {
    pub(super) outstanding_messages: AtomicU64,
    pub(super) outstanding_bytes: AtomicU64,
    pub(super) peak_outstanding_messages: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) pulls: AtomicU64,
    pub(super) empty_pulls: AtomicU64,
    pub(super) pull_errors: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) ack_errors: AtomicU64,
    pub(super) lease_extensions: AtomicU64,
    pub(super) invalid_timestamps: AtomicU64,
    pub(super) redelivered_with_history: AtomicU64,
    pub(super) last_pull_error: Mutex<Option<String>>,
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
