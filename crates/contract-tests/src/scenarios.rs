//! One `pub async fn` per behaviour of [`ProxyStorage`]. Each panics with a
//! message saying what went wrong when the storage misbehaves.
//!
//! Every scenario creates its own pools and consumers under fresh unique
//! names, never sleeps (expiry is reached with [`ContractFixture::time`]),
//! and asserts exact outcomes. [`storage_contract_tests!`](crate::storage_contract_tests)
//! runs them all; call one by hand to debug it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, LeaseId, LeaseStatus, PoolId, Proxy, ProxyBuilder,
    ProxyFilter, ProxyId, ProxyPool, ProxyProtocol, ProxyStatus, Selector,
};
use pharox_ports::{AcquireRequest, ProxyStorage, ReleaseOutcome, StorageError, StorageResult};
use time::OffsetDateTime;
use tokio::sync::Barrier;

use crate::ContractFixture;

/// A TTL no scenario outlives.
const LONG: Duration = Duration::from_secs(3600);
/// A TTL scenarios let run out with time travel.
const SHORT: Duration = Duration::from_secs(10);
/// How far to travel to get past [`SHORT`].
const PAST_SHORT: Duration = Duration::from_secs(11);

// ---------------------------------------------------------------- helpers

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", PoolId::new())
}

fn store(fx: &ContractFixture) -> &dyn ProxyStorage {
    fx.storage.as_ref()
}

async fn new_pool(fx: &ContractFixture, prefix: &str) -> ProxyPool {
    let pool = ProxyPool::new(unique(prefix)).expect("valid pool name");
    let saved = store(fx).save_pool(&pool).await.expect("save_pool");
    assert_eq!(saved.id, pool.id, "save_pool must keep the pool id");
    saved
}

async fn new_consumer(fx: &ContractFixture, prefix: &str) -> ConsumerId {
    store(fx)
        .ensure_consumer(&unique(prefix))
        .await
        .expect("ensure_consumer")
}

/// A builder for the `n`-th test proxy of a pool (distinct host and port).
fn proxy(pool: &ProxyPool, n: u16) -> ProxyBuilder {
    Proxy::builder(
        pool.id,
        format!("10.{}.{}.{}", n / 62_500, (n / 250) % 250, n % 250 + 1),
        8000 + n % 1000,
        ProxyProtocol::Http,
    )
}

async fn save(fx: &ContractFixture, builder: ProxyBuilder) -> Proxy {
    let proxy = builder.build().expect("valid test proxy");
    let saved = store(fx).save_proxy(&proxy).await.expect("save_proxy");
    assert_eq!(saved.id, proxy.id, "save_proxy must keep the proxy id");
    saved
}

/// Saves `n` proxies made by `f(i)` and returns them sorted by id.
async fn save_many(fx: &ContractFixture, n: u16, f: impl Fn(u16) -> ProxyBuilder) -> Vec<Proxy> {
    let mut out = Vec::with_capacity(usize::from(n));
    for i in 0..n {
        out.push(save(fx, f(i)).await);
    }
    out.sort_by_key(|p| p.id);
    out
}

fn request(pool: &ProxyPool, consumer: ConsumerId, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(pool.name.clone(), consumer, ttl)
}

async fn acquire(fx: &ContractFixture, req: &AcquireRequest) -> Option<pharox_domain::Lease> {
    store(fx)
        .acquire(req)
        .await
        .unwrap_or_else(|e| panic!("acquire({req:?}) failed: {e}"))
}

async fn release(fx: &ContractFixture, lease: LeaseId) -> ReleaseOutcome {
    store(fx)
        .release(lease)
        .await
        .unwrap_or_else(|e| panic!("release({lease}) failed: {e}"))
}

async fn stats(fx: &ContractFixture, pool: &ProxyPool) -> pharox_domain::PoolStats {
    store(fx)
        .pool_stats(&pool.name)
        .await
        .unwrap_or_else(|e| panic!("pool_stats({}) failed: {e}", pool.name))
}

/// Acquires until nothing is left (every proxy must have max_concurrency 1),
/// then releases everything; returns which proxies were leased.
async fn lease_all(
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

fn ids(proxies: &[&Proxy]) -> BTreeSet<ProxyId> {
    proxies.iter().map(|p| p.id).collect()
}

#[track_caller]
fn expect_invalid<T: Debug>(result: StorageResult<T>, what: &str) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{what}: expected StorageError::Invalid, got {other:?}"),
    }
}

#[track_caller]
fn expect_not_found<T: Debug>(result: StorageResult<T>, entity: &str, what: &str) {
    match result {
        Err(StorageError::NotFound { entity: e, .. }) if e == entity => {}
        other => panic!("{what}: expected NotFound for a {entity}, got {other:?}"),
    }
}

#[track_caller]
fn expect_not_active<T: Debug>(result: StorageResult<T>, lease: LeaseId, what: &str) {
    match result {
        Err(StorageError::LeaseNotActive(id)) if id == lease => {}
        other => panic!("{what}: expected LeaseNotActive({lease}), got {other:?}"),
    }
}

fn health(
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

async fn apply(fx: &ContractFixture, result: &HealthCheckResult, policy: HealthPolicy) -> Proxy {
    store(fx)
        .apply_health_result(result, &policy)
        .await
        .expect("apply_health_result")
        .expect("apply_health_result on an existing proxy returns it")
}

fn base_time() -> OffsetDateTime {
    pharox_domain::now_micros() - time::Duration::hours(1)
}

// -------------------------------------------------------------- consumers

/// `ensure_consumer` returns the same id for the same name, also when many
/// callers race to create it; blank names are invalid.
pub async fn consumer_round_trip_is_idempotent(fx: &ContractFixture) {
    let name = unique("consumer");
    let first = store(fx)
        .ensure_consumer(&name)
        .await
        .expect("ensure_consumer");
    let second = store(fx)
        .ensure_consumer(&name)
        .await
        .expect("ensure_consumer");
    assert_eq!(first, second, "ensure_consumer twice must give one id");
    let other = new_consumer(fx, "consumer-other").await;
    assert_ne!(first, other, "different names must give different ids");

    let raced = unique("consumer-race");
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let storage = Arc::clone(&fx.storage);
            let barrier = Arc::clone(&barrier);
            let name = raced.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                storage.ensure_consumer(&name).await
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        let id = task
            .await
            .expect("task panicked")
            .expect("concurrent ensure_consumer must not fail");
        seen.insert(id);
    }
    assert_eq!(
        seen.len(),
        1,
        "concurrent ensure_consumer gave ids {seen:?}"
    );
    expect_invalid(
        store(fx).ensure_consumer("   ").await,
        "blank consumer name",
    );
}

// ---------------------------------------------------------------- acquire

/// Acquire leases an active proxy: the lease carries the proxy snapshot
/// (counting this lease), the pool's id and name, the consumer, status
/// active, and `expires_at = acquired_at + ttl`.
pub async fn acquire_returns_an_active_lease(fx: &ContractFixture) {
    let pool = new_pool(fx, "acquire").await;
    let consumer = new_consumer(fx, "acquire").await;
    let saved = save(
        fx,
        proxy(&pool, 1)
            .credentials("user", "p@ss")
            .country("AR")
            .max_concurrency(2),
    )
    .await;
    let ttl = Duration::from_secs(90);
    let lease = acquire(fx, &request(&pool, consumer, ttl))
        .await
        .expect("an active proxy with capacity must be leased");
    assert_eq!(lease.proxy_id, saved.id);
    assert_eq!(lease.pool_id, pool.id);
    assert_eq!(&*lease.pool_name, pool.name.as_str());
    assert_eq!(lease.consumer_id, consumer);
    assert_eq!(lease.status, LeaseStatus::Active);
    assert_eq!(lease.released_at, None);
    assert_eq!(
        lease.expires_at - lease.acquired_at,
        time::Duration::seconds(90),
        "expires_at must be acquired_at + ttl"
    );
    assert_eq!(lease.proxy.id, saved.id, "snapshot of the leased proxy");
    assert_eq!(lease.proxy.connect_url(), saved.connect_url());
    assert_eq!(lease.proxy.country.as_deref(), Some("AR"));
    assert_eq!(lease.proxy.status, ProxyStatus::Active);
    assert_eq!(
        lease.proxy.current_leases, 1,
        "the snapshot counts the lease itself"
    );
    let got = store(fx).get_lease(lease.id).await.expect("get_lease");
    assert_eq!(got.id, lease.id);
    assert_eq!(got.status, LeaseStatus::Active);
    assert_eq!(got.expires_at, lease.expires_at);
    assert_eq!(got.acquired_at, lease.acquired_at);
    let stored = store(fx).get_proxy(saved.id).await.expect("get_proxy");
    assert_eq!(stored.current_leases, 1, "current_leases counts the lease");
}

