//! Validation problems: stable error codes, JSON paths and messages.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, $meaning:literal; )*) => {
        /// A stable, documented error code.
        ///
        /// The string form (for example `NFE_MISSING_FIELD`) is part of the public contract: it is
        /// what dead letters, metrics and dashboards carry. Codes are never renamed or reused; new
        /// ones may be added. The table lives in `docs/validation.md`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum ErrorCode {
            $( $(#[$doc])* #[serde(rename = $code)] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string form, e.g. `NFE_MISSING_FIELD`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// One-line meaning of the code, as in the documentation table.
            pub const fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)* }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownErrorCode;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($code => Ok(ErrorCode::$variant),)*
                    _ => Err(UnknownErrorCode(s.to_owned())),
                }
            }
        }
    };
}

error_codes! {
    /// The record is larger than `max_record_bytes`; it is not parsed at all.
    RecordTooLarge => "NFE_RECORD_TOO_LARGE", "record larger than max_record_bytes";
    /// The bytes are not syntactically valid JSON (the path is where parsing stopped).
    MalformedJson => "NFE_MALFORMED_JSON", "not valid JSON";
    /// Arrays/objects nested deeper than `max_depth`.
    NestingTooDeep => "NFE_NESTING_TOO_DEEP", "arrays/objects nested deeper than max_depth";
    /// A string holds bytes that are not UTF-8, or a lone surrogate escape.
    InvalidUtf8 => "NFE_INVALID_UTF8", "string is not valid UTF-8 (or has a lone surrogate escape)";
    /// A known field appears twice in the same object.
    DuplicateKey => "NFE_DUPLICATE_KEY", "a known field appears twice in one object";
    /// A required field is absent.
    MissingField => "NFE_MISSING_FIELD", "required field absent";
    /// A field has the wrong JSON type (including `null`).
    WrongType => "NFE_WRONG_TYPE", "field has the wrong JSON type (null included)";
    /// An identifier is not written as a JSON integer.
    NotAnInteger => "NFE_NOT_AN_INTEGER", "identifier with a fraction or exponent";
    /// A number cannot be represented (negative id, beyond INT64, beyond the 96-bit decimal).
    NumberOutOfRange => "NFE_NUMBER_OUT_OF_RANGE", "number not representable (negative id, > INT64, decimal overflow)";
    /// A decimal has more significant fractional digits than allowed.
    TooPrecise => "NFE_TOO_PRECISE", "more significant fractional digits than allowed";
    /// `ProductName` is empty or only whitespace.
    EmptyString => "NFE_EMPTY_STRING", "product name empty or blank";
    /// `ProductName` is longer than `max_string_chars`.
    StringTooLong => "NFE_STRING_TOO_LONG", "product name longer than max_string_chars";
    /// `ItemList` has no item.
    EmptyItemList => "NFE_EMPTY_ITEM_LIST", "ItemList is empty";
    /// `ItemList` has more than `max_items` items.
    TooManyItems => "NFE_TOO_MANY_ITEMS", "ItemList longer than max_items";
    /// `Quantity` is zero or negative.
    NonPositiveQuantity => "NFE_NON_POSITIVE_QUANTITY", "Quantity <= 0";
    /// `Value` is negative.
    NegativeValue => "NFE_NEGATIVE_VALUE", "Value < 0";
    /// `Discount` is negative.
    NegativeDiscount => "NFE_NEGATIVE_DISCOUNT", "Discount < 0";
    /// `Discount` is greater than the gross total.
    DiscountExceedsGross => "NFE_DISCOUNT_EXCEEDS_GROSS", "Discount > gross (sum of line totals)";
    /// A date does not follow the accepted ISO 8601 / RFC 3339 shapes.
    InvalidDate => "NFE_INVALID_DATE", "date text not in an accepted format";
    /// A well-formed date that does not exist (Feb 30, 24:00, second 60, offset beyond 18h).
    ImpossibleDate => "NFE_IMPOSSIBLE_DATE", "well-formed date/time that does not exist";
    /// A date before `earliest_year`.
    DateOutOfRange => "NFE_DATE_OUT_OF_RANGE", "date before earliest_year";
    /// `EmissionDate` is later than `CreateDate` by more than the tolerance.
    EmissionAfterCreation => "NFE_EMISSION_AFTER_CREATION", "EmissionDate later than CreateDate + tolerance";
    /// The same `NFeID` appears more than once in one API page.
    DuplicateId => "NFE_DUPLICATE_ID", "NFeID repeated within one page";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`ErrorCode`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

/// One problem found in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// Stable code.
    pub code: ErrorCode,
    /// JSON path of the offending value, e.g. `$.ItemList[2].Quantity` (`$` is the record).
    pub path: String,
    /// Human-readable explanation.
    pub message: String,
}

impl Issue {
    /// Builds an issue.
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.code, self.path, self.message)
    }
}

/// A record that failed validation, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", issues.len(), summary(issues))]
pub struct Rejection {
    /// All problems, in document order where that is defined.
    pub issues: Vec<Issue>,
}

impl Rejection {
    /// The codes of the issues, in order.
    pub fn codes(&self) -> Vec<ErrorCode> {
        self.issues.iter().map(|i| i.code).collect()
    }
}

fn summary(issues: &[Issue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&issue.to_string());
    }
    out
}

/// A JSON path segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Renders a JSON path: `$`, `.Name` for identifier keys, `['odd key']` otherwise, `[n]` for indices.
pub(crate) fn render_path<'a>(
    prefix: &str,
    segments: impl IntoIterator<Item = Segment<'a>>,
) -> String {
    use std::fmt::Write;
    let mut out = String::from(prefix);
    for seg in segments {
        match seg {
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Segment::Key(k) => push_key(&mut out, k),
        }
    }
    out
}

fn push_key(out: &mut String, key: &str) {
    let simple = !key.is_empty()
        && key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if simple {
        out.push('.');
        out.push_str(key);
    } else {
        out.push_str("['");
        for c in key.chars() {
            match c {
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    use std::fmt::Write;
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push_str("']");
    }
}

/// Path helpers for the known fields.
pub(crate) fn item_path(index: usize, field: &str) -> String {
    format!("$.ItemList[{index}].{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_strings_and_serde() {
        for &code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(code.as_str().starts_with("NFE_"));
        }
        assert!("NFE_NOPE".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn paths_render_identifiers_and_odd_keys() {
        let p = render_path(
            "$",
            [
                Segment::Key("ItemList"),
                Segment::Index(2),
                Segment::Key("Quantity"),
            ],
        );
        assert_eq!(p, "$.ItemList[2].Quantity");
        assert_eq!(render_path("$", [Segment::Key("a b'c")]), "$['a b\\'c']");
        assert_eq!(render_path("$", [Segment::Key("")]), "$['']");
    }
}
