//! BigQuery layout: the `invoices` / `invoice_items` schemas, their partitioning and clustering,
//! the JSON rows (with stable insert ids) produced from an enriched invoice, and the two views that
//! are the query surface (`invoices_current`, `invoice_items_current`: each invoice and each line
//! exactly once, whatever duplicates the tables hold).
//!
//! The schema files (`schemas/bigquery/*.json`, the `bq`/REST schema format) are embedded here so
//! that deployment and tests use the same text. Design: `docs/bigquery.md`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::enrich::Invoice;
use crate::time::format_rfc3339_micros;

/// Schema of `invoices` (one row per invoice), in the `bq`/REST JSON schema format.
pub const INVOICES_SCHEMA: &str = include_str!("../schemas/bigquery/invoices.json");
/// Schema of `invoice_items` (one row per item), in the `bq`/REST JSON schema format.
pub const INVOICE_ITEMS_SCHEMA: &str = include_str!("../schemas/bigquery/invoice_items.json");

/// A table: name, schema, partitioning and clustering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name.
    pub name: &'static str,
    /// JSON schema text.
    pub schema_json: &'static str,
    /// Column of the time partitioning.
    pub partition_field: &'static str,
    /// Partitioning granularity (`DAY`).
    pub partition_type: &'static str,
    /// Clustering columns, in order.
    pub clustering: &'static [&'static str],
}

/// The `invoices` table: daily partitions on the emission date, clustered by `nfe_id`.
pub const INVOICES: TableSpec = TableSpec {
    name: "invoices",
    schema_json: INVOICES_SCHEMA,
    partition_field: "emission_date",
    partition_type: "DAY",
    clustering: &["nfe_id"],
};

/// The `invoice_items` table: daily partitions on the emission date, clustered by product key
/// then invoice.
pub const INVOICE_ITEMS: TableSpec = TableSpec {
    name: "invoice_items",
    schema_json: INVOICE_ITEMS_SCHEMA,
    partition_field: "emission_date",
    partition_type: "DAY",
    clustering: &["product_key", "nfe_id"],
};

/// A view over the tables: its name, description and defining query. The query names the tables
/// as `` `{project}.{dataset}.<table>` ``; [`ViewSpec::query_for`] fills the placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewSpec {
    /// View name.
    pub name: &'static str,
    /// View description (one line, no double quotes).
    pub description: &'static str,
    /// GoogleSQL query with `{project}` and `{dataset}` placeholders.
    pub query: &'static str,
}

/// `invoices_current`: exactly one row per `nfe_id`, its current version, with the columns of
/// `invoices`.
///
/// The current version is the one Bigtable serves: the greatest `creation_time` at millisecond
/// precision (Bigtable's cell timestamp is `CreateDate` truncated to the millisecond, and the newest
/// cell wins whatever the arrival order). Where Bigtable falls back to the last write (two versions
/// in the same millisecond), the view takes the greatest `content_hash`, so its answer never
/// depends on arrival order. Copies of the same version (redeliveries, retries, replays) differ
/// only in their delivery columns; the earliest `publish_time`, then the smallest `message_id`,
/// is kept.
pub const INVOICES_CURRENT: ViewSpec = ViewSpec {
    name: "invoices_current",
    description: "One row per invoice (nfe_id): its current version, duplicates removed. See docs/bigquery.md.",
    query: "SELECT * EXCEPT (version_rank)
FROM (
  SELECT *,
    ROW_NUMBER() OVER (
      PARTITION BY nfe_id
      ORDER BY TIMESTAMP_TRUNC(creation_time, MILLISECOND) DESC, content_hash DESC,
        publish_time, message_id
    ) AS version_rank
  FROM `{project}.{dataset}.invoices`
)
WHERE version_rank = 1",
};

/// `invoice_items_current`: exactly one row per (`nfe_id`, `line_number`) of each invoice's current
/// version (the `content_hash` of its row in [`INVOICES_CURRENT`]), with the columns of
/// `invoice_items`. Lines of other versions are left out (a correction with fewer lines leaves no
/// stale line behind); copies of the same line collapse (they come from the same bytes; the order
/// over every column only makes the choice deterministic).
pub const INVOICE_ITEMS_CURRENT: ViewSpec = ViewSpec {
    name: "invoice_items_current",
    description: "One row per line (nfe_id, line_number) of each invoice's current version, duplicates removed. See docs/bigquery.md.",
    query: "SELECT * EXCEPT (line_rank)
FROM (
  SELECT item.*,
    ROW_NUMBER() OVER (
      PARTITION BY item.nfe_id, item.line_number
      ORDER BY item.product_name, item.product_key, item.unit_value, item.quantity,
        item.line_total, item.emission_date
    ) AS line_rank
  FROM `{project}.{dataset}.invoice_items` AS item
  JOIN `{project}.{dataset}.invoices_current` AS head
    ON item.nfe_id = head.nfe_id AND item.content_hash = head.content_hash
)
WHERE line_rank = 1",
};

