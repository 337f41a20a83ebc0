use pharox_domain::ValidationError;
use pharox_ports::StorageError;

/// Why a [`ProxyManager`](crate::ProxyManager) or
/// [`HealthOrchestrator`](crate::HealthOrchestrator) call failed.
#[derive(Debug, thiserror::Error)]
pub enum PharoxError {
    /// The caller's input was rejected before anything was stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The storage failed; see [`StorageError::is_retryable`].
    #[error(transparent)]
    Storage(StorageError),
    /// `with_lease` found no proxy to lease.
    #[error("no proxy available in pool {pool}")]
    NoProxyAvailable {
        /// The pool asked for.
        pool: String,
    },
}

impl From<StorageError> for PharoxError {
    fn from(error: StorageError) -> Self {
        // Keep validation failures in one place whatever layer found them.
        match error {
            StorageError::Invalid(invalid) => Self::Invalid(invalid),
            other => Self::Storage(other),
        }
    }
}

impl PharoxError {
    /// Whether the same call may succeed if tried again.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(e) if e.is_retryable())
    }
}

/// The error of [`ProxyManager::with_lease`](crate::ProxyManager::with_lease):
/// the manager's own, or the task's.
#[derive(Debug, thiserror::Error)]
pub enum WithLeaseError<E> {
    /// Acquiring (or releasing) failed.
    #[error(transparent)]
    Pharox(#[from] PharoxError),
    /// The task failed; the lease was released all the same.
    #[error("task failed while holding a lease: {0}")]
    Task(E),
}
