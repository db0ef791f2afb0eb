//! Property tests of the intake step (`nfe::Intake::process`) on stable Rust: random JSON trees,
//! record-shaped trees (so that validation goes deep), mutated valid records and random
//! deliveries, checked against the same invariants as the `validate_step` fuzz target (the
//! checks are shared: `fuzz/src/validate_step.rs`), plus deterministic hostile records too large
//! for the fuzzer (50,000 invalid strings, a full 1 MiB record, a 3.5 MiB message).

#[path = "../../../fuzz/src/validate_step.rs"]
mod validate_step;

use std::borrow::Cow;
use std::collections::BTreeMap;

use nfe::{
    stage, DeadLetter, ErrorCode, Issue, SourceMeta, ValidationConfig, MAX_MESSAGE_BYTES,
    MAX_PATH_BYTES, RAW_PREFIX_BYTES, SHORT_FORM_MAX_BYTES, SHORT_FORM_MAX_ISSUES,
};
use proptest::prelude::*;
use validate_step::{check, Case, MAX_ATTRIBUTE_VALUE_BYTES, PIPELINE_BUDGET};

const KNOWN_FIELDS: [&str; 9] = [
    "CreateDate",
    "EmissionDate",
    "Discount",
    "NFeNumber",
    "NFeID",
    "ItemList",
    "ProductName",
    "Value",
    "Quantity",
];

/// JSON number text: small, 20-40 digit integers, decimals, exponents (some huge), negative zero.
fn number() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u32..1000).prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{19,39}",
        "-?[0-9]{1,3}\\.[0-9]{1,12}",
        "-?[1-9][0-9]{0,3}(\\.[0-9]{1,4})?[eE][+-]?[0-9]{1,3}",
        "-?[0-9][eE][+-]?[0-9]{15,25}",
        Just("-0".to_owned()),
        Just("0.000".to_owned()),
        Just("79228162514264337593543950336".to_owned()),
    ]
    .prop_map(String::into_bytes)
}

/// A JSON string token as raw bytes: text, escapes, raw control bytes (malformed JSON), invalid
/// UTF-8 and lone surrogates, dates.
fn string() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        4 => "[a-zA-Z0-9 çãé]{0,12}".prop_map(String::into_bytes),
        2 => prop::sample::select(KNOWN_FIELDS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(
            prop_oneof![
                Just(b"\xff".to_vec()),
                Just(b"\xc3\x28".to_vec()),
                Just(b"\xed\xa0\x80".to_vec()),
                Just(b"\\ud800".to_vec()),
                Just(b"\\udc00x".to_vec()),
                Just(b"\\u0001\\u001F\\n\\\"\\\\".to_vec()),
                Just("\u{1F37A}".as_bytes().to_vec()),
                Just(b"ok".to_vec()),
            ],
            1..6
        )
        .prop_map(|parts| parts.concat()),
        1 => prop::collection::vec(0u8..0x20, 1..4),
        2 => prop_oneof![
            Just(b"2021-05-24T20:21:34.79".to_vec()),
            Just(b"2021-05-24".to_vec()),
            Just(b"2021-02-30T00:00:00".to_vec()),
            Just(b"2018-11-04T00:30:00".to_vec()),
            Just(b"2021-05-24T23:59:60+18:01".to_vec()),
            Just(b"1999-01-01T00:00:00Z".to_vec()),
            Just(b"2031-05-24T00:00:00.123456789-0300".to_vec()),
        ],
    ];
    body.prop_map(|b| [b"\"".as_slice(), &b, b"\""].concat())
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(KNOWN_FIELDS.to_vec())
            .prop_map(|s| format!("\"{s}\"").into_bytes()),
        1 => string(),
    ]
}

fn join(parts: Vec<Vec<u8>>, open: &[u8], close: &[u8]) -> Vec<u8> {
    let mut out = open.to_vec();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(p);
    }
    out.extend_from_slice(close);
    out
}

fn object(members: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    join(
        members
            .into_iter()
            .map(|(k, v)| [k, b":".to_vec(), v].concat())
            .collect(),
        b"{",
        b"}",
    )
}

/// Any JSON value (occasionally broken: raw control bytes in strings), nested up to 6 deep, with
/// arrays that sometimes repeat one string hundreds of times (past the issue limit).
fn tree() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(b"null".to_vec()),
        Just(b"true".to_vec()),
        Just(b"false".to_vec()),
        number(),
        string(),
    ];
    let repeated = (string(), 50usize..300).prop_map(|(v, n)| join(vec![v; n], b"[", b"]"));
    prop_oneof![8 => leaf, 1 => repeated].prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| join(v, b"[", b"]")),
            prop::collection::vec((key(), inner), 0..8).prop_map(object),
        ]
    })
}

