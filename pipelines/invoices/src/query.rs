//! Reading back: one invoice by id (one Bigtable row read), invoices of an emission-date range (one
//! range scan per index bucket, merged), and an inventory of what every store holds (plain counts
//! and exact sums; BigQuery through its views and in its raw tables), counted independently of the
//! pipeline's own report.

use std::collections::BTreeMap;

use bytes::Bytes;
use fluxo_gcp::bigquery::{BigQueryAdmin, ClientConfig};
use fluxo_gcp::bigtable::{BigtableReader, KeyRange, ReadRow};
use fluxo_gcp::storage::{Location, Store, StoreOptions};
use nfe::bigquery::Numeric;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Profile;
use crate::graph;
use crate::Error;

fn read_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Read(format!("{what}: {e}"))
}

/// Connects a reader to the profile's table.
pub async fn reader(p: &Profile) -> Result<BigtableReader, Error> {
    Ok(BigtableReader::connect(&crate::bigtable_settings(p)).await?)
}

/// The cells of a row as a JSON object `{qualifier: value}`; the `items` cell is parsed as JSON, the
/// cell timestamp is given as `version_micros`.
pub fn row_json(row: &ReadRow) -> Value {
    let mut out = Map::new();
    out.insert(
        "row_key".into(),
        Value::String(String::from_utf8_lossy(&row.key).into_owned()),
    );
    let mut version = None;
    for c in &row.cells {
        let name = String::from_utf8_lossy(&c.qualifier).into_owned();
        if out.contains_key(&name) {
            continue; // older version of the same column
        }
        version = version.max(Some(c.timestamp_micros));
        let text = String::from_utf8_lossy(&c.value).into_owned();
        let value = if name == "items" {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        out.insert(name, value);
    }
    if let Some(v) = version {
        out.insert("version_micros".into(), Value::from(v));
    }
    Value::Object(out)
}

/// The invoice `nfe_id` as stored in Bigtable, or `None`.
pub async fn get_invoice(reader: &BigtableReader, nfe_id: i64) -> Result<Option<Value>, Error> {
    let row = reader
        .read_row(Bytes::from(nfe::bigtable::row_key(nfe_id)))
        .await
        .map_err(|e| read_err("Bigtable read", e))?;
    Ok(row.as_ref().map(row_json))
}

/// One entry of the emission-date index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    /// Emission instant, UTC, millisecond precision (`YYYYMMDDHHMMSSmmm` from the key).
    pub emission_utc: String,
    /// `NFeID`.
    pub nfe_id: i64,
    /// Index cells (`number`, `net`, `item_count`, `hash`).
    pub cells: BTreeMap<String, String>,
}

