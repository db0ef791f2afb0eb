//! The BigQuery rows of an invoice, written straight into the Storage Write API's protobuf format.
//!
//! The columns are looked up once, by name and type, in the schemas the sink read from BigQuery at start:
//! a table that lacks a column or has it with another type stops the pipeline before it reads anything.
//! The values are the ones `nfe::bigquery::invoice_row` / `item_rows` give as text (tested below), in
//! the proto encodings of their types: `TIMESTAMP` as microseconds, `DATE` as days since 1970-01-01,
//! `NUMERIC` as exact decimal text.

use fluxo_gcp::bigquery::proto::{Date, Int64, Text, Timestamp};
use fluxo_gcp::bigquery::{BigQueryError, BigQuerySink, Column, TableRow, WriterSchema};
use nfe::bigquery::NumericText as Numeric;
use nfe::Invoice;

/// Columns of `invoices`.
#[derive(Clone, Copy, Debug)]
struct InvoiceColumns {
    nfe_id: Column<Int64>,
    nfe_number: Column<Int64>,
    emission_time: Column<Timestamp>,
    emission_date: Column<Date>,
    emission_raw: Column<Text>,
    creation_time: Column<Timestamp>,
    creation_raw: Column<Text>,
    discount: Column<Text>,
    gross: Column<Text>,
    net: Column<Text>,
    item_count: Column<Int64>,
    content_hash: Column<Text>,
    message_id: Column<Text>,
    publish_time: Column<Timestamp>,
    worker: Column<Text>,
    pipeline_version: Column<Text>,
}

/// Columns of `invoice_items`.
#[derive(Clone, Copy, Debug)]
struct ItemColumns {
    nfe_id: Column<Int64>,
    line_number: Column<Int64>,
    emission_date: Column<Date>,
    product_name: Column<Text>,
    product_key: Column<Text>,
    unit_value: Column<Text>,
    quantity: Column<Text>,
    line_total: Column<Text>,
    content_hash: Column<Text>,
}

/// How an invoice becomes rows of `invoices` and `invoice_items`.
#[derive(Clone, Debug)]
pub struct BigQueryLayout {
    invoices: WriterSchema,
    items: WriterSchema,
    inv: InvoiceColumns,
    item: ItemColumns,
}

/// Days from 1970-01-01 to `d`.
fn epoch_days(d: jiff::civil::Date) -> i32 {
    let secs = d.duration_since(jiff::civil::date(1970, 1, 1)).as_secs();
    // A civil date is within +-9999 years: the day count always fits.
    (secs / 86_400) as i32
}

impl BigQueryLayout {
    /// The layout for the sink's tables `invoices` and `invoice_items`.
    pub fn new(sink: &BigQuerySink) -> Result<Self, BigQueryError> {
        let schema = |name: &str| {
            sink.schema(name).cloned().ok_or_else(|| {
                BigQueryError::Invalid(format!("the BigQuery sink does not write table '{name}'"))
            })
        };
        Self::from_schemas(
            schema(nfe::bigquery::INVOICES.name)?,
            schema(nfe::bigquery::INVOICE_ITEMS.name)?,
        )
    }

    /// The layout for the given row layouts of `invoices` and `invoice_items`.
    pub fn from_schemas(
        invoices: WriterSchema,
        items: WriterSchema,
    ) -> Result<Self, BigQueryError> {
        let t = &invoices;
        let inv = InvoiceColumns {
            nfe_id: t.column("nfe_id")?,
            nfe_number: t.column("nfe_number")?,
            emission_time: t.column("emission_time")?,
            emission_date: t.column("emission_date")?,
            emission_raw: t.column("emission_raw")?,
            creation_time: t.column("creation_time")?,
            creation_raw: t.column("creation_raw")?,
            discount: t.column("discount")?,
            gross: t.column("gross")?,
            net: t.column("net")?,
            item_count: t.column("item_count")?,
            content_hash: t.column("content_hash")?,
            message_id: t.column("message_id")?,
            publish_time: t.column("publish_time")?,
            worker: t.column("worker")?,
            pipeline_version: t.column("pipeline_version")?,
        };
        let t = &items;
        let item = ItemColumns {
            nfe_id: t.column("nfe_id")?,
            line_number: t.column("line_number")?,
            emission_date: t.column("emission_date")?,
            product_name: t.column("product_name")?,
            product_key: t.column("product_key")?,
            unit_value: t.column("unit_value")?,
            quantity: t.column("quantity")?,
            line_total: t.column("line_total")?,
            content_hash: t.column("content_hash")?,
        };
        Ok(BigQueryLayout {
            invoices,
            items,
            inv,
            item,
        })
    }