/// A plausible value of each field, or any tree.
fn field_value(name: &'static str) -> BoxedStrategy<Vec<u8>> {
    let plausible: BoxedStrategy<Vec<u8>> = match name {
        "CreateDate" | "EmissionDate" => string().boxed(),
        "ProductName" => string().boxed(),
        _ => number().boxed(),
    };
    prop_oneof![3 => plausible, 1 => tree()].boxed()
}

fn item() -> impl Strategy<Value = Vec<u8>> {
    let members = (
        field_value("ProductName"),
        field_value("Value"),
        field_value("Quantity"),
        prop::collection::vec((key(), tree()), 0..2),
        any::<u8>(),
    );
    members.prop_map(|(name, value, quantity, extra, drop)| {
        let mut m = vec![
            (b"\"ProductName\"".to_vec(), name),
            (b"\"Value\"".to_vec(), value),
            (b"\"Quantity\"".to_vec(), quantity),
        ];
        if drop < 24 {
            m.remove(usize::from(drop % 3));
        }
        m.extend(extra);
        object(m)
    })
}

/// An object with the record's fields (each plausible or any tree), items, extra members.
fn record_shaped() -> impl Strategy<Value = Vec<u8>> {
    let items = prop_oneof![
        4 => prop::collection::vec(item(), 0..6).prop_map(|v| join(v, b"[", b"]")),
        1 => tree(),
    ];
    (
        [
            field_value("CreateDate"),
            field_value("EmissionDate"),
            field_value("Discount"),
            field_value("NFeNumber"),
            field_value("NFeID"),
        ],
        items,
        prop::collection::vec((key(), tree()), 0..3),
        any::<u8>(),
    )
        .prop_map(|(fields, items, extra, drop)| {
            let names = [
                "CreateDate",
                "EmissionDate",
                "Discount",
                "NFeNumber",
                "NFeID",
            ];
            let mut m: Vec<(Vec<u8>, Vec<u8>)> = names
                .iter()
                .zip(fields)
                .map(|(n, v)| (format!("\"{n}\"").into_bytes(), v))
                .collect();
            m.push((b"\"ItemList\"".to_vec(), items));
            if drop < 32 {
                m.remove(usize::from(drop % 6));
            }
            m.extend(extra);
            object(m)
        })
}

const REFERENCE: &[u8] = br#"{"CreateDate": "2021-05-24T20:21:34.79", "EmissionDate": "2021-05-24T00:00:00", "Discount": 0.0, "NFeNumber": 501, "NFeID": 1, "ItemList": [{"ProductName": "Rice", "Value": 35.55, "Quantity": 2}, {"ProductName": "Flour", "Value": 11.55, "Quantity": 5}, {"ProductName": "Bean", "Value": 27.15, "Quantity": 7}]}"#;

/// The reference record with a few byte edits (insert, delete, replace, or a slice of digits).
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..6).prop_map(|edits| {
        let mut bytes = REFERENCE.to_vec();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 if at < bytes.len() => bytes[at] = byte,
                _ => {
                    let digits = "9".repeat(usize::from(byte % 40));
                    bytes.splice(at..at, digits.bytes());
                }
            }
        }
        bytes
    })
}

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => tree(),
        3 => record_shaped(),
        3 => mutated(),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z: ]{0,40}",
        "[\u{0}-\u{1f}\"\\\\]{1,600}",
        "\\PC{0,300}",
    ]
}

/// A delivery as the transport may describe it, and the metadata of the message.
fn case_strategy() -> impl Strategy<Value = Case<'static>> {
    (
        record(),
        prop::option::weighted(0.1, text()),
        prop_oneof![Just(None), (1u32..12).prop_map(Some), Just(Some(u32::MAX))],
        prop::option::weighted(0.2, (any::<bool>(), text())),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.2, text()),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(raw, duplicate_of, attempt, previous_failure, tight, url, hostile_meta)| {
                let mut source = SourceMeta {
                    message_id: Some("17".to_owned()),
                    publish_time: Some("2021-05-24T23:21:34Z".parse().unwrap()),
                    attributes: BTreeMap::new(),
                };
                if hostile_meta {
                    // Over every clip limit: the id, the count of attributes, keys and values.
                    source.message_id = Some("\u{1}".repeat(2_000));
                    for i in 0..105 {
                        let (key, value) = if i < 3 {
                            ("\"".repeat(300), "\u{2}".repeat(1_100))
                        } else {
                            (String::new(), "v".to_owned())
                        };
                        source.attributes.insert(format!("{i:03}{key}"), value);
                    }
                }
                Case {
                    raw: Cow::Owned(raw),
                    duplicate_of,
                    attempt,
                    previous_failure,
                    tight,
                    source,
                    object_url: url.map(|u| format!("gs://b/{}", u.repeat(4))),
                }
            },
        )
}

