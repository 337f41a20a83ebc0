//! The operator's views: `pool_overview` (counts by status, occupancy,
//! capacity, unreclaimed expiries, latency percentiles, the range of
//! `checked_at`) and `list_leases` (the leases that hold a proxy now).

use std::time::Duration;

use pharox_domain::{HealthPolicy, LeaseId, PoolOverview, ProxyStatus};

use super::support::*;
use crate::ContractFixture;

async fn overview(fx: &ContractFixture, pool: &str) -> PoolOverview {
    store(fx)
        .pool_overview(pool)
        .await
        .unwrap_or_else(|e| panic!("pool_overview({pool}) failed: {e}"))
}

async fn live_leases(
    fx: &ContractFixture,
    pool: &str,
    consumer: Option<&str>,
    limit: usize,
) -> Vec<LeaseId> {
    store(fx)
        .list_leases(pool, consumer, limit)
        .await
        .unwrap_or_else(|e| panic!("list_leases({pool}, {consumer:?}) failed: {e}"))
        .into_iter()
        .map(|l| l.id)
        .collect()
}

/// pool_overview counts proxies by status (every status present), leased
/// proxies and live leases apart from expired ones it does not reclaim,
/// and the capacity of the active proxies (`None` once one is unlimited);
/// an empty pool has no latency and no `checked_at`; unknown pool: not
/// found; invalid name: rejected.
pub async fn pool_overview_counts_statuses_leases_and_capacity(fx: &ContractFixture) {
    let pool = new_pool(fx, "overview").await;
    let empty = overview(fx, &pool.name).await;
    assert_eq!(empty.pool, pool.name);
    assert_eq!(empty.pool_id, pool.id);
    assert_eq!(empty.proxies, 0, "an empty pool has no proxies");
    assert_eq!(
        empty.by_status,
        PoolOverview::empty_by_status(),
        "every status at 0"
    );
    assert_eq!(empty.capacity, Some(0), "no active proxy: capacity 0");
    assert_eq!((empty.latency_ms.p50, empty.latency_ms.p95), (None, None));
    assert_eq!(
        (empty.checked_at.oldest, empty.checked_at.newest),
        (None, None)
    );

    let consumer = new_consumer(fx, "overview").await;
    save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(2)).await;
    save(fx, proxy(&pool, 7).status(ProxyStatus::Inactive)).await;
    save(
        fx,
        proxy(&pool, 8)
            .status(ProxyStatus::Banned)
            .max_concurrency(5),
    )
    .await;
    for _ in 0..3 {
        acquire(fx, &request(&pool, consumer, LONG))
            .await
            .expect("a free slot");
    }
    acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("the last slot");
    let o = overview(fx, &pool.name).await;
    assert_eq!(o.proxies, 4);
    let counts: Vec<u64> = ProxyStatus::ALL.iter().map(|s| o.by_status[s]).collect();
    assert_eq!(
        counts,
        [2, 1, 0, 1],
        "by_status (active, inactive, slow, banned)"
    );
    assert_eq!(
        (o.leased_proxies, o.active_leases, o.expired_unreclaimed),
        (2, 4, 0),
        "(leased_proxies, active_leases, expired_unreclaimed) with four live leases"
    );
    assert_eq!(
        o.capacity,
        Some(4),
        "capacity sums max_concurrency of active proxies"
    );

    fx.time.advance(PAST_SHORT).await;
    for round in ["first", "second"] {
        let o = overview(fx, &pool.name).await;
        assert_eq!(
            (o.leased_proxies, o.active_leases, o.expired_unreclaimed),
            (2, 3, 1),
            "{round} overview after one lease expired: it reclaims nothing"
        );
    }
    assert_eq!(store(fx).cleanup_expired().await.expect("cleanup"), 1);
    assert_eq!(overview(fx, &pool.name).await.expired_unreclaimed, 0);

    save(fx, proxy(&pool, 9)).await;
    assert_eq!(
        overview(fx, &pool.name).await.capacity,
        None,
        "an unlimited active proxy makes the capacity unlimited"
    );
    expect_not_found(
        store(fx).pool_overview(&unique("no-such-pool")).await,
        "pool",
        "pool_overview of an unknown pool",
    );
    expect_invalid(
        store(fx).pool_overview("").await,
        "pool_overview of an empty name",
    );
}

