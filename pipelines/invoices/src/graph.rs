//! The pipeline graph, built by pure functions over a collection of received messages, so that the
//! streaming run (Pub/Sub) and the replay (the raw archive) share every step after the source.
//!
//! ```text
//! messages ─┬─ RawWindows (hourly, publish time) ─ RouteLate ─┬─ on time ─> raw/       (Cloud Storage)
//!           │                                                └─ late ────> raw-late/  (Cloud Storage)
//!           └─ Validate (parse, validate, enrich; parallel) ─┬─ invoices ─┬─ BigtableRows ─> Bigtable
//!                                                            │            ├─ BigQueryRows ─> BigQuery
//!                                                            │            └─ ProcessedLines ─> processed/ (Parquet)
//!                                                            └─ dead letters ─┬─> dead-letter/ (Cloud Storage)
//!                                                                             └─> dead-letter topic (Pub/Sub)
//! ```
//!
//! The replay ([`build_replay`]) reads raw-archive lines instead of messages: its Validate step
//! ([`ValidateArchived`]) decodes each line back into the message it archived, and the raw archive
//! is not written again; everything from Validate on is the same.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use fluxo::{
    Data, DoFn, DoFnContext, OutputTag, PCollection, Shared, SinkConfig, Tagged, Timestamp,
    Windowing,
};
use fluxo_gcp::bigquery::BigQuerySink;
use fluxo_gcp::bigtable::{BigtableSink, RowMutation, SetCell};
use fluxo_gcp::pubsub::{PubsubMessage, PubsubOut, PubsubSink};
use fluxo_gcp::storage::{ObjectKey, ParquetFormat, Record, StorageSink, Value};
use nfe::{DeadLetter, ErrorCode, IngestMeta, Invoice, Issue, SourceMeta};

/// Largest dead-letter message on the dead-letter topic (its JSON). A dead letter whose full form is
/// larger goes there in its short form (the first 64 KiB of the record, a reference to the Cloud
/// Storage object that holds every byte), which is at most `nfe::SHORT_FORM_MAX_BYTES`; with its
/// attributes it stays under the Pub/Sub sink's request limit (checked by a test).
pub const DEAD_LETTER_MESSAGE_MAX_BYTES: usize = 4 << 20;
// The short form always fits the budget.
const _: () = assert!(nfe::SHORT_FORM_MAX_BYTES <= DEAD_LETTER_MESSAGE_MAX_BYTES);
use serde::{Deserialize, Serialize};

use crate::latency::LatencySink;
use crate::metrics::DeadLetterCodes;

/// Object prefix of the raw archive (records within their window's allowed lateness).
pub const RAW_PREFIX: &str = "raw";
/// Object prefix of raw records that arrived after their window's allowed lateness.
pub const RAW_LATE_PREFIX: &str = "raw-late";
/// Object prefix of the processed archive (one Parquet row per invoice line).
pub const PROCESSED_PREFIX: &str = "processed/invoice_lines";
/// Object prefix of dead letters.
pub const DEAD_LETTER_PREFIX: &str = nfe::storage::DEAD_LETTER_PREFIX;
/// Attribute set by `ingest` on a record whose `NFeID` already appeared earlier in its page.
pub const DUPLICATE_OF_ATTRIBUTE: &str = "duplicate_of";

/// A received message as archived in `raw/`: its exact bytes and its Pub/Sub metadata, one JSON
/// object per line. `data` is `{"encoding":"utf8","data":"<text>"}` for UTF-8 payloads, else base64;
/// both give the bytes back exactly. Replays rebuild the message from it, so the rows they write
/// are the streaming run's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedMessage {
    /// Pub/Sub message id.
    pub message_id: String,
    /// Publish time, microseconds since the Unix epoch.
    pub publish_time_micros: i64,
    /// Message attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The exact payload.
    pub data: nfe::RawBytes,
}

impl Data for ArchivedMessage {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.message_id.len()
            + self.data.0.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum::<usize>()
    }
}

