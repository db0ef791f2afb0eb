//! The errors of storage operations, classified for retries, and their conversions from the two
//! client libraries' errors.

use fluxo::ErrorClass;

/// What kind of failure a storage request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// Worth retrying: connection refused or reset, timeout, HTTP 408, 429 or 5xx, a missing bucket
    /// during a write (it may be re-created; the engine retries a bounded number of times and then
    /// nacks, it never dead-letters good data because of infrastructure).
    Transient,
    /// Not worth retrying: bad request, permission denied, invalid object name.
    Permanent,
    /// The object (or bucket) does not exist.
    NotFound,
    /// An element could not be encoded (permanent for that element only).
    Encode,
    /// A record could not be decoded (source).
    Decode,
}

/// The failure of a storage operation (or of encoding one element).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} '{object}' failed: {message}")]
pub struct StorageError {
    /// Classification.
    pub kind: StorageErrorKind,
    /// The operation (`upload`, `download`, `list`, `encode`, ...).
    pub op: &'static str,
    /// The object name (or prefix).
    pub object: String,
    /// What happened.
    pub message: String,
    /// The HTTP status the service answered with, when it answered (`gs://` only).
    pub status: Option<u16>,
}

impl StorageError {
    pub(crate) fn new(
        kind: StorageErrorKind,
        op: &'static str,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        StorageError {
            kind,
            op,
            object: object.into(),
            message: message.into(),
            status: None,
        }
    }
}

impl ErrorClass for StorageError {
    fn is_retriable(&self) -> bool {
        match self.kind {
            StorageErrorKind::Transient => true,
            // A write to a bucket that is missing right now (deleted, or an emulator restarted) is an
            // infrastructure fault: retried, then nacked for redelivery, never rejected as bad data.
            StorageErrorKind::NotFound => matches!(self.op, "upload" | "upload part"),
            _ => false,
        }
    }
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn os_error(op: &'static str, name: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => StorageErrorKind::NotFound,
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => StorageErrorKind::Permanent,
        _ => StorageErrorKind::Transient,
    };
    StorageError::new(kind, op, name, one_line(&e.to_string()))
}

pub(super) fn gcs_error(
    op: &'static str,
    name: &str,
    e: gcloud_storage::http::Error,
) -> StorageError {
    use gcloud_storage::http::Error as E;
    let status_kind = |code: u16| match code {
        404 => StorageErrorKind::NotFound,
        408 | 429 | 500..=599 => StorageErrorKind::Transient,
        _ => StorageErrorKind::Permanent,
    };
    let status = match &e {
        E::Response(r) => Some(r.code),
        E::HttpClient(re) | E::RawResponse(re, _) => re.status().map(|s| s.as_u16()),
        _ => None,
    };
    let (kind, message) = match &e {
        E::Response(r) => (
            status_kind(r.code),
            format!("HTTP {}: {}", r.code, r.message),
        ),
        E::HttpClient(re) | E::RawResponse(re, _) => match re.status() {
            Some(s) => (status_kind(s.as_u16()), e.to_string()),
            // Connection refused or reset, timeouts, broken bodies: transient.
            None => (
                StorageErrorKind::Transient,
                format!("{e}: {}", source_chain(re)),
            ),
        },
        E::HttpMiddleware(_) | E::TokenSource(_) => (StorageErrorKind::Transient, e.to_string()),
        E::InvalidRangeHeader(_) => (StorageErrorKind::Permanent, e.to_string()),
    };
    StorageError {
        status,
        ..StorageError::new(kind, op, name, one_line(&message))
    }
}

pub(super) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let e = |kind, op| StorageError::new(kind, op, "o", "m");
        assert!(e(StorageErrorKind::Transient, "download").is_retriable());
        assert!(e(StorageErrorKind::NotFound, "upload").is_retriable());
        assert!(!e(StorageErrorKind::NotFound, "download").is_retriable());
        assert!(!e(StorageErrorKind::Permanent, "upload").is_retriable());
        assert!(!e(StorageErrorKind::Encode, "encode").is_retriable());
    }
}
