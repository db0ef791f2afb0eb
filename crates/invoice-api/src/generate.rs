//! Deterministic invoices in the source API's JSON shape.
//!
//! Record `id` (1-based) depends only on the seed and the id, so any page can be produced on demand and
//! a test can recompute exactly what the API served. Record `id` changes at `base + (id - 1) * step` (its
//! `CreateDate`), so "records changed since a watermark" is a suffix of the id order.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What the generator produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Seed of every random choice. Default: 1.
    pub seed: u64,
    /// Number of invoices the API holds (ids 1..=count). Default: 10,000.
    pub count: u64,
    /// Fewest items per invoice. Default: 1.
    pub min_items: u32,
    /// Most items per invoice. Default: 8.
    pub max_items: u32,
    /// Share of records that are malformed (each with one kind of defect), 0.0 to 1.0. Default: 0.02.
    pub malformed_share: f64,
    /// `CreateDate` of record 1, local time of Sao Paulo without offset, as the API sends it.
    /// Default: `2021-05-24T20:21:34.79`.
    pub base_create_date: String,
    /// Milliseconds between the `CreateDate`s of consecutive records. Default: 1,000.
    pub step_millis: u64,
    /// Whether records are pretty-printed like the reference sample (multi-line). Default: true.
    pub pretty: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 1,
            count: 10_000,
            min_items: 1,
            max_items: 8,
            malformed_share: 0.02,
            base_create_date: "2021-05-24T20:21:34.79".into(),
            step_millis: 1_000,
            pretty: true,
        }
    }
}

/// The kind of defect of a malformed record. Each maps to the validation code the invoice domain
/// reports for it (`docs/validation.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Defect {
    /// `NFeNumber` is missing.
    MissingField,
    /// An item's `Value` is a string.
    WrongType,
    /// An item's `Quantity` is 0.
    NonPositiveQuantity,
    /// An item's `Value` is negative.
    NegativeValue,
    /// `Discount` is larger than the gross total.
    DiscountAboveGross,
    /// `EmissionDate` is February 30th.
    ImpossibleDate,
    /// `CreateDate` is not a date.
    InvalidDate,
    /// `ItemList` is empty.
    EmptyItemList,
    /// A `ProductName` holds bytes that are not UTF-8.
    InvalidUtf8,
}

impl Defect {
    /// Every kind, in the order the generator cycles through them.
    pub const ALL: [Defect; 9] = [
        Defect::MissingField,
        Defect::WrongType,
        Defect::NonPositiveQuantity,
        Defect::NegativeValue,
        Defect::DiscountAboveGross,
        Defect::ImpossibleDate,
        Defect::InvalidDate,
        Defect::EmptyItemList,
        Defect::InvalidUtf8,
    ];

    /// The validation error code the invoice domain gives this defect.
    pub fn expected_code(self) -> &'static str {
        match self {
            Defect::MissingField => "NFE_MISSING_FIELD",
            Defect::WrongType => "NFE_WRONG_TYPE",
            Defect::NonPositiveQuantity => "NFE_NON_POSITIVE_QUANTITY",
            Defect::NegativeValue => "NFE_NEGATIVE_VALUE",
            Defect::DiscountAboveGross => "NFE_DISCOUNT_EXCEEDS_GROSS",
            Defect::ImpossibleDate => "NFE_IMPOSSIBLE_DATE",
            Defect::InvalidDate => "NFE_INVALID_DATE",
            Defect::EmptyItemList => "NFE_EMPTY_ITEM_LIST",
            Defect::InvalidUtf8 => "NFE_INVALID_UTF8",
        }
    }
}

const PRODUCTS: [&str; 16] = [
    "Rice",
    "Flour",
    "Bean",
    "Tomate",
    "Pasta",
    "Feijão",
    "Açúcar",
    "Café",
    "Leite",
    "Óleo de soja",
    "Macarrão",
    "Pão francês",
    "Manteiga",
    "Maçã",
    "Sabão em pó",
    "Água mineral",
];

/// Invalid config values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
}

/// Produces records. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Generator {
    config: GeneratorConfig,
    base: jiff::civil::DateTime,
}

/// Golden-ratio increment of splitmix64.
pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 output function: a fast, well-mixed 64-bit hash.
pub(crate) fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from 64 random bits.
pub(crate) fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A splitmix64 step, so record `id`'s choices do not depend on any other record (a shared sequential
/// generator would make pages depend on the order they were served).
fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(GOLDEN))
}

struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        to_unit(self.next())
    }
}

impl Generator {
    /// Checks the config and builds a generator.
    pub fn new(config: GeneratorConfig) -> Result<Self, ConfigError> {
        if config.min_items == 0 || config.min_items > config.max_items {
            return Err(ConfigError::Invalid(
                "items",
                format!(
                    "min_items {} and max_items {} must satisfy 1 <= min <= max",
                    config.min_items, config.max_items
                ),
            ));
        }
        if config.max_items > 1_000 {
            return Err(ConfigError::Invalid(
                "max_items",
                format!("{} is above 1000", config.max_items),
            ));
        }
        if !(0.0..=1.0).contains(&config.malformed_share) {
            return Err(ConfigError::Invalid(
                "malformed_share",
                format!("{} is not between 0 and 1", config.malformed_share),
            ));
        }
        let base: jiff::civil::DateTime = config.base_create_date.parse().map_err(|e| {
            ConfigError::Invalid(
                "base_create_date",
                format!("'{}': {e}", config.base_create_date),
            )
        })?;
        Ok(Generator { config, base })
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Number of records.
    pub fn count(&self) -> u64 {
        self.config.count
    }

    fn draws(&self, id: u64) -> Draws {
        Draws(mix(self.config.seed ^ mix(id)))
    }

    /// The defect of record `id`, or `None` for a valid record.
    pub fn defect(&self, id: u64) -> Option<Defect> {
        self.draw_defect(&mut self.draws(id))
    }

    /// The first draws of a record decide its defect.
    fn draw_defect(&self, d: &mut Draws) -> Option<Defect> {
        if d.unit() < self.config.malformed_share {
            Some(Defect::ALL[d.below(Defect::ALL.len() as u64) as usize])
        } else {
            None
        }
    }

    /// `CreateDate` of record `id` as civil time (Sao Paulo, no offset).
    pub fn create_date(&self, id: u64) -> jiff::civil::DateTime {
        let millis = (id.saturating_sub(1)).saturating_mul(self.config.step_millis);
        self.base
            .checked_add(jiff::SignedDuration::from_millis(
                i64::try_from(millis).unwrap_or(i64::MAX),
            ))
            .unwrap_or(jiff::civil::DateTime::MAX)
    }

    /// The first id whose `CreateDate` is strictly after `since` (ids before it are unchanged since).
    pub fn first_id_after(&self, since: jiff::civil::DateTime) -> u64 {
        // CreateDate grows with the id: binary search.
        let (mut lo, mut hi) = (1u64, self.config.count + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.create_date(mid) > since {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// Appends the exact bytes of record `id` to `out`.
    pub fn write_record(&self, id: u64, out: &mut Vec<u8>) {
        let mut d = self.draws(id);
        let defect = self.draw_defect(&mut d);
        let span = u64::from(self.config.max_items - self.config.min_items) + 1;
        let n_items = if defect == Some(Defect::EmptyItemList) {
            0
        } else {
            u64::from(self.config.min_items) + d.below(span)
        };
        let (nl, ind, ind2) = if self.config.pretty {
            ("\n", "   ", "      ")
        } else {
            ("", "", "")
        };
        let create = self.create_date(id);
        let mut s = String::with_capacity(160 + 64 * n_items as usize);
        s.push('{');
        s.push_str(nl);
        if defect == Some(Defect::InvalidDate) {
            let _ = write!(s, "{ind}\"CreateDate\":\"not a date\",{nl}");
        } else {
            let _ = write!(
                s,
                "{ind}\"CreateDate\":\"{}\",{nl}",
                create.strftime("%Y-%m-%dT%H:%M:%S%.f")
            );
        }
        if defect == Some(Defect::ImpossibleDate) {
            let _ = write!(s, "{ind}\"EmissionDate\":\"2021-02-30T00:00:00\",{nl}");
        } else {
            // Emission is the creation day, or up to two days before it, at midnight.
            let back = d.below(3) as i64;
            let day = create
                .date()
                .checked_sub(jiff::Span::new().days(back))
                .unwrap_or(create.date());
            let _ = write!(
                s,
                "{ind}\"EmissionDate\":\"{}T00:00:00\",{nl}",
                day.strftime("%Y-%m-%d")
            );
        }
        // Items first (in cents), so the discount can be drawn below the gross.
        let mut items = String::new();
        let mut gross_cents: u64 = 0;
        for i in 0..n_items {
            let name = PRODUCTS[d.below(PRODUCTS.len() as u64) as usize];
            let cents = 50 + d.below(50_000);
            let mut qty = 1 + d.below(10);
            if i == 0 && defect == Some(Defect::NonPositiveQuantity) {
                qty = 0;
            }
            gross_cents += cents * qty;
            let value = if i == 0 && defect == Some(Defect::WrongType) {
                "\"abc\"".to_string()
            } else if i == 0 && defect == Some(Defect::NegativeValue) {
                format!("-{}.{:02}", cents / 100, cents % 100)
            } else {
                format!("{}.{:02}", cents / 100, cents % 100)
            };
            let name = if i == 0 && defect == Some(Defect::InvalidUtf8) {
                // Marked here, replaced by an invalid byte after the text is built.
                "\u{1}INVALID\u{1}"
            } else {
                name
            };
            let sep = if i + 1 < n_items { "," } else { "" };
            let _ = write!(
                items,
                "{ind2}{{\"ProductName\":\"{name}\",\"Value\":{value},\"Quantity\":{qty}}}{sep}{nl}"
            );
        }
        let discount_cents = if defect == Some(Defect::DiscountAboveGross) {
            gross_cents + 100
        } else if d.below(4) == 0 {
            d.below(gross_cents / 10 + 1)
        } else {
            0
        };
        let _ = write!(
            s,
            "{ind}\"Discount\":{}.{:02},{nl}",
            discount_cents / 100,
            discount_cents % 100
        );
        if defect != Some(Defect::MissingField) {
            let _ = write!(s, "{ind}\"NFeNumber\":{},{nl}", 500 + id);
        }
        let _ = write!(s, "{ind}\"NFeID\":{id},{nl}");
        let _ = write!(s, "{ind}\"ItemList\":[{nl}{items}{ind}]{nl}}}");
        let start = out.len();
        out.extend_from_slice(s.as_bytes());
        if defect == Some(Defect::InvalidUtf8) {
            if let Some(pos) = find(&out[start..], b"\x01INVALID\x01") {
                let at = start + pos;
                out.splice(at..at + 9, [b'P', b'r', 0xFF, 0xFE, b'o']);
            }
        }
    }

    /// The exact bytes of record `id`.
    pub fn record(&self, id: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(512);
        self.write_record(id, &mut v);
        v
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_deterministic_and_independent_of_order() {
        let g = Generator::new(GeneratorConfig::default()).unwrap();
        let a = g.record(42);
        let _ = g.record(7);
        assert_eq!(a, g.record(42));
        let g2 = Generator::new(GeneratorConfig {
            seed: 2,
            ..GeneratorConfig::default()
        })
        .unwrap();
        assert_ne!(a, g2.record(42));
    }

    #[test]
    fn malformed_share_is_close_to_the_setting() {
        let g = Generator::new(GeneratorConfig {
            malformed_share: 0.1,
            ..GeneratorConfig::default()
        })
        .unwrap();
        let n = (1..=10_000).filter(|&id| g.defect(id).is_some()).count();
        assert!((800..1200).contains(&n), "{n}");
    }

    #[test]
    fn first_id_after_a_watermark() {
        let g = Generator::new(GeneratorConfig::default()).unwrap();
        assert_eq!(g.first_id_after(g.create_date(1)), 2);
        assert_eq!(g.first_id_after(g.create_date(500)), 501);
        let before: jiff::civil::DateTime = "2000-01-01T00:00:00".parse().unwrap();
        assert_eq!(g.first_id_after(before), 1);
        assert_eq!(g.first_id_after(jiff::civil::DateTime::MAX), 10_001);
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(Generator::new(GeneratorConfig {
            min_items: 0,
            ..GeneratorConfig::default()
        })
        .is_err());
        assert!(Generator::new(GeneratorConfig {
            malformed_share: 1.5,
            ..GeneratorConfig::default()
        })
        .is_err());
        assert!(Generator::new(GeneratorConfig {
            base_create_date: "yesterday".into(),
            ..GeneratorConfig::default()
        })
        .is_err());
    }
}
