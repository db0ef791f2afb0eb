//! Inputs kept from fuzzing and hand-made edge cases (`testdata/fuzz-regressions/`), and the fuzz
//! targets' seed corpus (`fuzz/seeds/`): each goes through page splitting, validation, enrichment,
//! encoding and the intake step without a panic, and holds the same invariants as the fuzz targets
//! (`fuzz/fuzz_targets/`; the intake checks are shared: `fuzz/src/validate_step.rs`). A crash found
//! by the fuzzer is added to `testdata/fuzz-regressions/` as a file.

#[path = "../../../fuzz/src/validate_step.rs"]
mod validate_step;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use nfe::{split_page, DeadLetter, ErrorCode, SourceMeta, ValidationConfig};
use validate_step::{check_amounts, check_invoice, check_letter, Case};

/// The `parse_validate` target's checks, then the intake step's (first delivery, default and tight
/// limits).
fn check(data: &[u8]) {
    let v = ValidationConfig::default().build().unwrap();
    match v.validate(data) {
        Ok(record) => {
            let again = v.validate(record.source.to_json().as_bytes()).unwrap();
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
                "2021-05-24T23:21:35Z".parse().unwrap(),
            );
            check_letter(&letter, data, v.config().max_issues);
        }
    }
    if let Ok(page) = split_page(data) {
        for record in &page.records {
            let _ = v.validate(record.raw);
        }
    }
    let _ = nfe::content_hash_of(data);
    for tight in [false, true] {
        let _ = validate_step::check(&Case {
            raw: Cow::Borrowed(data),
            tight,
            ..Case::default()
        });
    }
}

/// The files of `dir` (not its folders), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn regression_inputs_do_not_panic() {
    let dir = manifest_dir().join("testdata/fuzz-regressions");
    let inputs = files(&dir);
    for path in &inputs {
        check(&std::fs::read(path).unwrap());
    }
    assert!(
        inputs.len() >= 5,
        "{} inputs in {}",
        inputs.len(),
        dir.display()
    );
}

#[test]
fn reference_records_pass_the_fuzz_invariants() {
    let page = include_bytes!("../testdata/challenge-invoices.json");
    check(page);
    for record in split_page(page).unwrap().records {
        check(record.raw);
    }
}

/// The seed corpus of both fuzz targets holds their invariants, and its valid and hostile records
/// are what their names say.
#[test]
fn seed_corpus_passes_the_fuzz_invariants() {
    let seeds = manifest_dir().join("../../fuzz/seeds");
    let records = files(&seeds.join("parse_validate"));
    assert!(
        records.len() >= 20,
        "{} parse_validate seeds",
        records.len()
    );
    for path in &records {
        check(&std::fs::read(path).unwrap());
    }
    let steps = files(&seeds.join("validate_step"));
    assert!(
        steps.len() >= records.len(),
        "{} validate_step seeds",
        steps.len()
    );
    for path in &steps {
        validate_step::run(&std::fs::read(path).unwrap());
    }

    let outcome = |name: &str| {
        let raw = std::fs::read(seeds.join("parse_validate").join(name)).unwrap();
        validate_step::check(&Case {
            raw: Cow::Owned(raw),
            ..Case::default()
        })
    };
    for valid in [
        "reference-1.json",
        "escapes.json",
        "items-990.json",
        "discount-equals-gross.json",
        "dates.json",
        "dates-offsets.json",
        "unicode-names.json",
        "deep-nesting.json",
    ] {
        if let Err(dead) = outcome(valid) {
            panic!("{valid}: {:?}", dead.issues);
        }
    }
    let codes = |name: &str| outcome(name).unwrap_err().codes();
    assert_eq!(codes("items-991.json"), vec![ErrorCode::TooManyItems]);
    assert_eq!(codes("too-deep.json"), vec![ErrorCode::NestingTooDeep]);
    assert!(codes("many-distinct-issues.json").len() >= 12);
    let utf8 = outcome("invalid-utf8.json").unwrap_err();
    assert_eq!(utf8.issues.len(), 100);
    assert!(utf8.issues_omitted > 0);
}
