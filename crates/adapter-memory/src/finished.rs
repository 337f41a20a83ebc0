//! Finished leases of [`MemoryStorage`]: reclaiming expired ones into the
//! history, their views and answers (already released, not active), and
//! the release that never waits.

use super::*;

impl MemoryStorage {
    pub(crate) fn reclaim(
        &self,
        state: &mut PoolState,
        cell: &Arc<PoolCell>,
        now: OffsetDateTime,
        now_us: i64,
    ) -> u64 {
        let mut reclaimed = 0;
        while let Some((id, lease)) = state.pop_expired(now_us) {
            let finished = FinishedLease::new(cell.id, &lease, now);
            self.leases.finish(id, finished);
            reclaimed += 1;
        }
        reclaimed
    }

    /// The pool name and current snapshot of a finished lease's proxy, or
    /// `None` when its pool or proxy is gone (deleting a proxy deletes its
    /// leases).
    pub(crate) fn finished_view(&self, lease: &FinishedLease) -> Option<(Arc<str>, Arc<Proxy>)> {
        let cell = self.catalog.read().pools.get(&lease.pool_id).cloned()?;
        let mut state = cell.lock();
        let idx = state.slot_of(lease.proxy_id)?;
        let proxy = state.snapshot(idx)?;
        Some((Arc::clone(&state.name), proxy))
    }

    pub(crate) fn already_released(&self, id: LeaseId) -> StorageResult<ReleaseOutcome> {
        match self.leases.find(id) {
            Found::Finished(lease) if self.finished_view(&lease).is_some() => {
                Ok(ReleaseOutcome::AlreadyReleased {
                    lease_id: id,
                    released_at: Some(lease.released_at),
                })
            }
            _ => Err(StorageError::not_found("lease", id)),
        }
    }

    /// The pool of an active lease, for a report on it: `LeaseNotActive`
    /// for a released one, not-found for an unknown one.
    pub(crate) fn pool_of_active(&self, lease_id: LeaseId) -> StorageResult<Arc<PoolCell>> {
        match self.leases.find(lease_id) {
            Found::Active(cell) => Ok(cell),
            Found::Finished(_) => {
                self.already_released(lease_id)?;
                Err(StorageError::LeaseNotActive(lease_id))
            }
            Found::Unknown => Err(StorageError::not_found("lease", lease_id)),
        }
    }

    pub(crate) fn finished_lease(&self, id: LeaseId) -> StorageResult<Lease> {
        if let Found::Finished(lease) = self.leases.find(id)
            && let Some((name, proxy)) = self.finished_view(&lease)
        {
            return Ok(lease.to_lease(id, name, proxy));
        }
        Err(StorageError::not_found("lease", id))
    }

    /// The whole of a release: it never waits. It takes effect in the lease
    /// index (exactly once however many calls race); the pool takes the
    /// capacity back at once when its lock is free, else at its next lock,
    /// before anyone can look. So a release never waits for the pool's
    /// lock.
    pub(crate) fn release_at_once(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        let now = self.clock.now();
        match self.leases.end(lease_id, now) {
            Ended::Now(cell, finished) => {
                cell.give_back(lease_id);
                Ok(ReleaseOutcome::Released(
                    finished.released(lease_id, cell.id),
                ))
            }
            Ended::Before => self.already_released(lease_id),
            Ended::Unknown => Err(StorageError::not_found("lease", lease_id)),
        }
    }
}
