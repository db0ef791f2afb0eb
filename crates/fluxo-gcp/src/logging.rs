//! Log lines as Cloud Logging reads them (GKE, Cloud Run): one JSON object per line with `severity`
//! (`DEBUG`, `INFO`, `WARNING`, `ERROR`), a top-level `message`, `timestamp` as `{seconds, nanos}`,
//! `logging.googleapis.com/sourceLocation`, the `target`, the open `spans` (root first, with their
//! fields) and the event's own fields at the top level (queryable as `jsonPayload.<field>`).
//!
//! Hand-written (about a hundred lines) rather than `tracing-subscriber`'s JSON format, which puts the
//! level in `level` and the text in `fields.message` (every line then shows as severity DEFAULT), or the
//! `tracing-stackdriver` crate, which renames every field to camelCase and pins old `http` and
//! `opentelemetry` releases.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Keys this format writes itself; an event field with one of these names is written as
/// `<name>_field` instead.
const RESERVED: [&str; 6] = [
    "severity",
    "message",
    "timestamp",
    "target",
    "spans",
    "logging.googleapis.com/sourceLocation",
];

/// Cloud Logging's severity of a `tracing` level (TRACE has none of its own: DEBUG).
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// The event format (see the module documentation). Use it with [`JsonFields`] as the field
/// formatter so span fields are kept as JSON; [`init`] does both.
#[derive(Debug, Default, Clone, Copy)]
pub struct CloudLoggingFormat;

impl<S, N> FormatEvent<S, N> for CloudLoggingFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();

        let mut line = Map::new();
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert(
            "message".into(),
            fields.message.take().unwrap_or_default().into(),
        );
        line.insert(
            "timestamp".into(),
            json!({"seconds": now.as_secs(), "nanos": now.subsec_nanos()}),
        );
        line.insert("target".into(), meta.target().into());
        if let Some(file) = meta.file() {
            line.insert(
                "logging.googleapis.com/sourceLocation".into(),
                json!({
                    "file": file,
                    // Cloud Logging's LogEntrySourceLocation.line is an int64, written as a string.
                    "line": meta.line().unwrap_or(0).to_string(),
                    "function": meta.module_path().unwrap_or(meta.target()),
                }),
            );
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut s = Map::new();
                    s.insert("name".into(), span.name().into());
                    if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f.as_str()) {
                            for (key, value) in m {
                                let key = if key == "name" {
                                    "name_field".into()
                                } else {
                                    key
                                };
                                s.insert(key, value);
                            }
                        }
                    }
                    Value::Object(s)
                })
                .collect();
            line.insert("spans".into(), Value::Array(spans));
        }
        for (key, value) in fields.fields {
            let key = if RESERVED.contains(&key.as_str()) {
                format!("{key}_field")
            } else {
                key
            };
            line.insert(key, value);
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values; `message` apart.
#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, value.to_string().into());
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, value.to_string().into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// Installs the global subscriber of a binary: logs on stderr, filtered by `RUST_LOG` (else
/// `default_filter`), as Cloud Logging JSON lines when `json` is set or when running on Kubernetes
/// (`KUBERNETES_SERVICE_HOST` is set), else as readable text. Returns whether the lines are JSON.
pub fn init(json: bool, default_filter: &str) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let json = json || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if json {
        tracing_subscriber::fmt()
            .event_format(CloudLoggingFormat)
            .fmt_fields(JsonFields::new())
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    json
}

/// Prints a binary's last word (the one-line error before a non-zero exit): an `ERROR` line of the
/// JSON format when the logs are JSON (`json` as [`init`] returned it), so Cloud Logging shows it with
/// its severity, else the plain line on stderr.
pub fn fatal(json: bool, line: &str) {
    if json {
        tracing::error!("{line}");
    } else {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(CloudLoggingFormat)
            .fmt_fields(JsonFields::new())
            .with_writer(move || writer.clone())
            .with_max_level(Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    #[test]
    fn every_level_has_cloud_logging_severity_message_and_timestamp() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let out = lines(|| {
            tracing::error!(code = 503, "sink failed");
            tracing::warn!(retry = true, "retrying");
            tracing::info!("progress");
            tracing::debug!(ratio = 0.5, "detail");
            tracing::trace!("fine");
        });
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|l| {
                (
                    l["severity"].as_str().unwrap(),
                    l["message"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ERROR", "sink failed"),
                ("WARNING", "retrying"),
                ("INFO", "progress"),
                ("DEBUG", "detail"),
                ("DEBUG", "fine"),
            ]
        );
        assert_eq!(out[0]["code"], 503);
        assert_eq!(out[1]["retry"], true);
        assert_eq!(out[3]["ratio"], 0.5);
        let seconds = out[0]["timestamp"]["seconds"].as_u64().unwrap();
        assert!(seconds >= before.as_secs() && seconds <= before.as_secs() + 60);
        assert!(out[0]["timestamp"]["nanos"].as_u64().unwrap() < 1_000_000_000);
        let location = &out[0]["logging.googleapis.com/sourceLocation"];
        assert_eq!(location["file"], file!());
        assert!(location["line"].as_str().unwrap().parse::<u32>().unwrap() > 0);
        assert!(out
            .iter()
            .all(|l| l.get("level").is_none() && l.get("fields").is_none()));
    }

    #[test]
    fn spans_fields_and_reserved_names_are_kept() {
        let out = lines(|| {
            let run = tracing::info_span!("run", pipeline = "invoices");
            let _run = run.enter();
            let sink = tracing::info_span!("sink", name = "bigquery", streams = 4u64);
            let _sink = sink.enter();
            let err = std::io::Error::other("broken pipe");
            tracing::warn!(
                severity = "mine",
                error = &err as &dyn std::error::Error,
                big = u128::MAX,
                "with \"quotes\"\nand a newline"
            );
        });
        assert_eq!(out.len(), 1);
        let l = &out[0];
        assert_eq!(l["severity"], "WARNING");
        assert_eq!(l["severity_field"], "mine");
        assert_eq!(l["message"], "with \"quotes\"\nand a newline");
        assert_eq!(l["error"], "broken pipe");
        assert_eq!(l["big"], u128::MAX.to_string());
        assert_eq!(
            l["spans"],
            json!([
                {"name": "run", "pipeline": "invoices"},
                {"name": "sink", "name_field": "bigquery", "streams": 4}
            ])
        );
    }
}