/// Acquire on a pool that does not exist gives `Ok(None)`.
pub async fn acquire_on_unknown_pool_returns_none(fx: &ContractFixture) {
    let consumer = new_consumer(fx, "unknown-pool").await;
    let req = AcquireRequest::new(unique("no-such-pool"), consumer, LONG);
    assert!(
        acquire(fx, &req).await.is_none(),
        "acquire on an unknown pool must be Ok(None)"
    );
    let found = store(fx)
        .find_available(
            &req.pool_name,
            &ProxyFilter::new(),
            Selector::FirstAvailable,
        )
        .await
        .expect("find_available on an unknown pool");
    assert!(found.is_none());
}

/// Acquire for a consumer id that was never created fails with not-found
/// and leases nothing.
pub async fn acquire_with_unknown_consumer_is_not_found(fx: &ContractFixture) {
    let pool = new_pool(fx, "unknown-consumer").await;
    save(fx, proxy(&pool, 1)).await;
    let result = store(fx)
        .acquire(&request(&pool, ConsumerId::new(), LONG))
        .await;
    expect_not_found(result, "consumer", "acquire with an unknown consumer");
    assert_eq!(stats(fx, &pool).await.total_leases, 0, "nothing leased");
}

/// Blank pool name, zero TTL, over-long TTL and an invalid filter are
/// rejected as invalid, and nothing is leased.
pub async fn invalid_acquire_request_changes_nothing(fx: &ContractFixture) {
    let pool = new_pool(fx, "invalid-acquire").await;
    let consumer = new_consumer(fx, "invalid-acquire").await;
    save(fx, proxy(&pool, 1)).await;
    let good = request(&pool, consumer, LONG);
    let cases = [
        ("blank pool name", AcquireRequest::new("  ", consumer, LONG)),
        ("zero ttl", request(&pool, consumer, Duration::ZERO)),
        (
            "ttl over 30 days",
            request(
                &pool,
                consumer,
                pharox_domain::MAX_LEASE_TTL + Duration::from_secs(1),
            ),
        ),
        (
            "blank country in filter",
            good.clone().with_filter(ProxyFilter::new().country(" ")),
        ),
        (
            "radius without point",
            good.clone()
                .with_filter(ProxyFilter::new().any_of([ProxyFilter {
                    radius_km: Some(5.0),
                    ..ProxyFilter::new()
                }])),
        ),
        (
            "invalid request for an unknown consumer",
            request(&pool, ConsumerId::new(), Duration::ZERO),
        ),
    ];
    for (what, req) in cases {
        expect_invalid(store(fx).acquire(&req).await, what);
    }
    let s = stats(fx, &pool).await;
    assert_eq!(s.total_leases, 0, "rejected requests must lease nothing");
    assert_eq!(s.available_proxies, 1);
}

// ---------------------------------------------------------------- filters

async fn filter_pool(fx: &ContractFixture, prefix: &str) -> (ProxyPool, ConsumerId, [Proxy; 3]) {
    let pool = new_pool(fx, prefix).await;
    let consumer = new_consumer(fx, prefix).await;
    let a = save(
        fx,
        proxy(&pool, 1)
            .source("feed-a")
            .country("AR")
            .city("Rosario")
            .isp("NetA")
            .asn(100)
            .max_concurrency(1),
    )
    .await;
    let b = save(
        fx,
        proxy(&pool, 2)
            .source("feed-b")
            .country("DE")
            .city("Berlin")
            .isp("NetB")
            .asn(200)
            .max_concurrency(1),
    )
    .await;
    let c = save(
        fx,
        proxy(&pool, 3)
            .source("feed-a")
            .country("DE")
            .city("Munich")
            .isp("NetA")
            .asn(300)
            .max_concurrency(1),
    )
    .await;
    (pool, consumer, [a, b, c])
}

async fn check_filters(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    cases: Vec<(&str, ProxyFilter, BTreeSet<ProxyId>)>,
) {
    for (what, filter, want) in cases {
        for selector in Selector::ALL {
            let got = lease_all(fx, pool, consumer, &filter, selector).await;
            assert_eq!(got, want, "filter {what} with selector {selector}");
        }
        let peek = store(fx)
            .find_available(&pool.name, &filter, Selector::FirstAvailable)
            .await
            .expect("find_available");
        assert_eq!(
            peek.map(|p| p.id),
            want.first().copied(),
            "find_available with filter {what}"
        );
    }
}

