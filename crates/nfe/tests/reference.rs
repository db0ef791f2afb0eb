//! The reference set (`testdata/challenge-invoices.json`): exact totals and every sink's output.

use std::collections::BTreeSet;
use std::str::FromStr;

use nfe::bigquery::{invoice_row, item_rows, INVOICES, INVOICE_ITEMS};
use nfe::{split_page, BigtableLayout, Invoice, ValidationConfig};
use rust_decimal::Decimal;

const PAGE: &[u8] = include_bytes!("../testdata/challenge-invoices.json");

fn invoices() -> Vec<Invoice> {
    let validator = ValidationConfig::default().build().unwrap();
    let page = split_page(PAGE).unwrap();
    assert!(page.duplicate_issues().is_empty());
    page.records
        .iter()
        .map(|r| validator.process(r.raw).unwrap())
        .collect()
}

#[test]
fn reference_totals_are_exact() {
    let invoices = invoices();
    let gross: Vec<String> = invoices.iter().map(|i| i.gross.to_string()).collect();
    assert_eq!(gross, ["318.90", "160.25", "103.13"]);
    let lines: Vec<Vec<String>> = invoices
        .iter()
        .map(|i| i.items.iter().map(|l| l.line_total.to_string()).collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["71.10", "57.75", "190.05"],
            vec!["122.50", "37.75"],
            vec!["54.00", "21.98", "27.15"],
        ]
    );
    for inv in &invoices {
        assert_eq!(inv.net, inv.gross, "discount is 0.0");
        assert_eq!(inv.discount.to_string(), "0.0");
        let sum = inv.items.iter().map(|l| l.line_total).sum::<Decimal>();
        assert_eq!(sum, inv.gross);
    }
    let total: Decimal = invoices.iter().map(|i| i.gross).sum();
    assert_eq!(total, Decimal::from_str("582.28").unwrap());
    assert_eq!(total.to_string(), "582.28");
    let counts: Vec<u32> = invoices.iter().map(|i| i.item_count).collect();
    assert_eq!(counts, [3, 2, 3]);
}

#[test]
fn reference_dates_resolve_to_utc_and_keep_the_text() {
    for inv in invoices() {
        assert_eq!(inv.emission.original, "2021-05-24T00:00:00");
        assert_eq!(inv.emission.utc.to_string(), "2021-05-24T03:00:00Z");
        assert_eq!(inv.creation.original, "2021-05-24T20:21:34.79");
        assert_eq!(inv.creation.utc.to_string(), "2021-05-24T23:21:34.79Z");
        assert_eq!(inv.emission.offset_seconds, -3 * 3600);
        assert!(inv.emission.offset_assumed);
        assert_eq!(inv.event_time, inv.emission.utc);
        assert_eq!(inv.emission_date.to_string(), "2021-05-24");
    }
}

#[test]
fn reference_bigtable_rows() {
    let layout = BigtableLayout::default();
    let invoices = invoices();
    let mut keys = BTreeSet::new();
    for inv in &invoices {
        let [row, index] = layout.encode(inv);
        assert_eq!(row.key, nfe::bigtable::row_key(inv.nfe_id));
        for cell in row.cells.iter().chain(&index.cells) {
            assert_eq!(cell.timestamp_micros, 1_621_898_494_790_000);
            assert_eq!(cell.timestamp_micros % 1000, 0);
        }
        let get = |q: &str| {
            row.cells
                .iter()
                .find(|c| c.qualifier.as_ref() == q.as_bytes())
                .map(|c| String::from_utf8(c.value.to_vec()).unwrap())
                .unwrap()
        };
        assert_eq!(get("gross"), inv.gross.to_string());
        assert_eq!(get("emission"), "2021-05-24T03:00:00.000000Z");
        assert_eq!(get("emission_raw"), "2021-05-24T00:00:00");
        let items: serde_json::Value = serde_json::from_str(&get("items")).unwrap();
        assert_eq!(items.as_array().unwrap().len(), inv.items.len());
        assert_eq!(items[0]["total"], inv.items[0].line_total.to_string());
        assert!(keys.insert(row.key.clone()));
        assert!(keys.insert(index.key.clone()));
        // The emission index row is found by the day's scan.
        let from = "2021-05-24T03:00:00Z".parse().unwrap();
        let to = "2021-05-25T03:00:00Z".parse().unwrap();
        let hits = layout
            .emission_scan(from, to)
            .iter()
            .filter(|r| r.start <= index.key && index.key < r.end)
            .count();
        assert_eq!(hits, 1);
    }
    // Encoding is deterministic: a replay writes identical rows.
    assert_eq!(layout.encode(&invoices[0]), layout.encode(&invoices[0]));
}

