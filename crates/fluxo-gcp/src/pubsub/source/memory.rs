//! What the source remembers of failed deliveries ([`FailureMemory`]) and the message ids of a pulled
//! batch ([`BatchIds`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fluxo::Status;

use crate::pubsub::message::DeliveryHistory;

/// Failed deliveries remembered per worker (message ids; the oldest are forgotten first). About 100
/// bytes each: at most about 10 MB, reached only when that many distinct messages failed.
pub(super) const FAILURE_MEMORY: usize = 100_000;

/// Failed deliveries by message id, bounded at [`FAILURE_MEMORY`] entries (oldest forgotten first).
/// An entry is taken out when its message is received again.
#[derive(Debug, Default)]
pub(super) struct FailureMemory {
    pub(super) entries: HashMap<String, (u64, DeliveryHistory)>,
    /// Insertion order as (sequence, id); an id whose entry was replaced or taken has a stale
    /// sequence here and is skipped when evicted.
    pub(super) order: VecDeque<(u64, String)>,
    pub(super) next_seq: u64,
}

impl FailureMemory {
    /// Records a failed delivery of `id`, on top of what an earlier delivery left.
    pub(super) fn record(
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

    pub(super) fn take(&mut self, id: &str) -> Option<DeliveryHistory> {
        self.entries.remove(id).map(|(_, h)| h)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Message ids of one pulled batch, in one buffer (no allocation per message), with what each
/// message already carried, so that failures can be remembered by id.
#[derive(Default)]
pub(super) struct BatchIds {
    pub(super) text: String,
    pub(super) ends: Vec<usize>,
    pub(super) earlier: Vec<(usize, Arc<DeliveryHistory>)>,
}

impl BatchIds {
    pub(super) fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    pub(super) fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
