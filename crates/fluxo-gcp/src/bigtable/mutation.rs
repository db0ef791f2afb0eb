//! The element type of the Bigtable sink: one row key and the mutations to apply to it atomically.
//!
//! Plain public fields, so that a pipeline converts its own row type with a cheap `From` impl: a key
//! `Vec<u8>` becomes [`Bytes`] without a copy, a `Cow<'static, str>` family is taken as is, a
//! `Cow<'static, [u8]>` qualifier becomes [`Bytes`] without a copy ([`Bytes::from_static`] or
//! [`Bytes::from`] a `Vec`).

use std::borrow::Cow;

use bigtable_rs::google::bigtable::v2::mutate_rows_request::Entry;
use bigtable_rs::google::bigtable::v2::mutation::{self as pb_mutation, Mutation as PbKind};
use bigtable_rs::google::bigtable::v2::{Mutation as PbMutation, TimestampRange};
use bytes::Bytes;

/// Largest number of mutations Bigtable accepts in one `MutateRows` request (summed over its entries)
/// and so in one row.
pub const MAX_MUTATIONS_PER_REQUEST: usize = 100_000;
/// Largest row key Bigtable accepts (4 KiB).
pub const MAX_KEY_BYTES: usize = 4096;
/// `timestamp_micros` value that asks the server to use its own clock (not idempotent: a retry writes a
/// second version).
pub const SERVER_TIMESTAMP: i64 = -1;

/// A column family name. Static names cost nothing to clone.
pub type Family = Cow<'static, str>;

/// Writes one cell (`SetCell`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetCell {
    /// Column family; must exist in the table.
    pub family: Family,
    /// Column qualifier (any bytes, also empty).
    pub qualifier: Bytes,
    /// Version timestamp in microseconds since the Unix epoch. Must be a whole number of milliseconds
    /// (a multiple of 1,000), as Bigtable tables have millisecond granularity, or [`SERVER_TIMESTAMP`].
    /// An explicit timestamp makes the write idempotent: a retry rewrites the same version.
    pub timestamp_micros: i64,
    /// Value.
    pub value: Bytes,
}

impl SetCell {
    /// A cell.
    pub fn new(
        family: impl Into<Family>,
        qualifier: impl Into<Bytes>,
        timestamp_micros: i64,
        value: impl Into<Bytes>,
    ) -> Self {
        SetCell {
            family: family.into(),
            qualifier: qualifier.into(),
            timestamp_micros,
            value: value.into(),
        }
    }
}

/// A deletion, applied before the row's [`SetCell`]s.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Delete {
    /// Deletes every cell of the row.
    Row,
    /// Deletes every cell of one family.
    Family(Family),
    /// Deletes every version of one column.
    Column {
        /// Column family.
        family: Family,
        /// Column qualifier.
        qualifier: Bytes,
    },
}

/// The mutations of one row, applied atomically by Bigtable: first `deletes` in order, then `cells`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RowMutation {
    /// Row key (1..=4096 bytes).
    pub key: Bytes,
    /// Deletions, applied first. Usually empty (no allocation).
    pub deletes: Vec<Delete>,
    /// Cells to write.
    pub cells: Vec<SetCell>,
}

impl RowMutation {
    /// A row that writes `cells`.
    pub fn new(key: impl Into<Bytes>, cells: Vec<SetCell>) -> Self {
        RowMutation {
            key: key.into(),
            deletes: Vec::new(),
            cells,
        }
    }

    /// Adds a cell (builder style).
    pub fn set(
        mut self,
        family: impl Into<Family>,
        qualifier: impl Into<Bytes>,
        timestamp_micros: i64,
        value: impl Into<Bytes>,
    ) -> Self {
        self.cells
            .push(SetCell::new(family, qualifier, timestamp_micros, value));
        self
    }

    /// Adds a deletion (builder style).
    pub fn delete(mut self, delete: Delete) -> Self {
        self.deletes.push(delete);
        self
    }

    /// Number of mutations (deletions plus cells).
    pub fn mutation_count(&self) -> usize {
        self.deletes.len() + self.cells.len()
    }

    /// Approximate size of the mutations on the wire (key, names, qualifiers, values, timestamps, framing).
    pub fn wire_bytes(&self) -> usize {
        let cells: usize = self
            .cells
            .iter()
            .map(|c| c.family.len() + c.qualifier.len() + c.value.len() + 16)
            .sum();
        let deletes: usize = self
            .deletes
            .iter()
            .map(|d| match d {
                Delete::Row => 4,
                Delete::Family(f) => f.len() + 6,
                Delete::Column { family, qualifier } => family.len() + qualifier.len() + 10,
            })
            .sum();
        self.key.len() + 8 + cells + deletes
    }

