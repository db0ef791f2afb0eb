//! Helpers shared by the end-to-end tests: the emulator stack, test profiles, draining a subscription.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::pubsub::raw::proto::{
    AcknowledgeRequest, PublishRequest, PubsubMessage as RawMessage, PullRequest,
};
use fluxo_gcp::pubsub::PubsubClient;
use invoices::config::{ConfigFile, Profile};
use invoices::RunSettings;

/// One streaming run of the pipeline that stops once nothing arrived for 3 s; its report.
pub async fn run_until_idle(p: &Profile) -> invoices::Report {
    let settings = RunSettings {
        exit_when_idle: Some(Duration::from_secs(3)),
        ..RunSettings::default()
    };
    invoices::run_stream(p, &settings, ShutdownSignal::never())
        .await
        .expect("pipeline run")
}

pub async fn start_stack() -> Emulators {
    let emulators = tokio::task::spawn_blocking(|| {
        Emulators::start(&[
            Service::PubSub,
            Service::Bigtable,
            Service::Storage,
            Service::BigQuery,
        ])
        .expect("emulators")
    })
    .await
    .unwrap();
    emulators.export_env();
    emulators
}

pub fn profile_toml(project: &str, name: &str, extra: &str) -> String {
    format!(
        r#"[profiles.test]
project = "{project}"
topic = "{name}"
subscription = "{name}-pipeline"
dead_letter_topic = "{name}-dead-letter"
bigtable_instance = "test-instance"
bigtable_table = "{name}"
bigquery_dataset = "{name}"
archive_url = "gs://{name}-archive"
{extra}
[profiles.test.tuning]
ack_deadline_secs = 10
"#
    )
}

/// A test profile with extra `[profiles.test.tuning]` lines.
pub fn profile_toml_tuned(project: &str, name: &str, tuning: &str) -> String {
    profile_toml(project, name, "").replace(
        "ack_deadline_secs = 10\n",
        &format!("ack_deadline_secs = 10\n{tuning}\n"),
    )
}

pub fn profile(project: &str, name: &str, extra: &str) -> Profile {
    ConfigFile::parse(&profile_toml(project, name, extra), "test.toml")
        .unwrap()
        .profile("test", "test.toml")
        .unwrap()
}

pub fn trim_decimal(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Pulls everything on a subscription (acking it) until it stays empty for a second.
pub async fn drain(client: &PubsubClient, sub: &str) -> Vec<RawMessage> {
    let subscription = client.subscription_path(sub).unwrap();
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        #[allow(deprecated)]
        let req = PullRequest {
            subscription: subscription.clone(),
            max_messages: 1000,
            return_immediately: true,
        };
        let resp = match client.subscriber().pull(req, None).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                eprintln!("pull failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if resp.received_messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        quiet_since = Instant::now();
        let ack_ids = resp
            .received_messages
            .iter()
            .map(|m| m.ack_id.clone())
            .collect();
        client
            .subscriber()
            .acknowledge(
                AcknowledgeRequest {
                    subscription: subscription.clone(),
                    ack_ids,
                },
                None,
            )
            .await
            .unwrap();
        out.extend(resp.received_messages.into_iter().filter_map(|m| m.message));
    }
    out
}

/// Exact totals of valid records computed by Python's `decimal` module, reading each record with
/// Python's own JSON parser (an oracle independent of the code under test): id -> (gross, net).
pub fn python_totals(records: &[&[u8]]) -> BTreeMap<i64, (String, String)> {
    let script = r#"
import json, sys
from decimal import Decimal, getcontext
getcontext().prec = 200
out = {}
for text in json.load(sys.stdin):
    r = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    gross = sum((Decimal(i["Value"]) * Decimal(i["Quantity"]) for i in r["ItemList"]), Decimal(0))
    net = gross - Decimal(r["Discount"])
    out[str(int(r["NFeID"]))] = [format(gross, "f"), format(net, "f")]
print(json.dumps(out))
"#;
    let texts: Vec<&str> = records
        .iter()
        .map(|r| std::str::from_utf8(r).unwrap())
        .collect();
    let out = python_json(script, &texts);
    let map: BTreeMap<String, (String, String)> = serde_json::from_slice(&out).unwrap();
    map.into_iter()
        .map(|(k, (g, n))| (k.parse().unwrap(), (trim_decimal(&g), trim_decimal(&n))))
        .collect()
}

/// Runs a Python script with `input` as JSON on its standard input; returns what it printed. The
/// oracles of the tests are written this way: Python's own JSON parser and `decimal` module, independent
/// of the code under test.
pub fn python_json(script: &str, input: &impl serde::Serialize) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(&serde_json::to_vec(input).unwrap())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed");
    out.stdout
}

/// Publishes messages in requests of at most 1,000 messages and 8 MB.
pub async fn publish(client: &PubsubClient, p: &Profile, messages: Vec<RawMessage>) {
    let topic = client.topic_path(&p.topic).unwrap();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for m in messages {
        // Pub/Sub takes at most 1,000 messages and 10 MB per publish request.
        if (bytes + m.data.len() > 8_000_000 || batch.len() == 1000) && !batch.is_empty() {
            client
                .publish(PublishRequest {
                    topic: topic.clone(),
                    messages: std::mem::take(&mut batch),
                })
                .await
                .expect("publish");
            bytes = 0;
        }
        bytes += m.data.len();
        batch.push(m);
    }
    if !batch.is_empty() {
        client
            .publish(PublishRequest {
                topic,
                messages: batch,
            })
            .await
            .expect("publish");
    }
}
