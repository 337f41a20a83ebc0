//! Lifecycle observers: hooks called after every acquire and release.

use std::time::Duration;

use pharox_domain::{
    ConsumerId, Lease, LeaseId, PoolId, PoolStats, ProxyFilter, ProxyId, Selector,
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
    /// The pool's occupancy after the call, when enabled.
    pub pool_stats: Option<&'a PoolStats>,
}

/// Receives lifecycle events. Both methods default to doing nothing.
///
/// Observers run inline on the caller's task after the storage call: keep
/// them cheap (count, record a metric) and hand slow work to a channel.
pub trait LeaseObserver: Send + Sync {
    /// After every acquire, hit or miss.
    fn on_acquire(&self, _event: &AcquireEvent<'_>) {}
    /// After every release that ended an active lease.
    fn on_release(&self, _event: &ReleaseEvent<'_>) {}
}
