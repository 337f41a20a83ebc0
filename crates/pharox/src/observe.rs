//! Lifecycle observers: hooks called after every acquire and release.

use std::time::Duration;

use pharox_domain::{
    ConsumerId, Lease, LeaseId, Outcome, PoolId, PoolStats, Proxy, ProxyFilter, ProxyId, Selector,
};
use time::OffsetDateTime;

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
    /// After every release that ended an active lease.
    fn on_release(&self, _event: &ReleaseEvent<'_>) {}
    /// After every outcome the storage applied.
    fn on_outcome(&self, _event: &OutcomeEvent<'_>) {}
}
