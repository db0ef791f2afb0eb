//! Small text helpers shared by the connectors.

/// Percent-encodes everything but RFC 3986 unreserved characters: for URL path segments, query values
/// and the `x-goog-request-params` routing header. Hand-written because it is six lines and the
/// connectors need nothing else from a URL-encoding crate.
pub(crate) fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(super::percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(
            super::percent_encode("projects/p/x y:é"),
            "projects%2Fp%2Fx%20y%3A%C3%A9"
        );
    }
}
