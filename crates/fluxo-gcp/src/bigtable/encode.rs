//! The write path's wire format: a `MutateRowsRequest` encoded straight from borrowed [`RowMutation`]s
//! into one buffer (protobuf, field numbers of `google.bigtable.v2`), and a gRPC codec that sends those
//! bytes and decodes the generated `MutateRowsResponse`.
//!
//! The generated message types own `Vec<u8>`/`String` fields, so building them costs three allocations
//! and copies per cell; encoding directly costs one copy of the payload into the request buffer. The
//! round-trip tests compare every cell read back from cbtemulator, and a unit test checks the bytes
//! against prost's encoding of the generated message.

use bigtable_rs::google::bigtable::v2::MutateRowsResponse;
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::encoded_len_varint;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::mutation::{Delete, RowMutation, SetCell};

const LEN: u64 = 2; // wire type "length-delimited"
const VARINT: u64 = 0;

fn key(tag: u64, wire: u64) -> u64 {
    (tag << 3) | wire
}

/// Length of a length-delimited field holding `len` bytes (tags here are < 16: a one-byte key).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Length of a bytes/string field, omitted when empty (proto3 default).
fn opt_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        field_len(len)
    }
}

fn put_field(buf: &mut BytesMut, tag: u64, data: &[u8]) {
    put_header(buf, tag, data.len());
    buf.put_slice(data);
}

fn put_opt_field(buf: &mut BytesMut, tag: u64, data: &[u8]) {
    if !data.is_empty() {
        put_field(buf, tag, data);
    }
}

fn put_header(buf: &mut BytesMut, tag: u64, len: usize) {
    prost::encoding::encode_varint(key(tag, LEN), buf);
    prost::encoding::encode_varint(len as u64, buf);
}

fn set_cell_len(c: &SetCell) -> usize {
    let ts = if c.timestamp_micros == 0 {
        0
    } else {
        1 + encoded_len_varint(c.timestamp_micros as u64)
    };
    opt_field_len(c.family.len())
        + opt_field_len(c.qualifier.len())
        + ts
        + opt_field_len(c.value.len())
}

fn delete_len(d: &Delete) -> usize {
    match d {
        Delete::Row => 0,
        Delete::Family(f) => opt_field_len(f.len()),
        Delete::Column { family, qualifier } => {
            opt_field_len(family.len()) + opt_field_len(qualifier.len()) + field_len(0)
        }
    }
}

/// Length of the `Entry` message of one row.
fn entry_len(r: &RowMutation) -> usize {
    let deletes: usize = r
        .deletes
        .iter()
        .map(|d| field_len(field_len(delete_len(d))))
        .sum();
    let cells: usize = r
        .cells
        .iter()
        .map(|c| field_len(field_len(set_cell_len(c))))
        .sum();
    opt_field_len(r.key.len()) + deletes + cells
}

fn put_entry(buf: &mut BytesMut, r: &RowMutation) {
    put_opt_field(buf, 1, &r.key);
    for d in &r.deletes {
        let inner = delete_len(d);
        // Mutation { oneof: delete_from_column = 2, delete_from_family = 3, delete_from_row = 4 }
        put_header(buf, 2, field_len(inner));
        match d {
            Delete::Row => put_header(buf, 4, 0),
            Delete::Family(f) => {
                put_header(buf, 3, inner);
                put_opt_field(buf, 1, f.as_bytes());
            }
            Delete::Column { family, qualifier } => {
                put_header(buf, 2, inner);
                put_opt_field(buf, 1, family.as_bytes());
                put_opt_field(buf, 2, qualifier);
                // time_range: an empty TimestampRange (all versions).
                put_header(buf, 3, 0);
            }
        }
    }
    for c in &r.cells {
        let inner = set_cell_len(c);
        put_header(buf, 2, field_len(inner));
        // Mutation { set_cell = 1 }
        put_header(buf, 1, inner);
        put_opt_field(buf, 1, c.family.as_bytes());
        put_opt_field(buf, 2, &c.qualifier);
        if c.timestamp_micros != 0 {
            prost::encoding::encode_varint(key(3, VARINT), buf);
            prost::encoding::encode_varint(c.timestamp_micros as u64, buf);
        }
        put_opt_field(buf, 4, &c.value);
    }
}

/// Encodes `MutateRowsRequest { table_name, app_profile_id, entries }` for the rows `idx` of `rows`:
/// the exact bytes the sink sends (public for benchmarks and tools).
pub fn mutate_rows_request(
    table_name: &str,
    app_profile_id: &str,
    rows: &[RowMutation],
    idx: &[usize],
) -> Bytes {
    let mut total = opt_field_len(table_name.len()) + opt_field_len(app_profile_id.len());
    let mut lens = Vec::with_capacity(idx.len());
    for &i in idx {
        let l = entry_len(&rows[i]);
        lens.push(l);
        total += field_len(l);
    }
    let mut buf = BytesMut::with_capacity(total);
    put_opt_field(&mut buf, 1, table_name.as_bytes());
    for (&i, &l) in idx.iter().zip(&lens) {
        put_header(&mut buf, 2, l);
        put_entry(&mut buf, &rows[i]);
    }
    put_opt_field(&mut buf, 3, app_profile_id.as_bytes());
    debug_assert_eq!(buf.len(), total);
    buf.freeze()
}

/// Sends pre-encoded request bytes; decodes `MutateRowsResponse` messages.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MutateRowsCodec;

#[derive(Debug)]
pub(crate) struct RawEncoder;

#[derive(Debug)]
pub(crate) struct ResponseDecoder;

impl Codec for MutateRowsCodec {
    type Encode = Bytes;
    type Decode = MutateRowsResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = MutateRowsResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<MutateRowsResponse>, Status> {
        <MutateRowsResponse as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable MutateRowsResponse: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigtable_rs::google::bigtable::v2::MutateRowsRequest;
    use prost::Message;

    #[test]
    fn matches_prost_encoding_of_the_generated_message() {
        let rows = vec![
            RowMutation::new("k1", vec![])
                .set("f", "q", 1_000, "v")
                .set("family", "", 0, "")
                .set("g", vec![0u8, 255], -1, vec![7u8; 300]),
            RowMutation::new(vec![b'x'; 200], vec![])
                .delete(Delete::Row)
                .delete(Delete::Family("f".into()))
                .delete(Delete::Column {
                    family: "f".into(),
                    qualifier: "q".into(),
                })
                .set("f", "q", 1_700_000_000_000_000, "value"),
        ];
        for (profile, idx) in [("", vec![0, 1]), ("profile", vec![1]), ("", vec![])] {
            let ours = mutate_rows_request("projects/p/instances/i/tables/t", profile, &rows, &idx);
            let theirs = MutateRowsRequest {
                table_name: "projects/p/instances/i/tables/t".into(),
                app_profile_id: profile.into(),
                entries: idx.iter().map(|&i| rows[i].to_entry()).collect(),
                ..MutateRowsRequest::default()
            };
            assert_eq!(MutateRowsRequest::decode(ours.clone()).unwrap(), theirs);
            assert_eq!(&ours[..], &theirs.encode_to_vec()[..]);
        }
    }
}
