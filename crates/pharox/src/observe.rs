//! Lifecycle observers: hooks called after every acquire, release,
//! outcome and health check.

use std::time::Duration;

use pharox_domain::{
    ConsumerId, HealthCheckResult, Lease, LeaseId, Outcome, PoolId, PoolStats, Proxy, ProxyFilter,
    ProxyId, ProxyStatus, Selector,
};
use time::OffsetDateTime;

use crate::PharoxError;

/// What happened in one acquire.
#[derive(Debug)]
#[non_exhaustive]
pub struct AcquireEvent<'a> {
    /// The pool asked for.
    pub pool_name: &'a str,
    /// The consumer's name.
    pub consumer: &'a str,
    /// The filter used.
    pub filter: &'a ProxyFilter,
    /// The selector used.
    pub selector: Selector,
    /// The lease granted, or `None` for a miss.
    pub lease: Option<&'a Lease>,
    /// When the call started.
    pub started_at: OffsetDateTime,
    /// When it completed.
    pub completed_at: OffsetDateTime,
    /// How long it took.
    pub duration: Duration,
    /// The pool's occupancy after the call, when enabled with
    /// [`ManagerConfig::with_pool_stats`](crate::ManagerConfig::with_pool_stats)
    /// (it costs one storage query per call).
    pub pool_stats: Option<&'a PoolStats>,
}

/// An acquire the storage failed (a miss is not a failure: see
/// [`AcquireEvent`]). Validation errors, found before the storage is asked,
/// give no event.
#[derive(Debug)]
#[non_exhaustive]
pub struct AcquireErrorEvent<'a> {
    /// The pool asked for.
    pub pool_name: &'a str,
    /// The consumer's name.
    pub consumer: &'a str,
    /// What went wrong.
    pub error: &'a PharoxError,
    /// How long the failed call took.
    pub duration: Duration,
}

/// What happened in one release that ended a lease.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReleaseEvent<'a> {
    /// The lease.
    pub lease_id: LeaseId,
    /// Its proxy.
    pub proxy_id: ProxyId,
    /// Its pool.
    pub pool_id: PoolId,
    /// Its pool's name, from the manager's cache of pool names (filled by
    /// acquires; for a pool not seen yet, one storage read per pool when an
    /// observer [wants pool names](LeaseObserver::wants_pool_names)); `None`
    /// when not known.
    pub pool_name: Option<&'a str>,
    /// Its holder.
    pub consumer_id: ConsumerId,
    /// When it was released.
    pub released_at: OffsetDateTime,
    /// How long it was held.
    pub lease_duration: Duration,
    /// The outcome applied with the release, if the caller gave one.
    pub outcome: Option<&'a Outcome>,
    /// The pool's occupancy after the call, when enabled.
    pub pool_stats: Option<&'a PoolStats>,
}

/// An outcome the storage applied to a proxy: reported for a held lease,
/// or with the release that ended it.
#[derive(Debug)]
#[non_exhaustive]
pub struct OutcomeEvent<'a> {
    /// The lease it was reported for.
    pub lease_id: LeaseId,
    /// Its proxy.
    pub proxy_id: ProxyId,
    /// The proxy's pool (resolved as for [`ReleaseEvent::pool_name`]).
    pub pool_name: Option<&'a str>,
    /// What the use came to.
    pub outcome: &'a Outcome,
    /// Whether it came with the release (then it is also in the
    /// [`ReleaseEvent`]).
    pub on_release: bool,
    /// The proxy's standing afterwards, for a report (a release does not
    /// read the proxy back).
    pub proxy: Option<&'a Proxy>,
}

/// Receives lifecycle events. Every method defaults to doing nothing.
///
/// Observers run inline on the caller's task after the storage call: keep
/// them cheap (count, record a metric) and hand slow work to a channel.
pub trait LeaseObserver: Send + Sync {
    /// After every acquire, hit or miss.
    fn on_acquire(&self, _event: &AcquireEvent<'_>) {}
    /// After every acquire whose storage call failed (each attempt of
    /// [`acquire_with_retry`](crate::ProxyManager::acquire_with_retry)).
    fn on_acquire_error(&self, _event: &AcquireErrorEvent<'_>) {}
    /// After every release that ended an active lease.
    fn on_release(&self, _event: &ReleaseEvent<'_>) {}
    /// After every outcome the storage applied.
    fn on_outcome(&self, _event: &OutcomeEvent<'_>) {}
    /// Whether release and outcome events must name the pool even when
    /// the manager has not seen it yet (a lease made by another process):
    /// then the manager reads the pool once and caches its name. `false`
    /// by default: the events name it only when it is cached, and no
    /// storage call is added.
    fn wants_pool_names(&self) -> bool {
        false
    }
}

/// One health check of a [`HealthOrchestrator`](crate::HealthOrchestrator):
/// the probe's result, and what persisting it did.
#[derive(Debug)]
#[non_exhaustive]
pub struct HealthCheckEvent<'a> {
    /// The proxy checked.
    pub proxy_id: ProxyId,
    /// Its pool.
    pub pool_id: PoolId,
    /// Its pool's name (known for [`sweep_pool`](crate::HealthOrchestrator::sweep_pool),
    /// else read once per pool and cached); `None` if that read failed.
    pub pool_name: Option<&'a str>,
    /// What the probe found (`status` is its verdict).
    pub result: &'a HealthCheckResult,
    /// The proxy's status before the result was applied.
    pub status_before: ProxyStatus,
    /// Its status after, or `None` when it was deleted meanwhile or the
    /// result could not be persisted.
    pub status_after: Option<ProxyStatus>,
    /// Why the result could not be persisted, if it could not.
    pub error: Option<&'a PharoxError>,
}

/// Receives the health orchestrator's events; defaults to doing nothing.
/// Runs inline on the sweep's lanes: keep it cheap.
pub trait HealthObserver: Send + Sync {
    /// After every check, persisted or not.
    fn on_health_check(&self, _event: &HealthCheckEvent<'_>) {}
}
