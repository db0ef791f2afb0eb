//! The lenient intermediate: a JSON document parsed from bytes into a flat tape of nodes.
//!
//! This is a small purpose-built parser rather than `serde_json`, for four reasons: numbers are
//! kept as their exact source *text* (so money never goes through `f64`); bytes that are not
//! UTF-8 inside a string become an issue at that string's path instead of failing the whole
//! record; the nesting depth is bounded (no stack overflow on `[[[[...`); and syntax errors carry
//! the JSON path where parsing stopped. It never panics: every index is checked.
//!
//! The tape stores nodes in document order. A container node records the number of its children
//! and the index one past its last descendant, so walking a subtree never allocates. Object members
//! are stored as a [`Node::Key`] followed by the member's value subtree.

use std::borrow::Cow;

use crate::issue::{render_path, ErrorCode, Issue, IssueList, Segment};

/// One node of the tape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    /// Exact number text, already checked against the JSON number grammar.
    Number(&'a str),
    /// Decoded string (borrowed when it had no escape and was valid UTF-8).
    String(Cow<'a, str>),
    /// Object member name; the member's value follows.
    Key(Cow<'a, str>),
    Array {
        len: usize,
        end: usize,
    },
    Object {
        len: usize,
        end: usize,
    },
}

impl Node<'_> {
    /// JSON type name, for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "boolean",
            Node::Number(_) => "number",
            Node::String(_) | Node::Key(_) => "string",
            Node::Array { .. } => "array",
            Node::Object { .. } => "object",
        }
    }
}

/// A parsed document plus the non-fatal issues met while parsing (invalid UTF-8 in strings).
#[derive(Clone, Debug)]
pub(crate) struct Document<'a> {
    nodes: Vec<Node<'a>>,
    /// Non-fatal issues (invalid UTF-8 in strings, replaced by U+FFFD in the tape), bounded.
    pub(crate) issues: IssueList,
}

/// Issues kept by [`Document::parse`] (callers that report issues pass their own bound to
/// [`Document::parse_bounded`]).
const DEFAULT_MAX_ISSUES: usize = 100;

/// Marker: parsing stopped; the fatal issue was pushed to the issue list.
struct Fatal;

/// `len` of a container whose closing bracket has not been read yet.
const OPEN: usize = usize::MAX;

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    nodes: Vec<Node<'a>>,
    issues: IssueList,
    max_depth: usize,
    /// One frame per open container, innermost last: where the parser is, so that an issue's path
    /// costs O(depth) to render (paths of many bad strings stay linear in the record's size).
    frames: Vec<Frame>,
}

/// An open container and the child being parsed.
#[derive(Clone, Copy)]
struct Frame {
    object: bool,
    /// Arrays: index of the element being parsed (or the number of elements read). Objects: tape
    /// index of the current member's key, or [`NO_KEY`] between members.
    at: usize,
}

const NO_KEY: usize = usize::MAX;

impl<'a> Document<'a> {
    /// Parses one JSON value, keeping at most 100 issues. See [`Document::parse_bounded`].
    pub(crate) fn parse(bytes: &'a [u8], max_depth: usize) -> Result<Document<'a>, IssueList> {
        Document::parse_bounded(bytes, max_depth, DEFAULT_MAX_ISSUES)
    }

    /// Parses one JSON value. On failure, returns the issues found up to the fatal one, which is
    /// last ([`ErrorCode::MalformedJson`] or [`ErrorCode::NestingTooDeep`]). At most `max_issues`
    /// are kept; later ones are counted without building their paths.
    pub(crate) fn parse_bounded(
        bytes: &'a [u8],
        max_depth: usize,
        max_issues: usize,
    ) -> Result<Document<'a>, IssueList> {
        let mut nodes = spare_tape();
        nodes.reserve(bytes.len() / 8 + 4);
        let mut p = Parser {
            bytes,
            pos: 0,
            nodes,
            issues: IssueList::new(max_issues),
            max_depth,
            frames: SPARE_FRAMES.with(|f| f.take()),
        };
        let parsed = p.document();
        let mut frames = std::mem::take(&mut p.frames);
        frames.clear();
        SPARE_FRAMES.with(|f| f.set(frames));
        match parsed {
            Ok(()) => Ok(Document {
                nodes: p.nodes,
                issues: p.issues,
            }),
            Err(Fatal) => {
                recycle_tape(std::mem::take(&mut p.nodes));
                Err(p.issues)
            }
        }
    }

