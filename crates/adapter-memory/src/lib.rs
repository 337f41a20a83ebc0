//! In-memory storage adapter for pharox: [`MemoryStorage`] implements
//! [`ProxyStorage`] with everything held in process memory.
//!
//! It is for tests, single-process deployments and benchmarks: nothing
//! survives a restart. It passes the whole `pharox-contract-tests` suite.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use pharox_adapter_memory::MemoryStorage;
//! use pharox_ports::{AcquireRequest, ManualClock, ProxyStorage};
//! use pharox_ports::domain::{Proxy, ProxyPool, ProxyProtocol};
//!
//! # tokio_test_block_on(async {
//! let clock = Arc::new(ManualClock::starting_now());
//! let storage = MemoryStorage::builder().clock(clock.clone()).lease_history(1_000).build();
//! let pool = storage.save_pool(&ProxyPool::new("eu")?).await?;
//! storage
//!     .save_proxy(&Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http).build()?)
//!     .await?;
//! let worker = storage.ensure_consumer("worker-1").await?;
//! let request = AcquireRequest::new("eu", worker, Duration::from_secs(30));
//! let lease = storage.acquire(&request).await?.expect("a free proxy");
//! assert_eq!(lease.proxy.connect_url(), "http://10.0.0.1:8080");
//! assert!(storage.release(lease.id).await?.was_released());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # Guarantees and costs
//!
//! - Every call is atomic: it runs under the lock of the one pool it touches
//!   (plus short-lived locks on a catalog and on one of 64 lease-index
//!   shards). No lock is ever held across an `.await`; there is none inside.
//! - Acquire without a filter does not scan the pool: each pool keeps
//!   ordered indexes of its *available* proxies (active and below
//!   `max_concurrency`), one per selector, so picking costs `O(log n)`
//!   (`O(1)` for random). With a filter the selector's order is walked until
//!   the first match (random: one pass, uniform among the matches).
//! - Expired leases are reclaimed during acquire from a per-pool min-heap of
//!   expiry times, so the cost does not depend on how many leases exist.
//! - Finished leases go to a bounded history (default
//!   [`DEFAULT_LEASE_HISTORY`]); a release or `get_lease` of a lease older
//!   than that gives not-found. Throughput does not degrade with history.
//! - Usage, bans per target and sticky sessions live in the pool's state
//!   and change under its lock. An acquire checks cooldowns (and, with a
//!   target, bans) only while some proxy of the pool can still be cooling
//!   down (or banned): each pool remembers the latest end it stored.
//! - Returned values are copies; lease snapshots are shared `Arc<Proxy>`
//!   that are only deep-cloned (copy-on-write) when the stored proxy changes
//!   while an old snapshot is still held.
//!
//! This crate has no cargo features.

mod admin;
mod api_keys;
mod builder;
mod finished;
mod grant;
mod hash;
mod health;
mod leases;
mod locks;
mod pool;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use pharox_domain::{
    Consumer, ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, HealthRecordId, Lease,
    LeaseId, LeaseSession, LeaseStatus, Outcome, PoolId, PoolOverview, PoolStats, Proxy,
    ProxyFilter, ProxyId, ProxyPool, ProxyStatus, ProxyUsage, Selector, TargetBan, UsagePolicy,
    ValidationError, from_unix_micros, truncate_to_micros, validate_name, validate_ttl,
};
use pharox_ports::{
    AcquireRequest, Clock, ProxyStorage, ReleaseOutcome, StorageError, StorageResult, SystemClock,
};

use time::OffsetDateTime;

pub use crate::api_keys::MemoryApiKeys;
pub use crate::builder::MemoryStorageBuilder;
pub use crate::locks::MemoryTaskLocks;

use crate::grant::{Granted, expiry};
use crate::hash::IdBuildHasher;
use crate::leases::{Ended, FinishedLease, Found, LeaseIndex};
use crate::pool::{ActiveLease, PoolCell, PoolState, Slot};

/// How many finished leases are remembered by default.
pub const DEFAULT_LEASE_HISTORY: usize = 10_000;

/// How many health records are kept per proxy by default.
pub const DEFAULT_HEALTH_HISTORY: usize = 1_000;