fn index_entry(row: &ReadRow) -> Option<IndexEntry> {
    // e#BB#YYYYMMDDHHMMSSmmm#IIIIIIIIIIIIIIIIIII
    let key = std::str::from_utf8(&row.key).ok()?;
    let mut parts = key.split('#');
    let (_, _, emission, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut cells = BTreeMap::new();
    for c in &row.cells {
        cells
            .entry(String::from_utf8_lossy(&c.qualifier).into_owned())
            .or_insert_with(|| String::from_utf8_lossy(&c.value).into_owned());
    }
    Some(IndexEntry {
        emission_utc: emission.to_string(),
        nfe_id: id.parse().ok()?,
        cells,
    })
}

/// Invoices emitted in `[from, to)`, in emission order (ties by id), at most `limit` (0 = all): one scan
/// per index bucket, run concurrently, then merged.
pub async fn list_by_emission(
    reader: &BigtableReader,
    layout: &nfe::BigtableLayout,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
    limit: usize,
) -> Result<Vec<IndexEntry>, Error> {
    let scans = layout.emission_scan(from, to).into_iter().map(|r| {
        reader.scan(
            KeyRange {
                start: r.start.into(),
                end: r.end.into(),
            },
            limit as u64,
        )
    });
    let mut out = Vec::new();
    for rows in futures::future::join_all(scans).await {
        let rows = rows.map_err(|e| read_err("Bigtable scan", e))?;
        out.extend(rows.iter().filter_map(index_entry));
    }
    out.sort_by(|a, b| (&a.emission_utc, a.nfe_id).cmp(&(&b.emission_utc, b.nfe_id)));
    if limit > 0 {
        out.truncate(limit);
    }
    Ok(out)
}

/// What every store holds, counted from the stores themselves. Sums are exact (see
/// [`Numeric`]); in JSON they are decimal strings (`"318.9"`).
///
/// BigQuery is counted twice: through the views `invoices_current` / `invoice_items_current`, the
/// query surface (each invoice and each line once, in its current version), and in the raw tables,
/// which keep every copy written (redeliveries, retries, replays: the delivery is at least once) and
/// every version. `*_current` equals what Bigtable holds; the raw counts show the duplicates.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Inventory {
    /// Bigtable invoice rows (`i#...`).
    pub bigtable_invoice_rows: u64,
    /// Bigtable emission-index rows (`e#...`).
    pub bigtable_index_rows: u64,
    /// Sum of the invoice rows' `h:net` (the newest cell of each).
    pub bigtable_net: Numeric,
    /// Lines in the invoice rows' `l:items` cells.
    pub bigtable_items: u64,
    /// Sum of those lines' `total`.
    pub bigtable_line_total: Numeric,
    /// `COUNT(*)` of the view `invoices_current`: one row per invoice.
    pub bigquery_invoices_current: u64,
    /// `SUM(net)` of `invoices_current`.
    pub bigquery_net_current: Numeric,
    /// `COUNT(*)` of the view `invoice_items_current`: one row per line.
    pub bigquery_items_current: u64,
    /// `SUM(line_total)` of `invoice_items_current`.
    pub bigquery_line_total_current: Numeric,
    /// `COUNT(*)` of the table `invoices`: every copy of every version.
    pub bigquery_invoices: u64,
    /// Distinct `(nfe_id, content_hash)` in `invoices`: the versions.
    pub bigquery_invoices_distinct: u64,
    /// `SUM(net)` of the table `invoices` (each copy counted).
    pub bigquery_net: Numeric,
    /// `COUNT(*)` of the table `invoice_items`.
    pub bigquery_items: u64,
    /// Distinct `(nfe_id, content_hash, line_number)` in `invoice_items`.
    pub bigquery_items_distinct: u64,
    /// `SUM(line_total)` of the table `invoice_items` (each copy counted).
    pub bigquery_line_total: Numeric,
    /// Cloud Storage objects per prefix (`raw`, `raw-late`, `processed/invoice_lines`, `dead-letter`).
    pub objects: BTreeMap<String, u64>,
    /// Records in the raw archive (`raw/` and `raw-late/`).
    pub raw_records: u64,
    /// Dead-letter objects by error code (a record with several codes counts under each).
    pub dead_letters_by_code: BTreeMap<String, u64>,
}

/// Sums `value` (exact decimal text) into `total`.
fn add_text(total: &mut Numeric, value: &str, what: &str) -> Result<(), Error> {
    let v: Numeric = value.parse().map_err(|e| read_err(what, e))?;
    *total = total
        .checked_add(v)
        .ok_or_else(|| read_err(what, "the sum overflows"))?;
    Ok(())
}

/// Invoice rows, their net total, their lines and the lines' total, from the newest cells.
async fn bigtable_totals(reader: &BigtableReader, inv: &mut Inventory) -> Result<(), Error> {
    let rows = reader
        .scan_prefix(Bytes::from_static(nfe::bigtable::INVOICE_PREFIX), 0)
        .await
        .map_err(|e| read_err("Bigtable scan", e))?;
    inv.bigtable_invoice_rows = rows.len() as u64;
    for row in &rows {
        let key = String::from_utf8_lossy(&row.key);
        let what = format!("Bigtable row {key}");
        let cells = row_json(row);
        let net = cells["net"]
            .as_str()
            .ok_or_else(|| read_err(&what, "no h:net cell"))?;
        add_text(&mut inv.bigtable_net, net, &what)?;
        let lines = cells["items"]
            .as_array()
            .ok_or_else(|| read_err(&what, "no l:items cell with a JSON array"))?;
        inv.bigtable_items += lines.len() as u64;
        for line in lines {
            let total = line["total"]
                .as_str()
                .ok_or_else(|| read_err(&what, "a line without a total"))?;
            add_text(&mut inv.bigtable_line_total, total, &what)?;
        }
    }
    Ok(())
}

