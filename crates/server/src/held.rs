//! [`HeldLeases`]: which consumer holds each lease this server handed out,
//! so a lease key releasing or reporting on its own lease is checked
//! without reading the lease first.
//!
//! Why it is safe: a lease's consumer is set when it is made and never
//! changes, so a remembered holder is always right. A lease this server
//! does not remember (made by another replica, before a restart, or
//! evicted) is read from the storage as before. A remembered lease that
//! the storage no longer has (its pool was deleted) is not found by the
//! release or the report themselves.
//!
//! Why: on PostgreSQL that read is a third round trip in an acquire and
//! release pair, a third more database work for the hot path.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use pharox::{ConsumerId, LeaseId};

/// Leases remembered at most: about 5 MiB. Past it the oldest are
/// forgotten (and checked through the storage, if they are still used).
pub const MAX_HELD_LEASES: usize = 65_536;

/// The holders of the leases this server handed out, bounded.
#[derive(Debug)]
pub struct HeldLeases {
    capacity: usize,
    inner: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    holders: HashMap<LeaseId, ConsumerId>,
    /// Insertion order, for eviction; it may name leases already
    /// forgotten, and is compacted when it holds twice the capacity.
    order: VecDeque<LeaseId>,
}

impl Default for HeldLeases {
    fn default() -> Self {
        Self::with_capacity(MAX_HELD_LEASES)
    }
}

impl HeldLeases {
    /// Remembers at most `capacity` leases (at least one).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Held::default()),
        }
    }

    /// Remembers that `holder` holds `lease`, forgetting the oldest lease
    /// remembered when full.
    pub fn remember(&self, lease: LeaseId, holder: ConsumerId) {
        let mut held = self.inner.lock();
        while held.holders.len() >= self.capacity {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            held.holders.remove(&oldest);
        }
        if held.holders.insert(lease, holder).is_none() {
            held.order.push_back(lease);
        }
        if held.order.len() > 2 * self.capacity {
            let Held { holders, order } = &mut *held;
            order.retain(|id| holders.contains_key(id));
        }
    }

    /// The holder of `lease`, when remembered.
    #[must_use]
    pub fn holder(&self, lease: LeaseId) -> Option<ConsumerId> {
        self.inner.lock().holders.get(&lease).copied()
    }

    /// Forgets `lease` (it was released).
    pub fn forget(&self, lease: LeaseId) {
        self.inner.lock().holders.remove(&lease);
    }

    /// How many leases are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.lock().holders.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_forgotten() {
        let held = HeldLeases::default();
        let (lease, holder) = (LeaseId::new(), ConsumerId::new());
        assert_eq!(held.holder(lease), None);
        held.remember(lease, holder);
        assert_eq!(held.holder(lease), Some(holder));
        held.forget(lease);
        assert_eq!(held.holder(lease), None);
        assert!(held.is_empty());
    }

    #[test]
    fn a_full_cache_forgets_the_oldest_lease_first() {
        let held = HeldLeases::with_capacity(3);
        let leases: Vec<LeaseId> = (0..4).map(|_| LeaseId::new()).collect();
        let holder = ConsumerId::new();
        for lease in &leases {
            held.remember(*lease, holder);
        }
        assert_eq!(held.len(), 3);
        assert_eq!(held.holder(leases[0]), None);
        for lease in &leases[1..] {
            assert_eq!(held.holder(*lease), Some(holder));
        }
    }

    #[test]
    fn the_eviction_order_stays_bounded_when_leases_come_and_go() {
        let held = HeldLeases::with_capacity(4);
        let holder = ConsumerId::new();
        for _ in 0..1_000 {
            let lease = LeaseId::new();
            held.remember(lease, holder);
            held.forget(lease);
        }
        let order = held.inner.lock().order.len();
        assert!(order <= 8, "{order} ids in the eviction order");
        // Forgotten ids in the order never evict a live lease early.
        let live: Vec<LeaseId> = (0..4).map(|_| LeaseId::new()).collect();
        for lease in &live {
            held.remember(*lease, holder);
        }
        assert!(live.iter().all(|l| held.holder(*l) == Some(holder)));
    }
}
