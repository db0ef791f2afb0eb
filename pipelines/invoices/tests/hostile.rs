//! Hostile records end to end on the emulators: next to valid invoices, records of every hostile class
//! (huge and boundary numbers, many invalid strings, many distinct issues, control bytes, oversize
//! records, empty, whitespace, BOM, duplicate keys, deep nesting, a repeated id, a message delivered
//! too often) are published straight to the topic. After one idle-terminated run nothing is nacked,
//! nothing is left on the subscription, and every record is either a row with exact totals (checked
//! against Python's `decimal` module reading the record with its own JSON parser) or exactly one
//! dead letter with its code, on the dead-letter topic (within Pub/Sub's limits) and in Cloud Storage
//! (with every raw byte).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fluxo_gcp::bigquery::{BigQueryAdmin, ClientConfig};
use fluxo_gcp::pubsub::raw::proto::{
    ModifyAckDeadlineRequest, PubsubMessage as RawMessage, PullRequest,
};
use fluxo_gcp::pubsub::{Endpoint, PubsubClient, MAX_ATTRIBUTE_VALUE_BYTES};
use fluxo_gcp::storage::{Location, Store, StoreOptions};
use invoice_api::{Generator, GeneratorConfig};
use invoices::config::{ConfigFile, Profile};
use invoices::query;
use sha2::{Digest, Sha256};

use common::{drain, profile, publish, python_totals, run_until_idle, start_stack, trim_decimal};

/// One record of the corpus and what must become of it.
struct Case {
    name: &'static str,
    data: Vec<u8>,
    attributes: HashMap<String, String>,
    /// `None`: a valid invoice; else the exact set of codes of its one dead letter.
    codes: Option<Vec<&'static str>>,
}

fn record(value: &str, quantity: &str, discount: &str, id: i64) -> Vec<u8> {
    format!(
        r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":{discount},"NFeNumber":{id},"NFeID":{id},"ItemList":[{{"ProductName":"Item","Value":{value},"Quantity":{quantity}}}]}}"#
    )
    .into_bytes()
}

fn items_record(items: &str, discount: &str, id: i64) -> Vec<u8> {
    format!(
        r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":{discount},"NFeNumber":{id},"NFeID":{id},"ItemList":[{items}]}}"#
    )
    .into_bytes()
}

fn valid(name: &'static str, data: Vec<u8>) -> Case {
    Case {
        name,
        data,
        attributes: HashMap::new(),
        codes: None,
    }
}

fn dead(name: &'static str, data: Vec<u8>, codes: &[&'static str]) -> Case {
    Case {
        name,
        data,
        attributes: HashMap::new(),
        codes: Some(codes.to_vec()),
    }
}

