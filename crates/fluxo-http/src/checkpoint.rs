//! Where a polling source keeps its position between runs, and the lease that keeps two runs apart.
//!
//! A store compares and sets: [`CheckpointStore::commit`] only replaces the token it was given, so two
//! runs that somehow both poll cannot both advance it (the second sees a conflict and stops).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A failure of the checkpoint store itself (not a conflict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint store: {0}")]
pub struct StoreError(pub String);

/// Keeps the checkpoint token and the run lease.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The committed token, `None` before the first commit.
    fn load(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Atomically replaces the stored token by `next` if it still equals `expected`; `Ok(false)` when
    /// it does not (another run advanced it).
    fn commit(
        &self,
        expected: Option<String>,
        next: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes the lease for `owner` until now + `ttl`, unless another owner holds an unexpired lease;
    /// `Ok(true)` when `owner` holds it afterwards (taking it again extends it).
    fn acquire_lease(
        &self,
        owner: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the lease up if `owner` holds it.
    fn release_lease(&self, owner: String) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct MemoryState {
    token: Option<String>,
    lease: Option<(String, u64)>,
    commits: Vec<String>,
}

/// An in-process store (tests, single-run tools). Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every token committed so far, in order.
    pub fn commits(&self) -> Vec<String> {
        self.lock().commits.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self) -> Result<Option<String>, StoreError> {
        Ok(self.lock().token.clone())
    }

    async fn commit(&self, expected: Option<String>, next: String) -> Result<bool, StoreError> {
        let mut s = self.lock();
        if s.token != expected {
            return Ok(false);
        }
        s.commits.push(next.clone());
        s.token = Some(next);
        Ok(true)
    }

    async fn acquire_lease(&self, owner: String, ttl: Duration) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let now = now_millis();
        match &s.lease {
            Some((holder, until)) if *holder != owner && *until > now => Ok(false),
            _ => {
                s.lease = Some((owner, now + ttl.as_millis() as u64));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, owner: String) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.lease.as_ref().is_some_and(|(h, _)| *h == owner) {
            s.lease = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_set_and_leases() {
        let s = MemoryCheckpointStore::new();
        assert_eq!(s.load().await.unwrap(), None);
        assert!(s.commit(None, "a".into()).await.unwrap());
        assert!(!s.commit(None, "b".into()).await.unwrap());
        assert!(s.commit(Some("a".into()), "b".into()).await.unwrap());
        assert_eq!(s.load().await.unwrap().as_deref(), Some("b"));
        let ttl = Duration::from_secs(60);
        assert!(s.acquire_lease("r1".into(), ttl).await.unwrap());
        assert!(!s.acquire_lease("r2".into(), ttl).await.unwrap());
        assert!(s.acquire_lease("r1".into(), ttl).await.unwrap());
        s.release_lease("r1".into()).await.unwrap();
        assert!(s.acquire_lease("r2".into(), ttl).await.unwrap());
        assert!(
            !s.acquire_lease("r3".into(), Duration::ZERO).await.unwrap(),
            "r2 still holds it"
        );
    }
}
