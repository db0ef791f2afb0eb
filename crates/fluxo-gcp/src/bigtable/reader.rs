//! A reader for tests and tools: one row by key, a key range or prefix with a limit, and a conditional
//! write (`CheckAndMutateRow`) with compare-and-set helpers.

use bigtable_rs::bigtable::{BigTable, RowCell};
use bigtable_rs::google::bigtable::v2::{
    column_range::{EndQualifier, StartQualifier},
    row_filter::{Chain, Filter},
    row_range::{EndKey, StartKey},
    value_range::{EndValue, StartValue},
    CheckAndMutateRowRequest, ColumnRange, ReadRowsRequest, RowFilter, RowRange, RowSet,
    ValueRange,
};
use bytes::Bytes;

use super::client::{data_client, BigtableError};
use super::config::{BigtableSinkConfig, ValidConfig};
use super::mutation::{RowMutation, SetCell};
use crate::error::ConfigError;

/// One cell as read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadCell {
    /// Column family.
    pub family: String,
    /// Column qualifier.
    pub qualifier: Bytes,
    /// Version timestamp (µs since the epoch).
    pub timestamp_micros: i64,
    /// Value.
    pub value: Bytes,
}

/// One row as read: its key and cells sorted by family, qualifier, then newest version first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadRow {
    /// Row key.
    pub key: Bytes,
    /// Cells.
    pub cells: Vec<ReadCell>,
}

/// A key range for [`BigtableReader::scan`]: `start` inclusive, `end` exclusive; an empty bound is open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    /// First key (inclusive); empty = from the first row.
    pub start: Bytes,
    /// End key (exclusive); empty = to the last row.
    pub end: Bytes,
}

impl KeyRange {
    /// All keys that start with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let start: Bytes = prefix.into();
        let mut end = start.to_vec();
        // The smallest key greater than every key with the prefix: drop trailing 0xff, increment the last.
        while end.last() == Some(&0xff) {
            end.pop();
        }
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        KeyRange {
            start,
            end: end.into(),
        }
    }
}

/// The expected current value of a cell in [`BigtableReader::compare_and_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The column has no cell.
    Absent,
    /// The newest cell of the column holds exactly these bytes.
    Value(Bytes),
}

/// Reads rows of one table and writes conditionally.
#[derive(Clone)]
pub struct BigtableReader {
    client: BigTable,
    table_path: String,
    app_profile_id: String,
}

impl std::fmt::Debug for BigtableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigtableReader")
            .field("table", &self.table_path)
            .finish()
    }
}

fn to_read_row(key: Vec<u8>, cells: Vec<RowCell>) -> ReadRow {
    let mut cells: Vec<ReadCell> = cells
        .into_iter()
        .map(|c| ReadCell {
            family: c.family_name,
            qualifier: c.qualifier.into(),
            timestamp_micros: c.timestamp_micros,
            value: c.value.into(),
        })
        .collect();
    // Servers return families in no documented order: sort for a deterministic result.
    cells.sort_by(|x, y| {
        (
            &x.family,
            &x.qualifier,
            std::cmp::Reverse(x.timestamp_micros),
        )
            .cmp(&(
                &y.family,
                &y.qualifier,
                std::cmp::Reverse(y.timestamp_micros),
            ))
    });
    ReadRow {
        key: key.into(),
        cells,
    }
}

impl BigtableReader {
    /// A reader of the configured table (the batching fields of the configuration are ignored).
    pub async fn connect(config: &BigtableSinkConfig) -> Result<Self, ConfigError> {
        let cfg = config.validate()?;
        Self::from_valid(&cfg).await
    }

    pub(crate) async fn from_valid(cfg: &ValidConfig) -> Result<Self, ConfigError> {
        Ok(BigtableReader {
            client: data_client(cfg, false).await?,
            table_path: cfg.table_path.clone(),
            app_profile_id: cfg.app_profile_id.clone(),
        })
    }

    async fn read(&self, rows: RowSet, limit: i64) -> Result<Vec<ReadRow>, BigtableError> {
        let req = ReadRowsRequest {
            table_name: self.table_path.clone(),
            app_profile_id: self.app_profile_id.clone(),
            rows: Some(rows),
            rows_limit: limit,
            ..ReadRowsRequest::default()
        };
        let rows = self
            .client
            .clone()
            .read_rows(req)
            .await
            .map_err(|e| BigtableError::from_client("ReadRows", e))?;
        Ok(rows.into_iter().map(|(k, c)| to_read_row(k, c)).collect())
    }

    /// The row with this key, or `None` when it has no cells.
    pub async fn read_row(&self, key: impl Into<Bytes>) -> Result<Option<ReadRow>, BigtableError> {
        let rows = RowSet {
            row_keys: vec![key.into().to_vec()],
            row_ranges: Vec::new(),
        };
        Ok(self.read(rows, 1).await?.into_iter().next())
    }

