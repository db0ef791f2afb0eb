//! The bounded Cloud Storage source (replays and backfills): lists the objects under a prefix in name
//! order, downloads a few ahead, decompresses (gzip by suffix or configuration), splits them into
//! records, decodes and emits them with an event time, and advances the watermark to the earliest event
//! time any remaining object can hold. It stops between batches when the pipeline shuts down. It does
//! not track acknowledgement: a replay is re-run, not resumed.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use fluxo::{BoxError, Data, Element, Source, SourceContext, Timestamp};
use futures::stream::StreamExt;
use serde::de::DeserializeOwned;

use super::config::{
    EventTimeFrom, FormatKind, OnDecodeError, SourceCompression, SourceSettings,
    StorageSourceConfig,
};
use super::error::{StorageError, StorageErrorKind};
use super::format::{gunzip, split_records};
use super::naming::partition_time;
use super::store::{ObjectInfo, Store};
use crate::error::ConfigError;

/// One record's exact bytes (a slice of the object's buffer: no copy).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Record(pub Bytes);

impl Record {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "Record({s:?})"),
            Err(_) => write!(f, "Record({:?})", self.0),
        }
    }
}

impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Record {
    fn from(v: Vec<u8>) -> Self {
        Record(Bytes::from(v))
    }
}

impl From<&'static str> for Record {
    fn from(s: &'static str) -> Self {
        Record(Bytes::from_static(s.as_bytes()))
    }
}

impl Data for Record {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.0.len()
    }
}

/// Turns one record into an element value.
pub trait Decode<T>: Send + Sync + 'static {
    /// Decodes `record`, read from `object`.
    fn decode(&self, record: Bytes, object: &ObjectInfo) -> Result<T, BoxError>;
}

/// Records as [`Record`]s, exactly as stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Decode<Record> for RawDecoder {
    fn decode(&self, record: Bytes, _object: &ObjectInfo) -> Result<Record, BoxError> {
        Ok(Record(record))
    }
}

/// Records as JSON values deserialized with serde.
pub struct JsonDecoder<T>(PhantomData<fn() -> T>);

impl<T> Default for JsonDecoder<T> {
    fn default() -> Self {
        JsonDecoder(PhantomData)
    }
}

impl<T: DeserializeOwned + 'static> Decode<T> for JsonDecoder<T> {
    fn decode(&self, record: Bytes, _object: &ObjectInfo) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(&record)?)
    }
}

type EventTimeFn<T> = dyn Fn(&T, &ObjectInfo) -> Timestamp + Send + Sync;

/// Reads objects back as elements. Build with [`StorageSource::json`], [`StorageSource::raw`] or
/// [`StorageSource::with_decoder`], then [`StorageSource::open`].
pub struct StorageSource<T> {
    settings: SourceSettings,
    decoder: Arc<dyn Decode<T>>,
    event_time: Option<Arc<EventTimeFn<T>>>,
    store: Option<Store>,
}

impl StorageSource<Record> {
    /// Exact records as [`Record`]s.
    pub fn raw(config: &StorageSourceConfig) -> Result<Self, ConfigError> {
        StorageSource::with_decoder(config, RawDecoder)
    }
}

impl<T: Data + DeserializeOwned> StorageSource<T> {
    /// Records as serde JSON values.
    pub fn json(config: &StorageSourceConfig) -> Result<Self, ConfigError> {
        StorageSource::with_decoder(config, JsonDecoder::<T>::default())
    }
}

impl<T: Data> StorageSource<T> {
    /// Records decoded by `decoder`.
    pub fn with_decoder(
        config: &StorageSourceConfig,
        decoder: impl Decode<T>,
    ) -> Result<Self, ConfigError> {
        Ok(StorageSource {
            settings: config.validate()?,
            decoder: Arc::new(decoder),
            event_time: None,
            store: None,
        })
    }

    /// Takes each element's event time from this function instead of the configuration's
    /// `event_time` (then the watermark only advances at the end of the input).
    pub fn event_time(
        mut self,
        f: impl Fn(&T, &ObjectInfo) -> Timestamp + Send + Sync + 'static,
    ) -> Self {
        self.event_time = Some(Arc::new(f));
        self
    }

    /// Uses an already opened store.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the store and checks that the bucket (or directory) exists and answers.
    pub async fn open(mut self) -> Result<Self, ConfigError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => Store::open(&self.settings.location, self.settings.store.clone()).await?,
        };
        store.check(false).await?;
        self.store = Some(store);
        Ok(self)
    }

    fn object_time(&self, o: &ObjectInfo) -> Timestamp {
        let modified = o.last_modified.unwrap_or(Timestamp::MIN);
        match self.settings.event_time {
            EventTimeFrom::ObjectName => partition_time(&o.name).unwrap_or(modified),
            EventTimeFrom::LastModified => modified,
        }
    }
}

