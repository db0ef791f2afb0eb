//! Parquet files through the `parquet` crate's low-level column writer (no Arrow): the user gives the
//! schema in Parquet's message-type syntax and a function that writes one element's columns in schema
//! order; the format buffers the batch column by column and writes one row group per object.

use std::sync::Arc;

use parquet::basic::{
    Compression as ParquetCodec, ConvertedType, Repetition, Type as PhysicalType,
};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::{WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{Type, TypePtr};

use super::config::FormatKind;
use super::format::{EncodeError, Format};
use crate::error::ConfigError;

/// One column value handed to [`RowWriter::push`]. `Option<X>` converts too (`None` is a null).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A null (the column must be `optional`).
    Null,
    /// `BOOLEAN`.
    Bool(bool),
    /// `INT32` (also accepted by `INT64` columns).
    I32(i32),
    /// `INT64`; for a `TIMESTAMP(MICROS, ...)` column, microseconds since the epoch; for a `DECIMAL`
    /// column, the unscaled value.
    I64(i64),
    /// `FLOAT`.
    F32(f32),
    /// `DOUBLE` (also accepted: `F32`).
    F64(f64),
    /// `BYTE_ARRAY` (`STRING`).
    Str(&'a str),
    /// `BYTE_ARRAY` or `FIXED_LEN_BYTE_ARRAY` (of the exact length).
    Bytes(&'a [u8]),
    /// An exact decimal in text (`-123.45`) for a `DECIMAL` column (`INT32`, `INT64` or
    /// `FIXED_LEN_BYTE_ARRAY`): scaled exactly by the column's scale, never through floating point;
    /// more fractional digits than the scale, or a value that does not fit, is an error. A `STRING`
    /// column stores the text as is.
    Decimal(&'a str),
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<$t> for Value<'a> {
            fn from(x: $t) -> Self { Value::$v(x) }
        }
    )*};
}
value_from!(bool => Bool, i32 => I32, i64 => I64, f32 => F32, f64 => F64, &'a str => Str, &'a [u8] => Bytes);

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Value::Str(s)
    }
}

impl<'a> From<fluxo::Timestamp> for Value<'a> {
    fn from(t: fluxo::Timestamp) -> Self {
        Value::I64(t.micros())
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

enum Buf {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::Bool(v) => v.len(),
            Buf::I32(v) => v.len(),
            Buf::I64(v) => v.len(),
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
            Buf::Bytes(v) => v.len(),
            Buf::Fixed(v) => v.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Buf::Bool(v) => v.truncate(n),
            Buf::I32(v) => v.truncate(n),
            Buf::I64(v) => v.truncate(n),
            Buf::F32(v) => v.truncate(n),
            Buf::F64(v) => v.truncate(n),
            Buf::Bytes(v) => v.truncate(n),
            Buf::Fixed(v) => v.truncate(n),
        }
    }
}

#[derive(Debug, Clone)]
struct ColumnSpec {
    name: String,
    physical: PhysicalType,
    optional: bool,
    /// Scale of a DECIMAL column.
    decimal_scale: Option<u32>,
    /// Length of a FIXED_LEN_BYTE_ARRAY column.
    fixed_len: usize,
}

struct Column {
    spec: ColumnSpec,
    values: Buf,
    defs: Vec<i16>,
}

/// Receives one element's column values, in schema order. Returned errors reject the element.
pub struct RowWriter<'a> {
    columns: &'a mut [Column],
    next: usize,
}

impl RowWriter<'_> {
    /// Appends the value of the next column.
    pub fn push<'v>(&mut self, value: impl Into<Value<'v>>) -> Result<&mut Self, String> {
        let value = value.into();
        let Some(col) = self.columns.get_mut(self.next) else {
            return Err(format!(
                "more values than the {} columns of the schema",
                self.columns.len()
            ));
        };
        self.next += 1;
        push_value(col, value)?;
        Ok(self)
    }

    /// Appends a null to the next column (which must be optional).
    pub fn null(&mut self) -> Result<&mut Self, String> {
        self.push(Value::Null)
    }
}

