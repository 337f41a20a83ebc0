use std::time::Duration;

use async_trait::async_trait;
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, Lease, LeaseId, PoolId, PoolStats,
    Proxy, ProxyFilter, ProxyId, ProxyPool, Selector, ValidationError, validate_name, validate_ttl,
};
use time::OffsetDateTime;

use crate::StorageResult;

/// What a worker asks for when it acquires a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquireRequest {
    /// The pool to lease from, by name.
    pub pool_name: String,
    /// Who will hold the lease (see [`ProxyStorage::ensure_consumer`]).
    pub consumer_id: ConsumerId,
    /// How long the lease holds the proxy unless renewed or released.
    pub ttl: Duration,
    /// Which proxies qualify; the empty filter takes any.
    pub filter: ProxyFilter,
    /// How to choose among the qualifying proxies.
    pub selector: Selector,
    /// The id the new lease gets, chosen by the caller so that the call is
    /// idempotent (see [`ProxyStorage::acquire`]); `None` lets the storage
    /// pick a fresh one.
    pub lease_id: Option<LeaseId>,
}

impl AcquireRequest {
    /// A request for any proxy of `pool_name`, chosen first-available.
    pub fn new(pool_name: impl Into<String>, consumer_id: ConsumerId, ttl: Duration) -> Self {
        Self {
            pool_name: pool_name.into(),
            consumer_id,
            ttl,
            filter: ProxyFilter::default(),
            selector: Selector::default(),
            lease_id: None,
        }
    }

    /// Sets the id the lease will have, making the call idempotent: a
    /// repeated acquire with the same id returns the lease the first one
    /// made instead of leasing a second proxy.
    #[must_use]
    pub fn with_lease_id(mut self, lease_id: LeaseId) -> Self {
        self.lease_id = Some(lease_id);
        self
    }

    /// Sets the filter.
    #[must_use]
    pub fn with_filter(mut self, filter: ProxyFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the selector.
    #[must_use]
    pub fn with_selector(mut self, selector: Selector) -> Self {
        self.selector = selector;
        self
    }

    /// Checks the pool name, the TTL and the filter. Adapters call this
    /// before touching any state.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("pool_name", &self.pool_name)?;
        validate_ttl(self.ttl)?;
        self.filter.validate()
    }
}

/// A lease that a release call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedLease {
    /// The lease.
    pub lease_id: LeaseId,
    /// Its proxy.
    pub proxy_id: ProxyId,
    /// Its pool.
    pub pool_id: PoolId,
    /// Its holder.
    pub consumer_id: ConsumerId,
    /// When it was granted.
    pub acquired_at: OffsetDateTime,
    /// When this call released it.
    pub released_at: OffsetDateTime,
}

/// What [`ProxyStorage::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lease was active (possibly past its expiry) and is now released;
    /// the proxy's capacity is back.
    Released(ReleasedLease),
    /// The lease had already been released (by an earlier call, or reclaimed
    /// after it expired). Nothing changed.
    AlreadyReleased {
        /// The lease.
        lease_id: LeaseId,
        /// When it was released.
        released_at: Option<OffsetDateTime>,
    },
}

impl ReleaseOutcome {
    /// Whether this call released the lease.
    #[must_use]
    pub fn was_released(&self) -> bool {
        matches!(self, Self::Released(_))
    }
}

