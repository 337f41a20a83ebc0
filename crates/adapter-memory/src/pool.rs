//! Per-pool state: the proxies, the indexes of available proxies per
//! selector, the active leases and the expiry heap. Everything here runs
//! under the pool's one mutex.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::MutexGuard;
use std::sync::mpsc;

use crate::sync::Mutex;
use pharox_domain::{
    BanChange, ConsumerId, HealthRecord, LeaseId, Outcome, PoolId, Proxy, ProxyFilter, ProxyId,
    ProxyPool, ProxyStatus, ProxyUsage, Selector, SessionKey, TargetBan, TargetBanState,
    TargetHost, UsagePolicy,
};
use rand::Rng;
use time::OffsetDateTime;

use crate::hash::IdBuildHasher;
use select::{LatencyKey, LeastKey, RandomSet};
use sessions::{SESSION_SWEEP_MIN, Session};

mod select;
mod sessions;

/// A pool and its lock. Shared (by `Arc`) between the catalog, the lease
/// index and finished-lease records.
pub(crate) struct PoolCell {
    /// The pool's id (never changes).
    pub(crate) id: PoolId,
    /// Never lock it directly: [`lock`](Self::lock) applies handed-back
    /// releases first.
    state: Mutex<PoolState>,
    /// Leases a release ended in the lease index while the pool was locked,
    /// whose capacity the pool has not taken back yet (a lock-free queue: a
    /// release never waits for the pool's lock).
    returns: mpsc::Sender<LeaseId>,
    /// How many releases are queued in `returns`: a lock drains the queue
    /// only when there are any (the queue is mostly empty, and a plain load
    /// is cheaper than asking it).
    queued: AtomicUsize,
}

impl PoolCell {
    pub(crate) fn new(pool: ProxyPool) -> Self {
        let (returns, returned) = mpsc::channel();
        Self {
            id: pool.id,
            state: Mutex::new(PoolState::new(pool, returned)),
            returns,
            queued: AtomicUsize::new(0),
        }
    }

    /// Locks the pool's state, after applying every release handed back
    /// since the last lock, so whoever looks sees the capacity returned.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolState> {
        let mut state = self.state.lock();
        // A release that returned before this lock queued first and counted
        // after, so it is seen here.
        if self.queued.load(Ordering::Acquire) > 0 {
            while let Ok(id) = state.returned.try_recv() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                // Already gone when a reclaim or a deletion got there first.
                let _ = state.finish(id);
            }
        }
        state
    }

    /// Gives a released lease's capacity back to the pool: at once when the
    /// pool's lock is free (cheaper than the queue), else queued for the
    /// next [`lock`](Self::lock), so a release never waits for an acquire.
    /// The release itself took effect in the lease index before.
    pub(crate) fn give_back(&self, id: LeaseId) {
        if let Some(mut state) = self.state.try_lock() {
            // Already gone when a reclaim or a deletion got there first.
            let _ = state.finish(id);
            return;
        }
        // Fails only when the pool state is gone: nothing to give back to.
        if self.returns.send(id).is_ok() {
            self.queued.fetch_add(1, Ordering::Release);
        }
    }
}

/// One proxy of a pool.
pub(crate) struct Slot {
    /// The proxy as stored. Its `current_leases` may lag behind `leases`; it
    /// is brought up to date (copy-on-write) only when a snapshot is handed
    /// out, so a release never deep-clones a proxy a lease still points to.
    pub(crate) proxy: Arc<Proxy>,
    /// Active leases on it (the truth for `current_leases`).
    pub(crate) leases: u32,
    /// Health records, oldest first, bounded.
    pub(crate) health: VecDeque<HealthRecord>,
    /// Bans per target, also ended ones: their count of bans in a row is
    /// what the next ban doubles (until a success on the site clears it).
    pub(crate) bans: HashMap<TargetHost, TargetBanState>,
}

