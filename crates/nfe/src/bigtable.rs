//! Bigtable layout: row keys, families, qualifiers, value encodings, cell timestamps.
//!
//! The output is generic ([`Row`] of [`Cell`]s) so that the connector maps it to mutations
//! without knowing invoices. Design and hotspot analysis: `docs/bigtable.md`.
//!
//! - Invoice row, key `i#SSSS#IIIIIIIIIIIIIIIIIII`: `SSSS` is 4 hex digits of a fixed 64-bit mix
//!   of the id (the salt), `I...` the id zero-padded to 19 digits. One row read by `NFeID`.
//! - Emission index row, key `e#BB#YYYYMMDDHHMMSSmmm#IIIIIIIIIIIIIIIIIII`: `BB` is the bucket
//!   (2 hex digits, `mix(id) mod index_buckets`), then the emission instant in UTC at millisecond
//!   precision, then the id. A date range is `index_buckets` range scans, one per bucket.
//! - Every cell of both rows has the same timestamp: the record's `CreateDate` in whole
//!   milliseconds, so a replay writes identical cells and a newer version of an invoice wins.

use std::borrow::Cow;

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::enrich::{Invoice, Line};
use crate::money::push_decimal;
use crate::time::{push_compact_millis, push_padded, push_rfc3339_micros};

/// Table name.
pub const TABLE: &str = "invoices";
/// Family of the invoice header cells.
pub const FAMILY_HEADER: &str = "h";
/// Family of the invoice lines cell.
pub const FAMILY_LINES: &str = "l";
/// Family of the emission-index cells.
pub const FAMILY_INDEX: &str = "x";
/// Prefix of invoice rows.
pub const INVOICE_PREFIX: &[u8] = b"i#";
/// Prefix of emission-index rows.
pub const INDEX_PREFIX: &[u8] = b"e#";

/// A column family and its garbage-collection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilySpec {
    /// Family name.
    pub name: &'static str,
    /// GC rule: keep at most this many versions per column.
    pub max_versions: u32,
}

/// The families of the table, for deployment. All keep one version: the newest `CreateDate`.
pub const FAMILIES: [FamilySpec; 3] = [
    FamilySpec {
        name: FAMILY_HEADER,
        max_versions: 1,
    },
    FamilySpec {
        name: FAMILY_LINES,
        max_versions: 1,
    },
    FamilySpec {
        name: FAMILY_INDEX,
        max_versions: 1,
    },
];

/// One cell to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Column family.
    pub family: Cow<'static, str>,
    /// Column qualifier.
    pub qualifier: Cow<'static, [u8]>,
    /// Cell timestamp in microseconds since the Unix epoch; always a whole number of
    /// milliseconds (a multiple of 1000), as Bigtable requires for millisecond-granularity tables.
    pub timestamp_micros: i64,
    /// Value bytes (a slice of the row's shared buffer).
    pub value: Bytes,
}

/// One row to write: a key and its cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Row key bytes.
    pub key: Vec<u8>,
    /// Cells (set-cell mutations).
    pub cells: Vec<Cell>,
}

/// A row range: `start` inclusive, `end` exclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRange {
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// End key (exclusive).
    pub end: Vec<u8>,
}

/// Layout parameters. `index_buckets` is fixed for the life of a table: changing it needs a
/// rewrite of the index rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigtableLayout {
    /// Number of emission-index buckets, 1..=256. Default 16.
    pub index_buckets: u16,
}

impl Default for BigtableLayout {
    fn default() -> Self {
        BigtableLayout { index_buckets: 16 }
    }
}

/// An unusable layout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Bigtable layout: index_buckets = {0}; must be 1..=256")]
pub struct LayoutError(pub u16);

/// The fixed 64-bit mix of an id (SplitMix64's finalizer). Part of the storage format: never change.
pub fn mix(id: i64) -> u64 {
    let mut z = id as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 15) as usize]);
    }
}

