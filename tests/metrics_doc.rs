//! `docs/metrics.md` lists every metric family the two pipelines can register, generated from the
//! definitions themselves (`Def` constants of the engine, the connectors, the HTTP source and the
//! invoices pipeline). This test renders the list and fails when the document differs; run
//! `UPDATE_METRICS_DOC=1 cargo test --test metrics_doc` to rewrite the generated part.

use std::collections::BTreeSet;
use std::path::Path;

use fluxo::metrics::{Def, Kind};

const BEGIN: &str = "<!-- BEGIN GENERATED: metric families (tests/metrics_doc.rs) -->\n";
const END: &str = "<!-- END GENERATED -->\n";

/// Every crate's families, with the heading they are listed under.
fn sections() -> Vec<(&'static str, &'static str, &'static [Def])> {
    vec![
        (
            "Engine (`fluxo::metrics::names`)",
            "Every pipeline: steps, sources, sinks, buffers and the build.",
            fluxo::metrics::names::ALL,
        ),
        (
            "Grouping steps (`fluxo::metrics::names::GROUPING`)",
            "Registered by each grouping step (`group_by_key`, `combine_per_key`, `count_per_key`).",
            fluxo::metrics::names::GROUPING,
        ),
        (
            "Process (`fluxo::metrics::process`)",
            "Every worker, read from `/proc` at scrape time (Linux; absent elsewhere), with the names the official Prometheus clients use.",
            fluxo::metrics::process::ALL,
        ),
        (
            "Google Cloud connectors (`fluxo_gcp::metrics`)",
            "Registered by each Pub/Sub source and each Bigtable, BigQuery, Cloud Storage or Pub/Sub sink step. `service` is `bigtable`, `bigquery`, `storage` or `pubsub`; `method` the API method (`MutateRows`, `AppendRows`, `upload`, `Publish`); `outcome` is `ok`, `retriable_error` or `fatal_error` (all three exist from the start).",
            fluxo_gcp::metrics::ALL,
        ),
        (
            "HTTP source (`fluxo_http::metrics`, the `ingest` job)",
            "Registered by the HTTP source of `ingest`.",
            fluxo_http::metrics::ALL,
        ),
        (
            "Ingest job (`ingest::metrics`)",
            "Registered by `ingest run` and `ingest serve` (which keeps one registry for every run and serves it at `/metrics` on its own port); every outcome has a series from the start.",
            ingest::metrics::ALL,
        ),
        (
            "Invoices pipeline (`invoices::metrics`)",
            "`code` is one of the stable error codes of docs/validation.md (every code has a series from the start); `invoices_publish_to_sink_seconds` has one series per sink step (`Bigtable`, `BigQuery`, `RawArchive`, `RawArchiveLate`, `ProcessedArchive`, `DeadLetterArchive`, `DeadLetterTopic`).",
            invoices::metrics::ALL,
        ),
    ]
}

fn bound(b: f64) -> String {
    // The shortest text that reads back as the same number.
    format!("{b}")
}

fn render() -> String {
    let mut out = String::from(BEGIN);
    for (title, intro, defs) in sections() {
        out.push_str(&format!("\n### {title}\n\n{intro}\n\n"));
        out.push_str("| exposed name | type | labels | meaning | buckets |\n| --- | --- | --- | --- | --- |\n");
        for def in defs {
            let labels = def
                .labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let buckets = if def.kind == Kind::Histogram {
                def.buckets
                    .iter()
                    .map(|b| bound(*b))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::new()
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                def.exposed_name(),
                def.kind.as_str(),
                labels,
                def.help.replace('|', "\\|"),
                buckets
            ));
        }
    }
    out.push('\n');
    out.push_str(END);
    out
}

#[test]
fn every_family_is_valid_and_has_one_name() {
    let mut seen = BTreeSet::new();
    for (_, _, defs) in sections() {
        for def in defs {
            assert_eq!(def.problem(), None, "{def:?}");
            assert!(seen.insert(def.name), "{} is declared twice", def.name);
        }
    }
}

#[test]
fn docs_metrics_md_lists_every_family() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/metrics.md");
    let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/metrics.md has no generated section ({BEGIN:?} ... {END:?})");
    };
    let current = &doc[start..end + END.len()];
    let wanted = render();
    if current == wanted {
        return;
    }
    if std::env::var_os("UPDATE_METRICS_DOC").is_some() {
        let updated = format!("{}{}{}", &doc[..start], wanted, &doc[end + END.len()..]);
        std::fs::write(&path, updated).expect("write docs/metrics.md");
        return;
    }
    panic!(
        "docs/metrics.md is out of date with the metric definitions; run `UPDATE_METRICS_DOC=1 cargo test --test metrics_doc` and commit the result.\n--- generated ---\n{wanted}"
    );
}