    /// The node at `i` (the root is 0). Out-of-range indices read as `null`.
    pub(crate) fn node(&self, i: usize) -> &Node<'a> {
        self.nodes.get(i).unwrap_or(&Node::Null)
    }

    /// Index one past the subtree rooted at `i`.
    pub(crate) fn next(&self, i: usize) -> usize {
        match self.nodes.get(i) {
            Some(Node::Array { end, .. }) | Some(Node::Object { end, .. }) => *end,
            Some(Node::Key(_)) => self.next(i + 1),
            _ => i + 1,
        }
    }

    /// Members `(key, value index)` of the object at `i` (empty if `i` is not an object).
    pub(crate) fn members(&self, i: usize) -> Members<'_, 'a> {
        let (at, end) = match self.nodes.get(i) {
            Some(Node::Object { end, .. }) => (i + 1, *end),
            _ => (0, 0),
        };
        Members { doc: self, at, end }
    }

    /// Element indices of the array at `i` (empty if `i` is not an array).
    pub(crate) fn elements(&self, i: usize) -> Elements<'_, 'a> {
        let (at, end) = match self.nodes.get(i) {
            Some(Node::Array { end, .. }) => (i + 1, *end),
            _ => (0, 0),
        };
        Elements { doc: self, at, end }
    }
}

impl Drop for Document<'_> {
    fn drop(&mut self) {
        recycle_tape(std::mem::take(&mut self.nodes));
    }
}

thread_local! {
    /// One empty tape buffer per thread, reused from record to record: a record's tape is a
    /// few kilobytes, above the allocator's small-size caches, and reuse keeps it in L1.
    static SPARE_TAPE: std::cell::Cell<Vec<Node<'static>>> =
        const { std::cell::Cell::new(Vec::new()) };
}

thread_local! {
    /// The parser's frame stack, reused from record to record (no allocation per record).
    static SPARE_FRAMES: std::cell::Cell<Vec<Frame>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest tape kept for reuse (in nodes; 32 bytes each).
const SPARE_TAPE_MAX: usize = 4096;

fn spare_tape<'a>() -> Vec<Node<'a>> {
    // `Vec<Node<'static>>` coerces to `Vec<Node<'a>>` (covariance).
    SPARE_TAPE.with(|spare| spare.take())
}

fn recycle_tape(mut nodes: Vec<Node<'_>>) {
    if nodes.capacity() > SPARE_TAPE_MAX {
        return;
    }
    nodes.clear();
    // Same layout, empty vector: the standard library collects in place, keeping the
    // allocation, and the borrowed lifetime is gone with the (zero) elements.
    let nodes: Vec<Node<'static>> = nodes.into_iter().map(|_| Node::Null).collect();
    SPARE_TAPE.with(|spare| spare.set(nodes));
}

/// Iterator over object members.
pub(crate) struct Members<'d, 'a> {
    doc: &'d Document<'a>,
    at: usize,
    end: usize,
}

impl<'d, 'a> Iterator for Members<'d, 'a> {
    type Item = (&'d str, usize);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let key = match self.doc.nodes.get(self.at) {
            Some(Node::Key(k)) => k.as_ref(),
            _ => return None,
        };
        let value = self.at + 1;
        self.at = self.doc.next(value);
        Some((key, value))
    }
}

/// Iterator over array elements.
pub(crate) struct Elements<'d, 'a> {
    doc: &'d Document<'a>,
    at: usize,
    end: usize,
}

impl Iterator for Elements<'_, '_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.at >= self.end {
            return None;
        }
        let value = self.at;
        self.at = self.doc.next(value);
        Some(value)
    }
}

impl<'a> Parser<'a> {
    fn document(&mut self) -> Result<(), Fatal> {
        self.value(0)?;
        self.skip_ws();
        if self.pos < self.bytes.len() {
            return Err(self.malformed("trailing characters after the JSON value"));
        }
        Ok(())
    }

    /// Path of the position being parsed, from the open containers' frames: O(depth).
    fn path_string(&self) -> String {
        let mut segs: Vec<Segment<'_>> = Vec::with_capacity(self.frames.len());
        for f in &self.frames {
            if !f.object {
                segs.push(Segment::Index(f.at));
                continue;
            }
            match self.nodes.get(f.at) {
                Some(Node::Key(key)) => segs.push(Segment::Key(key.as_ref())),
                // Between members (or at a key): the path is the object itself.
                _ => break,
            }
        }
        render_path("$", segs)
    }

