//! Fuzz target: page splitting, parsing, validation and enrichment of arbitrary bytes.
//!
//! Checks, besides "never panics": a valid record written back with `SourceInvoice::to_json`
//! validates to the same source record; every rejection has at least one issue, each with a
//! path starting at `$`; a dead letter of the bytes round-trips through JSON exactly.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nfe::{split_page, BigtableLayout, DeadLetter, SourceMeta, ValidationConfig, Validator};

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        ValidationConfig::default()
            .build()
            .expect("default config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let v = validator();
    match v.validate(data) {
        Ok(record) => {
            let again = v
                .validate(record.source.to_json().as_bytes())
                .expect("a valid record written back is valid");
            assert_eq!(again.source, record.source);
            let invoice = nfe::enrich(record, v.zone());
            let [row, index] = BigtableLayout::default().encode(&invoice);
            assert!(row
                .cells
                .iter()
                .chain(&index.cells)
                .all(|c| c.timestamp_micros % 1000 == 0));
            let _ = nfe::bigquery::invoice_row(&invoice);
            let _ = nfe::bigquery::item_rows(&invoice);
        }
        Err(rejection) => {
            assert!(!rejection.issues.is_empty());
            assert!(rejection.issues.iter().all(|i| i.path.starts_with('$')));
            let letter = DeadLetter::new(
                data.to_vec(),
                rejection.issues,
                nfe::stage::VALIDATE,
                SourceMeta::default(),
                "2021-05-24T23:21:35Z".parse().expect("timestamp"),
            );
            let back: DeadLetter =
                serde_json::from_slice(&letter.to_json()).expect("dead letter JSON reads back");
            assert_eq!(back.raw.0, data);
        }
    }
    if let Ok(page) = split_page(data) {
        for record in &page.records {
            let _ = v.validate(record.raw);
        }
        let _ = page.duplicate_issues();
    }
    let _ = nfe::content_hash_of(data);
});