/// Row key of the invoice row of `nfe_id`: `i#SSSS#` + 19-digit id.
pub fn row_key(nfe_id: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.extend_from_slice(INVOICE_PREFIX);
    push_hex(&mut k, mix(nfe_id) >> 48, 4);
    k.push(b'#');
    push_padded(&mut k, nfe_id.max(0) as u64, 19);
    k
}

/// Cell timestamp of an invoice: `CreateDate` in whole milliseconds, as microseconds.
pub fn cell_timestamp_micros(invoice: &Invoice) -> i64 {
    invoice.creation.utc.as_millisecond().saturating_mul(1000)
}

fn cell(family: &'static str, qualifier: &'static str, ts: i64, value: Bytes) -> Cell {
    Cell {
        family: Cow::Borrowed(family),
        qualifier: Cow::Borrowed(qualifier.as_bytes()),
        timestamp_micros: ts,
        value,
    }
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_padded(out, v.unsigned_abs(), 1);
}

fn push_hex_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Appends a JSON string literal (escaping `"`, `\` and control characters).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.extend_from_slice(&bytes[run..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                }
            }
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The `l:items` value: a JSON array of
/// `{"line":1,"name":"Rice","key":"rice","value":"35.55","quantity":"2","total":"71.10"}`.
fn push_items_json(out: &mut Vec<u8>, lines: &[Line]) {
    out.push(b'[');
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"line\":");
        push_padded(out, u64::from(l.line_number), 1);
        out.extend_from_slice(b",\"name\":");
        push_json_str(out, &l.product_name);
        out.extend_from_slice(b",\"key\":");
        push_json_str(out, &l.product_key);
        for (name, d) in [
            (&b",\"value\":\""[..], l.unit_value),
            (b"\",\"quantity\":\"", l.quantity),
            (b"\",\"total\":\"", l.line_total),
        ] {
            out.extend_from_slice(name);
            push_decimal(out, d);
        }
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
}

impl BigtableLayout {
    /// Checks the parameters.
    pub fn checked(self) -> Result<Self, LayoutError> {
        if (1..=256).contains(&self.index_buckets) {
            Ok(self)
        } else {
            Err(LayoutError(self.index_buckets))
        }
    }

    fn buckets(&self) -> u64 {
        u64::from(self.index_buckets.clamp(1, 256))
    }

    /// Index bucket of an id.
    pub fn bucket(&self, nfe_id: i64) -> u8 {
        ((mix(nfe_id) & 0xffff_ffff) % self.buckets()) as u8
    }

    fn index_prefix(&self, bucket: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(44);
        k.extend_from_slice(INDEX_PREFIX);
        push_hex(&mut k, u64::from(bucket), 2);
        k.push(b'#');
        k
    }

    /// Row key of the emission-index row: `e#BB#YYYYMMDDHHMMSSmmm#` + 19-digit id.
    pub fn index_key(&self, emission: Timestamp, nfe_id: i64) -> Vec<u8> {
        let mut k = self.index_prefix(self.bucket(nfe_id));
        push_compact_millis(&mut k, emission);
        k.push(b'#');
        push_padded(&mut k, nfe_id.max(0) as u64, 19);
        k
    }

    /// The ranges to scan for invoices emitted in `[from, to)` (millisecond precision): one per
    /// bucket, to be read in parallel and merged. Empty when `from >= to`.
    pub fn emission_scan(&self, from: Timestamp, to: Timestamp) -> Vec<RowRange> {
        if from >= to {
            return Vec::new();
        }
        (0..self.buckets())
            .map(|b| {
                let prefix = self.index_prefix(b as u8);
                let mut start = prefix.clone();
                push_compact_millis(&mut start, from);
                let mut end = prefix;
                push_compact_millis(&mut end, to);
                RowRange { start, end }
            })
            .collect()
    }

    /// Encodes an invoice as its two rows: the invoice row and the emission-index row.
    ///
    /// All values are written into one buffer; each cell's value is a slice of it (no
    /// allocation per cell).
    pub fn encode(&self, inv: &Invoice) -> [Row; 2] {
        let ts = cell_timestamp_micros(inv);
        let mut buf: Vec<u8> = Vec::with_capacity(400 + inv.items.len() * 112);
        let mut ends = [0usize; HEADER_QUALIFIERS.len() + INDEX_QUALIFIERS.len()];
        let mut k = 0;
        let mut mark = |buf: &Vec<u8>| {
            ends[k] = buf.len();
            k += 1;
        };
        // Invoice row, in HEADER_QUALIFIERS order.
        push_i64(&mut buf, inv.nfe_id);
        mark(&buf);
        push_i64(&mut buf, inv.nfe_number);
        mark(&buf);
        push_rfc3339_micros(&mut buf, inv.emission.utc);
        mark(&buf);
        buf.extend_from_slice(inv.emission.original.as_bytes());
        mark(&buf);
        push_rfc3339_micros(&mut buf, inv.creation.utc);
        mark(&buf);
        buf.extend_from_slice(inv.creation.original.as_bytes());
        mark(&buf);
        push_decimal(&mut buf, inv.discount);
        mark(&buf);
        push_decimal(&mut buf, inv.gross);
        mark(&buf);
        push_decimal(&mut buf, inv.net);
        mark(&buf);
        push_padded(&mut buf, u64::from(inv.item_count), 1);
        mark(&buf);
        let hash_at = buf.len();
        push_hex_bytes(&mut buf, &inv.content_hash.0);
        mark(&buf);
        push_items_json(&mut buf, &inv.items);
        mark(&buf);
        // Index row, in INDEX_QUALIFIERS order.
        push_i64(&mut buf, inv.nfe_number);
        mark(&buf);
        push_decimal(&mut buf, inv.net);
        mark(&buf);
        push_padded(&mut buf, u64::from(inv.item_count), 1);
        mark(&buf);
        let hash_end = hash_at + 64;
        mark(&buf);

        let all = Bytes::from(buf);
        let mut start = 0;
        let mut slices = ends.iter().map(|&end| {
            let v = all.slice(start.min(end)..end);
            start = end;
            v
        });
        let mut next = || slices.next().unwrap_or_default();
        let header: Vec<Cell> = HEADER_QUALIFIERS
            .iter()
            .map(|&(family, qualifier)| cell(family, qualifier, ts, next()))
            .collect();
        let mut index: Vec<Cell> = INDEX_QUALIFIERS
            .iter()
            .map(|&(family, qualifier)| cell(family, qualifier, ts, next()))
            .collect();
        // The index row's hash is the same bytes as the invoice row's.
        if let Some(last) = index.last_mut() {
            last.value = all.slice(hash_at..hash_end);
        }
        [
            Row {
                key: row_key(inv.nfe_id),
                cells: header,
            },
            Row {
                key: self.index_key(inv.emission.utc, inv.nfe_id),
                cells: index,
            },
        ]
    }
}