/// The views, in creation order (`invoice_items_current` reads `invoices_current`).
pub const VIEWS: [ViewSpec; 2] = [INVOICES_CURRENT, INVOICE_ITEMS_CURRENT];

impl ViewSpec {
    /// The defining query for a project and dataset.
    pub fn query_for(&self, project: &str, dataset: &str) -> String {
        self.query
            .replace("{project}", project)
            .replace("{dataset}", dataset)
    }

    /// The fully qualified, quoted name: `` `project.dataset.name` ``.
    pub fn qualified(&self, project: &str, dataset: &str) -> String {
        format!("`{project}.{dataset}.{}`", self.name)
    }

    /// `CREATE OR REPLACE VIEW` DDL for a project and dataset: creates the view or replaces its
    /// definition, so running it again is harmless.
    pub fn create_or_replace(&self, project: &str, dataset: &str) -> String {
        format!(
            "CREATE OR REPLACE VIEW {}\nOPTIONS (description = \"{}\")\nAS\n{}",
            self.qualified(project, dataset),
            self.description,
            self.query_for(project, dataset)
        )
    }
}

/// An exact BigQuery `NUMERIC` value as a whole number of 10^-9 units (`NUMERIC` keeps 9 digits
/// after the point), for exact sums and comparisons of what the stores hold.
///
/// It parses the decimal texts of the stores (`318.90`, `-0.5`) and of the BigQuery REST API, which
/// may use an exponent (`0E-9`, `1.5E+3`); it displays the shortest exact text (`318.9`, `0`), so
/// two equal values always print the same. An `i128` holds every `NUMERIC` (below 10^29) and sums
/// of up to 10^9 of them; arithmetic is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Numeric(i128);

/// Why a text is not a [`Numeric`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumericError {
    /// Not a decimal number.
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    /// A nonzero digit beyond the 9th after the point.
    #[error("more than 9 significant fractional digits: {0:?}")]
    TooPrecise(String),
    /// Beyond the range of the sum type.
    #[error("out of range: {0:?}")]
    OutOfRange(String),
}

impl Numeric {
    /// Zero.
    pub const ZERO: Numeric = Numeric(0);
    /// Digits after the point.
    pub const SCALE: u32 = 9;

    /// The value in 10^-9 units.
    pub fn from_nanos(nanos: i128) -> Numeric {
        Numeric(nanos)
    }

    /// The value in 10^-9 units.
    pub fn nanos(self) -> i128 {
        self.0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Numeric) -> Option<Numeric> {
        self.0.checked_add(other.0).map(Numeric)
    }

    /// An exact decimal (any scale whose significant fractional digits fit 9).
    pub fn from_decimal(d: Decimal) -> Result<Numeric, NumericError> {
        d.to_string().parse()
    }
}

impl std::str::FromStr for Numeric {
    type Err = NumericError;

    fn from_str(text: &str) -> Result<Numeric, NumericError> {
        let syntax = || NumericError::Syntax(text.to_string());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e: i64 = rest[i + 1..].parse().map_err(|_| syntax())?;
                (&rest[..i], e)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
            return Err(syntax());
        }
        // value = digits x 10^(exp - frac.len()); in 10^-9 units: digits x 10^(exp - frac.len() + 9).
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        let shift = exp
            .saturating_sub(frac.len() as i64)
            .saturating_add(i64::from(Numeric::SCALE));
        let range = || NumericError::OutOfRange(text.to_string());
        let nanos: i128 = if digits.is_empty() {
            0
        } else if shift >= 0 {
            let m: i128 = digits.parse().map_err(|_| range())?;
            u32::try_from(shift)
                .ok()
                .and_then(|s| 10i128.checked_pow(s))
                .and_then(|p| m.checked_mul(p))
                .ok_or_else(range)?
        } else {
            let cut = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
            let kept = digits.len().saturating_sub(cut);
            if digits[kept..].bytes().any(|b| b != b'0') {
                return Err(NumericError::TooPrecise(text.to_string()));
            }
            let head = &digits[..kept];
            if head.is_empty() {
                0
            } else {
                head.parse().map_err(|_| range())?
            }
        };
        Ok(Numeric(if negative { -nanos } else { nanos }))
    }
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = 10u128.pow(Numeric::SCALE);
        let abs = self.0.unsigned_abs();
        let (int, frac) = (abs / scale, abs % scale);
        if self.0 < 0 {
            f.write_str("-")?;
        }
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let frac = format!("{frac:09}");
            write!(f, "{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Numeric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Numeric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Numeric, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One field of a schema file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaField {
    /// Column name.
    pub name: String,
    /// BigQuery type (`INTEGER`, `NUMERIC`, `STRING`, `TIMESTAMP`, `DATE`).
    #[serde(rename = "type")]
    pub field_type: String,
    /// `REQUIRED` or `NULLABLE`.
    pub mode: String,
    /// Column description.
    pub description: String,
}

