//! Dead letters: a record that could not be processed, kept with everything needed to replay it.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::sha256_hex;
use crate::issue::{clip_text, ErrorCode, Issue, Rejection};
use crate::storage::{dead_letter_object_name, dead_letter_object_name_by_hash};
use crate::time::{option_timestamp_string, timestamp_string};

/// Pipeline stages, as used in dead letters and object names.
pub mod stage {
    /// Splitting an API page into records.
    pub const PAGE: &str = "page";
    /// Parsing and validating a record.
    pub const VALIDATE: &str = "validate";
    /// Enriching a valid record.
    pub const ENRICH: &str = "enrich";
    /// Writing to a sink.
    pub const SINK: &str = "sink";
    /// Delivering the message (it came back more often than allowed without being stored).
    pub const DELIVERY: &str = "delivery";
}

/// Raw bytes kept in the short form of a dead letter ([`DeadLetter::message`]): the first 64 KiB.
pub const RAW_PREFIX_BYTES: usize = 64 * 1024;
/// Issues kept in the short form of a dead letter.
pub const SHORT_FORM_MAX_ISSUES: usize = 100;
/// Source attributes kept in the short form of a dead letter, and their key / value length.
const SHORT_FORM_MAX_ATTRIBUTES: usize = 100;
const SHORT_FORM_ATTRIBUTE_KEY_BYTES: usize = 256;
const SHORT_FORM_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Largest short form: the prefix in its worst encoding (base64), the clipped issues (path and
/// message, every byte escaped to six in JSON, plus the issue's frame and code), the clipped
/// attributes, the clipped `object` and `message_id` and `stage` (escaped too), every code name
/// among `omitted_codes`, and the fixed fields. A budget passed to [`DeadLetter::message`] of at
/// least this size always holds the message.
pub const SHORT_FORM_MAX_BYTES: usize = RAW_PREFIX_BYTES * 4 / 3
    + 16
    + SHORT_FORM_MAX_ISSUES
        * (6 * (crate::issue::MAX_PATH_BYTES + crate::issue::MAX_MESSAGE_BYTES) + 96)
    + SHORT_FORM_MAX_ATTRIBUTES
        * (6 * (SHORT_FORM_ATTRIBUTE_KEY_BYTES + SHORT_FORM_ATTRIBUTE_VALUE_BYTES) + 8)
    + 6 * (2 * SHORT_FORM_ATTRIBUTE_VALUE_BYTES + SHORT_FORM_STAGE_BYTES)
    + ErrorCode::ALL.len() * 40
    + 4096;
/// Longest `stage` kept in the short form.
const SHORT_FORM_STAGE_BYTES: usize = 64;

/// Exact raw bytes. In JSON: `{"encoding":"utf8","data":"<text>"}` when the bytes are UTF-8 and
/// their JSON escaping is no longer than base64 would be, else
/// `{"encoding":"base64","data":"<standard base64>"}`; both give the bytes back exactly. (Text of
/// control characters escapes to six bytes per byte; base64 bounds every encoding at 4/3.)
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RawBytes(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepr<'a> {
    #[serde(borrow)]
    encoding: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0)
            .ok()
            .filter(|t| escapes_cheaply(t))
        {
            Some(text) => RawRepr {
                encoding: "utf8".into(),
                data: text.into(),
            }
            .serialize(s),
            None => RawRepr {
                encoding: "base64".into(),
                data: STANDARD.encode(&self.0).into(),
            }
            .serialize(s),
        }
    }
}

/// True when `text`'s JSON string escaping (as serde_json writes it) is no longer than its base64.
fn escapes_cheaply(text: &str) -> bool {
    let extra: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    text.len() + extra <= text.len().div_ceil(3) * 4
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = RawRepr::deserialize(d)?;
        match repr.encoding.as_ref() {
            "utf8" => Ok(RawBytes(repr.data.into_owned().into_bytes())),
            "base64" => STANDARD
                .decode(repr.data.as_bytes())
                .map(RawBytes)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "unknown raw encoding {other:?} (expected utf8 or base64)"
            ))),
        }
    }
}

