//! bigtable connector (in progress).
