//! File formats of the sink (encoding a group of elements into one object) and record framing of the
//! source (splitting an object back into records).

use std::io::{Read, Write};
use std::marker::PhantomData;

use bytes::Bytes;
use serde::Serialize;

use super::config::FormatKind;

/// An element that could not be encoded; it is rejected (permanent failure for that element only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encodes the elements of one object. Implementations for newline-delimited JSON ([`Ndjson`]), byte
/// lines ([`Lines`]), length-framed raw records ([`RawRecords`]), one raw object per element
/// ([`RawObject`]) and Parquet ([`super::ParquetFormat`]); [`PerValue`] turns a format of `T` into a
/// format of `Vec<T>` with one object per value (for values that are whole files, such as window panes).
pub trait Format<T>: Send + Sync + 'static {
    /// The layout, checked against the configuration's `format`.
    fn kind(&self) -> FormatKind;

    /// The file extension without compression suffix. Default: the kind's (`ndjson`, `records`, `bin`,
    /// `parquet`).
    fn extension(&self) -> &str {
        self.kind().extension()
    }

    /// The object's content type.
    fn content_type(&self) -> &'static str {
        match self.kind() {
            FormatKind::Ndjson => "application/x-ndjson",
            _ => "application/octet-stream",
        }
    }

    /// Whether every element is an object of its own (else one object per window and pane of a batch).
    fn object_per_element(&self) -> bool {
        self.kind() == FormatKind::RawObject
    }

    /// Appends the encoding of `values` to `out`. Elements that cannot be encoded are left out and
    /// reported in `rejected` with their index in `values`.
    fn encode(&self, values: &[&T], out: &mut Vec<u8>, rejected: &mut Vec<(usize, EncodeError)>);
}

/// Newline-delimited JSON of values that serialize with serde: one compact JSON value and `\n` per
/// element (compact JSON never contains a raw newline).
pub struct Ndjson<T>(PhantomData<fn(&T)>);

impl<T> Default for Ndjson<T> {
    fn default() -> Self {
        Ndjson(PhantomData)
    }
}

impl<T: Serialize + 'static> Format<T> for Ndjson<T> {
    fn kind(&self) -> FormatKind {
        FormatKind::Ndjson
    }

    fn encode(&self, values: &[&T], out: &mut Vec<u8>, rejected: &mut Vec<(usize, EncodeError)>) {
        for (i, v) in values.iter().enumerate() {
            let start = out.len();
            match serde_json::to_writer(&mut *out, v) {
                Ok(()) => out.push(b'\n'),
                Err(e) => {
                    out.truncate(start);
                    rejected.push((i, EncodeError(format!("JSON serialization failed: {e}"))));
                }
            }
        }
    }
}

/// Byte values written as lines: the exact bytes plus `\n`. A value containing `\n` cannot be framed
/// as a line and is rejected (use [`RawRecords`] for arbitrary bytes).
pub struct Lines<T>(PhantomData<fn(&T)>);

impl<T> Default for Lines<T> {
    fn default() -> Self {
        Lines(PhantomData)
    }
}

impl<T: AsRef<[u8]> + 'static> Format<T> for Lines<T> {
    fn kind(&self) -> FormatKind {
        FormatKind::Ndjson
    }

    fn encode(&self, values: &[&T], out: &mut Vec<u8>, rejected: &mut Vec<(usize, EncodeError)>) {
        out.reserve(values.iter().map(|v| v.as_ref().len() + 1).sum());
        for (i, v) in values.iter().enumerate() {
            let b = v.as_ref();
            if b.contains(&b'\n') {
                rejected.push((
                    i,
                    EncodeError("value contains a newline and cannot be a line".into()),
                ));
                continue;
            }
            out.extend_from_slice(b);
            out.push(b'\n');
        }
    }
}

/// The largest record [`RawRecords`] frames (its length must fit 4 bytes).
pub const MAX_RECORD: usize = u32::MAX as usize;

/// Exact bytes of each element, each preceded by its length as a 4-byte big-endian integer. Binary-safe
/// (newlines, invalid UTF-8 and empty records survive), exact, and read back sequentially.
pub struct RawRecords<T>(PhantomData<fn(&T)>);

impl<T> Default for RawRecords<T> {
    fn default() -> Self {
        RawRecords(PhantomData)
    }
}

