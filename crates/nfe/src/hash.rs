//! Content hash: SHA-256 over a canonical form of the record, stable over semantically equal JSON.
//!
//! Canonical form (documented in `docs/validation.md`):
//! - objects: members sorted by the UTF-8 bytes of their decoded keys, `{"k":v,...}`, no spaces;
//! - arrays: `[v,...]` in order;
//! - strings: the decoded text (escapes resolved, so `"\u0041"` equals `"A"`), written between
//!   quotes with only `"`, `\` and control characters escaped (`\"`, `\\`, `\u00XX`); no Unicode
//!   normalization (the hash is of what was sent);
//! - numbers: by exact value, as `[-]DIGITSeEXP` with no leading or trailing zeros in `DIGITS`
//!   (`9.00`, `9.0`, `9` and `0.9e1` all become `9e0`; `35.55` becomes `3555e-2`; zero is `0`);
//! - `true`, `false`, `null` as is.
//!
//! So key order, whitespace, escape spelling and numeric spelling do not change the hash; any
//! change of a value, a key, or an unknown extra field does.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::document::{Document, Node};
use crate::money::NumberParts;

/// SHA-256 of the canonical form of a record. Displays and serializes as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the 64-digit hex form.
    pub fn from_hex(s: &str) -> Option<ContentHash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(ContentHash(out))
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// SHA-256 of arbitrary bytes, as hex (used for raw-payload names).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ContentHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Where the canonical form goes: a buffer (tests, docs) or SHA-256 through a fixed block.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// Feeds SHA-256 through a 256-byte stack buffer: no allocation, few hasher calls.
struct HashSink {
    hasher: Sha256,
    buf: [u8; 256],
    len: usize,
}

impl HashSink {
    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
    fn byte(&mut self, b: u8) {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }
}

/// Hashes the canonical form of a parsed document.
pub(crate) fn content_hash(doc: &Document<'_>) -> ContentHash {
    let mut sink = HashSink {
        hasher: Sha256::new(),
        buf: [0; 256],
        len: 0,
    };
    canonical(doc, &mut sink);
    sink.flush();
    ContentHash(sink.hasher.finalize().into())
}

/// Writes the canonical form of a parsed document.
pub(crate) fn canonical(doc: &Document<'_>, out: &mut impl Sink) {
    let mut scratch = Vec::with_capacity(16);
    write_value(doc, 0, out, &mut scratch);
}

fn write_value<'d>(
    doc: &'d Document<'_>,
    at: usize,
    out: &mut impl Sink,
    scratch: &mut Vec<(&'d str, usize)>,
) {
    match doc.node(at) {
        Node::Null => out.put(b"null"),
        Node::Bool(true) => out.put(b"true"),
        Node::Bool(false) => out.put(b"false"),
        Node::Number(text) => write_number(text, out),
        // A string borrowed from the input had no escape, so it holds no `"`, `\\` or control
        // character: its canonical form is its bytes.
        Node::String(Cow::Borrowed(s)) | Node::Key(Cow::Borrowed(s)) => {
            out.byte(b'"');
            out.put(s.as_bytes());
            out.byte(b'"');
        }
        Node::String(s) | Node::Key(s) => write_string(s, out),
        Node::Array { .. } => {
            out.byte(b'[');
            for (n, el) in doc.elements(at).enumerate() {
                if n > 0 {
                    out.byte(b',');
                }
                write_value(doc, el, out, scratch);
            }
            out.byte(b']');
        }
        Node::Object { .. } => {
            let start = scratch.len();
            scratch.extend(doc.members(at));
            let end = scratch.len();
            if let Some(members) = scratch.get_mut(start..end) {
                // Most keys differ in their first byte: compare it inline before the slices.
                members.sort_unstable_by(|a, b| {
                    let (a, b) = (a.0.as_bytes(), b.0.as_bytes());
                    match (a.first(), b.first()) {
                        (Some(x), Some(y)) if x != y => x.cmp(y),
                        _ => a.cmp(b),
                    }
                });
            }
            out.byte(b'{');
            for k in start..end {
                let Some(&(key, value)) = scratch.get(k) else {
                    break;
                };
                if k > start {
                    out.byte(b',');
                }
                match doc.node(value.wrapping_sub(1)) {
                    Node::Key(Cow::Borrowed(k)) => {
                        out.byte(b'"');
                        out.put(k.as_bytes());
                        out.put(b"\":");
                    }
                    _ => {
                        write_string(key, out);
                        out.byte(b':');
                    }
                }
                write_value(doc, value, out, scratch);
            }
            out.byte(b'}');
            scratch.truncate(start);
        }
    }
}