impl TableSpec {
    /// Parses the schema file.
    pub fn fields(&self) -> Result<Vec<SchemaField>, serde_json::Error> {
        serde_json::from_str(self.schema_json)
    }
}

/// A row with its insert id (`insertId` of `tabledata.insertAll`, for best-effort dedup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableRow<T> {
    /// Stable id: the same invoice version always gives the same id.
    pub insert_id: String,
    /// The row (serializes to the table's JSON row).
    pub row: T,
}

/// A row of `invoices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvoiceRow {
    /// Column `nfe_id`.
    pub nfe_id: i64,
    /// Column `nfe_number`.
    pub nfe_number: i64,
    /// Column `emission_time`.
    pub emission_time: String,
    /// Column `emission_date`.
    pub emission_date: String,
    /// Column `emission_raw`.
    pub emission_raw: String,
    /// Column `creation_time`.
    pub creation_time: String,
    /// Column `creation_raw`.
    pub creation_raw: String,
    /// Column `discount`.
    pub discount: String,
    /// Column `gross`.
    pub gross: String,
    /// Column `net`.
    pub net: String,
    /// Column `item_count`.
    pub item_count: i64,
    /// Column `content_hash`.
    pub content_hash: String,
    /// Column `message_id`.
    pub message_id: Option<String>,
    /// Column `publish_time`.
    pub publish_time: Option<String>,
    /// Column `worker`.
    pub worker: Option<String>,
    /// Column `pipeline_version`.
    pub pipeline_version: Option<String>,
}

/// A row of `invoice_items`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemRow {
    /// Column `nfe_id`.
    pub nfe_id: i64,
    /// Column `line_number`.
    pub line_number: i64,
    /// Column `emission_date`.
    pub emission_date: String,
    /// Column `product_name`.
    pub product_name: String,
    /// Column `product_key`.
    pub product_key: String,
    /// Column `unit_value`.
    pub unit_value: String,
    /// Column `quantity`.
    pub quantity: String,
    /// Column `line_total`.
    pub line_total: String,
    /// Column `content_hash`.
    pub content_hash: String,
}

/// `NUMERIC` text of a decimal, written by `Display`: exact, at most 9 fractional digits (trailing zeros
/// dropped if needed).
///
/// Dropping trailing zeros is enough for a validated invoice: its amounts have at most
/// `max_value_fraction_digits + max_quantity_fraction_digits <= 9` significant fractional digits
/// (the config refuses more), and a decimal's 29 integer digits fit `NUMERIC`'s 29. Nothing here
/// rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumericText(pub Decimal);

impl std::fmt::Display for NumericText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.scale() > 9 {
            std::fmt::Display::fmt(&self.0.normalize(), f)
        } else {
            std::fmt::Display::fmt(&self.0, f)
        }
    }
}

fn numeric(d: Decimal) -> String {
    NumericText(d).to_string()
}

/// Insert id of an invoice version: `<nfe_id>-<first 16 hex digits of the content hash>`.
pub fn invoice_insert_id(inv: &Invoice) -> String {
    let hash = inv.content_hash.to_hex();
    format!("{}-{}", inv.nfe_id, &hash[..16])
}

/// The `invoices` row of an invoice.
pub fn invoice_row(inv: &Invoice) -> TableRow<InvoiceRow> {
    let ingest = inv.ingest.as_ref();
    TableRow {
        insert_id: invoice_insert_id(inv),
        row: InvoiceRow {
            nfe_id: inv.nfe_id,
            nfe_number: inv.nfe_number,
            emission_time: format_rfc3339_micros(inv.emission.utc),
            emission_date: inv.emission_date.to_string(),
            emission_raw: inv.emission.original.clone(),
            creation_time: format_rfc3339_micros(inv.creation.utc),
            creation_raw: inv.creation.original.clone(),
            discount: numeric(inv.discount),
            gross: numeric(inv.gross),
            net: numeric(inv.net),
            item_count: i64::from(inv.item_count),
            content_hash: inv.content_hash.to_hex(),
            message_id: ingest.and_then(|m| m.message_id.clone()),
            publish_time: ingest
                .and_then(|m| m.publish_time)
                .map(format_rfc3339_micros),
            worker: ingest.and_then(|m| m.worker.clone()),
            pipeline_version: ingest.and_then(|m| m.version.clone()),
        },
    }
}

