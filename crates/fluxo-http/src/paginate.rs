//! Pagination strategies: where the records of a page are, how to ask for the next page, and when the
//! source is caught up. Each strategy also defines the checkpoint token: the smallest thing that lets a
//! later run resume right after the last committed page.

use reqwest::header::HeaderMap;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::scan::{self, ScanError};

fn cursor_param() -> String {
    "cursor".into()
}
fn items_field() -> String {
    "items".into()
}
fn next_field() -> String {
    "next_cursor".into()
}
fn has_more_field() -> Option<String> {
    Some("has_more".into())
}
fn page_param() -> String {
    "page".into()
}
fn first_page() -> u64 {
    1
}

/// How pages follow each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "style", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// The body is an object holding the records and the next cursor, e.g.
    /// `{"items":[...],"next_cursor":"c2","has_more":true}`. The checkpoint is the cursor. Caught up when a
    /// page is empty, `has_more` is false, or the cursor is missing.
    Cursor {
        /// Query parameter that carries the cursor. Default: `cursor`.
        #[serde(default = "cursor_param")]
        cursor_param: String,
        /// Body field with the records array. Default: `items`.
        #[serde(default = "items_field")]
        items_field: String,
        /// Body field with the next cursor. Default: `next_cursor`.
        #[serde(default = "next_field")]
        next_field: String,
        /// Optional boolean body field that says whether more pages follow. Default: `has_more`.
        #[serde(default = "has_more_field")]
        has_more_field: Option<String>,
    },
    /// The body is the records array; the next page's URL is in the `Link` header with `rel="next"`.
    /// The checkpoint is that URL. Caught up when there is no next link or a page is empty.
    NextLink,
    /// The body is the records array; pages are numbered. The checkpoint is the next page number to
    /// read. Caught up on an empty page, or on a page shorter than the page size (which a later run
    /// reads again, since records may have been appended to it).
    PageNumber {
        /// Query parameter of the page number. Default: `page`.
        #[serde(default = "page_param")]
        page_param: String,
        /// Number of the first page. Default: 1.
        #[serde(default = "first_page")]
        first_page: u64,
    },
}

impl Default for Pagination {
    fn default() -> Self {
        Pagination::Cursor {
            cursor_param: cursor_param(),
            items_field: items_field(),
            next_field: next_field(),
            has_more_field: has_more_field(),
        }
    }
}

/// What one page says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutcome {
    /// Byte range of the records array in the body.
    pub records: std::ops::Range<usize>,
    /// Number of records.
    pub count: usize,
    /// Checkpoint token to read the page after this one.
    pub next: Option<String>,
    /// No more pages for now.
    pub caught_up: bool,
}

/// A page that could not be interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The body is broken (truncated, unbalanced).
    #[error(transparent)]
    Body(#[from] ScanError),
    /// The next link is not a URL.
    #[error("the next link '{}' is not a valid URL", crate::source::Short(.0))]
    BadLink(String),
    /// The body is larger than the configured `max_page_bytes`; it was not read past the cap.
    #[error("the page body is larger than max_page_bytes ({limit} bytes{})", .announced.map(|n| format!("; Content-Length: {n}")).unwrap_or_default())]
    TooLarge {
        /// The cap.
        limit: u64,
        /// The body size the server announced, if it did.
        announced: Option<u64>,
    },
}

