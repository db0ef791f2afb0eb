//! Hostile records for the benchmarks: valid-looking invoices stuffed with what costs the validator the
//! most per byte (strings that are not UTF-8, each an issue).

/// A hostile record of about `size` bytes with `NFeID` `id`: a valid invoice whose extra field
/// `Extra` holds strings that are not UTF-8 (`"\xff"`), or (`items`) an `ItemList` of items whose
/// names are not UTF-8 and whose values have too many digits.
pub fn hostile(size: usize, items: bool, id: u64) -> Vec<u8> {
    let mut out = format!(
        r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0,"NFeNumber":1,"NFeID":{id},"#
    )
    .into_bytes();
    if items {
        out.extend_from_slice(b"\"ItemList\":[");
        let item = b"{\"ProductName\":\"a\xffb\",\"Value\":1.123456,\"Quantity\":1}";
        while out.len() + item.len() + 3 < size {
            if out.last() != Some(&b'[') {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}");
    } else {
        out.extend_from_slice(
            br#""ItemList":[{"ProductName":"x","Value":1,"Quantity":1}],"Extra":["#,
        );
        while out.len() + 8 < size {
            if out.last() != Some(&b'[') {
                out.push(b',');
            }
            out.extend_from_slice(b"\"\xff\"");
        }
        out.extend_from_slice(b"]}");
    }
    out
}