fn schema_names(spec: &nfe::bigquery::TableSpec) -> Vec<(String, String, String)> {
    spec.fields()
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.field_type, f.mode))
        .collect()
}

fn check_row(row: &serde_json::Value, schema: &[(String, String, String)]) {
    let obj = row.as_object().unwrap();
    let row_keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let schema_keys: BTreeSet<&str> = schema.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(row_keys, schema_keys);
    for (name, ty, mode) in schema {
        let v = &obj[name];
        if mode == "REQUIRED" {
            assert!(!v.is_null(), "{name} is REQUIRED");
        }
        if v.is_null() {
            continue;
        }
        match ty.as_str() {
            "INTEGER" => assert!(v.is_i64(), "{name}"),
            "STRING" => assert!(v.is_string(), "{name}"),
            "NUMERIC" => {
                let d = Decimal::from_str_exact(v.as_str().unwrap()).unwrap();
                assert!(d.scale() <= 9, "{name}");
            }
            "TIMESTAMP" => {
                let s = v.as_str().unwrap();
                assert!(s.parse::<jiff::Timestamp>().is_ok(), "{name}: {s}");
            }
            "DATE" => assert!(v.as_str().unwrap().parse::<jiff::civil::Date>().is_ok()),
            other => panic!("unexpected type {other}"),
        }
    }
}

#[test]
fn reference_bigquery_rows_match_the_schema_files() {
    let inv_schema = schema_names(&INVOICES);
    let item_schema = schema_names(&INVOICE_ITEMS);
    for spec in [&INVOICES, &INVOICE_ITEMS] {
        let names: Vec<String> = spec.fields().unwrap().into_iter().map(|f| f.name).collect();
        assert!(names.iter().any(|n| n == spec.partition_field));
        for c in spec.clustering {
            assert!(names.iter().any(|n| n == c));
        }
    }
    let mut ids = BTreeSet::new();
    for inv in invoices() {
        let inv = inv.with_ingest(nfe::IngestMeta {
            message_id: Some("m-1".into()),
            publish_time: Some("2021-05-24T23:21:35Z".parse().unwrap()),
            worker: Some("w-0".into()),
            version: Some("0.1.0".into()),
        });
        let row = invoice_row(&inv);
        assert!(ids.insert(row.insert_id.clone()));
        assert_eq!(row, invoice_row(&inv), "stable insert id");
        check_row(&serde_json::to_value(&row.row).unwrap(), &inv_schema);
        let items = item_rows(&inv);
        assert_eq!(items.len(), inv.items.len());
        for (n, item) in items.iter().enumerate() {
            assert!(ids.insert(item.insert_id.clone()));
            assert_eq!(item.row.line_number, n as i64 + 1);
            assert_eq!(item.row.nfe_id, inv.nfe_id);
            check_row(&serde_json::to_value(&item.row).unwrap(), &item_schema);
        }
    }
}

#[test]
fn enriched_invoices_round_trip_through_json() {
    for inv in invoices() {
        let json = serde_json::to_string(&inv).unwrap();
        assert!(json.contains("\"gross\":\""), "money is a string: {json}");
        let back: Invoice = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inv);
    }
}
