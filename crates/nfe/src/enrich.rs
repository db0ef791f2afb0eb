//! Enrichment: the canonical invoice model the sinks use.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::hash::ContentHash;
use crate::money::decimal_string;
use crate::time::{date_string, local_date, option_timestamp_string, timestamp_string, Moment};
use crate::validate::ValidRecord;

/// A validated, enriched invoice. Money serializes as exact decimal strings (`"318.90"`),
/// instants as RFC 3339 UTC, dates as `YYYY-MM-DD`, the hash as hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `NFeID`.
    pub nfe_id: i64,
    /// `NFeNumber`.
    pub nfe_number: i64,
    /// `EmissionDate`, resolved to UTC, with the original text.
    pub emission: Moment,
    /// `CreateDate`, resolved to UTC, with the original text.
    pub creation: Moment,
    /// Event time of the invoice: the emission instant (see `docs/validation.md`).
    #[serde(with = "timestamp_string")]
    pub event_time: Timestamp,
    /// Civil date of the emission in the validation zone (Sao Paulo): the partition date.
    #[serde(with = "date_string")]
    pub emission_date: Date,
    /// `Discount`.
    #[serde(with = "decimal_string")]
    pub discount: Decimal,
    /// Sum of the line totals.
    #[serde(with = "decimal_string")]
    pub gross: Decimal,
    /// `gross - discount`.
    #[serde(with = "decimal_string")]
    pub net: Decimal,
    /// Number of items.
    pub item_count: u32,
    /// Items, in source order.
    pub items: Vec<Line>,
    /// Hash of the canonical form of the source record.
    pub content_hash: ContentHash,
    /// Where and how the record entered the pipeline, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestMeta>,
}

/// One enriched item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// 1-based position in `ItemList`.
    pub line_number: u32,
    /// Display name: trimmed, Unicode NFC, case kept.
    pub product_name: String,
    /// Folded key: display name with whitespace runs collapsed to one space, lowercased.
    pub product_key: String,
    /// `Value`.
    #[serde(with = "decimal_string")]
    pub unit_value: Decimal,
    /// `Quantity`.
    #[serde(with = "decimal_string")]
    pub quantity: Decimal,
    /// `unit_value x quantity`, exact.
    #[serde(with = "decimal_string")]
    pub line_total: Decimal,
}

/// Ingestion metadata attached by the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMeta {
    /// Pub/Sub message id.
    pub message_id: Option<String>,
    /// Pub/Sub publish time.
    #[serde(default, with = "option_timestamp_string")]
    pub publish_time: Option<Timestamp>,
    /// Worker (replica) that processed the record.
    pub worker: Option<String>,
    /// Pipeline version.
    pub version: Option<String>,
}

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::capacity)
}

impl Invoice {
    /// Approximate memory of the invoice, heap included (what a pipeline's buffer bounds count):
    /// the struct, every item and every owned text. Walks the items once.
    pub fn memory_bytes(&self) -> usize {
        let lines: usize = self
            .items
            .iter()
            .map(|l| l.product_name.capacity() + l.product_key.capacity())
            .sum();
        let ingest = self.ingest.as_ref().map_or(0, |m| {
            opt_len(&m.message_id) + opt_len(&m.worker) + opt_len(&m.version)
        });
        std::mem::size_of::<Self>()
            + self.items.capacity() * std::mem::size_of::<Line>()
            + lines
            + self.emission.original.capacity()
            + self.creation.original.capacity()
            + ingest
    }

    /// Attaches ingestion metadata.
    pub fn with_ingest(mut self, meta: IngestMeta) -> Self {
        self.ingest = Some(meta);
        self
    }
}

/// A product name normalized for display and for matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductName {
    /// Trimmed, NFC, case kept.
    pub display: String,
    /// Display form with whitespace runs collapsed to one space and lowercased (Unicode default
    /// lowercase mapping), NFC.
    pub key: String,
}

fn nfc(s: &str) -> Option<String> {
    if s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes {
        None
    } else {
        Some(s.nfc().collect())
    }
}

/// Normalizes a product name, reusing `raw`'s buffer when it is already normal.
pub fn normalize_product_name(raw: String) -> ProductName {
    let trimmed = raw.trim();
    let display = match nfc(trimmed) {
        Some(n) => n,
        None if trimmed.len() == raw.len() => raw,
        None => trimmed.to_owned(),
    };
    // One pass: whitespace runs become one space, ASCII is lowered in place, other characters
    // through the Unicode lowercase mapping (which may need a new NFC pass when it changes one).
    let mut key = String::with_capacity(display.len());
    let mut space = false;
    let mut renormalize = false;
    for c in display.chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space {
            key.push(' ');
            space = false;
        }
        if c.is_ascii() {
            key.push(c.to_ascii_lowercase());
        } else {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) if l == c => key.push(c),
                (Some(l), None) => {
                    renormalize = true;
                    key.push(l);
                }
                (first, second) => {
                    renormalize = true;
                    key.extend(first.into_iter().chain(second).chain(lower));
                }
            }
        }
    }
    if renormalize {
        if let Some(n) = nfc(&key) {
            key = n;
        }
    }
    ProductName { display, key }
}

/// Enriches a validated record. `zone` gives the emission's civil date (the partition date).
pub fn enrich(record: ValidRecord, zone: &TimeZone) -> Invoice {
    let ValidRecord {
        source,
        emission,
        creation,
        totals,
        content_hash,
    } = record;
    // A validated record has at most `max_items` (<= 100,000, checked by the config) items, so
    // neither this count nor a line number below can saturate.
    let item_count = u32::try_from(source.item_list.len()).unwrap_or(u32::MAX);
    let items = source
        .item_list
        .into_iter()
        .zip(totals.lines)
        .enumerate()
        .map(|(i, (item, line_total))| {
            let name = normalize_product_name(item.product_name);
            Line {
                line_number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                product_name: name.display,
                product_key: name.key,
                unit_value: item.value,
                quantity: item.quantity,
                line_total,
            }
        })
        .collect();
    Invoice {
        nfe_id: source.nfe_id,
        nfe_number: source.nfe_number,
        event_time: emission.utc,
        emission_date: local_date(emission.utc, zone),
        emission,
        creation,
        discount: source.discount,
        gross: totals.gross,
        net: totals.net,
        item_count,
        items,
        content_hash,
        ingest: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_are_trimmed_nfc_and_folded() {
        let n = normalize_product_name("  French   fries ".to_owned());
        assert_eq!(n.display, "French   fries");
        assert_eq!(n.key, "french fries");
        // Decomposed "Feijão" (a + combining tilde) becomes precomposed.
        let n = normalize_product_name("Feija\u{303}o PRETO\u{a0}".to_owned());
        assert_eq!(n.display, "Feij\u{e3}o PRETO");
        assert_eq!(n.key, "feij\u{e3}o preto");
        let n = normalize_product_name("Rice".to_owned());
        assert_eq!((n.display.as_str(), n.key.as_str()), ("Rice", "rice"));
        let n = normalize_product_name("ÁGUA Mineral".to_owned());
        assert_eq!(n.key, "água mineral");
    }
}