fn write_string(s: &str, out: &mut impl Sink) {
    out.byte(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.put(&rest[..i]);
        let b = rest[i];
        match b {
            b'"' => out.put(b"\\\""),
            b'\\' => out.put(b"\\\\"),
            _ => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                out.put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    DIGITS[usize::from(b >> 4)],
                    DIGITS[usize::from(b & 15)],
                ]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.put(rest);
    out.byte(b'"');
}

/// Writes the canonical spelling of a JSON number's exact value.
pub(crate) fn write_number(text: &str, out: &mut impl Sink) {
    let parts = NumberParts::split(text);
    if parts.is_zero() {
        out.byte(b'0');
        return;
    }
    if parts.negative {
        out.byte(b'-');
    }
    // The significand is (int digits ++ frac digits)[lead..total - trail]: at most two slices.
    let (int, frac) = (parts.int_digits, parts.frac_digits);
    let (lo, hi) = (parts.lead, int.len() + frac.len() - parts.trail);
    out.put(int.get(lo.min(int.len())..hi.min(int.len())).unwrap_or(&[]));
    out.put(
        frac.get(lo.saturating_sub(int.len())..hi.saturating_sub(int.len()))
            .unwrap_or(&[]),
    );
    let exp = parts.exp10();
    let mut buf = [0u8; 20];
    out.byte(b'e');
    if exp < 0 {
        out.byte(b'-');
    }
    out.put(crate::time::digits(exp.unsigned_abs(), &mut buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        let doc = Document::parse(s.as_bytes(), 32).unwrap();
        let mut out = Vec::new();
        canonical(&doc, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form_examples() {
        assert_eq!(
            canon(r#" { "b" : [1, 9.00, -0.0, 0.9e1, 35.55, 1e2, 100], "a" : "x\u0041\"\n" } "#),
            r#"{"a":"xA\"\u000a","b":[1e0,9e0,0,9e0,3555e-2,1e2,1e2]}"#
        );
        assert_eq!(canon("[true,false,null,{}]"), "[true,false,null,{}]");
        assert_eq!(
            canon(r#"{"b":{"d":1,"c":2},"a":0}"#),
            r#"{"a":0,"b":{"c":2e0,"d":1e0}}"#
        );
    }

    #[test]
    fn hash_ignores_order_and_whitespace_but_not_values() {
        let h = |s: &str| content_hash(&Document::parse(s.as_bytes(), 32).unwrap());
        let a = h(r#"{"NFeID":1,"Discount":0.0,"ItemList":[{"Value":9.00,"Quantity":6}]}"#);
        let b = h("{ \"ItemList\" : [ { \"Quantity\" : 6 , \"Value\" : 9.0 } ] ,\n \"Discount\":0, \"NFeID\": 1 }");
        assert_eq!(a, b);
        let c = h(r#"{"NFeID":1,"Discount":0.0,"ItemList":[{"Value":9.01,"Quantity":6}]}"#);
        assert_ne!(a, c);
        assert_eq!(ContentHash::from_hex(&a.to_hex()), Some(a));
        assert_eq!(a.to_hex().len(), 64);
    }
}
