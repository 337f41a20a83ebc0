//! [`PoolNames`]: pool ids to names, cached, so events that carry a pool id
//! (releases, outcomes, health checks) can name the pool without a storage
//! read each time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use pharox_domain::PoolId;
use pharox_ports::ProxyStorage;

/// Pools remembered at most; past this, names are read from the storage
/// each time (a process serving more pools than this is unusual).
pub(crate) const MAX_CACHED_POOLS: usize = 4096;

/// Names each thread keeps at hand, over every cache of the process.
const PER_THREAD: usize = 16;

/// Pool names by id. Filled from leases (which carry the name) and, for an
/// id not seen yet, by one `get_pool` read. A rename is picked up by the
/// next lease of the pool on each thread.
///
/// The hot path (every acquire and release with observers) reads a short
/// per-thread list first: no lock and no counter shared with other threads,
/// so workers on several cores do not contend here.
#[derive(Debug)]
pub(crate) struct PoolNames {
    /// Tells this cache's entries apart in the per-thread lists.
    id: u64,
    names: RwLock<HashMap<PoolId, Arc<str>>>,
}

impl Default for PoolNames {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            names: RwLock::new(HashMap::new()),
        }
    }
}

thread_local! {
    /// (cache, pool, this thread's own copy of the name), newest last.
    static RECENT: RefCell<Vec<(u64, PoolId, Arc<str>)>> = const { RefCell::new(Vec::new()) };
}

impl PoolNames {
    /// Remembers `name` for `id`.
    pub(crate) fn remember(&self, id: PoolId, name: &Arc<str>) {
        if self.local(id).is_some_and(|known| *known == **name) {
            return;
        }
        {
            let mut names = self.names.write();
            if names.len() < MAX_CACHED_POOLS || names.contains_key(&id) {
                names.insert(id, Arc::clone(name));
            }
        }
        self.keep_local(id, name);
    }

    /// The name of pool `id` if it is cached (no storage read).
    pub(crate) fn cached(&self, id: PoolId) -> Option<Arc<str>> {
        if let Some(name) = self.local(id) {
            return Some(name);
        }
        let name = self.names.read().get(&id).cloned()?;
        self.keep_local(id, &name);
        Some(name)
    }

    /// The name of pool `id`: cached, else read from `storage` (and cached);
    /// `None` when the read fails (logged at debug).
    pub(crate) async fn resolve(&self, storage: &dyn ProxyStorage, id: PoolId) -> Option<Arc<str>> {
        if let Some(name) = self.cached(id) {
            return Some(name);
        }
        match storage.get_pool(id).await {
            Ok(pool) => {
                let name: Arc<str> = pool.name.into();
                self.remember(id, &name);
                Some(name)
            }
            Err(e) => {
                tracing::debug!(pool = %id, error = %e, "pool name for an event unavailable");
                None
            }
        }
    }

    /// This thread's copy of the name, if it has one.
    fn local(&self, id: PoolId) -> Option<Arc<str>> {
        RECENT.with_borrow(|recent| {
            recent
                .iter()
                .rev()
                .find(|(cache, pool, _)| *cache == self.id && *pool == id)
                .map(|(_, _, name)| Arc::clone(name))
        })
    }

    /// Keeps a copy of `name` of this thread's own, so clones of it touch
    /// no memory shared with other threads.
    fn keep_local(&self, id: PoolId, name: &str) {
        RECENT.with_borrow_mut(|recent| {
            recent.retain(|(cache, pool, _)| !(*cache == self.id && *pool == id));
            if recent.len() >= PER_THREAD {
                recent.remove(0);
            }
            recent.push((self.id, id, Arc::from(name)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_replaces_the_cached_name() {
        let names = PoolNames::default();
        let id = PoolId::new();
        names.remember(id, &Arc::from("old"));
        assert_eq!(names.cached(id).as_deref(), Some("old"));
        names.remember(id, &Arc::from("new"));
        assert_eq!(names.names.read().get(&id).map(|n| &**n), Some("new"));
        assert_eq!(names.cached(id).as_deref(), Some("new"));
    }

    #[test]
    fn caches_keep_apart_on_one_thread() {
        let (a, b) = (PoolNames::default(), PoolNames::default());
        let id = PoolId::new();
        a.remember(id, &Arc::from("in-a"));
        assert_eq!(a.cached(id).as_deref(), Some("in-a"));
        assert_eq!(b.cached(id), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let names = PoolNames::default();
        for _ in 0..MAX_CACHED_POOLS + 10 {
            names.remember(PoolId::new(), &Arc::from("p"));
        }
        assert_eq!(names.names.read().len(), MAX_CACHED_POOLS);
        RECENT.with_borrow(|recent| assert_eq!(recent.len(), PER_THREAD));
    }
}