    /// Checks what Bigtable would refuse permanently: an empty or oversize key, too many mutations,
    /// an empty family name, a timestamp that is not a whole number of milliseconds, a family outside
    /// `known_families` (when given).
    pub fn check(&self, known_families: Option<&dyn Fn(&str) -> bool>) -> Result<(), String> {
        if self.key.is_empty() {
            return Err("empty row key".into());
        }
        if self.key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "row key of {} bytes exceeds Bigtable's {MAX_KEY_BYTES}",
                self.key.len()
            ));
        }
        if self.mutation_count() > MAX_MUTATIONS_PER_REQUEST {
            return Err(format!(
                "{} mutations in one row exceed Bigtable's {MAX_MUTATIONS_PER_REQUEST}",
                self.mutation_count()
            ));
        }
        let family_ok = |f: &str| -> Result<(), String> {
            if f.is_empty() {
                return Err("empty column family name".into());
            }
            if let Some(known) = known_families {
                if !known(f) {
                    return Err(format!("column family '{f}' does not exist in the table"));
                }
            }
            Ok(())
        };
        for c in &self.cells {
            family_ok(&c.family)?;
            let ts = c.timestamp_micros;
            if ts != SERVER_TIMESTAMP && (ts < 0 || ts % 1000 != 0) {
                return Err(format!(
                    "cell timestamp {ts} µs (family '{}') is not a whole number of milliseconds",
                    c.family
                ));
            }
        }
        for d in &self.deletes {
            match d {
                Delete::Row => {}
                Delete::Family(f) | Delete::Column { family: f, .. } => family_ok(f)?,
            }
        }
        Ok(())
    }

    /// The `MutateRows` entry of this row (copies key, names and values into the generated message).
    pub fn to_entry(&self) -> Entry {
        Entry {
            row_key: self.key.to_vec(),
            mutations: self.to_mutations(),
            idempotency: None,
        }
    }

    /// The generated mutations of this row, deletions first.
    pub fn to_mutations(&self) -> Vec<PbMutation> {
        let mut out = Vec::with_capacity(self.mutation_count());
        out.extend(self.deletes.iter().map(delete_to_pb));
        out.extend(self.cells.iter().map(set_cell_to_pb));
        out
    }
}

pub(crate) fn set_cell_to_pb(c: &SetCell) -> PbMutation {
    PbMutation {
        mutation: Some(PbKind::SetCell(pb_mutation::SetCell {
            family_name: c.family.as_ref().to_owned(),
            column_qualifier: c.qualifier.to_vec(),
            timestamp_micros: c.timestamp_micros,
            value: c.value.to_vec(),
        })),
    }
}

pub(crate) fn delete_to_pb(d: &Delete) -> PbMutation {
    let mutation = match d {
        Delete::Row => PbKind::DeleteFromRow(pb_mutation::DeleteFromRow {}),
        Delete::Family(f) => PbKind::DeleteFromFamily(pb_mutation::DeleteFromFamily {
            family_name: f.as_ref().to_owned(),
        }),
        Delete::Column { family, qualifier } => {
            PbKind::DeleteFromColumn(pb_mutation::DeleteFromColumn {
                family_name: family.as_ref().to_owned(),
                column_qualifier: qualifier.to_vec(),
                time_range: Some(TimestampRange::default()),
            })
        }
    };
    PbMutation {
        mutation: Some(mutation),
    }
}

impl fluxo::Data for RowMutation {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.key.len()
            + self.cells.capacity() * std::mem::size_of::<SetCell>()
            + self
                .cells
                .iter()
                .map(|c| {
                    let family = match &c.family {
                        Cow::Borrowed(_) => 0,
                        Cow::Owned(s) => s.capacity(),
                    };
                    family + c.qualifier.len() + c.value.len()
                })
                .sum::<usize>()
            + self.deletes.capacity() * std::mem::size_of::<Delete>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_whole_milliseconds() {
        let ok = RowMutation::new("k", vec![]).set("f", "q", 1_000, "v");
        assert!(ok.check(None).is_ok());
        let server = RowMutation::new("k", vec![]).set("f", "q", SERVER_TIMESTAMP, "v");
        assert!(server.check(None).is_ok());
        let bad = RowMutation::new("k", vec![]).set("f", "q", 1_001, "v");
        assert!(bad.check(None).unwrap_err().contains("milliseconds"));
        let negative = RowMutation::new("k", vec![]).set("f", "q", -2_000, "v");
        assert!(negative.check(None).is_err());
    }

    #[test]
    fn keys_and_families_are_checked() {
        assert!(RowMutation::new("", vec![]).check(None).is_err());
        let big = RowMutation::new(vec![b'k'; MAX_KEY_BYTES + 1], vec![]);
        assert!(big.check(None).unwrap_err().contains("4096"));
        let row = RowMutation::new("k", vec![])
            .set("f", "q", 0, "v")
            .delete(Delete::Family("g".into()));
        let only_f = |f: &str| f == "f";
        assert!(row.check(Some(&only_f)).unwrap_err().contains("family 'g'"));
        let both = |f: &str| f == "f" || f == "g";
        assert!(row.check(Some(&both)).is_ok());
    }

    #[test]
    fn deletes_come_first_in_the_entry() {
        let row = RowMutation::new("k", vec![])
            .set("f", "q", 0, "v")
            .delete(Delete::Row);
        let entry = row.to_entry();
        assert_eq!(entry.row_key, b"k");
        assert_eq!(entry.mutations.len(), 2);
        assert!(matches!(
            entry.mutations[0].mutation,
            Some(PbKind::DeleteFromRow(_))
        ));
        assert!(matches!(
            entry.mutations[1].mutation,
            Some(PbKind::SetCell(_))
        ));
        assert_eq!(row.mutation_count(), 2);
        assert!(row.wire_bytes() > 4);
    }
}