proptest! {
    // A few seconds in a debug build; the fuzz target runs the same checks millions of times.
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn every_delivery_is_an_invoice_or_one_bounded_dead_letter(case in case_strategy()) {
        let _ = check(&case);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn record_shaped_trees_first_delivery(raw in record_shaped()) {
        let case = Case { raw: Cow::Owned(raw), ..Case::default() };
        let _ = check(&case);
    }
}

/// The validator's pipeline budget and shapes under test: a record whose known fields are fine
/// but `NFeID` is missing, with `n` invalid strings in an extra array.
fn invalid_strings_record(n: usize) -> Vec<u8> {
    let mut raw = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0.0,"NFeNumber":501,"ItemList":[{"ProductName":"Rice","Value":35.55,"Quantity":2}],"Junk":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            raw.push(b',');
        }
        raw.extend_from_slice(b"\"\xff\"");
    }
    raw.extend_from_slice(b"]}");
    raw
}

fn first_delivery(raw: Vec<u8>) -> Box<DeadLetter> {
    check(&Case {
        raw: Cow::Owned(raw),
        ..Case::default()
    })
    .expect_err("a dead letter")
}

#[test]
fn fifty_thousand_invalid_strings_keep_100_issues_and_count_the_rest() {
    let dead = first_delivery(invalid_strings_record(50_000));
    assert_eq!(dead.issues.len(), 100);
    assert!(dead.issues.iter().all(|i| i.code == ErrorCode::InvalidUtf8));
    assert_eq!(dead.issues[0].path, "$.Junk[0]");
    assert_eq!(dead.issues[99].path, "$.Junk[99]");
    // 49,900 more invalid strings, and the missing NFeID found after the list was full.
    assert_eq!(dead.issues_omitted, 49_901);
    assert_eq!(dead.omitted_codes, vec![ErrorCode::MissingField]);
    let m = dead.message("gs://bucket/root/x.json", PIPELINE_BUDGET);
    assert!(!m.truncated && m.data.len() <= PIPELINE_BUDGET);
    let codes = m.attributes.iter().find(|(k, _)| *k == "codes").unwrap();
    assert_eq!(codes.1, "NFE_INVALID_UTF8,NFE_MISSING_FIELD");
}

#[test]
fn a_full_one_mib_record_keeps_100_issues_and_fits_the_topic() {
    let limit = ValidationConfig::default().max_record_bytes;
    // As many invalid strings as fit in exactly max_record_bytes (padding the last one).
    let mut raw = invalid_strings_record((limit - 200) / 5);
    let pad = limit - raw.len();
    let at = raw.len() - 3; // before the last string's closing quote and "]}"
    raw.splice(at..at, vec![b'a'; pad]);
    assert_eq!(raw.len(), limit);
    let n = (limit - 200) / 5;
    let dead = first_delivery(raw.clone());
    assert_eq!(dead.issues.len(), 100);
    assert_eq!(dead.issues_omitted, n as u64 - 100 + 1);
    assert_eq!(dead.omitted_codes, vec![ErrorCode::MissingField]);
    let m = dead.message("gs://bucket/root/x.json", PIPELINE_BUDGET);
    assert!(
        !m.truncated,
        "the full form of a 1 MiB record fits the topic"
    );
    assert!(m.data.len() <= PIPELINE_BUDGET);

    // One byte more: too large, not parsed, one issue.
    raw.insert(at, b'a');
    let dead = first_delivery(raw);
    assert_eq!(dead.codes(), vec![ErrorCode::RecordTooLarge]);
    assert_eq!((dead.issues.len(), dead.issues_omitted), (1, 0));
}

#[test]
fn a_message_over_the_budget_becomes_a_short_form_within_it() {
    // Pub/Sub accepts up to 10 MB; 3.5 MiB of non-UTF-8 bytes encode to 4.7 MB in the full form.
    let raw = vec![0xffu8; 7 << 19];
    let dead = first_delivery(raw.clone());
    let url = format!("gs://bucket/root/{}", dead.object_name());
    let m = dead.message(&url, PIPELINE_BUDGET);
    assert!(m.truncated);
    assert!(m.data.len() <= PIPELINE_BUDGET);
    let short: DeadLetter = serde_json::from_slice(&m.data).unwrap();
    assert_eq!(short.raw.0, raw[..RAW_PREFIX_BYTES]);
    assert_eq!(short.raw_size, Some(raw.len() as u64));
    assert_eq!(short.raw_sha256, dead.raw_sha256);
    assert_eq!(short.object.as_deref(), Some(url.as_str()));
}

