//! Helpers every scenario module shares: unique names, builders of pools,
//! proxies and requests, and calls that panic with a message on failure.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, Lease, LeaseId, PoolId, PoolStats, Proxy,
    ProxyBuilder, ProxyFilter, ProxyId, ProxyPool, ProxyProtocol, ProxyStatus, Selector,
};
use pharox_ports::{AcquireRequest, ProxyStorage, ReleaseOutcome, StorageError, StorageResult};
use time::OffsetDateTime;

use crate::ContractFixture;

/// A TTL no scenario outlives.
pub(crate) const LONG: Duration = Duration::from_secs(3600);
/// A TTL scenarios let run out with time travel.
pub(crate) const SHORT: Duration = Duration::from_secs(10);
/// How far to travel to get past [`SHORT`].
pub(crate) const PAST_SHORT: Duration = Duration::from_secs(11);

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", PoolId::new())
}

pub(crate) fn store(fx: &ContractFixture) -> &dyn ProxyStorage {
    fx.storage.as_ref()
}

pub(crate) async fn new_pool(fx: &ContractFixture, prefix: &str) -> ProxyPool {
    let pool = ProxyPool::new(unique(prefix)).expect("valid pool name");
    let saved = store(fx).save_pool(&pool).await.expect("save_pool");
    assert_eq!(saved.id, pool.id, "save_pool must keep the pool id");
    saved
}

pub(crate) async fn new_consumer(fx: &ContractFixture, prefix: &str) -> ConsumerId {
    store(fx)
        .ensure_consumer(&unique(prefix))
        .await
        .expect("ensure_consumer")
}

/// A builder for the `n`-th test proxy of a pool (distinct host and port).
pub(crate) fn proxy(pool: &ProxyPool, n: u16) -> ProxyBuilder {
    Proxy::builder(
        pool.id,
        format!("10.{}.{}.{}", n / 62_500, (n / 250) % 250, n % 250 + 1),
        8000 + n % 1000,
        ProxyProtocol::Http,
    )
}

pub(crate) async fn save(fx: &ContractFixture, builder: ProxyBuilder) -> Proxy {
    let proxy = builder.build().expect("valid test proxy");
    let saved = store(fx).save_proxy(&proxy).await.expect("save_proxy");
    assert_eq!(saved.id, proxy.id, "save_proxy must keep the proxy id");
    saved
}

/// Saves `n` proxies made by `f(i)` and returns them sorted by id.
pub(crate) async fn save_many(
    fx: &ContractFixture,
    n: u16,
    f: impl Fn(u16) -> ProxyBuilder,
) -> Vec<Proxy> {
    let mut out = Vec::with_capacity(usize::from(n));
    for i in 0..n {
        out.push(save(fx, f(i)).await);
    }
    out.sort_by_key(|p| p.id);
    out
}

pub(crate) fn request(pool: &ProxyPool, consumer: ConsumerId, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(pool.name.clone(), consumer, ttl)
}

pub(crate) async fn acquire(fx: &ContractFixture, req: &AcquireRequest) -> Option<Lease> {
    store(fx)
        .acquire(req)
        .await
        .unwrap_or_else(|e| panic!("acquire({req:?}) failed: {e}"))
}

pub(crate) async fn release(fx: &ContractFixture, lease: LeaseId) -> ReleaseOutcome {
    store(fx)
        .release(lease)
        .await
        .unwrap_or_else(|e| panic!("release({lease}) failed: {e}"))
}

pub(crate) async fn stats(fx: &ContractFixture, pool: &ProxyPool) -> PoolStats {
    store(fx)
        .pool_stats(&pool.name)
        .await
        .unwrap_or_else(|e| panic!("pool_stats({}) failed: {e}", pool.name))
}

/// Acquires until nothing is left (every proxy must have max_concurrency 1),
/// then releases everything; returns which proxies were leased.
pub(crate) async fn lease_all(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    filter: &ProxyFilter,
    selector: Selector,
) -> BTreeSet<ProxyId> {
    let req = request(pool, consumer, LONG)
        .with_filter(filter.clone())
        .with_selector(selector);
    let mut leased = BTreeSet::new();
    let mut leases = Vec::new();
    for _ in 0..1000 {
        let Some(lease) = acquire(fx, &req).await else {
            break;
        };
        assert!(
            leased.insert(lease.proxy_id),
            "{selector}: proxy {} leased twice though max_concurrency is 1",
            lease.proxy_id
        );
        leases.push(lease.id);
    }
    for id in leases {
        assert!(release(fx, id).await.was_released());
    }
    leased
}

