//! The intake step's invariants, checked on one delivery: shared by the `validate_step` fuzz
//! target, the property test `crates/nfe/tests/intake_properties.rs` and the regression test
//! `crates/nfe/tests/fuzz_regressions.rs` (both include this file as a module), so that all three
//! check exactly the same promises.
//!
//! [`check`] runs [`nfe::Intake::process`] (`max_failed_deliveries = 9`) and then asserts:
//!
//! - the outcome follows the intake's rules: a permanent earlier failure gives
//!   `NFE_SINK_REJECTED` (stage `sink`), a delivery count above 9 gives
//!   `NFE_DELIVERY_ATTEMPTS_EXCEEDED` (stage `delivery`), a duplicate gives `NFE_DUPLICATE_ID`,
//!   anything else is what the validator says; the source metadata is read exactly once for a
//!   dead letter and never for an invoice;
//! - an invoice: `gross` = sum of the line totals, `net` = `gross - discount`, each line total =
//!   value x quantity, exactly; Bigtable cell timestamps are whole milliseconds; the BigQuery
//!   rows encode;
//! - a dead letter: it keeps the exact bytes (its JSON reads back to the identical letter) and
//!   their SHA-256; its issues are bounded (at most `max_issues`, paths and messages within
//!   `MAX_PATH_BYTES` / `MAX_MESSAGE_BYTES`, paths start with `$`); the issues kept, the count of
//!   the omitted ones and their codes agree with a validator that keeps up to 1,000 issues; the
//!   raw bytes encode in at most 4/3 of their size plus a constant;
//! - its topic message, with the pipeline's budget (4 MiB), with exactly `SHORT_FORM_MAX_BYTES`
//!   and with a budget that forces the short form: within the budget (when it is at least
//!   `SHORT_FORM_MAX_BYTES`), the full form when it fits, else a short form that reads back with
//!   the same `raw_sha256`, a prefix of the raw bytes, `raw_size` and `object` set; its
//!   attributes `stage`, `codes` and `raw_sha256` fit Pub/Sub's 1,024-byte attribute values;
//!   `DeadLetter::object_name_of_json` of either form gives `object_name()`.
//!
//! The fuzz input ([`decode`]) is a 3-byte header, an optional text, then the record's bytes:
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | bit 0 `duplicate_of` set; bit 1 an earlier failure; bit 2 it was permanent; bit 3 the tight validator ([`tight_config`]); bit 7 a publish time; bits 4-6 the size mode: 5 the record repeated past `RAW_PREFIX_BYTES`, 6 oversized source metadata, 7 an oversized object URL, else none (the costly modes take one input in eight each) |
//! | 1 | delivery count: 0 unknown, 255 `u32::MAX`, else the value |
//! | 2 | length of the text that follows (the failure reason, the duplicate's index, the seed of the oversized metadata) |
//!
//! A plain record with a first delivery is `"\0\0\0"` followed by the record.

#![allow(dead_code)]

use std::borrow::Cow;
use std::cell::Cell as Counter;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use nfe::{
    clip_text, stage, BigtableLayout, DeadLetter, Delivery, ErrorCode, Intake, Invoice,
    PreviousFailure, Rejection, SourceMeta, ValidationConfig, Validator, MAX_MESSAGE_BYTES,
    MAX_PATH_BYTES, RAW_PREFIX_BYTES, SHORT_FORM_MAX_BYTES, SHORT_FORM_MAX_ISSUES,
};
use sha2::{Digest, Sha256};

/// The intake's poison-message guard in these checks.
pub const MAX_FAILED_DELIVERIES: u32 = 9;
/// The pipeline's budget of a dead-letter topic message (`DEAD_LETTER_MESSAGE_MAX_BYTES`).
pub const PIPELINE_BUDGET: usize = 4 << 20;
/// Pub/Sub's limit of one attribute value.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Pub/Sub's limit of attributes per message.
pub const MAX_ATTRIBUTES: usize = 100;
/// Issues the reference validator keeps (the config's largest `max_issues`).
const REFERENCE_MAX_ISSUES: usize = 1000;
/// Fixed part of the raw bytes' JSON (`{"encoding":"base64","data":""}` and base64 padding).
pub const RAW_JSON_OVERHEAD: usize = 64;