impl Slot {
    fn available(&self) -> bool {
        self.proxy.status == ProxyStatus::Active
            && self
                .proxy
                .max_concurrency
                .is_none_or(|max| self.leases < max)
    }

    /// Whether the request's cooldown and ban checks let this proxy be
    /// leased (capacity and status are [`available`](Self::available)'s).
    fn passes(&self, skips: &Skips<'_>) -> bool {
        if skips.cooling && self.proxy.usage.is_cooling_down_at(skips.now) {
            return false;
        }
        skips.target.is_none_or(|target| {
            self.bans
                .get(target)
                .is_none_or(|ban| !ban.is_active_at(skips.now))
        })
    }

    /// The bans that hold at `now`, ordered by target.
    pub(crate) fn bans_at(&self, now: OffsetDateTime) -> Vec<TargetBan> {
        let mut bans: Vec<TargetBan> = self
            .bans
            .iter()
            .filter(|(_, ban)| ban.is_active_at(now))
            .map(|(target, ban)| TargetBan {
                target: target.clone(),
                until: ban.until,
                consecutive: ban.consecutive,
            })
            .collect();
        bans.sort_by(|a, b| a.target.cmp(&b.target));
        bans
    }

    /// The proxy with `current_leases` up to date, shared (cheap) unless a
    /// stale snapshot is still held elsewhere.
    pub(crate) fn snapshot(&mut self) -> Arc<Proxy> {
        if self.proxy.current_leases != self.leases {
            Arc::make_mut(&mut self.proxy).current_leases = self.leases;
        }
        Arc::clone(&self.proxy)
    }

    /// A private copy with `current_leases` up to date.
    pub(crate) fn copy(&self) -> Proxy {
        let mut proxy = Proxy::clone(&self.proxy);
        proxy.current_leases = self.leases;
        proxy
    }
}

/// What an acquire must skip beside full and inactive proxies: proxies
/// cooling down and proxies banned for its target. Either check is switched
/// off when no proxy of the pool can fail it now (see
/// [`PoolState::skips`]), which keeps the plain acquire's path as it was.
pub(crate) struct Skips<'a> {
    now: OffsetDateTime,
    cooling: bool,
    target: Option<&'a TargetHost>,
}

impl Skips<'_> {
    pub(crate) fn none(&self) -> bool {
        !self.cooling && self.target.is_none()
    }
}

/// An active lease as kept in its pool (no `Arc<Proxy>`, so releasing never
/// keeps a snapshot alive).
#[derive(Clone, Copy)]
pub(crate) struct ActiveLease {
    pub(crate) slot: u32,
    pub(crate) proxy_id: ProxyId,
    pub(crate) consumer_id: ConsumerId,
    pub(crate) acquired_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) expires_us: i64,
}

/// Everything about one pool, guarded by its mutex.
pub(crate) struct PoolState {
    pub(crate) pool: ProxyPool,
    /// The pool name handed out with leases.
    pub(crate) name: Arc<str>,
    /// Set when the pool is deleted; stale references see an empty pool.
    pub(crate) deleted: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_proxy: HashMap<ProxyId, u32>,
    /// Available proxies by id (always kept).
    /// Keyed by the id as a number: the same order as the id's, compared
    /// in two instructions rather than byte by byte.
    by_id: BTreeMap<u128, u32>,
    /// Built the first time the selector is used in this pool.
    least: Option<BTreeSet<LeastKey>>,
    latency: Option<BTreeSet<LatencyKey>>,
    random: Option<RandomSet>,
    /// The last proxy round-robin handed out.
    rr_cursor: Option<u128>,
    pub(crate) leases: HashMap<LeaseId, ActiveLease, IdBuildHasher>,
    /// (expires_us, lease) min-heap; entries of released or renewed leases
    /// are skipped when popped and dropped by compaction.
    expiry: BinaryHeap<Reverse<(i64, LeaseId)>>,
    /// The receiving end of [`PoolCell::give_back`].
    returned: mpsc::Receiver<LeaseId>,
    /// The latest end of any cooldown stored in the pool (microseconds):
    /// before it, acquires check each proxy's cooldown; from it on no proxy
    /// can be cooling, and they need not.
    cooling_until_us: i64,
    /// The same for bans per target.
    bans_until_us: i64,
    /// Sticky sessions by key.
    sessions: HashMap<SessionKey, Session>,
    /// The size of `sessions` at which expired ones are swept next.
    session_sweep_at: usize,
}