/// Scalar filters (source, country, city, isp, asn, and combinations) lease
/// exactly the matching proxies, with every selector. Matching is exact and
/// case-sensitive.
pub async fn scalar_filters_select_exactly_the_matches(fx: &ContractFixture) {
    let (pool, consumer, [a, b, c]) = filter_pool(fx, "scalar").await;
    let cases = vec![
        ("empty", ProxyFilter::new(), ids(&[&a, &b, &c])),
        (
            "source",
            ProxyFilter::new().source("feed-a"),
            ids(&[&a, &c]),
        ),
        ("country", ProxyFilter::new().country("AR"), ids(&[&a])),
        (
            "country lower-case",
            ProxyFilter::new().country("ar"),
            ids(&[]),
        ),
        ("city", ProxyFilter::new().city("Munich"), ids(&[&c])),
        ("isp", ProxyFilter::new().isp("NetB"), ids(&[&b])),
        ("asn", ProxyFilter::new().asn(300), ids(&[&c])),
        (
            "country and isp",
            ProxyFilter::new().country("DE").isp("NetA"),
            ids(&[&c]),
        ),
        ("no match", ProxyFilter::new().country("FR"), ids(&[])),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}

/// any_of / all_of / none_of compose, and Rust predicates work at the root
/// and nested (also inside none_of).
pub async fn composite_filters_with_predicates(fx: &ContractFixture) {
    let (pool, consumer, [a, b, c]) = filter_pool(fx, "composite").await;
    let b_port = b.port;
    let cases = vec![
        (
            "any_of",
            ProxyFilter::new().any_of([
                ProxyFilter::new().country("AR"),
                ProxyFilter::new().city("Munich"),
            ]),
            ids(&[&a, &c]),
        ),
        (
            "all_of",
            ProxyFilter::new().all_of([
                ProxyFilter::new().country("DE"),
                ProxyFilter::new().asn(300),
            ]),
            ids(&[&c]),
        ),
        (
            "none_of",
            ProxyFilter::new().none_of([ProxyFilter::new().isp("NetA")]),
            ids(&[&b]),
        ),
        (
            "nested",
            ProxyFilter::new().source("feed-a").any_of([
                ProxyFilter::new().all_of([ProxyFilter::new().country("DE")]),
                ProxyFilter::new().asn(200),
            ]),
            ids(&[&c]),
        ),
        (
            "root predicate",
            ProxyFilter::new().predicate(move |p| p.port == b_port),
            ids(&[&b]),
        ),
        (
            "predicate inside none_of",
            ProxyFilter::new().none_of([ProxyFilter::new().predicate(|p| p.asn == Some(100))]),
            ids(&[&b, &c]),
        ),
        (
            "predicate inside any_of",
            ProxyFilter::new().any_of([
                ProxyFilter::new().predicate(|p| p.city.as_deref() == Some("Rosario")),
                ProxyFilter::new().isp("NetB"),
            ]),
            ids(&[&a, &b]),
        ),
        (
            "predicate and scalar",
            ProxyFilter::new()
                .country("DE")
                .predicate(|p| p.asn.is_some_and(|asn| asn > 250)),
            ids(&[&c]),
        ),
        (
            "predicate rejecting all",
            ProxyFilter::new().predicate(|_| false),
            ids(&[]),
        ),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}

/// Geo filters: exact point (within 1e-6 degrees) and radius by haversine
/// distance; proxies without coordinates never match.
pub async fn geo_filters_exact_and_radius(fx: &ContractFixture) {
    let pool = new_pool(fx, "geo").await;
    let consumer = new_consumer(fx, "geo").await;
    let paris = save(
        fx,
        proxy(&pool, 1).location(48.8566, 2.3522).max_concurrency(1),
    )
    .await;
    let london = save(
        fx,
        proxy(&pool, 2)
            .location(51.5074, -0.1278)
            .max_concurrency(1),
    )
    .await;
    let baires = save(
        fx,
        proxy(&pool, 3)
            .location(-34.6037, -58.3816)
            .max_concurrency(1),
    )
    .await;
    let _nowhere = save(fx, proxy(&pool, 4).max_concurrency(1)).await;
    let cases = vec![
        (
            "exact Paris",
            ProxyFilter::new().at(48.8566, 2.3522),
            ids(&[&paris]),
        ),
        (
            "exact, off by 1e-4 degrees",
            ProxyFilter::new().at(48.8567, 2.3522),
            ids(&[]),
        ),
        (
            "400 km of Paris (London is ~344 km)",
            ProxyFilter::new().near(48.8566, 2.3522, 400.0),
            ids(&[&paris, &london]),
        ),
        (
            "300 km of Paris",
            ProxyFilter::new().near(48.8566, 2.3522, 300.0),
            ids(&[&paris]),
        ),
        (
            "50 km of Buenos Aires",
            ProxyFilter::new().near(-34.6, -58.4, 50.0),
            ids(&[&baires]),
        ),
        (
            "whole planet",
            ProxyFilter::new().near(0.0, 0.0, 20_100.0),
            ids(&[&paris, &london, &baires]),
        ),
        (
            "none_of near Paris",
            ProxyFilter::new()
                .near(0.0, 0.0, 20_100.0)
                .none_of([ProxyFilter::new().near(48.8566, 2.3522, 400.0)]),
            ids(&[&baires]),
        ),
    ];
    check_filters(fx, &pool, consumer, cases).await;
}

// -------------------------------------------------------------- selection

/// Inactive, slow and banned proxies are never leased, by any selector.
pub async fn only_active_proxies_are_leased(fx: &ContractFixture) {
    let pool = new_pool(fx, "statuses").await;
    let consumer = new_consumer(fx, "statuses").await;
    for (i, status) in [
        ProxyStatus::Inactive,
        ProxyStatus::Slow,
        ProxyStatus::Banned,
    ]
    .into_iter()
    .enumerate()
    {
        save(fx, proxy(&pool, i as u16).status(status)).await;
    }
    for selector in Selector::ALL {
        let req = request(&pool, consumer, LONG).with_selector(selector);
        assert!(
            acquire(fx, &req).await.is_none(),
            "{selector} leased a proxy that is not active"
        );
        let peek = store(fx)
            .find_available(&pool.name, &ProxyFilter::new(), selector)
            .await
            .expect("find_available");
        assert!(
            peek.is_none(),
            "{selector}: find_available offered {peek:?}"
        );
    }
    let active = save(fx, proxy(&pool, 9)).await;
    for selector in Selector::ALL {
        let req = request(&pool, consumer, LONG).with_selector(selector);
        let lease = acquire(fx, &req).await.expect("the active proxy");
        assert_eq!(lease.proxy_id, active.id, "{selector}");
        assert!(release(fx, lease.id).await.was_released());
    }
}

/// `max_concurrency` caps the leases a proxy carries; `None` is unlimited.
pub async fn max_concurrency_is_enforced(fx: &ContractFixture) {
    let pool = new_pool(fx, "concurrency").await;
    let consumer = new_consumer(fx, "concurrency").await;
    let limited = save(fx, proxy(&pool, 1).max_concurrency(2)).await;
    let req = request(&pool, consumer, LONG);
    for n in 1..=2 {
        let lease = acquire(fx, &req).await.expect("below max_concurrency");
        assert_eq!(lease.proxy_id, limited.id);
        assert_eq!(lease.proxy.current_leases, n);
    }
    assert!(
        acquire(fx, &req).await.is_none(),
        "a third lease on a proxy with max_concurrency 2"
    );

    let open = new_pool(fx, "unlimited").await;
    let unlimited = save(fx, proxy(&open, 1)).await;
    let req = request(&open, consumer, LONG);
    for n in 1..=50 {
        let lease = acquire(fx, &req)
            .await
            .unwrap_or_else(|| panic!("lease {n} of an unlimited proxy refused"));
        assert_eq!(lease.proxy_id, unlimited.id);
    }
    let stored = store(fx).get_proxy(unlimited.id).await.expect("get_proxy");
    assert_eq!(stored.current_leases, 50);
    let s = stats(fx, &open).await;
    assert_eq!((s.total_leases, s.available_proxies), (50, 1));
}

/// least_used picks the fewest current leases, then never-checked /
/// oldest-checked, then smallest id.
pub async fn least_used_prefers_the_lowest_load(fx: &ContractFixture) {
    let pool = new_pool(fx, "least-used").await;
    let consumer = new_consumer(fx, "least-used").await;
    let p = save_many(fx, 3, |i| proxy(&pool, i).city(format!("c{i}"))).await;
    let by_city = |i: usize| {
        request(&pool, consumer, LONG)
            .with_filter(ProxyFilter::new().city(p[i].city.clone().expect("city set")))
    };
    // Loads: p0 = 2, p1 = 1, p2 = 0.
    for i in [0, 0, 1] {
        acquire(fx, &by_city(i)).await.expect("filtered acquire");
    }
    let req = request(&pool, consumer, LONG).with_selector(Selector::LeastUsed);
    let first = acquire(fx, &req).await.expect("least_used");
    assert_eq!(first.proxy_id, p[2].id, "the proxy without leases");
    // Now p1 = 1, p2 = 1: a tie on load, neither checked: smallest id.
    let second = acquire(fx, &req).await.expect("least_used");
    assert_eq!(second.proxy_id, p[1].id, "tie broken by smallest id");
    // p0 = 2, p1 = 2, p2 = 1.
    let third = acquire(fx, &req).await.expect("least_used");
    assert_eq!(third.proxy_id, p[2].id);
    // All at 2; p0 checked long ago, p1 recently, p2 never: p2 first.
    let t = base_time();
    apply(
        fx,
        &health(&p[0], ProxyStatus::Active, Some(10.0), t),
        HealthPolicy::default(),
    )
    .await;
    apply(
        fx,
        &health(
            &p[1],
            ProxyStatus::Active,
            Some(10.0),
            t + time::Duration::minutes(5),
        ),
        HealthPolicy::default(),
    )
    .await;
    let fourth = acquire(fx, &req).await.expect("least_used");
    assert_eq!(fourth.proxy_id, p[2].id, "never checked comes first");
    // p2 = 3: among p0 and p1 (2 each), the oldest check wins.
    let fifth = acquire(fx, &req).await.expect("least_used");
    assert_eq!(fifth.proxy_id, p[0].id, "oldest checked_at comes next");
}

/// round_robin hands proxies out in id order and wraps; skipped proxies
/// (no capacity, not matching) do not stop the cycle; the cursor survives
/// releases.
pub async fn round_robin_cycles_in_id_order(fx: &ContractFixture) {
    let pool = new_pool(fx, "round-robin").await;
    let consumer = new_consumer(fx, "round-robin").await;
    let p = save_many(fx, 3, |i| proxy(&pool, i)).await;
    let req = request(&pool, consumer, LONG).with_selector(Selector::RoundRobin);
    let mut got = Vec::new();
    for _ in 0..7 {
        let lease = acquire(fx, &req).await.expect("round_robin");
        got.push(lease.proxy_id);
        assert!(release(fx, lease.id).await.was_released());
    }
    let want: Vec<ProxyId> = [0, 1, 2, 0, 1, 2, 0].iter().map(|&i| p[i].id).collect();
    assert_eq!(
        got,
        want,
        "round_robin order (ids sorted: {:?})",
        ids_of(&p)
    );
    // The last handed out was p0; a filter excluding p1 makes p2 next.
    let skip = req
        .clone()
        .with_filter(ProxyFilter::new().none_of([ProxyFilter::new().predicate({
            let p1 = p[1].id;
            move |x| x.id == p1
        })]));
    let lease = acquire(fx, &skip).await.expect("round_robin with filter");
    assert_eq!(lease.proxy_id, p[2].id, "next matching after the cursor");
    let lease = acquire(fx, &req).await.expect("round_robin");
    assert_eq!(lease.proxy_id, p[0].id, "wraps to the smallest id");
}

fn ids_of(proxies: &[Proxy]) -> Vec<ProxyId> {
    proxies.iter().map(|p| p.id).collect()
}

/// random leases only matching proxies, and (over many draws) more than one.
pub async fn random_selector_leases_a_matching_proxy(fx: &ContractFixture) {
    let pool = new_pool(fx, "random").await;
    let consumer = new_consumer(fx, "random").await;
    let p = save_many(fx, 5, |i| {
        proxy(&pool, i).country(if i % 2 == 0 { "AR" } else { "UY" })
    })
    .await;
    let want: BTreeSet<ProxyId> = p
        .iter()
        .filter(|x| x.country.as_deref() == Some("UY"))
        .map(|x| x.id)
        .collect();
    let req = request(&pool, consumer, LONG)
        .with_selector(Selector::Random)
        .with_filter(ProxyFilter::new().country("UY"));
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let lease = acquire(fx, &req).await.expect("random");
        assert!(want.contains(&lease.proxy_id), "random leased a non-match");
        seen.insert(lease.proxy_id);
        assert!(release(fx, lease.id).await.was_released());
    }
    assert_eq!(seen, want, "40 random draws among 2 should see both");
    let req = request(&pool, consumer, LONG).with_selector(Selector::Random);
    let lease = acquire(fx, &req).await.expect("random without a filter");
    assert!(p.iter().any(|x| x.id == lease.proxy_id));
}

/// lowest_latency orders by the latest reachable latency (set through
/// health results); never-measured proxies come last; ties by id.
pub async fn lowest_latency_prefers_the_fastest(fx: &ContractFixture) {
    let pool = new_pool(fx, "latency").await;
    let consumer = new_consumer(fx, "latency").await;
    let p = save_many(fx, 5, |i| proxy(&pool, i).max_concurrency(1)).await;
    let t = base_time();
    let policy = HealthPolicy::default();
    // p0 300 ms, p1 50 ms (after having been 500), p2 never, p3 120, p4 120.
    for (i, ms) in [(0, 300.0), (1, 500.0), (1, 50.0), (3, 120.0), (4, 120.0)] {
        apply(fx, &health(&p[i], ProxyStatus::Active, Some(ms), t), policy).await;
    }
    let req = request(&pool, consumer, LONG).with_selector(Selector::LowestLatency);
    let peek = store(fx)
        .find_available(&pool.name, &ProxyFilter::new(), Selector::LowestLatency)
        .await
        .expect("find_available")
        .expect("a proxy");
    assert_eq!(peek.id, p[1].id);
    let mut got = Vec::new();
    while let Some(lease) = acquire(fx, &req).await {
        got.push(lease.proxy_id);
        assert!(got.len() <= 5, "more leases than proxies");
    }
    let want: Vec<ProxyId> = [1, 3, 4, 0, 2].iter().map(|&i| p[i].id).collect();
    assert_eq!(got, want, "lowest_latency order");
}

// ----------------------------------------------------------------- leases

/// Releasing a lease gives the capacity back, reports what was released,
/// and the lease then reads as released.
pub async fn release_restores_availability(fx: &ContractFixture) {
    let pool = new_pool(fx, "release").await;
    let consumer = new_consumer(fx, "release").await;
    let saved = save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    let req = request(&pool, consumer, LONG);
    for round in 0..3 {
        let lease = acquire(fx, &req)
            .await
            .unwrap_or_else(|| panic!("round {round}: the released proxy must be free"));
        assert!(acquire(fx, &req).await.is_none(), "the only slot is taken");
        match release(fx, lease.id).await {
            ReleaseOutcome::Released(r) => {
                assert_eq!(r.lease_id, lease.id);
                assert_eq!(r.proxy_id, saved.id);
                assert_eq!(r.pool_id, pool.id);
                assert_eq!(r.consumer_id, consumer);
                assert_eq!(r.acquired_at, lease.acquired_at);
                assert!(r.released_at >= lease.acquired_at);
            }
            other => panic!("first release gave {other:?}"),
        }
        let got = store(fx).get_lease(lease.id).await.expect("get_lease");
        assert_eq!(got.status, LeaseStatus::Released);
        assert!(got.released_at.is_some());
        let p = store(fx).get_proxy(saved.id).await.expect("get_proxy");
        assert_eq!(p.current_leases, 0);
    }
}

/// A second release of the same lease changes nothing and says so.
pub async fn release_twice_is_already_released(fx: &ContractFixture) {
    let pool = new_pool(fx, "release-twice").await;
    let consumer = new_consumer(fx, "release-twice").await;
    save(fx, proxy(&pool, 1).max_concurrency(2)).await;
    let req = request(&pool, consumer, LONG);
    let lease = acquire(fx, &req).await.expect("acquire");
    let other = acquire(fx, &req).await.expect("second slot");
    let first = release(fx, lease.id).await;
    let ReleaseOutcome::Released(r) = first else {
        panic!("first release gave {first:?}");
    };
    match release(fx, lease.id).await {
        ReleaseOutcome::AlreadyReleased {
            lease_id,
            released_at,
        } => {
            assert_eq!(lease_id, lease.id);
            assert_eq!(released_at, Some(r.released_at));
        }
        other => panic!("second release gave {other:?}"),
    }
    let s = stats(fx, &pool).await;
    assert_eq!(
        s.total_leases, 1,
        "the second release must not free the other lease"
    );
    assert!(release(fx, other.id).await.was_released());
}

/// Releasing, renewing or reading a lease that never existed is not-found.
pub async fn unknown_lease_is_not_found(fx: &ContractFixture) {
    let id = LeaseId::new();
    expect_not_found(store(fx).release(id).await, "lease", "release unknown");
    expect_not_found(store(fx).renew(id, LONG).await, "lease", "renew unknown");
    expect_not_found(store(fx).get_lease(id).await, "lease", "get_lease unknown");
}

/// Renew moves `expires_at` to now + ttl (measured after time travel) and
/// returns the active lease; an invalid TTL is rejected.
pub async fn renew_extends_an_active_lease(fx: &ContractFixture) {
    let pool = new_pool(fx, "renew").await;
    let consumer = new_consumer(fx, "renew").await;
    save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    let lease = acquire(fx, &request(&pool, consumer, Duration::from_secs(60)))
        .await
        .expect("acquire");
    fx.time.advance(Duration::from_secs(30)).await;
    expect_invalid(
        store(fx).renew(lease.id, Duration::ZERO).await,
        "renew ttl 0",
    );
    let renewed = store(fx)
        .renew(lease.id, Duration::from_secs(60))
        .await
        .expect("renew of an active lease");
    assert_eq!(renewed.id, lease.id);
    assert_eq!(renewed.status, LeaseStatus::Active);
    assert_eq!(renewed.proxy_id, lease.proxy_id);
    // acquired at t0, renewed at t0 + 30 s for 60 s: expires t0 + 90 s.
    let span = renewed.expires_at - renewed.acquired_at;
    assert!(
        span >= time::Duration::seconds(90) && span < time::Duration::seconds(95),
        "renew must set expires_at = now + ttl; got acquired_at + {span}"
    );
    let got = store(fx).get_lease(lease.id).await.expect("get_lease");
    assert_eq!(got.expires_at, renewed.expires_at, "renewal is stored");
    // Past the original expiry but before the renewed one, it still holds.
    fx.time.advance(Duration::from_secs(45)).await;
    let req = request(&pool, consumer, LONG);
    assert!(
        acquire(fx, &req).await.is_none(),
        "a renewed lease must keep holding its proxy past the old expiry"
    );
    assert_eq!(store(fx).cleanup_expired().await.expect("cleanup"), 0);
    assert!(release(fx, lease.id).await.was_released());
}

/// Renewing a released lease, or one past its expiry, is LeaseNotActive.
pub async fn renew_of_an_ended_lease_is_not_active(fx: &ContractFixture) {
    let pool = new_pool(fx, "renew-ended").await;
    let consumer = new_consumer(fx, "renew-ended").await;
    save(fx, proxy(&pool, 1)).await;
    let released = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("acquire");
    assert!(release(fx, released.id).await.was_released());
    expect_not_active(
        store(fx).renew(released.id, LONG).await,
        released.id,
        "renew after release",
    );
    let expiring = acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("acquire");
    fx.time.advance(PAST_SHORT).await;
    expect_not_active(
        store(fx).renew(expiring.id, LONG).await,
        expiring.id,
        "renew after expiry",
    );
}

/// find_available shows what acquire would pick without leasing it (and
/// without moving the round-robin cursor).
pub async fn find_available_peeks_without_leasing(fx: &ContractFixture) {
    let pool = new_pool(fx, "peek").await;
    let consumer = new_consumer(fx, "peek").await;
    let p = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    for selector in [Selector::FirstAvailable, Selector::RoundRobin] {
        for _ in 0..3 {
            let peek = store(fx)
                .find_available(&pool.name, &ProxyFilter::new(), selector)
                .await
                .expect("find_available")
                .expect("a proxy");
            assert_eq!(
                peek.id, p[0].id,
                "{selector}: peeking must not lease or advance"
            );
            assert_eq!(peek.current_leases, 0);
        }
    }
    assert_eq!(stats(fx, &pool).await.total_leases, 0, "peeking leased");
    let req = request(&pool, consumer, LONG).with_selector(Selector::RoundRobin);
    let lease = acquire(fx, &req).await.expect("acquire");
    assert_eq!(lease.proxy_id, p[0].id, "acquire picks what was peeked");
    let peek = store(fx)
        .find_available(&pool.name, &ProxyFilter::new(), Selector::FirstAvailable)
        .await
        .expect("find_available");
    assert_eq!(peek.map(|x| x.id), Some(p[1].id));
    let none = store(fx)
        .find_available(
            &pool.name,
            &ProxyFilter::new().country("XX"),
            Selector::Random,
        )
        .await
        .expect("find_available");
    assert!(none.is_none());
    expect_invalid(
        store(fx)
            .find_available(&pool.name, &ProxyFilter::new().city(""), Selector::Random)
            .await,
        "find_available with an invalid filter",
    );
}

/// A lease past its expiry holds no capacity: acquire succeeds without any
/// cleanup call, and the old lease then reads as released.
pub async fn expired_leases_stop_blocking_capacity(fx: &ContractFixture) {
    let pool = new_pool(fx, "expiry").await;
    let consumer = new_consumer(fx, "expiry").await;
    let only = save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    let old = acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("acquire");
    let req = request(&pool, consumer, LONG);
    assert!(acquire(fx, &req).await.is_none(), "the slot is held");
    fx.time.advance(PAST_SHORT).await;
    let new = acquire(fx, &req)
        .await
        .expect("an expired lease must not block the proxy");
    assert_eq!(new.proxy_id, only.id);
    assert_eq!(
        new.proxy.current_leases, 1,
        "the expired lease no longer counts"
    );
    let old_now = store(fx).get_lease(old.id).await.expect("get_lease");
    assert_eq!(
        old_now.status,
        LeaseStatus::Released,
        "reclaimed on acquire"
    );
    assert!(old_now.released_at.is_some());
    match release(fx, old.id).await {
        ReleaseOutcome::AlreadyReleased { lease_id, .. } => assert_eq!(lease_id, old.id),
        other => panic!("release of a reclaimed lease gave {other:?}"),
    }
    let s = stats(fx, &pool).await;
    assert_eq!((s.total_leases, s.leased_proxies), (1, 1));
    assert_eq!(
        store(fx)
            .get_proxy(only.id)
            .await
            .expect("get")
            .current_leases,
        1
    );
}

/// cleanup_expired releases exactly the leases past their expiry (not
/// released ones, not unexpired ones) and returns how many.
pub async fn cleanup_expired_counts_only_expired_leases(fx: &ContractFixture) {
    let pool = new_pool(fx, "cleanup").await;
    let consumer = new_consumer(fx, "cleanup").await;
    save_many(fx, 4, |i| proxy(&pool, i).max_concurrency(1)).await;
    let short = request(&pool, consumer, SHORT);
    let a = acquire(fx, &short).await.expect("a");
    let b = acquire(fx, &short).await.expect("b");
    let done = acquire(fx, &short).await.expect("done");
    assert!(release(fx, done.id).await.was_released());
    let long = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("long");
    fx.time.advance(PAST_SHORT).await;
    assert_eq!(
        store(fx).cleanup_expired().await.expect("cleanup_expired"),
        2,
        "two leases expired (one released, one still valid)"
    );
    assert_eq!(store(fx).cleanup_expired().await.expect("again"), 0);
    for id in [a.id, b.id, done.id] {
        let lease = store(fx).get_lease(id).await.expect("get_lease");
        assert_eq!(lease.status, LeaseStatus::Released, "lease {id}");
    }
    let long_now = store(fx).get_lease(long.id).await.expect("get_lease");
    assert_eq!(long_now.status, LeaseStatus::Active);
    let s = stats(fx, &pool).await;
    assert_eq!((s.total_leases, s.available_proxies), (1, 3));
}

// ----------------------------------------------------------------- health

/// apply_health_result updates status, checked_at and the health summary,
/// appends records (newest first, limited) and rejects invalid results.
pub async fn health_result_updates_proxy_and_history(fx: &ContractFixture) {
    let pool = new_pool(fx, "health").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let t = base_time();
    let policy = HealthPolicy::immediate();
    assert!(
        store(fx)
            .last_health_result(p.id)
            .await
            .expect("last")
            .is_none(),
        "no records yet"
    );

    let r1 = health(&p, ProxyStatus::Active, Some(120.0), t);
    let after = apply(fx, &r1, policy).await;
    assert_eq!(after.status, ProxyStatus::Active);
    assert_eq!(after.checked_at, Some(t));
    assert_eq!(after.health.last_latency_ms, Some(120.0));
    assert_eq!(after.health.last_http_status, Some(204));
    assert_eq!(after.health.consecutive_failures, 0);

    let t2 = t + time::Duration::seconds(60);
    let r2 = health(&p, ProxyStatus::Inactive, None, t2);
    let after = apply(fx, &r2, policy).await;
    assert_eq!(after.status, ProxyStatus::Inactive);
    assert_eq!(after.checked_at, Some(t2));
    assert_eq!(after.health.consecutive_failures, 1);
    assert_eq!(
        after.health.last_error.as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        after.health.last_latency_ms,
        Some(120.0),
        "kept from the success"
    );
    assert_eq!(
        after.health.last_http_status,
        Some(204),
        "kept from the success"
    );

    let t3 = t + time::Duration::seconds(120);
    let r3 = health(&p, ProxyStatus::Slow, Some(2500.0), t3);
    let after = apply(fx, &r3, policy).await;
    assert_eq!(after.status, ProxyStatus::Slow);
    assert_eq!(after.health.consecutive_failures, 0);
    assert_eq!(after.health.last_error, None, "a success clears the error");
    assert_eq!(after.health.last_latency_ms, Some(2500.0));
    let stored = store(fx).get_proxy(p.id).await.expect("get_proxy");
    assert_eq!(stored.status, ProxyStatus::Slow);
    assert_eq!(stored.health, after.health);
    assert_eq!(stored.checked_at, Some(t3));

    let last = store(fx)
        .last_health_result(p.id)
        .await
        .expect("last_health_result")
        .expect("a record");
    assert_eq!(last.checked_at, t3);
    assert_eq!(
        (last.status_before, last.status_after),
        (ProxyStatus::Inactive, ProxyStatus::Slow)
    );
    assert_eq!(last.latency_ms, Some(2500.0));
    assert!(last.reachable);
    let two = store(fx)
        .list_health_records(p.id, 2)
        .await
        .expect("list_health_records");
    let times: Vec<OffsetDateTime> = two.iter().map(|r| r.checked_at).collect();
    assert_eq!(times, vec![t3, t2], "newest first, limited to 2");
    assert_eq!(
        (two[1].status_before, two[1].status_after),
        (ProxyStatus::Active, ProxyStatus::Inactive)
    );
    assert_eq!(two[1].error.as_deref(), Some("connection refused"));
    assert_eq!(two[1].http_status, None);
    let all = store(fx)
        .list_health_records(p.id, 10)
        .await
        .expect("list_health_records");
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].checked_at, t);

    let mut bad = health(&p, ProxyStatus::Active, Some(1.0), t3);
    bad.attempts = 0;
    expect_invalid(
        store(fx).apply_health_result(&bad, &policy).await,
        "health result with 0 attempts",
    );
    let mut bad = health(&p, ProxyStatus::Active, Some(f64::NAN), t3);
    bad.reachable = true;
    expect_invalid(
        store(fx).apply_health_result(&bad, &policy).await,
        "health result with NaN latency",
    );
    let n = store(fx)
        .list_health_records(p.id, 10)
        .await
        .expect("list")
        .len();
    assert_eq!(n, 3, "rejected results must not be recorded");
}