/// Where a record came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Pub/Sub message id (or the API page position before publishing).
    pub message_id: Option<String>,
    /// Pub/Sub publish time.
    #[serde(default, with = "option_timestamp_string")]
    pub publish_time: Option<Timestamp>,
    /// Message attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A record that failed, with its exact bytes, its issues and where it failed.
///
/// Two JSON forms share this schema. The full form ([`DeadLetter::to_json`], the Cloud Storage
/// object) holds every byte received. The short form ([`DeadLetter::message`], the dead-letter
/// topic when the full form is over its budget) holds the first [`RAW_PREFIX_BYTES`] of them, with
/// `raw_size` (the full size) and `object` (where the full form is) set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The exact bytes received (only their first [`RAW_PREFIX_BYTES`] in the short form).
    pub raw: RawBytes,
    /// SHA-256 (hex) of all the raw bytes: the dead letter's identity.
    pub raw_sha256: String,
    /// Short form only: the size of all the raw bytes (`raw` holds a prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size: Option<u64>,
    /// Short form only: the Cloud Storage object holding the full form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The problems found (at most the validator's `max_issues`).
    pub issues: Vec<Issue>,
    /// Problems found but not described (beyond `max_issues`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub issues_omitted: u64,
    /// Codes found only among the omitted problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted_codes: Vec<ErrorCode>,
    /// Pipeline stage that rejected the record (see [`stage`]).
    pub stage: String,
    /// Where the record came from.
    pub source: SourceMeta,
    /// When the record failed.
    #[serde(with = "timestamp_string")]
    pub failed_at: Timestamp,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The dead-letter topic's message for a dead letter: its JSON (full or short form) and the
/// attributes that let subscribers filter without parsing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterMessage {
    /// JSON of the dead letter, at most the budget given to [`DeadLetter::message`] (when it is the
    /// full form, the same buffer as the object's in [`DeadLetter::encode`]).
    pub data: bytes::Bytes,
    /// `stage`, `codes` (sorted, distinct, comma-separated), `raw_sha256`, `message_id` (when
    /// known), `object` (short form), `truncated` (`true` in the short form).
    pub attributes: Vec<(&'static str, String)>,
    /// True when `data` is the short form.
    pub truncated: bool,
}

impl DeadLetter {
    /// Approximate memory of the dead letter, heap included (what a pipeline's buffer bounds count):
    /// the raw bytes, the issues, the codes and every owned text.
    pub fn memory_bytes(&self) -> usize {
        let issues: usize = self
            .issues
            .iter()
            .map(|i| i.path.capacity() + i.message.capacity())
            .sum();
        let attributes: usize = self
            .source
            .attributes
            .iter()
            // Keys, values and a B-tree entry's share of its node.
            .map(|(k, v)| k.capacity() + v.capacity() + 2 * std::mem::size_of::<String>())
            .sum();
        std::mem::size_of::<Self>()
            + self.raw.0.capacity()
            + self.raw_sha256.capacity()
            + self.object.as_ref().map_or(0, String::capacity)
            + self.issues.capacity() * std::mem::size_of::<Issue>()
            + issues
            + self.omitted_codes.capacity() * std::mem::size_of::<ErrorCode>()
            + self.stage.capacity()
            + self.source.message_id.as_ref().map_or(0, String::capacity)
            + attributes
    }

    /// Builds a dead letter with these issues.
    pub fn new(
        raw: Vec<u8>,
        issues: Vec<Issue>,
        stage: impl Into<String>,
        source: SourceMeta,
        failed_at: Timestamp,
    ) -> Self {
        DeadLetter::rejected(raw, Rejection::new(issues), stage, source, failed_at)
    }

    /// Builds a dead letter from a rejection (its kept issues and the count of the others).
    pub fn rejected(
        raw: Vec<u8>,
        rejection: Rejection,
        stage: impl Into<String>,
        source: SourceMeta,
        failed_at: Timestamp,
    ) -> Self {
        DeadLetter {
            raw_sha256: sha256_hex(&raw),
            raw: RawBytes(raw),
            raw_size: None,
            object: None,
            issues: rejection.issues,
            issues_omitted: rejection.omitted,
            omitted_codes: rejection.omitted_codes,
            stage: stage.into(),
            source,
            failed_at,
        }
    }

