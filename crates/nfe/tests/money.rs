//! Exact money against an independent big-decimal oracle (`bigdecimal`, arbitrary precision).
//!
//! Number text is parsed across the `u64`, `i64`, 96-bit (decimal mantissa) and `i128`
//! boundaries, at 20 to 40 digits, with fractions, exponents and signs: `parse_decimal` must give
//! the oracle's exact value at the documented scale, or an error exactly when that value cannot be
//! represented. Whole records then go through validation, enrichment and both store encodings:
//! accepted records carry the oracle's line totals, gross and net, in Bigtable and BigQuery
//! alike; the others are rejected with the codes their numbers explain.
//!
//! Every expected value here comes from the oracle; none from the code under test.

use std::collections::BTreeSet;
use std::str::FromStr;

use bigdecimal::num_bigint::BigInt;
use bigdecimal::{BigDecimal, Signed, Zero};
use nfe::money::{parse_decimal, NumberError};
use nfe::{BigtableLayout, ErrorCode, Invoice, ValidationConfig, Validator};
use proptest::prelude::*;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// The largest scale a `rust_decimal::Decimal` has.
const MAX_SCALE: i64 = 28;

/// 2^96: every decimal mantissa is below it in absolute value.
fn mantissa_limit() -> BigInt {
    BigInt::from(1u8) << 96
}

/// The exact value of JSON number text, read by the oracle's own parser.
fn exact(text: &str) -> BigDecimal {
    BigDecimal::from_str(text).unwrap_or_else(|e| panic!("oracle cannot read {text}: {e}"))
}

/// The exact value of a decimal.
fn big(d: Decimal) -> BigDecimal {
    BigDecimal::new(BigInt::from(d.mantissa()), i64::from(d.scale()))
}

/// Digits after the point needed to write `v` exactly (0 for an integer).
fn min_fraction_digits(v: &BigDecimal) -> i64 {
    if v.is_zero() {
        0
    } else {
        v.normalized().fractional_digit_count().max(0)
    }
}

/// `v * 10^scale` for a scale at which it is a whole number.
fn mantissa_at(v: &BigDecimal, scale: i64) -> BigInt {
    assert!(scale >= min_fraction_digits(v));
    v.with_scale(scale).as_bigint_and_exponent().0
}

/// The scale an exact decimal result must have: the largest `s <= min(preferred, 28)` at which
/// `v` is a whole mantissa below 2^96, or `None` when there is no such scale (the value cannot be
/// represented).
fn expected_scale(v: &BigDecimal, preferred: i64) -> Option<i64> {
    let limit = mantissa_limit();
    let (lowest, highest) = (min_fraction_digits(v), preferred.min(MAX_SCALE));
    let mut m = mantissa_at(v, lowest).abs();
    if lowest > highest || m >= limit {
        return None;
    }
    let mut scale = lowest;
    while scale < highest {
        m *= 10u8;
        if m >= limit {
            break;
        }
        scale += 1;
    }
    Some(scale)
}

/// Plain decimal text of `v` at `scale` (`-12.50`, `0.05`, `7`): the oracle's own formatter.
fn plain(v: &BigDecimal, scale: i64) -> String {
    let m = mantissa_at(v, scale);
    let digits = m.abs().to_string();
    let sign = if m.is_negative() { "-" } else { "" };
    let scale = usize::try_from(scale).unwrap();
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// The scale written in number text: fraction digits minus the exponent, within `0..=28`.
fn written_scale(text: &str) -> i64 {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().unwrap()),
        None => (text, 0),
    };
    let fraction = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i64);
    (fraction - exp).clamp(0, MAX_SCALE)
}

/// What parsing number text must give.
#[derive(Clone, Debug, PartialEq)]
enum Want {
    /// This exact value at this scale.
    Value(BigDecimal, i64),
    /// Too many significant fractional digits (this many).
    TooPrecise(i64),
    /// No decimal holds the exact value.
    OutOfRange,
}

/// The oracle's answer for `parse_decimal(text, max_fraction_digits)`.
fn want(text: &str, max_fraction_digits: u32) -> Want {
    let v = exact(text);
    let needed = min_fraction_digits(&v);
    if needed > i64::from(max_fraction_digits) {
        return Want::TooPrecise(needed);
    }
    match expected_scale(&v, written_scale(text).max(needed)) {
        Some(scale) => Want::Value(v, scale),
        None => Want::OutOfRange,
    }
}

