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
    /// A sink refused the record's data permanently (for example a row the store cannot accept);
    /// the message names the sink and its error.
    SinkRejected => "NFE_SINK_REJECTED", "a sink refused the record permanently";
    /// The message was delivered more times than the pipeline's `max_delivery_attempts` guard
    /// without being stored; the message carries the last failure seen.
    DeliveryAttemptsExceeded => "NFE_DELIVERY_ATTEMPTS_EXCEEDED", "delivered more than the allowed number of times without being stored";
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

/// Longest [`Issue::path`] kept, in bytes; [`Issue::new`] clips a longer one with a marker.
pub const MAX_PATH_BYTES: usize = 512;
/// Longest [`Issue::message`] kept, in bytes; [`Issue::new`] clips a longer one with a marker.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest object key rendered in a path, in characters (keys come from the data).
const MAX_KEY_CHARS: usize = 64;

/// `text` unchanged when it has at most `limit` bytes, else its longest prefix (cut at a character
/// boundary) followed by `...[+N bytes]` (N: the bytes cut off), the whole within `limit`. (The
/// connectors use `fluxo::text::clip`, the same rule; this crate does not depend on the engine.)
pub fn clip_text(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return std::borrow::Cow::Borrowed(text);
    }
    // Size the marker for the largest possible cut, so the result never exceeds the limit.
    let room = limit.saturating_sub(format!("...[+{} bytes]", text.len()).len());
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...[+{} bytes]", &text[..end], text.len() - end))
}

fn clipped(text: String, limit: usize) -> String {
    match clip_text(&text, limit) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(c) => c,
    }
}

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
    /// Builds an issue; a path or message longer than [`MAX_PATH_BYTES`] / [`MAX_MESSAGE_BYTES`] is
    /// clipped with a marker, so no issue can grow with the record.
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            code,
            path: clipped(path.into(), MAX_PATH_BYTES),
            message: clipped(message.into(), MAX_MESSAGE_BYTES),
        }
    }

    /// This issue with its path and message clipped to the limits (for issues built field by
    /// field or read back from JSON).
    pub fn clipped(self) -> Self {
        Issue::new(self.code, self.path, self.message)
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.code, self.path, self.message)
    }
}

/// A record that failed validation: its problems (at most the validator's `max_issues`) and how
/// many more were found but not kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", self.total(), summary(issues, *omitted))]
pub struct Rejection {
    /// The problems kept, in document order where that is defined.
    pub issues: Vec<Issue>,
    /// Problems found beyond the kept ones (counted, not described).
    pub omitted: u64,
    /// Codes found only among the omitted problems (distinct, in documentation order), so that the
    /// set of codes of a record is complete even when its issue list is cut.
    pub omitted_codes: Vec<ErrorCode>,
}

impl Rejection {
    /// A rejection with these issues and none omitted.
    pub fn new(issues: Vec<Issue>) -> Self {
        Rejection {
            issues,
            omitted: 0,
            omitted_codes: Vec::new(),
        }
    }

    /// The codes of the kept issues, in order.
    pub fn codes(&self) -> Vec<ErrorCode> {
        self.issues.iter().map(|i| i.code).collect()
    }

    /// Every distinct code found, kept or omitted, in documentation order.
    pub fn distinct_codes(&self) -> Vec<ErrorCode> {
        distinct_codes(&self.issues, &self.omitted_codes)
    }

    /// Every problem found, kept or not.
    pub fn total(&self) -> u64 {
        self.issues.len() as u64 + self.omitted
    }
}

/// Issues of one record, bounded: the first `cap` are kept, later ones only counted. Keeps the cost
/// and size of a hostile record's issue list constant whatever the record holds.
#[derive(Clone, Debug)]
pub(crate) struct IssueList {
    kept: Vec<Issue>,
    omitted: u64,
    /// Codes of omitted issues, one bit per code (bit = the code's position in `ErrorCode::ALL`).
    omitted_codes: u64,
    cap: usize,
}

