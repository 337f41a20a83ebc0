//! Lease id -> pool, sharded so concurrent workers rarely meet on a lock,
//! plus the bounded history of finished leases (each shard keeps its own in
//! FIFO order; together they keep about the bound).
//!
//! A lease's shard is written into its id: the low bits of the id's last
//! byte, which the storage sets to the shard of the thread that makes the
//! lease (ids a caller chooses land wherever those bits say). So one thread
//! keeps to one shard and appends to one history ring in order, which the
//! processor streams; a shard picked by hash sent every release to another
//! ring, each to a line not touched since thousands of releases before, and
//! that cache miss cost more than the rest of the lease index together.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sync::Mutex;
use pharox_domain::{ConsumerId, Lease, LeaseId, LeaseStatus, PoolId, ProxyId};
use pharox_ports::ReleasedLease;
use time::OffsetDateTime;

use crate::hash::IdBuildHasher;
use crate::pool::{ActiveLease, PoolCell};

/// Number of shards (a power of two, at most 256: a shard is one byte's low
/// bits).
pub(crate) const SHARDS: usize = 64;

/// The shard of a lease id.
fn shard_index(id: LeaseId) -> usize {
    usize::from(id.0.as_bytes()[15]) % SHARDS
}

/// The shard leases made on this thread go to, given to threads in turn.
fn home_shard() -> u8 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        #[allow(clippy::cast_possible_truncation)]
        static HOME: u8 = (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS) as u8;
    }
    HOME.with(|home| *home)
}

/// Puts this thread's home shard into the random bytes of a new lease id
/// (the last of them becomes the id's last byte).
pub(crate) fn stamp_home_shard(random: &mut [u8; 10]) {
    #[allow(clippy::cast_possible_truncation)]
    let mask = (SHARDS - 1) as u8;
    random[9] = (random[9] & !mask) | home_shard();
}

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

    /// What a release that ended lease `id` (of pool `pool_id`) reports.
    pub(crate) fn released(&self, id: LeaseId, pool_id: PoolId) -> ReleasedLease {
        ReleasedLease {
            lease_id: id,
            proxy_id: self.proxy_id,
            pool_id,
            consumer_id: self.consumer_id,
            acquired_at: self.acquired_at,
            released_at: self.released_at,
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
/// The ids of the history apart from the rest, so a lookup scans 16 bytes
/// per lease.
#[derive(Default)]
struct Shard {
    active: HashMap<LeaseId, (Arc<PoolCell>, ActiveLease), IdBuildHasher>,
    finished_ids: VecDeque<LeaseId>,
    finished: VecDeque<FinishedLease>,
}

impl Shard {
    fn finished(&self, id: LeaseId) -> Option<&FinishedLease> {
        // Newest first: a lease looked up after it ended mostly ended lately.
        let back = self.finished_ids.iter().rev().position(|&f| f == id)?;
        self.finished.get(self.finished.len() - 1 - back)
    }

    /// Forgets the finished leases `gone` selects; returns how many.
    fn forget_finished(&mut self, gone: impl Fn(LeaseId, &FinishedLease) -> bool) -> usize {
        let before = self.finished.len();
        let kept: (VecDeque<LeaseId>, VecDeque<FinishedLease>) = self
            .finished_ids
            .iter()
            .zip(&self.finished)
            .filter(|&(&id, lease)| !gone(id, lease))
            .map(|(&id, lease)| (id, *lease))
            .unzip();
        (self.finished_ids, self.finished) = kept;
        before - self.finished.len()
    }
}

/// Keeps a shard on its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Mutex<Shard>);

/// The sharded lease index.
pub(crate) struct LeaseIndex {
    shards: Box<[Padded]>,
    /// The most finished leases kept, all shards together.
    history: usize,
    /// How many are kept now. Once at the bound a shard replaces its own
    /// oldest, so in steady state this is only read; racing shards may
    /// overshoot it by one each.
    finished: AtomicUsize,
    /// How many shards hold any history, for the fair share of each.
    shards_with_history: AtomicUsize,
    /// Where [`LeaseIndex::shrink_another`] looks next.
    victim: AtomicUsize,
}

impl LeaseIndex {
    /// An index that keeps about `history` finished leases.
    pub(crate) fn new(history: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            history,
            finished: AtomicUsize::new(0),
            shards_with_history: AtomicUsize::new(0),
            victim: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: LeaseId) -> &Mutex<Shard> {
        &self.shards[shard_index(id)].0
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
        if self.history == 0 {
            return;
        }
        if shard.finished.is_empty() {
            self.shards_with_history.fetch_add(1, Ordering::Relaxed);
        }
        shard.finished.push_back(lease);
        shard.finished_ids.push_back(id);
        if self.finished.load(Ordering::Relaxed) < self.history {
            self.finished.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Full. In steady state each shard replaces its own oldest; one
        // below its fair share (a thread that started after others filled
        // the history) grows and takes the room from a shard above it.
        let holders = self.shards_with_history.load(Ordering::Relaxed).max(1);
        let fair = self.history.div_ceil(holders);
        if shard.finished.len() > fair || !self.shrink_another(shard, fair) {
            self.pop_oldest(shard);
        }
    }

    fn pop_oldest(&self, shard: &mut Shard) {
        shard.finished_ids.pop_front();
        if shard.finished.pop_front().is_some() && shard.finished.is_empty() {
            self.shards_with_history.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets the oldest finished lease of a shard holding more than
    /// `fair`, if one is found free at once (never waits, so never
    /// deadlocks with the shard the caller holds).
    fn shrink_another(&self, own: &Shard, fair: usize) -> bool {
        for _ in 0..SHARDS {
            let i = self.victim.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let Some(mut other) = self.shards[i].0.try_lock() else {
                continue;
            };
            if std::ptr::eq(&*other, own) || other.finished.len() <= fair {
                continue;
            }
            self.pop_oldest(&mut other);
            return true;
        }
        false
    }

    /// Forgets a lease entirely (its proxy or pool was deleted).
    pub(crate) fn forget(&self, id: LeaseId) {
        let mut shard = self.shard(id).lock();
        if shard.active.remove(&id).is_none() {
            self.forget_in(&mut shard, |finished, _| finished == id);
        }
    }

    /// Forgets every finished lease `gone` selects (their proxy or pool was
    /// deleted), so a proxy saved again under the same id does not bring
    /// them back. Walks the whole history: deletes are rare.
    pub(crate) fn forget_finished(&self, gone: impl Fn(&FinishedLease) -> bool) {
        for shard in &self.shards {
            self.forget_in(&mut shard.0.lock(), |_, lease| gone(lease));
        }
    }

    fn forget_in(&self, shard: &mut Shard, gone: impl Fn(LeaseId, &FinishedLease) -> bool) {
        let had = !shard.finished.is_empty();
        let forgotten = shard.forget_finished(gone);
        self.finished.fetch_sub(forgotten, Ordering::Relaxed);
        if had && shard.finished.is_empty() {
            self.shards_with_history.fetch_sub(1, Ordering::Relaxed);
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
        self.history
    }
}
