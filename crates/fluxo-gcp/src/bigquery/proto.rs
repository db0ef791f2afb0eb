//! Protobuf rows for the Storage Write API, built from the table's own schema.
//!
//! The Storage Write API takes rows as serialized protocol buffers plus a `DescriptorProto` that
//! describes them. Google's clients build rows from generated message types (known at build time) or
//! from dynamic messages; a sink that learns its tables' schemas at run time needs neither: rows are
//! flat messages of scalar fields, so [`WriterSchema`] derives the descriptor from the table (field
//! `i` of the table is proto field `i + 1`) and [`RowEncoder`] writes the wire format directly into one
//! reusable buffer. Hand-written because no maintained crate builds rows from a BigQuery schema without
//! a generated type; the wire format used here is four encodings (varint, 64-bit, length-delimited,
//! tags), covered by tests that decode with `prost`.
//!
//! Column handles are typed: `schema.column::<Int64>("nfe_id")` fails at start-up when the table has no
//! such column or a column of another type, and the encoder's methods only take the handle of their
//! type, so a row can never carry a value the column cannot hold.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde_json::Value;

use super::client::BigQueryError;
use super::row::TableRow;

/// BigQuery column types and the proto type each is written as (Storage Write API conversions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `INTEGER` / `INT64`: `int64`.
    Int64,
    /// `FLOAT` / `FLOAT64`: `double`.
    Float64,
    /// `BOOLEAN` / `BOOL`: `bool`.
    Bool,
    /// `STRING`: `string`.
    String,
    /// `BYTES`: `bytes`.
    Bytes,
    /// `NUMERIC`: `string` holding the exact decimal text (at most 29 integer and 9 fractional digits).
    Numeric,
    /// `BIGNUMERIC`: `string` holding the exact decimal text.
    BigNumeric,
    /// `TIMESTAMP`: `int64` microseconds since the Unix epoch.
    Timestamp,
    /// `DATE`: `int32` days since 1970-01-01.
    Date,
    /// `DATETIME`: `string` (`YYYY-MM-DD HH:MM:SS[.ffffff]`).
    Datetime,
    /// `TIME`: `string` (`HH:MM:SS[.ffffff]`).
    Time,
    /// `JSON`: `string` holding JSON text.
    Json,
    /// `GEOGRAPHY`: `string` holding WKT or GeoJSON.
    Geography,
}

impl ColumnType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "INTEGER" | "INT64" => ColumnType::Int64,
            "FLOAT" | "FLOAT64" => ColumnType::Float64,
            "BOOLEAN" | "BOOL" => ColumnType::Bool,
            "STRING" => ColumnType::String,
            "BYTES" => ColumnType::Bytes,
            "NUMERIC" => ColumnType::Numeric,
            "BIGNUMERIC" => ColumnType::BigNumeric,
            "TIMESTAMP" => ColumnType::Timestamp,
            "DATE" => ColumnType::Date,
            "DATETIME" => ColumnType::Datetime,
            "TIME" => ColumnType::Time,
            "JSON" => ColumnType::Json,
            "GEOGRAPHY" => ColumnType::Geography,
            _ => return None,
        })
    }

    fn proto_type(self) -> Type {
        match self {
            ColumnType::Int64 | ColumnType::Timestamp => Type::Int64,
            ColumnType::Float64 => Type::Double,
            ColumnType::Bool => Type::Bool,
            ColumnType::Bytes => Type::Bytes,
            ColumnType::Date => Type::Int32,
            ColumnType::String
            | ColumnType::Numeric
            | ColumnType::BigNumeric
            | ColumnType::Datetime
            | ColumnType::Time
            | ColumnType::Json
            | ColumnType::Geography => Type::String,
        }
    }
}

/// What a typed column handle accepts. Implemented by the marker types [`Int64`], [`Float64`],
/// [`Bool`], [`Text`], [`Binary`], [`Timestamp`] and [`Date`].
pub trait Kind: Copy {
    /// Wire type of the values.
    const WIRE: u8;
    /// Name used in error messages.
    const NAME: &'static str;
    /// Whether a column of type `t` takes values of this kind.
    fn accepts(t: ColumnType) -> bool;
}