/// The limits of the tight validator: small enough that short inputs reach every limit (issue
/// list full, too many items, record too large, nesting too deep).
pub fn tight_config() -> ValidationConfig {
    ValidationConfig {
        max_record_bytes: 1024,
        max_items: 4,
        max_string_chars: 8,
        max_depth: 4,
        max_issues: 3,
        ..ValidationConfig::default()
    }
}

struct Validators {
    intake: Intake,
    reference: Validator,
    max_issues: usize,
}

fn validators(tight: bool) -> &'static Validators {
    static DEFAULT: OnceLock<Validators> = OnceLock::new();
    static TIGHT: OnceLock<Validators> = OnceLock::new();
    let (cell, config) = if tight {
        (&TIGHT, tight_config as fn() -> ValidationConfig)
    } else {
        (
            &DEFAULT,
            ValidationConfig::default as fn() -> ValidationConfig,
        )
    };
    cell.get_or_init(|| {
        let config = config();
        let reference = ValidationConfig {
            max_issues: REFERENCE_MAX_ISSUES,
            ..config.clone()
        };
        Validators {
            intake: Intake::new(
                config.build().expect("the config builds"),
                Some(MAX_FAILED_DELIVERIES),
            ),
            reference: reference.build().expect("the reference config builds"),
            max_issues: config.max_issues,
        }
    })
}

/// One delivery to check.
#[derive(Clone, Debug, Default)]
pub struct Case<'a> {
    /// The record's bytes.
    pub raw: Cow<'a, [u8]>,
    /// `Delivery::duplicate_of`.
    pub duplicate_of: Option<String>,
    /// `Delivery::attempt`.
    pub attempt: Option<u32>,
    /// `Delivery::previous_failure`: (permanent, reason).
    pub previous_failure: Option<(bool, String)>,
    /// Validate with [`tight_config`] instead of the defaults.
    pub tight: bool,
    /// The source metadata handed to the intake.
    pub source: SourceMeta,
    /// The object URL of the short form; `None`: the pipeline's (`gs://bucket/root/<object_name>`).
    pub object_url: Option<String>,
}

/// A string of at least `len` bytes made of `seed` (or `x`) repeated.
fn stretch(seed: &str, len: usize) -> String {
    let seed = if seed.is_empty() { "x" } else { seed };
    seed.repeat(len.div_ceil(seed.len()))
}

/// The case encoded in a fuzz input (see the module documentation).
pub fn decode(data: &[u8]) -> Case<'_> {
    let (header, rest) = data.split_at(data.len().min(3));
    let byte = |i: usize| header.get(i).copied().unwrap_or(0);
    let (flags, count, text_len) = (byte(0), byte(1), usize::from(byte(2)));
    let (text, body) = rest.split_at(rest.len().min(text_len));
    // Invalid UTF-8 becomes U+FFFD (3 bytes for 1: messages then reach their limit sooner).
    let text = String::from_utf8_lossy(text);
    let text = text.as_ref();
    let mode = (flags >> 4) & 0x07;
    let raw: Cow<'_, [u8]> = if mode == 5 && !body.is_empty() {
        Cow::Owned(body.repeat((RAW_PREFIX_BYTES + 1).div_ceil(body.len())))
    } else {
        Cow::Borrowed(body)
    };
    let mut source = SourceMeta {
        message_id: Some("17".to_owned()),
        publish_time: (flags & 0x80 != 0)
            .then(|| "2021-05-24T23:59:59.999999999Z".parse().unwrap()),
        attributes: BTreeMap::new(),
    };
    if mode == 6 {
        // Over every clip limit of the short form: the id, the number of attributes, the length
        // of a key and of a value (a few oversized ones: each costs its size on every check).
        source.message_id = Some(stretch(text, MAX_ATTRIBUTE_VALUE_BYTES + 1));
        for i in 0..text_len.min(105) {
            let (key, value) = if i < 3 {
                (
                    stretch(text, 257),
                    stretch(text, MAX_ATTRIBUTE_VALUE_BYTES + 1),
                )
            } else {
                (String::new(), text.chars().take(8).collect())
            };
            source.attributes.insert(format!("{i:03}{key}"), value);
        }
    }
    Case {
        raw,
        duplicate_of: (flags & 0x01 != 0).then(|| text.to_owned()),
        attempt: match count {
            0 => None,
            255 => Some(u32::MAX),
            n => Some(u32::from(n)),
        },
        previous_failure: (flags & 0x02 != 0).then(|| (flags & 0x04 != 0, text.to_owned())),
        tight: flags & 0x08 != 0,
        source,
        object_url: (mode == 7).then(|| format!("gs://b/{}", stretch(text, 1100))),
    }
}

