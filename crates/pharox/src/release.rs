//! Retrying idempotent storage calls on a lease, and releasing a lease
//! whose scope ended early: the fault handling behind [`ProxyManager`]'s
//! release, renew and scoped leases.
//!
//! [`ProxyManager`]: crate::ProxyManager

use std::future::Future;
use std::sync::Arc;

use pharox_domain::{LeaseId, RetryPolicy};
use pharox_ports::{ProxyStorage, ReleaseOutcome, StorageError};

/// Releases the lease in a background task if the scope that holds it ends
/// early (panic or cancellation), so capacity comes back before expiry.
pub(crate) struct ReleaseOnDrop {
    pub(crate) storage: Arc<dyn ProxyStorage>,
    pub(crate) lease_id: LeaseId,
    pub(crate) retry: RetryPolicy,
    pub(crate) armed: bool,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let lease_id = self.lease_id;
        let storage = Arc::clone(&self.storage);
        let retry = self.retry;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = release_with_retry(&*storage, lease_id, &retry).await {
                        tracing::warn!(lease = %lease_id, error = %e, "release after abandoned task failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(lease = %lease_id, "no runtime to release an abandoned lease; it will expire")
            }
        }
    }
}

/// A release, tried again per `policy` while it fails in a retryable way.
async fn release_with_retry(
    storage: &dyn ProxyStorage,
    lease_id: LeaseId,
    policy: &RetryPolicy,
) -> Result<ReleaseOutcome, StorageError> {
    retry_storage(policy, "release", lease_id, || storage.release(lease_id)).await
}

/// Runs an idempotent storage call on a lease until it succeeds, fails in a
/// way that will not pass, or has had `policy.max_attempts()` attempts.
pub(crate) async fn retry_storage<T, F, Fut>(
    policy: &RetryPolicy,
    what: &'static str,
    lease_id: LeaseId,
    mut call: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt < policy.max_attempts() => {
                let delay = policy.delay_after(attempt);
                tracing::debug!(lease = %lease_id, attempt, ?delay, error = %e, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                if e.is_retryable() {
                    tracing::warn!(lease = %lease_id, attempts = attempt, error = %e, "{what} gave up");
                }
                return Err(e);
            }
            Ok(value) => return Ok(value),
        }
    }
}