impl ArchivedMessage {
    /// The archived form of a message.
    pub fn of(m: &PubsubMessage) -> Self {
        ArchivedMessage {
            message_id: m.message_id.clone(),
            publish_time_micros: m.publish_time.micros(),
            attributes: m
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            data: nfe::RawBytes(m.data.to_vec()),
        }
    }

    /// The message again (ordering key and delivery attempt are not archived).
    pub fn into_message(self) -> PubsubMessage {
        PubsubMessage {
            data: Bytes::from(self.data.0),
            attributes: self.attributes.into_iter().collect::<HashMap<_, _>>(),
            message_id: self.message_id,
            publish_time: Timestamp::from_micros(self.publish_time_micros),
            ordering_key: String::new(),
            delivery_attempt: None,
            history: None,
        }
    }
}

/// Bytes of one object (a dead letter's JSON).
#[derive(Debug, Clone)]
pub struct ObjectBytes(pub Bytes);

impl AsRef<[u8]> for ObjectBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Data for ObjectBytes {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.0.len()
    }
}

fn jiff_time(t: Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_microsecond(t.micros()).ok()
}

fn source_meta(m: &PubsubMessage) -> SourceMeta {
    SourceMeta {
        message_id: Some(m.message_id.clone()),
        publish_time: jiff_time(m.publish_time),
        attributes: m
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Parse, validate and enrich ([`nfe::Intake`]): a valid record becomes an [`Invoice`] with its
/// ingestion metadata; an invalid one, a repeated `NFeID` flagged by `ingest`, or a poison message (a
/// sink refused an earlier delivery, or it came back more than `max_failed_deliveries` times)
/// becomes one [`DeadLetter`] with its exact bytes and its issues. Never fails: bad data is data.
#[derive(Clone)]
pub struct Validate {
    intake: nfe::Intake,
    worker: Option<String>,
    version: Option<String>,
}

impl Validate {
    /// A step with these rules; `worker` and `version` go into every row's ingestion metadata.
    pub fn new(intake: nfe::Intake, worker: Option<String>, version: Option<String>) -> Self {
        Validate {
            intake,
            worker,
            version,
        }
    }
}

impl DoFn for Validate {
    type In = PubsubMessage;
    type Out = Shared<Invoice>;
    type Dead = Shared<DeadLetter>;

    fn process(&mut self, m: PubsubMessage, ctx: &mut DoFnContext<'_, Self::Out, Self::Dead>) {
        let at = ctx.timestamp();
        self.validate(m, at, ctx);
    }
}

impl Validate {
    /// Validates `m`; a valid invoice is emitted with event time `at`.
    fn validate(
        &self,
        m: PubsubMessage,
        at: Timestamp,
        ctx: &mut DoFnContext<'_, Shared<Invoice>, Shared<DeadLetter>>,
    ) {
        let history = m.history.as_deref();
        let delivery = nfe::Delivery {
            duplicate_of: m.attributes.get(DUPLICATE_OF_ATTRIBUTE).map(String::as_str),
            attempt: m.delivery_count(),
            previous_failure: history.map(|h| nfe::PreviousFailure {
                permanent: h.permanent,
                reason: &h.reason,
            }),
        };
        match self.intake.process(&m.data, &delivery, || source_meta(&m)) {
            Ok(invoice) => {
                let meta = IngestMeta {
                    message_id: Some(m.message_id.clone()),
                    publish_time: jiff_time(m.publish_time),
                    worker: self.worker.clone(),
                    version: self.version.clone(),
                };
                ctx.output_at(shared_invoice(invoice.with_ingest(meta)), at);
            }
            Err(dead) => ctx.dead_letter(shared_dead_letter(*dead)),
        }
    }
}

/// Invoices and dead letters travel shared (the fan-out's branches and an invoice's lines all hold the
/// same value), measured once for the buffers' byte bounds.
fn shared_invoice(invoice: Invoice) -> Shared<Invoice> {
    let bytes = invoice.memory_bytes();
    Shared::with_size(invoice, bytes)
}

fn shared_dead_letter(dead: DeadLetter) -> Shared<DeadLetter> {
    let bytes = dead.memory_bytes();
    Shared::with_size(dead, bytes)
}

/// [`Validate`] for replays: decodes a raw-archive line (an [`ArchivedMessage`]) into the message it
/// holds on the worker threads, then validates it as the streaming run does. Decoding here instead
/// of in the storage source spreads the JSON work over the parallel workers and spares a step; a
/// line that is not an archived message becomes a dead letter with the line's exact bytes.
#[derive(Clone)]
pub struct ValidateArchived(pub Validate);

impl DoFn for ValidateArchived {
    type In = Record;
    type Out = Shared<Invoice>;
    type Dead = Shared<DeadLetter>;

    fn process(&mut self, line: Record, ctx: &mut DoFnContext<'_, Self::Out, Self::Dead>) {
        match serde_json::from_slice::<ArchivedMessage>(line.as_ref()) {
            // The invoice keeps the publish time as its event time, as in the streaming run (the
            // line's own is its object's hour), so the run report's latency means the same.
            Ok(m) => {
                let at = Timestamp::from_micros(m.publish_time_micros);
                self.0.validate(m.into_message(), at, ctx)
            }
            Err(e) => ctx.dead_letter(shared_dead_letter(DeadLetter::new(
                line.as_ref().to_vec(),
                vec![Issue::new(
                    ErrorCode::MalformedJson,
                    "$",
                    format!("raw archive line is not an archived message: {e}"),
                )],
                nfe::stage::VALIDATE,
                SourceMeta::default(),
                jiff::Timestamp::now(),
            ))),
        }
    }
}

/// Splits the raw archive by lateness: a message whose window closed more than `allowed_lateness`
/// before the step's input watermark goes to the named output `late`.
#[derive(Clone)]
pub struct RouteLate {
    allowed_lateness: Duration,
    late: OutputTag<ArchivedMessage>,
}

impl DoFn for RouteLate {
    type In = PubsubMessage;
    type Out = ArchivedMessage;
    type Dead = Infallible;

    fn process(&mut self, m: PubsubMessage, ctx: &mut DoFnContext<'_, Self::Out, Self::Dead>) {
        let deadline = ctx.window().max_timestamp().plus(self.allowed_lateness);
        let archived = ArchivedMessage::of(&m);
        if deadline < ctx.input_watermark() {
            ctx.output_to(&self.late, archived);
        } else {
            ctx.output(archived);
        }
    }
}

/// The two Bigtable rows of an invoice (invoice row and emission-index row) as mutations.
pub fn bigtable_mutations(layout: &nfe::BigtableLayout, invoice: &Invoice) -> [RowMutation; 2] {
    layout.encode(invoice).map(|row| {
        RowMutation::new(
            row.key,
            row.cells
                .into_iter()
                .map(|c| {
                    let qualifier = match c.qualifier {
                        std::borrow::Cow::Borrowed(q) => Bytes::from_static(q),
                        std::borrow::Cow::Owned(q) => Bytes::from(q),
                    };
                    SetCell::new(c.family, qualifier, c.timestamp_micros, c.value)
                })
                .collect(),
        )
    })
}

/// Parquet schema of the processed archive: one row per invoice line, with its invoice's header.
pub const PROCESSED_SCHEMA: &str = "message invoice_line {
    required int64 nfe_id;
    required int64 nfe_number;
    required int64 emission_time (TIMESTAMP(MICROS,true));
    required binary emission_date (STRING);
    required int64 creation_time (TIMESTAMP(MICROS,true));
    required fixed_len_byte_array(16) discount (DECIMAL(38,9));
    required fixed_len_byte_array(16) gross (DECIMAL(38,9));
    required fixed_len_byte_array(16) net (DECIMAL(38,9));
    required int32 item_count;
    required int32 line_number;
    required binary product_name (STRING);
    required binary product_key (STRING);
    required fixed_len_byte_array(16) unit_value (DECIMAL(38,9));
    required fixed_len_byte_array(16) quantity (DECIMAL(38,9));
    required fixed_len_byte_array(16) line_total (DECIMAL(38,9));
    required binary content_hash (STRING);
    optional binary message_id (STRING);
    optional int64 publish_time (TIMESTAMP(MICROS,true));
}";

/// One line of an invoice (index into `items`), the processed archive's element.
pub type InvoiceLine = (Shared<Invoice>, u32);

/// The processed archive's Parquet format.
pub fn processed_format() -> Result<ParquetFormat<InvoiceLine>, fluxo_gcp::ConfigError> {
    ParquetFormat::new(PROCESSED_SCHEMA, |(inv, i): &InvoiceLine, row| {
        let line = inv
            .items
            .get(*i as usize)
            .ok_or_else(|| format!("line {i} out of range"))?;
        let (discount, gross, net) = (
            inv.discount.to_string(),
            inv.gross.to_string(),
            inv.net.to_string(),
        );
        let (unit, qty, total) = (
            line.unit_value.to_string(),
            line.quantity.to_string(),
            line.line_total.to_string(),
        );
        let ingest = inv.ingest.as_ref();
        row.push(inv.nfe_id)?
            .push(inv.nfe_number)?
            .push(inv.emission.utc.as_microsecond())?
            .push(inv.emission_date.to_string().as_str())?
            .push(inv.creation.utc.as_microsecond())?
            .push(Value::Decimal(&discount))?
            .push(Value::Decimal(&gross))?
            .push(Value::Decimal(&net))?
            .push(i32::try_from(inv.item_count).unwrap_or(i32::MAX))?
            .push(i32::try_from(line.line_number).unwrap_or(i32::MAX))?
            .push(line.product_name.as_str())?
            .push(line.product_key.as_str())?
            .push(Value::Decimal(&unit))?
            .push(Value::Decimal(&qty))?
            .push(Value::Decimal(&total))?
            .push(inv.content_hash.to_hex().as_str())?
            .push(ingest.and_then(|m| m.message_id.as_deref()))?
            .push(
                ingest
                    .and_then(|m| m.publish_time)
                    .map(|t| t.as_microsecond()),
            )?;
        Ok(())
    })
}

/// The dead-letter object name (`dead-letter/dt=.../hour=.../stage=.../<sha256 of the raw bytes>.json`),
/// read back from the object's own JSON (without decoding its raw bytes) so that a redelivered record
/// replaces its object.
pub fn dead_letter_object_name(key: &ObjectKey<'_>) -> String {
    DeadLetter::object_name_of_json(key.content)
        .unwrap_or_else(|| format!("{DEAD_LETTER_PREFIX}/unreadable/{}.json", key.hash))
}

/// A dead letter encoded for its two sinks: the full JSON for its Cloud Storage object, and the
/// dead-letter topic's message (full or short form, see [`DEAD_LETTER_MESSAGE_MAX_BYTES`]).
#[derive(Debug, Clone)]
pub struct EncodedDeadLetter {
    /// The object's bytes (full form: every raw byte).
    pub object: ObjectBytes,
    /// The topic's message.
    pub message: PubsubOut,
}

impl Data for EncodedDeadLetter {
    fn size_bytes(&self) -> usize {
        self.object.size_bytes() + self.message.size_bytes()
    }
}

/// Encodes a dead letter for its sinks; `archive_url` is the archive root the object is written under
/// (the short form names the object by its full URL). Attribute values are clipped to Pub/Sub's limit.
pub fn encode_dead_letter(d: &DeadLetter, archive_url: &str) -> EncodedDeadLetter {
    let object_url = format!("{}/{}", archive_url.trim_end_matches('/'), d.object_name());
    let (object, m) = d.encode(&object_url, DEAD_LETTER_MESSAGE_MAX_BYTES);
    let mut message = PubsubOut::new(m.data);
    for (key, value) in m.attributes {
        message = message.with_clipped_attribute(key, value);
    }
    EncodedDeadLetter {
        object: ObjectBytes(object),
        message,
    }
}

/// Settings of the graph.
#[derive(Clone)]
pub struct GraphSettings {
    /// Parse/validate/enrich.
    pub validate: Validate,
    /// Threads of the validate step.
    pub parallelism: usize,
    /// Bigtable layout.
    pub layout: nfe::BigtableLayout,
    /// Raw archive windows.
    pub raw_window: Duration,
    /// Raw archive lateness.
    pub allowed_lateness: Duration,
    /// Batching of the Bigtable sink.
    pub bigtable_batch: SinkConfig,
    /// Batching of the BigQuery sink.
    pub bigquery_batch: SinkConfig,
    /// Batching of the archive sinks (raw, processed).
    pub archive_batch: SinkConfig,
    /// Batching of the dead-letter sinks.
    pub dead_letter_batch: SinkConfig,
    /// Root of the archive (dead-letter objects are written under it; their short form names them).
    pub archive_url: String,
}

/// The sinks of the graph; `raw` and `processed` are optional (a replay writes neither).
pub struct Sinks {
    /// Invoice rows and index rows.
    pub bigtable: LatencySink<BigtableSink>,
    /// `invoices` and `invoice_items`.
    pub bigquery: BigQuerySink,
    /// How invoices become rows of the BigQuery sink's tables.
    pub bigquery_layout: crate::bq_rows::BigQueryLayout,
    /// Raw archive: on time and late.
    pub raw: Option<(StorageSink<ArchivedMessage>, StorageSink<ArchivedMessage>)>,
    /// Processed archive.
    pub processed: Option<StorageSink<InvoiceLine>>,
    /// Dead letters as objects.
    pub dead_letter_objects: StorageSink<ObjectBytes>,
    /// Dead letters on the dead-letter topic.
    pub dead_letter_topic: PubsubSink<PubsubOut>,
}

/// Labels of the steps the run report, the metrics (`step` label) and the alert rules name; one
/// declaration, used by the graph and by whoever reads the report.
pub mod steps {
    /// Step label of validation: its `sent` are the valid invoices, its `errors` the dead letters.
    pub const VALIDATE: &str = "Validate";
    /// Step label of the Bigtable sink.
    pub const BIGTABLE: &str = "Bigtable";
    /// Step label of the BigQuery sink.
    pub const BIGQUERY: &str = "BigQuery";
    /// Step label of the raw archive (messages on time for their hour).
    pub const RAW_ARCHIVE: &str = "RawArchive";
    /// Step label of the raw archive of messages late for their hour.
    pub const RAW_ARCHIVE_LATE: &str = "RawArchiveLate";
    /// Step label of the processed archive (one line per invoice item).
    pub const PROCESSED_ARCHIVE: &str = "ProcessedArchive";
    /// Step label of dead letters to Cloud Storage.
    pub const DEAD_LETTER_ARCHIVE: &str = "DeadLetterArchive";
    /// Step label of dead letters to their Pub/Sub topic.
    pub const DEAD_LETTER_TOPIC: &str = "DeadLetterTopic";
}

/// Adds every step after the source to the pipeline of `messages`.
pub fn build(
    messages: &PCollection<PubsubMessage>,
    mut sinks: Sinks,
    s: &GraphSettings,
    codes: DeadLetterCodes,
) {
    if let Some((on_time, late)) = sinks.raw.take() {
        let late_tag = OutputTag::new("late");
        let routed = messages
            .window_into("RawWindows", Windowing::fixed(s.raw_window))
            .parallel(s.parallelism)
            .par_do(
                "RouteLate",
                RouteLate {
                    allowed_lateness: s.allowed_lateness,
                    late: late_tag.clone(),
                },
            );
        routed.main.write(
            steps::RAW_ARCHIVE,
            LatencySink::new(on_time),
            s.archive_batch,
        );
        routed.output(&late_tag).write(
            steps::RAW_ARCHIVE_LATE,
            LatencySink::new(late),
            s.archive_batch,
        );
    }

    let validated = messages
        .parallel(s.parallelism)
        .par_do(steps::VALIDATE, s.validate.clone());
    fan_out(validated, sinks, s, codes);
}

/// The replay's graph over raw-archive lines: [`ValidateArchived`] (decode and validate, parallel),
/// then the same steps as [`build`]. The raw archive is not written again (`sinks.raw` is ignored).
pub fn build_replay(
    lines: &PCollection<Record>,
    sinks: Sinks,
    s: &GraphSettings,
    codes: DeadLetterCodes,
) {
    let validated = lines
        .parallel(s.parallelism)
        .par_do(steps::VALIDATE, ValidateArchived(s.validate.clone()));
    fan_out(validated, sinks, s, codes);
}

/// Every step after validation: Bigtable, BigQuery, the processed archive and the dead letters.
fn fan_out(
    validated: Tagged<Shared<Invoice>, Shared<DeadLetter>>,
    sinks: Sinks,
    s: &GraphSettings,
    codes: DeadLetterCodes,
) {
    let invoices = validated.main;

    let layout = s.layout;
    invoices
        .parallel(s.parallelism)
        .flat_map("BigtableRows", move |inv: Shared<Invoice>| {
            bigtable_mutations(&layout, &inv)
        })
        .write(steps::BIGTABLE, sinks.bigtable, s.bigtable_batch);

    let bq = sinks.bigquery_layout;
    invoices
        .parallel(s.parallelism)
        .flat_map("BigQueryRows", move |inv: Shared<Invoice>| bq.rows(&inv))
        .write(
            steps::BIGQUERY,
            LatencySink::new(sinks.bigquery),
            s.bigquery_batch,
        );

    if let Some(processed) = sinks.processed {
        invoices
            .flat_map("ProcessedLines", |inv: Shared<Invoice>| {
                (0..inv.items.len() as u32)
                    .map(|i| (inv.clone(), i))
                    .collect::<Vec<_>>()
            })
            .write(
                steps::PROCESSED_ARCHIVE,
                LatencySink::new(processed),
                s.archive_batch,
            );
    }

    let archive_url = s.archive_url.clone();
    let dead = validated
        .dead_letters
        .map("DeadLetterJson", move |d: Shared<DeadLetter>| {
            for code in d.codes() {
                codes.count(code);
            }
            encode_dead_letter(&d, &archive_url)
        });
    dead.map("DeadLetterObject", |e: EncodedDeadLetter| e.object)
        .write(
            steps::DEAD_LETTER_ARCHIVE,
            LatencySink::new(sinks.dead_letter_objects),
            s.dead_letter_batch,
        );
    dead.map("DeadLetterMessage", |e: EncodedDeadLetter| e.message)
        .write(
            steps::DEAD_LETTER_TOPIC,
            LatencySink::new(sinks.dead_letter_topic),
            s.dead_letter_batch,
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &[u8]) -> PubsubMessage {
        let mut attributes = HashMap::new();
        attributes.insert("source".to_string(), "api".to_string());
        PubsubMessage {
            data: Bytes::copy_from_slice(data),
            attributes,
            message_id: "17".into(),
            publish_time: Timestamp::from_millis(1_621_898_494_790),
            ordering_key: String::new(),
            delivery_attempt: None,
            history: None,
        }
    }

    /// A message whose hour closed more than the allowed lateness before the watermark goes to the
    /// `late` output, the others to the main one; both are acknowledged once stored.
    #[tokio::test]
    async fn route_late_splits_by_window_and_watermark() {
        use fluxo::testing::{CollectingSink, TestStream};
        let hour = |h: i64| Timestamp::from_secs(1_621_886_400 + h * 3600);
        let at = |h: i64, data: &[u8]| (message(data), hour(h));
        let (source, acks) = TestStream::new()
            .add_values([at(0, b"on-time-0"), at(1, b"on-time-1")])
            .advance_watermark(hour(3))
            // Hour 0 closed at 1 h, plus 1 h of lateness: behind the watermark of 3 h. Hour 2 is not.
            .add_values([at(0, b"late-0"), at(2, b"on-time-2")])
            .with_acks();
        let p = fluxo::Pipeline::new("route-late");
        let late = OutputTag::new("late");
        let routed = p
            .read("Read", source)
            .window_into("RawWindows", Windowing::fixed(Duration::from_secs(3600)))
            .par_do(
                "RouteLate",
                RouteLate {
                    allowed_lateness: Duration::from_secs(3600),
                    late: late.clone(),
                },
            );
        let (main_sink, main) = CollectingSink::new();
        let (late_sink, late_out) = CollectingSink::new();
        routed.main.write_default("Main", main_sink);
        routed.output(&late).write_default("Late", late_sink);
        p.run(fluxo::RunOptions::default()).await.unwrap();
        let data = |out: &fluxo::testing::Output<ArchivedMessage>| {
            let mut v: Vec<String> = out
                .values()
                .into_iter()
                .map(|a| String::from_utf8_lossy(&a.into_message().data).into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(data(&main), ["on-time-0", "on-time-1", "on-time-2"]);
        assert_eq!(data(&late_out), ["late-0"]);
        assert_eq!(acks.statuses().await, vec![fluxo::Status::Delivered; 4]);
    }

    #[test]
    fn archived_messages_round_trip_exact_bytes() {
        for data in [&b"{\"NFeID\": 1}\n"[..], b"\xff\x00binary"] {
            let m = message(data);
            let line = serde_json::to_vec(&ArchivedMessage::of(&m)).unwrap();
            assert!(!line.contains(&b'\n'));
            let back: ArchivedMessage = serde_json::from_slice(&line).unwrap();
            assert_eq!(back.into_message(), m);
        }
    }

    #[test]
    fn mutations_mirror_the_layout() {
        let validator = nfe::ValidationConfig::default().build().unwrap();
        let raw = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00",
          "Discount":0.0,"NFeNumber":503,"NFeID":3,"ItemList":[
          {"ProductName":"Beer","Value":9.00,"Quantity":6}]}"#;
        let inv = validator.process(raw).unwrap();
        let layout = nfe::BigtableLayout::default();
        let rows = layout.encode(&inv);
        let muts = bigtable_mutations(&layout, &inv);
        for (row, m) in rows.iter().zip(&muts) {
            assert_eq!(&m.key[..], &row.key[..]);
            assert_eq!(m.cells.len(), row.cells.len());
            for (c, s) in row.cells.iter().zip(&m.cells) {
                assert_eq!((&*c.family, &*c.qualifier), (&*s.family, &s.qualifier[..]));
                assert_eq!(
                    (c.timestamp_micros, &c.value),
                    (s.timestamp_micros, &s.value)
                );
            }
        }
    }

    #[tokio::test]
    async fn replayed_lines_validate_like_messages_and_bad_lines_become_dead_letters() {
        use fluxo::testing::{CollectingSink, TestStream};
        let validator = nfe::ValidationConfig::default().build().unwrap();
        let m = message(
            br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00",
              "Discount":0.0,"NFeNumber":503,"NFeID":3,"ItemList":[
              {"ProductName":"Beer","Value":9.00,"Quantity":6}]}"#,
        );
        let good = serde_json::to_vec(&ArchivedMessage::of(&m)).unwrap();
        let bad = br#"{"message_id":"18","publish_time_micros":"#.to_vec();
        let invalid =
            serde_json::to_vec(&ArchivedMessage::of(&message(br#"{"NFeID":"x"}"#))).unwrap();

        let p = fluxo::Pipeline::new("replay-lines");
        let validated = p
            .read(
                "Lines",
                TestStream::new().add_values(
                    [good, bad.clone(), invalid]
                        .into_iter()
                        .map(|l| (Record::from(l), Timestamp::from_millis(0))),
                ),
            )
            .par_do(
                steps::VALIDATE,
                ValidateArchived(Validate::new(
                    nfe::Intake::new(validator.clone(), None),
                    None,
                    None,
                )),
            );
        let (main, invoices) = CollectingSink::new();
        let (dead, dead_letters) = CollectingSink::new();
        validated.main.write("Main", main, SinkConfig::default());
        validated
            .dead_letters
            .write("Dead", dead, SinkConfig::default());
        p.run(fluxo::RunOptions::default()).await.unwrap();

        // The line replays as the message it archived: same invoice, same ingest metadata, and the
        // publish time as event time.
        let collected = invoices.elements();
        assert_eq!(collected.len(), 1);
        assert_eq!(collected[0].timestamp, m.publish_time);
        let invoices = invoices.values();
        let expected = validator.process(&m.data).unwrap();
        let mut got = (*invoices[0]).clone();
        let ingest = got.ingest.take().unwrap();
        assert_eq!(got, expected);
        assert_eq!(ingest.message_id.as_deref(), Some("17"));
        assert_eq!(ingest.publish_time, jiff_time(m.publish_time));

        let dead = dead_letters.values();
        assert_eq!(dead.len(), 2);
        let unreadable = dead
            .iter()
            .find(|d| d.raw.0 == bad)
            .expect("the unreadable line is a dead letter with its exact bytes");
        assert_eq!(unreadable.issues[0].code, ErrorCode::MalformedJson);
        assert!(unreadable.issues[0].message.contains("raw archive line"));
        assert!(dead.iter().any(
            |d| d.raw.0 == br#"{"NFeID":"x"}"# && d.source.message_id.as_deref() == Some("17")
        ));
    }

    #[test]
    fn dead_letter_messages_carry_codes_and_always_fit_the_topic() {
        let validator = nfe::ValidationConfig::default().build().unwrap();
        let m = message(br#"{"NFeID": "x"}"#);
        let rejection = validator.validate(&m.data).unwrap_err();
        let d = DeadLetter::rejected(
            m.data.to_vec(),
            rejection,
            "validate",
            source_meta(&m),
            jiff::Timestamp::now(),
        );
        let out = encode_dead_letter(&d, "gs://bucket");
        assert_eq!(
            out.message.attributes["codes"],
            "NFE_MISSING_FIELD,NFE_WRONG_TYPE"
        );
        assert_eq!(out.message.attributes["message_id"], "17");
        assert_eq!(out.message.attributes["raw_sha256"].len(), 64);
        assert_eq!(
            out.message.data, out.object.0,
            "small: the full form on the topic"
        );

        // The largest short form, with every attribute at Pub/Sub's limit, fits one publish
        // request of the default sink, and the budget holds the short form.
        use fluxo_gcp::pubsub::{PubsubSinkConfig, MAX_ATTRIBUTES, MAX_ATTRIBUTE_VALUE_BYTES};
        assert!(out.message.attributes.len() <= MAX_ATTRIBUTES);
        let worst = DEAD_LETTER_MESSAGE_MAX_BYTES + 6 * (256 + MAX_ATTRIBUTE_VALUE_BYTES + 16);
        assert!(worst < PubsubSinkConfig::default().max_bytes_per_request);

        // A record of 3 MiB of control bytes: the object holds every byte, the topic the short
        // form, whose `object` names where the object is written.
        let huge = vec![0x01u8; 3 << 20];
        let d = DeadLetter::rejected(
            huge.clone(),
            validator.validate(&huge).unwrap_err(),
            "validate",
            source_meta(&m),
            jiff::Timestamp::now(),
        );
        let out = encode_dead_letter(&d, "gs://bucket/root/");
        assert!(out.message.data.len() <= DEAD_LETTER_MESSAGE_MAX_BYTES);
        assert_eq!(out.message.attributes["truncated"], "true");
        let object_url = format!("gs://bucket/root/{}", d.object_name());
        assert_eq!(out.message.attributes["object"], object_url);
        let full: DeadLetter = serde_json::from_slice(&out.object.0).unwrap();
        assert_eq!(full.raw.0, huge);
        assert!(out.object.0.len() < huge.len() * 4 / 3 + 4096);
        let short: DeadLetter = serde_json::from_slice(&out.message.data).unwrap();
        assert_eq!(short.object.as_deref(), Some(object_url.as_str()));
        assert_eq!(short.raw_size, Some(3 << 20));
    }
}
