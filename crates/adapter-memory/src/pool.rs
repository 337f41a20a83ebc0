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

    fn least_key(&self, idx: u32) -> LeastKey {
        (self.leases, self.proxy.checked_at, self.proxy.id, idx)
    }

    fn latency_key(&self, idx: u32) -> LatencyKey {
        let latency = self.proxy.health.last_latency_ms;
        // `+ 0.0` turns -0.0 into 0.0; non-negative floats order like their bits.
        (
            latency.is_none(),
            latency.map_or(0, |l| (l + 0.0).to_bits()),
            self.proxy.id,
            idx,
        )
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

/// Where a sticky session points, and until when it is remembered.
#[derive(Clone, Copy)]
struct Session {
    proxy_id: ProxyId,
    /// Forgotten from this microsecond on (exclusive, like a lease).
    expires_us: i64,
}

/// Sessions are swept of expired ones when the map reaches this size (and
/// then twice the size it had left), so the sweep's cost is amortised.
const SESSION_SWEEP_MIN: usize = 1024;

/// Least-used order: fewest leases, never-checked first, oldest check, id.
type LeastKey = (u32, Option<OffsetDateTime>, ProxyId, u32);
/// Lowest-latency order: measured first, lowest latency, id.
type LatencyKey = (bool, u64, ProxyId, u32);

/// Available slots with O(1) insert, remove and uniform pick.
#[derive(Default)]
struct RandomSet {
    items: Vec<u32>,
    /// Position of each slot in `items`, `u32::MAX` when absent.
    pos: Vec<u32>,
}

impl RandomSet {
    fn insert(&mut self, idx: u32) {
        let i = idx as usize;
        if self.pos.len() <= i {
            self.pos.resize(i + 1, u32::MAX);
        }
        if self.pos[i] == u32::MAX {
            self.pos[i] = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
            self.items.push(idx);
        }
    }

    fn remove(&mut self, idx: u32) {
        let Some(&p) = self.pos.get(idx as usize) else {
            return;
        };
        if p == u32::MAX {
            return;
        }
        self.items.swap_remove(p as usize);
        if let Some(&moved) = self.items.get(p as usize) {
            self.pos[moved as usize] = p;
        }
        self.pos[idx as usize] = u32::MAX;
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

/// Whether a slot's proxy matches `filter` (see [`PoolState::select`]).
fn matches_filter(
    slot: &mut Slot,
    filter: &ProxyFilter,
    filter_empty: bool,
    predicates: bool,
) -> bool {
    if filter_empty {
        return true;
    }
    if predicates && slot.proxy.current_leases != slot.leases {
        Arc::make_mut(&mut slot.proxy).current_leases = slot.leases;
    }
    filter.matches(&slot.proxy)
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

    fn index(&mut self, idx: u32) {
        let Some(slot) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if !slot.available() {
            return;
        }
        self.by_id.insert(slot.proxy.id.0.as_u128(), idx);
        if let Some(set) = &mut self.least {
            set.insert(slot.least_key(idx));
        }
        if let Some(set) = &mut self.latency {
            set.insert(slot.latency_key(idx));
        }
        if let Some(set) = &mut self.random {
            set.insert(idx);
        }
    }

    fn unindex(&mut self, idx: u32) {
        let Some(slot) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if !slot.available() {
            return;
        }
        self.by_id.remove(&slot.proxy.id.0.as_u128());
        if let Some(set) = &mut self.least {
            set.remove(&slot.least_key(idx));
        }
        if let Some(set) = &mut self.latency {
            set.remove(&slot.latency_key(idx));
        }
        if let Some(set) = &mut self.random {
            set.remove(idx);
        }
    }

    /// Changes a slot and moves it in every built index whose key or
    /// membership changed (and only those).
    pub(crate) fn update_slot(&mut self, idx: u32, f: impl FnOnce(&mut Slot)) {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let was = slot.available();
        let old_least = self.least.as_ref().map(|_| slot.least_key(idx));
        let old_latency = self.latency.as_ref().map(|_| slot.latency_key(idx));
        f(slot);
        let now = slot.available();
        if was != now {
            if now {
                self.by_id.insert(slot.proxy.id.0.as_u128(), idx);
                if let Some(set) = &mut self.random {
                    set.insert(idx);
                }
            } else {
                self.by_id.remove(&slot.proxy.id.0.as_u128());
                if let Some(set) = &mut self.random {
                    set.remove(idx);
                }
            }
        }
        if let (Some(set), Some(old)) = (&mut self.least, old_least) {
            let new = slot.least_key(idx);
            if was && (!now || new != old) {
                set.remove(&old);
            }
            if now && (!was || new != old) {
                set.insert(new);
            }
        }
        if let (Some(set), Some(old)) = (&mut self.latency, old_latency) {
            let new = slot.latency_key(idx);
            if was && (!now || new != old) {
                set.remove(&old);
            }
            if now && (!was || new != old) {
                set.insert(new);
            }
        }
    }

    /// Builds the index a selector walks, the first time it is used.
    fn ensure_index(&mut self, selector: Selector) {
        match selector {
            Selector::FirstAvailable | Selector::RoundRobin => {}
            Selector::LeastUsed if self.least.is_none() => {
                let set = self
                    .available_slots()
                    .map(|(i, s)| s.least_key(i))
                    .collect();
                self.least = Some(set);
            }
            Selector::LowestLatency if self.latency.is_none() => {
                let set = self
                    .available_slots()
                    .map(|(i, s)| s.latency_key(i))
                    .collect();
                self.latency = Some(set);
            }
            Selector::Random if self.random.is_none() => {
                let mut set = RandomSet::default();
                let avail: Vec<u32> = self.available_slots().map(|(i, _)| i).collect();
                for i in avail {
                    set.insert(i);
                }
                self.random = Some(set);
            }
            Selector::LeastUsed | Selector::LowestLatency | Selector::Random => {}
        }
    }

    fn available_slots(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let s = s.as_ref().filter(|s| s.available())?;
            Some((u32::try_from(i).ok()?, s))
        })
    }

    /// What an acquire at `now` (for `target`, if any) must check beyond
    /// capacity and status.
    pub(crate) fn skips<'a>(
        &self,
        now: OffsetDateTime,
        now_us: i64,
        target: Option<&'a TargetHost>,
    ) -> Skips<'a> {
        Skips {
            now,
            cooling: now_us < self.cooling_until_us,
            target: target.filter(|_| now_us < self.bans_until_us),
        }
    }

    /// Whether slot `idx` could be leased for this request: available, not
    /// skipped, matching the filter.
    pub(crate) fn qualifies(
        &mut self,
        idx: u32,
        filter: &ProxyFilter,
        filter_empty: bool,
        predicates: bool,
        skips: &Skips<'_>,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return false;
        };
        slot.available()
            && slot.passes(skips)
            && matches_filter(slot, filter, filter_empty, predicates)
    }

    /// The slot `selector` picks among available proxies matching `filter`
    /// that `skips` lets through. `filter_empty` short-cuts matching;
    /// `predicates` says whether the filter has a predicate (which must see
    /// an exact `current_leases`).
    pub(crate) fn select(
        &mut self,
        filter: &ProxyFilter,
        selector: Selector,
        filter_empty: bool,
        predicates: bool,
        skips: &Skips<'_>,
    ) -> Option<u32> {
        self.ensure_index(selector);
        let no_skips = skips.none();
        let slots = &mut self.slots;
        let mut matches = |idx: u32| -> bool {
            if filter_empty && no_skips {
                return true;
            }
            let Some(slot) = slots.get_mut(idx as usize).and_then(Option::as_mut) else {
                return false;
            };
            slot.passes(skips) && matches_filter(slot, filter, filter_empty, predicates)
        };
        let filter_empty = filter_empty && no_skips;
        match selector {
            Selector::FirstAvailable => self.by_id.values().copied().find(|&i| matches(i)),
            Selector::RoundRobin => match self.rr_cursor {
                Some(cursor) => self
                    .by_id
                    .range((Bound::Excluded(cursor), Bound::Unbounded))
                    .chain(self.by_id.range(..=cursor))
                    .map(|(_, &i)| i)
                    .find(|&i| matches(i)),
                None => self.by_id.values().copied().find(|&i| matches(i)),
            },
            Selector::LeastUsed => self
                .least
                .as_ref()?
                .iter()
                .map(|k| k.3)
                .find(|&i| matches(i)),
            Selector::LowestLatency => self
                .latency
                .as_ref()?
                .iter()
                .map(|k| k.3)
                .find(|&i| matches(i)),
            Selector::Random => {
                let items = &self.random.as_ref()?.items;
                let mut rng = rand::rng();
                if filter_empty {
                    if items.is_empty() {
                        return None;
                    }
                    return items.get(rng.random_range(0..items.len())).copied();
                }
                // Rejection sampling first (up to 128 draws): a uniform pick that matches is
                // uniform among the matches, and is cheap unless matches
                // are rare.
                if items.is_empty() {
                    return None;
                }
                for _ in 0..items.len().min(128) {
                    let i = items[rng.random_range(0..items.len())];
                    if matches(i) {
                        return Some(i);
                    }
                }
                // Rare matches: reservoir sampling, uniform, one pass.
                let mut chosen = None;
                let mut seen = 0u32;
                for &i in items {
                    if matches(i) {
                        seen += 1;
                        if rng.random_range(0..seen) == 0 {
                            chosen = Some(i);
                        }
                    }
                }
                chosen
            }
        }
    }

    /// The proxy session `key` points at, unless it is unknown or expired
    /// at `now_us`.
    pub(crate) fn session_proxy(&self, key: &SessionKey, now_us: i64) -> Option<ProxyId> {
        self.sessions
            .get(key)
            .filter(|s| now_us < s.expires_us)
            .map(|s| s.proxy_id)
    }

    /// Points session `key` at `proxy_id` until `expires_us`, sweeping
    /// expired sessions when the map has grown enough.
    pub(crate) fn bind_session(
        &mut self,
        key: &SessionKey,
        proxy_id: ProxyId,
        expires_us: i64,
        now_us: i64,
    ) {
        let session = Session {
            proxy_id,
            expires_us,
        };
        if let Some(bound) = self.sessions.get_mut(key) {
            *bound = session;
            return;
        }
        if self.sessions.len() >= self.session_sweep_at {
            self.sessions.retain(|_, s| now_us < s.expires_us);
            self.session_sweep_at = (2 * self.sessions.len()).max(SESSION_SWEEP_MIN);
        }
        self.sessions.insert(key.clone(), session);
    }

    /// Applies `outcome` at `now` under `policy` to slot `idx`'s usage and
    /// the ban of the outcome's target; returns a copy of the proxy after.
    pub(crate) fn apply_outcome(
        &mut self,
        idx: u32,
        outcome: &Outcome,
        policy: &UsagePolicy,
        now: OffsetDateTime,
    ) -> Option<Proxy> {
        let slot = self.slots.get_mut(idx as usize).and_then(Option::as_mut)?;
        let target = outcome.target();
        let ban = target.and_then(|t| slot.bans.get(t));
        let change = policy.apply_outcome(&slot.proxy.usage, ban, outcome, now);
        if change.usage != slot.proxy.usage {
            // Usage is in no index key, so no index moves.
            Arc::make_mut(&mut slot.proxy).usage = change.usage;
            if let Some(until) = change.usage.cooldown_until {
                self.cooling_until_us = self.cooling_until_us.max(crate::micros(until));
            }
        }
        match (change.ban, target) {
            (BanChange::Set(state), Some(target)) => {
                self.bans_until_us = self.bans_until_us.max(crate::micros(state.until));
                slot.bans.insert(target.clone(), state);
            }
            (BanChange::Clear, Some(target)) => {
                slot.bans.remove(target);
            }
            _ => {}
        }
        Some(slot.copy())
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

    /// Checks that every built index holds exactly the available slots with
    /// their current keys, and that lease counts match the active leases.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let avail: Vec<(u32, &Slot)> = self.available_slots().collect();
        let by_id: BTreeMap<u128, u32> = avail
            .iter()
            .map(|(i, s)| (s.proxy.id.0.as_u128(), *i))
            .collect();
        if by_id != self.by_id {
            return Err("by_id index differs from the available slots".into());
        }
        if let Some(set) = &self.least {
            let want: BTreeSet<LeastKey> = avail.iter().map(|(i, s)| s.least_key(*i)).collect();
            if &want != set {
                return Err("least_used index is stale".into());
            }
        }
        if let Some(set) = &self.latency {
            let want: BTreeSet<LatencyKey> = avail.iter().map(|(i, s)| s.latency_key(*i)).collect();
            if &want != set {
                return Err("lowest_latency index is stale".into());
            }
        }
        if let Some(set) = &self.random {
            let mut have = set.items.clone();
            have.sort_unstable();
            let mut want: Vec<u32> = avail.iter().map(|(i, _)| *i).collect();
            want.sort_unstable();
            if have != want {
                return Err("random index differs from the available slots".into());
            }
            for (p, &i) in set.items.iter().enumerate() {
                if set.pos.get(i as usize).copied() != u32::try_from(p).ok() {
                    return Err("random positions are stale".into());
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let n = self
                .leases
                .values()
                .filter(|l| l.slot as usize == i)
                .count();
            if n != slot.leases as usize {
                return Err(format!(
                    "proxy {} counts {} leases, {n} are active",
                    slot.proxy.id, slot.leases
                ));
            }
            if self.by_proxy.get(&slot.proxy.id) != u32::try_from(i).ok().as_ref() {
                return Err("by_proxy is stale".into());
            }
        }
        for (id, lease) in &self.leases {
            if !self
                .expiry
                .iter()
                .any(|Reverse((at, l))| l == id && *at == lease.expires_us)
            {
                return Err(format!("lease {id} has no expiry entry"));
            }
        }
        Ok(())
    }
}