/// The corpus: ids 900_000+ for the hand-made records (the generator's are 1..=count).
fn corpus() -> Vec<Case> {
    let item = |v: &str, q: &str| format!(r#"{{"ProductName":"Item","Value":{v},"Quantity":{q}}}"#);
    let many_items: Vec<String> = (0..990).map(|i| item(&format!("{i}.99"), "3")).collect();
    // 50,000 strings of one byte that is not UTF-8 (0xFF), then a valid record body.
    let mut bad_strings = br#"{"Extra":["#.to_vec();
    for i in 0..50_000 {
        if i > 0 {
            bad_strings.push(b',');
        }
        bad_strings.extend_from_slice(b"\"\xff\"");
    }
    bad_strings.extend_from_slice(br#"],"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0,"NFeNumber":1,"NFeID":900100,"ItemList":[{"ProductName":"x","Value":1,"Quantity":1}]}"#);
    // About 0.8 MB of strings with invalid UTF-8 inside the items.
    let mut utf8_items = Vec::new();
    for i in 0..60_000 {
        if i > 0 {
            utf8_items.push(b',');
        }
        utf8_items.extend_from_slice(b"{\"ProductName\":\"a\xffb\",\"Value\":1,\"Quantity\":1}");
    }
    let mut utf8_record = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0,"NFeNumber":2,"NFeID":900101,"ItemList":["#.to_vec();
    utf8_record.extend_from_slice(&utf8_items[..utf8_items.len().min(800_000)]);
    while utf8_record.last() != Some(&b'}') {
        utf8_record.pop();
    }
    utf8_record.extend_from_slice(b"]}");
    let many_issues = br#"{"CreateDate":"2021-13-01","EmissionDate":"yesterday","Discount":-5,"NFeNumber":"501","NFeID":1e3,
        "ItemList":[{"ProductName":"","Value":-1,"Quantity":-2},7,{"Value":1,"Quantity":1,"Quantity":2},
        {"ProductName":"ok","Value":0.123456,"Quantity":1},{"ProductName":null,"Value":"1","Quantity":0}]}"#
        .to_vec();
    let mut control = b"{\"Extra\":\"".to_vec();
    control.extend_from_slice(&vec![0x01u8; 1_600_000]);
    control.extend_from_slice(b"\"}");
    let deep = "[".repeat(100_000).into_bytes();
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(record("1", "1", "0", 900_110));
    let mut empty = dead("empty", Vec::new(), &["NFE_MALFORMED_JSON"]);
    empty
        .attributes
        .insert("note".into(), "an empty message".into());

    vec![
        // Valid edge cases: exact totals, whatever the size of the numbers.
        valid(
            "u64 max",
            record("18446744073709551615", "1", "0", 900_001),
        ),
        valid("u64 max + 1", record("18446744073709551616", "1", "0", 900_002)),
        valid("20 digits", record("20000000000000000000", "1", "0", 900_003)),
        valid(
            "19 nines x 3",
            record("9999999999999999999", "3", "0.01", 900_004),
        ),
        valid(
            "largest exact decimal",
            record("79228162514264337593543950335", "1", "0", 900_005),
        ),
        valid("tiny fractions", record("0.0001", "0.0001", "0", 900_006)),
        valid("exponents", record("1.5e2", "2E0", "0.5e1", 900_007)),
        valid("discount equals gross", record("12.34", "2", "24.68", 900_008)),
        valid("negative zero discount", record("1", "1", "-0", 900_009)),
        valid(
            "990 items",
            items_record(&many_items.join(","), "0", 900_010),
        ),
        valid(
            "longest multi-byte name and unknown fields",
            format!(
                r#"{{"Unknown":{{"a":[[[[1,2,{{"b":null}}]]]]}},"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0,"NFeNumber":1,"NFeID":900011,"ItemList":[{{"ProductName":"{}","Value":7.25,"Quantity":4}}]}}"#,
                "é".repeat(120)
            )
            .into_bytes(),
        ),
        // Numbers that cannot be stored exactly.
        dead(
            "30 digits",
            record("100000000000000000000000000000", "1", "0", 900_020),
            &["NFE_NUMBER_OUT_OF_RANGE"],
        ),
        dead(
            "40 digits",
            record("1234567890123456789012345678901234567890", "1", "0", 900_021),
            &["NFE_NUMBER_OUT_OF_RANGE"],
        ),
        dead(
            "line total overflows",
            record("79228162514264337593543950335", "2", "0", 900_022),
            &["NFE_NUMBER_OUT_OF_RANGE"],
        ),
        dead(
            "gross overflows",
            items_record(
                &[
                    item("50000000000000000000000000000", "1"),
                    item("50000000000000000000000000000", "1"),
                ]
                .join(","),
                "0",
                900_023,
            ),
            &["NFE_NUMBER_OUT_OF_RANGE"],
        ),
        // Hostile shapes.
        dead("50,000 invalid strings", bad_strings, &["NFE_INVALID_UTF8"]),
        dead(
            "0.8 MB of invalid UTF-8 items",
            utf8_record,
            &["NFE_INVALID_UTF8", "NFE_TOO_MANY_ITEMS"],
        ),
        dead(
            "many distinct issues",
            many_issues,
            &[
                "NFE_IMPOSSIBLE_DATE",
                "NFE_INVALID_DATE",
                "NFE_NEGATIVE_DISCOUNT",
                "NFE_WRONG_TYPE",
                "NFE_NOT_AN_INTEGER",
                "NFE_EMPTY_STRING",
                "NFE_NEGATIVE_VALUE",
                "NFE_NON_POSITIVE_QUANTITY",
                "NFE_DUPLICATE_KEY",
                "NFE_MISSING_FIELD",
                "NFE_TOO_PRECISE",
            ],
        ),
        dead(
            "1.6 MB of control bytes",
            control,
            &["NFE_RECORD_TOO_LARGE"],
        ),
        dead(
            "9 MB record",
            vec![b'x'; 9_000_000],
            &["NFE_RECORD_TOO_LARGE"],
        ),
        empty,
        dead("whitespace", b" \n\t\r ".to_vec(), &["NFE_MALFORMED_JSON"]),
        dead("byte order mark", bom, &["NFE_MALFORMED_JSON"]),
        dead(
            "duplicate keys",
            br#"{"NFeID":900120,"NFeID":900121,"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0,"NFeNumber":1,"ItemList":[{"ProductName":"x","Value":1,"Quantity":1}]}"#.to_vec(),
            &["NFE_DUPLICATE_KEY"],
        ),
        dead("deep nesting", deep, &["NFE_NESTING_TOO_DEEP"]),
    ]
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Receives the message with `data` and hands it back (nack) `times` times, as a failing worker
/// would, so that its next delivery is number `times + 1`.
async fn fail_deliveries(client: &PubsubClient, p: &Profile, data: &[u8], times: u32) {
    let sub = client.subscription_path(&p.subscription).unwrap();
    let mut failed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while failed < times {
        assert!(std::time::Instant::now() < deadline, "only {failed} nacks");
        #[allow(deprecated)]
        let resp = client
            .subscriber()
            .pull(
                PullRequest {
                    subscription: sub.clone(),
                    max_messages: 1000,
                    return_immediately: true,
                },
                None,
            )
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<String> = resp
            .received_messages
            .iter()
            .map(|m| {
                if m.message.as_ref().is_some_and(|m| m.data == data) {
                    failed += 1;
                }
                m.ack_id.clone()
            })
            .collect();
        if !ids.is_empty() {
            client
                .subscriber()
                .modify_ack_deadline(
                    ModifyAckDeadlineRequest {
                        subscription: sub.clone(),
                        ack_ids: ids,
                        ack_deadline_seconds: 0,
                    },
                    None,
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hostile_record_ends_as_an_exact_row_or_one_dead_letter() {
    let emulators = start_stack().await;
    let project = emulators.project().to_string();
    let p = profile(&project, "hostile", "");
    invoices::provision(&p).await.unwrap();
    let client = PubsubClient::connect(Endpoint::pubsub(None).unwrap(), &project)
        .await
        .unwrap();

    // Ordinary traffic from the generator (2% malformed), plus the corpus.
    let g = Generator::new(GeneratorConfig {
        seed: 7,
        count: 300,
        ..GeneratorConfig::default()
    })
    .unwrap();
    let mut cases: Vec<Case> = (1..=300)
        .map(|id| Case {
            name: "generated",
            data: g.record(id),
            attributes: HashMap::new(),
            codes: g.defect(id).map(|d| vec![d.expected_code()]),
        })
        .collect();
    cases.extend(corpus());
    // A repeated id flagged by ingest, and a valid record that failed 9 deliveries before.
    let first_valid = (1..=300u64).find(|id| g.defect(*id).is_none()).unwrap();
    let mut repeat = dead("repeated id", g.record(first_valid), &["NFE_DUPLICATE_ID"]);
    repeat.attributes.insert("duplicate_of".into(), "0".into());
    cases.push(repeat);
    let poison = dead(
        "delivered too often",
        record("5", "5", "0", 900_200),
        &["NFE_DELIVERY_ATTEMPTS_EXCEEDED"],
    );
    let poison_data = poison.data.clone();

    // The poison record first, alone: fail its first 9 deliveries (max_failed_deliveries = 9).
    publish(
        &client,
        &p,
        vec![RawMessage {
            data: poison.data.clone().into(),
            ..Default::default()
        }],
    )
    .await;
    fail_deliveries(&client, &p, &poison_data, p.failed_deliveries_guard()).await;
    cases.push(poison);
    publish(
        &client,
        &p,
        cases
            .iter()
            .filter(|c| c.name != "delivered too often")
            .map(|c| RawMessage {
                data: c.data.clone().into(),
                attributes: c.attributes.clone(),
                ..Default::default()
            })
            .collect(),
    )
    .await;

    let report = run_until_idle(&p).await;
    let sent = cases.len() as u64;
    assert_eq!(report.nacked, 0, "nothing nacked");
    assert_eq!(report.acked, report.received);
    assert_eq!(report.received, sent);

    // Nothing is left on the pipeline's subscription.
    let left = drain(&client, &p.subscription).await;
    assert!(left.is_empty(), "{} messages left", left.len());

    // Valid records: exactly the rows, with the oracle's totals, in Bigtable and BigQuery.
    let valid: Vec<&Case> = cases.iter().filter(|c| c.codes.is_none()).collect();
    let expected = python_totals(&valid.iter().map(|c| &c.data[..]).collect::<Vec<_>>());
    assert_eq!(expected.len(), valid.len());
    assert_eq!(report.invoices, valid.len() as u64);
    let reader = query::reader(&p).await.unwrap();
    for (id, (gross, net)) in &expected {
        let row = query::get_invoice(&reader, *id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("invoice {id} not in Bigtable"));
        assert_eq!(
            (
                trim_decimal(row["gross"].as_str().unwrap()),
                trim_decimal(row["net"].as_str().unwrap())
            ),
            (gross.clone(), net.clone()),
            "Bigtable totals of {id}"
        );
    }
    let inv = query::inventory(&p).await.unwrap();
    assert_eq!(inv.bigtable_invoice_rows, valid.len() as u64);
    assert_eq!(inv.bigquery_invoices, valid.len() as u64);
    let admin = BigQueryAdmin::connect(&project, &ClientConfig::default())
        .await
        .unwrap();
    let rows = admin
        .query(&format!(
            "SELECT nfe_id, CAST(gross AS STRING) AS gross, CAST(net AS STRING) AS net FROM `{project}.{}.invoices`",
            p.bigquery_dataset
        ))
        .await
        .unwrap()
        .records();
    let stored: BTreeMap<i64, (String, String)> = rows
        .into_iter()
        .map(|r| {
            let id = match &r["nfe_id"] {
                serde_json::Value::String(s) => s.parse().unwrap(),
                v => v.as_i64().unwrap(),
            };
            let text = |k: &str| trim_decimal(r[k].as_str().unwrap());
            (id, (text("gross"), text("net")))
        })
        .collect();
    assert_eq!(stored, expected, "BigQuery totals");

    // Every other record: exactly one dead letter with its codes, on the topic within Pub/Sub's
    // limits, and in Cloud Storage with every raw byte.
    let bad: BTreeMap<String, &Case> = cases
        .iter()
        .filter(|c| c.codes.is_some())
        .map(|c| (sha256_hex(&c.data), c))
        .collect();
    let on_topic = drain(&client, &p.dead_letter_subscription()).await;
    let mut seen = BTreeSet::new();
    for m in &on_topic {
        assert!(m.data.len() <= invoices::graph::DEAD_LETTER_MESSAGE_MAX_BYTES);
        assert!(m
            .attributes
            .values()
            .all(|v| v.len() <= MAX_ATTRIBUTE_VALUE_BYTES));
        let sha = &m.attributes["raw_sha256"];
        let case = bad
            .get(sha)
            .unwrap_or_else(|| panic!("unexpected dead letter {:?}", m.attributes));
        assert!(
            seen.insert(sha.clone()),
            "two dead letters for {}",
            case.name
        );
        let mut want: Vec<&str> = case.codes.clone().unwrap();
        want.sort_unstable();
        let mut got: Vec<&str> = m.attributes["codes"].split(',').collect();
        got.sort_unstable();
        assert_eq!(got, want, "codes of {}", case.name);
        let letter: nfe::DeadLetter = serde_json::from_slice(&m.data).unwrap();
        if letter.raw_size.is_some() {
            assert!(case.data.starts_with(&letter.raw.0), "{}", case.name);
            assert_eq!(m.attributes["truncated"], "true");
        } else {
            assert_eq!(letter.raw.0, case.data, "{}", case.name);
        }
    }
    assert_eq!(seen.len(), bad.len(), "one dead letter per bad record");

    let store = Store::open(
        &Location::parse(&p.archive_url, "archive_url").unwrap(),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    let objects = store.list("dead-letter/").await.unwrap();
    assert_eq!(objects.len(), bad.len(), "one object per bad record");
    for o in &objects {
        let body = store.get(&o.name).await.unwrap();
        let letter: nfe::DeadLetter = serde_json::from_slice(&body).unwrap();
        let case = bad[&letter.raw_sha256];
        assert_eq!(letter.raw.0, case.data, "object of {}", case.name);
        assert!(letter.issues.len() <= 100);
        assert!(o.name.ends_with(&format!("{}.json", letter.raw_sha256)));
    }
    let summary = query::dead_letters(&p, None, 5).await.unwrap();
    assert_eq!(summary.objects, bad.len() as u64);
    assert_eq!(summary.newest.len(), 5);
    assert_eq!(summary.by_code, inv.dead_letters_by_code);
    assert_eq!(report.dead_letters_by_code, inv.dead_letters_by_code);
}

/// Rows BigQuery cannot take: the profile allows 1,024 bytes of rows per `AppendRows` request, and
/// the item rows of 20 invoices are larger than that (product names of 120 four-byte characters), so
/// the sink refuses those rows, permanently. Those messages are nacked once, come back with their history, and end as one
/// `NFE_SINK_REJECTED` dead letter each (acknowledged); the other invoices are stored whole. Nothing is
/// redelivered forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_a_sink_refuses_become_sink_rejected_dead_letters() {
    let emulators = start_stack().await;
    let project = emulators.project().to_string();
    let p = ConfigFile::parse(
        &common::profile_toml_tuned(&project, "refused", "bigquery_request_bytes = 1024"),
        "test.toml",
    )
    .unwrap()
    .profile("test", "test.toml")
    .unwrap();
    invoices::provision(&p).await.unwrap();
    let client = PubsubClient::connect(Endpoint::pubsub(None).unwrap(), &project)
        .await
        .unwrap();

    let whole: Vec<Vec<u8>> = (0..20)
        .map(|i| record("3.50", "2", "0", 910_000 + i))
        .collect();
    // 120 characters (the validation's limit) of 4 bytes each, twice in the row (name and key).
    let long_name = "\u{1D538}".repeat(120);
    let fractional: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            items_record(
                &format!(r#"{{"ProductName":"{long_name}","Value":3.50,"Quantity":2.5}}"#),
                "0",
                920_000 + i,
            )
        })
        .collect();
    publish(
        &client,
        &p,
        whole
            .iter()
            .chain(&fractional)
            .map(|d| RawMessage {
                data: d.clone().into(),
                ..Default::default()
            })
            .collect(),
    )
    .await;

    let report = run_until_idle(&p).await;
    // Each refused message was nacked once, then dead-lettered and acknowledged on redelivery.
    assert_eq!(report.nacked, 20, "{report:?}");
    assert_eq!(report.received, 60);
    assert_eq!(report.acked, 40);
    assert_eq!(
        report.dead_letters_by_code,
        BTreeMap::from([("NFE_SINK_REJECTED".to_string(), 20)])
    );
    let left = drain(&client, &p.subscription).await;
    assert!(left.is_empty(), "{} messages left", left.len());

    let on_topic = drain(&client, &p.dead_letter_subscription()).await;
    let refused: BTreeSet<String> = fractional.iter().map(|d| sha256_hex(d)).collect();
    let got: BTreeSet<String> = on_topic
        .iter()
        .map(|m| {
            assert_eq!(m.attributes["codes"], "NFE_SINK_REJECTED");
            assert_eq!(m.attributes["stage"], "sink");
            let letter: nfe::DeadLetter = serde_json::from_slice(&m.data).unwrap();
            assert!(
                letter.issues[0]
                    .message
                    .contains("exceeds max_bytes_per_request (1024)"),
                "{}",
                letter.issues[0].message
            );
            m.attributes["raw_sha256"].clone()
        })
        .collect();
    assert_eq!(got, refused, "one dead letter per refused record");
    assert_eq!(on_topic.len(), 20);
    let summary = query::dead_letters(&p, None, 100).await.unwrap();
    assert_eq!(summary.objects, 20);
    assert_eq!(summary.by_stage, BTreeMap::from([("sink".to_string(), 20)]));

    // The other invoices are stored everywhere; Bigtable also holds the refused ones (it accepted
    // them before BigQuery refused their items): the dead letter says which store refused.
    let inv = query::inventory(&p).await.unwrap();
    assert_eq!(inv.bigquery_items, 20);
    assert_eq!(inv.bigtable_invoice_rows, 40);
}
