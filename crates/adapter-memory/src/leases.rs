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

/// One shard: the active leases in a map that stays small (and so in
/// cache), the finished ones in a ring in the order they ended.
///
/// Why not one map for both: with the history in the map every release
/// inserted a finished entry and evicted the oldest, touching entries
/// spread over a map of the whole history (10,000 by default), which cost
/// more than the rest of the lease index together. A ring is written in
/// order; finding a finished lease scans the shard's share of the history,
/// which only the rare paths do (a repeated release, reading or reporting
/// on a finished lease).
#[derive(Default)]
struct Shard {
    active: HashMap<LeaseId, (Arc<PoolCell>, ActiveLease), IdBuildHasher>,
    finished: VecDeque<(LeaseId, FinishedLease)>,
}

impl Shard {
    fn finished(&self, id: LeaseId) -> Option<&FinishedLease> {
        // Newest first: a lease looked up after it ended mostly ended lately.
        self.finished
            .iter()
            .rev()
            .find(|(finished, _)| *finished == id)
            .map(|(_, lease)| lease)
    }
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
        self.shard(id).lock().active.insert(id, (pool, lease));
    }

    /// Ends an active lease: the moment a release takes effect. Exactly one
    /// of any number of concurrent calls gets [`Ended::Now`].
    pub(crate) fn end(&self, id: LeaseId, released_at: OffsetDateTime) -> Ended {
        let mut shard = self.shard(id).lock();
        let Some((cell, lease)) = shard.active.remove(&id) else {
            return match shard.finished(id) {
                Some(_) => Ended::Before,
                None => Ended::Unknown,
            };
        };
        let finished = FinishedLease::new(cell.id, &lease, released_at);
        self.record_finished(&mut shard, id, finished);
        Ended::Now(cell, finished)
    }

    /// Moves a lease that is still active to the history; `false` when a
    /// release ended it first.
    pub(crate) fn finish(&self, id: LeaseId, lease: FinishedLease) -> bool {
        let mut shard = self.shard(id).lock();
        if shard.active.remove(&id).is_none() {
            return false;
        }
        self.record_finished(&mut shard, id, lease);
        true
    }

    /// Moves the recorded expiry of an active lease; `false` when it has
    /// ended.
    pub(crate) fn extend(&self, id: LeaseId, expires_at: OffsetDateTime, expires_us: i64) -> bool {
        match self.shard(id).lock().active.get_mut(&id) {
            Some((_, lease)) => {
                lease.expires_at = expires_at;
                lease.expires_us = expires_us;
                true
            }
            None => false,
        }
    }

    /// Puts a finished lease in the shard's history, forgetting the oldest
    /// past the bound.
    fn record_finished(&self, shard: &mut Shard, id: LeaseId, lease: FinishedLease) {
        if self.per_shard == 0 {
            return;
        }
        if shard.finished.len() >= self.per_shard {
            shard.finished.pop_front();
        }
        shard.finished.push_back((id, lease));
    }

    /// Forgets a lease entirely (its proxy or pool was deleted).
    pub(crate) fn forget(&self, id: LeaseId) {
        let mut shard = self.shard(id).lock();
        if shard.active.remove(&id).is_none() {
            shard.finished.retain(|(finished, _)| *finished != id);
        }
    }

    /// Forgets every finished lease `gone` selects (their proxy or pool was
    /// deleted), so a proxy saved again under the same id does not bring
    /// them back. Walks the whole history: deletes are rare.
    pub(crate) fn forget_finished(&self, gone: impl Fn(&FinishedLease) -> bool) {
        for shard in &self.shards {
            shard.0.lock().finished.retain(|(_, lease)| !gone(lease));
        }
    }

    /// What the index knows about a lease.
    pub(crate) fn find(&self, id: LeaseId) -> Found {
        let shard = self.shard(id).lock();
        if let Some((pool, _)) = shard.active.get(&id) {
            return Found::Active(Arc::clone(pool));
        }
        match shard.finished(id) {
            Some(lease) => Found::Finished(*lease),
            None => Found::Unknown,
        }
    }

    /// How many finished leases are remembered.
    #[cfg(test)]
    pub(crate) fn finished_len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().finished.len()).sum()
    }

    /// How many lease ids are indexed at all.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.0.lock();
                shard.active.len() + shard.finished.len()
            })
            .sum()
    }

    /// The most finished leases kept.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}