/// The `invoice_items` rows of an invoice; insert id `<invoice insert id>-<line_number>`.
pub fn item_rows(inv: &Invoice) -> Vec<TableRow<ItemRow>> {
    let base = invoice_insert_id(inv);
    let hash = inv.content_hash.to_hex();
    let date = inv.emission_date.to_string();
    inv.items
        .iter()
        .map(|l| TableRow {
            insert_id: format!("{base}-{}", l.line_number),
            row: ItemRow {
                nfe_id: inv.nfe_id,
                line_number: i64::from(l.line_number),
                emission_date: date.clone(),
                product_name: l.product_name.clone(),
                product_key: l.product_key.clone(),
                unit_value: numeric(l.unit_value),
                quantity: numeric(l.quantity),
                line_total: numeric(l.line_total),
                content_hash: hash.clone(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, NumericError> {
        s.parse::<Numeric>().map(|v| v.to_string())
    }

    #[test]
    fn numeric_texts_of_the_stores_and_of_the_rest_api() {
        for (text, shown) in [
            ("318.90", "318.9"),
            ("20.200000000", "20.2"),
            ("0E-9", "0"),
            ("0", "0"),
            ("-0.00", "0"),
            ("-12.5", "-12.5"),
            ("+7", "7"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1.5E+3", "1500"),
            ("25E-9", "0.000000025"),
            ("0.000000001", "0.000000001"),
            ("1.0000000000000", "1"),
            (
                "99999999999999999999999999999.999999999",
                "99999999999999999999999999999.999999999",
            ),
        ] {
            assert_eq!(n(text).as_deref(), Ok(shown), "{text}");
        }
        assert!(matches!(
            n("0.0000000001"),
            Err(NumericError::TooPrecise(_))
        ));
        assert!(matches!(n("1E-10"), Err(NumericError::TooPrecise(_))));
        assert!(matches!(n("1E+40"), Err(NumericError::OutOfRange(_))));
        assert!(matches!(
            n("1E+4000000000"),
            Err(NumericError::OutOfRange(_))
        ));
        for bad in ["", ".", "-", "1.2.3", "1,5", "abc", "1e", "--1", "1 "] {
            assert!(matches!(n(bad), Err(NumericError::Syntax(_))), "{bad:?}");
        }
    }

    #[test]
    fn numeric_sums_are_exact() {
        let total = ["0.1", "0.2", "318.90", "-0.3"]
            .iter()
            .map(|s| s.parse::<Numeric>().unwrap())
            .try_fold(Numeric::ZERO, Numeric::checked_add)
            .unwrap();
        assert_eq!(total.to_string(), "318.9");
        assert_eq!(
            Numeric::from_decimal(Decimal::new(31890, 2)).unwrap(),
            "318.9".parse().unwrap()
        );
        assert_eq!(
            Numeric::from_nanos(i128::MAX).checked_add(Numeric::from_nanos(1)),
            None
        );
        assert_eq!(
            serde_json::to_string(&Numeric::from_nanos(1_500_000_000)).unwrap(),
            "\"1.5\""
        );
    }

    #[test]
    fn views_name_the_project_and_dataset_everywhere() {
        for v in VIEWS {
            let ddl = v.create_or_replace("my-project", "nfe");
            assert!(ddl.starts_with(&format!(
                "CREATE OR REPLACE VIEW `my-project.nfe.{}`\n",
                v.name
            )));
            assert!(!ddl.contains('{') && !ddl.contains('}'), "{ddl}");
            assert!(!v.description.contains('"') && !v.description.contains('\n'));
            let tables = ddl.matches("`my-project.nfe.").count();
            assert_eq!(tables, ddl.matches('`').count() / 2, "{ddl}");
        }
        // The items view picks the version chosen by the invoices view, which is created first.
        assert_eq!(VIEWS[0], INVOICES_CURRENT);
        assert!(INVOICE_ITEMS_CURRENT.query.contains(&format!(
            "`{{project}}.{{dataset}}.{}`",
            INVOICES_CURRENT.name
        )));
        for table in [INVOICES.name, INVOICE_ITEMS.name] {
            assert!(VIEWS.iter().any(|v| v
                .query
                .contains(&format!("`{{project}}.{{dataset}}.{table}`"))));
        }
    }
}
