//! The object store behind the sink and the source: `gs://` through the `gcloud-storage` crate (Cloud
//! Storage JSON API, resumable uploads for large objects), `file://` and `memory://` through
//! `object_store` (local file system, in-memory). One enum, so both paths share the sink and source
//! code. Why not `object_store` for `gs://` as well: see `docs/connectors/storage.md`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use fluxo::Timestamp;
use futures::stream::TryStreamExt;
use gcloud_storage::client::{Client as GcsClient, ClientConfig};
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::config::{Location, StoreOptions};
use super::error::{gcs_error, one_line, os_error};
pub use super::error::{StorageError, StorageErrorKind};
use crate::error::ConfigError;

const SERVICE: &str = "Cloud Storage";
/// The environment variable with the Cloud Storage emulator's URL (`http://host:port`).
pub const STORAGE_EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

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

/// The Cloud Storage endpoint to use: the explicit one, else `STORAGE_EMULATOR_HOST` (a bare
/// `host:port` gets `http://`), else Google's. The flag says whether it is an emulator (no credentials).
pub fn resolve_endpoint(explicit: Option<&str>) -> (String, bool) {
    endpoint_from(
        explicit,
        std::env::var(STORAGE_EMULATOR_ENV).ok().as_deref(),
    )
}

fn endpoint_from(explicit: Option<&str>, env: Option<&str>) -> (String, bool) {
    if let Some(e) = explicit {
        let e = e.trim_end_matches('/').to_string();
        let emulator = e != GOOGLE_ENDPOINT;
        return (e, emulator);
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        let e = e.trim_end_matches('/');
        let e = if e.contains("://") {
            e.to_string()
        } else {
            format!("http://{e}")
        };
        return (e, true);
    }
    (GOOGLE_ENDPOINT.to_string(), false)
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

    fn relative<'a>(&self, full: &'a str) -> &'a str {
        if self.root.is_empty() {
            full
        } else {
            full.strip_prefix(&self.root)
                .map(|s| s.trim_start_matches('/'))
                .unwrap_or(full)
        }
    }

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

    /// Reads an object whole.
    pub async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        let full = self.full_name(name);
        match &self.backend {
            Backend::Object(store) => {
                let path = object_path(&full, "download")?;
                self.timed("download", &full, async {
                    let r = store
                        .get(&path)
                        .await
                        .map_err(|e| os_error("download", &full, e))?;
                    r.bytes().await.map_err(|e| os_error("download", &full, e))
                })
                .await
            }
            Backend::Gcs { client, bucket } => {
                self.timed("download", &full, async {
                    client
                        .download_object(
                            &GetObjectRequest {
                                bucket: bucket.clone(),
                                object: full.clone(),
                                ..Default::default()
                            },
                            &Range::default(),
                        )
                        .await
                        .map(Bytes::from)
                        .map_err(|e| gcs_error("download", &full, e))
                })
                .await
            }
        }
    }

    /// Lists the objects whose name (relative to the store's prefix) starts with `prefix`, sorted by
    /// name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let full_prefix = self.full_name(prefix);
        let mut out = Vec::new();
        match &self.backend {
            Backend::Object(store) => {
                // object_store lists whole path segments: list the parent "directory", filter by prefix.
                let dir = full_prefix.rsplit_once('/').map_or("", |(d, _)| d);
                let dir_path = if dir.is_empty() {
                    None
                } else {
                    Some(object_path(dir, "list")?)
                };
                let listed = self
                    .timed("list", &full_prefix, async {
                        store
                            .list(dir_path.as_ref())
                            .try_collect::<Vec<_>>()
                            .await
                            .map_err(|e| os_error("list", &full_prefix, e))
                    })
                    .await;
                let listed = match listed {
                    Ok(l) => l,
                    // A directory that does not exist yet holds nothing.
                    Err(e) if e.kind == StorageErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(e),
                };
                for meta in listed {
                    let name = meta.location.as_ref();
                    if !name.starts_with(&full_prefix) {
                        continue;
                    }
                    out.push(ObjectInfo {
                        name: self.relative(name).to_string(),
                        size: meta.size,
                        last_modified: Some(Timestamp(meta.last_modified.timestamp_micros())),
                    });
                }
            }
            Backend::Gcs { client, bucket } => {
                let mut page_token = None;
                loop {
                    let req = ListObjectsRequest {
                        bucket: bucket.clone(),
                        prefix: (!full_prefix.is_empty()).then(|| full_prefix.clone()),
                        page_token: page_token.take(),
                        max_results: Some(1000),
                        ..Default::default()
                    };
                    let page = self
                        .timed("list", &full_prefix, async {
                            client
                                .list_objects(&req)
                                .await
                                .map_err(|e| gcs_error("list", &full_prefix, e))
                        })
                        .await?;
                    for o in page.items.unwrap_or_default() {
                        out.push(ObjectInfo {
                            name: self.relative(&o.name).to_string(),
                            size: u64::try_from(o.size).unwrap_or(0),
                            last_modified: o
                                .updated
                                .map(|t| Timestamp((t.unix_timestamp_nanos() / 1000) as i64)),
                        });
                    }
                    match page.next_page_token {
                        Some(t) if !t.is_empty() => page_token = Some(t),
                        _ => break,
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes an object (tests and tools).
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let full = self.full_name(name);
        match &self.backend {
            Backend::Object(store) => {
                let path = object_path(&full, "delete")?;
                self.timed("delete", &full, async {
                    store
                        .delete(&path)
                        .await
                        .map_err(|e| os_error("delete", &full, e))
                })
                .await
            }
            Backend::Gcs { client, bucket } => {
                self.timed("delete", &full, async {
                    client
                        .delete_object(&DeleteObjectRequest {
                            bucket: bucket.clone(),
                            object: full.clone(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| gcs_error("delete", &full, e))
                })
                .await
            }
        }
    }

    /// Creates the bucket of a `gs://` store in `project` (provisioning, emulators); a bucket that
    /// already exists is fine. Does nothing for other stores.
    pub async fn create_bucket(&self, project: &str) -> Result<(), StorageError> {
        let Backend::Gcs { client, bucket } = &self.backend else {
            return Ok(());
        };
        let req = InsertBucketRequest {
            name: bucket.clone(),
            param: InsertBucketParam {
                project: project.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        match self
            .timed("create bucket", bucket, async {
                client
                    .insert_bucket(&req)
                    .await
                    .map_err(|e| gcs_error("create bucket", bucket, e))
            })
            .await
        {
            Ok(_) => Ok(()),
            // 409 Conflict: the bucket exists already.
            Err(e) if e.status == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Checks before a pipeline starts that the bucket exists and answers (`gs://`), or that the
    /// directory is writable (`file://`, by writing and deleting a probe object when `writable`).
    /// Returns a one-line error that says what to do.
    pub async fn check(&self, writable: bool) -> Result<(), ConfigError> {
        match &self.backend {
            Backend::Gcs { client, bucket } => {
                let r = self
                    .timed("get bucket", bucket, async {
                        client
                            .get_bucket(&GetBucketRequest {
                                bucket: bucket.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| gcs_error("get bucket", bucket, e))
                    })
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind == StorageErrorKind::NotFound => Err(ConfigError::NotFound {
                        service: SERVICE,
                        kind: "bucket",
                        name: bucket.clone(),
                        hint: format!(
                            " at {}; create it (gcloud storage buckets create gs://{bucket}) or fix storage.url",
                            self.endpoint
                        ),
                    }),
                    Err(e) => Err(ConfigError::Unreachable {
                        service: SERVICE,
                        endpoint: self.endpoint.clone(),
                        reason: format!(
                            "{} (check storage.endpoint / {STORAGE_EMULATOR_ENV}, the network and the credentials' storage permissions)",
                            one_line(&e.message)
                        ),
                    }),
                }
            }
            Backend::Object(_) => {
                if !writable {
                    return self
                        .list("")
                        .await
                        .map(|_| ())
                        .map_err(|e| ConfigError::Unreachable {
                            service: SERVICE,
                            endpoint: self.describe.clone(),
                            reason: one_line(&e.message),
                        });
                }
                let probe = format!(".fluxo-probe-{}-{}", std::process::id(), fastrand::u64(..));
                let r = async {
                    self.put(&probe, Bytes::from_static(b"probe"), "text/plain")
                        .await?;
                    self.delete(&probe).await
                }
                .await;
                r.map_err(|e| ConfigError::Invalid {
                    field: "storage.url".into(),
                    reason: format!(
                        "{} is not writable: {}",
                        self.describe,
                        one_line(&e.message)
                    ),
                })
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fluxo::ErrorClass;

    #[test]
    fn endpoint_resolution_order() {
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:1/"), Some("http://x:2")),
            ("http://127.0.0.1:1".to_string(), true)
        );
        assert_eq!(
            endpoint_from(None, Some("localhost:4443")),
            ("http://localhost:4443".to_string(), true)
        );
        assert_eq!(
            endpoint_from(None, Some("")),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
        assert_eq!(
            endpoint_from(None, None),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
        assert_eq!(
            endpoint_from(Some(GOOGLE_ENDPOINT), None),
            (GOOGLE_ENDPOINT.to_string(), false)
        );
    }

    #[test]
    fn error_classes() {
        let e = |kind, op| StorageError::new(kind, op, "o", "m");
        assert!(e(StorageErrorKind::Transient, "download").is_retriable());
        assert!(e(StorageErrorKind::NotFound, "upload").is_retriable());
        assert!(!e(StorageErrorKind::NotFound, "download").is_retriable());
        assert!(!e(StorageErrorKind::Permanent, "upload").is_retriable());
        assert!(!e(StorageErrorKind::Encode, "encode").is_retriable());
    }
}
