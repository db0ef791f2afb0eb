//! A structural scan of JSON bytes: finds a top-level field's value in an object and counts the elements
//! of an array, following only strings, escapes and brackets.
//!
//! Hand-written on purpose: the records a page carries may be malformed (bytes that are not UTF-8, bad
//! numbers) and must pass through untouched to become dead letters downstream, while a JSON library
//! would reject the whole body (serde_json validates UTF-8 even for `RawValue`). Only the page's
//! envelope has to be well formed here.

/// Why a body could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// Brackets or strings do not balance (a truncated or broken body).
    #[error("the body is not structurally valid JSON: {0}")]
    Unbalanced(&'static str),
    /// The body is not what the pagination strategy expects.
    #[error("{0}")]
    Shape(String),
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `b[i] == '"'`.
fn string_end(b: &[u8], i: usize) -> Result<usize, ScanError> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(ScanError::Unbalanced("unterminated string"))
}

/// The end (exclusive) of the value starting at `b[i]` (after whitespace).
fn value_end(b: &[u8], i: usize) -> Result<usize, ScanError> {
    match b.get(i) {
        None => Err(ScanError::Unbalanced("missing value")),
        Some(b'"') => string_end(b, i),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or(ScanError::Unbalanced("unexpected closing bracket"))?;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(ScanError::Unbalanced("unclosed bracket"))
        }
        Some(_) => {
            // A scalar: up to the next delimiter.
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            if j == i {
                Err(ScanError::Unbalanced("empty value"))
            } else {
                Ok(j)
            }
        }
    }
}

/// A top-level field: its key (bytes between the quotes) and the byte range of its value.
pub type Field<'a> = (&'a [u8], std::ops::Range<usize>);

/// The top-level fields of the object `body`.
pub fn object_fields(body: &[u8]) -> Result<Vec<Field<'_>>, ScanError> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return Err(ScanError::Shape(
            "expected a JSON object with the page's records and cursor".into(),
        ));
    }
    let mut fields = Vec::new();
    i = skip_ws(body, i + 1);
    if body.get(i) == Some(&b'}') {
        return Ok(fields);
    }
    loop {
        if body.get(i) != Some(&b'"') {
            return Err(ScanError::Unbalanced("expected a field name"));
        }
        let kend = string_end(body, i)?;
        let key = &body[i + 1..kend - 1];
        i = skip_ws(body, kend);
        if body.get(i) != Some(&b':') {
            return Err(ScanError::Unbalanced("expected ':'"));
        }
        let vstart = skip_ws(body, i + 1);
        let vend = value_end(body, vstart)?;
        fields.push((key, vstart..vend));
        i = skip_ws(body, vend);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b'}') => return Ok(fields),
            _ => return Err(ScanError::Unbalanced("expected ',' or '}'")),
        }
    }
}

/// Number of elements of the array `body` (whitespace around it allowed).
pub fn array_len(body: &[u8]) -> Result<usize, ScanError> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'[') {
        return Err(ScanError::Shape("expected a JSON array of records".into()));
    }
    i = skip_ws(body, i + 1);
    if body.get(i) == Some(&b']') {
        return ensure_end(body, i + 1, 0);
    }
    let mut n = 0;
    loop {
        let end = value_end(body, i)?;
        n += 1;
        i = skip_ws(body, end);
        match body.get(i) {
            Some(b',') => i = skip_ws(body, i + 1),
            Some(b']') => return ensure_end(body, i + 1, n),
            _ => return Err(ScanError::Unbalanced("expected ',' or ']' in the array")),
        }
    }
}

fn ensure_end(body: &[u8], i: usize, n: usize) -> Result<usize, ScanError> {
    if skip_ws(body, i) == body.len() {
        Ok(n)
    } else {
        Err(ScanError::Unbalanced("bytes after the array"))
    }
}

/// A JSON scalar as text: a string's content (escapes other than `\"` and `\\` left as they are), or the
/// literal of a number/boolean; `None` for `null`.
pub fn scalar_text(value: &[u8]) -> Option<String> {
    if value == b"null" {
        return None;
    }
    if value.len() >= 2 && value[0] == b'"' {
        let inner = &value[1..value.len() - 1];
        let s = String::from_utf8_lossy(inner);
        return Some(s.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    Some(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_an_envelope_with_non_utf8_records() {
        let body = b"{\"items\": [{\"a\":\"x\xff\"}, {\"b\":\"]}\\\"\"}] ,\"next\":\"c-2\",\"more\":true, \"n\":null}";
        let f = object_fields(body).unwrap();
        let keys: Vec<&[u8]> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![&b"items"[..], b"next", b"more", b"n"]);
        assert_eq!(array_len(&body[f[0].1.clone()]).unwrap(), 2);
        assert_eq!(scalar_text(&body[f[1].1.clone()]).as_deref(), Some("c-2"));
        assert_eq!(scalar_text(&body[f[2].1.clone()]).as_deref(), Some("true"));
        assert_eq!(scalar_text(&body[f[3].1.clone()]), None);
    }

    #[test]
    fn arrays() {
        assert_eq!(array_len(b" [ ] ").unwrap(), 0);
        assert_eq!(array_len(b"[1, {\"a\":[1,2]}, \"x\"]").unwrap(), 3);
        assert!(matches!(
            array_len(b"[1, {\"a\":[1,2]"),
            Err(ScanError::Unbalanced(_))
        ));
        assert!(matches!(array_len(b"{}"), Err(ScanError::Shape(_))));
        assert!(array_len(b"[1] x").is_err());
    }

    #[test]
    fn never_panics_on_prefixes() {
        let body = b"{\"items\": [{\"a\":\"x\\\"\"}, 2], \"next\": \"c\"}";
        for n in 0..body.len() {
            let _ = object_fields(&body[..n]);
            let _ = array_len(&body[..n]);
        }
    }
}
