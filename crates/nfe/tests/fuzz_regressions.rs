//! Inputs kept from fuzzing and hand-made edge cases (`testdata/fuzz-regressions/`): each must
//! go through page splitting, validation, enrichment and encoding without a panic, and hold the
//! same invariants as the fuzz target (`fuzz/fuzz_targets/parse_validate.rs`). A crash found by
//! the fuzzer is added to that folder as a file.

use std::path::Path;

use nfe::{split_page, BigtableLayout, DeadLetter, SourceMeta, ValidationConfig};

fn check(data: &[u8]) {
    let v = ValidationConfig::default().build().unwrap();
    match v.validate(data) {
        Ok(record) => {
            let again = v.validate(record.source.to_json().as_bytes()).unwrap();
            assert_eq!(again.source, record.source);
            let invoice = nfe::enrich(record, v.zone());
            let [row, index] = BigtableLayout::default().encode(&invoice);
            assert!(row
                .cells
                .iter()
                .chain(&index.cells)
                .all(|c| c.timestamp_micros % 1000 == 0));
        }
        Err(rejection) => {
            assert!(!rejection.issues.is_empty());
            assert!(rejection.issues.iter().all(|i| i.path.starts_with('$')));
            let letter = DeadLetter::new(
                data.to_vec(),
                rejection.issues,
                nfe::stage::VALIDATE,
                SourceMeta::default(),
                "2021-05-24T23:21:35Z".parse().unwrap(),
            );
            let back: DeadLetter = serde_json::from_slice(&letter.to_json()).unwrap();
            assert_eq!(back.raw.0, data);
        }
    }
    if let Ok(page) = split_page(data) {
        for record in &page.records {
            let _ = v.validate(record.raw);
        }
    }
    let _ = nfe::content_hash_of(data);
}

#[test]
fn regression_inputs_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 5, "{n} inputs in {}", dir.display());
}

#[test]
fn reference_records_pass_the_fuzz_invariants() {
    let page = include_bytes!("../testdata/challenge-invoices.json");
    check(page);
    for record in split_page(page).unwrap().records {
        check(record.raw);
    }
}
