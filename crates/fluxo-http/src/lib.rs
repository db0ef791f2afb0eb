//! HTTP polling source for the fluxo engine.
//!
//! [`HttpSource`] reads an API page by page until it is caught up, emitting one [`HttpPage`] element per
//! page (the records array's exact bytes, undecoded: downstream steps split and validate them). It
//! retries 429, 5xx, timeouts, broken connections and truncated bodies with exponential backoff and full
//! jitter, honouring `Retry-After`; other 4xx answers end the run with one clear error. Bodies are read
//! chunk by chunk under a cap (`max_page_bytes`); a page above it is skipped as broken when the next
//! page can be found without it, else the run fails saying which setting to change. Pagination
//! strategies are small types ([`Pagination`]: cursor in the body, next link, page number), each with a
//! loop guard. Credentials come from the environment and are never logged.
//!
//! A page's checkpoint is committed to a [`CheckpointStore`] only once that page and every page before
//! it were acknowledged downstream (every record delivered), with a compare-and-set, so a crash re-reads
//! at most the pages after the last commit and two runs cannot both advance it; a lease, renewed in the
//! background through every wait, keeps a second run from polling at all. A run stops cleanly at its
//! deadline or page cap with its checkpoint committed.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod paginate;
pub mod scan;
mod source;

pub use checkpoint::{CheckpointStore, MemoryCheckpointStore, StoreError};
pub use config::{
    Auth, ConfigError, HttpSourceConfig, RetryPolicy, ValidConfig, DEFAULT_MAX_PAGE_BYTES,
};
pub use paginate::Pagination;
pub use source::{Broken, BrokenKind, HttpPage, HttpSource, HttpSourceError, Outcome, RunSummary};