async fn count_prefix(reader: &BigtableReader, prefix: &'static [u8]) -> Result<u64, Error> {
    let rows = reader
        .scan_prefix(Bytes::from_static(prefix), 0)
        .await
        .map_err(|e| read_err("Bigtable scan", e))?;
    Ok(rows.len() as u64)
}

/// The first row of a query as cells, or an error naming the query.
async fn bq_first_row(admin: &BigQueryAdmin, sql: &str) -> Result<Map<String, Value>, Error> {
    let result = admin
        .query(sql)
        .await
        .map_err(|e| read_err("BigQuery query", e))?;
    result
        .records()
        .into_iter()
        .next()
        .ok_or_else(|| read_err("BigQuery query", format!("no row from {sql}")))
}

fn cell_u64(row: &Map<String, Value>, name: &str) -> Result<u64, Error> {
    let v = row.get(name).unwrap_or(&Value::Null);
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| read_err("BigQuery query", format!("unexpected {name} {v}")))
}

fn cell_numeric(row: &Map<String, Value>, name: &str) -> Result<Numeric, Error> {
    match row.get(name).unwrap_or(&Value::Null) {
        Value::String(s) => s.parse().map_err(|e| read_err("BigQuery query", e)),
        v => Err(read_err("BigQuery query", format!("unexpected {name} {v}"))),
    }
}

/// `COUNT(*)` and the exact `SUM(column)` of a table or view (`NUMERIC`, read as text, never as a
/// float; `COALESCE` because the sum of no row is `NULL`).
async fn bq_count_sum(
    admin: &BigQueryAdmin,
    from: &str,
    column: &str,
) -> Result<(u64, Numeric), Error> {
    let row = bq_first_row(
        admin,
        &format!("SELECT COUNT(*) AS n, COALESCE(SUM({column}), 0) AS total FROM {from}"),
    )
    .await?;
    Ok((cell_u64(&row, "n")?, cell_numeric(&row, "total")?))
}

async fn bq_count(admin: &BigQueryAdmin, sql: &str) -> Result<u64, Error> {
    cell_u64(&bq_first_row(admin, sql).await?, "n")
}