/// HealthPolicy is applied: inactive only after N consecutive failures, a
/// success resets the streak, banned is never lifted nor changed.
pub async fn health_policy_streak_and_ban(fx: &ContractFixture) {
    let pool = new_pool(fx, "policy").await;
    let consumer = new_consumer(fx, "policy").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let policy = HealthPolicy::new(3).expect("valid policy");
    let t = base_time();
    let at = |s: i64| t + time::Duration::seconds(s);
    for (i, want) in [ProxyStatus::Active, ProxyStatus::Active]
        .into_iter()
        .enumerate()
    {
        let after = apply(
            fx,
            &health(&p, ProxyStatus::Inactive, None, at(i as i64)),
            policy,
        )
        .await;
        assert_eq!(after.status, want, "failure {} of 3", i + 1);
        assert_eq!(after.health.consecutive_failures, i as u32 + 1);
    }
    let ok = apply(
        fx,
        &health(&p, ProxyStatus::Active, Some(20.0), at(10)),
        policy,
    )
    .await;
    assert_eq!(
        ok.health.consecutive_failures, 0,
        "a success resets the streak"
    );
    for i in 0..3 {
        let after = apply(
            fx,
            &health(&p, ProxyStatus::Inactive, None, at(20 + i)),
            policy,
        )
        .await;
        let want = if i < 2 {
            ProxyStatus::Active
        } else {
            ProxyStatus::Inactive
        };
        assert_eq!(after.status, want, "failure {} after the reset", i + 1);
    }
    assert!(
        acquire(fx, &request(&pool, consumer, LONG)).await.is_none(),
        "an inactive proxy must not be leased"
    );
    let back = apply(
        fx,
        &health(&p, ProxyStatus::Active, Some(30.0), at(40)),
        policy,
    )
    .await;
    assert_eq!(back.status, ProxyStatus::Active, "a success revives it");
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("revived proxy is leased");
    assert!(release(fx, lease.id).await.was_released());

    let banned = save(fx, proxy(&pool, 2).status(ProxyStatus::Banned)).await;
    for (s, status) in [
        ProxyStatus::Active,
        ProxyStatus::Inactive,
        ProxyStatus::Slow,
    ]
    .into_iter()
    .enumerate()
    {
        let after = apply(
            fx,
            &health(&banned, status, Some(5.0), at(50 + s as i64)),
            HealthPolicy::immediate(),
        )
        .await;
        assert_eq!(
            after.status,
            ProxyStatus::Banned,
            "a {status} result lifted a ban"
        );
    }
    let rec = store(fx)
        .last_health_result(banned.id)
        .await
        .expect("last")
        .expect("record");
    assert_eq!(
        (rec.status_before, rec.status_after),
        (ProxyStatus::Banned, ProxyStatus::Banned)
    );
}