    fn malformed(&mut self, what: &str) -> Fatal {
        let found = match self.bytes.get(self.pos) {
            None => "end of input".to_owned(),
            Some(&b) if b.is_ascii_graphic() => format!("'{}'", b as char),
            Some(&b) => format!("byte 0x{b:02x}"),
        };
        let message = format!("{what} at byte {} (found {found})", self.pos);
        let path = self.path_string();
        self.issues
            .push_last(Issue::new(ErrorCode::MalformedJson, path, message));
        Fatal
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Fatal> {
        self.skip_ws();
        match self.bytes.get(self.pos) {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => {
                let text = self.string(false)?;
                self.nodes.push(Node::String(text));
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Node::Bool(true)),
            Some(b'f') => self.literal(b"false", Node::Bool(false)),
            Some(b'n') => self.literal(b"null", Node::Null),
            _ => Err(self.malformed("expected a JSON value")),
        }
    }

    fn too_deep(&mut self) -> Fatal {
        let path = self.path_string();
        let message = format!(
            "arrays/objects nested deeper than the limit of {} (max_depth)",
            self.max_depth
        );
        self.issues
            .push_last(Issue::new(ErrorCode::NestingTooDeep, path, message));
        Fatal
    }

    fn object(&mut self, depth: usize) -> Result<(), Fatal> {
        if depth > self.max_depth {
            return Err(self.too_deep());
        }
        let at = self.nodes.len();
        self.nodes.push(Node::Object { len: OPEN, end: 0 });
        self.frames.push(Frame {
            object: true,
            at: NO_KEY,
        });
        self.pos += 1;
        self.skip_ws();
        let mut len = 0;
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.bytes.get(self.pos) != Some(&b'"') {
                    return Err(self.malformed("expected a string key"));
                }
                let key = self.string(true)?;
                self.set_frame(self.nodes.len());
                self.nodes.push(Node::Key(key));
                self.skip_ws();
                if self.bytes.get(self.pos) != Some(&b':') {
                    return Err(self.malformed("expected ':' after an object key"));
                }
                self.pos += 1;
                self.value(depth)?;
                self.set_frame(NO_KEY);
                len += 1;
                self.skip_ws();
                match self.bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.malformed("expected ',' or '}' after an object member")),
                }
            }
        }
        let end = self.nodes.len();
        if let Some(slot) = self.nodes.get_mut(at) {
            *slot = Node::Object { len, end };
        }
        self.frames.pop();
        Ok(())
    }

    /// Records where the innermost open container is (see [`Frame::at`]).
    fn set_frame(&mut self, at: usize) {
        if let Some(f) = self.frames.last_mut() {
            f.at = at;
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Fatal> {
        if depth > self.max_depth {
            return Err(self.too_deep());
        }
        let at = self.nodes.len();
        self.nodes.push(Node::Array { len: OPEN, end: 0 });
        self.frames.push(Frame {
            object: false,
            at: 0,
        });
        self.pos += 1;
        self.skip_ws();
        let mut len = 0;
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
        } else {
            loop {
                self.set_frame(len);
                self.value(depth)?;
                len += 1;
                self.set_frame(len);
                self.skip_ws();
                match self.bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.malformed("expected ',' or ']' after an array element")),
                }
            }
        }
        let end = self.nodes.len();
        if let Some(slot) = self.nodes.get_mut(at) {
            *slot = Node::Array { len, end };
        }
        self.frames.pop();
        Ok(())
    }

    fn literal(&mut self, word: &[u8], node: Node<'a>) -> Result<(), Fatal> {
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word) {
            self.pos = end;
            self.nodes.push(node);
            Ok(())
        } else {
            Err(self.malformed("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Fatal> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.malformed("invalid number: expected a digit")),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.malformed("invalid number: expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.malformed("invalid number: expected a digit in the exponent"));
            }
        }
        let text = self
            .bytes
            .get(start..self.pos)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("0");
        self.nodes.push(Node::Number(text));
        Ok(())
    }

    fn utf8_issue(&mut self, is_key: bool, detail: &str) {
        if !self.issues.has_room() {
            self.issues.count_omitted(ErrorCode::InvalidUtf8);
            return;
        }
        let path = self.path_string();
        let what = if is_key { "object key" } else { "string" };
        self.issues.push(Issue::new(
            ErrorCode::InvalidUtf8,
            path,
            format!("{what} {detail}; replaced by U+FFFD"),
        ));
    }

    /// Parses a string starting at the opening quote.
    fn string(&mut self, is_key: bool) -> Result<Cow<'a, str>, Fatal> {
        let bytes = self.bytes;
        let start = self.pos + 1;
        let rest = bytes.get(start..).unwrap_or(&[]);
        let Some(len) = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        else {
            self.pos = bytes.len();
            return Err(self.malformed("unterminated string"));
        };
        let i = start + len;
        match bytes.get(i) {
            Some(b'"') => {}
            Some(b'\\') => return self.string_slow(start, i, is_key),
            _ => {
                self.pos = i;
                return Err(self.malformed("control character inside a string"));
            }
        }
        self.pos = i + 1;
        let raw = rest.get(..len).unwrap_or(&[]);
        if is_key {
            if let Some(name) = known_key(raw) {
                return Ok(Cow::Borrowed(name));
            }
        }
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => {
                self.utf8_issue(is_key, "is not valid UTF-8");
                Ok(Cow::Owned(String::from_utf8_lossy(raw).into_owned()))
            }
        }
    }

    /// String with escapes: decode into an owned buffer. `i` is the first backslash.
    fn string_slow(
        &mut self,
        start: usize,
        mut i: usize,
        is_key: bool,
    ) -> Result<Cow<'a, str>, Fatal> {
        let bytes = self.bytes;
        let mut out = String::with_capacity(i - start + 16);
        let mut bad_utf8 = false;
        let mut lone_surrogate = false;
        let mut run = start;
        loop {
            match bytes.get(i) {
                None => {
                    self.pos = i;
                    return Err(self.malformed("unterminated string"));
                }
                Some(b'"') => {
                    bad_utf8 |= push_lossy(&mut out, bytes.get(run..i).unwrap_or(&[]));
                    i += 1;
                    break;
                }
                Some(&b) if b < 0x20 => {
                    self.pos = i;
                    return Err(self.malformed("control character inside a string"));
                }
                Some(b'\\') => {
                    bad_utf8 |= push_lossy(&mut out, bytes.get(run..i).unwrap_or(&[]));
                    let esc = bytes.get(i + 1).copied();
                    i += 2;
                    match esc {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let Some(hi) = hex4(bytes, i) else {
                                self.pos = i;
                                return Err(self.malformed("invalid \\u escape"));
                            };
                            i += 4;
                            if (0xD800..0xDC00).contains(&hi) {
                                let lo = if bytes.get(i) == Some(&b'\\')
                                    && bytes.get(i + 1) == Some(&b'u')
                                {
                                    hex4(bytes, i + 2).filter(|lo| (0xDC00..0xE000).contains(lo))
                                } else {
                                    None
                                };
                                match lo {
                                    Some(lo) => {
                                        i += 6;
                                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                        out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                                    }
                                    None => {
                                        lone_surrogate = true;
                                        out.push('\u{FFFD}');
                                    }
                                }
                            } else {
                                match char::from_u32(hi) {
                                    Some(c) => out.push(c),
                                    None => {
                                        lone_surrogate = true;
                                        out.push('\u{FFFD}');
                                    }
                                }
                            }
                        }
                        _ => {
                            self.pos = i.saturating_sub(1);
                            return Err(self.malformed("invalid escape sequence"));
                        }
                    }
                    run = i;
                }
                Some(_) => i += 1,
            }
        }
        self.pos = i;
        if bad_utf8 {
            self.utf8_issue(is_key, "is not valid UTF-8");
        } else if lone_surrogate {
            self.utf8_issue(is_key, "has a lone surrogate \\u escape");
        }
        Ok(Cow::Owned(out))
    }
}