macro_rules! kind {
    ($(#[$doc:meta])* $name:ident, $wire:expr, $label:expr, $($t:ident)|+) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name;
        impl Kind for $name {
            const WIRE: u8 = $wire;
            const NAME: &'static str = $label;
            fn accepts(t: ColumnType) -> bool {
                matches!(t, $(ColumnType::$t)|+)
            }
        }
    };
}

kind!(
    /// `INTEGER` columns.
    Int64, 0, "INTEGER", Int64
);
kind!(
    /// `FLOAT` columns.
    Float64, 1, "FLOAT", Float64
);
kind!(
    /// `BOOLEAN` columns.
    Bool, 0, "BOOLEAN", Bool
);
kind!(
    /// Columns written as text: `STRING`, `NUMERIC`, `BIGNUMERIC`, `DATETIME`, `TIME`, `JSON`,
    /// `GEOGRAPHY`.
    Text, 2, "STRING, NUMERIC, BIGNUMERIC, DATETIME, TIME, JSON or GEOGRAPHY",
    String | Numeric | BigNumeric | Datetime | Time | Json | Geography
);
kind!(
    /// `BYTES` columns.
    Binary, 2, "BYTES", Bytes
);
kind!(
    /// `TIMESTAMP` columns (microseconds since the epoch).
    Timestamp, 0, "TIMESTAMP", Timestamp
);
kind!(
    /// `DATE` columns (days since 1970-01-01).
    Date, 0, "DATE", Date
);

/// A column of a [`WriterSchema`], typed by what it accepts. Copy it into the closure that builds rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column<K: Kind> {
    /// The field's tag, already shifted with its wire type.
    key: u32,
    /// Index of the table in the sink.
    table: u16,
    _kind: PhantomData<K>,
}

/// One column of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaColumn {
    /// Column name.
    pub name: String,
    /// Type.
    pub column_type: ColumnType,
    /// `REQUIRED` mode.
    pub required: bool,
    /// `REPEATED` mode (each value is written as one more occurrence of the field).
    pub repeated: bool,
}

/// The row layout of one table: its columns and the protobuf descriptor sent with the first append of
/// every connection.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterSchema {
    table: Arc<str>,
    index: u16,
    columns: Vec<SchemaColumn>,
    descriptor: DescriptorProto,
}

fn is_proto_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl WriterSchema {
    /// The layout of `table` (the sink's table number `index`) from its schema's `fields` array, as
    /// `tables.get` returns it or as a `bq` schema file holds it.
    pub fn from_fields(table: &str, index: u16, fields: &Value) -> Result<Self, BigQueryError> {
        let invalid = |what: String| BigQueryError::Invalid(format!("table '{table}': {what}"));
        let list = fields
            .as_array()
            .ok_or_else(|| invalid("the schema's fields are not a list".into()))?;
        if list.is_empty() {
            return Err(invalid("the schema has no columns".into()));
        }
        let mut columns = Vec::with_capacity(list.len());
        let mut descriptor = DescriptorProto {
            name: Some("Row".into()),
            ..DescriptorProto::default()
        };
        for (i, f) in list.iter().enumerate() {
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            if !is_proto_identifier(name) {
                return Err(invalid(format!(
                    "column '{name}' is not a plain identifier (letters, digits, '_'); proto rows cannot name it"
                )));
            }
            let type_name = f.get("type").and_then(Value::as_str).unwrap_or_default();
            let column_type = ColumnType::parse(&type_name.to_ascii_uppercase()).ok_or_else(|| {
                invalid(format!(
                    "column '{name}' has type '{type_name}', which this sink does not write (RECORD/STRUCT, RANGE and INTERVAL columns are not supported)"
                ))
            })?;
            let mode = f
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("NULLABLE")
                .to_ascii_uppercase();
            let repeated = mode == "REPEATED";
            let number = i32::try_from(i + 1).map_err(|_| invalid("too many columns".into()))?;
            descriptor.field.push(FieldDescriptorProto {
                name: Some(name.to_string()),
                number: Some(number),
                label: Some(if repeated {
                    Label::Repeated
                } else {
                    Label::Optional
                } as i32),
                r#type: Some(column_type.proto_type() as i32),
                ..FieldDescriptorProto::default()
            });
            columns.push(SchemaColumn {
                name: name.to_string(),
                column_type,
                required: mode == "REQUIRED",
                repeated,
            });
        }
        Ok(WriterSchema {
            table: Arc::from(table),
            index,
            columns,
            descriptor,
        })
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The table's number in its sink.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The columns, in table order.
    pub fn columns(&self) -> &[SchemaColumn] {
        &self.columns
    }

    /// The descriptor of the rows (message `Row`, field `i + 1` for column `i`).
    pub fn descriptor(&self) -> &DescriptorProto {
        &self.descriptor
    }

    /// The handle of column `name` (matched case-insensitively, as BigQuery does), checked against what
    /// `K` writes.
    pub fn column<K: Kind>(&self, name: &str) -> Result<Column<K>, BigQueryError> {
        let (i, c) = self
            .columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                BigQueryError::Invalid(format!("table '{}' has no column '{name}'", self.table))
            })?;
        if !K::accepts(c.column_type) {
            return Err(BigQueryError::Invalid(format!(
                "column '{}.{}' is {:?}, not {}",
                self.table,
                c.name,
                c.column_type,
                K::NAME
            )));
        }
        Ok(Column {
            key: ((i as u32 + 1) << 3) | u32::from(K::WIRE),
            table: self.index,
            _kind: PhantomData,
        })
    }

    /// An encoder for rows of this table.
    pub fn encoder(&self) -> RowEncoder {
        RowEncoder {
            table: self.index,
            buf: Vec::with_capacity(256),
        }
    }
}

