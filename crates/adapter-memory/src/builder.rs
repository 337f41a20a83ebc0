//! [`MemoryStorageBuilder`]: the clock and the history bounds.

use super::*;

/// Builds a [`MemoryStorage`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStorageBuilder {
    clock: Option<Arc<dyn Clock>>,
    lease_history: usize,
    health_history: usize,
}

impl Default for MemoryStorageBuilder {
    fn default() -> Self {
        Self {
            clock: None,
            lease_history: DEFAULT_LEASE_HISTORY,
            health_history: DEFAULT_HEALTH_HISTORY,
        }
    }
}

impl MemoryStorageBuilder {
    /// Uses this clock instead of the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Remembers about `n` finished leases (default
    /// [`DEFAULT_LEASE_HISTORY`]; threads releasing at once may each keep
    /// one more). The lease index keeps them per shard in FIFO order, and
    /// a thread's leases go to one shard, so with one thread the oldest is
    /// forgotten first; with several, roughly so.
    /// Releasing a forgotten lease gives not-found instead of
    /// already-released. `0` remembers none.
    pub fn lease_history(mut self, n: usize) -> Self {
        self.lease_history = n;
        self
    }

    /// Keeps at most `n` health records per proxy, dropping the oldest
    /// (default [`DEFAULT_HEALTH_HISTORY`]).
    pub fn health_history(mut self, n: usize) -> Self {
        self.health_history = n;
        self
    }

    /// The storage, empty.
    #[must_use]
    pub fn build(self) -> MemoryStorage {
        MemoryStorage {
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            catalog: RwLock::new(Catalog::default()),
            leases: LeaseIndex::new(self.lease_history),
            health_history: self.health_history,
        }
    }
}
