//! Invoice (NF-e) domain: exact parsing, validation with stable error codes, enrichment and the
//! storage layouts of the sinks (Bigtable, BigQuery, Cloud Storage).
//!
//! ```
//! use nfe::{BigtableLayout, ValidationConfig};
//!
//! let validator = ValidationConfig::default().build().unwrap();
//! let raw = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00",
//!   "Discount":0.0,"NFeNumber":503,"NFeID":3,"ItemList":[
//!   {"ProductName":"Beer","Value":9.00,"Quantity":6},
//!   {"ProductName":"French fries","Value":10.99,"Quantity":2},
//!   {"ProductName":"Ice cream","Value":27.15,"Quantity":1}]}"#;
//! let invoice = validator.process(raw).unwrap();
//! assert_eq!(invoice.gross.to_string(), "103.13");
//! let [row, index] = BigtableLayout::default().encode(&invoice);
//! assert!(row.cells.iter().all(|c| c.timestamp_micros % 1000 == 0));
//! let rows = nfe::bigquery::item_rows(&invoice);
//! assert_eq!(rows.len(), 3);
//! # let _ = index;
//! ```
//!
//! Bad records are data: [`Validator::validate`] returns every problem as an [`Issue`] with a
//! stable [`ErrorCode`] and a JSON path; a [`DeadLetter`] keeps the exact bytes with them.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bigquery;
pub mod bigtable;
mod config;
mod dead_letter;
mod document;
mod enrich;
mod hash;
mod intake;
mod issue;
pub mod money;
mod page;
mod source;
pub mod storage;
mod time;
mod validate;

pub use bigtable::{BigtableLayout, Cell, Row, RowRange};
pub use config::{ConfigError, ValidationConfig};
pub use dead_letter::{
    stage, DeadLetter, DeadLetterMessage, RawBytes, SourceMeta, RAW_PREFIX_BYTES,
    SHORT_FORM_MAX_BYTES, SHORT_FORM_MAX_ISSUES,
};
pub use enrich::{enrich, normalize_product_name, IngestMeta, Invoice, Line, ProductName};
pub use hash::ContentHash;
pub use intake::{Delivery, Intake, PreviousFailure};
pub use issue::{
    clip_text, ErrorCode, Issue, Rejection, UnknownErrorCode, MAX_MESSAGE_BYTES, MAX_PATH_BYTES,
};
pub use money::Totals;
pub use page::{split_page, Page, PageError, PageRecord};
pub use source::{field, SourceInvoice, SourceItem};
pub use time::{format_rfc3339_micros, local_date, parse_moment, Moment, TimeError};
pub use validate::{ValidRecord, Validator};

/// Content hash of arbitrary JSON bytes (the same canonical form as records), or the parse
/// issues. Useful to compare two spellings of a record.
pub fn content_hash_of(json: &[u8]) -> Result<ContentHash, Rejection> {
    let doc = document::Document::parse(json, 128).map_err(issue::IssueList::into_rejection)?;
    Ok(hash::content_hash(&doc))
}
