//! Expiry: a lease stops holding its proxy at `expires_at` exactly, without
//! anyone calling cleanup, and cleanup_expired counts what it reclaims.

use std::time::Duration;

use pharox_domain::{LeaseStatus, ProxyFilter, Selector};
use pharox_ports::ReleaseOutcome;

use super::support::*;
use crate::ContractFixture;

/// A lease past its expiry holds no capacity: pool_stats no longer counts
/// it, acquire succeeds without any cleanup call, and the old lease then
/// reads as released (a release of it is already-released).
pub async fn expired_leases_stop_blocking_capacity(fx: &ContractFixture) {
    let pool = new_pool(fx, "expiry").await;
    let consumer = new_consumer(fx, "expiry").await;
    let the_proxy = save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    let old = acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("acquire");
    let req = request(&pool, consumer, LONG);
    assert!(acquire(fx, &req).await.is_none(), "the slot is held");
    fx.time.advance(PAST_SHORT).await;
    assert_eq!(
        occupancy(fx, &pool).await,
        (0, 0, 1),
        "pool_stats (leases, leased, available): an expired lease no longer counts"
    );
    let new = acquire(fx, &req)
        .await
        .expect("an expired lease must not block the proxy");
    assert_eq!(new.proxy_id, the_proxy.id);
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
            .get_proxy(the_proxy.id)
            .await
            .expect("get")
            .current_leases,
        1
    );
}

/// Expiry is exclusive: a lease holds its proxy until just before
/// `expires_at` and no longer at `expires_at` itself. Two seconds before,
/// acquire and find_available find nothing; at the instant, renew is
/// LeaseNotActive, pool_stats counts no lease, find_available offers the
/// proxy and acquire leases it, reclaiming the old lease.
pub async fn a_lease_ends_at_exactly_expires_at(fx: &ContractFixture) {
    let pool = new_pool(fx, "expiry-instant").await;
    let consumer = new_consumer(fx, "expiry-instant").await;
    let p = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    let short = request(&pool, consumer, SHORT);
    let first = acquire(fx, &short).await.expect("first");
    let second = acquire(fx, &short).await.expect("second");
    assert_eq!(first.proxy_id, p[0].id);
    let any = ProxyFilter::new();
    let margin = Duration::from_secs(2);
    fx.time.advance(SHORT - margin).await;
    assert!(
        peek(fx, &pool, &any, Selector::FirstAvailable)
            .await
            .is_none(),
        "two seconds before expires_at the leases still hold"
    );
    assert!(acquire(fx, &request(&pool, consumer, LONG)).await.is_none());
    assert_eq!(occupancy(fx, &pool).await, (2, 2, 0));

    fx.time.advance(margin).await;
    expect_not_active(
        store(fx).renew(second.id, LONG).await,
        second.id,
        "renew at exactly expires_at",
    );
    assert_eq!(
        occupancy(fx, &pool).await,
        (0, 0, 2),
        "pool_stats (leases, leased, available) at exactly expires_at"
    );
    let offered = peek(fx, &pool, &any, Selector::FirstAvailable)
        .await
        .expect("at exactly expires_at the proxy is free");
    assert_eq!((offered.id, offered.current_leases), (p[0].id, 0));
    let next = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("at exactly expires_at acquire must lease the proxy");
    assert_eq!(next.proxy_id, p[0].id);
    assert_eq!(
        next.proxy.current_leases, 1,
        "the expired lease no longer counts"
    );
    assert_eq!(lease_now(fx, first.id).await.status, LeaseStatus::Released);
}

/// find_available reports a proxy freed only by expiry (no release, no
/// cleanup) as available, with every selector, and its `current_leases`
/// does not count the expired lease.
pub async fn find_available_counts_capacity_freed_by_expiry(fx: &ContractFixture) {
    let pool = new_pool(fx, "peek-expired").await;
    let consumer = new_consumer(fx, "peek-expired").await;
    let the_proxy = save(fx, proxy(&pool, 1).max_concurrency(1)).await;
    acquire(fx, &request(&pool, consumer, SHORT))
        .await
        .expect("acquire");
    let any = ProxyFilter::new();
    assert!(
        peek(fx, &pool, &any, Selector::FirstAvailable)
            .await
            .is_none()
    );
    fx.time.advance(PAST_SHORT).await;
    for selector in Selector::ALL {
        let offered = peek(fx, &pool, &any, selector)
            .await
            .unwrap_or_else(|| panic!("{selector}: a proxy freed by expiry must be offered"));
        assert_eq!(offered.id, the_proxy.id, "{selector}");
        assert_eq!(
            offered.current_leases, 0,
            "{selector}: the expired lease must not count"
        );
    }
    let lease = acquire(fx, &request(&pool, consumer, LONG))
        .await
        .expect("what find_available offered");
    assert_eq!(lease.proxy.current_leases, 1);
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
