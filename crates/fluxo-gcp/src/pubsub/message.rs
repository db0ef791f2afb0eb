//! The element types: a received message, and what the sink publishes.

use std::collections::HashMap;

use bytes::Bytes;
use fluxo::{Data, Timestamp};

/// Per-entry overhead counted for a map entry or a string in the size estimate.
const ENTRY_OVERHEAD: usize = 2 * std::mem::size_of::<String>();

fn attributes_size(attributes: &HashMap<String, String>) -> usize {
    attributes
        .iter()
        .map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD)
        .sum()
}

/// A message received from a subscription, as the pipeline sees it. The payload is the buffer the gRPC
/// decoder allocated, moved into [`Bytes`] without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubMessage {
    /// The payload.
    pub data: Bytes,
    /// Attributes.
    pub attributes: HashMap<String, String>,
    /// Server-assigned message id.
    pub message_id: String,
    /// When the server accepted the message.
    pub publish_time: Timestamp,
    /// Ordering key (empty when none).
    pub ordering_key: String,
    /// Delivery attempt, counted by Pub/Sub only when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
    /// What this worker saw happen to earlier deliveries of this message, when it remembers any
    /// (see [`DeliveryHistory`]).
    pub history: Option<std::sync::Arc<DeliveryHistory>>,
}

/// Earlier deliveries of a message that this worker failed to store, remembered by the source
/// across redeliveries (bounded memory, per worker). Lets a pipeline turn a message that a sink
/// refused, or that keeps failing, into a dead letter instead of redelivering it forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryHistory {
    /// Earlier deliveries of this message that this worker saw fail.
    pub failed_deliveries: u32,
    /// True when the last failure was a permanent refusal by a sink.
    pub permanent: bool,
    /// The last failure's reason (`<sink>: <error>`).
    pub reason: std::sync::Arc<str>,
}

impl Data for PubsubMessage {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.data.len()
            + attributes_size(&self.attributes)
            + self.message_id.len()
            + self.ordering_key.len()
    }
}

impl PubsubMessage {
    /// This delivery's number (1 for the first): Pub/Sub's count when the subscription has a
    /// dead-letter policy, or this worker's own count of failed deliveries plus one, whichever is
    /// higher; `None` when neither is known.
    pub fn delivery_count(&self) -> Option<u32> {
        let local = self
            .history
            .as_ref()
            .map(|h| h.failed_deliveries.saturating_add(1));
        match (self.delivery_attempt, local) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn from_raw(
        m: gcloud_googleapis::pubsub::v1::PubsubMessage,
        delivery_attempt: i32,
    ) -> PubsubMessage {
        let publish_time = m
            .publish_time
            .map(|t| {
                Timestamp::from_micros(
                    t.seconds
                        .saturating_mul(1_000_000)
                        .saturating_add(i64::from(t.nanos) / 1000),
                )
            })
            .unwrap_or(Timestamp::MIN);
        PubsubMessage {
            // Already a `Bytes` slice of the received buffer: no copy.
            data: m.data,
            attributes: m.attributes,
            message_id: m.message_id,
            publish_time,
            ordering_key: m.ordering_key,
            delivery_attempt: u32::try_from(delivery_attempt).ok().filter(|a| *a > 0),
            history: None,
        }
    }
}

/// A message to publish: payload, attributes and an optional ordering key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubsubOut {
    /// The payload.
    pub data: Bytes,
    /// Attributes.
    pub attributes: HashMap<String, String>,
    /// Ordering key (messages with the same key are delivered in publish order to subscriptions with
    /// ordering enabled; publish them through a sink with `max_in_flight = 1`).
    pub ordering_key: Option<String>,
}

impl PubsubOut {
    /// A message with this payload and nothing else.
    pub fn new(data: impl Into<Bytes>) -> Self {
        PubsubOut {
            data: data.into(),
            ..Default::default()
        }
    }