    /// Full JSON form (the Cloud Storage object): every raw byte, at most 4/3 of their size plus
    /// the issues and metadata.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Every distinct error code (of kept and omitted issues), in documentation order.
    pub fn codes(&self) -> Vec<ErrorCode> {
        crate::issue::distinct_codes(&self.issues, &self.omitted_codes)
    }

    /// The dead-letter topic's message: the full form when its JSON has at most `max_bytes`, else
    /// the short form (first [`RAW_PREFIX_BYTES`] raw bytes, at most [`SHORT_FORM_MAX_ISSUES`]
    /// clipped issues, clipped attributes, `raw_size`, and `object` = `object_url`, where the full
    /// form is stored). With `max_bytes >= SHORT_FORM_MAX_BYTES` the data always fits.
    pub fn message(&self, object_url: &str, max_bytes: usize) -> DeadLetterMessage {
        self.encode(object_url, max_bytes).1
    }

    /// Both forms at once, the full JSON encoded once: the Cloud Storage object's bytes (the full
    /// form, [`DeadLetter::to_json`]) and the topic's message ([`DeadLetter::message`]).
    pub fn encode(&self, object_url: &str, max_bytes: usize) -> (bytes::Bytes, DeadLetterMessage) {
        let full = bytes::Bytes::from(self.to_json());
        let (data, truncated) = if full.len() <= max_bytes {
            (full.clone(), false)
        } else {
            (
                bytes::Bytes::from(self.short_form(object_url).to_json()),
                true,
            )
        };
        let codes: Vec<&str> = self.codes().into_iter().map(ErrorCode::as_str).collect();
        let mut attributes = vec![
            ("stage", self.stage.clone()),
            ("codes", codes.join(",")),
            ("raw_sha256", self.raw_sha256.clone()),
        ];
        if let Some(id) = &self.source.message_id {
            attributes.push(("message_id", id.clone()));
        }
        if truncated {
            attributes.push(("object", object_url.to_owned()));
            attributes.push(("truncated", "true".to_owned()));
        }
        (
            full,
            DeadLetterMessage {
                data,
                attributes,
                truncated,
            },
        )
    }

    /// The short form (see [`DeadLetter::message`]).
    pub fn short_form(&self, object_url: &str) -> DeadLetter {
        let raw = &self.raw.0;
        let mut end = raw.len().min(RAW_PREFIX_BYTES);
        // Cut UTF-8 text on a character boundary so the prefix stays readable text.
        if let Ok(text) = std::str::from_utf8(raw) {
            while !text.is_char_boundary(end) {
                end -= 1;
            }
        }
        let clip = |s: &str, n: usize| clip_text(s, n).into_owned();
        let attributes = self
            .source
            .attributes
            .iter()
            .take(SHORT_FORM_MAX_ATTRIBUTES)
            .map(|(k, v)| {
                (
                    clip(k, SHORT_FORM_ATTRIBUTE_KEY_BYTES),
                    clip(v, SHORT_FORM_ATTRIBUTE_VALUE_BYTES),
                )
            })
            .collect();
        let kept = self.issues.len().min(SHORT_FORM_MAX_ISSUES);
        DeadLetter {
            raw: RawBytes(raw.get(..end).unwrap_or_default().to_vec()),
            raw_sha256: clip(&self.raw_sha256, 64),
            raw_size: Some(self.raw_size.unwrap_or(raw.len() as u64)),
            object: Some(clip(object_url, SHORT_FORM_ATTRIBUTE_VALUE_BYTES)),
            issues: self.issues[..kept]
                .iter()
                .cloned()
                .map(Issue::clipped)
                .collect(),
            issues_omitted: self
                .issues_omitted
                .saturating_add((self.issues.len() - kept) as u64),
            omitted_codes: self
                .codes()
                .into_iter()
                .filter(|c| !self.issues[..kept].iter().any(|i| i.code == *c))
                .collect(),
            stage: clip(&self.stage, SHORT_FORM_STAGE_BYTES),
            source: SourceMeta {
                message_id: self
                    .source
                    .message_id
                    .as_deref()
                    .map(|m| clip(m, SHORT_FORM_ATTRIBUTE_VALUE_BYTES)),
                publish_time: self.source.publish_time,
                attributes,
            },
            failed_at: self.failed_at,
        }
    }

