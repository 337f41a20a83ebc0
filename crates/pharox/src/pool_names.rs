//! [`PoolNames`]: pool ids to names, cached, so events that carry a pool id
//! (releases, outcomes, health checks) can name the pool without a storage
//! read each time.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use pharox_domain::PoolId;
use pharox_ports::ProxyStorage;

/// Pools remembered at most; past this, names are read from the storage
/// each time (a process serving more pools than this is unusual).
pub(crate) const MAX_CACHED_POOLS: usize = 4096;

/// Pool names by id. Filled from leases (which carry the name) and, for an
/// id not seen yet, by one `get_pool` read. A rename is picked up by the
/// next lease of the pool.
#[derive(Debug, Default)]
pub(crate) struct PoolNames {
    names: RwLock<HashMap<PoolId, Arc<str>>>,
}

impl PoolNames {
    /// Remembers `name` for `id` (a read lock only when it is known already).
    pub(crate) fn remember(&self, id: PoolId, name: &Arc<str>) {
        if self
            .names
            .read()
            .get(&id)
            .is_some_and(|known| known == name)
        {
            return;
        }
        let mut names = self.names.write();
        if names.len() < MAX_CACHED_POOLS || names.contains_key(&id) {
            names.insert(id, Arc::clone(name));
        }
    }

    /// The name of pool `id` if it is cached (no storage read).
    pub(crate) fn cached(&self, id: PoolId) -> Option<Arc<str>> {
        self.names.read().get(&id).cloned()
    }

    /// The name of pool `id`: cached, else read from `storage` (and cached);
    /// `None` when the read fails (logged at debug).
    pub(crate) async fn resolve(&self, storage: &dyn ProxyStorage, id: PoolId) -> Option<Arc<str>> {
        if let Some(name) = self.names.read().get(&id) {
            return Some(Arc::clone(name));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_replaces_the_cached_name() {
        let names = PoolNames::default();
        let id = PoolId::new();
        names.remember(id, &Arc::from("old"));
        names.remember(id, &Arc::from("new"));
        assert_eq!(names.names.read().get(&id).map(|n| &**n), Some("new"));
    }

    #[test]
    fn the_cache_is_bounded() {
        let names = PoolNames::default();
        for _ in 0..MAX_CACHED_POOLS + 10 {
            names.remember(PoolId::new(), &Arc::from("p"));
        }
        assert_eq!(names.names.read().len(), MAX_CACHED_POOLS);
    }
}
