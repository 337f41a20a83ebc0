//! [`TaskLocks`]: named, exclusive locks for background tasks (a health
//! sweep of one pool, later `pharox serve`'s upkeep) so that two processes,
//! or two replicas, never run the same task at once.

use async_trait::async_trait;

use crate::StorageResult;

/// Named locks held by one holder at a time, across processes where the
/// adapter allows (PostgreSQL: session advisory locks; memory: this process).
///
/// A lock is held for as long as its [`TaskLockGuard`] lives: dropping the
/// guard releases it (PostgreSQL: the guard's own connection closes, and
/// the server frees a session's locks when its session ends, also when the
/// holder crashes or loses its connection). A holder that loses its
/// connection therefore loses its lock too, without being told at once;
/// [`TaskLockGuard::check`] asks.
#[async_trait]
pub trait TaskLocks: Send + Sync {
    /// Takes the lock `key` for `holder` (a description shown to whoever
    /// finds it taken: "pharox health check, pid 4242 on host-a"), or
    /// returns `None` at once when someone holds it.
    async fn try_lock(&self, key: &str, holder: &str) -> StorageResult<Option<TaskLockGuard>>;

    /// Who holds `key` now, as they described themselves; `None` when it is
    /// free (or its holder went away meanwhile).
    async fn holder(&self, key: &str) -> StorageResult<Option<String>>;
}

/// What an adapter keeps for one held lock.
#[async_trait]
pub trait HeldLock: Send + Sync {
    /// Releases the lock and reports whether that went through (dropping
    /// the value releases it too, without a report).
    async fn release(self: Box<Self>) -> StorageResult<()>;

    /// Fails when the lock is no longer held (its connection was lost).
    async fn check(&mut self) -> StorageResult<()>;
}

/// A lock from [`TaskLocks::try_lock`], held until dropped or
/// [released](Self::release).
pub struct TaskLockGuard {
    key: String,
    holder: String,
    held: Box<dyn HeldLock>,
}

impl TaskLockGuard {
    /// Wraps what an adapter keeps for a lock it has taken.
    #[must_use]
    pub fn new(key: impl Into<String>, holder: impl Into<String>, held: Box<dyn HeldLock>) -> Self {
        Self {
            key: key.into(),
            holder: holder.into(),
            held,
        }
    }

    /// The lock's key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder description it was taken with.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Fails when the lock is no longer held (PostgreSQL: the connection
    /// holding it was lost, so another process may have it now).
    pub async fn check(&mut self) -> StorageResult<()> {
        self.held.check().await
    }

    /// Releases the lock now and says whether that went through.
    pub async fn release(self) -> StorageResult<()> {
        self.held.release().await
    }
}

impl std::fmt::Debug for TaskLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLockGuard")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}
