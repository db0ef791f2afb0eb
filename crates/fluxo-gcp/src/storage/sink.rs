//! The Cloud Storage sink: every batch the engine hands over becomes one object per (window, pane,
//! partition) — or one per element for per-element formats — named from the window and a SHA-256 of the
//! content, so a retried write produces the same name and replaces the object. Nothing is buffered
//! across calls: when `write` returns `Ok`, every object of the batch is stored.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use fluxo::{Data, Meta, PaneInfo, Sink, SinkBatch, Timestamp, Window, WriteError};
use futures::stream::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{Compression, ContentHash, FormatKind, SinkSettings, StorageSinkConfig};
use super::error::{StorageError, StorageErrorKind};
use super::format::{gzip, Format, Lines, Ndjson, RawObject, RawRecords};
use super::naming::{partition_of, ObjectKey, ObjectNamer};
use super::store::Store;
use crate::error::ConfigError;
use crate::metrics::RequestMetrics;

/// Writes batches of `T` as objects. Build it with [`StorageSink::json`], [`StorageSink::bytes`] or
/// [`StorageSink::with_format`], then [`StorageSink::open`] it (which checks the bucket or directory).
pub struct StorageSink<T> {
    store: Store,
    format: Arc<dyn Format<T>>,
    namer: Arc<dyn ObjectNamer>,
    settings: SinkSettings,
    extension: String,
    /// Set when the sink is added to a pipeline ([`Sink::register_metrics`]).
    requests: Option<RequestMetrics>,
}

/// A sink not opened yet: the format and naming are chosen, no request made.
pub struct StorageSinkBuilder<T> {
    settings: SinkSettings,
    format: Arc<dyn Format<T>>,
    namer: Option<Arc<dyn ObjectNamer>>,
    store: Option<Store>,
}

impl<T: Data + Serialize> StorageSink<T> {
    /// Newline-delimited JSON of serde values (`format: ndjson`, optionally gzip).
    pub fn json(config: &StorageSinkConfig) -> Result<StorageSinkBuilder<T>, ConfigError> {
        StorageSink::with_format(config, Ndjson::<T>::default())
    }
}

impl<T: Data + AsRef<[u8]>> StorageSink<T> {
    /// Byte values: lines for `ndjson` (values with a newline are rejected), length-framed records for
    /// `raw_records`, one object per element for `raw_object`.
    pub fn bytes(config: &StorageSinkConfig) -> Result<StorageSinkBuilder<T>, ConfigError> {
        match config.format {
            FormatKind::Ndjson => StorageSink::with_format(config, Lines::<T>::default()),
            FormatKind::RawRecords => StorageSink::with_format(config, RawRecords::<T>::default()),
            FormatKind::RawObject => StorageSink::with_format(config, RawObject::<T>::default()),
            FormatKind::Parquet => Err(ConfigError::invalid(
                "storage.format",
                "parquet needs a schema: use StorageSink::with_format with a ParquetFormat",
            )),
        }
    }
}

impl<T: Data> StorageSink<T> {
    /// Any [`Format`] (Parquet, [`super::PerValue`], your own); its kind must match the configuration's
    /// `format`.
    pub fn with_format(
        config: &StorageSinkConfig,
        format: impl Format<T>,
    ) -> Result<StorageSinkBuilder<T>, ConfigError> {
        let settings = config.validate()?;
        if format.kind() != settings.format {
            return Err(ConfigError::invalid(
                "storage.format",
                format!(
                    "is {:?} but the sink was built with a {:?} format",
                    settings.format,
                    format.kind()
                ),
            ));
        }
        Ok(StorageSinkBuilder {
            settings,
            format: Arc::new(format),
            namer: None,
            store: None,
        })
    }
}

impl<T: Data> StorageSinkBuilder<T> {
    /// Names objects with this namer instead of the configuration's template (for example the invoice
    /// pipeline's `raw/dt=.../hour=.../<sha256>.json` layout). It must be deterministic.
    pub fn naming(mut self, namer: impl ObjectNamer) -> Self {
        self.namer = Some(Arc::new(namer));
        self
    }