impl PoolState {
    fn new(pool: ProxyPool, returned: mpsc::Receiver<LeaseId>) -> Self {
        Self {
            returned,
            name: Arc::from(pool.name.as_str()),
            pool,
            deleted: false,
            slots: Vec::new(),
            free: Vec::new(),
            by_proxy: HashMap::new(),
            by_id: BTreeMap::new(),
            least: None,
            latency: None,
            random: None,
            rr_cursor: None,
            leases: HashMap::default(),
            expiry: BinaryHeap::new(),
            cooling_until_us: i64::MIN,
            bans_until_us: i64::MIN,
            sessions: HashMap::new(),
            session_sweep_at: SESSION_SWEEP_MIN,
        }
    }

    pub(crate) fn id(&self) -> PoolId {
        self.pool.id
    }

    pub(crate) fn rename(&mut self, pool: ProxyPool) {
        if pool.name != self.pool.name {
            self.name = Arc::from(pool.name.as_str());
        }
        self.pool = pool;
    }

    pub(crate) fn slot_of(&self, id: ProxyId) -> Option<u32> {
        self.by_proxy.get(&id).copied()
    }

    pub(crate) fn slot(&self, idx: u32) -> Option<&Slot> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    pub(crate) fn slot_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    pub(crate) fn proxy(&self, id: ProxyId) -> Option<&Slot> {
        self.slot_of(id).and_then(|idx| self.slot(idx))
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    pub(crate) fn proxy_count(&self) -> usize {
        self.by_proxy.len()
    }

    /// Inserts a new proxy or replaces the stored one, keeping the fields the
    /// storage owns (`current_leases`, `checked_at`, `health`, `created_at`,
    /// `usage`; a new proxy starts with a clean usage).
    /// Returns a copy of what is stored.
    pub(crate) fn upsert(&mut self, mut proxy: Proxy) -> Option<Proxy> {
        proxy.created_at = pharox_domain::truncate_to_micros(proxy.created_at);
        let idx = match self.by_proxy.entry(proxy.id) {
            Entry::Occupied(e) => {
                let idx = *e.get();
                self.update_slot(idx, |slot| {
                    proxy.created_at = slot.proxy.created_at;
                    proxy.checked_at = slot.proxy.checked_at;
                    proxy.health = slot.proxy.health.clone();
                    proxy.usage = slot.proxy.usage;
                    proxy.current_leases = slot.leases;
                    slot.proxy = Arc::new(proxy);
                });
                idx
            }
            Entry::Vacant(e) => {
                proxy.current_leases = 0;
                proxy.usage = ProxyUsage::default();
                proxy.checked_at = proxy.checked_at.map(pharox_domain::truncate_to_micros);
                let idx = if let Some(idx) = self.free.pop() {
                    idx
                } else {
                    self.slots.push(None);
                    u32::try_from(self.slots.len() - 1).ok()?
                };
                e.insert(idx);
                self.slots[idx as usize] = Some(Slot {
                    proxy: Arc::new(proxy),
                    leases: 0,
                    health: VecDeque::new(),
                    bans: HashMap::new(),
                });
                self.index(idx);
                idx
            }
        };
        self.slot(idx).map(Slot::copy)
    }

    /// Removes a proxy with its active leases; returns the ids of those
    /// leases (so the caller can drop them from the lease index), or `None`
    /// if the proxy is not here.
    pub(crate) fn remove_proxy(&mut self, id: ProxyId) -> Option<Vec<LeaseId>> {
        let idx = self.by_proxy.remove(&id)?;
        self.unindex(idx);
        self.slots[idx as usize] = None;
        self.free.push(idx);
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.slot == idx)
            .map(|(id, _)| *id)
            .collect();
        for lease in &gone {
            self.leases.remove(lease);
        }
        Some(gone)
    }

