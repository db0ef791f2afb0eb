//! Property tests: serialize/parse round trip, exact totals, hash invariance, no panics.

use nfe::{content_hash_of, split_page, SourceInvoice, SourceItem, ValidationConfig, Validator};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn validator() -> Validator {
    ValidationConfig::default().build().unwrap()
}

fn decimal(max_mantissa: i64, min: i64) -> impl Strategy<Value = Decimal> {
    (min..max_mantissa, 0u32..=4).prop_map(|(m, s)| Decimal::new(m, s))
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z][A-Za-z0-9 ]{0,24}",
        "\\PC{0,10}[a-zA-Zçãé]\\PC{0,10}",
        "[a-z\"\\\\/\u{0}-\u{1f}]{0,5}[a-z][ a-z\"\\\\]{0,5}",
    ]
}

/// A civil date-time text `YYYY-MM-DDTHH:MM:SS[.f]` and its date part.
fn datetime() -> impl Strategy<Value = (String, String)> {
    (
        2007i32..2031,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        0usize..=9,
        any::<u32>(),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac_len, frac)| {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let mut t = format!("{date}T{h:02}:{mi:02}:{s:02}");
            if frac_len > 0 {
                let f = format!("{:09}", frac % 1_000_000_000);
                t.push('.');
                t.push_str(&f[..frac_len]);
            }
            (t, date)
        })
}

fn invoice() -> impl Strategy<Value = SourceInvoice> {
    let item = (
        name(),
        decimal(1_000_000_000_000, 0),
        decimal(10_000_000, 1),
    )
        .prop_map(|(product_name, value, quantity)| SourceItem {
            product_name,
            value,
            quantity,
        });
    (
        datetime(),
        any::<bool>(),
        decimal(10_000, 0),
        0i64..=i64::MAX,
        0i64..=i64::MAX,
        prop::collection::vec(item, 1..=8),
    )
        .prop_map(
            |((create, date), same_day, discount, number, id, items)| SourceInvoice {
                emission_date: if same_day {
                    format!("{date}T00:00:00")
                } else {
                    "2006-06-30T12:00:00".to_owned()
                },
                create_date: create,
                discount,
                nfe_number: number,
                nfe_id: id,
                item_list: items,
            },
        )
}

/// Gross computed independently: i128 mantissas at a fixed scale of 8.
fn gross_scaled(inv: &SourceInvoice) -> i128 {
    let at = |d: Decimal, scale: u32| d.mantissa() * 10i128.pow(scale - d.scale());
    inv.item_list
        .iter()
        .map(|i| at(i.value, 4) * at(i.quantity, 4))
        .sum()
}

/// An object member: its key and the writer of its value.
type Member<'f, W> = (&'static str, Box<dyn Fn(&mut W) + 'f>);

/// Writes the invoice as JSON with key order, whitespace, number and string spellings chosen by
/// `style` (a stream of decisions).
struct Styled<'a> {
    style: &'a [u8],
    at: usize,
    out: String,
}

impl Styled<'_> {
    fn pick(&mut self, n: u8) -> u8 {
        let b = self
            .style
            .get(self.at % self.style.len().max(1))
            .copied()
            .unwrap_or(0);
        self.at += 1;
        b.wrapping_add(self.at as u8) % n
    }
    fn ws(&mut self) {
        for _ in 0..self.pick(3) {
            let c = [" ", "\n", "\t", "\r\n"][self.pick(4) as usize];
            self.out.push_str(c);
        }
    }
    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '/' if self.pick(2) == 0 => self.out.push_str("\\/"),
                c if (c as u32) < 0x20 || self.pick(4) == 0 => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        self.out.push_str(&format!("\\u{:04X}", u));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
    fn number(&mut self, d: Decimal) {
        let text = d.to_string();
        match self.pick(3) {
            0 => self.out.push_str(&text),
            1 => {
                // Extra trailing zeros.
                self.out.push_str(&text);
                if !text.contains('.') {
                    self.out.push('.');
                }
                self.out.push_str("00");
            }
            _ => {
                // Mantissa and exponent: 35.55 -> 3555e-2 (or 3555E-2).
                let e = if self.pick(2) == 0 { "e" } else { "E" };
                self.out
                    .push_str(&format!("{}{e}-{}", d.mantissa(), d.scale()));
            }
        }
    }
    fn object(&mut self, members: Vec<Member<'_, Self>>) {
        let mut members = members;
        // Deterministic shuffle driven by the style stream.
        for i in (1..members.len()).rev() {
            let j = self.pick((i + 1) as u8) as usize;
            members.swap(i, j);
        }
        self.out.push('{');
        for (n, (k, write)) in members.iter().enumerate() {
            if n > 0 {
                self.out.push(',');
            }
            self.ws();
            self.string(k);
            self.ws();
            self.out.push(':');
            self.ws();
            write(self);
            self.ws();
        }
        self.out.push('}');
    }
}

