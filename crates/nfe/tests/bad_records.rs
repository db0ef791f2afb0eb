//! One bad record per error code, each yielding exactly the expected codes and paths.

use std::collections::BTreeSet;

use nfe::{split_page, ErrorCode, ValidationConfig, Validator};

const BASE: &str = r#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0.0,"NFeNumber":501,"NFeID":1,"ItemList":[{"ProductName":"Rice","Value":35.55,"Quantity":2},{"ProductName":"Flour","Value":11.55,"Quantity":5}]}"#;

fn with(from: &str, to: &str) -> Vec<u8> {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1).into_bytes()
}

fn validator() -> Validator {
    ValidationConfig::default().build().unwrap()
}

fn items(n: usize) -> String {
    let one = r#"{"ProductName":"Rice","Value":1,"Quantity":1}"#;
    vec![one; n].join(",")
}

/// One row: the code under test, the bad record, the expected `(code, path)` list.
type Case = (ErrorCode, Vec<u8>, Vec<(ErrorCode, String)>);

fn table() -> Vec<Case> {
    use ErrorCode::*;
    let p = |c: ErrorCode, path: &str| (c, path.to_owned());
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let mut not_utf8 = with("\"Rice\"", "\"Ri\u{1}ce\"");
    let at = not_utf8.iter().position(|&b| b == 1).unwrap();
    not_utf8[at] = 0xff;
    vec![
        (
            RecordTooLarge,
            with(
                "{\"CreateDate\"",
                &format!("{{\"Pad\":\"{}\",\"CreateDate\"", "x".repeat(1 << 20)),
            ),
            vec![p(RecordTooLarge, "$")],
        ),
        (
            MalformedJson,
            with("0.0,", "0.,"),
            vec![p(MalformedJson, "$.Discount")],
        ),
        (
            NestingTooDeep,
            with(
                "{\"CreateDate\"",
                &format!("{{\"Extra\":{deep},\"CreateDate\""),
            ),
            vec![p(NestingTooDeep, &format!("$.Extra{}", "[0]".repeat(31)))],
        ),
        (
            InvalidUtf8,
            not_utf8,
            vec![p(InvalidUtf8, "$.ItemList[0].ProductName")],
        ),
        (
            DuplicateKey,
            with("\"NFeID\":1", "\"NFeID\":1,\"NFeID\":2"),
            vec![p(DuplicateKey, "$.NFeID")],
        ),
        (
            MissingField,
            with("\"NFeNumber\":501,", ""),
            vec![p(MissingField, "$.NFeNumber")],
        ),
        (
            WrongType,
            with("\"Discount\":0.0", "\"Discount\":\"0.0\""),
            vec![p(WrongType, "$.Discount")],
        ),
        (
            NotAnInteger,
            with("\"NFeID\":1", "\"NFeID\":1.5"),
            vec![p(NotAnInteger, "$.NFeID")],
        ),
        (
            NumberOutOfRange,
            with("\"NFeID\":1", "\"NFeID\":-1"),
            vec![p(NumberOutOfRange, "$.NFeID")],
        ),
        (
            TooPrecise,
            with("35.55", "35.55555"),
            vec![p(TooPrecise, "$.ItemList[0].Value")],
        ),
        (
            EmptyString,
            with("\"Rice\"", "\"  \""),
            vec![p(EmptyString, "$.ItemList[0].ProductName")],
        ),
        (
            StringTooLong,
            with("\"Flour\"", &format!("\"{}\"", "é".repeat(121))),
            vec![p(StringTooLong, "$.ItemList[1].ProductName")],
        ),
        (
            EmptyItemList,
            format!("{}[]}}", &BASE[..BASE.find('[').unwrap()]).into_bytes(),
            vec![p(EmptyItemList, "$.ItemList")],
        ),
        (
            TooManyItems,
            format!("{}[{}]}}", &BASE[..BASE.find('[').unwrap()], items(991)).into_bytes(),
            vec![p(TooManyItems, "$.ItemList")],
        ),
        (
            NonPositiveQuantity,
            with("\"Quantity\":5", "\"Quantity\":0"),
            vec![p(NonPositiveQuantity, "$.ItemList[1].Quantity")],
        ),
        (
            NegativeValue,
            with("11.55", "-11.55"),
            vec![p(NegativeValue, "$.ItemList[1].Value")],
        ),
        (
            NegativeDiscount,
            with("\"Discount\":0.0", "\"Discount\":-1"),
            vec![p(NegativeDiscount, "$.Discount")],
        ),
        (
            DiscountExceedsGross,
            with("\"Discount\":0.0", "\"Discount\":128.86"),
            vec![p(DiscountExceedsGross, "$.Discount")],
        ),
        (
            InvalidDate,
            with("2021-05-24T20:21:34.79", "24/05/2021 20:21"),
            vec![p(InvalidDate, "$.CreateDate")],
        ),
        (
            ImpossibleDate,
            with("2021-05-24T00:00:00", "2021-02-30T00:00:00"),
            vec![p(ImpossibleDate, "$.EmissionDate")],
        ),
        (
            DateOutOfRange,
            with("2021-05-24T00:00:00", "2005-12-31T23:59:59"),
            vec![p(DateOutOfRange, "$.EmissionDate")],
        ),
        (
            EmissionAfterCreation,
            with("2021-05-24T00:00:00", "2021-05-24T21:26:35"),
            vec![p(EmissionAfterCreation, "$.EmissionDate")],
        ),
    ]
}

