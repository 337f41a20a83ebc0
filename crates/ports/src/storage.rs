//! The storage port: [`ProxyStorage`], the contract every storage adapter
//! keeps (its docs are the contract the `pharox-contract-tests` suite
//! checks), and the request and outcome types of its calls.

use std::time::Duration;

use async_trait::async_trait;
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, Lease, LeaseId, Outcome, PoolId,
    PoolOverview, PoolStats, Proxy, ProxyFilter, ProxyId, ProxyPool, Selector, SessionRequest,
    TargetBan, TargetHost, UsagePolicy, ValidationError, validate_name, validate_ttl,
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
    /// The sticky session to lease under, if any (see
    /// [`ProxyStorage::acquire`]).
    pub session: Option<SessionRequest>,
    /// The site the lease is for, if the caller says: proxies banned for it
    /// are skipped.
    pub target: Option<TargetHost>,
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
            session: None,
            target: None,
        }
    }

    /// Leases under a sticky session (see [`ProxyStorage::acquire`]).
    #[must_use]
    pub fn with_session(mut self, session: SessionRequest) -> Self {
        self.session = Some(session);
        self
    }

    /// Names the site the lease is for: proxies banned for it are skipped.
    #[must_use]
    pub fn with_target(mut self, target: TargetHost) -> Self {
        self.target = Some(target);
        self
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

    /// Checks the pool name, the TTL, the filter and the session's TTL.
    /// Adapters call this before touching any state.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("pool_name", &self.pool_name)?;
        validate_ttl(self.ttl)?;
        self.filter.validate()?;
        self.session
            .as_ref()
            .map_or(Ok(()), SessionRequest::validate)
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
///   [`AcquireRequest::lease_id`] is idempotent, also when repeats race.
/// - **Expiry never blocks.** A lease holds its proxy while now is before
///   `expires_at`; from `expires_at` itself on it holds no capacity (expiry
///   is exclusive, as in [`Lease::is_expired_at`]). Acquire reclaims such
///   a lease (marks it released) in the same step, without anyone calling
///   [`cleanup_expired`](Self::cleanup_expired) first; `find_available`,
///   `pool_stats` and `renew` treat it as ended whether or not it has been
///   reclaimed yet. Until it is, [`get_lease`](Self::get_lease) may still
///   read it as active (with its `expires_at` in the past).
/// - **Storage-owned fields.** `current_leases` is kept by the storage;
///   `save_proxy` and `add_proxies` ignore the caller's value. On update
///   they also keep `created_at`, `checked_at` and `health`; only
///   [`apply_health_result`](Self::apply_health_result) changes the last
///   two. (What an insert does with a caller's `checked_at` and `health`
///   is not specified: set them with `apply_health_result`.)
/// - **Not found.** Calls on an unknown id or name give
///   [`StorageError::NotFound`](crate::StorageError::NotFound): get and
///   delete of a pool or proxy, `get_pool_by_name`, `list_proxies` and
///   `pool_stats` of an unknown pool, `save_proxy`/`add_proxies` into one,
///   `release`, `renew` and `get_lease` of an unknown lease (also one whose
///   proxy or pool was deleted), `acquire` for an unknown consumer. An
///   acquire or `find_available` on an unknown pool gives `Ok(None)`; the
///   health calls on an unknown proxy give `Ok(None)` or no records.
/// - **Exact names.** Pool and consumer names are compared exactly:
///   case-sensitive, neither trimmed nor normalised. `eu` and `EU` are two
///   pools (no conflict), and no lookup by name folds case.
/// - **Copies.** Returned values are copies; mutating them changes nothing
///   stored.
/// - **Usage.** A proxy's [`usage`](pharox_domain::Proxy::usage) (error
///   score, cooldown) and its bans per target are storage-owned like
///   `current_leases`: only [`report_outcome`](Self::report_outcome),
///   [`release_with_outcome`](Self::release_with_outcome) and (when the
///   health policy says so) [`apply_health_result`](Self::apply_health_result)
///   change them, each by the domain's
///   [`UsagePolicy::apply_outcome`], atomically with the call. A proxy
///   cooling down is never leased nor offered by
///   [`find_available`](Self::find_available); outcomes never change a
///   proxy's status.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ProxyStorage: Send + Sync {
    /// Inserts or updates a pool (by id). A name used by another pool is a
    /// conflict (names are exact: see the trait docs). An update keeps the
    /// stored `created_at`.
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool>;

    /// The pool with this id.
    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool>;

    /// The pool with this name.
    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool>;

    /// Every pool, ordered by name (names that differ only in case come in
    /// the backend's collation order).
    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>>;

    /// Deletes a pool with everything under it: its proxies, their leases
    /// (active or ended) and their health history. Afterwards every read of
    /// them is not-found (the health history reads as empty), and the name
    /// and the proxy ids are free to be used again, starting clean. Unknown
    /// pool: not found.
    async fn delete_pool(&self, id: PoolId) -> StorageResult<()>;

    /// Inserts or updates a proxy (by id). Its pool must exist (else
    /// not-found for the pool); moving a proxy to another pool is a conflict.
    /// The storage-owned fields (see the trait docs) are the storage's.
    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy>;

    /// Inserts or updates many proxies, each as
    /// [`save_proxy`](Self::save_proxy) would, all or nothing: if any is
    /// invalid, its pool is missing or it would move to another pool, none
    /// is written.
    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>>;

    /// The proxy with this id.
    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy>;

    /// The proxies of a pool, ordered by id. Unknown pool: not found.
    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>>;

    /// Deletes a proxy with its leases (active or ended) and its health
    /// history: reads of those leases are then not-found and the history
    /// reads as empty; saving the same id again makes a new, clean proxy.
    /// Unknown proxy: not found.
    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()>;

    /// The id of the consumer named `name`, creating it on first use.
    /// Idempotent and safe to race; names are exact (see the trait docs).
    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId>;

    /// Finds a matching proxy with capacity and leases it, atomically (see
    /// the trait docs). The lease is active, `acquired_at` is now,
    /// `expires_at` is `acquired_at + ttl`, and its `proxy` snapshot counts
    /// this lease in `current_leases`. `Ok(None)` when nothing qualifies or
    /// the pool does not exist; not-found when the consumer does not exist
    /// (checked first, so also on an unknown pool).
    ///
    /// **Idempotent by lease id.** When `request.lease_id` is set, the new
    /// lease gets that id, and if a lease with that id already exists the
    /// call leases nothing and returns that lease as it is stored now
    /// (released or expired, if it has been since; never renewed, whatever
    /// TTL, filter or selector the repeat carries): a caller that did not
    /// learn the outcome of an earlier call repeats it with the same id.
    /// Repeats may race (a retry sent while the call it retries still
    /// runs): one lease is made, and every call returns it. A lease with
    /// that id in another pool or for another consumer is a
    /// [`Conflict`](crate::StorageError::Conflict), also once it is
    /// released, and the conflicting call leases nothing.
    ///
    /// **Cooldowns and bans.** A proxy cooling down at now is skipped; with
    /// `request.target`, so is a proxy whose ban for that target holds at
    /// now (targets compare case-insensitively: they are normalised).
    ///
    /// **Sticky sessions.** With `request.session`, the storage remembers
    /// which proxy the session (pool + key) used last, for the session's TTL
    /// from this acquire on (each use renews it). If the session is known,
    /// not expired, and its proxy qualifies for this request (active, not
    /// cooling down, matching the filter, not banned for the target, with
    /// capacity), that proxy is leased again; otherwise the selector picks,
    /// and the session moves to the new proxy. The lease's
    /// [`session`](pharox_domain::Lease::session) says whether it moved.
    /// Concurrent acquires under one key all get the session's proxy while
    /// its capacity allows; sessions are shared by every caller of the same
    /// storage. When nothing qualifies the session is left as it was.
    ///
    /// **No lease behind an error.** If this returns an error, no lease was
    /// created. An adapter whose reply can be lost after the backend acted
    /// (a connection that breaks, a call that times out) must find out
    /// whether the lease exists before it answers: return it if it does,
    /// report the error only if it does not.
    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>>;

    /// Releases a lease (also one past its expiry that nothing has reclaimed
    /// yet) and gives its proxy the capacity back. Idempotent: releasing a
    /// released or reclaimed lease changes nothing and says so, with when it
    /// was released. Unknown lease: not found.
    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome>;

    /// [`acquire`](Self::acquire) answered without waiting, by a storage
    /// that can (one in memory); `None` (the default) means "call
    /// `acquire`", which callers then do. When it answers it must answer as
    /// `acquire` would; an adapter that implements it best makes `acquire`
    /// answer through it, so the contract suite covers it. It spares the
    /// hot path a boxed future per call, a fifth of an in-memory acquire.
    fn acquire_now(&self, request: &AcquireRequest) -> Option<StorageResult<Option<Lease>>> {
        let _ = request;
        None
    }

    /// [`release`](Self::release) answered without waiting, as
    /// [`acquire_now`](Self::acquire_now) is for acquire.
    fn release_now(&self, lease_id: LeaseId) -> Option<StorageResult<ReleaseOutcome>> {
        let _ = lease_id;
        None
    }

    /// [`release`](Self::release), and when this call released the lease,
    /// applies `outcome` (if any) to its proxy under `policy`, atomically
    /// with the release: the outcome counts exactly once, also when a
    /// release or a report of the same lease races this call. A lease that
    /// was already released changes nothing (its outcome is dropped). An
    /// invalid outcome or policy is rejected and changes nothing; unknown
    /// lease: not found.
    async fn release_with_outcome<'a>(
        &self,
        lease_id: LeaseId,
        outcome: Option<&'a Outcome>,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome>;

    /// Applies `outcome`, reported by the holder of an active lease (also
    /// one past its `expires_at` that nothing has reclaimed yet), to the
    /// lease's proxy under `policy`, atomically; several reports per lease
    /// are allowed. Returns the proxy as it is afterwards. A released lease
    /// gives [`LeaseNotActive`](crate::StorageError::LeaseNotActive) and
    /// changes nothing; an invalid outcome or policy is rejected; unknown
    /// lease: not found.
    async fn report_outcome(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy>;

    /// The bans of a proxy that hold now, ordered by target. Unknown proxy:
    /// not found.
    async fn list_target_bans(&self, proxy_id: ProxyId) -> StorageResult<Vec<TargetBan>>;

    /// Extends an active lease that has not reached its `expires_at` to
    /// `now + ttl`. A released lease, or one at or past its `expires_at`,
    /// gives [`LeaseNotActive`](crate::StorageError::LeaseNotActive); an
    /// invalid TTL is rejected and changes nothing. Unknown lease: not found.
    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease>;

    /// The lease with this id, with the proxy as it is now (a lease handed
    /// out earlier keeps the snapshot it was given). Unknown lease: not
    /// found.
    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease>;

    /// The proxy [`acquire`](Self::acquire) would choose now, by the same
    /// filter and selector, without leasing it (and without advancing a
    /// round-robin cursor). So never a proxy at its `max_concurrency` (`None`
    /// when every match is full), but a proxy freed only by expiry is
    /// offered, and its `current_leases` does not count expired leases.
    /// `Ok(None)` also when the pool does not exist. Whether it reclaims
    /// expired leases on the way is the adapter's choice.
    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>>;

    /// Releases every active lease at or past its `expires_at`; returns how
    /// many it released (leases released before do not count).
    async fn cleanup_expired(&self) -> StorageResult<u64>;

    /// Applies a health result under `policy`, atomically: updates status,
    /// `checked_at` and health, and appends a health record; when the
    /// policy's outcome [`ends_cooldown`](pharox_domain::HealthOutcome::ends_cooldown),
    /// also resets the proxy's usage (score, cooldown and its doubling; bans
    /// per target stay). Returns the
    /// updated proxy, or `Ok(None)` if the proxy no longer exists. An invalid
    /// result is rejected and recorded nowhere.
    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>>;

    /// The newest health record of a proxy; `None` when it has none, also
    /// when the proxy does not exist.
    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>>;

    /// Up to `limit` health records of a proxy, newest first; none for an
    /// unknown proxy.
    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>>;

    /// Occupancy of a pool now: leases at or past their expiry do not count
    /// (see [`PoolStats`]); a proxy cooling down is not available, and
    /// counts in `cooling_down_proxies` if it is active. Unknown pool: not
    /// found.
    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats>;

    /// An operator's overview of a pool now (see [`PoolOverview`]), computed
    /// by the storage without handing every proxy to the caller:
    ///
    /// - `proxies` and `by_status` count every proxy (every status key is
    ///   present, 0 when no proxy has it).
    /// - `leased_proxies` and `active_leases` count only leases that are
    ///   active and before their `expires_at`, as [`pool_stats`](Self::pool_stats)
    ///   does; `expired_unreclaimed` counts the active leases at or past it.
    ///   The call reclaims nothing: the same call twice, with no time
    ///   passing, gives the same counts.
    /// - `capacity` sums `max_concurrency` over the proxies whose status is
    ///   active; `None` when one of them is unlimited, 0 when none is active.
    /// - `latency_ms` gives `percentile_cont` 0.5 and 0.95 (linear
    ///   interpolation, see [`pharox_domain::percentile_cont`]) of the
    ///   proxies' `health.last_latency_ms`, over the proxies that have one;
    ///   both `None` when none has.
    /// - `checked_at` is the least and greatest `checked_at` of the proxies
    ///   that have one.
    ///
    /// Unknown pool: not found. An invalid name is rejected.
    async fn pool_overview(&self, pool_name: &str) -> StorageResult<PoolOverview>;

    /// Up to `limit` leases of the pool named `pool_name` that hold their
    /// proxy now (active and before their `expires_at`), oldest
    /// `acquired_at` first (ties by lease id), each with its proxy as it is
    /// now (as [`get_lease`](Self::get_lease) reads it). With `consumer`,
    /// only that consumer's leases; a consumer name nobody uses gives none.
    /// Unknown pool: not found. An invalid pool name is rejected.
    async fn list_leases<'a>(
        &self,
        pool_name: &str,
        consumer: Option<&'a str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>>;
}

#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
impl MockProxyStorage {
    /// A mock that answers [`ProxyStorage::acquire_now`] and
    /// [`ProxyStorage::release_now`] with `None`, as a storage that always
    /// waits does, so a test sets expectations on `acquire` and `release`
    /// alone.
    #[must_use]
    pub fn waiting() -> Self {
        let mut mock = Self::new();
        mock.expect_acquire_now().returning(|_| None);
        mock.expect_release_now().returning(|_| None);
        mock
    }
}