fn styled_json(inv: &SourceInvoice, style: &[u8]) -> String {
    let mut w = Styled {
        style,
        at: 0,
        out: String::new(),
    };
    w.ws();
    w.object(vec![
        (
            "CreateDate",
            Box::new(|w: &mut Styled<'_>| w.string(&inv.create_date)),
        ),
        (
            "EmissionDate",
            Box::new(|w: &mut Styled<'_>| w.string(&inv.emission_date)),
        ),
        (
            "Discount",
            Box::new(|w: &mut Styled<'_>| w.number(inv.discount)),
        ),
        (
            "NFeNumber",
            Box::new(|w: &mut Styled<'_>| w.out.push_str(&inv.nfe_number.to_string())),
        ),
        (
            "NFeID",
            Box::new(|w: &mut Styled<'_>| w.out.push_str(&inv.nfe_id.to_string())),
        ),
        (
            "ItemList",
            Box::new(|w: &mut Styled<'_>| {
                w.out.push('[');
                for (n, item) in inv.item_list.iter().enumerate() {
                    if n > 0 {
                        w.out.push(',');
                    }
                    w.ws();
                    w.object(vec![
                        (
                            "ProductName",
                            Box::new(|w: &mut Styled<'_>| w.string(&item.product_name)),
                        ),
                        ("Value", Box::new(|w: &mut Styled<'_>| w.number(item.value))),
                        (
                            "Quantity",
                            Box::new(|w: &mut Styled<'_>| w.number(item.quantity)),
                        ),
                    ]);
                }
                w.ws();
                w.out.push(']');
            }),
        ),
    ]);
    w.ws();
    w.out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn source_json_round_trips(inv in invoice()) {
        let gross = gross_scaled(&inv);
        let discount = inv.discount.mantissa() * 10i128.pow(8 - inv.discount.scale());
        prop_assume!(discount <= gross);
        let json = inv.to_json();
        let record = validator().validate(json.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&record.source, &inv);
        // Same text back, scale included.
        prop_assert_eq!(record.source.to_json(), json);
    }

    #[test]
    fn totals_are_exact(inv in invoice()) {
        let gross = gross_scaled(&inv);
        let discount = inv.discount.mantissa() * 10i128.pow(8 - inv.discount.scale());
        prop_assume!(discount <= gross);
        let invoice = validator().process(inv.to_json().as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let scaled = |d: Decimal| d.mantissa() * 10i128.pow(8 - d.scale());
        prop_assert_eq!(scaled(invoice.gross), gross);
        prop_assert_eq!(scaled(invoice.net), gross - discount);
        for (line, item) in invoice.items.iter().zip(&inv.item_list) {
            prop_assert_eq!(scaled(line.line_total), scaled(item.value) * scaled(item.quantity) / 100_000_000);
        }
        prop_assert_eq!(invoice.item_count as usize, inv.item_list.len());
    }

    #[test]
    fn hash_is_invariant_under_spelling(inv in invoice(), style in prop::collection::vec(any::<u8>(), 1..64)) {
        let plain = inv.to_json();
        let styled = styled_json(&inv, &style);
        let a = content_hash_of(plain.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = content_hash_of(styled.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {styled}")))?;
        prop_assert_eq!(a, b, "{} vs {}", plain, styled);
        // The validated record is the same invoice either way.
        let v = validator();
        match (v.validate(plain.as_bytes()), v.validate(styled.as_bytes())) {
            (Ok(x), Ok(y)) => {
                prop_assert_eq!(x.source, y.source);
                prop_assert_eq!(x.content_hash, y.content_hash);
            }
            (Err(x), Err(y)) => prop_assert_eq!(x.codes(), y.codes()),
            (x, y) => prop_assert!(false, "{:?} vs {:?}", x.map(|_| ()), y.map(|_| ())),
        }
    }

    #[test]
    fn hash_changes_with_content(inv in invoice(), bump in 1i64..1000) {
        let mut other = inv.clone();
        other.item_list[0].quantity += Decimal::new(bump, 0);
        let a = content_hash_of(inv.to_json().as_bytes()).unwrap();
        let b = content_hash_of(other.to_json().as_bytes()).unwrap();
        prop_assert_ne!(a, b);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let v = validator();
        let _ = v.validate(&bytes);
        let _ = split_page(&bytes);
        let _ = content_hash_of(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_records(inv in invoice(), edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)) {
        let mut bytes = inv.to_json().into_bytes();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
        }
        let v = validator();
        if let Err(e) = v.validate(&bytes) {
            prop_assert!(!e.issues.is_empty());
        }
        let page = [b"[".as_slice(), &bytes, b"]"].concat();
        let _ = split_page(&page);
    }
}