#[test]
fn each_bad_record_yields_exactly_its_code_and_path() {
    let v = validator();
    assert!(
        v.validate(BASE.as_bytes()).is_ok(),
        "the base record is valid"
    );
    for (code, raw, want) in table() {
        let got: Vec<(ErrorCode, String)> = v
            .validate(&raw)
            .expect_err(code.as_str())
            .issues
            .into_iter()
            .map(|i| (i.code, i.path))
            .collect();
        assert_eq!(got, want, "{code}");
    }
}

#[test]
fn duplicate_ids_in_a_page() {
    let page = format!("[{BASE},\n{BASE}]");
    let issues = split_page(page.as_bytes()).unwrap().duplicate_issues();
    let got: Vec<_> = issues.into_iter().map(|i| (i.code, i.path)).collect();
    assert_eq!(got, vec![(ErrorCode::DuplicateId, "$[1].NFeID".to_owned())]);
}

#[test]
fn the_table_covers_every_code() {
    let mut covered: BTreeSet<ErrorCode> = table().into_iter().map(|(c, _, _)| c).collect();
    covered.insert(ErrorCode::DuplicateId);
    // Codes of the intake step, not of a record's content (tested in `nfe::intake`).
    covered.insert(ErrorCode::SinkRejected);
    covered.insert(ErrorCode::DeliveryAttemptsExceeded);
    let all: BTreeSet<ErrorCode> = ErrorCode::ALL.iter().copied().collect();
    assert_eq!(covered, all);
}

#[test]
fn boundaries_just_inside_the_limits_are_valid() {
    let v = validator();
    for raw in [
        with("2021-05-24T00:00:00", "2021-05-24T21:26:34.79"), // exactly 65 minutes
        with("\"Discount\":0.0", "\"Discount\":128.85"),       // discount == gross
        with("\"Flour\"", &format!("\"{}\"", "é".repeat(120))),
        with("35.55", "35.5555"),
        with("\"Quantity\":5", "\"Quantity\":0.0001"),
        with("11.55", "0"),
        with("2021-05-24T00:00:00", "2006-01-01T00:00:00"),
        format!("{}[{}]}}", &BASE[..BASE.find('[').unwrap()], items(990)).into_bytes(),
    ] {
        if let Err(e) = v.validate(&raw) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_problem_of_a_record_is_reported() {
    let raw = br#"{"CreateDate":"2021-13-01","Discount":-5,"NFeNumber":"501","NFeID":1e3,
        "ItemList":[{"ProductName":"","Value":-1,"Quantity":-2},7,{"Value":1,"Quantity":1,"Quantity":2}]}"#;
    let got: Vec<(String, String)> = validator()
        .validate(raw)
        .unwrap_err()
        .issues
        .into_iter()
        .map(|i| (i.code.to_string(), i.path))
        .collect();
    let want: Vec<(String, String)> = [
        ("NFE_IMPOSSIBLE_DATE", "$.CreateDate"),
        ("NFE_MISSING_FIELD", "$.EmissionDate"),
        ("NFE_NEGATIVE_DISCOUNT", "$.Discount"),
        ("NFE_WRONG_TYPE", "$.NFeNumber"),
        ("NFE_NOT_AN_INTEGER", "$.NFeID"),
        ("NFE_EMPTY_STRING", "$.ItemList[0].ProductName"),
        ("NFE_NEGATIVE_VALUE", "$.ItemList[0].Value"),
        ("NFE_NON_POSITIVE_QUANTITY", "$.ItemList[0].Quantity"),
        ("NFE_WRONG_TYPE", "$.ItemList[1]"),
        ("NFE_DUPLICATE_KEY", "$.ItemList[2].Quantity"),
        ("NFE_MISSING_FIELD", "$.ItemList[2].ProductName"),
    ]
    .iter()
    .map(|(c, p)| (c.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn non_object_records_and_garbage_are_rejected_cleanly() {
    let v = validator();
    for raw in [&b"[]"[..], b"null", b"\"x\"", b"", b"\xff\xfe", b"{\"a\":"] {
        let issues = v.validate(raw).unwrap_err().issues;
        assert!(!issues.is_empty());
        assert!(issues.iter().all(|i| i.path.starts_with('$')));
    }
}

#[test]
fn documentation_table_lists_exactly_the_codes() {
    let doc = include_str!("../../../docs/validation.md");
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|c| c.starts_with("NFE_"))
        .collect();
    let all: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, all);
}