    /// Cloud Storage object name: partitioned by publish time (or failure time when unknown),
    /// named by the raw bytes' hash, so a retried write replaces the same object.
    pub fn object_name(&self) -> String {
        let at = self.source.publish_time.unwrap_or(self.failed_at);
        object_name_of(&self.stage, at, &self.raw_sha256)
    }

    /// The object name of a dead letter's JSON (full or short form) without decoding its raw bytes
    /// or issues; `None` when the bytes are not a dead letter.
    pub fn object_name_of_json(json: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct Names {
            raw_sha256: String,
            stage: String,
            source: Publish,
            #[serde(with = "timestamp_string")]
            failed_at: Timestamp,
        }
        #[derive(Deserialize)]
        struct Publish {
            #[serde(default, with = "option_timestamp_string")]
            publish_time: Option<Timestamp>,
        }
        let n: Names = serde_json::from_slice(json).ok()?;
        let at = n.source.publish_time.unwrap_or(n.failed_at);
        Some(object_name_of(&n.stage, at, &n.raw_sha256))
    }
}

fn object_name_of(stage: &str, at: Timestamp, raw_sha256: &str) -> String {
    // The hash names the object; anything else than 64 hex digits (a hand-made letter) is hashed.
    if raw_sha256.len() == 64 && raw_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        dead_letter_object_name_by_hash(stage, at, raw_sha256)
    } else {
        dead_letter_object_name(stage, at, raw_sha256.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::ErrorCode;

    fn letter(raw: &[u8]) -> DeadLetter {
        let mut attributes = BTreeMap::new();
        attributes.insert("source".to_owned(), "api".to_owned());
        DeadLetter::new(
            raw.to_vec(),
            vec![Issue::new(
                ErrorCode::InvalidUtf8,
                "$.ItemList[0].ProductName",
                "bad",
            )],
            stage::VALIDATE,
            SourceMeta {
                message_id: Some("42".into()),
                publish_time: Some("2021-05-24T23:21:34Z".parse().unwrap()),
                attributes,
            },
            "2021-05-24T23:21:35Z".parse().unwrap(),
        )
    }

    #[test]
    fn utf8_payloads_are_text_and_others_base64_both_exact() {
        let text = letter(b"{\"NFeID\": 1}");
        let json: serde_json::Value = serde_json::from_slice(&text.to_json()).unwrap();
        assert_eq!(json["raw"]["encoding"], "utf8");
        assert_eq!(json["raw"]["data"], "{\"NFeID\": 1}");
        assert_eq!(json["issues"][0]["code"], "NFE_INVALID_UTF8");
        assert_eq!(json["stage"], "validate");
        assert_eq!(json["source"]["publish_time"], "2021-05-24T23:21:34Z");
        let back: DeadLetter = serde_json::from_slice(&text.to_json()).unwrap();
        assert_eq!(back, text);

        let binary = letter(b"{\"a\":\"\xff\"}");
        let json: serde_json::Value = serde_json::from_slice(&binary.to_json()).unwrap();
        assert_eq!(json["raw"]["encoding"], "base64");
        let back: DeadLetter = serde_json::from_slice(&binary.to_json()).unwrap();
        assert_eq!(back.raw.0, b"{\"a\":\"\xff\"}");
        assert!(binary
            .object_name()
            .starts_with("dead-letter/dt=2021-05-24/hour=23/stage=validate/"));
    }

    #[test]
    fn raw_bytes_use_the_cheaper_exact_encoding() {
        let enc = |raw: &[u8]| {
            let json = serde_json::to_value(RawBytes(raw.to_vec())).unwrap();
            let back: RawBytes = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back.0, raw);
            json["encoding"].as_str().unwrap().to_owned()
        };
        assert_eq!(enc(br#"{"NFeID": 1, "a": "b"}"#), "utf8");
        // Control characters escape to six bytes each: base64 is smaller.
        assert_eq!(enc(&[1u8; 300]), "base64");
        assert_eq!(enc(b"\xff"), "base64");
        let controls = vec![0x01u8; 1 << 20];
        let json = serde_json::to_vec(&RawBytes(controls)).unwrap();
        assert!(json.len() < (1 << 20) * 4 / 3 + 64, "{}", json.len());
    }

    #[test]
    fn the_topic_gets_the_full_form_when_it_fits_else_a_bounded_short_form() {
        let small = letter(b"{\"NFeID\": 1}");
        let m = small.message("gs://b/dead-letter/x.json", 4 << 20);
        assert!(!m.truncated);
        assert_eq!(m.data, small.to_json());
        assert!(m
            .attributes
            .contains(&("codes", "NFE_INVALID_UTF8".to_owned())));

        // A hostile record: 2 MiB of control bytes, 1,000 issues with long paths, big attributes.
        let mut big = letter(&vec![0x02u8; 2 << 20]);
        big.issues = (0..1_000)
            .map(|i| Issue {
                code: if i % 2 == 0 {
                    ErrorCode::InvalidUtf8
                } else {
                    ErrorCode::WrongType
                },
                path: "$".repeat(2_000),
                message: "\u{1}".repeat(2_000),
            })
            .collect();
        for i in 0..150 {
            big.source
                .attributes
                .insert(format!("{i}{}", "k".repeat(1000)), "\u{2}".repeat(2000));
        }
        let url = "gs://bucket/dead-letter/dt=2021-05-24/hour=23/stage=validate/abc.json";
        let m = big.message(url, 1 << 20);
        assert!(m.truncated);
        assert!(m.data.len() <= SHORT_FORM_MAX_BYTES, "{}", m.data.len());
        let short: DeadLetter = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(short.raw.0, vec![0x02u8; RAW_PREFIX_BYTES]);
        assert_eq!(short.raw_size, Some(2 << 20));
        assert_eq!(short.raw_sha256, big.raw_sha256);
        assert_eq!(short.object.as_deref(), Some(url));
        assert_eq!(short.issues.len(), SHORT_FORM_MAX_ISSUES);
        assert_eq!(short.issues_omitted, 1_000 - SHORT_FORM_MAX_ISSUES as u64);
        assert!(short
            .issues
            .iter()
            .all(|i| i.path.len() <= crate::issue::MAX_PATH_BYTES));
        assert_eq!(short.object_name(), big.object_name());
        let codes = m.attributes.iter().find(|(k, _)| *k == "codes").unwrap();
        // Distinct, in the documentation's order.
        assert_eq!(codes.1, "NFE_INVALID_UTF8,NFE_WRONG_TYPE");
        assert!(m.attributes.contains(&("truncated", "true".to_owned())));
        // The object name comes from the JSON without decoding the raw bytes.
        assert_eq!(
            DeadLetter::object_name_of_json(&big.to_json()),
            Some(big.object_name())
        );
        assert_eq!(
            DeadLetter::object_name_of_json(&m.data),
            Some(big.object_name())
        );
        assert_eq!(DeadLetter::object_name_of_json(b"{}"), None);
    }

    #[test]
    fn utf8_prefixes_end_on_a_character_boundary() {
        let text = "é".repeat(RAW_PREFIX_BYTES);
        let short = letter(text.as_bytes()).short_form("gs://b/o");
        assert_eq!(short.raw.0.len(), RAW_PREFIX_BYTES);
        assert!(std::str::from_utf8(&short.raw.0).is_ok());
        let odd = format!("a{text}");
        let short = letter(odd.as_bytes()).short_form("gs://b/o");
        assert_eq!(short.raw.0.len(), RAW_PREFIX_BYTES - 1);
    }
}