/// Qualifiers of the invoice row, in encoding order.
pub const HEADER_QUALIFIERS: [(&str, &str); 12] = [
    (FAMILY_HEADER, "id"),
    (FAMILY_HEADER, "number"),
    (FAMILY_HEADER, "emission"),
    (FAMILY_HEADER, "emission_raw"),
    (FAMILY_HEADER, "creation"),
    (FAMILY_HEADER, "creation_raw"),
    (FAMILY_HEADER, "discount"),
    (FAMILY_HEADER, "gross"),
    (FAMILY_HEADER, "net"),
    (FAMILY_HEADER, "item_count"),
    (FAMILY_HEADER, "hash"),
    (FAMILY_LINES, "items"),
];

/// Qualifiers of the emission-index row, in encoding order.
pub const INDEX_QUALIFIERS: [(&str, &str); 4] = [
    (FAMILY_INDEX, "number"),
    (FAMILY_INDEX, "net"),
    (FAMILY_INDEX, "item_count"),
    (FAMILY_INDEX, "hash"),
];

#[cfg(test)]
mod tests {
    use super::*;

    use rust_decimal::Decimal;

    #[test]
    fn items_json_is_valid_json_with_exact_strings() {
        let line = Line {
            line_number: 2,
            product_name: "A \"q\" \\ \u{1}é".to_owned(),
            product_key: "a".to_owned(),
            unit_value: Decimal::new(900, 2),
            quantity: Decimal::new(6, 0),
            line_total: Decimal::new(5400, 2),
        };
        let mut out = Vec::new();
        push_items_json(&mut out, std::slice::from_ref(&line));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["line"], 2);
        assert_eq!(v[0]["name"], line.product_name.as_str());
        assert_eq!(v[0]["value"], "9.00");
        assert_eq!(v[0]["total"], "54.00");
    }

    #[test]
    fn keys_have_the_documented_shape() {
        assert_eq!(row_key(1), b"i#5692#0000000000000000001");
        assert_eq!(row_key(2), b"i#dbd2#0000000000000000002");
        assert_eq!(row_key(3), b"i#1e53#0000000000000000003");
        assert_eq!(
            BigtableLayout::default().index_key("2021-05-24T03:00:00Z".parse().unwrap(), 1),
            b"e#05#20210524030000000#0000000000000000001"
        );
        let k = row_key(1);
        assert_eq!(k.len(), 26);
        assert!(k.starts_with(b"i#"));
        assert!(k.ends_with(b"#0000000000000000001"));
        assert_eq!(row_key(1), row_key(1));
        let layout = BigtableLayout::default();
        let ts: Timestamp = "2021-05-24T03:00:00Z".parse().unwrap();
        let ik = layout.index_key(ts, 1);
        let s = String::from_utf8(ik).unwrap();
        assert_eq!(s.len(), 2 + 3 + 17 + 1 + 19);
        assert!(s.contains("#20210524030000000#0000000000000000001"), "{s}");
    }

    #[test]
    fn sequential_ids_spread_over_salts_and_buckets() {
        let layout = BigtableLayout::default();
        let mut salts = std::collections::HashSet::new();
        let mut per_bucket = [0u32; 16];
        for id in 0..16_000 {
            salts.insert(row_key(id)[2..6].to_vec());
            per_bucket[layout.bucket(id) as usize] += 1;
        }
        // Uniform random salts would give 14,197 distinct values on average.
        assert_eq!(salts.len(), 14_212);
        for n in per_bucket {
            assert!((950..=1057).contains(&n), "{per_bucket:?}");
        }
    }

    #[test]
    fn scan_ranges_cover_each_bucket() {
        let layout = BigtableLayout { index_buckets: 4 };
        let from: Timestamp = "2021-05-24T03:00:00Z".parse().unwrap();
        let to: Timestamp = "2021-05-25T03:00:00Z".parse().unwrap();
        let ranges = layout.emission_scan(from, to);
        assert_eq!(ranges.len(), 4);
        let inside = layout.index_key("2021-05-24T20:00:00Z".parse().unwrap(), 42);
        let at_end = layout.index_key(to, 42);
        let at_start = layout.index_key(from, 42);
        let hit = |k: &[u8]| {
            ranges
                .iter()
                .filter(|r| r.start.as_slice() <= k && k < r.end.as_slice())
                .count()
        };
        assert_eq!(hit(&inside), 1);
        assert_eq!(hit(&at_start), 1);
        assert_eq!(hit(&at_end), 0);
        assert!(layout.emission_scan(to, from).is_empty());
        assert!(BigtableLayout { index_buckets: 0 }.checked().is_err());
    }
}
