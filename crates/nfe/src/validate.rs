//! Record validation: from raw bytes to a typed, checked record, or every problem found.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::config::ValidationConfig;
use crate::document::{Document, Node};
use crate::enrich::{enrich, Invoice};
use crate::hash::{content_hash, ContentHash};
use crate::issue::{item_path, ErrorCode, Issue, IssueList, Rejection};
use crate::money::{clip, decimal_from_json_number, parse_id, NumberError, Totals, TotalsError};
use crate::source::{field, SourceInvoice, SourceItem};
use crate::time::{parse_moment, Moment, TimeError};

/// A record that passed validation: the source model, its resolved dates, exact totals and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRecord {
    /// The record as sent, typed.
    pub source: SourceInvoice,
    /// `EmissionDate`, resolved.
    pub emission: Moment,
    /// `CreateDate`, resolved.
    pub creation: Moment,
    /// Line totals, gross and net.
    pub totals: Totals,
    /// Hash of the canonical form of the whole record.
    pub content_hash: ContentHash,
}

/// Validates records against a checked [`ValidationConfig`]. Cheap to clone, shareable.
#[derive(Clone, Debug)]
pub struct Validator {
    config: ValidationConfig,
    zone: TimeZone,
    earliest: Timestamp,
}

/// State of a known field while scanning an object's members.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Absent,
    At(usize),
    Duplicated,
}

impl Slot {
    /// The node of a present field; a missing one adds its issue (a duplicated one already has its
    /// issue from the key scan).
    fn present(self, name: &str, issues: &mut IssueList) -> Option<usize> {
        match self {
            Slot::Absent => {
                issues.push(missing(At::Root(name), name));
                None
            }
            Slot::Duplicated => None,
            Slot::At(at) => Some(at),
        }
    }
}

const ROOT_FIELDS: [&str; 6] = [
    field::CREATE_DATE,
    field::EMISSION_DATE,
    field::DISCOUNT,
    field::NFE_NUMBER,
    field::NFE_ID,
    field::ITEM_LIST,
];
const ITEM_FIELDS: [&str; 3] = [field::PRODUCT_NAME, field::VALUE, field::QUANTITY];

/// Collects the value index of each known field, reporting known fields given twice.
fn slots<const N: usize>(
    doc: &Document<'_>,
    object: usize,
    names: &[&str; N],
    path_of: impl Fn(&str) -> String,
    issues: &mut IssueList,
) -> [Slot; N] {
    let mut out = [Slot::Absent; N];
    for (key, value) in doc.members(object) {
        if let Some(k) = names.iter().position(|n| *n == key) {
            match out[k] {
                Slot::Absent => out[k] = Slot::At(value),
                Slot::At(_) => {
                    out[k] = Slot::Duplicated;
                    issues.push(Issue::new(
                        ErrorCode::DuplicateKey,
                        path_of(key),
                        format!("{key} appears more than once"),
                    ));
                }
                Slot::Duplicated => {}
            }
        }
    }
    out
}

fn root_path(name: &str) -> String {
    format!("$.{name}")
}

/// A path rendered only when an issue needs it (valid records allocate no path).
#[derive(Clone, Copy)]
enum At<'a> {
    Root(&'a str),
    Item(usize, &'a str),
}

impl From<At<'_>> for String {
    fn from(at: At<'_>) -> String {
        match at {
            At::Root(name) => root_path(name),
            At::Item(i, name) => item_path(i, name),
        }
    }
}

fn wrong_type(path: impl Into<String>, expected: &str, found: &Node<'_>) -> Issue {
    Issue::new(
        ErrorCode::WrongType,
        path,
        format!("expected {expected}, found {}", found.type_name()),
    )
}

fn missing(path: impl Into<String>, name: &str) -> Issue {
    Issue::new(
        ErrorCode::MissingField,
        path,
        format!("required field {name} is missing"),
    )
}

fn number_issue(path: impl Into<String>, err: NumberError) -> Issue {
    let code = match err {
        NumberError::NotAnInteger(_) => ErrorCode::NotAnInteger,
        NumberError::TooPrecise { .. } => ErrorCode::TooPrecise,
        NumberError::OutOfRange(_) | NumberError::Syntax(_) => ErrorCode::NumberOutOfRange,
    };
    Issue::new(code, path, err.to_string())
}

