//! [`TableRow`]: one row for the Storage Write API, already serialized as a protobuf message.

use bytes::Bytes;

/// One row to append: the number of its table in the sink (the order of `tables` in the configuration)
/// and the row serialized in the protobuf wire format of that table's
/// [`WriterSchema`](super::WriterSchema). Build rows with [`RowEncoder`](super::RowEncoder), which
/// keeps both consistent; [`TableRow::from_parts`] takes bytes encoded elsewhere (they are sent as
/// they are, and a row BigQuery cannot decode is rejected alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRow {
    table: u16,
    data: Bytes,
}

impl TableRow {
    /// A row for the sink's table number `table`, from its serialized protobuf message.
    pub fn from_parts(table: u16, data: Bytes) -> Self {
        TableRow { table, data }
    }

    /// The number of the row's table in the sink.
    pub fn table_index(&self) -> u16 {
        self.table
    }

    /// The serialized row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes this row adds to an `AppendRows` request (the row, its length prefix and field tag).
    pub(crate) fn encoded_len(&self) -> usize {
        self.data.len() + 6
    }
}

impl fluxo::Data for TableRow {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.data.len()
    }
}