/// A result for a proxy that does not exist gives `Ok(None)`.
pub async fn health_result_for_unknown_proxy_is_none(fx: &ContractFixture) {
    let pool = new_pool(fx, "health-unknown").await;
    let ghost = proxy(&pool, 1).build().expect("valid");
    let result = health(&ghost, ProxyStatus::Active, Some(1.0), base_time());
    let got = store(fx)
        .apply_health_result(&result, &HealthPolicy::default())
        .await
        .expect("apply_health_result on an unknown proxy");
    assert!(got.is_none(), "unknown proxy must give None, got {got:?}");
    let last = store(fx).last_health_result(ghost.id).await.expect("last");
    assert!(last.is_none());
}

// ------------------------------------------------------------------ stats

/// pool_stats counts proxies, active, available, leased and leases.
pub async fn pool_stats_count_occupancy(fx: &ContractFixture) {
    let pool = new_pool(fx, "stats").await;
    let consumer = new_consumer(fx, "stats").await;
    save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    save(fx, proxy(&pool, 9).status(ProxyStatus::Inactive)).await;
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("acquire");
    let s = stats(fx, &pool).await;
    assert_eq!(s.pool_id, pool.id);
    assert_eq!(s.pool_name, pool.name);
    assert_eq!(
        (
            s.total_proxies,
            s.active_proxies,
            s.available_proxies,
            s.leased_proxies,
            s.total_leases
        ),
        (3, 2, 1, 1, 1),
        "(total, active, available, leased, leases) with one lease"
    );
    assert!(release(fx, lease.id).await.was_released());
    let s = stats(fx, &pool).await;
    assert_eq!(
        (s.available_proxies, s.leased_proxies, s.total_leases),
        (2, 0, 0),
        "(available, leased, leases) after release"
    );
    expect_not_found(
        store(fx).pool_stats(&unique("no-such-pool")).await,
        "pool",
        "pool_stats of an unknown pool",
    );
}

