//! API pages: splitting a page (a JSON array of records) into each record's exact bytes, and
//! finding `NFeID`s repeated within the page.
//!
//! The split is structural: it follows strings and brackets only, so a record that is itself
//! malformed (bad number, invalid UTF-8, missing field) is still cut out with its exact bytes and
//! fails later, on its own, as a dead letter. Only a page whose brackets or strings do not balance
//! is rejected as a whole.

use std::collections::HashMap;

use crate::document::{Document, Node};
use crate::issue::{ErrorCode, Issue};
use crate::money::parse_id;
use crate::source::field;

/// One record of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRecord<'a> {
    /// Position in the page (0-based).
    pub index: usize,
    /// The record's exact bytes (from its first to its last byte, surrounding whitespace excluded).
    pub raw: &'a [u8],
    /// `NFeID`, when the record parses and has a valid one.
    pub nfe_id: Option<i64>,
    /// Index of the first record of the page with the same `NFeID`, if this one repeats it.
    pub duplicate_of: Option<usize>,
}

impl PageRecord<'_> {
    /// The [`ErrorCode::DuplicateId`] issue of a repeated record, with a page path (`$[3].NFeID`).
    pub fn duplicate_issue(&self) -> Option<Issue> {
        let first = self.duplicate_of?;
        Some(Issue::new(
            ErrorCode::DuplicateId,
            format!("$[{}].{}", self.index, field::NFE_ID),
            format!(
                "NFeID {} already appears in this page at $[{first}]",
                self.nfe_id.unwrap_or_default()
            ),
        ))
    }
}

/// A page split into records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<'a> {
    /// Records in page order.
    pub records: Vec<PageRecord<'a>>,
}

impl Page<'_> {
    /// One issue per record that repeats an earlier record's `NFeID` (the first one is kept).
    pub fn duplicate_issues(&self) -> Vec<Issue> {
        self.records
            .iter()
            .filter_map(PageRecord::duplicate_issue)
            .collect()
    }
}

/// A page that cannot be split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The page is not a JSON array.
    #[error("page is not a JSON array (starts with {found})")]
    NotAnArray {
        /// What was found instead.
        found: String,
    },
    /// Strings or brackets do not balance, or an element is empty.
    #[error("malformed page at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(|&b| is_ws(b)) {
        pos += 1;
    }
    pos
}

/// Splits a page's bytes into records and marks repeated `NFeID`s.
pub fn split_page(bytes: &[u8]) -> Result<Page<'_>, PageError> {
    let malformed = |offset, reason| PageError::Malformed { offset, reason };
    let mut pos = skip_ws(bytes, 0);
    match bytes.get(pos) {
        Some(b'[') => pos += 1,
        Some(&b) => {
            return Err(PageError::NotAnArray {
                found: if b.is_ascii_graphic() {
                    format!("'{}'", b as char)
                } else {
                    format!("byte 0x{b:02x}")
                },
            })
        }
        None => {
            return Err(PageError::NotAnArray {
                found: "end of input".to_owned(),
            })
        }
    }
    let mut raws: Vec<&[u8]> = Vec::new();
    let mut stack: Vec<u8> = Vec::new();
    pos = skip_ws(bytes, pos);
    if bytes.get(pos) == Some(&b']') {
        pos += 1;
    } else {
        let mut start = pos;
        let mut in_string = false;
        loop {
            let Some(&b) = bytes.get(pos) else {
                return Err(malformed(
                    pos,
                    if in_string {
                        "unterminated string"
                    } else {
                        "unterminated array"
                    },
                ));
            };
            if in_string {
                match b {
                    b'\\' => pos += 1,
                    b'"' => in_string = false,
                    _ => {}
                }
                pos += 1;
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => stack.push(b'}'),
                b'[' => stack.push(b']'),
                b'}' | b']' if stack.last() == Some(&b) => {
                    stack.pop();
                }
                b'}' | b']' if !stack.is_empty() => {
                    return Err(malformed(pos, "mismatched bracket"));
                }
                b',' | b']' if stack.is_empty() => {
                    let raw = trim(bytes.get(start..pos).unwrap_or(&[]));
                    if raw.is_empty() {
                        return Err(malformed(pos, "empty array element"));
                    }
                    raws.push(raw);
                    start = pos + 1;
                    if b == b']' {
                        pos += 1;
                        break;
                    }
                }
                b'}' => return Err(malformed(pos, "mismatched bracket")),
                _ => {}
            }
            pos += 1;
        }
    }
    if skip_ws(bytes, pos) != bytes.len() {
        return Err(malformed(pos, "trailing characters after the page"));
    }

    let mut first_by_id: HashMap<i64, usize> = HashMap::with_capacity(raws.len());
    let records = raws
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let nfe_id = record_id(raw);
            let duplicate_of = nfe_id.and_then(|id| {
                let first = *first_by_id.entry(id).or_insert(index);
                (first != index).then_some(first)
            });
            PageRecord {
                index,
                raw,
                nfe_id,
                duplicate_of,
            }
        })
        .collect();
    Ok(Page { records })
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !is_ws(*first) {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !is_ws(*last) {
            break;
        }
        b = rest;
    }
    b
}

/// The record's `NFeID` if the record parses and has exactly one valid `NFeID`.
fn record_id(raw: &[u8]) -> Option<i64> {
    let doc = Document::parse(raw, 64).ok()?;
    let mut found = None;
    for (key, value) in doc.members(0) {
        if key == field::NFE_ID {
            if found.is_some() {
                return None;
            }
            found = match doc.node(value) {
                Node::Number(text) => Some(parse_id(text).ok()?),
                _ => return None,
            };
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_exact_bytes() {
        let page = b" [ {\"NFeID\":1, \"s\":\"a,]}\\\"\"} ,\n{\"NFeID\" : 2 , \"x\":[1,{\"y\":[]}]},3,\"\xff\" ] ";
        let p = split_page(page).unwrap();
        let raws: Vec<&[u8]> = p.records.iter().map(|r| r.raw).collect();
        assert_eq!(
            raws,
            vec![
                &b"{\"NFeID\":1, \"s\":\"a,]}\\\"\"}"[..],
                &b"{\"NFeID\" : 2 , \"x\":[1,{\"y\":[]}]}"[..],
                &b"3"[..],
                &b"\"\xff\""[..],
            ]
        );
        assert_eq!(p.records[0].nfe_id, Some(1));
        assert_eq!(p.records[1].nfe_id, Some(2));
        assert_eq!(p.records[2].nfe_id, None);
        assert!(p.duplicate_issues().is_empty());
        assert_eq!(split_page(b"[]").unwrap().records, vec![]);
    }

    #[test]
    fn reports_repeated_ids_after_the_first() {
        let p = split_page(br#"[{"NFeID":7},{"NFeID":8},{"NFeID":7},{"NFeID":7}]"#).unwrap();
        let dups: Vec<_> = p.records.iter().map(|r| r.duplicate_of).collect();
        assert_eq!(dups, vec![None, None, Some(0), Some(0)]);
        let issues = p.duplicate_issues();
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].code, ErrorCode::DuplicateId);
        assert_eq!(issues[0].path, "$[2].NFeID");
        assert_eq!(issues[1].path, "$[3].NFeID");
    }

    #[test]
    fn rejects_unbalanced_pages() {
        for bad in [
            &b""[..],
            b"{}",
            b"[",
            b"[{]",
            b"[{}",
            b"[1,,2]",
            b"[1,]",
            b"[\"abc]",
            b"[1] x",
            b"[1}",
        ] {
            assert!(
                split_page(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