/// Persistence of pools, proxies, consumers, leases and health history.
///
/// The rules every adapter keeps (the contract suite checks each):
///
/// - **Validation first.** Inputs are validated (`validate()` on domain
///   values, [`AcquireRequest::validate`]) before any state changes; a
///   rejected call changes nothing.
/// - **Atomic acquire.** [`acquire`](Self::acquire) finds and leases in one
///   atomic step: two concurrent callers never both take the last slot of a
///   proxy, and a caller is never refused while a matching proxy has
///   capacity. Only active proxies are leased; `max_concurrency` is honoured
///   (`None` = unlimited).
/// - **No lease behind an error.** A call that returns an error has created
///   no lease, also when the backend's reply was lost (a broken connection,
///   a timeout): the adapter resolves such an unknown outcome before it
///   answers. [`acquire`](Self::acquire) with a caller-chosen
///   [`AcquireRequest::lease_id`] is idempotent.
/// - **Expiry never blocks.** A lease past `expires_at` holds no capacity:
///   acquire reclaims it (marks it released) in the same step, without
///   anyone calling [`cleanup_expired`](Self::cleanup_expired) first.
/// - **Storage-owned fields.** `current_leases` is kept by the storage;
///   `save_proxy` ignores the caller's value. On update it also keeps
///   `checked_at` and `health`, which only
///   [`apply_health_result`](Self::apply_health_result) changes.
/// - **Not found.** Admin calls on unknown ids give
///   [`StorageError::NotFound`](crate::StorageError::NotFound); an acquire
///   on an unknown pool gives `Ok(None)`.
/// - **Copies.** Returned values are copies; mutating them changes nothing
///   stored.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ProxyStorage: Send + Sync {
    /// Inserts or updates a pool (by id). A name used by another pool is a
    /// conflict.
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool>;

    /// The pool with this id.
    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool>;

    /// The pool with this name.
    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool>;

    /// Every pool, by name.
    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>>;

    /// Deletes a pool with its proxies, their leases and health history.
    async fn delete_pool(&self, id: PoolId) -> StorageResult<()>;

    /// Inserts or updates a proxy (by id). Its pool must exist (else
    /// not-found for the pool); moving a proxy to another pool is a conflict.
    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy>;

    /// Inserts or updates many proxies, all or nothing: if any is invalid or
    /// its pool is missing, none is written.
    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>>;

    /// The proxy with this id.
    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy>;

    /// The proxies of a pool, by id. Unknown pool: not found.
    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>>;

    /// Deletes a proxy with its leases and health history.
    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()>;

    /// The id of the consumer named `name`, creating it on first use.
    /// Idempotent and safe to race.
    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId>;

    /// Finds a matching proxy with capacity and leases it, atomically (see
    /// the trait docs). `Ok(None)` when nothing qualifies or the pool does
    /// not exist; not-found when the consumer does not exist.
    ///
    /// **Idempotent by lease id.** When `request.lease_id` is set, the new
    /// lease gets that id, and if a lease with that id already exists the
    /// call leases nothing and returns that lease as it is stored now
    /// (released or expired, if it has been since): a caller that did not
    /// learn the outcome of an earlier call repeats it with the same id. A
    /// lease with that id in another pool or for another consumer is a
    /// [`Conflict`](crate::StorageError::Conflict).
    ///
    /// **No lease behind an error.** If this returns an error, no lease was
    /// created. An adapter whose reply can be lost after the backend acted
    /// (a connection that breaks, a call that times out) must find out
    /// whether the lease exists before it answers: return it if it does,
    /// report the error only if it does not.
    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>>;

    /// Releases a lease. Idempotent: releasing a released lease changes
    /// nothing and says so. Unknown lease: not found.
    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome>;

    /// Extends an active, unexpired lease to `now + ttl`. A released or
    /// expired lease gives [`LeaseNotActive`](crate::StorageError::LeaseNotActive).
    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease>;

    /// The lease with this id, with the proxy as it is now.
    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease>;

    /// The proxy [`acquire`](Self::acquire) would choose now, without leasing
    /// it (and without advancing a round-robin cursor).
    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>>;

    /// Releases every active lease past its expiry; returns how many.
    async fn cleanup_expired(&self) -> StorageResult<u64>;

    /// Applies a health result under `policy`, atomically: updates status,
    /// `checked_at` and health, and appends a health record. Returns the
    /// updated proxy, or `Ok(None)` if the proxy no longer exists.
    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>>;

    /// The newest health record of a proxy, if any.
    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>>;

    /// Up to `limit` health records of a proxy, newest first.
    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>>;

    /// Occupancy of a pool. Unknown pool: not found.
    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats>;
}