// ------------------------------------------------------------------- CRUD

/// Pools: save (insert and update by id), get by id and name, list (by
/// name), unique names, delete (with its proxies), not-found on unknown ids.
pub async fn pool_crud_round_trip(fx: &ContractFixture) {
    let pool = ProxyPool::new(unique("crud-b"))
        .expect("valid")
        .with_description("first");
    let saved = store(fx).save_pool(&pool).await.expect("save_pool");
    assert_eq!(saved, pool, "save_pool returns what it stored");
    assert_eq!(store(fx).get_pool(pool.id).await.expect("get_pool"), pool);
    assert_eq!(
        store(fx)
            .get_pool_by_name(&pool.name)
            .await
            .expect("by name"),
        pool
    );
    let other = new_pool(fx, "crud-a").await;
    let all = store(fx).list_pools().await.expect("list_pools");
    assert!(all.contains(&pool) && all.contains(&other), "list_pools");
    assert!(
        all.windows(2).all(|w| w[0].name <= w[1].name),
        "list_pools is ordered by name"
    );

    let mut renamed = pool.clone();
    renamed.name = unique("crud-renamed");
    renamed.description = Some("second".into());
    store(fx).save_pool(&renamed).await.expect("update pool");
    let got = store(fx).get_pool(pool.id).await.expect("get_pool");
    assert_eq!(got.name, renamed.name);
    assert_eq!(got.description.as_deref(), Some("second"));
    assert_eq!(got.created_at, pool.created_at, "created_at is kept");
    expect_not_found(
        store(fx).get_pool_by_name(&pool.name).await,
        "pool",
        "old name after rename",
    );

    let mut clash = ProxyPool::new(other.name.clone()).expect("valid");
    clash.id = PoolId::new();
    match store(fx).save_pool(&clash).await {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("duplicate pool name: expected Conflict, got {other:?}"),
    }
    let mut invalid = pool.clone();
    invalid.name = " ".into();
    expect_invalid(store(fx).save_pool(&invalid).await, "blank pool name");

    let p = save(fx, proxy(&renamed, 1)).await;
    store(fx).delete_pool(pool.id).await.expect("delete_pool");
    expect_not_found(store(fx).get_pool(pool.id).await, "pool", "deleted pool");
    expect_not_found(
        store(fx).get_proxy(p.id).await,
        "proxy",
        "proxy of a deleted pool",
    );
    expect_not_found(
        store(fx).list_proxies(pool.id).await,
        "pool",
        "list_proxies of a deleted pool",
    );
    expect_not_found(store(fx).delete_pool(pool.id).await, "pool", "delete twice");
    expect_not_found(
        store(fx).get_pool(PoolId::new()).await,
        "pool",
        "unknown id",
    );
}