impl Pagination {
    /// The URL of the page after checkpoint `token` (the first page when `None`). `page_size` is added
    /// as `size_param` when set.
    pub fn request_url(
        &self,
        base: &Url,
        token: Option<&str>,
        size_param: &str,
        page_size: Option<u64>,
    ) -> Result<Url, PageError> {
        let mut url = match (self, token) {
            (Pagination::NextLink, Some(link)) => base
                .join(link)
                .map_err(|_| PageError::BadLink(link.to_string()))?,
            _ => base.clone(),
        };
        let has_size = url.query_pairs().any(|(k, _)| k == size_param);
        {
            let mut q = url.query_pairs_mut();
            match (self, token) {
                (Pagination::Cursor { cursor_param, .. }, Some(c)) => {
                    q.append_pair(cursor_param, c);
                }
                (
                    Pagination::PageNumber {
                        page_param,
                        first_page,
                    },
                    t,
                ) => {
                    let n = t.and_then(|t| t.parse::<u64>().ok()).unwrap_or(*first_page);
                    q.append_pair(page_param, &n.to_string());
                }
                _ => {}
            }
            if let (Some(n), false) = (page_size, has_size) {
                q.append_pair(size_param, &n.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// Interprets a page fetched for checkpoint `token`.
    pub fn interpret(
        &self,
        token: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        page_size: Option<u64>,
    ) -> Result<PageOutcome, PageError> {
        match self {
            Pagination::Cursor {
                items_field,
                next_field,
                has_more_field,
                ..
            } => {
                let fields = scan::object_fields(body)?;
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == name.as_bytes())
                        .map(|(_, r)| r.clone())
                };
                let records = get(items_field).ok_or_else(|| {
                    ScanError::Shape(format!("the body has no '{items_field}' field"))
                })?;
                let count = scan::array_len(&body[records.clone()])?;
                let next = get(next_field).and_then(|r| scan::scalar_text(&body[r]));
                let has_more = has_more_field
                    .as_deref()
                    .and_then(get)
                    .map(|r| &body[r] != b"false")
                    .unwrap_or(true);
                let caught_up = count == 0 || !has_more || next.is_none();
                Ok(PageOutcome {
                    records,
                    count,
                    next: next.or_else(|| token.map(str::to_string)),
                    caught_up,
                })
            }
            Pagination::NextLink => {
                let count = scan::array_len(body)?;
                let link = next_link(headers);
                Ok(PageOutcome {
                    records: 0..body.len(),
                    count,
                    caught_up: count == 0 || link.is_none(),
                    next: link.or_else(|| token.map(str::to_string)),
                })
            }
            Pagination::PageNumber { first_page, .. } => {
                let count = scan::array_len(body)?;
                let page = token
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(*first_page);
                let full = page_size.is_some_and(|s| count as u64 >= s)
                    || (page_size.is_none() && count > 0);
                Ok(PageOutcome {
                    records: 0..body.len(),
                    count,
                    next: Some(if full { page + 1 } else { page }.to_string()),
                    caught_up: !full,
                })
            }
        }
    }

    /// Where the page after a broken one is, when the strategy can tell without the body (page numbers
    /// and next links can; a cursor in a broken body is lost).
    pub fn skip_broken(&self, token: Option<&str>, headers: &HeaderMap) -> Option<String> {
        match self {
            Pagination::Cursor { .. } => None,
            Pagination::NextLink => next_link(headers),
            Pagination::PageNumber { first_page, .. } => {
                let page = token
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(*first_page);
                Some((page + 1).to_string())
            }
        }
    }
}

/// The `rel="next"` target of a `Link` header (RFC 8288), if any.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(v) = value.to_str() else { continue };
        for part in v.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                return Some(
                    target
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string(),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://api.test/invoices?since=2021-01-01T00:00:00").unwrap()
    }

    #[test]
    fn cursor_requests_and_pages() {
        let p = Pagination::default();
        let u = p
            .request_url(&base(), Some("after-10"), "limit", Some(50))
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://api.test/invoices?since=2021-01-01T00:00:00&cursor=after-10&limit=50"
        );
        let body = br#"{"items":[{"a":1},{"a":2}],"next_cursor":"after-12","has_more":true}"#;
        let o = p
            .interpret(Some("after-10"), &HeaderMap::new(), body, Some(2))
            .unwrap();
        assert_eq!(o.count, 2);
        assert_eq!(o.next.as_deref(), Some("after-12"));
        assert!(!o.caught_up);
        assert_eq!(&body[o.records], br#"[{"a":1},{"a":2}]"#);
        let end = br#"{"items":[],"next_cursor":"after-12","has_more":false}"#;
        let o = p
            .interpret(Some("after-12"), &HeaderMap::new(), end, Some(2))
            .unwrap();
        assert!(o.caught_up);
        assert_eq!(o.next.as_deref(), Some("after-12"));
    }

    #[test]
    fn next_link_pages() {
        let p = Pagination::NextLink;
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            "</invoices?page=3>; rel=\"next\", </invoices?page=1>; rel=\"first\""
                .parse()
                .unwrap(),
        );
        let o = p.interpret(None, &h, b"[1,2]", None).unwrap();
        assert_eq!(o.next.as_deref(), Some("/invoices?page=3"));
        assert!(!o.caught_up);
        let u = p
            .request_url(&base(), o.next.as_deref(), "page_size", None)
            .unwrap();
        assert_eq!(u.as_str(), "http://api.test/invoices?page=3");
        let o = p
            .interpret(Some("/invoices?page=3"), &HeaderMap::new(), b"[1]", None)
            .unwrap();
        assert!(o.caught_up);
        assert_eq!(o.next.as_deref(), Some("/invoices?page=3"));
    }

    #[test]
    fn page_numbers() {
        let p = Pagination::PageNumber {
            page_param: "page".into(),
            first_page: 1,
        };
        let u = p.request_url(&base(), None, "page_size", Some(2)).unwrap();
        assert!(u.as_str().ends_with("&page=1&page_size=2"), "{u}");
        let o = p
            .interpret(None, &HeaderMap::new(), b"[1,2]", Some(2))
            .unwrap();
        assert_eq!((o.next.as_deref(), o.caught_up), (Some("2"), false));
        let o = p
            .interpret(Some("2"), &HeaderMap::new(), b"[1]", Some(2))
            .unwrap();
        assert_eq!((o.next.as_deref(), o.caught_up), (Some("2"), true));
        assert_eq!(
            p.skip_broken(Some("2"), &HeaderMap::new()).as_deref(),
            Some("3")
        );
    }

    #[test]
    fn broken_bodies_are_errors() {
        let p = Pagination::default();
        assert!(p
            .interpret(None, &HeaderMap::new(), br#"{"items":[{"a":1},{"#, None)
            .is_err());
        assert!(p
            .interpret(None, &HeaderMap::new(), br#"{"next_cursor":"x"}"#, None)
            .is_err());
    }
}