/// Attempts of a request that fails transiently (connection refused, timeout, 429, 5xx) before the
/// replay gives up.
const ATTEMPTS: u32 = 6;

/// Runs a request again after transient failures, with exponential backoff and full jitter
/// (100 ms doubling, at most 5 s).
async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.kind == StorageErrorKind::Transient && attempt + 1 < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "retrying a storage request");
                let (initial, max) = (
                    std::time::Duration::from_millis(100),
                    std::time::Duration::from_secs(5),
                );
                tokio::time::sleep(fluxo::backoff(initial, max, attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn fetch(
    store: Store,
    object: ObjectInfo,
    compression: SourceCompression,
    max: u64,
) -> Result<(ObjectInfo, Bytes), StorageError> {
    if object.size > max {
        return Err(StorageError::new(
            StorageErrorKind::Permanent,
            "download",
            &object.name,
            format!(
                "object of {} bytes exceeds max_object_bytes ({max})",
                object.size
            ),
        ));
    }
    let data = with_retries(|| store.get(&object.name)).await?;
    let gz = match compression {
        SourceCompression::Auto => object.name.ends_with(".gz"),
        SourceCompression::Gzip => true,
        SourceCompression::None => false,
    };
    let data = if gz {
        let name = object.name.clone();
        tokio::task::spawn_blocking(move || gunzip(&data))
            .await
            .map_err(|e| {
                StorageError::new(StorageErrorKind::Permanent, "gunzip", &name, e.to_string())
            })?
            .map(Bytes::from)
            .map_err(|e| {
                StorageError::new(StorageErrorKind::Permanent, "gunzip", &name, e.to_string())
            })?
    } else {
        data
    };
    Ok((object, data))
}

impl<T: Data> Source for StorageSource<T> {
    type Output = T;

    async fn run(mut self, mut ctx: SourceContext<T>) -> Result<(), BoxError> {
        let store = match self.store.take() {
            Some(s) => s,
            None => Store::open(&self.settings.location, self.settings.store.clone()).await?,
        };
        let prefix = self.settings.prefix.clone();
        let mut objects = with_retries(|| store.list(&prefix)).await?;
        // Hidden probe objects of a writability check are not data.
        objects.retain(|o| {
            !o.name
                .rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with(".fluxo-probe-")
        });
        tracing::info!(location = store.location(), prefix = %self.settings.prefix, objects = objects.len(), "replaying objects");
        // The watermark after object k: the earliest time any later object can carry.
        let times: Vec<Timestamp> = objects.iter().map(|o| self.object_time(o)).collect();
        let mut suffix_min = vec![Timestamp::MAX; times.len() + 1];
        for i in (0..times.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(times[i]);
        }
        let settings = self.settings.clone();
        let mut downloads = futures::stream::iter(objects.into_iter().map(|o| {
            fetch(
                store.clone(),
                o,
                settings.compression,
                settings.max_object_bytes,
            )
        }))
        .buffered(settings.read_ahead);
        let batch = ctx.batch_size();
        let mut index = 0usize;
        while let Some(fetched) = downloads.next().await {
            if ctx.shutdown().is_triggered() {
                tracing::info!("shutdown: the replay stops before the next object");
                return Ok(());
            }
            let (object, data) = fetched?;
            let object_time = times[index];
            index += 1;
            let records = split_records(settings.format, &data)
                .map_err(|e| format!("object '{}': {e}", object.name))?;
            let mut elements = Vec::with_capacity(records.len().min(batch));
            for (n, r) in records.into_iter().enumerate() {
                let value = match self.decoder.decode(r, &object) {
                    Ok(v) => v,
                    Err(e) => match settings.on_decode_error {
                        OnDecodeError::Fail => {
                            return Err(format!(
                                "object '{}' record {n}: cannot decode: {e}",
                                object.name
                            )
                            .into())
                        }
                        OnDecodeError::Skip => {
                            tracing::warn!(object = %object.name, record = n, error = %e, "skipping a record that does not decode");
                            ctx.metrics().rejected.inc();
                            continue;
                        }
                    },
                };
                let ts = match &self.event_time {
                    Some(f) => f(&value, &object),
                    None => object_time,
                };
                elements.push(Element::new(value, ts));
                if elements.len() >= batch {
                    ctx.emit(std::mem::replace(&mut elements, Vec::with_capacity(batch)))
                        .await?;
                    if ctx.shutdown().is_triggered() {
                        return Ok(());
                    }
                }
            }
            ctx.emit(elements).await?;
            if self.event_time.is_none() && settings.format != FormatKind::Parquet {
                let next = suffix_min[index];
                if next != Timestamp::MAX {
                    ctx.advance_watermark(next);
                }
            }
        }
        Ok(())
    }
}
