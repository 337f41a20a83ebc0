//! Lease id -> pool, sharded so concurrent workers rarely meet on a lock,
//! plus the bounded history of finished leases (each shard keeps its share
//! in FIFO order and forgets the oldest).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::sync::Mutex;
use pharox_domain::{ConsumerId, Lease, LeaseId, LeaseStatus, PoolId, ProxyId};
use time::OffsetDateTime;

use crate::hash::{IdBuildHasher, mix_uuid};
use crate::pool::{ActiveLease, PoolCell};

/// Number of shards (a power of two).
pub(crate) const SHARDS: usize = 64;

/// A lease that ended, as remembered for `get_lease` and idempotent
/// release. Compact and free of `Arc`s: forgetting one is a plain free.
#[derive(Clone, Copy)]
pub(crate) struct FinishedLease {
    pub(crate) pool_id: PoolId,
    pub(crate) proxy_id: ProxyId,
    pub(crate) consumer_id: ConsumerId,
    pub(crate) acquired_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) released_at: OffsetDateTime,
}

impl FinishedLease {
    pub(crate) fn new(pool_id: PoolId, lease: &ActiveLease, released_at: OffsetDateTime) -> Self {
        Self {
            pool_id,
            proxy_id: lease.proxy_id,
            consumer_id: lease.consumer_id,
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
            released_at,
        }
    }

    /// The lease, with `proxy` as its snapshot and `pool_name` as the name.
    pub(crate) fn to_lease(
        self,
        id: LeaseId,
        pool_name: Arc<str>,
        proxy: Arc<pharox_domain::Proxy>,
    ) -> Lease {
        Lease {
            id,
            proxy_id: self.proxy_id,
            pool_id: self.pool_id,
            pool_name,
            consumer_id: self.consumer_id,
            status: LeaseStatus::Released,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
            released_at: Some(self.released_at),
            proxy,
            session: None,
        }
    }
}

/// Where a lease id leads.
pub(crate) enum Entry {
    /// Active: its pool, and the lease as granted (so a release can answer
    /// without the pool's lock).
    Active(Arc<PoolCell>, ActiveLease),
    /// Finished, kept until the history forgets it.
    Finished(FinishedLease),
}

/// What [`LeaseIndex::end`] did.
pub(crate) enum Ended {
    /// This call ended the lease; its pool must be given the capacity back.
    Now(Arc<PoolCell>, FinishedLease),
    /// It had ended before.
    Before,
    /// No such lease (never, forgotten, or its proxy was deleted).
    Unknown,
}

/// What a lookup found (copied out so no shard lock is held afterwards).
pub(crate) enum Found {
    Active(Arc<PoolCell>),
    Finished(FinishedLease),
    Unknown,
}

#[derive(Default)]
struct Shard {
    map: HashMap<LeaseId, Entry, IdBuildHasher>,
    finished: VecDeque<LeaseId>,
}

/// Keeps a shard on its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Mutex<Shard>);

/// The sharded lease index.
pub(crate) struct LeaseIndex {
    shards: Box<[Padded]>,
    per_shard: usize,
}

impl LeaseIndex {
    /// An index that keeps about `history` finished leases (rounded up to a
    /// multiple of [`SHARDS`]).
    pub(crate) fn new(history: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            per_shard: history.div_ceil(SHARDS),
        }
    }

    fn shard(&self, id: LeaseId) -> &Mutex<Shard> {
        #[allow(clippy::cast_possible_truncation)]
        let i = (mix_uuid(id.0) >> 58) as usize % SHARDS;
        &self.shards[i].0
    }

    /// Records a new active lease.
    pub(crate) fn insert_active(&self, id: LeaseId, pool: Arc<PoolCell>, lease: ActiveLease) {
        self.shard(id)
            .lock()
            .map
            .insert(id, Entry::Active(pool, lease));
    }

    /// Ends an active lease: the moment a release takes effect. Exactly one
    /// of any number of concurrent calls gets [`Ended::Now`].
    pub(crate) fn end(&self, id: LeaseId, released_at: OffsetDateTime) -> Ended {
        let mut shard = self.shard(id).lock();
        let (cell, finished) = match shard.map.get(&id) {
            Some(Entry::Active(cell, lease)) => (
                Arc::clone(cell),
                FinishedLease::new(cell.id, lease, released_at),
            ),
            Some(Entry::Finished(_)) => return Ended::Before,
            None => return Ended::Unknown,
        };
        self.record_finished(&mut shard, id, finished);
        Ended::Now(cell, finished)
    }

    /// Moves a lease that is still active to the history; `false` when a
    /// release ended it first.
    pub(crate) fn finish(&self, id: LeaseId, lease: FinishedLease) -> bool {
        let mut shard = self.shard(id).lock();
        if !matches!(shard.map.get(&id), Some(Entry::Active(..))) {
            return false;
        }
        self.record_finished(&mut shard, id, lease);
        true
    }

    /// Moves the recorded expiry of an active lease; `false` when it has
    /// ended.
    pub(crate) fn extend(&self, id: LeaseId, expires_at: OffsetDateTime, expires_us: i64) -> bool {
        match self.shard(id).lock().map.get_mut(&id) {
            Some(Entry::Active(_, lease)) => {
                lease.expires_at = expires_at;
                lease.expires_us = expires_us;
                true
            }
            _ => false,
        }
    }

    /// Puts a finished lease in the shard's history, forgetting the oldest
    /// past the bound.
    fn record_finished(&self, shard: &mut Shard, id: LeaseId, lease: FinishedLease) {
        if self.per_shard == 0 {
            shard.map.remove(&id);
            return;
        }
        shard.map.insert(id, Entry::Finished(lease));
        shard.finished.push_back(id);
        while shard.finished.len() > self.per_shard {
            if let Some(old) = shard.finished.pop_front() {
                shard.map.remove(&old);
            }
        }
    }

    /// Forgets a lease entirely (its proxy or pool was deleted).
    pub(crate) fn forget(&self, id: LeaseId) {
        let mut shard = self.shard(id).lock();
        shard.map.remove(&id);
        // A stale id left in `finished` is harmless: evicting it removes
        // nothing (ids are never reused).
    }

    /// Forgets every finished lease `gone` selects (their proxy or pool was
    /// deleted), so a proxy saved again under the same id does not bring
    /// them back. Walks the whole history: deletes are rare.
    pub(crate) fn forget_finished(&self, gone: impl Fn(&FinishedLease) -> bool) {
        for shard in &self.shards {
            shard
                .0
                .lock()
                .map
                .retain(|_, entry| !matches!(entry, Entry::Finished(f) if gone(f)));
        }
    }

    /// What the index knows about a lease.
    pub(crate) fn find(&self, id: LeaseId) -> Found {
        match self.shard(id).lock().map.get(&id) {
            Some(Entry::Active(pool, _)) => Found::Active(Arc::clone(pool)),
            Some(Entry::Finished(f)) => Found::Finished(*f),
            None => Found::Unknown,
        }
    }

    /// How many finished leases are remembered.
    #[cfg(test)]
    pub(crate) fn finished_len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .map
                    .values()
                    .filter(|e| matches!(e, Entry::Finished(_)))
                    .count()
            })
            .sum()
    }

    /// How many lease ids are indexed at all.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    /// The most finished leases kept.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}
