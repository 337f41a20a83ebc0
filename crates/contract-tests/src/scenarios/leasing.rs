//! Acquire, release, renew, get_lease and find_available on live leases:
//! what a lease carries, which proxies qualify, capacity, and the errors.

use std::time::Duration;

use pharox_domain::{ConsumerId, LeaseId, LeaseStatus, ProxyFilter, ProxyStatus, Selector};
use pharox_ports::{AcquireRequest, ReleaseOutcome};

use super::support::*;
use crate::ContractFixture;

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
/// and leases nothing, with or without a filter, and also on a pool that
/// does not exist (the consumer is checked first).
pub async fn acquire_with_unknown_consumer_is_not_found(fx: &ContractFixture) {
    let pool = new_pool(fx, "unknown-consumer").await;
    let p = save(fx, proxy(&pool, 1)).await;
    let ghost = ConsumerId::new();
    for (what, req) in [
        ("no filter", request(&pool, ghost, LONG)),
        (
            "a scalar filter",
            request(&pool, ghost, LONG).with_filter(ProxyFilter::new().asn(u32::MAX)),
        ),
        (
            "a predicate",
            request(&pool, ghost, LONG).with_filter(only(p.id)),
        ),
        (
            "an unknown pool",
            AcquireRequest::new(unique("no-such-pool"), ghost, LONG),
        ),
    ] {
        expect_not_found(
            store(fx).acquire(&req).await,
            "consumer",
            &format!("acquire with an unknown consumer ({what})"),
        );
    }
    assert_eq!(stats(fx, &pool).await.total_leases, 0, "nothing leased");
    assert_eq!(proxy_now(fx, p.id).await.current_leases, 0);
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
    // Read after the time travel: a SQL adapter's travel moves the stored
    // timestamps.
    let before = lease_now(fx, lease.id).await.expires_at;
    expect_invalid(
        store(fx).renew(lease.id, Duration::ZERO).await,
        "renew ttl 0",
    );
    expect_invalid(
        store(fx)
            .renew(
                lease.id,
                pharox_domain::MAX_LEASE_TTL + Duration::from_secs(1),
            )
            .await,
        "renew ttl over 30 days",
    );
    assert_eq!(
        lease_now(fx, lease.id).await.expires_at,
        before,
        "a rejected renew changes nothing"
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

/// Renewing a released lease, or one past its expiry, is LeaseNotActive;
/// the expired one, not reclaimed by anything yet, is then ended by release
/// (released, not already-released).
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
    // Nothing has reclaimed it yet (renew does not), so a release ends it.
    match release(fx, expiring.id).await {
        ReleaseOutcome::Released(r) => assert_eq!(r.lease_id, expiring.id),
        other => panic!("release of an expired lease nothing reclaimed gave {other:?}"),
    }
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

/// find_available never offers a proxy acquire could not lease: full
/// proxies (at `max_concurrency`) are skipped by every selector, `None`
/// when all are full, and the proxy it offers carries the current lease
/// count.
pub async fn find_available_skips_full_proxies(fx: &ContractFixture) {
    let pool = new_pool(fx, "peek-full").await;
    let consumer = new_consumer(fx, "peek-full").await;
    let p = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(u32::from(i) + 1)).await;
    let (one, two) = if p[0].max_concurrency == Some(1) {
        (&p[0], &p[1])
    } else {
        (&p[1], &p[0])
    };
    let any = ProxyFilter::new();
    let first = acquire(
        fx,
        &request(&pool, consumer, LONG).with_filter(only(one.id)),
    )
    .await
    .expect("the proxy with max_concurrency 1");
    for selector in Selector::ALL {
        let offered = peek(fx, &pool, &any, selector).await;
        assert_eq!(
            offered.as_ref().map(|x| x.id),
            Some(two.id),
            "{selector}: the full proxy must be skipped"
        );
        assert_eq!(offered.map(|x| x.current_leases), Some(0));
    }
    let on_two = request(&pool, consumer, LONG).with_filter(only(two.id));
    let mut held = vec![first.id];
    for _ in 0..2 {
        held.push(
            acquire(fx, &on_two)
                .await
                .expect("below max_concurrency 2")
                .id,
        );
    }
    for selector in Selector::ALL {
        let offered = peek(fx, &pool, &any, selector).await;
        assert!(
            offered.is_none(),
            "{selector}: every proxy is full, yet find_available offered {offered:?}"
        );
        let req = request(&pool, consumer, LONG).with_selector(selector);
        assert!(acquire(fx, &req).await.is_none(), "{selector}: all full");
    }
    assert!(release(fx, held[1]).await.was_released());
    let offered = peek(fx, &pool, &any, Selector::FirstAvailable)
        .await
        .expect("a slot was freed");
    assert_eq!(offered.id, two.id);
    assert_eq!(offered.current_leases, 1, "the offer counts the lease left");
}