impl Validator {
    pub(crate) fn from_parts(
        config: ValidationConfig,
        zone: TimeZone,
        earliest: Timestamp,
    ) -> Self {
        Validator {
            config,
            zone,
            earliest,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ValidationConfig {
        &self.config
    }

    /// The zone of offset-less dates.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// Validates then enriches one record.
    pub fn process(&self, raw: &[u8]) -> Result<Invoice, Rejection> {
        self.check(raw).map(|r| enrich(r, &self.zone))
    }

    /// Validates one record's exact bytes, returning the typed record or *every* problem found.
    /// Never panics, whatever the bytes.
    pub fn validate(&self, raw: &[u8]) -> Result<ValidRecord, Rejection> {
        let mut record = self.check(raw)?;
        record.source.create_date = record.creation.original.clone();
        record.source.emission_date = record.emission.original.clone();
        Ok(record)
    }

    /// [`Validator::validate`] without the source's copies of the date texts (they are in the
    /// moments; enrichment only reads those).
    fn check(&self, raw: &[u8]) -> Result<ValidRecord, Rejection> {
        if raw.len() > self.config.max_record_bytes {
            return Err(Rejection::new(vec![Issue::new(
                ErrorCode::RecordTooLarge,
                "$",
                format!(
                    "record is {} bytes; the limit is {} (max_record_bytes)",
                    raw.len(),
                    self.config.max_record_bytes
                ),
            )]));
        }
        let mut doc = Document::parse_bounded(raw, self.config.max_depth, self.config.max_issues)
            .map_err(IssueList::into_rejection)?;
        let mut issues = std::mem::replace(&mut doc.issues, IssueList::new(1));
        let root = doc.node(0);
        if !matches!(root, Node::Object { .. }) {
            issues.push(wrong_type("$".to_owned(), "an object", root));
            return Err(issues.into_rejection());
        }
        let [create, emission, discount, number, id, items] =
            slots(&doc, 0, &ROOT_FIELDS, root_path, &mut issues);

        let creation = self.date(&doc, create, field::CREATE_DATE, &mut issues);
        let emission = self.date(&doc, emission, field::EMISSION_DATE, &mut issues);
        let discount = self.discount(&doc, discount, &mut issues);
        let nfe_number = self.id(&doc, number, field::NFE_NUMBER, &mut issues);
        let nfe_id = self.id(&doc, id, field::NFE_ID, &mut issues);
        let items = self.items(&doc, items, &mut issues);

        if let (Some(e), Some(c)) = (&emission, &creation) {
            let ahead = e.utc.as_second().saturating_sub(c.utc.as_second());
            let ahead_ns = e.utc.as_nanosecond() - c.utc.as_nanosecond();
            let tolerance = self.config.emission_tolerance_secs as i128 * 1_000_000_000;
            if ahead_ns > tolerance {
                issues.push(Issue::new(
                    ErrorCode::EmissionAfterCreation,
                    root_path(field::EMISSION_DATE),
                    format!(
                        "EmissionDate is {ahead} s after CreateDate; the tolerance is {} s \
                         (emission_tolerance_secs)",
                        self.config.emission_tolerance_secs
                    ),
                ));
            }
        }

        let mut totals = None;
        if let (Some(items), Some(discount)) = (&items, discount) {
            match Totals::compute(items.iter().map(|i| (i.value, i.quantity)), discount) {
                Ok(t) => {
                    if discount > t.gross {
                        issues.push(Issue::new(
                            ErrorCode::DiscountExceedsGross,
                            root_path(field::DISCOUNT),
                            format!("Discount {discount} is above the gross total {}", t.gross),
                        ));
                    }
                    totals = Some(t);
                }
                Err(e) => {
                    let path = match e {
                        TotalsError::Line(i) => format!("$.ItemList[{i}]"),
                        TotalsError::Gross => root_path(field::ITEM_LIST),
                        TotalsError::Net => root_path(field::DISCOUNT),
                    };
                    issues.push(Issue::new(ErrorCode::NumberOutOfRange, path, e.to_string()));
                }
            }
        }

        match (
            creation, emission, discount, nfe_number, nfe_id, items, totals,
        ) {
            (
                Some(creation),
                Some(emission),
                Some(discount),
                Some(nfe_number),
                Some(nfe_id),
                Some(item_list),
                Some(totals),
            ) if issues.is_empty() => Ok(ValidRecord {
                source: SourceInvoice {
                    create_date: String::new(),
                    emission_date: String::new(),
                    discount,
                    nfe_number,
                    nfe_id,
                    item_list,
                },
                emission,
                creation,
                totals,
                content_hash: content_hash(&doc),
            }),
            _ => Err(issues.into_rejection()),
        }
    }

    fn date(
        &self,
        doc: &Document<'_>,
        slot: Slot,
        name: &str,
        issues: &mut IssueList,
    ) -> Option<Moment> {
        let path = At::Root(name);
        let at = slot.present(name, issues)?;
        let text = match doc.node(at) {
            Node::String(s) => s.as_ref(),
            other => {
                issues.push(wrong_type(path, "a date string", other));
                return None;
            }
        };
        match parse_moment(text, &self.zone) {
            Ok(m) if m.utc < self.earliest => {
                issues.push(Issue::new(
                    ErrorCode::DateOutOfRange,
                    path,
                    format!(
                        "\"{}\" is before {}-01-01 (earliest_year)",
                        clip(text),
                        self.config.earliest_year
                    ),
                ));
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                let code = match e {
                    TimeError::Invalid(_) => ErrorCode::InvalidDate,
                    TimeError::Impossible(_) => ErrorCode::ImpossibleDate,
                };
                issues.push(Issue::new(code, path, e.to_string()));
                None
            }
        }
    }

    fn id(
        &self,
        doc: &Document<'_>,
        slot: Slot,
        name: &str,
        issues: &mut IssueList,
    ) -> Option<i64> {
        let path = At::Root(name);
        let at = slot.present(name, issues)?;
        match doc.node(at) {
            Node::Number(text) => parse_id(text)
                .map_err(|e| issues.push(number_issue(path, e)))
                .ok(),
            other => {
                issues.push(wrong_type(path, "an integer", other));
                None
            }
        }
    }

    /// A decimal number at `at` (the caller handles absence).
    fn decimal<'p>(
        &self,
        doc: &Document<'_>,
        at: usize,
        path: At<'p>,
        max_fraction_digits: u32,
        issues: &mut IssueList,
    ) -> Option<(Decimal, At<'p>)> {
        match doc.node(at) {
            Node::Number(text) => match decimal_from_json_number(text, max_fraction_digits) {
                Ok(d) => Some((d, path)),
                Err(e) => {
                    issues.push(number_issue(path, e));
                    None
                }
            },
            other => {
                issues.push(wrong_type(path, "a number", other));
                None
            }
        }
    }

    fn discount(&self, doc: &Document<'_>, slot: Slot, issues: &mut IssueList) -> Option<Decimal> {
        let path = At::Root(field::DISCOUNT);
        let at = slot.present(field::DISCOUNT, issues)?;
        let (d, path) =
            self.decimal(doc, at, path, self.config.max_value_fraction_digits, issues)?;
        if d.is_sign_negative() && !d.is_zero() {
            issues.push(Issue::new(
                ErrorCode::NegativeDiscount,
                path,
                format!("Discount {d} is negative"),
            ));
            return None;
        }
        Some(d)
    }

    fn items(
        &self,
        doc: &Document<'_>,
        slot: Slot,
        issues: &mut IssueList,
    ) -> Option<Vec<SourceItem>> {
        let path = At::Root(field::ITEM_LIST);
        let at = slot.present(field::ITEM_LIST, issues)?;
        let len = match doc.node(at) {
            Node::Array { len, .. } => *len,
            other => {
                issues.push(wrong_type(path, "an array of items", other));
                return None;
            }
        };
        if len == 0 {
            issues.push(Issue::new(
                ErrorCode::EmptyItemList,
                path,
                "ItemList has no item; an invoice needs at least one",
            ));
            return None;
        }
        if len > self.config.max_items {
            issues.push(Issue::new(
                ErrorCode::TooManyItems,
                path,
                format!(
                    "ItemList has {len} items; the limit is {} (max_items); items were not checked",
                    self.config.max_items
                ),
            ));
            return None;
        }
        let before = issues.total();
        let mut out = Vec::with_capacity(len);
        for (i, el) in doc.elements(at).enumerate() {
            if let Some(item) = self.item(doc, i, el, issues) {
                out.push(item);
            }
        }
        (issues.total() == before && out.len() == len).then_some(out)
    }

    fn item(
        &self,
        doc: &Document<'_>,
        index: usize,
        at: usize,
        issues: &mut IssueList,
    ) -> Option<SourceItem> {
        let node = doc.node(at);
        if !matches!(node, Node::Object { .. }) {
            issues.push(wrong_type(
                format!("$.ItemList[{index}]"),
                "an item object",
                node,
            ));
            return None;
        }
        let [name, value, quantity] = slots(doc, at, &ITEM_FIELDS, |k| item_path(index, k), issues);

        let product_name = match name {
            Slot::Absent => {
                issues.push(missing(
                    At::Item(index, field::PRODUCT_NAME),
                    field::PRODUCT_NAME,
                ));
                None
            }
            Slot::Duplicated => None,
            Slot::At(v) => match doc.node(v) {
                Node::String(s) => {
                    // A string of at most N bytes has at most N characters: count only beyond.
                    let chars = if s.len() <= self.config.max_string_chars {
                        0
                    } else {
                        s.chars().count()
                    };
                    if s.trim().is_empty() {
                        issues.push(Issue::new(
                            ErrorCode::EmptyString,
                            At::Item(index, field::PRODUCT_NAME),
                            "ProductName is empty or only whitespace",
                        ));
                        None
                    } else if chars > self.config.max_string_chars {
                        issues.push(Issue::new(
                            ErrorCode::StringTooLong,
                            At::Item(index, field::PRODUCT_NAME),
                            format!(
                                "ProductName has {chars} characters; the limit is {} \
                                 (max_string_chars)",
                                self.config.max_string_chars
                            ),
                        ));
                        None
                    } else {
                        Some(s.as_ref().to_owned())
                    }
                }
                other => {
                    issues.push(wrong_type(
                        At::Item(index, field::PRODUCT_NAME),
                        "a string",
                        other,
                    ));
                    None
                }
            },
        };

        let value = match value {
            Slot::Absent => {
                issues.push(missing(At::Item(index, field::VALUE), field::VALUE));
                None
            }
            Slot::Duplicated => None,
            Slot::At(v) => self
                .decimal(
                    doc,
                    v,
                    At::Item(index, field::VALUE),
                    self.config.max_value_fraction_digits,
                    issues,
                )
                .and_then(|(d, path)| {
                    if d.is_sign_negative() && !d.is_zero() {
                        issues.push(Issue::new(
                            ErrorCode::NegativeValue,
                            path,
                            format!("Value {d} is negative"),
                        ));
                        None
                    } else {
                        Some(d)
                    }
                }),
        };

        let quantity = match quantity {
            Slot::Absent => {
                issues.push(missing(At::Item(index, field::QUANTITY), field::QUANTITY));
                None
            }
            Slot::Duplicated => None,
            Slot::At(v) => self
                .decimal(
                    doc,
                    v,
                    At::Item(index, field::QUANTITY),
                    self.config.max_quantity_fraction_digits,
                    issues,
                )
                .and_then(|(d, path)| {
                    if d.is_sign_negative() || d.is_zero() {
                        issues.push(Issue::new(
                            ErrorCode::NonPositiveQuantity,
                            path,
                            format!("Quantity {d} is not positive"),
                        ));
                        None
                    } else {
                        Some(d)
                    }
                }),
        };

        Some(SourceItem {
            product_name: product_name?,
            value: value?,
            quantity: quantity?,
        })
    }
}
