//! Reading, listing and deleting the objects of a [`Store`] (writing: `upload.rs`).

use bytes::Bytes;
use fluxo::Timestamp;
use futures::stream::TryStreamExt;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use object_store::ObjectStoreExt;

use super::error::{gcs_error, os_error, StorageError, StorageErrorKind};
use super::store::{object_path, Backend, ObjectInfo, Store};

impl Store {
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
}
