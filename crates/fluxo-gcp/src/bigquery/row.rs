//! [`TableRow`]: one row for `tabledata.insertAll`, already serialized to JSON.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

/// One row to insert: its JSON object (serialized once, when the row is built, and copied into the request
/// body as is), an optional insert id (`insertId`, which real BigQuery uses for best-effort
/// de-duplication of retried rows for about a minute) and an optional table (a row without one goes to the
/// sink's first table).
///
/// The JSON is always one valid JSON object: every constructor checks it, so one row can never corrupt
/// a request that carries other rows.
///
/// ```
/// use fluxo_gcp::bigquery::TableRow;
/// #[derive(serde::Serialize)]
/// struct Sale { id: i64, amount: String }
///
/// let row = TableRow::encode("sales", "sale-1", &Sale { id: 1, amount: "9.90".into() }).unwrap();
/// assert_eq!(row.json(), br#"{"id":1,"amount":"9.90"}"#);
/// assert_eq!(row.table(), Some("sales"));
/// assert_eq!(row.insert_id(), Some("sale-1"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRow {
    table: Option<Arc<str>>,
    insert_id: Option<String>,
    json: Bytes,
}

fn not_an_object() -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom("a BigQuery row must be a JSON object")
}

fn is_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

impl TableRow {
    /// A row from any value that serializes to a JSON object (a struct or a map).
    pub fn from_serialize<T: Serialize + ?Sized>(row: &T) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_vec(row)?;
        if !is_object(&json) {
            return Err(not_an_object());
        }
        Ok(TableRow {
            table: None,
            insert_id: None,
            json: Bytes::from(json),
        })
    }

    /// A row for `table` with an insert id, from any value that serializes to a JSON object.
    pub fn encode<T: Serialize + ?Sized>(
        table: impl Into<Arc<str>>,
        insert_id: impl Into<String>,
        row: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::from_serialize(row)?
            .with_table(table)
            .with_insert_id(insert_id))
    }

    /// A row from JSON text that is already serialized. The text is parsed once (without allocating) to
    /// check that it is one JSON object.
    pub fn from_json_bytes(json: impl Into<Bytes>) -> Result<Self, serde_json::Error> {
        let json = json.into();
        if !is_object(&json) {
            return Err(not_an_object());
        }
        serde_json::from_slice::<serde::de::IgnoredAny>(&json)?;
        Ok(TableRow {
            table: None,
            insert_id: None,
            json,
        })
    }

    /// Sets the table (clone one `Arc<str>` per table to avoid an allocation per row).
    pub fn with_table(mut self, table: impl Into<Arc<str>>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// Sets the insert id.
    pub fn with_insert_id(mut self, insert_id: impl Into<String>) -> Self {
        self.insert_id = Some(insert_id.into());
        self
    }

    /// The table, if set.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    pub(crate) fn table_arc(&self) -> Option<&Arc<str>> {
        self.table.as_ref()
    }

    /// The insert id, if set.
    pub fn insert_id(&self) -> Option<&str> {
        self.insert_id.as_deref()
    }

    /// The row's JSON object.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Bytes this row adds to an `insertAll` body.
    pub(crate) fn encoded_len(&self) -> usize {
        // {"insertId":"...","json":...}, plus a comma; escapes in the id are rare and within the slack
        // of max_bytes_per_request against the 10 MB limit.
        self.json.len() + self.insert_id.as_ref().map_or(0, |i| i.len() + 14) + 11
    }
}

impl fluxo::Data for TableRow {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.json.len()
            + self.insert_id.as_ref().map_or(0, String::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects() {
        assert!(TableRow::from_serialize(&5).is_err());
        assert!(TableRow::from_serialize(&"x").is_err());
        assert!(TableRow::from_json_bytes(&b"[1]"[..]).is_err());
        assert!(TableRow::from_json_bytes(&b"{\"a\":1"[..]).is_err());
        assert!(TableRow::from_json_bytes(&b"{\"a\":1} x"[..]).is_err());
        let r = TableRow::from_json_bytes(&b" {\"a\":[1,{\"b\":null}]}"[..]).unwrap();
        assert_eq!(r.table(), None);
        assert_eq!(r.insert_id(), None);
        let mut m = serde_json::Map::new();
        m.insert("k".into(), serde_json::json!("v"));
        assert_eq!(
            TableRow::from_serialize(&m).unwrap().json(),
            br#"{"k":"v"}"#
        );
    }
}