/// pool_overview's latency is percentile_cont 0.5 and 0.95 over the
/// proxies' latest latency (unchecked proxies left out), and `checked_at`
/// spans the oldest and newest check.
pub async fn pool_overview_latency_and_checked_at(fx: &ContractFixture) {
    let pool = new_pool(fx, "overview-latency").await;
    let proxies = save_many(fx, 5, |i| proxy(&pool, i)).await;
    let policy = HealthPolicy::new(3).expect("valid policy");
    let base = base_time();
    for (i, p) in proxies.iter().take(4).enumerate() {
        let minutes = i64::try_from(i).expect("small");
        let latency = 10.0 * (minutes + 1) as f64;
        let at = base + time::Duration::minutes(minutes);
        apply(
            fx,
            &health(p, ProxyStatus::Active, Some(latency), at),
            policy,
        )
        .await;
    }
    let o = overview(fx, &pool.name).await;
    let close = |got: Option<f64>, want: f64, what: &str| {
        let got = got.unwrap_or_else(|| panic!("{what} is None with four latencies"));
        assert!((got - want).abs() < 1e-6, "{what}: {got}, expected {want}");
    };
    close(o.latency_ms.p50, 25.0, "p50 of 10, 20, 30, 40");
    close(o.latency_ms.p95, 38.5, "p95 of 10, 20, 30, 40");
    assert_eq!(o.checked_at.oldest, Some(base), "oldest checked_at");
    assert_eq!(
        o.checked_at.newest,
        Some(base + time::Duration::minutes(3)),
        "newest checked_at"
    );
}

/// list_leases gives the live leases of a pool, oldest first, optionally of
/// one consumer (by name; an unused name gives none), at most `limit`;
/// released and expired leases are left out; unknown pool: not found.
pub async fn list_leases_lists_live_leases_oldest_first(fx: &ContractFixture) {
    let pool = new_pool(fx, "list-leases").await;
    save_many(fx, 3, |i| proxy(&pool, i)).await;
    let alice = unique("alice");
    let bob = unique("bob");
    let a = store(fx).ensure_consumer(&alice).await.expect("consumer");
    let b = store(fx).ensure_consumer(&bob).await.expect("consumer");
    let first = acquire(fx, &request(&pool, a, LONG)).await.expect("lease");
    fx.time.advance(Duration::from_secs(1)).await;
    let second = acquire(fx, &request(&pool, b, LONG)).await.expect("lease");
    fx.time.advance(Duration::from_secs(1)).await;
    let third = acquire(fx, &request(&pool, a, SHORT)).await.expect("lease");

    let all = store(fx)
        .list_leases(&pool.name, None, 10)
        .await
        .expect("list_leases");
    assert_eq!(
        all.iter().map(|l| l.id).collect::<Vec<_>>(),
        [first.id, second.id, third.id],
        "every live lease, oldest first"
    );
    assert_eq!(all[0].proxy_id, first.proxy_id);
    assert_eq!(all[0].consumer_id, a);
    assert_eq!(
        all[0].expires_at,
        lease_now(fx, first.id).await.expires_at,
        "as get_lease reads it"
    );
    assert_eq!(
        all[0].proxy.id, first.proxy_id,
        "the lease carries its proxy"
    );
    assert_eq!(
        live_leases(fx, &pool.name, Some(&alice), 10).await,
        [first.id, third.id],
        "only alice's"
    );
    assert_eq!(
        live_leases(fx, &pool.name, None, 1).await,
        [first.id],
        "limit 1"
    );
    assert!(
        live_leases(fx, &pool.name, Some(&unique("nobody")), 10)
            .await
            .is_empty(),
        "a consumer name nobody uses has no leases"
    );

    assert!(release(fx, second.id).await.was_released());
    fx.time.advance(PAST_SHORT).await;
    assert_eq!(
        live_leases(fx, &pool.name, None, 10).await,
        [first.id],
        "released and expired leases are not listed"
    );
    expect_not_found(
        store(fx)
            .list_leases(&unique("no-such-pool"), None, 10)
            .await,
        "pool",
        "list_leases of an unknown pool",
    );
}
