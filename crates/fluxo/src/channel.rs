//! Buffers between steps, bounded by element count and by bytes.
//!
//! A batch is admitted once permits for its elements and bytes are available; the receiver returns them
//! as it takes the batch. A batch larger than the bound (a `flat_map` that turned 1,024 invoices into a
//! million rows) is sent in chunks that fit, each waiting for room; only a single element larger than
//! the whole byte bound is admitted alone (its request clamped to the bound), so it never deadlocks a
//! step. Each channel has exactly one producing step,
//! so taking the two permit kinds one after the other cannot deadlock.
//!
//! Hand-written on top of tokio's semaphore and unbounded MPSC queue because tokio's bounded channel
//! counts messages (batches), not elements and bytes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::element::{Data, Element, Timestamp};
use crate::finalizer::Status;
use crate::metrics::BufferMetrics;

/// A watermark: the event time up to which an input is believed complete, or a note that the input is
/// idle (produces nothing for now and must not hold back the minimum over inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Input complete up to this event time.
    EventTime(Timestamp),
    /// The input has been quiet for its idle timeout.
    Idle,
}

/// What flows through a buffer.
#[derive(Debug)]
pub(crate) enum Message<T> {
    Batch(Vec<Element<T>>),
    Watermark(Watermark),
}

/// Bounds of one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Maximum elements buffered between two steps. Default: 8192.
    pub max_elements: u32,
    /// Maximum estimated bytes buffered between two steps (see [`Data::size_bytes`]). Default: 16 MiB.
    pub max_bytes: u32,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_elements: 8192,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

struct Envelope<T> {
    msg: Message<T>,
    permits_elements: u32,
    permits_bytes: u32,
    bytes: u32,
}

struct Bounds {
    elements: Semaphore,
    bytes: Semaphore,
    config: BufferConfig,
    metrics: BufferMetrics,
}

pub(crate) struct Sender<T> {
    tx: mpsc::UnboundedSender<Envelope<T>>,
    bounds: Arc<Bounds>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            bounds: Arc::clone(&self.bounds),
        }
    }
}

pub(crate) struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<Envelope<T>>,
    bounds: Arc<Bounds>,
}

/// The receiving step is gone; the batch was not delivered.
#[derive(Debug)]
pub(crate) struct Disconnected;

pub(crate) fn channel<T>(config: BufferConfig, metrics: BufferMetrics) -> (Sender<T>, Receiver<T>) {
    let config = BufferConfig {
        max_elements: config.max_elements.max(1),
        max_bytes: config.max_bytes.max(1),
    };
    metrics.set_capacity(config.max_elements as u64, config.max_bytes as u64);
    let bounds = Arc::new(Bounds {
        elements: Semaphore::new(config.max_elements as usize),
        bytes: Semaphore::new(config.max_bytes as usize),
        config,
        metrics,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            bounds: Arc::clone(&bounds),
        },
        Receiver { rx, bounds },
    )
}

pub(crate) fn batch_bytes<T: Data>(batch: &[Element<T>]) -> usize {
    batch.iter().map(|e| e.value.size_bytes()).sum()
}

impl<T: Data> Sender<T> {
    /// Sends a batch, waiting for room. On failure the batch's elements are marked errored (never
    /// silently acknowledged) and dropped.
    pub(crate) async fn send_batch(&self, batch: Vec<Element<T>>) -> Result<(), Disconnected> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes = batch_bytes(&batch);
        let bound = self.bounds.config;
        if batch.len() > 1
            && (batch.len() > bound.max_elements as usize || bytes > bound.max_bytes as usize)
        {
            return self.send_in_chunks(batch).await;
        }
        self.send_fitting(batch, bytes).await
    }

    /// Sends a batch above the bound as consecutive chunks within it (a single element above the byte
    /// bound forms a chunk of its own). After a failure, the elements not sent are marked errored.
    async fn send_in_chunks(&self, batch: Vec<Element<T>>) -> Result<(), Disconnected> {
        let max_elements = self.bounds.config.max_elements as usize;
        let max_bytes = self.bounds.config.max_bytes as usize;
        let mut rest = batch.into_iter();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        while let Some(e) = rest.next() {
            let b = e.value.size_bytes();
            if !chunk.is_empty() && (chunk.len() >= max_elements || chunk_bytes + b > max_bytes) {
                let full = std::mem::take(&mut chunk);
                if let Err(e2) = self.send_fitting(full, chunk_bytes).await {
                    e.finalizers.update(Status::Errored);
                    fail(rest.collect());
                    return Err(e2);
                }
                chunk_bytes = 0;
            }
            chunk_bytes += b;
            chunk.push(e);
        }
        self.send_fitting(chunk, chunk_bytes).await
    }

    /// Sends a batch within the bound (or a single element above it), waiting for room.
    async fn send_fitting(&self, batch: Vec<Element<T>>, bytes: usize) -> Result<(), Disconnected> {
        let n = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let want_n = n.min(self.bounds.config.max_elements);
        let want_b = bytes.min(self.bounds.config.max_bytes);
        let acquired = async {
            self.bounds.elements.acquire_many(want_n).await?.forget();
            self.bounds.bytes.acquire_many(want_b).await?.forget();
            Ok::<(), tokio::sync::AcquireError>(())
        }
        .await;
        if acquired.is_err() {
            fail(batch);
            return Err(Disconnected);
        }
        self.bounds.metrics.add(i64::from(n), i64::from(bytes));
        let envelope = Envelope {
            msg: Message::Batch(batch),
            permits_elements: want_n,
            permits_bytes: want_b,
            bytes,
        };
        match self.tx.send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(envelope)) => {
                self.bounds.metrics.add(-i64::from(n), -i64::from(bytes));
                if let Message::Batch(b) = envelope.msg {
                    fail(b);
                }
                Err(Disconnected)
            }
        }
    }

    /// True once the receiving step is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends a watermark (never blocks).
    pub(crate) fn send_watermark(&self, wm: Watermark) -> Result<(), Disconnected> {
        self.tx
            .send(Envelope {
                msg: Message::Watermark(wm),
                permits_elements: 0,
                permits_bytes: 0,
                bytes: 0,
            })
            .map_err(|_| Disconnected)
    }
}

fn fail<T>(batch: Vec<Element<T>>) {
    for e in &batch {
        e.finalizers.update(Status::Errored);
    }
}

impl<T: Data> Receiver<T> {
    /// The next message, or `None` once every sender is gone and the buffer is empty.
    pub(crate) async fn recv(&mut self) -> Option<Message<T>> {
        let env = self.rx.recv().await?;
        if let Message::Batch(batch) = &env.msg {
            // Record the departure before freeing room, so the depth gauge never overstates the buffer.
            self.bounds
                .metrics
                .add(-(batch.len() as i64), -i64::from(env.bytes));
            self.bounds
                .elements
                .add_permits(env.permits_elements as usize);
            self.bounds.bytes.add_permits(env.permits_bytes as usize);
        }
        Some(env.msg)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Wake any sender waiting for room: nobody will ever make it.
        self.bounds.elements.close();
        self.bounds.bytes.close();
        self.rx.close();
        while let Ok(env) = self.rx.try_recv() {
            if let Message::Batch(b) = env.msg {
                fail(b);
            }
        }
    }
}