    /// One `invoices` row and one `invoice_items` row per line.
    pub fn rows(&self, inv: &Invoice) -> Vec<TableRow> {
        let mut rows = Vec::with_capacity(1 + inv.items.len());
        let c = &self.inv;
        let mut e = self.invoices.encoder();
        let date = epoch_days(inv.emission_date);
        let hash = inv.content_hash.to_hex();
        e.int64(c.nfe_id, inv.nfe_id);
        e.int64(c.nfe_number, inv.nfe_number);
        e.timestamp_micros(c.emission_time, inv.emission.utc.as_microsecond());
        e.date_days(c.emission_date, date);
        e.text(c.emission_raw, &inv.emission.original);
        e.timestamp_micros(c.creation_time, inv.creation.utc.as_microsecond());
        e.text(c.creation_raw, &inv.creation.original);
        e.text_display(c.discount, Numeric(inv.discount));
        e.text_display(c.gross, Numeric(inv.gross));
        e.text_display(c.net, Numeric(inv.net));
        e.int64(c.item_count, i64::from(inv.item_count));
        e.text(c.content_hash, &hash);
        if let Some(m) = &inv.ingest {
            if let Some(id) = &m.message_id {
                e.text(c.message_id, id);
            }
            if let Some(t) = m.publish_time {
                e.timestamp_micros(c.publish_time, t.as_microsecond());
            }
            if let Some(w) = &m.worker {
                e.text(c.worker, w);
            }
            if let Some(v) = &m.version {
                e.text(c.pipeline_version, v);
            }
        }
        rows.push(e.finish());
        let c = &self.item;
        let mut e = self.items.encoder();
        for l in &inv.items {
            e.int64(c.nfe_id, inv.nfe_id);
            e.int64(c.line_number, i64::from(l.line_number));
            e.date_days(c.emission_date, date);
            e.text(c.product_name, &l.product_name);
            e.text(c.product_key, &l.product_key);
            e.text_display(c.unit_value, Numeric(l.unit_value));
            e.text_display(c.quantity, Numeric(l.quantity));
            e.text_display(c.line_total, Numeric(l.line_total));
            e.text(c.content_hash, &hash);
            rows.push(e.finish());
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// `invoices` rows as a second, independent reading: prost's decoder with the field numbers of the
    /// schema file's column order.
    #[derive(Clone, PartialEq, prost::Message)]
    struct InvoiceProto {
        #[prost(int64, optional, tag = "1")]
        nfe_id: Option<i64>,
        #[prost(int64, optional, tag = "2")]
        nfe_number: Option<i64>,
        #[prost(int64, optional, tag = "3")]
        emission_time: Option<i64>,
        #[prost(int32, optional, tag = "4")]
        emission_date: Option<i32>,
        #[prost(string, optional, tag = "5")]
        emission_raw: Option<String>,
        #[prost(int64, optional, tag = "6")]
        creation_time: Option<i64>,
        #[prost(string, optional, tag = "7")]
        creation_raw: Option<String>,
        #[prost(string, optional, tag = "8")]
        discount: Option<String>,
        #[prost(string, optional, tag = "9")]
        gross: Option<String>,
        #[prost(string, optional, tag = "10")]
        net: Option<String>,
        #[prost(int64, optional, tag = "11")]
        item_count: Option<i64>,
        #[prost(string, optional, tag = "12")]
        content_hash: Option<String>,
        #[prost(string, optional, tag = "13")]
        message_id: Option<String>,
        #[prost(int64, optional, tag = "14")]
        publish_time: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ItemProto {
        #[prost(int64, optional, tag = "2")]
        line_number: Option<i64>,
        #[prost(int32, optional, tag = "3")]
        emission_date: Option<i32>,
        #[prost(string, optional, tag = "4")]
        product_name: Option<String>,
        #[prost(string, optional, tag = "6")]
        unit_value: Option<String>,
        #[prost(string, optional, tag = "8")]
        line_total: Option<String>,
    }

    fn layout() -> BigQueryLayout {
        let fields = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap();
        let invoices =
            WriterSchema::from_fields("invoices", 0, &fields(nfe::bigquery::INVOICES_SCHEMA))
                .unwrap();
        let items = WriterSchema::from_fields(
            "invoice_items",
            1,
            &fields(nfe::bigquery::INVOICE_ITEMS_SCHEMA),
        )
        .unwrap();
        BigQueryLayout::from_schemas(invoices, items).unwrap()
    }

    #[test]
    fn rows_carry_the_values_of_the_text_rows() {
        let validator = nfe::ValidationConfig {
            earliest_year: 1971,
            ..nfe::ValidationConfig::default()
        }
        .build()
        .unwrap();
        let raw = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"1971-01-01T00:30:00",
          "Discount":0.5,"NFeNumber":503,"NFeID":9223372036854775807,"ItemList":[
          {"ProductName":"Beer","Value":9.005,"Quantity":6},
          {"ProductName":"  Rice  ","Value":18446744073709551616,"Quantity":0.001}]}"#;
        let inv = validator
            .process(raw)
            .unwrap()
            .with_ingest(nfe::IngestMeta {
                message_id: Some("m-1".into()),
                publish_time: Some(
                    jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap(),
                ),
                worker: None,
                version: None,
            });
        let rows = layout().rows(&inv);
        assert_eq!(rows.len(), 3);
        let text = nfe::bigquery::invoice_row(&inv).row;
        let got = InvoiceProto::decode(rows[0].data()).unwrap();
        assert_eq!(rows[0].table_index(), 0);
        assert_eq!(got.nfe_id, Some(text.nfe_id));
        assert_eq!(got.nfe_number, Some(text.nfe_number));
        assert_eq!(
            got.emission_time,
            Some(
                text.emission_time
                    .parse::<jiff::Timestamp>()
                    .unwrap()
                    .as_microsecond()
            )
        );
        // 1971-01-01 in Sao Paulo: day 365.
        let days = text
            .emission_date
            .parse::<jiff::civil::Date>()
            .unwrap()
            .since(jiff::civil::date(1970, 1, 1))
            .unwrap()
            .get_days();
        assert_eq!(got.emission_date, Some(days));
        assert_eq!(days, 365);
        assert_eq!(got.emission_raw.as_deref(), Some(&*text.emission_raw));
        assert_eq!(got.creation_raw.as_deref(), Some(&*text.creation_raw));
        assert_eq!(got.discount.as_deref(), Some(&*text.discount));
        assert_eq!(got.gross.as_deref(), Some(&*text.gross));
        assert_eq!(got.net.as_deref(), Some(&*text.net));
        assert_eq!(got.item_count, Some(2));
        assert_eq!(got.content_hash.as_deref(), Some(&*text.content_hash));
        assert_eq!(got.message_id.as_deref(), Some("m-1"));
        assert_eq!(got.publish_time, Some(1_700_000_000_123_456));
        for (row, want) in rows[1..].iter().zip(nfe::bigquery::item_rows(&inv)) {
            assert_eq!(row.table_index(), 1);
            let got = ItemProto::decode(row.data()).unwrap();
            let want = want.row;
            assert_eq!(got.line_number, Some(want.line_number));
            assert_eq!(got.emission_date, Some(days));
            assert_eq!(got.product_name.as_deref(), Some(&*want.product_name));
            assert_eq!(got.unit_value.as_deref(), Some(&*want.unit_value));
            assert_eq!(got.line_total.as_deref(), Some(&*want.line_total));
        }
    }

    /// A table whose schema drifted (here `quantity` created as INTEGER) stops the pipeline at start,
    /// before any row is refused.
    #[test]
    fn schema_drift_is_refused_at_start() {
        let fields = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap();
        let invoices =
            WriterSchema::from_fields("invoices", 0, &fields(nfe::bigquery::INVOICES_SCHEMA))
                .unwrap();
        let drifted = nfe::bigquery::INVOICE_ITEMS_SCHEMA.replace(
            r#"{"name": "quantity", "type": "NUMERIC""#,
            r#"{"name": "quantity", "type": "INTEGER""#,
        );
        assert_ne!(drifted, nfe::bigquery::INVOICE_ITEMS_SCHEMA);
        let items = WriterSchema::from_fields("invoice_items", 1, &fields(&drifted)).unwrap();
        let err = BigQueryLayout::from_schemas(invoices, items)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "column 'invoice_items.quantity' is Int64, not STRING, NUMERIC, BIGNUMERIC, DATETIME, TIME, JSON or GEOGRAPHY"
        );
    }

    #[test]
    fn epoch_days_across_the_epoch() {
        assert_eq!(epoch_days(jiff::civil::date(1970, 1, 1)), 0);
        assert_eq!(epoch_days(jiff::civil::date(1969, 12, 31)), -1);
        assert_eq!(epoch_days(jiff::civil::date(2000, 3, 1)), 11_017);
        assert_eq!(epoch_days(jiff::civil::date(9999, 12, 31)), 2_932_896);
        assert_eq!(epoch_days(jiff::civil::date(-9999, 1, 1)), -4_371_587);
    }
}
