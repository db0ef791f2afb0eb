//! BigQuery layout: the `invoices` / `invoice_items` schemas, their partitioning and clustering,
//! and the JSON rows (with stable insert ids) produced from an enriched invoice.
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

/// `NUMERIC` text: exact, at most 9 fractional digits (trailing zeros dropped if needed).
///
/// Dropping trailing zeros is enough for a validated invoice: its amounts have at most
/// `max_value_fraction_digits + max_quantity_fraction_digits <= 9` significant fractional digits
/// (the config refuses more), and a decimal's 29 integer digits fit `NUMERIC`'s 29. Nothing here
/// rounds.
fn numeric(d: Decimal) -> String {
    if d.scale() > 9 {
        d.normalize().to_string()
    } else {
        d.to_string()
    }
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