/// Proxies: save, get, list (by id), update, delete; not-found on unknown
/// ids.
pub async fn proxy_crud_round_trip(fx: &ContractFixture) {
    let pool = new_pool(fx, "proxy-crud").await;
    let original = proxy(&pool, 1)
        .credentials("alice", "s3cret:@/")
        .source("feed")
        .country("AR")
        .city("Rosario")
        .isp("NetCo")
        .asn(7303)
        .location(-32.95, -60.65)
        .max_concurrency(4)
        .build()
        .expect("valid");
    let saved = store(fx).save_proxy(&original).await.expect("save_proxy");
    assert_eq!(saved, original, "save_proxy returns what it stored");
    let got = store(fx).get_proxy(original.id).await.expect("get_proxy");
    assert_eq!(got, original, "get_proxy round trip");
    let more = save_many(fx, 3, |i| proxy(&pool, 10 + i)).await;
    let listed = store(fx).list_proxies(pool.id).await.expect("list_proxies");
    let mut want: Vec<ProxyId> = more.iter().map(|p| p.id).collect();
    want.push(original.id);
    want.sort();
    assert_eq!(ids_of(&listed), want, "list_proxies by id");

    let mut changed = original.clone();
    changed.port = 3128;
    changed.country = Some("UY".into());
    changed.credentials = None;
    let saved = store(fx).save_proxy(&changed).await.expect("update");
    assert_eq!(saved.port, 3128);
    let got = store(fx).get_proxy(original.id).await.expect("get_proxy");
    assert_eq!(got, changed, "update round trip");

    store(fx)
        .delete_proxy(original.id)
        .await
        .expect("delete_proxy");
    expect_not_found(store(fx).get_proxy(original.id).await, "proxy", "deleted");
    expect_not_found(
        store(fx).delete_proxy(original.id).await,
        "proxy",
        "delete twice",
    );
    expect_not_found(
        store(fx).get_proxy(ProxyId::new()).await,
        "proxy",
        "unknown id",
    );
    expect_not_found(
        store(fx).list_proxies(PoolId::new()).await,
        "pool",
        "list_proxies of an unknown pool",
    );
    assert_eq!(
        store(fx).list_proxies(pool.id).await.expect("list").len(),
        3
    );
}

/// save_proxy: the pool must exist; `current_leases` is the storage's (the
/// caller's value is ignored); an update keeps `checked_at` and health;
/// moving a proxy to another pool is a conflict; invalid proxies are
/// rejected.
pub async fn save_proxy_keeps_storage_owned_fields(fx: &ContractFixture) {
    let pool = new_pool(fx, "save-proxy").await;
    let consumer = new_consumer(fx, "save-proxy").await;
    let orphan = Proxy::builder(PoolId::new(), "10.9.9.9", 80, ProxyProtocol::Http)
        .build()
        .expect("valid");
    expect_not_found(store(fx).save_proxy(&orphan).await, "pool", "missing pool");

    let mut p = proxy(&pool, 1).build().expect("valid");
    p.current_leases = 7;
    let saved = store(fx).save_proxy(&p).await.expect("save_proxy");
    assert_eq!(saved.current_leases, 0, "caller's current_leases ignored");
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("acquire");
    let t = base_time();
    apply(
        fx,
        &health(&p, ProxyStatus::Active, Some(42.0), t),
        HealthPolicy::default(),
    )
    .await;

    let mut update = p.clone();
    update.current_leases = 0;
    update.checked_at = None;
    update.health = Default::default();
    update.city = Some("Lima".into());
    let saved = store(fx).save_proxy(&update).await.expect("update");
    assert_eq!(saved.current_leases, 1, "the active lease still counts");
    assert_eq!(saved.checked_at, Some(t), "checked_at kept on update");
    assert_eq!(
        saved.health.last_latency_ms,
        Some(42.0),
        "health kept on update"
    );
    assert_eq!(saved.city.as_deref(), Some("Lima"));
    let got = store(fx).get_proxy(p.id).await.expect("get_proxy");
    assert_eq!(got, saved);

    let elsewhere = new_pool(fx, "save-proxy-other").await;
    let mut moved = p.clone();
    moved.pool_id = elsewhere.id;
    match store(fx).save_proxy(&moved).await {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("moving a proxy between pools: expected Conflict, got {other:?}"),
    }
    let mut bad = p.clone();
    bad.port = 0;
    expect_invalid(store(fx).save_proxy(&bad).await, "port 0");
    let got = store(fx).get_proxy(p.id).await.expect("get_proxy");
    assert_eq!(got.port, p.port, "a rejected save changes nothing");
    assert_eq!(got.pool_id, pool.id);
    assert!(release(fx, lease.id).await.was_released());
}

/// add_proxies writes all or nothing: one invalid proxy, or one whose pool
/// is missing, and none is written.
pub async fn add_proxies_is_all_or_nothing(fx: &ContractFixture) {
    let pool = new_pool(fx, "bulk").await;
    let batch: Vec<Proxy> = (0..3)
        .map(|i| proxy(&pool, i).build().expect("valid"))
        .collect();
    let added = store(fx).add_proxies(&batch).await.expect("add_proxies");
    assert_eq!(added.len(), 3);
    assert_eq!(
        store(fx).list_proxies(pool.id).await.expect("list").len(),
        3
    );

    let mut with_invalid: Vec<Proxy> = (10..13)
        .map(|i| proxy(&pool, i).build().expect("valid"))
        .collect();
    with_invalid[1].latitude = Some(123.0);
    with_invalid[1].longitude = Some(0.0);
    expect_invalid(
        store(fx).add_proxies(&with_invalid).await,
        "batch with an invalid proxy",
    );
    assert_eq!(
        store(fx).list_proxies(pool.id).await.expect("list").len(),
        3,
        "an invalid batch must add none"
    );

    let mut with_orphan: Vec<Proxy> = (20..22)
        .map(|i| proxy(&pool, i).build().expect("valid"))
        .collect();
    with_orphan.push(
        Proxy::builder(PoolId::new(), "10.8.8.8", 80, ProxyProtocol::Http)
            .build()
            .expect("valid"),
    );
    expect_not_found(
        store(fx).add_proxies(&with_orphan).await,
        "pool",
        "batch with a missing pool",
    );
    assert_eq!(
        store(fx).list_proxies(pool.id).await.expect("list").len(),
        3,
        "a batch with a missing pool must add none"
    );
    for p in &with_orphan[..2] {
        expect_not_found(store(fx).get_proxy(p.id).await, "proxy", "not added");
    }
}

/// Deleting a leased proxy deletes its leases: releasing one afterwards is
/// a clean not-found, and the pool's counts stay right.
pub async fn deleting_a_leased_proxy_ends_its_lease(fx: &ContractFixture) {
    let pool = new_pool(fx, "delete-leased").await;
    let consumer = new_consumer(fx, "delete-leased").await;
    let p = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    let req = request(&pool, consumer, LONG);
    let lease = acquire(fx, &req).await.expect("acquire");
    assert_eq!(lease.proxy_id, p[0].id);
    let done = acquire(fx, &req).await.expect("acquire second");
    assert!(release(fx, done.id).await.was_released());
    store(fx).delete_proxy(p[0].id).await.expect("delete_proxy");
    expect_not_found(
        store(fx).release(lease.id).await,
        "lease",
        "release after delete",
    );
    expect_not_found(
        store(fx).get_lease(lease.id).await,
        "lease",
        "get after delete",
    );
    expect_not_found(
        store(fx).renew(lease.id, LONG).await,
        "lease",
        "renew after delete",
    );
    let s = stats(fx, &pool).await;
    assert_eq!(
        (s.total_proxies, s.total_leases, s.available_proxies),
        (1, 0, 1)
    );
    let again = acquire(fx, &req).await.expect("the other proxy");
    assert_eq!(again.proxy_id, p[1].id);
}