/// Checks `parse_decimal` against the oracle for one text.
fn check_parse(text: &str, max_fraction_digits: u32) -> Result<(), String> {
    let got = parse_decimal(text, max_fraction_digits);
    let wanted = want(text, max_fraction_digits);
    let ok = match (&got, &wanted) {
        (Ok(d), Want::Value(v, scale)) => {
            big(*d) == *v
                && i64::from(d.scale()) == *scale
                && d.to_string() == plain(v, *scale)
                && !(d.is_zero() && d.is_sign_negative())
        }
        (Err(NumberError::TooPrecise { digits, max }), Want::TooPrecise(n)) => {
            i64::try_from(*digits) == Ok(*n) && *max == max_fraction_digits
        }
        (Err(NumberError::OutOfRange(_)), Want::OutOfRange) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "parse_decimal({text:?}, {max_fraction_digits}) = {got:?} (text {:?}); oracle: {wanted:?}",
            got.as_ref().map(|d| d.to_string())
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// The centres of the boundary region: `u64::MAX`, `i64::MAX`, 2^63, 2^64, `2^96 - 1` (the
/// decimal mantissa limit), 2^96, `i128::MAX`, `u128::MAX`, and 10^18..=10^40.
fn boundaries() -> Vec<BigInt> {
    let mut out = vec![
        BigInt::from(u64::MAX),
        BigInt::from(i64::MAX),
        BigInt::from(1u8) << 63,
        BigInt::from(1u8) << 64,
        mantissa_limit() - 1u32,
        mantissa_limit(),
        BigInt::from(i128::MAX),
        BigInt::from(u128::MAX),
    ];
    out.extend((18..=40).map(|k| BigInt::from(10u8).pow(k)));
    out
}

/// Digits of a non-negative integer near a boundary (within `delta`).
fn boundary_digits(delta: i64) -> impl Strategy<Value = String> {
    let bases = boundaries();
    (0..bases.len(), -delta..=delta).prop_map(move |(i, d)| (&bases[i] + d).to_string())
}

/// Digits of a non-negative integer: boundary region, 20-40 digits, short, or zero.
fn digits() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => boundary_digits(1_000),
        4 => "[1-9][0-9]{19,39}",
        2 => "[1-9][0-9]{0,19}",
        1 => "[1-9]0{0,39}",
        1 => Just("0".to_owned()),
    ]
}

/// An exponent suffix: none, or `e`/`E`, an optional sign, a value and optional leading zeros.
fn exponent() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => (
            prop_oneof![Just("e"), Just("E")],
            prop_oneof![Just(""), Just("+"), Just("-")],
            "0{0,2}",
            0u32..=60,
        )
            .prop_map(|(e, sign, zeros, v)| format!("{e}{sign}{zeros}{v}")),
    ]
}

/// JSON number text built from `digits` with `trailing` zeros appended, the last `fraction`
/// digits after the point (zeros prepended when needed), an exponent and a sign.
fn shape(digits: &str, trailing: usize, fraction: usize, exp: &str, negative: bool) -> String {
    let sign = if negative { "-" } else { "" };
    let all = format!("{digits}{}", "0".repeat(trailing));
    let body = if digits == "0" {
        if fraction == 0 {
            "0".to_owned()
        } else {
            format!("0.{}", "0".repeat(fraction))
        }
    } else if fraction == 0 {
        all
    } else if fraction < all.len() {
        let (int, frac) = all.split_at(all.len() - fraction);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{all}", "0".repeat(fraction - all.len()))
    };
    format!("{sign}{body}{exp}")
}