/// Counts everything the profile's stores hold.
pub async fn inventory(p: &Profile) -> Result<Inventory, Error> {
    let mut inv = Inventory::default();
    let bt = reader(p).await?;
    bigtable_totals(&bt, &mut inv).await?;
    inv.bigtable_index_rows = count_prefix(&bt, nfe::bigtable::INDEX_PREFIX).await?;

    let bq = BigQueryAdmin::connect(&p.project, &ClientConfig::default()).await?;
    let (project, dataset) = (p.project.as_str(), p.bigquery_dataset.as_str());
    let table = |t: &str| format!("`{project}.{dataset}.{t}`");
    let (head, items) = (
        table(nfe::bigquery::INVOICES.name),
        table(nfe::bigquery::INVOICE_ITEMS.name),
    );
    let (head_view, items_view) = (
        nfe::bigquery::INVOICES_CURRENT.qualified(project, dataset),
        nfe::bigquery::INVOICE_ITEMS_CURRENT.qualified(project, dataset),
    );
    (inv.bigquery_invoices_current, inv.bigquery_net_current) =
        bq_count_sum(&bq, &head_view, "net").await?;
    (inv.bigquery_items_current, inv.bigquery_line_total_current) =
        bq_count_sum(&bq, &items_view, "line_total").await?;
    (inv.bigquery_invoices, inv.bigquery_net) = bq_count_sum(&bq, &head, "net").await?;
    (inv.bigquery_items, inv.bigquery_line_total) = bq_count_sum(&bq, &items, "line_total").await?;
    inv.bigquery_invoices_distinct = bq_count(
        &bq,
        &format!("SELECT COUNT(*) AS n FROM (SELECT DISTINCT nfe_id, content_hash FROM {head})"),
    )
    .await?;
    inv.bigquery_items_distinct = bq_count(
        &bq,
        &format!(
            "SELECT COUNT(*) AS n FROM (SELECT DISTINCT nfe_id, content_hash, line_number FROM {items})"
        ),
    )
    .await?;

    let location = Location::parse(&p.archive_url, "archive_url")?;
    let store = Store::open(&location, StoreOptions::default()).await?;
    for prefix in [
        graph::RAW_PREFIX,
        graph::RAW_LATE_PREFIX,
        graph::PROCESSED_PREFIX,
        graph::DEAD_LETTER_PREFIX,
    ] {
        let objects = store
            .list(&format!("{prefix}/"))
            .await
            .map_err(|e| read_err("Cloud Storage list", e))?;
        inv.objects.insert(prefix.to_string(), objects.len() as u64);
        if prefix == graph::DEAD_LETTER_PREFIX {
            for o in &objects {
                let d = read_dead_letter(&store, &o.name).await?;
                for c in d.codes() {
                    *inv.dead_letters_by_code
                        .entry(c.as_str().to_string())
                        .or_default() += 1;
                }
            }
        }
        if prefix == graph::RAW_PREFIX || prefix == graph::RAW_LATE_PREFIX {
            for o in &objects {
                let body = store
                    .get(&o.name)
                    .await
                    .map_err(|e| read_err("Cloud Storage read", e))?;
                let text = if o.name.ends_with(".gz") {
                    fluxo_gcp::storage::gunzip(&body)
                        .map_err(|e| read_err(&format!("raw object {}", o.name), e))?
                } else {
                    body.to_vec()
                };
                inv.raw_records += text
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count() as u64;
            }
        }
    }
    Ok(inv)
}

async fn read_dead_letter(store: &Store, name: &str) -> Result<nfe::DeadLetter, Error> {
    let body = store
        .get(name)
        .await
        .map_err(|e| read_err("Cloud Storage read", e))?;
    serde_json::from_slice(&body).map_err(|e| read_err(&format!("dead letter {name}"), e))
}

/// One dead letter, as listed by `invoices dead-letters`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// Object name under the archive root.
    pub object: String,
    /// Stage that produced it (`validate`, `sink`, `delivery`, ...).
    pub stage: String,
    /// Distinct error codes.
    pub codes: Vec<String>,
    /// Pub/Sub message id, when known.
    pub message_id: Option<String>,
    /// When it failed (RFC 3339).
    pub failed_at: String,
    /// Size of the record's raw bytes.
    pub raw_bytes: u64,
    /// Issues found (kept and omitted).
    pub issues: u64,
    /// The first issue, as `CODE at PATH: message`.
    pub first_issue: Option<String>,
}

/// What `invoices dead-letters` prints: counts over every dead-letter object under the prefix, and the
/// newest entries.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// Objects under the prefix (one per failed record).
    pub objects: u64,
    /// Dead letters by error code (a record with several codes counts under each).
    pub by_code: BTreeMap<String, u64>,
    /// Dead letters by stage.
    pub by_stage: BTreeMap<String, u64>,
    /// The newest entries (by object name: partition then hash), at most the limit asked.
    pub newest: Vec<DeadLetterEntry>,
}