/// Returned values are copies: changing them changes nothing stored, and a
/// lease's snapshot keeps the proxy as it was when leased while get_lease
/// shows it as it is now.
pub async fn returned_values_are_copies(fx: &ContractFixture) {
    let pool = new_pool(fx, "copies").await;
    let consumer = new_consumer(fx, "copies").await;
    let p = save(fx, proxy(&pool, 1).country("AR")).await;
    let mut got = store(fx).get_proxy(p.id).await.expect("get_proxy");
    got.country = Some("XX".into());
    got.status = ProxyStatus::Banned;
    let again = store(fx).get_proxy(p.id).await.expect("get_proxy");
    assert_eq!(again.country.as_deref(), Some("AR"));
    assert_eq!(again.status, ProxyStatus::Active);

    let mut listed = store(fx).list_proxies(pool.id).await.expect("list");
    listed[0].port = 1;
    assert_eq!(store(fx).get_proxy(p.id).await.expect("get").port, p.port);

    let mut lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("acquire");
    Arc::make_mut(&mut lease.proxy).host = "evil.example".into();
    assert_eq!(store(fx).get_proxy(p.id).await.expect("get").host, p.host);

    let lease = store(fx).get_lease(lease.id).await.expect("get_lease");
    assert_eq!(lease.proxy.host, p.host, "stored lease unaffected");
    let result = health(&p, ProxyStatus::Inactive, None, base_time());
    apply(fx, &result, HealthPolicy::immediate()).await;
    assert_eq!(
        lease.proxy.status,
        ProxyStatus::Active,
        "a snapshot already handed out does not change"
    );
    let now = store(fx).get_lease(lease.id).await.expect("get_lease");
    assert_eq!(
        now.proxy.status,
        ProxyStatus::Inactive,
        "get_lease shows the proxy as it is now"
    );
}

// ------------------------------------------------------------- contention

async fn contend(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    workers: usize,
) -> (Vec<pharox_domain::Lease>, usize, Vec<StorageError>) {
    let barrier = Arc::new(Barrier::new(workers));
    let req = Arc::new(request(pool, consumer, LONG));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let storage = Arc::clone(&fx.storage);
            let barrier = Arc::clone(&barrier);
            let req = Arc::clone(&req);
            tokio::spawn(async move {
                barrier.wait().await;
                storage.acquire(&req).await
            })
        })
        .collect();
    let (mut leases, mut misses, mut errors) = (Vec::new(), 0, Vec::new());
    for task in tasks {
        match task.await.expect("acquire task panicked") {
            Ok(Some(lease)) => leases.push(lease),
            Ok(None) => misses += 1,
            Err(e) => errors.push(e),
        }
    }
    (leases, misses, errors)
}

/// 64 concurrent acquirers on 8 proxies with max_concurrency 1: exactly 8
/// leases on 8 distinct proxies, 56 misses, no errors.
pub async fn contention_leases_each_slot_once(fx: &ContractFixture) {
    let pool = new_pool(fx, "contention").await;
    let consumer = new_consumer(fx, "contention").await;
    save_many(fx, 8, |i| proxy(&pool, i).max_concurrency(1)).await;
    let (leases, misses, errors) = contend(fx, &pool, consumer, 64).await;
    assert!(
        errors.is_empty(),
        "acquire errors under contention: {errors:?}"
    );
    assert_eq!(leases.len(), 8, "exactly one lease per slot");
    assert_eq!(misses, 56);
    let distinct: BTreeSet<ProxyId> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(distinct.len(), 8, "a proxy was leased twice: {leases:?}");
    let s = stats(fx, &pool).await;
    assert_eq!((s.total_leases, s.available_proxies), (8, 0));
}

/// 64 concurrent acquirers with room for all (8 proxies, max_concurrency 8)
/// all succeed, spread so no proxy exceeds its limit.
pub async fn contention_with_spare_capacity_all_succeed(fx: &ContractFixture) {
    let pool = new_pool(fx, "capacity").await;
    let consumer = new_consumer(fx, "capacity").await;
    save_many(fx, 8, |i| proxy(&pool, i).max_concurrency(8)).await;
    let (leases, misses, errors) = contend(fx, &pool, consumer, 64).await;
    assert!(errors.is_empty(), "acquire errors: {errors:?}");
    assert_eq!(
        (leases.len(), misses),
        (64, 0),
        "a caller was refused with capacity left"
    );
    let mut per_proxy: HashMap<ProxyId, u32> = HashMap::new();
    for lease in &leases {
        *per_proxy.entry(lease.proxy_id).or_default() += 1;
    }
    assert!(per_proxy.values().all(|&n| n == 8), "{per_proxy:?}");
    for p in store(fx).list_proxies(pool.id).await.expect("list") {
        assert_eq!(p.current_leases, 8, "current_leases of {}", p.id);
    }
    assert_eq!(stats(fx, &pool).await.total_leases, 64);
}

/// Concurrent acquire/release loops (more workers than slots) never put
/// more leases on a proxy than its max_concurrency, and end with none.
pub async fn acquire_release_loops_never_over_lease(fx: &ContractFixture) {
    const WORKERS: usize = 12;
    const ROUNDS: usize = 100;
    const MAX: u32 = 2;
    let pool = new_pool(fx, "churn").await;
    let consumer = new_consumer(fx, "churn").await;
    let proxies = save_many(fx, 4, |i| proxy(&pool, i).max_concurrency(MAX)).await;
    let held: Arc<HashMap<ProxyId, AtomicU32>> =
        Arc::new(proxies.iter().map(|p| (p.id, AtomicU32::new(0))).collect());
    let barrier = Arc::new(Barrier::new(WORKERS));
    let selectors = Selector::ALL;
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let storage = Arc::clone(&fx.storage);
            let barrier = Arc::clone(&barrier);
            let held = Arc::clone(&held);
            let req = request(&pool, consumer, LONG).with_selector(selectors[w % selectors.len()]);
            let pool_name = pool.name.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut leased = 0usize;
                for round in 0..ROUNDS {
                    let lease = storage.acquire(&req).await.map_err(|e| e.to_string())?;
                    if let Some(lease) = lease {
                        leased += 1;
                        if lease.proxy.current_leases > MAX {
                            return Err(format!(
                                "snapshot shows {} leases",
                                lease.proxy.current_leases
                            ));
                        }
                        let counter = held.get(&lease.proxy_id).ok_or("unknown proxy")?;
                        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        if now > MAX {
                            return Err(format!("{now} holders on {}", lease.proxy_id));
                        }
                        tokio::task::yield_now().await;
                        counter.fetch_sub(1, Ordering::SeqCst);
                        let out = storage.release(lease.id).await.map_err(|e| e.to_string())?;
                        if !out.was_released() {
                            return Err(format!("release gave {out:?}"));
                        }
                    } else {
                        tokio::task::yield_now().await;
                    }
                    if round % 20 == 0 {
                        let s = storage
                            .pool_stats(&pool_name)
                            .await
                            .map_err(|e| e.to_string())?;
                        if s.total_leases > 4 * u64::from(MAX) || s.leased_proxies > 4 {
                            return Err(format!("over-leased: {s:?}"));
                        }
                    }
                }
                Ok::<usize, String>(leased)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .expect("worker panicked")
            .unwrap_or_else(|e| panic!("worker failed: {e}"));
    }
    assert!(total > 0, "no worker ever got a lease");
    let s = stats(fx, &pool).await;
    assert_eq!(
        (s.total_leases, s.leased_proxies, s.available_proxies),
        (0, 0, 4)
    );
    for p in store(fx).list_proxies(pool.id).await.expect("list") {
        assert_eq!(
            p.current_leases, 0,
            "current_leases of {} after the churn",
            p.id
        );
    }
}