/// Pools, proxies and consumers, found by id or name.
#[derive(Default)]
struct Catalog {
    pools: HashMap<PoolId, Arc<PoolCell>>,
    /// Looked up on every acquire; names are the operators' (only they
    /// create pools), so the cheap hasher is safe here.
    by_name: HashMap<String, Arc<PoolCell>, IdBuildHasher>,
    proxies: HashMap<ProxyId, Arc<PoolCell>>,
    consumers: HashMap<String, Consumer>,
    consumer_ids: HashSet<ConsumerId, IdBuildHasher>,
}

/// A [`ProxyStorage`] that keeps everything in memory.
///
/// Cheap to share: wrap it in an `Arc`. See the [crate docs](crate) for
/// its guarantees.
pub struct MemoryStorage {
    clock: Arc<dyn Clock>,
    catalog: RwLock<Catalog>,
    leases: LeaseIndex,
    health_history: usize,
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let catalog = self.catalog.read();
        f.debug_struct("MemoryStorage")
            .field("clock", &self.clock)
            .field("pools", &catalog.pools.len())
            .field("proxies", &catalog.proxies.len())
            .field("consumers", &catalog.consumers.len())
            .field("lease_history", &self.leases.capacity())
            .field("health_history", &self.health_history)
            .finish()
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty storage on the system clock, with the default bounds.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// An empty storage on `clock` (a `ManualClock` in tests), with the
    /// default bounds.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::builder().clock(clock).build()
    }

    /// A builder for the clock and the history bounds.
    pub fn builder() -> MemoryStorageBuilder {
        MemoryStorageBuilder::default()
    }

    /// The lease an earlier acquire with the caller's `id` made, for a
    /// repeated (idempotent) acquire; a conflict if it is not this request's.
    async fn existing_lease(
        &self,
        id: LeaseId,
        pool_id: PoolId,
        request: &AcquireRequest,
    ) -> StorageResult<Lease> {
        let lease = self.get_lease(id).await?;
        if lease.pool_id != pool_id || lease.consumer_id != request.consumer_id {
            return Err(StorageError::Conflict(format!(
                "lease id {id} is taken by another pool or consumer"
            )));
        }
        Ok(lease)
    }

    fn pool_cell(&self, id: PoolId) -> StorageResult<Arc<PoolCell>> {
        self.catalog
            .read()
            .pools
            .get(&id)
            .cloned()
            .ok_or_else(|| StorageError::not_found("pool", id))
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    pharox_domain::unix_micros(t)
}

fn internal(message: &str) -> StorageError {
    StorageError::Backend {
        message: format!("memory storage invariant broken: {message}"),
        source: None,
    }
}

fn active_lease(id: LeaseId, lease: &ActiveLease, state: &PoolState, proxy: Arc<Proxy>) -> Lease {
    lease_from(id, lease, state.id(), Arc::clone(&state.name), proxy)
}

/// An active lease as the caller sees it.
fn lease_from(
    id: LeaseId,
    lease: &ActiveLease,
    pool_id: PoolId,
    pool_name: Arc<str>,
    proxy: Arc<Proxy>,
) -> Lease {
    Lease {
        id,
        proxy_id: lease.proxy_id,
        pool_id,
        pool_name,
        consumer_id: lease.consumer_id,
        status: LeaseStatus::Active,
        acquired_at: lease.acquired_at,
        expires_at: lease.expires_at,
        released_at: None,
        proxy,
        session: None,
    }
}