/// The API's field names, recognized without a UTF-8 check (most keys of a record are these).
fn known_key(raw: &[u8]) -> Option<&'static str> {
    use crate::source::field::*;
    Some(match raw {
        b"CreateDate" => CREATE_DATE,
        b"EmissionDate" => EMISSION_DATE,
        b"Discount" => DISCOUNT,
        b"NFeNumber" => NFE_NUMBER,
        b"NFeID" => NFE_ID,
        b"ItemList" => ITEM_LIST,
        b"ProductName" => PRODUCT_NAME,
        b"Value" => VALUE,
        b"Quantity" => QUANTITY,
        _ => return None,
    })
}

/// Appends bytes as UTF-8, replacing invalid sequences; returns true if any was invalid.
fn push_lossy(out: &mut String, raw: &[u8]) -> bool {
    match std::str::from_utf8(raw) {
        Ok(s) => {
            out.push_str(s);
            false
        }
        Err(_) => {
            out.push_str(&String::from_utf8_lossy(raw));
            true
        }
    }
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in digits {
        let n = (d as char).to_digit(16)?;
        v = v * 16 + n;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Document<'_>, IssueList> {
        Document::parse(s, 16)
    }

    #[test]
    fn parses_nested_values_and_keeps_number_text() {
        let doc =
            parse(br#" {"a": [1, 9.00, -0.5e3, true, null], "b": {"c": "x\u00e9\n"}} "#).unwrap();
        let members: Vec<_> = doc.members(0).collect();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].0, "a");
        let elems: Vec<_> = doc
            .elements(members[0].1)
            .map(|i| doc.node(i).clone())
            .collect();
        assert_eq!(
            elems,
            vec![
                Node::Number("1"),
                Node::Number("9.00"),
                Node::Number("-0.5e3"),
                Node::Bool(true),
                Node::Null
            ]
        );
        let (_, b) = members[1];
        let (k, c) = doc.members(b).next().unwrap();
        assert_eq!(k, "c");
        assert_eq!(doc.node(c), &Node::String(Cow::Owned("xé\n".into())));
        assert!(doc.issues.is_empty());
    }

    #[test]
    fn surrogate_pairs_decode_and_lone_ones_are_flagged() {
        let doc = parse(br#"["\ud83d\ude00", "\ud800x"]"#).unwrap();
        let vals: Vec<_> = doc.elements(0).map(|i| doc.node(i).clone()).collect();
        assert_eq!(vals[0], Node::String(Cow::Owned("😀".into())));
        assert_eq!(vals[1], Node::String(Cow::Owned("\u{FFFD}x".into())));
        assert_eq!(doc.issues.kept().len(), 1);
        assert_eq!(doc.issues.kept()[0].code, ErrorCode::InvalidUtf8);
        assert_eq!(doc.issues.kept()[0].path, "$[1]");
    }

    #[test]
    fn invalid_utf8_is_reported_at_its_path_and_parsing_goes_on() {
        let doc = parse(b"{\"ItemList\":[{\"ProductName\":\"a\xffb\"}]}").unwrap();
        assert_eq!(doc.issues.kept().len(), 1);
        assert_eq!(doc.issues.kept()[0].path, "$.ItemList[0].ProductName");
    }

    #[test]
    fn syntax_errors_carry_path_and_offset() {
        let issues = parse(br#"{"ItemList":[{"Value": 1.}]}"#).unwrap_err();
        let issues = issues.kept();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].code, ErrorCode::MalformedJson);
        assert_eq!(issues[0].path, "$.ItemList[0].Value");
        assert!(
            issues[0].message.contains("byte 25"),
            "{}",
            issues[0].message
        );
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\" 1}",
            b"01",
            b"1 2",
            b"\"abc",
            b"tru",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"a\x01\"",
            b"-",
            b"1e",
        ] {
            let issues = parse(bad).unwrap_err();
            assert_eq!(
                issues.kept().last().unwrap().code,
                ErrorCode::MalformedJson,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tape_buffer_is_reused() {
        drop(parse(br#"{"a":[1,2,3],"b":"x"}"#).unwrap());
        let spare = spare_tape();
        assert!(spare.is_empty());
        assert!(spare.capacity() >= 8, "{}", spare.capacity());
    }

    #[test]
    fn paths_follow_the_position_in_arrays_and_objects() {
        let path = |s: &[u8]| parse(s).unwrap_err().kept().last().unwrap().path.clone();
        assert_eq!(path(b"[1 2]"), "$[1]");
        assert_eq!(path(b"[[1],[2,x]]"), "$[1][1]");
        assert_eq!(path(br#"{"a":{"b":[0,{"c":tru}]}}"#), "$.a.b[1].c");
        assert_eq!(path(br#"{"a":1 "b":2}"#), "$");
        assert_eq!(path(br#"{"a":[1],"b" 2}"#), "$.b");
        assert_eq!(path(br#"{"a":{"x":1,}}"#), "$.a");
    }

    #[test]
    fn many_bad_strings_keep_the_first_issues_and_count_all() {
        let mut doc = String::from("[");
        for i in 0..5_000 {
            if i > 0 {
                doc.push(',');
            }
            doc.push_str("\"\\ud800\"");
        }
        doc.push(']');
        let parsed = Document::parse_bounded(doc.as_bytes(), 16, 10).unwrap();
        assert_eq!(parsed.issues.total(), 5_000);
        let kept = parsed.issues.kept();
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[9].path, "$[9]");
        // A fatal error after the limit is still the last issue reported.
        let mut bad = doc.clone();
        bad.pop();
        let issues = Document::parse_bounded(bad.as_bytes(), 16, 10).unwrap_err();
        assert_eq!(issues.total(), 5_001);
        assert_eq!(issues.kept().len(), 10);
        assert_eq!(issues.kept()[9].code, ErrorCode::MalformedJson);
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(100_000);
        let issues = parse(deep.as_bytes()).unwrap_err();
        assert_eq!(issues.kept()[0].code, ErrorCode::NestingTooDeep);
        assert!(parse(b"[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]").is_ok());
        assert!(parse(b"[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]").is_err());
    }
}