    /// Rows of a key range in key order, at most `limit` (0 = no limit).
    pub async fn scan(&self, range: KeyRange, limit: u64) -> Result<Vec<ReadRow>, BigtableError> {
        let start_key =
            (!range.start.is_empty()).then(|| StartKey::StartKeyClosed(range.start.to_vec()));
        let end_key = (!range.end.is_empty()).then(|| EndKey::EndKeyOpen(range.end.to_vec()));
        let rows = RowSet {
            row_keys: Vec::new(),
            row_ranges: vec![RowRange { start_key, end_key }],
        };
        self.read(rows, i64::try_from(limit).unwrap_or(i64::MAX))
            .await
    }

    /// Rows whose key starts with `prefix`, at most `limit` (0 = no limit).
    pub async fn scan_prefix(
        &self,
        prefix: impl Into<Bytes>,
        limit: u64,
    ) -> Result<Vec<ReadRow>, BigtableError> {
        self.scan(KeyRange::prefix(prefix), limit).await
    }

    /// `CheckAndMutateRow`: applies `on_match` atomically when `predicate` yields any cell of row `key`,
    /// else `otherwise` (only the mutations of each [`RowMutation`] are used, its key is ignored).
    /// Returns whether the predicate matched. Without a predicate, any cell of the row matches.
    pub async fn check_and_mutate(
        &self,
        key: impl Into<Bytes>,
        predicate: Option<RowFilter>,
        on_match: &RowMutation,
        otherwise: &RowMutation,
    ) -> Result<bool, BigtableError> {
        let key: Bytes = key.into();
        for m in [on_match, otherwise] {
            let keyed = RowMutation {
                key: key.clone(),
                deletes: m.deletes.clone(),
                cells: m.cells.clone(),
            };
            keyed.check(None).map_err(BigtableError::InvalidElement)?;
        }
        let req = CheckAndMutateRowRequest {
            table_name: self.table_path.clone(),
            app_profile_id: self.app_profile_id.clone(),
            row_key: key.to_vec(),
            predicate_filter: predicate,
            true_mutations: on_match.to_mutations(),
            false_mutations: otherwise.to_mutations(),
            ..CheckAndMutateRowRequest::default()
        };
        let resp = self
            .client
            .clone()
            .check_and_mutate_row(req)
            .await
            .map_err(|e| BigtableError::from_client("CheckAndMutateRow", e))?;
        Ok(resp.predicate_matched)
    }

    /// Compare-and-set of one column: writes `new` (into its family and qualifier) only if the column's
    /// newest cell currently holds `expected` (or has no cell, for [`Expected::Absent`]). Returns whether
    /// it wrote. Atomic on the server: of two concurrent callers expecting the same value, one wins.
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Expected,
        new: SetCell,
    ) -> Result<bool, BigtableError> {
        let key = key.into();
        let write = RowMutation::new(key.clone(), vec![new.clone()]);
        let nothing = RowMutation::new(key.clone(), Vec::new());
        let column = column_filter(&new.family, &new.qualifier);
        match expected {
            Expected::Absent => {
                // Matched = the column has a cell: write nothing; else write.
                let matched = self
                    .check_and_mutate(key, Some(column), &nothing, &write)
                    .await?;
                Ok(!matched)
            }
            Expected::Value(v) => {
                let filter = RowFilter {
                    filter: Some(Filter::Chain(Chain {
                        filters: vec![
                            column,
                            RowFilter {
                                filter: Some(Filter::CellsPerColumnLimitFilter(1)),
                            },
                            RowFilter {
                                filter: Some(Filter::ValueRangeFilter(ValueRange {
                                    start_value: Some(StartValue::StartValueClosed(v.to_vec())),
                                    end_value: Some(EndValue::EndValueClosed(v.to_vec())),
                                })),
                            },
                        ],
                    })),
                };
                self.check_and_mutate(key, Some(filter), &write, &nothing)
                    .await
            }
        }
    }
}

/// A filter that yields the cells of exactly one column (no regular expressions: exact bytes).
pub fn column_filter(family: &str, qualifier: &[u8]) -> RowFilter {
    RowFilter {
        filter: Some(Filter::ColumnRangeFilter(ColumnRange {
            family_name: family.to_string(),
            start_qualifier: Some(StartQualifier::StartQualifierClosed(qualifier.to_vec())),
            end_qualifier: Some(EndQualifier::EndQualifierClosed(qualifier.to_vec())),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        let r = KeyRange::prefix("ab");
        assert_eq!(&r.start[..], b"ab");
        assert_eq!(&r.end[..], b"ac");
        let r = KeyRange::prefix(vec![b'a', 0xff]);
        assert_eq!(&r.end[..], b"b");
        let r = KeyRange::prefix(vec![0xff]);
        assert!(r.end.is_empty());
    }
}