#[async_trait]
impl ProxyStorage for MemoryStorage {
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool> {
        pool.validate()?;
        let mut pool = pool.clone();
        pool.created_at = truncate_to_micros(pool.created_at);
        let mut catalog = self.catalog.write();
        if let Some(other) = catalog.by_name.get(&pool.name)
            && other.id != pool.id
        {
            return Err(StorageError::Conflict(format!(
                "pool name {:?} is taken by pool {}",
                pool.name, other.id
            )));
        }
        if let Some(cell) = catalog.pools.get(&pool.id).cloned() {
            let mut state = cell.lock();
            pool.created_at = state.pool.created_at;
            if state.pool.name != pool.name {
                catalog.by_name.remove(&state.pool.name);
                catalog.by_name.insert(pool.name.clone(), Arc::clone(&cell));
            }
            state.rename(pool.clone());
        } else {
            let cell = Arc::new(PoolCell::new(pool.clone()));
            catalog.pools.insert(pool.id, Arc::clone(&cell));
            catalog.by_name.insert(pool.name.clone(), cell);
        }
        Ok(pool)
    }

    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool> {
        Ok(self.pool_cell(id)?.lock().pool.clone())
    }

    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool> {
        let catalog = self.catalog.read();
        let cell = catalog
            .by_name
            .get(name)
            .ok_or_else(|| StorageError::not_found("pool", name))?;
        Ok(cell.lock().pool.clone())
    }

    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>> {
        let catalog = self.catalog.read();
        let mut pools: Vec<ProxyPool> = catalog
            .pools
            .values()
            .map(|cell| cell.lock().pool.clone())
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    async fn delete_pool(&self, id: PoolId) -> StorageResult<()> {
        let mut catalog = self.catalog.write();
        let cell = catalog
            .pools
            .remove(&id)
            .ok_or_else(|| StorageError::not_found("pool", id))?;
        let mut state = cell.lock();
        catalog.by_name.remove(&state.pool.name);
        for slot in state.slots() {
            catalog.proxies.remove(&slot.proxy.id);
        }
        for lease in state.clear() {
            self.leases.forget(lease);
        }
        drop(state);
        self.leases.forget_finished(|f| f.pool_id == id);
        Ok(())
    }

    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy> {
        proxy.validate()?;
        let mut catalog = self.catalog.write();
        let cell = catalog
            .pools
            .get(&proxy.pool_id)
            .cloned()
            .ok_or_else(|| StorageError::not_found("pool", proxy.pool_id))?;
        if let Some(home) = catalog.proxies.get(&proxy.id)
            && home.id != proxy.pool_id
        {
            return Err(StorageError::Conflict(format!(
                "proxy {} belongs to pool {}; it cannot move to pool {}",
                proxy.id, home.id, proxy.pool_id
            )));
        }
        let stored = cell
            .lock()
            .upsert(proxy.clone())
            .ok_or_else(|| internal("proxy slot missing after upsert"))?;
        catalog.proxies.insert(proxy.id, cell);
        Ok(stored)
    }

    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>> {
        for (i, proxy) in proxies.iter().enumerate() {
            proxy
                .validate()
                .map_err(|e| e.within(&format!("proxies[{i}]")))?;
        }
        let mut catalog = self.catalog.write();
        // Check everything before writing anything: all or nothing.
        let mut homes: HashMap<ProxyId, PoolId> = HashMap::with_capacity(proxies.len());
        for proxy in proxies {
            if !catalog.pools.contains_key(&proxy.pool_id) {
                return Err(StorageError::not_found("pool", proxy.pool_id));
            }
            let home = catalog
                .proxies
                .get(&proxy.id)
                .map(|cell| cell.id)
                .or_else(|| homes.get(&proxy.id).copied())
                .unwrap_or(proxy.pool_id);
            if home != proxy.pool_id {
                return Err(StorageError::Conflict(format!(
                    "proxy {} belongs to pool {home}; it cannot move to pool {}",
                    proxy.id, proxy.pool_id
                )));
            }
            homes.insert(proxy.id, proxy.pool_id);
        }
        let mut stored = Vec::with_capacity(proxies.len());
        for proxy in proxies {
            let cell = catalog
                .pools
                .get(&proxy.pool_id)
                .cloned()
                .ok_or_else(|| internal("pool vanished under the catalog lock"))?;
            let saved = cell
                .lock()
                .upsert(proxy.clone())
                .ok_or_else(|| internal("proxy slot missing after upsert"))?;
            catalog.proxies.insert(proxy.id, cell);
            stored.push(saved);
        }
        Ok(stored)
    }

    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy> {
        let catalog = self.catalog.read();
        let cell = catalog
            .proxies
            .get(&id)
            .ok_or_else(|| StorageError::not_found("proxy", id))?;
        cell.lock()
            .proxy(id)
            .map(Slot::copy)
            .ok_or_else(|| StorageError::not_found("proxy", id))
    }

    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>> {
        let cell = self.pool_cell(pool_id)?;
        let mut proxies: Vec<Proxy> = cell.lock().slots().map(Slot::copy).collect();
        proxies.sort_by_key(|p| p.id);
        Ok(proxies)
    }

    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()> {
        let mut catalog = self.catalog.write();
        let cell = catalog
            .proxies
            .remove(&id)
            .ok_or_else(|| StorageError::not_found("proxy", id))?;
        let gone = cell
            .lock()
            .remove_proxy(id)
            .ok_or_else(|| StorageError::not_found("proxy", id))?;
        for lease in gone {
            self.leases.forget(lease);
        }
        self.leases.forget_finished(|f| f.proxy_id == id);
        Ok(())
    }

    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId> {
        validate_name("consumer.name", name)?;
        if let Some(consumer) = self.catalog.read().consumers.get(name) {
            return Ok(consumer.id);
        }
        let mut catalog = self.catalog.write();
        if let Some(consumer) = catalog.consumers.get(name) {
            return Ok(consumer.id);
        }
        let consumer = Consumer {
            id: ConsumerId::new(),
            name: name.to_owned(),
            created_at: self.clock.now(),
        };
        let id = consumer.id;
        catalog.consumer_ids.insert(id);
        catalog.consumers.insert(name.to_owned(), consumer);
        Ok(id)
    }

    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>> {
        // Through `acquire_now`, so the contract suite covers it.
        if let Some(answer) = self.acquire_now(request) {
            return answer;
        }
        match self.grant(request)? {
            Granted::Lease(lease) => Ok(Some(lease)),
            Granted::Nothing => Ok(None),
            // An idempotent repeat (see the port), answered outside the locks.
            Granted::Repeat(id, pool_id) => {
                self.existing_lease(id, pool_id, request).await.map(Some)
            }
        }
    }

    fn acquire_now(&self, request: &AcquireRequest) -> Option<StorageResult<Option<Lease>>> {
        if let Err(e) = request.validate() {
            return Some(Err(e.into()));
        }
        match self.grant(request) {
            Ok(Granted::Lease(lease)) => Some(Ok(Some(lease))),
            Ok(Granted::Nothing) => Some(Ok(None)),
            // A repeat changed nothing: `acquire` answers it.
            Ok(Granted::Repeat(..)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        self.release_at_once(lease_id)
    }

    fn release_now(&self, lease_id: LeaseId) -> Option<StorageResult<ReleaseOutcome>> {
        Some(self.release_at_once(lease_id))
    }
    async fn release_with_outcome<'a>(
        &self,
        lease_id: LeaseId,
        outcome: Option<&'a Outcome>,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome> {
        let Some(outcome) = outcome else {
            policy.validate()?;
            return self.release(lease_id).await;
        };
        outcome.validate()?;
        policy.validate()?;
        let cell = match self.leases.find(lease_id) {
            Found::Active(cell) => cell,
            Found::Finished(_) => return self.already_released(lease_id),
            Found::Unknown => return Err(StorageError::not_found("lease", lease_id)),
        };
        let now = self.clock.now();
        // Ended in the index under the pool's lock, which reports take too:
        // a report either counts before this release or sees it ended.
        let mut state = cell.lock();
        match self.leases.end(lease_id, now) {
            Ended::Now(_, finished) => {
                if let Some(idx) = state.slot_of(finished.proxy_id) {
                    state.apply_outcome(idx, outcome, policy, now);
                }
                let _ = state.finish(lease_id);
                drop(state);
                Ok(ReleaseOutcome::Released(
                    finished.released(lease_id, cell.id),
                ))
            }
            Ended::Before => {
                drop(state);
                self.already_released(lease_id)
            }
            Ended::Unknown => Err(StorageError::not_found("lease", lease_id)),
        }
    }

    async fn report_outcome(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy> {
        outcome.validate()?;
        policy.validate()?;
        let cell = self.pool_of_active(lease_id)?;
        let now = self.clock.now();
        let mut state = cell.lock();
        // Active in the pool and in the index: a release ends a lease in the
        // index first and hands the capacity back later.
        let lease = state.leases.get(&lease_id).copied();
        let Some(lease) = lease.filter(|_| matches!(self.leases.find(lease_id), Found::Active(_)))
        else {
            drop(state);
            self.already_released(lease_id)?;
            return Err(StorageError::LeaseNotActive(lease_id));
        };
        state
            .apply_outcome(lease.slot, outcome, policy, now)
            .ok_or_else(|| internal("leased slot is empty"))
    }

    async fn list_target_bans(&self, proxy_id: ProxyId) -> StorageResult<Vec<TargetBan>> {
        let now = self.clock.now();
        let catalog = self.catalog.read();
        let cell = catalog
            .proxies
            .get(&proxy_id)
            .ok_or_else(|| StorageError::not_found("proxy", proxy_id))?;
        let state = cell.lock();
        state
            .proxy(proxy_id)
            .map(|slot| slot.bans_at(now))
            .ok_or_else(|| StorageError::not_found("proxy", proxy_id))
    }

    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease> {
        validate_ttl(ttl)?;
        let cell = match self.leases.find(lease_id) {
            Found::Active(cell) => cell,
            Found::Finished { .. } => {
                return match self.already_released(lease_id)? {
                    ReleaseOutcome::AlreadyReleased { .. } | ReleaseOutcome::Released(_) => {
                        Err(StorageError::LeaseNotActive(lease_id))
                    }
                };
            }
            Found::Unknown => return Err(StorageError::not_found("lease", lease_id)),
        };
        let now = self.clock.now();
        let expires_at = expiry(now, ttl)?;
        let mut state = cell.lock();
        let Some(lease) = state.leases.get(&lease_id).copied() else {
            drop(state);
            self.already_released(lease_id)?;
            return Err(StorageError::LeaseNotActive(lease_id));
        };
        // Still active in the index too: a release may have ended it and not
        // handed the capacity back yet.
        if lease.expires_at <= now || !self.leases.extend(lease_id, expires_at, micros(expires_at))
        {
            return Err(StorageError::LeaseNotActive(lease_id));
        }
        state.extend(lease_id, expires_at, micros(expires_at));
        let lease = state
            .leases
            .get(&lease_id)
            .copied()
            .ok_or_else(|| internal("renewed lease vanished"))?;
        let proxy = state
            .snapshot(lease.slot)
            .ok_or_else(|| internal("leased slot is empty"))?;
        Ok(active_lease(lease_id, &lease, &state, proxy))
    }

    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease> {
        let cell = match self.leases.find(lease_id) {
            Found::Active(cell) => cell,
            Found::Finished { .. } => return self.finished_lease(lease_id),
            Found::Unknown => return Err(StorageError::not_found("lease", lease_id)),
        };
        let mut state = cell.lock();
        let Some(lease) = state.leases.get(&lease_id).copied() else {
            drop(state);
            return self.finished_lease(lease_id);
        };
        let proxy = state
            .snapshot(lease.slot)
            .ok_or_else(|| internal("leased slot is empty"))?;
        Ok(active_lease(lease_id, &lease, &state, proxy))
    }

    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>> {
        validate_name("pool_name", pool_name)?;
        filter.validate()?;
        let now = self.clock.now();
        let filter_empty = filter.is_empty();
        let predicates = !filter_empty && filter.has_predicate();
        let catalog = self.catalog.read();
        let Some(cell) = catalog.by_name.get(pool_name) else {
            return Ok(None);
        };
        let mut state = cell.lock();
        let now_us = micros(now);
        self.reclaim(&mut state, cell, now, now_us);
        let skips = state.skips(now, now_us, None);
        Ok(state
            .select(filter, selector, filter_empty, predicates, &skips)
            .and_then(|idx| state.slot(idx))
            .map(Slot::copy))
    }

    async fn cleanup_expired(&self) -> StorageResult<u64> {
        let now = self.clock.now();
        let now_us = micros(now);
        let cells: Vec<Arc<PoolCell>> = self.catalog.read().pools.values().cloned().collect();
        let mut reclaimed = 0;
        for cell in cells {
            let mut state = cell.lock();
            reclaimed += self.reclaim(&mut state, &cell, now, now_us);
        }
        Ok(reclaimed)
    }

    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        self.apply_health(result, policy)
    }

    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        self.last_health(proxy_id)
    }

    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        self.health_records(proxy_id, limit)
    }

    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        self.stats(pool_name)
    }

    async fn pool_overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        self.overview(pool_name)
    }

    async fn list_leases<'a>(
        &self,
        pool_name: &str,
        consumer: Option<&'a str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        self.active_leases(pool_name, consumer, limit)
    }
}
