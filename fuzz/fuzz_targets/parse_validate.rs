//! Fuzz target: page splitting, parsing, validation and enrichment of arbitrary bytes.
//!
//! Checks, besides "never panics": a valid record written back with `SourceInvoice::to_json`
//! validates to the same source record, and its invoice has exact totals that agree with an
//! independent reading of the bytes; every rejection is a bounded issue list (at most
//! `max_issues` issues, paths starting with `$` within `MAX_PATH_BYTES`, messages within
//! `MAX_MESSAGE_BYTES`, omitted issues counted with their codes); a dead letter of the bytes
//! round-trips through JSON exactly. The same checks run on every test run over the seeds and the
//! saved inputs (`crates/nfe/tests/fuzz_regressions.rs`).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nfe::{split_page, DeadLetter, SourceMeta, ValidationConfig, Validator};
use nfe_fuzz::validate_step::{check_amounts, check_invoice, check_letter};

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
            check_invoice(&invoice);
            check_amounts(data, &invoice);
        }
        Err(rejection) => {
            let letter = DeadLetter::rejected(
                data.to_vec(),
                rejection,
                nfe::stage::VALIDATE,
                SourceMeta::default(),
                "2021-05-24T23:21:35Z".parse().expect("timestamp"),
            );
            check_letter(&letter, data, v.config().max_issues);
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