#[test]
fn every_code_fits_one_attribute_value() {
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let joined = all.join(",");
    assert!(
        joined.len() <= MAX_ATTRIBUTE_VALUE_BYTES,
        "{}",
        joined.len()
    );
    // And a letter with every code, kept or omitted, says so in its attribute.
    let issues = ErrorCode::ALL
        .iter()
        .map(|&c| Issue::new(c, "$", "x"))
        .collect();
    let dead = DeadLetter::new(
        b"{}".to_vec(),
        issues,
        stage::VALIDATE,
        SourceMeta::default(),
        "2021-05-24T23:21:35Z".parse().unwrap(),
    );
    let m = dead.message("gs://b/o", PIPELINE_BUDGET);
    let codes = m.attributes.iter().find(|(k, _)| *k == "codes").unwrap();
    assert_eq!(codes.1, joined);
}

/// The largest short form that any dead letter can have: every field exactly at its clip limit
/// (longer ones are cut and end with an ASCII marker, which is shorter in JSON), every byte of it a
/// control character (six bytes in JSON), the longest code on every issue, codes of every other
/// kind omitted, a raw prefix that only base64 encodes.
fn worst_letter() -> (DeadLetter, String) {
    let control = |n: usize| "\u{1}".repeat(n);
    let longest = *ErrorCode::ALL
        .iter()
        .max_by_key(|c| c.as_str().len())
        .unwrap();
    let issues = (0..SHORT_FORM_MAX_ISSUES + 5)
        .map(|_| Issue {
            code: longest,
            path: format!("${}", control(MAX_PATH_BYTES - 1)),
            message: control(MAX_MESSAGE_BYTES),
        })
        .collect();
    let mut attributes = BTreeMap::new();
    for i in 0..150 {
        // Distinct keys of exactly 256 bytes: a 3-digit prefix, then control characters.
        attributes.insert(format!("{i:03}{}", control(253)), control(1024));
    }
    let mut dead = DeadLetter::new(
        vec![0xff; RAW_PREFIX_BYTES + 10],
        issues,
        control(64),
        SourceMeta {
            message_id: Some(control(1024)),
            publish_time: Some("2021-05-24T23:21:34.123456789Z".parse().unwrap()),
            attributes,
        },
        "2021-05-24T23:21:35.123456789Z".parse().unwrap(),
    );
    dead.issues_omitted = u64::MAX / 2;
    dead.omitted_codes = ErrorCode::ALL
        .iter()
        .copied()
        .filter(|c| *c != longest)
        .collect();
    (dead, control(1024))
}

/// A hand-made letter with every field of the short form at its clip limit, in control characters
/// (six bytes each in JSON): its short form still fits `SHORT_FORM_MAX_BYTES`.
#[test]
fn the_worst_short_form_fits_short_form_max_bytes() {
    let (dead, url) = worst_letter();
    let m = dead.message(&url, SHORT_FORM_MAX_BYTES);
    assert!(m.truncated);
    assert!(
        m.data.len() <= SHORT_FORM_MAX_BYTES,
        "worst short form: {} bytes, SHORT_FORM_MAX_BYTES = {SHORT_FORM_MAX_BYTES}",
        m.data.len()
    );
}

/// The largest short form the intake can produce: over 100 issues whose paths are clipped at
/// `MAX_PATH_BYTES` and made of quotes (two bytes each in JSON), a raw prefix that only base64
/// encodes, every metadata field at its clip limit in control characters, an object URL too.
#[test]
fn the_largest_short_form_of_the_intake_fits_its_budget() {
    let key = format!("\"{}\"", "\\\"".repeat(64));
    let mut raw = Vec::new();
    for _ in 0..30 {
        raw.extend_from_slice(format!("{{{key}:").as_bytes());
    }
    raw.push(b'[');
    for i in 0..150 {
        if i > 0 {
            raw.push(b',');
        }
        raw.extend_from_slice(b"\"\xff\"");
    }
    raw.push(b']');
    raw.extend_from_slice(&[b'}'; 30]);
    raw.extend_from_slice(&vec![b' '; RAW_PREFIX_BYTES]);
    let control = |n: usize| "\u{1}".repeat(n);
    let mut source = SourceMeta {
        message_id: Some(control(1024)),
        publish_time: Some("2021-05-24T23:21:34.123456789Z".parse().unwrap()),
        attributes: BTreeMap::new(),
    };
    for i in 0..100 {
        source
            .attributes
            .insert(format!("{i:03}{}", control(253)), control(1024));
    }
    let dead = check(&Case {
        raw: Cow::Owned(raw),
        source,
        object_url: Some(control(1024)),
        ..Case::default()
    })
    .expect_err("a dead letter");
    assert_eq!(dead.issues.len(), 100);
    assert!(dead
        .issues
        .iter()
        .all(|i| i.path.len() > MAX_PATH_BYTES - 20));
    let m = dead.message(&control(1024), 0);
    assert!(m.truncated);
    println!(
        "largest short form of the intake: {} bytes of {SHORT_FORM_MAX_BYTES}",
        m.data.len()
    );
}