/// JSON number text across the whole region the brief covers.
fn number_text() -> impl Strategy<Value = String> {
    (
        digits(),
        prop_oneof![3 => Just(0usize), 1 => 1usize..=12],
        prop_oneof![2 => Just(0usize), 3 => 1usize..=40],
        exponent(),
        prop_oneof![3 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(d, trailing, fraction, exp, negative)| {
            shape(&d, trailing, fraction, &exp, negative)
        })
}

// ---------------------------------------------------------------------------------------------
// Number parsing
// ---------------------------------------------------------------------------------------------

/// Each boundary +-100, written as an integer, with a sign, a fraction, trailing zeros or an
/// exponent: every form against the oracle, at 0, 4 and 28 allowed fractional digits.
#[test]
fn boundary_region_parses_exactly_or_is_out_of_range() {
    let shapes: [(usize, usize, &str); 10] = [
        (0, 0, ""),
        (0, 1, ""),
        (2, 2, ""),
        (0, 4, ""),
        (0, 19, ""),
        (0, 0, "e0"),
        (0, 0, "E+1"),
        (0, 3, "e-2"),
        (1, 0, "e-1"),
        (0, 0, "e-20"),
    ];
    let mut checked = 0;
    for base in boundaries() {
        for delta in -100i64..=100 {
            let d = (&base + delta).to_string();
            for &(trailing, fraction, exp) in &shapes {
                for negative in [false, true] {
                    let text = shape(&d, trailing, fraction, exp, negative);
                    for max in [0, 4, 28] {
                        check_parse(&text, max).unwrap();
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, boundaries().len() * 201 * 10 * 2 * 3);
}

/// The limits themselves, written out: the largest mantissa parses, one more does not.
#[test]
fn the_96_bit_limit_is_exact() {
    let max = (mantissa_limit() - 1u32).to_string();
    let over = mantissa_limit().to_string();
    for text in [
        max.clone(),
        format!("-{max}"),
        format!("{max}.0000"),
        format!("{}.{}", &max[..10], &max[10..]),
        format!("{}.{}", &max[..1], &max[1..]),
    ] {
        check_parse(&text, 28).unwrap();
        assert!(parse_decimal(&text, 28).is_ok(), "{text}");
    }
    for text in [
        over.clone(),
        format!("-{over}"),
        format!("{}.{}", &over[..10], &over[10..]),
        format!("{max}0"),
        format!("{max}e1"),
    ] {
        check_parse(&text, 28).unwrap();
        assert!(
            matches!(parse_decimal(&text, 28), Err(NumberError::OutOfRange(_))),
            "{text}"
        );
    }
}

/// Exponents too large for the oracle to expand: zero stays zero, the rest is out of range or
/// too precise, never a wrapped value.
#[test]
fn huge_exponents_are_errors_or_zero() {
    for text in [
        "1e999999999999999999999",
        "-1E+99999999999999999999999999",
        "79228162514264337593543950335e9223372036854775807",
        "1e9223372036854775808",
    ] {
        assert!(
            matches!(parse_decimal(text, 4), Err(NumberError::OutOfRange(_))),
            "{text}"
        );
    }
    for text in ["1e-999999999999999999999", "-5.5E-9223372036854775809"] {
        assert!(
            matches!(parse_decimal(text, 4), Err(NumberError::TooPrecise { .. })),
            "{text}"
        );
    }
    for text in [
        "0e999999999999999999999",
        "-0.000e-99999999999999999999",
        "0E+0",
    ] {
        let d = parse_decimal(text, 4).unwrap();
        assert!(d.is_zero() && !d.is_sign_negative(), "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any number text in the region: the oracle's value at the documented scale, or an error
    /// exactly when the value cannot be represented (or has too many fractional digits).
    #[test]
    fn parse_decimal_matches_the_oracle(text in number_text(), max in 0u32..=40) {
        check_parse(&text, max).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

fn validator() -> Validator {
    ValidationConfig::default().build().unwrap()
}

/// A record with these number texts (everything else valid).
fn record(discount: &str, items: &[(String, String)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(v, q)| format!(r#"{{"ProductName":"Rice","Value":{v},"Quantity":{q}}}"#))
        .collect();
    format!(
        r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":{discount},"NFeNumber":501,"NFeID":1,"ItemList":[{}]}}"#,
        items.join(",")
    )
}

/// An exact amount and the scale it must be stored with.
#[derive(Clone, Debug)]
struct Amount {
    value: BigDecimal,
    scale: i64,
}

/// The oracle's totals of an accepted record.
#[derive(Debug)]
struct Expected {
    discount: Amount,
    values: Vec<Amount>,
    quantities: Vec<Amount>,
    lines: Vec<Amount>,
    gross: Amount,
    net: Amount,
}

type Issues = BTreeSet<(ErrorCode, String)>;

/// Reads one number field the way the documented rules say: exact value, or the issue.
fn field(text: &str, max: u32, path: &str, issues: &mut Issues) -> Option<Amount> {
    match want(text, max) {
        Want::Value(value, scale) => Some(Amount { value, scale }),
        Want::TooPrecise(_) => {
            issues.insert((ErrorCode::TooPrecise, path.to_owned()));
            None
        }
        Want::OutOfRange => {
            issues.insert((ErrorCode::NumberOutOfRange, path.to_owned()));
            None
        }
    }
}

/// What validation of `record(discount, items)` must give, from the oracle alone (default
/// limits: 4 fractional digits for values, discounts and quantities).
fn expected(discount: &str, items: &[(String, String)]) -> Result<Expected, Issues> {
    let mut issues = Issues::new();
    let d = field(discount, 4, "$.Discount", &mut issues);
    let d = d.filter(|d| {
        let negative = d.value.is_negative();
        if negative {
            issues.insert((ErrorCode::NegativeDiscount, "$.Discount".to_owned()));
        }
        !negative
    });
    let mut values = Vec::new();
    let mut quantities = Vec::new();
    for (i, (v, q)) in items.iter().enumerate() {
        let path = |f: &str| format!("$.ItemList[{i}].{f}");
        if let Some(v) = field(v, 4, &path("Value"), &mut issues) {
            if v.value.is_negative() {
                issues.insert((ErrorCode::NegativeValue, path("Value")));
            } else {
                values.push(v);
            }
        }
        if let Some(q) = field(q, 4, &path("Quantity"), &mut issues) {
            if q.value.is_positive() {
                quantities.push(q);
            } else {
                issues.insert((ErrorCode::NonPositiveQuantity, path("Quantity")));
            }
        }
    }
    let Some(discount) = d.filter(|_| issues.is_empty()) else {
        return Err(issues);
    };
    let out_of_range = |path: &str| Err(Issues::from([(ErrorCode::NumberOutOfRange, path.into())]));
    // Line totals in order: the first that does not fit is reported.
    let mut lines = Vec::new();
    for (i, (v, q)) in values.iter().zip(&quantities).enumerate() {
        let value = &v.value * &q.value;
        match expected_scale(&value, v.scale + q.scale) {
            Some(scale) => lines.push(Amount { value, scale }),
            None => return out_of_range(&format!("$.ItemList[{i}]")),
        }
    }
    let gross_value: BigDecimal = lines.iter().map(|l| &l.value).sum();
    let preferred = lines.iter().map(|l| l.scale).max().unwrap_or(0);
    let Some(gross_scale) = expected_scale(&gross_value, preferred) else {
        return out_of_range("$.ItemList");
    };
    let net_value = &gross_value - &discount.value;
    let Some(net_scale) = expected_scale(&net_value, gross_scale.max(discount.scale)) else {
        return out_of_range("$.Discount");
    };
    if discount.value > gross_value {
        return Err(Issues::from([(
            ErrorCode::DiscountExceedsGross,
            "$.Discount".to_owned(),
        )]));
    }
    Ok(Expected {
        discount,
        values,
        quantities,
        lines,
        gross: Amount {
            value: gross_value,
            scale: gross_scale,
        },
        net: Amount {
            value: net_value,
            scale: net_scale,
        },
    })
}

/// A decimal holds exactly the amount, at its scale.
fn same(what: &str, got: Decimal, want: &Amount) -> Result<(), String> {
    if big(got) == want.value && i64::from(got.scale()) == want.scale {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {got}, oracle {}",
            plain(&want.value, want.scale)
        ))
    }
}

/// Text that reaches a store is exactly the amount: Bigtable keeps the scale, BigQuery `NUMERIC`
/// drops trailing zeros beyond 9 fractional digits.
fn same_text(what: &str, got: &str, want: &Amount, numeric: bool) -> Result<(), String> {
    let scale = if numeric && want.scale > 9 {
        min_fraction_digits(&want.value)
    } else {
        want.scale
    };
    if numeric && scale > 9 {
        return Err(format!("{what}: {got} has more than 9 fractional digits"));
    }
    let text = plain(&want.value, scale);
    if got == text && exact(got) == want.value {
        Ok(())
    } else {
        Err(format!("{what}: stored {got:?}, oracle {text:?}"))
    }
}

fn cell<'r>(row: &'r nfe::Row, family: &str, qualifier: &str) -> &'r [u8] {
    row.cells
        .iter()
        .find(|c| c.family == family && &*c.qualifier == qualifier.as_bytes())
        .map(|c| &c.value[..])
        .unwrap_or_else(|| panic!("no cell {family}:{qualifier}"))
}

fn utf8(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

/// The invoice, its Bigtable rows and its BigQuery rows all carry the oracle's amounts.
fn check_invoice(inv: &Invoice, want: &Expected) -> Result<(), String> {
    same("discount", inv.discount, &want.discount)?;
    same("gross", inv.gross, &want.gross)?;
    same("net", inv.net, &want.net)?;
    if inv.items.len() != want.lines.len() {
        return Err(format!(
            "{} lines, oracle {}",
            inv.items.len(),
            want.lines.len()
        ));
    }
    for (i, line) in inv.items.iter().enumerate() {
        same(&format!("value {i}"), line.unit_value, &want.values[i])?;
        same(&format!("quantity {i}"), line.quantity, &want.quantities[i])?;
        same(&format!("line {i}"), line.line_total, &want.lines[i])?;
    }

    let [row, index] = BigtableLayout::default().encode(inv);
    same_text(
        "h:discount",
        utf8(cell(&row, "h", "discount")),
        &want.discount,
        false,
    )?;
    same_text(
        "h:gross",
        utf8(cell(&row, "h", "gross")),
        &want.gross,
        false,
    )?;
    same_text("h:net", utf8(cell(&row, "h", "net")), &want.net, false)?;
    same_text("x:net", utf8(cell(&index, "x", "net")), &want.net, false)?;
    let items: serde_json::Value =
        serde_json::from_slice(cell(&row, "l", "items")).map_err(|e| e.to_string())?;
    for (i, item) in items
        .as_array()
        .ok_or("l:items is not an array")?
        .iter()
        .enumerate()
    {
        let text = |k: &str| {
            item[k]
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("l:items[{i}].{k}"))
        };
        same_text(
            &format!("l:items[{i}].value"),
            &text("value")?,
            &want.values[i],
            false,
        )?;
        same_text(
            &format!("l:items[{i}].quantity"),
            &text("quantity")?,
            &want.quantities[i],
            false,
        )?;
        same_text(
            &format!("l:items[{i}].total"),
            &text("total")?,
            &want.lines[i],
            false,
        )?;
    }

    let head = nfe::bigquery::invoice_row(inv).row;
    same_text("invoices.discount", &head.discount, &want.discount, true)?;
    same_text("invoices.gross", &head.gross, &want.gross, true)?;
    same_text("invoices.net", &head.net, &want.net, true)?;
    let rows = nfe::bigquery::item_rows(inv);
    if rows.len() != want.lines.len() {
        return Err(format!(
            "{} item rows, oracle {}",
            rows.len(),
            want.lines.len()
        ));
    }
    for (i, r) in rows.iter().enumerate() {
        same_text(
            &format!("invoice_items[{i}].unit_value"),
            &r.row.unit_value,
            &want.values[i],
            true,
        )?;
        same_text(
            &format!("invoice_items[{i}].quantity"),
            &r.row.quantity,
            &want.quantities[i],
            true,
        )?;
        same_text(
            &format!("invoice_items[{i}].line_total"),
            &r.row.line_total,
            &want.lines[i],
            true,
        )?;
    }
    Ok(())
}

/// Processes one record and compares everything with the oracle.
fn check_record(v: &Validator, discount: &str, items: &[(String, String)]) -> Result<(), String> {
    let raw = record(discount, items);
    let got = v.process(raw.as_bytes());
    match (got, expected(discount, items)) {
        (Ok(inv), Ok(want)) => check_invoice(&inv, &want).map_err(|e| format!("{e}\n{raw}")),
        (Err(rejection), Err(want)) => {
            let got: Issues = rejection
                .issues
                .iter()
                .map(|i| (i.code, i.path.clone()))
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("rejected with {got:?}, oracle {want:?}\n{raw}"))
            }
        }
        (Ok(inv), Err(want)) => Err(format!(
            "accepted (gross {}, net {}), oracle rejects with {want:?}\n{raw}",
            inv.gross, inv.net
        )),
        (Err(rejection), Ok(want)) => Err(format!(
            "rejected ({rejection}), oracle accepts (gross {})\n{raw}",
            plain(&want.gross.value, want.gross.scale)
        )),
    }
}

/// The two amounts of the issue, each as a unit value, a quantity and a discount bound: exact in
/// every store (before the fix they were stored as `0` and `1553255926290448384`).
#[test]
fn twenty_digit_values_from_the_issue_are_exact() {
    let v = validator();
    for text in ["18446744073709551616", "20000000000000000000"] {
        let one = "1".to_owned();
        let items = [(text.to_owned(), one.clone())];
        check_record(&v, "0.0", &items).unwrap();
        let inv = v.process(record("0.0", &items).as_bytes()).unwrap();
        assert_eq!(big(inv.gross), exact(text));
        let [row, _] = BigtableLayout::default().encode(&inv);
        assert_eq!(exact(utf8(cell(&row, "h", "gross"))), exact(text));
        assert_eq!(
            exact(&nfe::bigquery::invoice_row(&inv).row.gross),
            exact(text)
        );
        // As a quantity, twice, and with the amount as discount (net 0).
        let items = [
            (one.clone(), text.to_owned()),
            ("2.50".to_owned(), text.to_owned()),
        ];
        check_record(&v, text, &items).unwrap();
        check_record(&v, &format!("-{text}"), &items).unwrap();
    }
}

/// Amounts written in every way, around every boundary, through the whole record path.
#[test]
fn boundary_amounts_in_records_are_exact_or_rejected() {
    let v = validator();
    let one = "1".to_owned();
    for base in boundaries() {
        for delta in [-2i64, -1, 0, 1, 2] {
            let d = (&base + delta).to_string();
            for text in [
                d.clone(),
                shape(&d, 0, 2, "", false),
                shape(&d, 0, 4, "", false),
                shape(&d, 2, 2, "", false),
                shape(&d, 0, 0, "e-4", false),
                shape(&d, 0, 0, "E-10", false),
            ] {
                check_record(&v, "0", &[(text.clone(), one.clone())]).unwrap();
                check_record(&v, "0", &[(one.clone(), text.clone())]).unwrap();
                check_record(&v, "0.5", &[(text.clone(), "0.5".to_owned())]).unwrap();
                check_record(
                    &v,
                    &text,
                    &[
                        (text.clone(), one.clone()),
                        ("0.01".to_owned(), one.clone()),
                    ],
                )
                .unwrap();
            }
        }
    }
}

/// An amount for a record field: mostly ordinary money, often the region around the limits.
fn amount() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(0|[1-9][0-9]{0,5})\\.[0-9]{2}",
        2 => "[1-9][0-9]{0,2}",
        1 => Just("0".to_owned()),
        6 => number_text(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Records with amounts anywhere in the region: accepted with the oracle's exact totals in
    /// every store, or rejected with exactly the codes the oracle derives from the numbers.
    #[test]
    fn records_are_exact_or_rejected(
        discount in amount(),
        items in prop::collection::vec((amount(), amount()), 1..=4),
    ) {
        check_record(&validator(), &discount, &items).map_err(TestCaseError::fail)?;
    }

    /// Large integer amounts that mostly fit: sums of lines near the 96-bit limit, where an
    /// intermediate sum may not fit while the total does.
    #[test]
    fn large_sums_are_exact_or_out_of_range(
        values in prop::collection::vec(("[1-9][0-9]{24,28}", "(|\\.[0-9]{1,4})", prop_oneof![Just("1"), Just("1.0"), Just("2"), Just("0.5")]), 1..=4),
        discount in "(0|[1-9][0-9]{0,28})(|\\.[0-9]{1,4})",
    ) {
        let items: Vec<(String, String)> = values
            .into_iter()
            .map(|(int, frac, q)| (format!("{int}{frac}"), q.to_owned()))
            .collect();
        check_record(&validator(), &discount, &items).map_err(TestCaseError::fail)?;
    }
}
