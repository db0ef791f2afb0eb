//! Writing objects: whole objects, and large ones in parts (multipart through `object_store`,
//! resumable uploads through `gcloud-storage`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use gcloud_storage::client::Client as GcsClient;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::error::{gcs_error, os_error, StorageError, StorageErrorKind};
use super::store::{object_path, Backend, Store};

impl Store {
    /// Writes an object whole, replacing any object of that name; objects of at least the multipart
    /// threshold go up in parts. Returns once the object is stored.
    pub async fn put(
        &self,
        name: &str,
        data: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let full = self.full_name(name);
        let multipart = data.len() as u64 >= self.options.multipart_threshold;
        if multipart {
            self.stats.multipart_uploads.fetch_add(1, Ordering::Relaxed);
            self.stats.parts.fetch_add(
                (data.len() as u64).div_ceil(self.options.part_size.max(1)),
                Ordering::Relaxed,
            );
        } else {
            self.stats.single_uploads.fetch_add(1, Ordering::Relaxed);
        }
        match &self.backend {
            Backend::Object(store) => {
                let path = object_path(&full, "upload")?;
                if multipart {
                    self.put_object_store_multipart(store.as_ref(), &path, &full, data)
                        .await
                } else {
                    self.timed("upload", &full, async {
                        store
                            .put(&path, PutPayload::from(data))
                            .await
                            .map(|_| ())
                            .map_err(|e| os_error("upload", &full, e))
                    })
                    .await
                }
            }
            Backend::Gcs { client, bucket } => {
                let req = UploadObjectRequest {
                    bucket: bucket.clone(),
                    ..Default::default()
                };
                let mut media = Media::new(full.clone());
                media.content_type = content_type.to_string().into();
                media.content_length = Some(data.len() as u64);
                if multipart {
                    self.put_gcs_resumable(client, &req, media, &full, data)
                        .await
                } else {
                    self.timed("upload", &full, async {
                        client
                            .upload_object(&req, data, &UploadType::Simple(media))
                            .await
                            .map(|_| ())
                            .map_err(|e| gcs_error("upload", &full, e))
                    })
                    .await
                }
            }
        }
    }

    async fn put_object_store_multipart(
        &self,
        store: &dyn ObjectStore,
        path: &StorePath,
        full: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let mut upload = self
            .timed("upload", full, async {
                store
                    .put_multipart(path)
                    .await
                    .map_err(|e| os_error("upload", full, e))
            })
            .await?;
        let part = self.options.part_size as usize;
        let mut parts = Vec::with_capacity(data.len().div_ceil(part));
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + part).min(data.len());
            parts.push(upload.put_part(PutPayload::from(data.slice(offset..end))));
            offset = end;
        }
        let sent = futures::stream::iter(parts)
            .buffered(4)
            .try_collect::<Vec<()>>();
        let result = self
            .timed("upload part", full, async {
                sent.await.map_err(|e| os_error("upload part", full, e))
            })
            .await;
        match result {
            Ok(_) => {
                self.timed("upload", full, async {
                    upload
                        .complete()
                        .await
                        .map(|_| ())
                        .map_err(|e| os_error("upload", full, e))
                })
                .await
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    async fn put_gcs_resumable(
        &self,
        client: &GcsClient,
        req: &UploadObjectRequest,
        media: Media,
        full: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let uploader = self
            .timed("upload", full, async {
                client
                    .prepare_resumable_upload(req, &UploadType::Simple(media))
                    .await
                    .map_err(|e| gcs_error("upload", full, e))
            })
            .await?;
        let total = data.len() as u64;
        let part = self.options.part_size;
        let mut first = 0u64;
        while first < total {
            let last = (first + part).min(total) - 1;
            let chunk = data.slice(first as usize..=last as usize);
            let size = ChunkSize::new(first, last, Some(total));
            let status = self
                .timed("upload part", full, async {
                    uploader
                        .upload_multiple_chunk(chunk, &size)
                        .await
                        .map_err(|e| gcs_error("upload part", full, e))
                })
                .await?;
            match status {
                UploadStatus::Ok(_) => {
                    if last + 1 != total {
                        return Err(StorageError::new(
                            StorageErrorKind::Transient,
                            "upload part",
                            full,
                            format!("upload finished early at byte {last} of {total}"),
                        ));
                    }
                }
                UploadStatus::ResumeIncomplete(r) if r.last_byte == last => {}
                other => {
                    return Err(StorageError::new(
                        StorageErrorKind::Transient,
                        "upload part",
                        full,
                        format!("unexpected upload state after bytes {first}-{last}: {other:?}"),
                    ))
                }
            }
            first = last + 1;
        }
        Ok(())
    }
}
