//! The ingest checkpoint and run lease, kept in one Bigtable row per source and changed only with
//! `CheckAndMutateRow` (compare-and-set on the exact current value), so two runs cannot both advance
//! the checkpoint or both hold the lease.
//!
//! Row `ingest/<source>` in family `c`: column `token` holds the checkpoint token; column `lease` holds
//! `<expiry in ms since the epoch, 20 digits>|<owner>`.

use std::time::Duration;

use bytes::Bytes;
use fluxo_gcp::bigtable::{BigtableReader, BigtableSinkConfig, Expected, ReadRow, SetCell};
use fluxo_http::checkpoint::now_millis;
use fluxo_http::{CheckpointStore, StoreError};

/// Column family of the checkpoint table.
pub const FAMILY: &str = "c";
const TOKEN: &[u8] = b"token";
const LEASE: &[u8] = b"lease";

/// A checkpoint store in a Bigtable table with family [`FAMILY`].
#[derive(Clone, Debug)]
pub struct BigtableCheckpointStore {
    reader: BigtableReader,
    key: Bytes,
}

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl BigtableCheckpointStore {
    /// The store of source `source` in the configured table (which must have family `c`).
    pub async fn connect(
        config: &BigtableSinkConfig,
        source: &str,
    ) -> Result<Self, fluxo_gcp::ConfigError> {
        Ok(BigtableCheckpointStore {
            reader: BigtableReader::connect(config).await?,
            key: Bytes::from(format!("ingest/{source}")),
        })
    }

    async fn row(&self) -> Result<Option<ReadRow>, StoreError> {
        self.reader
            .read_row(self.key.clone())
            .await
            .map_err(store_err)
    }

    fn newest(row: &Option<ReadRow>, qualifier: &[u8]) -> Option<Bytes> {
        row.as_ref().and_then(|r| {
            r.cells
                .iter()
                .filter(|c| c.family == FAMILY && c.qualifier.as_ref() == qualifier)
                .max_by_key(|c| c.timestamp_micros)
                .map(|c| c.value.clone())
        })
    }

    fn cell(qualifier: &'static [u8], value: Vec<u8>) -> SetCell {
        // Whole milliseconds, as Bigtable requires; a later write always carries a later or equal
        // version, and the compare filters read the newest.
        SetCell::new(
            FAMILY,
            Bytes::from_static(qualifier),
            (now_millis() as i64) * 1_000,
            value,
        )
    }

    async fn cas(
        &self,
        expected: Option<Bytes>,
        qualifier: &'static [u8],
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let expected = match expected {
            None => Expected::Absent,
            Some(v) => Expected::Value(v),
        };
        self.reader
            .compare_and_set(self.key.clone(), expected, Self::cell(qualifier, value))
            .await
            .map_err(store_err)
    }
}

fn parse_lease(v: &[u8]) -> Option<(u64, &[u8])> {
    let sep = v.iter().position(|&b| b == b'|')?;
    let until = std::str::from_utf8(&v[..sep]).ok()?.parse().ok()?;
    Some((until, &v[sep + 1..]))
}

impl CheckpointStore for BigtableCheckpointStore {
    async fn load(&self) -> Result<Option<String>, StoreError> {
        let row = self.row().await?;
        Ok(Self::newest(&row, TOKEN).map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn commit(&self, expected: Option<String>, next: String) -> Result<bool, StoreError> {
        self.cas(expected.map(Bytes::from), TOKEN, next.into_bytes())
            .await
    }

    async fn acquire_lease(&self, owner: String, ttl: Duration) -> Result<bool, StoreError> {
        let row = self.row().await?;
        let current = Self::newest(&row, LEASE);
        let now = now_millis();
        if let Some(v) = &current {
            match parse_lease(v) {
                Some((until, holder)) if holder != owner.as_bytes() && until > now => {
                    return Ok(false)
                }
                _ => {}
            }
        }
        let value = format!("{:020}|{owner}", now + ttl.as_millis() as u64);
        self.cas(current, LEASE, value.into_bytes()).await
    }

    async fn release_lease(&self, owner: String) -> Result<(), StoreError> {
        let row = self.row().await?;
        if let Some(v) = Self::newest(&row, LEASE) {
            if parse_lease(&v).is_some_and(|(_, h)| h == owner.as_bytes()) {
                // Expire it now (compare-and-set: only if it is still ours and unchanged).
                let value = format!("{:020}|{owner}", 0);
                self.cas(Some(v), LEASE, value.into_bytes()).await?;
            }
        }
        Ok(())
    }
}