/// Decodes a fuzz input and checks it.
pub fn run(data: &[u8]) {
    let case = decode(data);
    let _ = check(&case);
}

/// Runs the intake on `case` and checks every invariant (panics on a violation). Returns the
/// outcome for further checks.
pub fn check(case: &Case<'_>) -> Result<Invoice, Box<DeadLetter>> {
    let v = validators(case.tight);
    let delivery = Delivery {
        duplicate_of: case.duplicate_of.as_deref(),
        attempt: case.attempt,
        previous_failure: case.previous_failure.as_ref().map(|(permanent, reason)| {
            PreviousFailure {
                permanent: *permanent,
                reason,
            }
        }),
    };
    let reads = Counter::new(0u32);
    let outcome = v.intake.process(&case.raw, &delivery, || {
        reads.set(reads.get() + 1);
        case.source.clone()
    });
    let permanent = matches!(case.previous_failure, Some((true, _)));
    let over = case.attempt.is_some_and(|a| a > MAX_FAILED_DELIVERIES);
    let expected_rule = if permanent {
        Some((ErrorCode::SinkRejected, stage::SINK, "$"))
    } else if over {
        Some((ErrorCode::DeliveryAttemptsExceeded, stage::DELIVERY, "$"))
    } else if case.duplicate_of.is_some() {
        Some((ErrorCode::DuplicateId, stage::VALIDATE, "$.NFeID"))
    } else {
        None
    };
    match &outcome {
        Ok(invoice) => {
            assert_eq!(reads.get(), 0, "source metadata read for a valid invoice");
            assert!(expected_rule.is_none(), "{expected_rule:?} not applied");
            let again = v
                .reference
                .process(&case.raw)
                .expect("the reference validator accepts a record the intake accepted");
            assert_eq!(&again, invoice, "validation is deterministic");
            check_invoice(invoice);
            check_amounts(&case.raw, invoice);
        }
        Err(dead) => {
            assert_eq!(reads.get(), 1, "source metadata read once per dead letter");
            assert_eq!(dead.source, case.source);
            check_letter(dead, &case.raw, v.max_issues);
            match expected_rule {
                Some((code, at_stage, path)) => {
                    assert_eq!(dead.stage, at_stage);
                    assert_eq!(dead.issues.len(), 1, "{:?}", dead.issues);
                    assert_eq!(
                        (dead.issues[0].code, dead.issues[0].path.as_str()),
                        (code, path)
                    );
                    assert_eq!((dead.issues_omitted, dead.omitted_codes.len()), (0, 0));
                }
                None => {
                    assert_eq!(dead.stage, stage::VALIDATE);
                    let reference = v
                        .reference
                        .validate(&case.raw)
                        .expect_err("the reference validator rejects a record the intake rejected");
                    check_against_reference(dead, &reference, v.max_issues);
                }
            }
            let url = case
                .object_url
                .clone()
                .unwrap_or_else(|| format!("gs://bucket/root/{}", dead.object_name()));
            check_messages(dead, &url);
        }
    }
    outcome
}

