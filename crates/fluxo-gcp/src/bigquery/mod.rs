//! bigquery connector (in progress).