fn push_value(col: &mut Column, value: Value<'_>) -> Result<(), String> {
    let spec = &col.spec;
    let mismatch = |v: &Value<'_>| {
        format!(
            "column '{}' ({:?}{}) cannot take {v:?}",
            spec.name,
            spec.physical,
            if spec.decimal_scale.is_some() {
                " DECIMAL"
            } else {
                ""
            }
        )
    };
    if let Value::Null = value {
        if !spec.optional {
            return Err(format!("column '{}' is required and got a null", spec.name));
        }
        col.defs.push(0);
        return Ok(());
    }
    match (&mut col.values, value) {
        (Buf::Bool(v), Value::Bool(x)) => v.push(x),
        (Buf::I32(v), Value::I32(x)) if spec.decimal_scale.is_none() => v.push(x),
        (Buf::I32(v), Value::Decimal(s)) if spec.decimal_scale.is_some() => {
            let u = parse_decimal(s, spec.decimal_scale.unwrap_or(0))
                .map_err(|e| format!("column '{}': {e}", spec.name))?;
            v.push(
                i32::try_from(u)
                    .map_err(|_| format!("column '{}': {s} does not fit INT32", spec.name))?,
            );
        }
        (Buf::I32(v), Value::I32(x)) => v.push(x),
        (Buf::I64(v), Value::I64(x)) => v.push(x),
        (Buf::I64(v), Value::I32(x)) => v.push(i64::from(x)),
        (Buf::I64(v), Value::Decimal(s)) if spec.decimal_scale.is_some() => {
            let u = parse_decimal(s, spec.decimal_scale.unwrap_or(0))
                .map_err(|e| format!("column '{}': {e}", spec.name))?;
            v.push(
                i64::try_from(u)
                    .map_err(|_| format!("column '{}': {s} does not fit INT64", spec.name))?,
            );
        }
        (Buf::F32(v), Value::F32(x)) => v.push(x),
        (Buf::F64(v), Value::F64(x)) => v.push(x),
        (Buf::F64(v), Value::F32(x)) => v.push(f64::from(x)),
        (Buf::Bytes(v), Value::Str(s)) | (Buf::Bytes(v), Value::Decimal(s))
            if spec.decimal_scale.is_none() =>
        {
            v.push(ByteArray::from(s.as_bytes().to_vec()))
        }
        (Buf::Bytes(v), Value::Bytes(b)) => v.push(ByteArray::from(b.to_vec())),
        (Buf::Fixed(v), Value::Bytes(b)) if b.len() == spec.fixed_len => {
            v.push(FixedLenByteArray::from(b.to_vec()))
        }
        (Buf::Fixed(v), Value::Decimal(s)) if spec.decimal_scale.is_some() => {
            let u = parse_decimal(s, spec.decimal_scale.unwrap_or(0))
                .map_err(|e| format!("column '{}': {e}", spec.name))?;
            let be = u.to_be_bytes();
            let n = spec.fixed_len.min(16);
            let (head, tail) = be.split_at(16 - n);
            let sign = if u < 0 { 0xff } else { 0 };
            // The dropped bytes must be pure sign extension, and the kept sign bit must agree.
            if head.iter().any(|&b| b != sign)
                || (tail.first().is_some_and(|&b| (b & 0x80 != 0) != (u < 0)))
            {
                return Err(format!(
                    "column '{}': {s} does not fit {} bytes",
                    spec.name, spec.fixed_len
                ));
            }
            let mut bytes = vec![sign; spec.fixed_len - n];
            bytes.extend_from_slice(tail);
            v.push(FixedLenByteArray::from(bytes))
        }
        (_, v) => return Err(mismatch(&v)),
    }
    if spec.optional {
        col.defs.push(1);
    }
    Ok(())
}

