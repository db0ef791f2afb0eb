//! Running a built pipeline: one task per step, the metrics endpoint, shutdown and drain.

use std::time::Instant as StdInstant;

use tokio::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::finalizer::Guarded;
use crate::http::{serve_on_own_thread, Health};
use crate::metrics::StepMetrics;
use crate::operator::sleep_until;
use crate::pipeline::{PipelineError, RunOptions, Runnable, StepFailure, StepFuture, StepKind};
use crate::report::{BufferReport, RunReport, SinkReport, SourceReport, StepReport};
use crate::shutdown::Shutdown;

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs every step. `stop` is the shutdown handed to the sources: it fires on the external signal or when
/// a step fails.
pub(crate) async fn run(
    runnable: Runnable,
    tasks: Vec<(String, StepFuture)>,
    entries: Vec<(String, StepKind, StepMetrics)>,
    options: RunOptions,
    stop: Shutdown,
) -> Result<RunReport, PipelineError> {
    let started = StdInstant::now();
    let baseline = collect(&runnable, &entries, std::time::Duration::ZERO);
    let health = Health::default();
    let server_stop = Shutdown::new();
    let server = match options.metrics_addr {
        Some(addr) => {
            let stop = server_stop.signal();
            let started = std::net::TcpListener::bind(addr).and_then(|listener| {
                serve_on_own_thread(
                    listener,
                    runnable.metrics.clone(),
                    health.clone(),
                    async move { stop.wait().await },
                )
            });
            Some(started.map_err(|source| PipelineError::Metrics { addr, source })?)
        }
        None => None,
    };

    let mut labels = Vec::with_capacity(tasks.len());
    let mut handles = Vec::with_capacity(tasks.len());
    for (label, fut) in tasks {
        labels.push(label);
        handles.push(tokio::spawn(Guarded::new(fut)));
    }
    health.watch_sources(runnable.sources.clone());
    health.set_ready(true);
    tracing::info!(pipeline = %runnable.name, steps = labels.len(), "pipeline running");
    let mut watch = options.stall_timeout.map(|after| {
        let sources = runnable.sources.iter().map(|(_, m)| m.clone()).collect();
        health.watch_progress(sources, after)
    });
    let mut watch_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let mut running: FuturesUnordered<_> = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| async move { (i, h.await) })
        .collect();
    // Drain starts on the external signal or when a step fails; past the deadline, abort what is left.
    let mut deadline: Option<Instant> = None;
    let mut drain_timed_out = false;
    let mut first_error = None;
    loop {
        tokio::select! {
            next = running.next() => {
                let Some((i, result)) = next else { break };
                let source = match result {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(e) if e.is_panic() => StepFailure::Panicked(panic_text(e.into_panic())).into(),
                    Err(_) => StepFailure::Aborted.into(),
                };
                tracing::error!(step = %labels[i], error = %source, "step failed");
                first_error.get_or_insert(PipelineError::Step {
                    step: labels[i].clone(),
                    source,
                });
                if deadline.is_none() {
                    tracing::warn!(pipeline = %runnable.name, "a step failed: stopping sources and draining");
                    deadline = Some(Instant::now() + options.drain_timeout);
                    health.set_ready(false);
                    stop.trigger();
                }
            }
            _ = options.shutdown.wait(), if deadline.is_none() => {
                tracing::info!(pipeline = %runnable.name, timeout = ?options.drain_timeout, "draining");
                deadline = Some(Instant::now() + options.drain_timeout);
                health.set_ready(false);
                stop.trigger();
            }
            _ = watch_tick.tick(), if watch.is_some() => {
                if let Some(w) = watch.as_mut() {
                    w.check();
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() && !drain_timed_out => {
                drain_timed_out = true;
                aborts.iter().for_each(|a| a.abort());
            }
        }
    }
    health.set_ready(false);

    server_stop.trigger();
    if let Some(s) = server {
        let _ = tokio::task::spawn_blocking(move || s.join()).await;
    }

    let report = collect(&runnable, &entries, started.elapsed()).since(&baseline);
    if drain_timed_out {
        return Err(PipelineError::DrainTimeout(options.drain_timeout));
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// What the counters of the run's steps, sources, sinks and buffers say now. Taken when the run
/// starts and when it ends: the report is the difference ([`RunReport::since`]), so a registry
/// shared by several runs ([`crate::Pipeline::with_metrics`]) still gives each run its own numbers.
fn collect(
    runnable: &Runnable,
    entries: &[(String, StepKind, StepMetrics)],
    elapsed: std::time::Duration,
) -> RunReport {
    RunReport {
        pipeline: runnable.name.clone(),
        elapsed,
        steps: entries
            .iter()
            .map(|(label, kind, m)| {
                let emitted = runnable
                    .sources
                    .iter()
                    .find(|(l, _)| l == label)
                    .map(|(_, s)| s.emitted.get());
                StepReport {
                    received: emitted.unwrap_or_else(|| m.received.get()),
                    sent: emitted.unwrap_or_else(|| m.sent.get()),
                    errors: m.errors.get(),
                    discarded: m.discarded.get(),
                    late: m.late.get(),
                    label: label.clone(),
                    kind: *kind,
                }
            })
            .collect(),
        sources: runnable
            .sources
            .iter()
            .map(|(label, m)| SourceReport {
                label: label.clone(),
                emitted: m.emitted.get(),
                acked: m.acked.get(),
                nacked: m.nacked.get(),
                rejected: m.rejected.get(),
            })
            .collect(),
        sinks: runnable
            .sinks
            .iter()
            .map(|(label, m)| SinkReport {
                label: label.clone(),
                written: m.written.get(),
                failed: m.failed.get(),
                retries: m.retries.get(),
                batches: m.batches(),
            })
            .collect(),
        buffers: runnable
            .buffers
            .iter()
            .map(|(from, to, m)| BufferReport {
                from: from.clone(),
                to: to.clone(),
                peak_elements: m.peak_elements(),
                peak_bytes: m.peak_bytes(),
            })
            .collect(),
        peak_total_elements: runnable.metrics.peak_buffered().0,
        peak_total_bytes: runnable.metrics.peak_buffered().1,
    }
}
