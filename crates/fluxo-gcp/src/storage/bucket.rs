//! The bucket of a [`Store`]: creating it (provisioning, emulators) and checking before a pipeline
//! starts that it answers.

use bytes::Bytes;
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};

use super::endpoint::STORAGE_EMULATOR_ENV;
use super::error::{gcs_error, one_line, StorageError, StorageErrorKind};
use super::store::{Backend, Store, SERVICE};
use crate::error::ConfigError;

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Location, StoreOptions};
    use emulators::{Emulators, Service};

    async fn gcs_store(endpoint: &str, bucket: &str) -> Store {
        // Built directly: `Location::parse` refuses the invalid name this test needs.
        let location = Location::Gcs {
            bucket: bucket.to_string(),
            prefix: String::new(),
        };
        let options = StoreOptions {
            endpoint: Some(endpoint.to_string()),
            ..StoreOptions::default()
        };
        Store::open(&location, options).await.expect("store")
    }

    /// Against the Cloud Storage emulator: the second creation of a bucket gets 409 Conflict and
    /// succeeds; a refused name (400) still fails, with its status.
    #[test]
    fn creating_a_bucket_twice_succeeds_and_other_refusals_fail() {
        let emu = Emulators::start(&[Service::Storage]).expect("fake-gcs-server starts");
        let endpoint = emu.storage_url().expect("storage started");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let store = gcs_store(&endpoint, "fluxo-created-twice").await;
            store.create_bucket("local-project").await.expect("created");
            store
                .create_bucket("local-project")
                .await
                .expect("created again");
            store.check(false).await.expect("the bucket exists");

            let invalid = gcs_store(&endpoint, "Not_A_Valid_Bucket!").await;
            let e = invalid
                .create_bucket("local-project")
                .await
                .expect_err("an invalid bucket name is refused");
            assert_eq!(e.status, Some(400), "{e}");
            assert_eq!(e.kind, StorageErrorKind::Permanent, "{e}");
        });
    }
}