/// Exact totals and the Bigtable / BigQuery encodings of a valid invoice. The totals are checked
/// with schoolbook decimal arithmetic ([`Exact`]), independent of the decimal type's rounding.
pub fn check_invoice(invoice: &Invoice) {
    assert_eq!(invoice.item_count as usize, invoice.items.len());
    assert!(!invoice.items.is_empty());
    let mut gross = Exact::zero();
    for (i, line) in invoice.items.iter().enumerate() {
        assert_eq!(line.line_number as usize, i + 1);
        let total = Exact::of(line.unit_value).mul(&Exact::of(line.quantity));
        assert_eq!(
            Exact::of(line.line_total),
            total,
            "line {i}: {} = {} x {}",
            line.line_total,
            line.unit_value,
            line.quantity
        );
        gross = gross.add(&total);
    }
    assert_eq!(
        Exact::of(invoice.gross),
        gross,
        "gross = sum of the line totals"
    );
    assert_eq!(
        Exact::of(invoice.net).add(&Exact::of(invoice.discount)),
        Exact::of(invoice.gross),
        "net = gross - discount: {} = {} - {}",
        invoice.net,
        invoice.gross,
        invoice.discount
    );
    let [row, index] = BigtableLayout::default().encode(invoice);
    for cell in row.cells.iter().chain(&index.cells) {
        assert_eq!(
            cell.timestamp_micros % 1000,
            0,
            "cell timestamps are whole milliseconds"
        );
        assert!(cell.timestamp_micros > 0);
    }
    let _ = nfe::bigquery::invoice_row(invoice);
    assert_eq!(nfe::bigquery::item_rows(invoice).len(), invoice.items.len());
}