    /// Adds an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Adds an attribute whose value is clipped to Pub/Sub's value limit
    /// ([`super::MAX_ATTRIBUTE_VALUE_BYTES`]) with a marker (see [`clip_attribute_value`]), for values
    /// that come from data and may be long (cursors, error lists).
    pub fn with_clipped_attribute(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let value = value.into();
        let value = match clip_attribute_value(&value) {
            std::borrow::Cow::Borrowed(_) => value,
            std::borrow::Cow::Owned(v) => v,
        };
        self.with_attribute(key, value)
    }

    /// Sets the ordering key.
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }
}

impl Data for PubsubOut {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.data.len()
            + attributes_size(&self.attributes)
            + self.ordering_key.as_ref().map_or(0, String::len)
    }
}

/// `value` unchanged when it fits Pub/Sub's attribute value limit
/// ([`super::MAX_ATTRIBUTE_VALUE_BYTES`]), else its longest prefix (cut at a character boundary)
/// followed by the marker `...[+N bytes]` (N: the bytes cut off), the whole within the limit.
pub fn clip_attribute_value(value: &str) -> std::borrow::Cow<'_, str> {
    fluxo::text::clip(value, super::MAX_ATTRIBUTE_VALUE_BYTES)
}

/// How a value becomes a Pub/Sub message in [`super::PubsubSink`]. Implemented for [`PubsubOut`],
/// [`PubsubMessage`] (republishing), `Vec<u8>` and `String` (payload only). Implement it for
/// your own types to publish them without an intermediate value.
pub trait ToPubsub: Data {
    /// The payload: a cheap reference-counted handle when the value holds [`Bytes`] (no copy), else a
    /// copy.
    fn pubsub_data(&self) -> Bytes;

    /// The attributes. Default: none.
    fn pubsub_attributes(&self) -> Option<&HashMap<String, String>> {
        None
    }

    /// The ordering key. Default: none.
    fn pubsub_ordering_key(&self) -> Option<&str> {
        None
    }
}

impl ToPubsub for PubsubOut {
    fn pubsub_data(&self) -> Bytes {
        self.data.clone()
    }
    fn pubsub_attributes(&self) -> Option<&HashMap<String, String>> {
        Some(&self.attributes)
    }
    fn pubsub_ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }
}

impl ToPubsub for PubsubMessage {
    fn pubsub_data(&self) -> Bytes {
        self.data.clone()
    }
    fn pubsub_attributes(&self) -> Option<&HashMap<String, String>> {
        Some(&self.attributes)
    }
    fn pubsub_ordering_key(&self) -> Option<&str> {
        Some(self.ordering_key.as_str()).filter(|k| !k.is_empty())
    }
}

impl ToPubsub for Vec<u8> {
    fn pubsub_data(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl ToPubsub for String {
    fn pubsub_data(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_values_fit_the_limit_and_say_what_was_cut() {
        let limit = crate::pubsub::MAX_ATTRIBUTE_VALUE_BYTES;
        assert_eq!(clip_attribute_value("short"), "short");
        let exact = "x".repeat(limit);
        assert_eq!(clip_attribute_value(&exact), exact.as_str());
        for len in [limit + 1, limit + 7, 5 * limit, 1 << 20] {
            // Multi-byte characters: the cut lands on a character boundary.
            let v = "é".repeat(len / 2 + 1);
            let c = clip_attribute_value(&v);
            assert!(c.len() <= limit, "{} > {limit}", c.len());
            let (head, marker) = c.split_once("...[+").unwrap();
            assert!(v.starts_with(head));
            let cut: usize = marker.trim_end_matches(" bytes]").parse().unwrap();
            assert_eq!(head.len() + cut, v.len());
        }
        let out = PubsubOut::new("d").with_clipped_attribute("k", "y".repeat(5000));
        // 1,024 bytes: 1,008 kept, then the 16-byte marker for the 3,992 cut.
        assert_eq!(out.attributes["k"].len(), limit);
        assert!(out.attributes["k"].ends_with("y...[+3992 bytes]"));
    }
}
