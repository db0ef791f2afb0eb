//! Text helpers for connectors: bounding strings that come from data (attributes, URLs, cursors,
//! error messages) so that a limit or a log line can never be broken by them.

use std::borrow::Cow;

/// `text` unchanged when it has at most `limit` bytes, else its longest prefix (cut at a character
/// boundary) followed by the marker `...[+N bytes]` (N: the bytes cut off), the whole within `limit`.
///
/// ```
/// assert_eq!(fluxo::text::clip("short", 10), "short");
/// assert_eq!(fluxo::text::clip(&"x".repeat(40), 20), "xxxxxx...[+34 bytes]");
/// ```
pub fn clip(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    // The marker's length depends on the number of bytes cut, which depends on the marker's length:
    // size it for the largest possible cut (the whole text), then cut.
    let room = limit.saturating_sub(format!("...[+{} bytes]", text.len()).len());
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...[+{} bytes]", &text[..end], text.len() - end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_text_fits_and_says_what_was_cut() {
        for limit in [0, 1, 16, 17, 100, 1024] {
            for len in [0, 1, 15, 16, 17, 1000, 100_000] {
                let text = "é".repeat(len);
                let c = clip(&text, limit);
                if text.len() <= limit {
                    assert_eq!(c, text.as_str());
                    continue;
                }
                let (head, marker) = c.split_once("...[+").unwrap();
                assert!(text.starts_with(head));
                let cut: usize = marker.trim_end_matches(" bytes]").parse().unwrap();
                assert_eq!(head.len() + cut, text.len());
                // Within the limit whenever the limit can hold a marker at all.
                if limit >= format!("...[+{} bytes]", text.len()).len() {
                    assert!(c.len() <= limit, "{} > {limit}", c.len());
                }
            }
        }
    }
}