    /// Uses an already opened store (shares its client).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the store and checks that the bucket exists (or the directory is writable); the error is
    /// one line that says what to do.
    pub async fn open(mut self) -> Result<StorageSink<T>, ConfigError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => Store::open(&self.settings.location, self.settings.store.clone()).await?,
        };
        store.check(true).await?;
        Ok(self.build(store))
    }

    /// Builds the sink on `store` without any check (tests, tools).
    pub fn build(self, store: Store) -> StorageSink<T> {
        let mut extension = self.format.extension().to_string();
        if self.settings.compression == Compression::Gzip {
            extension.push_str(".gz");
        }
        StorageSink {
            store,
            format: self.format,
            namer: self
                .namer
                .unwrap_or_else(|| Arc::new(self.settings.naming.clone())),
            settings: self.settings,
            extension,
            requests: None,
        }
    }
}

/// One object to write: the elements (indices into the batch) of one window, pane and partition.
struct Group {
    window: Window,
    pane: PaneInfo,
    partition: Timestamp,
    indices: Vec<usize>,
}

fn same_pane(a: &PaneInfo, b: &PaneInfo) -> bool {
    a.index == b.index && a.timing == b.timing
}

fn group(meta: &[Meta], per_element: bool) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, m) in meta.iter().enumerate() {
        let partition = partition_of(m.window, m.timestamp);
        if !per_element {
            // Batches hold few windows: a linear search beats hashing.
            if let Some(g) = groups.iter_mut().rev().find(|g| {
                g.window == m.window && same_pane(&g.pane, &m.pane) && g.partition == partition
            }) {
                g.indices.push(i);
                continue;
            }
        }
        groups.push(Group {
            window: m.window,
            pane: m.pane,
            partition,
            indices: vec![i],
        });
    }
    groups
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The outcome of one object: the elements it failed for (with the error) or none.
type GroupFailures = Vec<(usize, StorageError)>;

impl<T: Data> StorageSink<T> {
    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Encodes and uploads one group; returns the per-element failures.
    async fn write_group(&self, values: &[T], meta: &[Meta], g: Group) -> GroupFailures {
        let refs: Vec<&T> = g.indices.iter().map(|&i| &values[i]).collect();
        let mut content = Vec::new();
        let mut rejected = Vec::new();
        self.format.encode(&refs, &mut content, &mut rejected);
        let mut failures: GroupFailures = rejected
            .into_iter()
            .map(|(j, e)| {
                (
                    g.indices[j],
                    StorageError::new(StorageErrorKind::Encode, "encode", "", e.0),
                )
            })
            .collect();
        if failures.len() == g.indices.len() {
            return failures;
        }
        let min_timestamp = g
            .indices
            .iter()
            .map(|&i| meta[i].timestamp)
            .min()
            .unwrap_or(Timestamp::MIN);
        let job = Prepare {
            content,
            namer: Arc::clone(&self.namer),
            extension: self.extension.clone(),
            compression: self.settings.compression,
            content_hash: self.settings.content_hash,
            gzip_level: self.settings.gzip_level,
            window: g.window,
            pane: g.pane,
            partition: g.partition,
            min_timestamp,
            records: g.indices.len() - failures.len(),
        };
        // Hashing (and gzip) of a large object runs on the blocking pool, so the sink's task keeps
        // taking in elements and driving the other uploads meanwhile.
        let prepared = if job.content.len() >= OFFLOAD_BYTES || job.compression == Compression::Gzip
        {
            match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(r) => r,
                Err(e) => Err(StorageError::new(
                    StorageErrorKind::Transient,
                    "encode",
                    "",
                    format!("encoding task failed: {e}"),
                )),
            }
        } else {
            job.run()
        };
        let (name, body) = match prepared {
            Ok(p) => p,
            Err(err) => return fail_rest(&g.indices, failures, err),
        };
        let started = std::time::Instant::now();
        let result = self
            .store
            .put(&name, body, self.format.content_type())
            .await;
        crate::metrics::record(self.requests.as_ref(), started, &result);
        match result {
            Ok(()) => {
                tracing::trace!(object = %name, records = g.indices.len(), "stored object");
                failures
            }
            Err(e) => {
                tracing::debug!(object = %name, error = %e, "object upload failed");
                failures = fail_rest(&g.indices, failures, e);
                failures
            }
        }
    }
}

/// Objects at least this large are hashed (and compressed) off the sink's task.
const OFFLOAD_BYTES: usize = 256 * 1024;