    /// Empties a deleted pool; returns the ids of its active leases.
    pub(crate) fn clear(&mut self) -> Vec<LeaseId> {
        self.deleted = true;
        let gone = self.leases.drain().map(|(id, _)| id).collect();
        let pool = self.pool.clone();
        // Keep the receiving end: the cell's sender still points at it.
        let returned = std::mem::replace(&mut self.returned, mpsc::channel().1);
        *self = Self::new(pool, returned);
        self.deleted = true;
        gone
    }

    /// Leases slot `idx`: counts the lease, records it, schedules its expiry
    /// and returns the proxy snapshot.
    pub(crate) fn grant(
        &mut self,
        idx: u32,
        lease_id: LeaseId,
        lease: ActiveLease,
        selector: Selector,
    ) -> Option<Arc<Proxy>> {
        self.update_slot(idx, |slot| slot.leases += 1);
        let slot = self.slot_mut(idx)?;
        let snapshot = slot.snapshot();
        if selector == Selector::RoundRobin {
            self.rr_cursor = Some(snapshot.id.0.as_u128());
        }
        self.leases.insert(lease_id, lease);
        self.schedule(lease.expires_us, lease_id);
        Some(snapshot)
    }

    fn schedule(&mut self, expires_us: i64, lease_id: LeaseId) {
        // Compact when stale entries dominate, so the heap stays O(active
        // leases) however many leases came and went (amortised O(1)).
        if self.expiry.len() > 2 * self.leases.len() + 1024 {
            self.expiry = self
                .leases
                .iter()
                .map(|(id, l)| Reverse((l.expires_us, *id)))
                .collect();
        }
        self.expiry.push(Reverse((expires_us, lease_id)));
    }

    /// Moves an active lease's expiry.
    pub(crate) fn extend(&mut self, lease_id: LeaseId, expires_at: OffsetDateTime, us: i64) {
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.expires_at = expires_at;
            lease.expires_us = us;
            self.schedule(us, lease_id);
        }
    }

    /// Ends an active lease and gives its capacity back.
    pub(crate) fn finish(&mut self, lease_id: LeaseId) -> Option<ActiveLease> {
        let lease = self.leases.remove(&lease_id)?;
        self.update_slot(lease.slot, |slot| {
            slot.leases = slot.leases.saturating_sub(1)
        });
        Some(lease)
    }

    /// Ends the next active lease that expired at or before `now_us`, if any.
    pub(crate) fn pop_expired(&mut self, now_us: i64) -> Option<(LeaseId, ActiveLease)> {
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if at > now_us {
                return None;
            }
            self.expiry.pop();
            if self.leases.get(&id).is_some_and(|l| l.expires_us == at) {
                return self.finish(id).map(|l| (id, l));
            }
        }
        None
    }

    /// The snapshot of a slot's proxy, current.
    pub(crate) fn snapshot(&mut self, idx: u32) -> Option<Arc<Proxy>> {
        self.slot_mut(idx).map(Slot::snapshot)
    }

    /// Appends a health record, keeping at most `cap`.
    pub(crate) fn push_health(&mut self, idx: u32, record: HealthRecord, cap: usize) {
        if let Some(slot) = self.slot_mut(idx) {
            if cap == 0 {
                return;
            }
            while slot.health.len() >= cap {
                slot.health.pop_front();
            }
            slot.health.push_back(record);
        }
    }

    /// Sessions remembered, expired or not.
    #[cfg(test)]
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Entries in the expiry heap (live and stale).
    #[cfg(test)]
    pub(crate) fn expiry_len(&self) -> usize {
        self.expiry.len()
    }
}