/// Parses an exact decimal (`-12.5`, `3`, `0.07`) into its unscaled integer at `scale` (`-12.5` at scale
/// 2 is `-1250`). More fractional digits than `scale` is an error (no rounding).
pub fn parse_decimal(s: &str, scale: u32) -> Result<i128, String> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("'{s}' is not a decimal number"));
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(format!("'{s}' has more than {scale} decimal places"));
    }
    let mut u: i128 = 0;
    let overflow = || format!("'{s}' is too large");
    for b in int.bytes() {
        u = u
            .checked_mul(10)
            .and_then(|u| u.checked_add(i128::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    for i in 0..scale as usize {
        let d = frac_trimmed.as_bytes().get(i).map_or(0, |b| b - b'0');
        u = u
            .checked_mul(10)
            .and_then(|u| u.checked_add(i128::from(d)))
            .ok_or_else(overflow)?;
    }
    Ok(if neg { -u } else { u })
}

type FillFn<T> = dyn Fn(&T, &mut RowWriter<'_>) -> Result<(), String> + Send + Sync;

/// Parquet through a schema and a row function: for every element, `fill` pushes one value per column in
/// schema order (flat schemas of `required`/`optional` primitive columns). An element whose row fails
/// (wrong type, missing value, a decimal that does not fit) is rejected alone; its partial row is rolled
/// back. Snappy compression by default.
///
/// ```
/// use fluxo_gcp::storage::ParquetFormat;
/// struct Item { id: i64, name: String, price: String, at_micros: i64, note: Option<String> }
/// let format = ParquetFormat::new(
///     "message item {
///         required int64 id;
///         required binary name (STRING);
///         required int64 price (DECIMAL(18,2));
///         required int64 at (TIMESTAMP(MICROS,true));
///         optional binary note (STRING);
///     }",
///     |i: &Item, row| {
///         row.push(i.id)?.push(&i.name)?.push(fluxo_gcp::storage::Value::Decimal(&i.price))?
///             .push(i.at_micros)?.push(i.note.as_ref())?;
///         Ok(())
///     },
/// ).unwrap();
/// # let _ = format;
/// ```
pub struct ParquetFormat<T> {
    schema: TypePtr,
    props: WriterPropertiesPtr,
    specs: Vec<ColumnSpec>,
    fill: Arc<FillFn<T>>,
}

impl<T> ParquetFormat<T> {
    /// Parses `message_type` (Parquet schema syntax) and checks that it is flat.
    pub fn new(
        message_type: &str,
        fill: impl Fn(&T, &mut RowWriter<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        let schema = parse_message_type(message_type)
            .map_err(|e| ConfigError::invalid("parquet schema", e.to_string()))?;
        let mut specs = Vec::new();
        for field in schema.get_fields() {
            let Type::PrimitiveType {
                basic_info,
                physical_type,
                type_length,
                scale,
                ..
            } = field.as_ref()
            else {
                return Err(ConfigError::invalid(
                    "parquet schema",
                    format!(
                        "column '{}' is a group: only flat schemas are supported",
                        field.name()
                    ),
                ));
            };
            let optional = match basic_info.repetition() {
                Repetition::REQUIRED => false,
                Repetition::OPTIONAL => true,
                Repetition::REPEATED => {
                    return Err(ConfigError::invalid(
                        "parquet schema",
                        format!(
                            "column '{}' is repeated: only flat schemas are supported",
                            field.name()
                        ),
                    ))
                }
            };
            if *physical_type == PhysicalType::INT96 {
                return Err(ConfigError::invalid(
                    "parquet schema",
                    format!(
                        "column '{}': INT96 is deprecated, use INT64 TIMESTAMP(MICROS,true)",
                        field.name()
                    ),
                ));
            }
            specs.push(ColumnSpec {
                name: field.name().to_string(),
                physical: *physical_type,
                optional,
                decimal_scale: (basic_info.converted_type() == ConvertedType::DECIMAL)
                    .then(|| u32::try_from(*scale).unwrap_or(0)),
                fixed_len: usize::try_from(*type_length).unwrap_or(0),
            });
        }
        if specs.is_empty() {
            return Err(ConfigError::invalid("parquet schema", "has no columns"));
        }
        let props = WriterProperties::builder()
            .set_compression(ParquetCodec::SNAPPY)
            .build();
        Ok(ParquetFormat {
            schema: Arc::new(schema),
            props: Arc::new(props),
            specs,
            fill: Arc::new(fill),
        })
    }

    /// Replaces the writer properties (compression, page sizes, statistics, ...).
    pub fn with_properties(mut self, props: WriterProperties) -> Self {
        self.props = Arc::new(props);
        self
    }

    /// The parsed schema.
    pub fn schema(&self) -> &TypePtr {
        &self.schema
    }

    fn write_file(&self, columns: &[Column], out: &mut Vec<u8>) -> parquet::errors::Result<()> {
        let mut writer =
            SerializedFileWriter::new(out, Arc::clone(&self.schema), Arc::clone(&self.props))?;
        let mut rg = writer.next_row_group()?;
        let mut i = 0;
        while let Some(mut cw) = rg.next_column()? {
            let Some(col) = columns.get(i) else {
                return Err(parquet::errors::ParquetError::General(
                    "column count mismatch".into(),
                ));
            };
            let defs = col.spec.optional.then_some(col.defs.as_slice());
            match &col.values {
                Buf::Bool(v) => cw.typed::<BoolType>().write_batch(v, defs, None)?,
                Buf::I32(v) => cw.typed::<Int32Type>().write_batch(v, defs, None)?,
                Buf::I64(v) => cw.typed::<Int64Type>().write_batch(v, defs, None)?,
                Buf::F32(v) => cw.typed::<FloatType>().write_batch(v, defs, None)?,
                Buf::F64(v) => cw.typed::<DoubleType>().write_batch(v, defs, None)?,
                Buf::Bytes(v) => cw.typed::<ByteArrayType>().write_batch(v, defs, None)?,
                Buf::Fixed(v) => cw
                    .typed::<FixedLenByteArrayType>()
                    .write_batch(v, defs, None)?,
            };
            cw.close()?;
            i += 1;
        }
        rg.close()?;
        writer.close()?;
        Ok(())
    }
}

impl<T: 'static> Format<T> for ParquetFormat<T> {
    fn kind(&self) -> FormatKind {
        FormatKind::Parquet
    }

    fn encode(&self, values: &[&T], out: &mut Vec<u8>, rejected: &mut Vec<(usize, EncodeError)>) {
        let mut columns: Vec<Column> = self
            .specs
            .iter()
            .map(|s| Column {
                values: match s.physical {
                    PhysicalType::BOOLEAN => Buf::Bool(Vec::with_capacity(values.len())),
                    PhysicalType::INT32 => Buf::I32(Vec::with_capacity(values.len())),
                    PhysicalType::FLOAT => Buf::F32(Vec::with_capacity(values.len())),
                    PhysicalType::DOUBLE => Buf::F64(Vec::with_capacity(values.len())),
                    PhysicalType::BYTE_ARRAY => Buf::Bytes(Vec::with_capacity(values.len())),
                    PhysicalType::FIXED_LEN_BYTE_ARRAY => {
                        Buf::Fixed(Vec::with_capacity(values.len()))
                    }
                    _ => Buf::I64(Vec::with_capacity(values.len())),
                },
                defs: Vec::with_capacity(if s.optional { values.len() } else { 0 }),
                spec: s.clone(),
            })
            .collect();
        let mut marks = vec![(0usize, 0usize); columns.len()];
        let mut rows = 0usize;
        for (i, v) in values.iter().enumerate() {
            for (m, c) in marks.iter_mut().zip(&columns) {
                *m = (c.values.len(), c.defs.len());
            }
            let mut row = RowWriter {
                columns: &mut columns,
                next: 0,
            };
            let result = (self.fill)(v, &mut row).and_then(|()| {
                if row.next == row.columns.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "row has {} values for {} columns",
                        row.next,
                        row.columns.len()
                    ))
                }
            });
            match result {
                Ok(()) => rows += 1,
                Err(e) => {
                    for ((vals, defs), c) in marks.iter().zip(columns.iter_mut()) {
                        c.values.truncate(*vals);
                        c.defs.truncate(*defs);
                    }
                    rejected.push((i, EncodeError(e)));
                }
            }
        }
        if rows == 0 {
            return;
        }
        let start = out.len();
        if let Err(e) = self.write_file(&columns, out) {
            out.truncate(start);
            // A failure of the writer itself: every element of the file is refused.
            let already: std::collections::HashSet<usize> =
                rejected.iter().map(|(i, _)| *i).collect();
            for i in 0..values.len() {
                if !already.contains(&i) {
                    rejected.push((i, EncodeError(format!("Parquet writer failed: {e}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("35.55", 2), Ok(3555));
        assert_eq!(parse_decimal("-0.07", 2), Ok(-7));
        assert_eq!(parse_decimal("2", 3), Ok(2000));
        assert_eq!(parse_decimal("1.50", 1), Ok(15));
        assert!(parse_decimal("1.234", 2).is_err());
        assert!(parse_decimal("abc", 2).is_err());
        assert!(parse_decimal("", 2).is_err());
        assert!(parse_decimal("99999999999999999999999999999999999999999", 2).is_err());
    }

    #[test]
    fn bad_rows_are_rejected_alone() {
        let f = ParquetFormat::new(
            "message m { required int64 a; optional binary s (STRING); }",
            |v: &(i64, Option<String>), row| {
                if v.0 < 0 {
                    row.push(v.0)?;
                    return Err("negative".into());
                }
                row.push(v.0)?.push(v.1.as_ref())?;
                Ok(())
            },
        )
        .unwrap();
        let values = [(1, Some("x".to_string())), (-1, None), (2, None)];
        let refs: Vec<_> = values.iter().collect();
        let mut out = Vec::new();
        let mut rej = Vec::new();
        f.encode(&refs, &mut out, &mut rej);
        assert_eq!(rej.len(), 1);
        assert_eq!(rej[0].0, 1);
        assert_eq!(&out[..4], b"PAR1");
        assert!(
            ParquetFormat::<i64>::new("message m { repeated int64 a; }", |_, _| Ok(())).is_err()
        );
    }
}