/// Naming and compression of one encoded object, runnable on the blocking pool.
struct Prepare {
    content: Vec<u8>,
    namer: Arc<dyn ObjectNamer>,
    extension: String,
    compression: Compression,
    content_hash: ContentHash,
    gzip_level: u32,
    window: Window,
    pane: PaneInfo,
    partition: Timestamp,
    min_timestamp: Timestamp,
    records: usize,
}

impl Prepare {
    /// The object's name and body.
    fn run(self) -> Result<(String, Bytes), StorageError> {
        let hash = match self.content_hash {
            ContentHash::Sha256 => hex(&Sha256::digest(&self.content)),
            ContentHash::Xxh3_128 => {
                hex(&twox_hash::XxHash3_128::oneshot(&self.content).to_be_bytes())
            }
        };
        let name = self.namer.name(&ObjectKey {
            window: self.window,
            pane: self.pane,
            partition_time: self.partition,
            min_timestamp: self.min_timestamp,
            hash: &hash,
            content: &self.content,
            extension: &self.extension,
            records: self.records,
        });
        let body = match self.compression {
            Compression::None => Bytes::from(self.content),
            Compression::Gzip => gzip(&self.content, self.gzip_level)
                .map(Bytes::from)
                .map_err(|e| {
                    StorageError::new(
                        StorageErrorKind::Transient,
                        "compress",
                        &name,
                        e.to_string(),
                    )
                })?,
        };
        Ok((name, body))
    }
}

/// Marks every element of the group that has no failure yet with `err`.
fn fail_rest(indices: &[usize], mut failures: GroupFailures, err: StorageError) -> GroupFailures {
    let failed: std::collections::HashSet<usize> = failures.iter().map(|(i, _)| *i).collect();
    for &i in indices {
        if !failed.contains(&i) {
            failures.push((i, err.clone()));
        }
    }
    failures
}

impl<T: Data> Sink<T> for StorageSink<T> {
    type Error = StorageError;

    fn register_metrics(&mut self, metrics: &fluxo::MetricScope) {
        self.requests = Some(RequestMetrics::new(metrics, "storage", "upload"));
    }

    async fn write(&self, batch: &SinkBatch<T>) -> Result<(), WriteError<StorageError>> {
        if batch.is_empty() {
            return Ok(());
        }
        let values = batch.values();
        let meta = batch.meta();
        let groups = group(meta, self.format.object_per_element());
        let single = groups.len() == 1;
        let mut failures: Vec<(usize, StorageError)> = futures::stream::iter(groups)
            .map(|g| self.write_group(values, meta, g))
            .buffer_unordered(self.settings.max_concurrent_uploads)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        if failures.is_empty() {
            return Ok(());
        }
        // One object whose upload failed as a whole: report the batch as failed.
        if single
            && failures.len() == batch.len()
            && failures
                .iter()
                .all(|(_, e)| e.kind != StorageErrorKind::Encode)
        {
            if let Some((_, e)) = failures.pop() {
                return Err(WriteError::All(e));
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        Err(WriteError::Partial(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo::Timing;

    #[test]
    fn groups_by_window_pane_and_hour() {
        let w1 = Window::new(Timestamp(0), Timestamp(10));
        let w2 = Window::new(Timestamp(10), Timestamp(20));
        let hour = 3_600_000_000;
        let m = |window, ts, idx| Meta {
            timestamp: Timestamp(ts),
            window,
            pane: PaneInfo {
                timing: Timing::OnTime,
                index: idx,
                is_last: false,
            },
        };
        let meta = vec![
            m(w1, 1, 0),
            m(w2, 11, 0),
            m(w1, 2, 0),
            m(w1, 3, 1),
            m(Window::GLOBAL, 5, 0),
            m(Window::GLOBAL, hour + 5, 0),
            m(Window::GLOBAL, 6, 0),
        ];
        let g = group(&meta, false);
        let idx: Vec<Vec<usize>> = g.iter().map(|g| g.indices.clone()).collect();
        assert_eq!(idx, vec![vec![0, 2], vec![1], vec![3], vec![4, 6], vec![5]]);
        assert_eq!(g[4].partition, Timestamp(hour));
        assert_eq!(group(&meta, true).len(), meta.len());
    }
}