/// Writes one row at a time in the protobuf wire format. Absent columns are NULL.
///
/// ```
/// use fluxo_gcp::bigquery::{proto, WriterSchema};
/// let fields = serde_json::json!([{"name": "id", "type": "INTEGER"}, {"name": "amount", "type": "NUMERIC"}]);
/// let schema = WriterSchema::from_fields("sales", 0, &fields).unwrap();
/// let id = schema.column::<proto::Int64>("id").unwrap();
/// let amount = schema.column::<proto::Text>("amount").unwrap();
/// let mut enc = schema.encoder();
/// enc.int64(id, 7);
/// enc.text(amount, "19.90");
/// let row = enc.finish();
/// assert_eq!(row.data(), &[0x08, 7, 0x12, 5, b'1', b'9', b'.', b'9', b'0'][..]);
/// ```
#[derive(Debug)]
pub struct RowEncoder {
    table: u16,
    buf: Vec<u8>,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl RowEncoder {
    #[inline]
    fn key<K: Kind>(&mut self, c: Column<K>) {
        debug_assert_eq!(c.table, self.table, "a column of another table");
        put_varint(&mut self.buf, u64::from(c.key));
    }

    /// An `INTEGER` value.
    pub fn int64(&mut self, c: Column<Int64>, v: i64) {
        self.key(c);
        put_varint(&mut self.buf, v as u64);
    }

    /// A `FLOAT` value.
    pub fn float64(&mut self, c: Column<Float64>, v: f64) {
        self.key(c);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `BOOLEAN` value.
    pub fn bool(&mut self, c: Column<Bool>, v: bool) {
        self.key(c);
        self.buf.push(u8::from(v));
    }

    /// A `TIMESTAMP` value, in microseconds since the epoch.
    pub fn timestamp_micros(&mut self, c: Column<Timestamp>, micros: i64) {
        self.key(c);
        put_varint(&mut self.buf, micros as u64);
    }

    /// A `DATE` value, in days since 1970-01-01 (negative before).
    pub fn date_days(&mut self, c: Column<Date>, days: i32) {
        self.key(c);
        // int32 fields are sign-extended to 64 bits on the wire.
        put_varint(&mut self.buf, i64::from(days) as u64);
    }

    /// A text value (`STRING`, `NUMERIC` decimal text, `JSON`, ...).
    pub fn text(&mut self, c: Column<Text>, v: &str) {
        self.key(c);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// A text value written by `Display` straight into the row (no intermediate `String`).
    pub fn text_display(&mut self, c: Column<Text>, v: impl std::fmt::Display) {
        self.key(c);
        // Reserve one length byte (texts under 128 bytes, the usual case); widen it afterwards if needed.
        let at = self.buf.len();
        self.buf.push(0);
        let mut w = VecWriter(&mut self.buf);
        // Writing to a Vec cannot fail.
        let _ = write!(w, "{v}");
        let len = self.buf.len() - at - 1;
        if len < 0x80 {
            self.buf[at] = len as u8;
        } else {
            let mut prefix = Vec::with_capacity(10);
            put_varint(&mut prefix, len as u64);
            self.buf.splice(at..at + 1, prefix);
        }
    }

    /// A `BYTES` value.
    pub fn bytes(&mut self, c: Column<Binary>, v: &[u8]) {
        self.key(c);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// The row written so far; the encoder starts a new, empty row (its buffer's capacity is kept).
    pub fn finish(&mut self) -> TableRow {
        let data = Bytes::copy_from_slice(&self.buf);
        self.buf.clear();
        TableRow::from_parts(self.table, data)
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Decoded {
        #[prost(int64, optional, tag = "1")]
        id: Option<i64>,
        #[prost(string, optional, tag = "2")]
        name: Option<String>,
        #[prost(int64, optional, tag = "3")]
        at: Option<i64>,
        #[prost(int32, optional, tag = "4")]
        day: Option<i32>,
        #[prost(double, optional, tag = "5")]
        score: Option<f64>,
        #[prost(bool, optional, tag = "6")]
        ok: Option<bool>,
        #[prost(bytes = "vec", optional, tag = "7")]
        blob: Option<Vec<u8>>,
        #[prost(string, repeated, tag = "8")]
        tags: Vec<String>,
    }

    fn schema() -> WriterSchema {
        let fields = serde_json::json!([
            {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "name", "type": "STRING"},
            {"name": "at", "type": "TIMESTAMP"},
            {"name": "day", "type": "DATE"},
            {"name": "score", "type": "FLOAT64"},
            {"name": "ok", "type": "BOOL"},
            {"name": "blob", "type": "BYTES"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"}
        ]);
        WriterSchema::from_fields("t", 3, &fields).unwrap()
    }

    #[test]
    fn rows_decode_with_prost() {
        let s = schema();
        let long = "x".repeat(300);
        for (id, name, at, day) in [
            (i64::MIN, "", i64::MIN, i32::MIN),
            (i64::MAX, "ação", i64::MAX, i32::MAX),
            (-1, long.as_str(), -1, -1),
            (0, "a", 0, 0),
        ] {
            let mut e = s.encoder();
            e.int64(s.column("id").unwrap(), id);
            e.text(s.column("name").unwrap(), name);
            e.timestamp_micros(s.column("at").unwrap(), at);
            e.date_days(s.column("day").unwrap(), day);
            e.float64(s.column("score").unwrap(), -0.5);
            e.bool(s.column("ok").unwrap(), true);
            e.bytes(s.column("blob").unwrap(), &[0, 255]);
            let tags = s.column::<Text>("tags").unwrap();
            e.text(tags, "a");
            e.text_display(tags, format_args!("{}-{}", long, id));
            let row = e.finish();
            assert_eq!(row.table_index(), 3);
            let d = Decoded::decode(row.data()).unwrap();
            assert_eq!(d.id, Some(id));
            assert_eq!(d.name.as_deref(), Some(name));
            assert_eq!(d.at, Some(at));
            assert_eq!(d.day, Some(day));
            assert_eq!(d.score, Some(-0.5));
            assert_eq!(d.ok, Some(true));
            assert_eq!(d.blob.as_deref(), Some(&[0u8, 255][..]));
            assert_eq!(d.tags, vec!["a".to_string(), format!("{long}-{id}")]);
        }
        // Absent columns stay absent (NULL); the encoder is empty after finish.
        let mut e = s.encoder();
        e.int64(s.column("id").unwrap(), 5);
        let first = e.finish();
        let d = Decoded::decode(first.data()).unwrap();
        assert_eq!((d.id, d.name), (Some(5), None));
        assert!(e.finish().data().is_empty());
    }

    #[test]
    fn descriptor_matches_the_table() {
        let s = schema();
        let d = s.descriptor();
        assert_eq!(d.name.as_deref(), Some("Row"));
        let shape: Vec<(String, i32, i32, i32)> = d
            .field
            .iter()
            .map(|f| {
                (
                    f.name.clone().unwrap(),
                    f.number.unwrap(),
                    f.label.unwrap(),
                    f.r#type.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            shape[0],
            ("id".into(), 1, Label::Optional as i32, Type::Int64 as i32)
        );
        assert_eq!(
            shape[3],
            ("day".into(), 4, Label::Optional as i32, Type::Int32 as i32)
        );
        assert_eq!(
            shape[7],
            (
                "tags".into(),
                8,
                Label::Repeated as i32,
                Type::String as i32
            )
        );
        assert!(s.columns()[0].required);
    }

    #[test]
    fn one_line_errors() {
        let s = schema();
        let e = s.column::<Int64>("nope").unwrap_err().to_string();
        assert_eq!(e, "table 't' has no column 'nope'");
        let e = s.column::<Int64>("name").unwrap_err().to_string();
        assert_eq!(e, "column 't.name' is String, not INTEGER");
        assert!(s.column::<Int64>("ID").is_ok());
        let bad = |fields: Value| {
            WriterSchema::from_fields("t", 0, &fields)
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(serde_json::json!([{"name": "r", "type": "RECORD", "fields": []}]))
                .contains("RECORD/STRUCT")
        );
        assert!(bad(serde_json::json!([{"name": "a b", "type": "STRING"}]))
            .contains("not a plain identifier"));
        assert!(bad(serde_json::json!([])).contains("no columns"));
    }
}