impl<T: AsRef<[u8]> + 'static> Format<T> for RawRecords<T> {
    fn kind(&self) -> FormatKind {
        FormatKind::RawRecords
    }

    fn encode(&self, values: &[&T], out: &mut Vec<u8>, rejected: &mut Vec<(usize, EncodeError)>) {
        out.reserve(values.iter().map(|v| v.as_ref().len() + 4).sum());
        for (i, v) in values.iter().enumerate() {
            let b = v.as_ref();
            let Ok(len) = u32::try_from(b.len()) else {
                rejected.push((
                    i,
                    EncodeError(format!("record of {} bytes exceeds 4 GiB", b.len())),
                ));
                continue;
            };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// One object per element holding exactly its bytes (no framing, no newline): the raw archive of
/// exact received bytes.
pub struct RawObject<T>(PhantomData<fn(&T)>);

impl<T> Default for RawObject<T> {
    fn default() -> Self {
        RawObject(PhantomData)
    }
}

impl<T: AsRef<[u8]> + 'static> Format<T> for RawObject<T> {
    fn kind(&self) -> FormatKind {
        FormatKind::RawObject
    }

    fn encode(&self, values: &[&T], out: &mut Vec<u8>, _rejected: &mut Vec<(usize, EncodeError)>) {
        for v in values {
            out.extend_from_slice(v.as_ref());
        }
    }
}

/// Encodes values that are whole files (`Vec<T>`, for example a window pane grouped upstream): one
/// object per value, holding its items in the inner format. An item that fails to encode rejects its
/// whole value (the file would be incomplete).
pub struct PerValue<F>(pub F);

impl<T: 'static, F: Format<T>> Format<Vec<T>> for PerValue<F> {
    fn kind(&self) -> FormatKind {
        self.0.kind()
    }

    fn extension(&self) -> &str {
        self.0.extension()
    }

    fn content_type(&self) -> &'static str {
        self.0.content_type()
    }

    fn object_per_element(&self) -> bool {
        true
    }

    fn encode(
        &self,
        values: &[&Vec<T>],
        out: &mut Vec<u8>,
        rejected: &mut Vec<(usize, EncodeError)>,
    ) {
        let mut inner_rejected = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let items: Vec<&T> = v.iter().collect();
            let start = out.len();
            inner_rejected.clear();
            self.0.encode(&items, out, &mut inner_rejected);
            if let Some((j, e)) = inner_rejected.first() {
                out.truncate(start);
                rejected.push((i, EncodeError(format!("item {j}: {e}"))));
            }
        }
    }
}

/// gzip-compresses `data` at `level` (0-9). The header carries no name and a zero modification time,
/// so the same input always gives the same bytes.
pub fn gzip(data: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().write(
        Vec::with_capacity(data.len() / 3 + 64),
        flate2::Compression::new(level),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// Decompresses gzip (all members of a multi-member file).
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 4);
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

/// Splits an object's content into records: lines without their `\n` (empty lines skipped) for
/// `ndjson`, length-framed records for `raw_records`, the whole content for `raw_object`. The records
/// share the content's buffer (no copy). Errors name the byte offset of a broken frame.
pub fn split_records(kind: FormatKind, content: &Bytes) -> Result<Vec<Bytes>, String> {
    match kind {
        FormatKind::Ndjson => {
            let mut out = Vec::new();
            let mut start = 0;
            let b = content.as_ref();
            while start < b.len() {
                let end = b[start..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| start + p);
                if end > start {
                    out.push(content.slice(start..end));
                }
                start = end + 1;
            }
            Ok(out)
        }
        FormatKind::RawRecords => {
            let mut out = Vec::new();
            let mut pos = 0usize;
            let b = content.as_ref();
            while pos < b.len() {
                let Some(header) = b.get(pos..pos + 4) else {
                    return Err(format!("truncated record length at byte {pos}"));
                };
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                let start = pos + 4;
                let end = start
                    .checked_add(len)
                    .filter(|&e| e <= b.len())
                    .ok_or_else(|| {
                        format!(
                            "record at byte {pos} claims {len} bytes, past the end ({})",
                            b.len()
                        )
                    })?;
                out.push(content.slice(start..end));
                pos = end;
            }
            Ok(out)
        }
        FormatKind::RawObject => Ok(vec![content.clone()]),
        FormatKind::Parquet => {
            Err("Parquet objects are not split into records by the source".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<T, F: Format<T>>(f: &F, values: &[T]) -> (Vec<u8>, Vec<usize>) {
        let refs: Vec<&T> = values.iter().collect();
        let mut out = Vec::new();
        let mut rej = Vec::new();
        f.encode(&refs, &mut out, &mut rej);
        (out, rej.into_iter().map(|(i, _)| i).collect())
    }

    #[test]
    fn raw_records_round_trip_exact_bytes() {
        let values: Vec<Vec<u8>> = vec![
            b"a\nb".to_vec(),
            vec![],
            vec![0xff, 0, 10, 13],
            b"{}".to_vec(),
        ];
        let (out, rej) = enc(&RawRecords::default(), &values);
        assert!(rej.is_empty());
        let back = split_records(FormatKind::RawRecords, &Bytes::from(out.clone())).unwrap();
        assert_eq!(back.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), values);
        let broken = Bytes::from(out[..out.len() - 1].to_vec());
        assert!(split_records(FormatKind::RawRecords, &broken)
            .unwrap_err()
            .contains("past the end"));
    }

    #[test]
    fn lines_reject_newlines_and_ndjson_is_compact() {
        let (out, rej) = enc(
            &Lines::default(),
            &["a".to_string(), "b\nc".into(), "d".into()],
        );
        assert_eq!(out, b"a\nd\n");
        assert_eq!(rej, vec![1]);
        let (out, _) = enc(
            &Ndjson::default(),
            &[serde_json::json!({"k": "x\ny"}), serde_json::json!(1)],
        );
        assert_eq!(out, b"{\"k\":\"x\\ny\"}\n1\n");
        let lines = split_records(FormatKind::Ndjson, &Bytes::from(out)).unwrap();
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let data = b"hello hello hello".repeat(100);
        let a = gzip(&data, 6).unwrap();
        assert_eq!(a, gzip(&data, 6).unwrap());
        assert_eq!(gunzip(&a).unwrap(), data);
    }

    #[test]
    fn per_value_rejects_whole_files() {
        let f = PerValue(Lines::<String>::default());
        let (out, rej) = enc(&f, &[vec!["a".to_string(), "b".into()], vec!["c\n".into()]]);
        assert_eq!(out, b"a\nb\n");
        assert_eq!(rej, vec![1]);
    }
}