/// Distinct codes of `issues` and `more`, in documentation order.
pub(crate) fn distinct_codes(issues: &[Issue], more: &[ErrorCode]) -> Vec<ErrorCode> {
    let mut codes: Vec<ErrorCode> = issues
        .iter()
        .map(|i| i.code)
        .chain(more.iter().copied())
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

const _: () = assert!(
    ErrorCode::ALL.len() <= 64,
    "the omitted-codes bit set holds 64 codes"
);

impl IssueList {
    pub(crate) fn new(cap: usize) -> Self {
        IssueList {
            kept: Vec::new(),
            omitted: 0,
            omitted_codes: 0,
            cap: cap.max(1),
        }
    }

    /// True while another issue would be kept (callers skip building costly paths otherwise).
    pub(crate) fn has_room(&self) -> bool {
        self.kept.len() < self.cap
    }

    /// Keeps the issue, or counts it when the list is full.
    pub(crate) fn push(&mut self, issue: Issue) {
        if self.has_room() {
            self.kept.push(issue);
        } else {
            self.count_omitted(issue.code);
        }
    }

    /// Counts an issue that was not built (the list is full).
    pub(crate) fn count_omitted(&mut self, code: ErrorCode) {
        self.omitted += 1;
        self.omitted_codes |= 1 << (code as u32);
    }

    /// Keeps the issue that ends parsing: it replaces the last kept one when the list is full (that
    /// one is counted as omitted), so the reason parsing stopped is always reported.
    pub(crate) fn push_last(&mut self, issue: Issue) {
        if !self.has_room() {
            if let Some(dropped) = self.kept.pop() {
                self.count_omitted(dropped.code);
            }
        }
        self.kept.push(issue);
    }

    /// The kept issues.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> &[Issue] {
        &self.kept
    }

    /// Issues found so far, kept or not.
    pub(crate) fn total(&self) -> u64 {
        self.kept.len() as u64 + self.omitted
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub(crate) fn into_rejection(self) -> Rejection {
        let omitted_codes = ErrorCode::ALL
            .iter()
            .copied()
            .filter(|c| self.omitted_codes & (1 << (*c as u32)) != 0)
            .filter(|c| !self.kept.iter().any(|i| i.code == *c))
            .collect();
        Rejection {
            issues: self.kept,
            omitted: self.omitted,
            omitted_codes,
        }
    }
}

fn summary(issues: &[Issue], omitted: u64) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&issue.to_string());
    }
    if omitted > 0 {
        use std::fmt::Write;
        let _ = write!(out, "; and {omitted} more");
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
    // Keys come from the data: render at most MAX_KEY_CHARS of them, then say how much was cut.
    let shown = key
        .char_indices()
        .nth(MAX_KEY_CHARS)
        .map_or(key, |(at, _)| &key[..at]);
    let cut = key.len() - shown.len();
    let simple = cut == 0
        && !key.is_empty()
        && key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if simple {
        out.push('.');
        out.push_str(key);
        return;
    }
    use std::fmt::Write;
    out.push_str("['");
    for c in shown.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if cut > 0 {
        let _ = write!(out, "...[+{cut} bytes]");
    }
    out.push_str("']");
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
        // Long keys from the data are cut, saying how much.
        let long = "k".repeat(1000);
        assert_eq!(
            render_path("$", [Segment::Key(&long)]),
            format!("$['{}...[+936 bytes]']", "k".repeat(64))
        );
    }

    #[test]
    fn long_paths_and_messages_are_clipped_within_the_limits() {
        let i = Issue::new(ErrorCode::MalformedJson, "$".repeat(5000), "m".repeat(5000));
        assert!(i.path.len() <= MAX_PATH_BYTES && i.message.len() <= MAX_MESSAGE_BYTES);
        assert!(i.path.ends_with("bytes]") && i.message.ends_with("bytes]"));
        let short = Issue::new(ErrorCode::MalformedJson, "$.a", "short");
        assert_eq!(
            (short.path.as_str(), short.message.as_str()),
            ("$.a", "short")
        );
        // Multi-byte text is cut on a character boundary.
        let text = "é".repeat(300);
        let c = clip_text(&text, 101);
        assert!(c.len() <= 101 && c.starts_with('é'));
    }

    #[test]
    fn issue_lists_keep_the_first_issues_and_count_the_rest() {
        let issue = |n: usize| Issue::new(ErrorCode::InvalidUtf8, format!("$[{n}]"), "bad");
        let mut list = IssueList::new(3);
        for n in 0..10 {
            list.push(issue(n));
        }
        list.push(Issue::new(ErrorCode::TooManyItems, "$.ItemList", "many"));
        list.push_last(Issue::new(ErrorCode::MalformedJson, "$", "stop"));
        assert_eq!(list.total(), 12);
        let r = list.into_rejection();
        assert_eq!(r.issues.len(), 3);
        assert_eq!(r.omitted, 9);
        assert_eq!(r.issues[2].code, ErrorCode::MalformedJson);
        // Codes seen only among the omitted issues are still reported.
        assert_eq!(r.omitted_codes, vec![ErrorCode::TooManyItems]);
        assert_eq!(
            r.distinct_codes(),
            vec![
                ErrorCode::MalformedJson,
                ErrorCode::InvalidUtf8,
                ErrorCode::TooManyItems
            ]
        );
        assert!(r.to_string().ends_with("; and 9 more"), "{r}");
    }
}