pub(crate) fn ids(proxies: &[&Proxy]) -> BTreeSet<ProxyId> {
    proxies.iter().map(|p| p.id).collect()
}

#[track_caller]
pub(crate) fn expect_invalid<T: Debug>(result: StorageResult<T>, what: &str) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{what}: expected StorageError::Invalid, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn expect_not_found<T: Debug>(result: StorageResult<T>, entity: &str, what: &str) {
    match result {
        Err(StorageError::NotFound { entity: e, .. }) if e == entity => {}
        other => panic!("{what}: expected NotFound for a {entity}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn expect_not_active<T: Debug>(result: StorageResult<T>, lease: LeaseId, what: &str) {
    match result {
        Err(StorageError::LeaseNotActive(id)) if id == lease => {}
        other => panic!("{what}: expected LeaseNotActive({lease}), got {other:?}"),
    }
}

pub(crate) fn health(
    proxy: &Proxy,
    status: ProxyStatus,
    latency_ms: Option<f64>,
    checked_at: OffsetDateTime,
) -> HealthCheckResult {
    let failed = status == ProxyStatus::Inactive;
    HealthCheckResult {
        proxy_id: proxy.id,
        protocol: proxy.protocol,
        status,
        reachable: !failed,
        latency_ms,
        attempts: 1,
        http_status: (!failed).then_some(204),
        checked_at,
        error: failed.then(|| "connection refused".to_owned()),
    }
}

pub(crate) async fn apply(
    fx: &ContractFixture,
    result: &HealthCheckResult,
    policy: HealthPolicy,
) -> Proxy {
    store(fx)
        .apply_health_result(result, &policy)
        .await
        .expect("apply_health_result")
        .expect("apply_health_result on an existing proxy returns it")
}

pub(crate) fn base_time() -> OffsetDateTime {
    pharox_domain::now_micros() - time::Duration::hours(1)
}

pub(crate) fn ids_of(proxies: &[Proxy]) -> Vec<ProxyId> {
    proxies.iter().map(|p| p.id).collect()
}

#[track_caller]
pub(crate) fn expect_conflict<T: Debug>(result: StorageResult<T>, what: &str) {
    match result {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("{what}: expected StorageError::Conflict, got {other:?}"),
    }
}

/// `find_available`, panicking on an error.
pub(crate) async fn peek(
    fx: &ContractFixture,
    pool: &ProxyPool,
    filter: &ProxyFilter,
    selector: Selector,
) -> Option<Proxy> {
    store(fx)
        .find_available(&pool.name, filter, selector)
        .await
        .unwrap_or_else(|e| panic!("find_available({}, {selector}) failed: {e}", pool.name))
}

/// `get_lease`, panicking on an error.
pub(crate) async fn lease_now(fx: &ContractFixture, id: LeaseId) -> Lease {
    store(fx)
        .get_lease(id)
        .await
        .unwrap_or_else(|e| panic!("get_lease({id}) failed: {e}"))
}

/// `get_proxy`, panicking on an error.
pub(crate) async fn proxy_now(fx: &ContractFixture, id: ProxyId) -> Proxy {
    store(fx)
        .get_proxy(id)
        .await
        .unwrap_or_else(|e| panic!("get_proxy({id}) failed: {e}"))
}

/// A filter that takes only the proxy `id` (a predicate, so it also pins
/// down what the predicate path of an adapter does).
pub(crate) fn only(id: ProxyId) -> ProxyFilter {
    ProxyFilter::new().predicate(move |p| p.id == id)
}

/// `(total_leases, leased_proxies, available_proxies)` of a pool.
pub(crate) async fn occupancy(fx: &ContractFixture, pool: &ProxyPool) -> (u64, u64, u64) {
    let s = stats(fx, pool).await;
    (s.total_leases, s.leased_proxies, s.available_proxies)
}
