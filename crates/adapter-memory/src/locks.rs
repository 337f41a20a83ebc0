//! [`MemoryTaskLocks`]: the [`TaskLocks`] port within one process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use pharox_ports::{HeldLock, StorageResult, TaskLockGuard, TaskLocks};

/// Task locks in process memory: exclusive between the tasks of this
/// process only (clones share their locks). For tests and single-process
/// deployments; use the PostgreSQL adapter's across processes.
#[derive(Debug, Clone, Default)]
pub struct MemoryTaskLocks {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Key -> (the guard's token, the holder's description).
    held: Mutex<HashMap<String, (u64, String)>>,
    next_token: AtomicU64,
}

impl MemoryTaskLocks {
    /// No lock held.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TaskLocks for MemoryTaskLocks {
    async fn try_lock(&self, key: &str, holder: &str) -> StorageResult<Option<TaskLockGuard>> {
        let mut held = self.shared.held.lock();
        if held.contains_key(key) {
            return Ok(None);
        }
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        held.insert(key.to_owned(), (token, holder.to_owned()));
        let lock = MemoryLock {
            shared: Arc::clone(&self.shared),
            key: key.to_owned(),
            token,
        };
        Ok(Some(TaskLockGuard::new(key, holder, Box::new(lock))))
    }

    async fn holder(&self, key: &str) -> StorageResult<Option<String>> {
        Ok(self
            .shared
            .held
            .lock()
            .get(key)
            .map(|(_, holder)| holder.clone()))
    }
}

/// One held lock; removes its entry when dropped.
struct MemoryLock {
    shared: Arc<Shared>,
    key: String,
    token: u64,
}

#[async_trait]
impl HeldLock for MemoryLock {
    async fn release(self: Box<Self>) -> StorageResult<()> {
        drop(self);
        Ok(())
    }

    async fn check(&mut self) -> StorageResult<()> {
        Ok(())
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        let mut held = self.shared.held.lock();
        if held
            .get(&self.key)
            .is_some_and(|(token, _)| *token == self.token)
        {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lock_is_exclusive_until_its_guard_goes() {
        let locks = MemoryTaskLocks::new();
        let guard = locks.try_lock("sweep:a", "first").await.unwrap().unwrap();
        assert_eq!(guard.holder(), "first");
        let other = locks.clone();
        assert!(other.try_lock("sweep:a", "second").await.unwrap().is_none());
        assert_eq!(
            other.holder("sweep:a").await.unwrap().as_deref(),
            Some("first")
        );
        // Another key is independent.
        let b = other.try_lock("sweep:b", "second").await.unwrap();
        assert!(b.is_some());
        drop(guard);
        assert_eq!(other.holder("sweep:a").await.unwrap(), None);
        let again = other.try_lock("sweep:a", "second").await.unwrap().unwrap();
        again.release().await.unwrap();
        assert_eq!(other.holder("sweep:a").await.unwrap(), None);
    }
}
