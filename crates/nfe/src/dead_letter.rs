//! Dead letters: a record that could not be processed, kept with everything needed to replay it.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::sha256_hex;
use crate::issue::Issue;
use crate::storage::dead_letter_object_name;
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
}

/// Exact raw bytes. In JSON: `{"encoding":"utf8","data":"<text>"}` when the bytes are UTF-8,
/// else `{"encoding":"base64","data":"<standard base64>"}`; both give the bytes back exactly.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RawBytes(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepr<'a> {
    encoding: &'a str,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => RawRepr {
                encoding: "utf8",
                data: text.into(),
            }
            .serialize(s),
            Err(_) => RawRepr {
                encoding: "base64",
                data: STANDARD.encode(&self.0).into(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = RawRepr::deserialize(d)?;
        match repr.encoding {
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

/// A record that failed, with its exact bytes, every issue and where it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The exact bytes received.
    pub raw: RawBytes,
    /// SHA-256 (hex) of the raw bytes: the dead letter's identity.
    pub raw_sha256: String,
    /// Every problem found.
    pub issues: Vec<Issue>,
    /// Pipeline stage that rejected the record (see [`stage`]).
    pub stage: String,
    /// Where the record came from.
    pub source: SourceMeta,
    /// When the record failed.
    #[serde(with = "timestamp_string")]
    pub failed_at: Timestamp,
}

impl DeadLetter {
    /// Builds a dead letter.
    pub fn new(
        raw: Vec<u8>,
        issues: Vec<Issue>,
        stage: impl Into<String>,
        source: SourceMeta,
        failed_at: Timestamp,
    ) -> Self {
        DeadLetter {
            raw_sha256: sha256_hex(&raw),
            raw: RawBytes(raw),
            issues,
            stage: stage.into(),
            source,
            failed_at,
        }
    }

    /// JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Cloud Storage object name: partitioned by publish time (or failure time when unknown),
    /// named by the raw bytes' hash, so a retried write replaces the same object.
    pub fn object_name(&self) -> String {
        let at = self.source.publish_time.unwrap_or(self.failed_at);
        dead_letter_object_name(&self.stage, at, &self.raw.0)
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
}
