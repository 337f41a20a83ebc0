//! [`ProxyManager`]'s scoped leases: a task run with a lease that is
//! released afterwards, whatever becomes of the task.

use super::*;

impl ProxyManager {
    /// Leases a proxy, runs `task` with the lease, and releases it afterwards
    /// whether the task succeeds, fails, panics or is cancelled.
    ///
    /// No free proxy gives [`PharoxError::NoProxyAvailable`]. When the task
    /// succeeded but the release failed, the release error is returned; when
    /// the task failed, its error wins (the release failure is logged).
    pub async fn with_lease<T, E, F, Fut>(
        &self,
        request: impl Into<LeaseRequest>,
        task: F,
    ) -> Result<T, WithLeaseError<E>>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.with_lease_reporting(request, task, |_| None).await
    }

    /// [`with_lease`](Self::with_lease), where `outcome_of` maps the task's
    /// result to an [`Outcome`] that is applied with the release (atomically:
    /// see [`release_with_outcome`](Self::release_with_outcome)). A task
    /// that panics or is cancelled reports nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pharox::{MemoryStorage, Outcome, ProxyFailureKind, ProxyManager, ProxyPool, ProxyStorage};
    /// # let storage = MemoryStorage::new();
    /// # let pool = storage.save_pool(&ProxyPool::new("eu")?).await?;
    /// # storage.save_proxy(&pharox::Proxy::builder(pool.id, "10.0.0.1", 8080, pharox::ProxyProtocol::Http).build()?).await?;
    /// let manager = ProxyManager::new(storage);
    /// let status = manager
    ///     .with_lease_reporting(
    ///         "eu",
    ///         |lease| async move { Ok::<u16, std::io::Error>(200) /* fetch through lease.proxy */ },
    ///         |result| match result {
    ///             Ok(_) => Some(Outcome::success()),
    ///             Err(_) => Some(Outcome::proxy_failure(ProxyFailureKind::Other)),
    ///         },
    ///     )
    ///     .await?;
    /// assert_eq!(status, 200);
    /// # Ok(()) }
    /// ```
    pub async fn with_lease_reporting<T, E, F, Fut, M>(
        &self,
        request: impl Into<LeaseRequest>,
        task: F,
        outcome_of: M,
    ) -> Result<T, WithLeaseError<E>>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        M: FnOnce(&Result<T, E>) -> Option<Outcome>,
    {
        let request = request.into();
        let pool = request.pool.clone();
        let lease = self
            .acquire(request)
            .await?
            .ok_or(PharoxError::NoProxyAvailable { pool })?;
        let lease_id = lease.id;
        let mut guard = ReleaseOnDrop {
            storage: Arc::clone(&self.storage),
            lease_id,
            retry: self.config.release_retry,
            armed: true,
        };
        let outcome = task(lease).await;
        guard.armed = false;
        let reported = outcome_of(&outcome);
        let released = self.release_with_outcome(lease_id, reported).await;
        match (outcome, released) {
            (Ok(value), Ok(_)) => Ok(value),
            (Ok(_), Err(e)) => Err(WithLeaseError::Pharox(e)),
            (Err(task_error), released) => {
                if let Err(e) = released {
                    tracing::warn!(lease = %lease_id, error = %e, "release after failed task failed");
                }
                Err(WithLeaseError::Task(task_error))
            }
        }
    }
}
