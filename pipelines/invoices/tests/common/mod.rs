//! Helpers shared by the end-to-end tests: the emulator stack, test profiles, draining a subscription.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use emulators::{Emulators, Service};
use fluxo::ShutdownSignal;
use fluxo_gcp::pubsub::raw::proto::{AcknowledgeRequest, PubsubMessage as RawMessage, PullRequest};
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