/// Lists and counts the dead-letter objects under `prefix` (default `dead-letter/`), keeping the
/// `limit` newest entries.
pub async fn dead_letters(
    p: &Profile,
    prefix: Option<&str>,
    limit: usize,
) -> Result<DeadLetterSummary, Error> {
    let location = Location::parse(&p.archive_url, "archive_url")?;
    let store = Store::open(&location, StoreOptions::default()).await?;
    let prefix = prefix
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/", graph::DEAD_LETTER_PREFIX));
    let mut objects = store
        .list(&prefix)
        .await
        .map_err(|e| read_err("Cloud Storage list", e))?;
    objects.sort_by(|a, b| b.name.cmp(&a.name));
    let mut out = DeadLetterSummary {
        objects: objects.len() as u64,
        ..DeadLetterSummary::default()
    };
    for (i, o) in objects.iter().enumerate() {
        let d = read_dead_letter(&store, &o.name).await?;
        let codes: Vec<String> = d.codes().iter().map(|c| c.as_str().to_string()).collect();
        for c in &codes {
            *out.by_code.entry(c.clone()).or_default() += 1;
        }
        *out.by_stage.entry(d.stage.clone()).or_default() += 1;
        if i < limit {
            out.newest.push(DeadLetterEntry {
                object: o.name.clone(),
                stage: d.stage.clone(),
                codes,
                message_id: d.source.message_id.clone(),
                failed_at: d.failed_at.to_string(),
                raw_bytes: d.raw_size.unwrap_or(d.raw.0.len() as u64),
                issues: d.issues.len() as u64 + d.issues_omitted,
                first_issue: d.issues.first().map(|i| i.to_string()),
            });
        }
    }
    Ok(out)
}

/// A message waiting on the dead-letter subscription.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PendingDeadLetter {
    /// Its message id on the dead-letter topic.
    pub message_id: String,
    /// Publish time on the dead-letter topic (RFC 3339).
    pub publish_time: String,
    /// Attributes: the pipeline's (`stage`, `codes`, `raw_sha256`, ...), or for a message Pub/Sub
    /// forwarded after `max_delivery_attempts`, the original attributes plus Pub/Sub's
    /// `CloudPubSubDeadLetterSource*` ones.
    pub attributes: BTreeMap<String, String>,
    /// Size of the data.
    pub data_bytes: u64,
}

/// Peeks at up to `max` messages waiting on the dead-letter subscription without consuming them: they
/// are pulled, then handed back at once (`ModifyAckDeadline 0`).
pub async fn peek_dead_letter_subscription(
    p: &Profile,
    max: usize,
) -> Result<Vec<PendingDeadLetter>, Error> {
    use fluxo_gcp::pubsub::raw::proto::{ModifyAckDeadlineRequest, PullRequest};
    use fluxo_gcp::pubsub::{Endpoint, PubsubClient};
    let client = PubsubClient::connect(Endpoint::pubsub(None)?, &p.project).await?;
    let subscription = client.subscription_path(&p.dead_letter_subscription())?;
    let mut out = Vec::new();
    let mut ack_ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while out.len() < max {
        #[allow(deprecated)]
        let req = PullRequest {
            subscription: subscription.clone(),
            max_messages: (max - out.len()).min(1000) as i32,
            return_immediately: true,
        };
        let resp = client
            .subscriber()
            .pull(req, None)
            .await
            .map_err(|e| read_err("Pub/Sub pull", e.message()))?
            .into_inner();
        let mut fresh = 0;
        for rm in resp.received_messages {
            ack_ids.push(rm.ack_id);
            let Some(m) = rm.message else { continue };
            if !seen.insert(m.message_id.clone()) {
                continue;
            }
            fresh += 1;
            let publish_time = m
                .publish_time
                .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                .map(|t| t.to_string())
                .unwrap_or_default();
            out.push(PendingDeadLetter {
                message_id: m.message_id,
                publish_time,
                attributes: m.attributes.into_iter().collect(),
                data_bytes: m.data.len() as u64,
            });
        }
        if fresh == 0 {
            break;
        }
    }
    for chunk in ack_ids.chunks(1000) {
        let req = ModifyAckDeadlineRequest {
            subscription: subscription.clone(),
            ack_ids: chunk.to_vec(),
            ack_deadline_seconds: 0,
        };
        client
            .subscriber()
            .modify_ack_deadline(req, None)
            .await
            .map_err(|e| read_err("Pub/Sub modify_ack_deadline", e.message()))?;
    }
    Ok(out)
}