/// The invoice's ids and amounts against an independent reading of the record (`serde_json`,
/// numbers as integers or `f64`): catches an amount that is wrong yet consistent with itself.
/// Records that `serde_json` refuses (an unknown field holding `1e400`) are not compared.
pub fn check_amounts(raw: &[u8], invoice: &Invoice) {
    use rust_decimal::prelude::ToPrimitive;
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return;
    };
    assert_eq!(doc["NFeID"].as_i64(), Some(invoice.nfe_id), "NFeID");
    assert_eq!(
        doc["NFeNumber"].as_i64(),
        Some(invoice.nfe_number),
        "NFeNumber"
    );
    let close = |d: rust_decimal::Decimal, v: &serde_json::Value, what: String| {
        let read = v.as_f64().unwrap_or(f64::NAN);
        let ours = d.to_f64().unwrap_or(f64::NAN);
        assert!(
            (read - ours).abs() <= read.abs().max(ours.abs()) * 1e-9,
            "{what}: {d} but the record says {v}"
        );
    };
    close(invoice.discount, &doc["Discount"], "Discount".into());
    for (i, line) in invoice.items.iter().enumerate() {
        let item = &doc["ItemList"][i];
        close(
            line.unit_value,
            &item["Value"],
            format!("ItemList[{i}].Value"),
        );
        close(
            line.quantity,
            &item["Quantity"],
            format!("ItemList[{i}].Quantity"),
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Codes of `codes`, distinct and in documentation order.
fn is_distinct_sorted(codes: &[ErrorCode]) -> bool {
    codes.windows(2).all(|w| w[0] < w[1])
}

/// The full form of a dead letter and its bounded issue list.
pub fn check_letter(dead: &DeadLetter, raw: &[u8], max_issues: usize) {
    assert_eq!(dead.raw.0, raw, "the dead letter keeps the exact bytes");
    assert_eq!(dead.raw_sha256, sha256_hex(raw));
    assert_eq!((dead.raw_size, dead.object.as_deref()), (None, None));
    assert!(!dead.issues.is_empty(), "a dead letter says why");
    assert!(
        dead.issues.len() <= max_issues,
        "{} issues kept, max_issues {max_issues}",
        dead.issues.len()
    );
    for issue in &dead.issues {
        assert!(issue.path.starts_with('$'), "path {:?}", issue.path);
        assert!(
            issue.path.len() <= MAX_PATH_BYTES,
            "path of {} bytes",
            issue.path.len()
        );
        assert!(
            issue.message.len() <= MAX_MESSAGE_BYTES,
            "message of {} bytes",
            issue.message.len()
        );
    }
    assert!(
        is_distinct_sorted(&dead.omitted_codes),
        "{:?}",
        dead.omitted_codes
    );
    assert!(dead.omitted_codes.len() as u64 <= dead.issues_omitted);
    for code in &dead.omitted_codes {
        assert!(
            dead.issues.iter().all(|i| i.code != *code),
            "{code} is both kept and listed as omitted"
        );
    }
    let codes = dead.codes();
    assert!(is_distinct_sorted(&codes));

    let full = dead.to_json();
    let back: DeadLetter = serde_json::from_slice(&full).expect("the full form reads back");
    assert_eq!(
        &back, dead,
        "the full form reads back to the identical letter"
    );
    assert_eq!(
        DeadLetter::object_name_of_json(&full),
        Some(dead.object_name()),
        "object name of the full form"
    );
    let raw_json = serde_json::to_vec(&dead.raw).expect("raw bytes encode");
    assert!(
        raw_json.len() <= raw.len() / 3 * 4 + 4 + RAW_JSON_OVERHEAD,
        "{} raw bytes encode in {} bytes",
        raw.len(),
        raw_json.len()
    );
}

/// The issues kept and counted against a validator that keeps up to 1,000 of them.
pub fn check_against_reference(dead: &DeadLetter, reference: &Rejection, max_issues: usize) {
    let total = dead.issues.len() as u64 + dead.issues_omitted;
    assert_eq!(total, reference.total(), "issues found, kept or not");
    assert_eq!(dead.issues.len() as u64, total.min(max_issues as u64));
    assert_eq!(dead.codes(), reference.distinct_codes(), "distinct codes");
    let kept = dead.issues.len();
    assert_eq!(
        dead.issues[..kept - 1],
        reference.issues[..kept - 1],
        "the first issues are kept"
    );
    // The last one kept is the next one found, or the issue that stopped parsing.
    let last = &dead.issues[kept - 1];
    assert!(
        *last == reference.issues[kept - 1] || Some(last) == reference.issues.last(),
        "{last:?}"
    );
}

/// The topic messages of a dead letter under three budgets.
pub fn check_messages(dead: &DeadLetter, object_url: &str) {
    let full = dead.to_json();
    for budget in [PIPELINE_BUDGET, SHORT_FORM_MAX_BYTES, 0] {
        let m = dead.message(object_url, budget);
        if budget >= SHORT_FORM_MAX_BYTES {
            assert!(
                m.data.len() <= budget,
                "message of {} bytes over its budget {budget}",
                m.data.len()
            );
        }
        if full.len() <= budget {
            assert!(!m.truncated);
            assert_eq!(m.data, full, "the full form when it fits");
        } else {
            assert!(m.truncated);
            check_short_form(dead, &m.data, object_url);
        }
        let attribute = |key: &str| {
            m.attributes
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        let codes: Vec<&str> = dead.codes().into_iter().map(ErrorCode::as_str).collect();
        assert_eq!(attribute("stage"), Some(dead.stage.as_str()));
        assert_eq!(attribute("codes"), Some(codes.join(",").as_str()));
        assert_eq!(attribute("raw_sha256"), Some(dead.raw_sha256.as_str()));
        for key in ["stage", "codes", "raw_sha256"] {
            let value = attribute(key).unwrap_or_default();
            assert!(
                value.len() <= MAX_ATTRIBUTE_VALUE_BYTES,
                "attribute {key} of {} bytes",
                value.len()
            );
        }
        assert_eq!(attribute("message_id"), dead.source.message_id.as_deref());
        assert_eq!(attribute("truncated"), m.truncated.then_some("true"));
        assert_eq!(attribute("object"), m.truncated.then_some(object_url));
        assert!(m.attributes.len() <= MAX_ATTRIBUTES);
    }
}

/// A short form: bounded, a prefix of the raw bytes, the same identity and object name.
pub fn check_short_form(dead: &DeadLetter, data: &[u8], object_url: &str) {
    assert!(
        data.len() <= SHORT_FORM_MAX_BYTES,
        "short form of {} bytes",
        data.len()
    );
    let short: DeadLetter = serde_json::from_slice(data).expect("the short form reads back");
    let raw = &dead.raw.0;
    assert_eq!(short.raw_sha256, dead.raw_sha256);
    assert_eq!(short.raw_size, Some(raw.len() as u64));
    assert!(
        raw.starts_with(&short.raw.0),
        "the short form holds a prefix"
    );
    let prefix = short.raw.0.len();
    assert!(prefix <= RAW_PREFIX_BYTES);
    let full_prefix = raw.len().min(RAW_PREFIX_BYTES);
    // UTF-8 text is cut on a character boundary (at most 3 bytes earlier).
    assert!(
        prefix == full_prefix || (prefix + 3 >= full_prefix && std::str::from_utf8(raw).is_ok())
    );
    assert_eq!(
        short.object.as_deref(),
        Some(clip_text(object_url, MAX_ATTRIBUTE_VALUE_BYTES).as_ref())
    );
    assert!(short.issues.len() <= SHORT_FORM_MAX_ISSUES);
    assert_eq!(short.issues[..], dead.issues[..short.issues.len()]);
    assert_eq!(
        short.issues.len() as u64 + short.issues_omitted,
        dead.issues.len() as u64 + dead.issues_omitted
    );
    assert_eq!(short.codes(), dead.codes());
    assert_eq!(short.stage, dead.stage);
    assert_eq!(short.failed_at, dead.failed_at);
    assert_eq!(short.object_name(), dead.object_name());
    assert_eq!(
        DeadLetter::object_name_of_json(data),
        Some(dead.object_name())
    );
}

/// A non-negative decimal as its base-10 digits (least significant first) and scale, for exact
/// arithmetic without any bound.
#[derive(Clone, Debug)]
pub struct Exact {
    digits: Vec<u8>,
    scale: usize,
}

impl Exact {
    fn zero() -> Exact {
        Exact {
            digits: Vec::new(),
            scale: 0,
        }
    }

    /// The exact value of `d`, which must not be negative (an invoice's amounts never are).
    pub fn of(d: rust_decimal::Decimal) -> Exact {
        assert!(!d.is_sign_negative() || d.is_zero(), "negative amount {d}");
        let digits = d
            .mantissa()
            .unsigned_abs()
            .to_string()
            .bytes()
            .rev()
            .map(|b| b - b'0')
            .collect();
        Exact {
            digits,
            scale: d.scale() as usize,
        }
    }

    /// Digits at `scale` (which is at least `self.scale`).
    fn at_scale(&self, scale: usize) -> Vec<u8> {
        let mut out = vec![0; scale - self.scale];
        out.extend_from_slice(&self.digits);
        out
    }

    pub fn add(&self, other: &Exact) -> Exact {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.at_scale(scale), other.at_scale(scale));
        let mut digits = Vec::with_capacity(a.len().max(b.len()) + 1);
        let mut carry = 0;
        for i in 0..a.len().max(b.len()) {
            let sum = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
            digits.push(sum % 10);
            carry = sum / 10;
        }
        if carry > 0 {
            digits.push(carry);
        }
        Exact { digits, scale }
    }

    pub fn mul(&self, other: &Exact) -> Exact {
        let mut acc = vec![0u32; self.digits.len() + other.digits.len() + 1];
        for (i, &a) in self.digits.iter().enumerate() {
            for (j, &b) in other.digits.iter().enumerate() {
                acc[i + j] += u32::from(a) * u32::from(b);
            }
        }
        let mut digits = Vec::with_capacity(acc.len());
        let mut carry = 0;
        for d in acc {
            let v = d + carry;
            digits.push((v % 10) as u8);
            carry = v / 10;
        }
        while carry > 0 {
            digits.push((carry % 10) as u8);
            carry /= 10;
        }
        Exact {
            digits,
            scale: self.scale + other.scale,
        }
    }

    /// Significant digits and the power of ten of the last one (zero: empty, 0).
    fn normal(&self) -> (&[u8], i64) {
        let top = self
            .digits
            .iter()
            .rposition(|&d| d != 0)
            .map_or(0, |p| p + 1);
        let digits = &self.digits[..top];
        let low = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
        if digits.is_empty() {
            return (digits, 0);
        }
        (&digits[low..], low as i64 - self.scale as i64)
    }
}

impl PartialEq for Exact {
    fn eq(&self, other: &Exact) -> bool {
        self.normal() == other.normal()
    }
}
