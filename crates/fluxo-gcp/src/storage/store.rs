//! The object store behind the sink and the source: `gs://` through the `gcloud-storage` crate (Cloud
//! Storage JSON API, resumable uploads for large objects), `file://` and `memory://` through
//! `object_store` (local file system, in-memory). One enum, so both paths share the sink and source
//! code. Why not `object_store` for `gs://` as well: see `docs/connectors/storage.md`.
//!
//! Here: opening a store and what every request shares (names under the prefix, the request
//! deadline). Reads, listing and deletes are in `objects.rs`, writes in `upload.rs`, the bucket in
//! `bucket.rs`, the endpoint in `endpoint.rs`, errors and their retry classes in `error.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use fluxo::Timestamp;
use gcloud_storage::client::{Client as GcsClient, ClientConfig};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;

use super::config::{Location, StoreOptions};
use super::endpoint::{resolve_endpoint, STORAGE_EMULATOR_ENV};
use super::error::{StorageError, StorageErrorKind};
use crate::error::ConfigError;

pub(super) const SERVICE: &str = "Cloud Storage";

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the store's prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the store reports one.
    pub last_modified: Option<Timestamp>,
}

#[derive(Clone)]
pub(super) enum Backend {
    Object(Arc<dyn ObjectStore>),
    Gcs {
        client: Arc<GcsClient>,
        bucket: String,
    },
}

/// Counts of the uploads a [`Store`] made (shared by its clones).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Objects uploaded in one request.
    pub single_uploads: AtomicU64,
    /// Objects uploaded in parts (resumable / multipart).
    pub multipart_uploads: AtomicU64,
    /// Parts uploaded by multipart uploads.
    pub parts: AtomicU64,
}

/// A bucket (with an optional prefix), a local directory or an in-memory store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) backend: Backend,
    pub(super) stats: Arc<StoreStats>,
    /// Prefix (without trailing `/`) prepended to every name; empty for none.
    pub(super) root: String,
    /// For messages: the URL or `gs://bucket` plus endpoint.
    pub(super) describe: String,
    pub(super) endpoint: String,
    pub(super) options: StoreOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.describe)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

fn memory_registry() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static REG: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

impl Store {
    /// Opens a location: no request is made (see [`Store::check`]). For `gs://` without an emulator
    /// this loads Application Default Credentials, which can fail.
    pub async fn open(location: &Location, options: StoreOptions) -> Result<Store, ConfigError> {
        match location {
            Location::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ConfigError::invalid(
                        "storage.url",
                        format!("cannot create directory {}: {e}", dir.display()),
                    )
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                    ConfigError::invalid(
                        "storage.url",
                        format!("cannot use directory {}: {e}", dir.display()),
                    )
                })?;
                Ok(Store {
                    backend: Backend::Object(Arc::new(fs)),
                    root: String::new(),
                    describe: format!("file://{}", dir.display()),
                    endpoint: "local file system".into(),
                    options,
                    stats: Arc::default(),
                })
            }
            Location::Memory(name) => {
                let mem = Arc::clone(
                    memory_registry()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(name.clone())
                        .or_insert_with(|| Arc::new(InMemory::new())),
                );
                Ok(Store {
                    backend: Backend::Object(mem),
                    root: String::new(),
                    describe: format!("memory://{name}"),
                    endpoint: "memory".into(),
                    options,
                    stats: Arc::default(),
                })
            }
            Location::Gcs { bucket, prefix } => {
                let (endpoint, emulator) = resolve_endpoint(options.endpoint.as_deref());
                let config = ClientConfig {
                    storage_endpoint: endpoint.clone(),
                    ..ClientConfig::default()
                };
                let config = if emulator {
                    config.anonymous()
                } else {
                    config.with_auth().await.map_err(|e| ConfigError::Unreachable {
                        service: SERVICE,
                        endpoint: endpoint.clone(),
                        reason: format!(
                            "no Application Default Credentials ({e}); run `gcloud auth application-default login`, use Workload Identity, or set {STORAGE_EMULATOR_ENV}"
                        ),
                    })?
                };
                Ok(Store {
                    backend: Backend::Gcs {
                        client: Arc::new(GcsClient::new(config)),
                        bucket: bucket.clone(),
                    },
                    root: prefix.clone(),
                    describe: if prefix.is_empty() {
                        format!("gs://{bucket}")
                    } else {
                        format!("gs://{bucket}/{prefix}")
                    },
                    endpoint,
                    options,
                    stats: Arc::default(),
                })
            }
        }
    }

    /// Upload counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The location, for messages (`gs://bucket/prefix`, `file:///dir`).
    pub fn location(&self) -> &str {
        &self.describe
    }

    /// The endpoint used (`https://storage.googleapis.com`, an emulator URL, `local file system`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(super) fn full_name(&self, name: &str) -> String {
        if self.root.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.root)
        }
    }

    pub(super) fn relative<'a>(&self, full: &'a str) -> &'a str {
        if self.root.is_empty() {
            full
        } else {
            full.strip_prefix(&self.root)
                .map(|s| s.trim_start_matches('/'))
                .unwrap_or(full)
        }
    }

    /// Runs one request under the store's request deadline: a service that stops answering fails
    /// the request as transient (retried) instead of holding the batch forever.
    pub(super) async fn timed<T>(
        &self,
        op: &'static str,
        object: &str,
        f: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.options.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::new(
                StorageErrorKind::Transient,
                op,
                object,
                format!(
                    "no answer from {} within {:?}",
                    self.endpoint, self.options.request_timeout
                ),
            )),
        }
    }
}

pub(super) fn object_path(name: &str, op: &'static str) -> Result<StorePath, StorageError> {
    StorePath::parse(name).map_err(|e| {
        StorageError::new(
            StorageErrorKind::Permanent,
            op,
            name,
            format!("invalid object name: {e}"),
        )
    })
}
