//! Acquire by a caller-chosen lease id ([`AcquireRequest::with_lease_id`](pharox_ports::AcquireRequest::with_lease_id)):
//! a repeat returns the first call's lease and leases nothing more, also
//! when repeats race; an id of another consumer or pool is a conflict.

use std::collections::BTreeSet;
use std::sync::Arc;

use pharox_domain::{LeaseId, LeaseStatus, ProxyId, Selector};
use pharox_ports::ReleaseOutcome;
use tokio::sync::Barrier;

use super::support::*;
use crate::ContractFixture;

/// A lease id makes acquire idempotent. The first call's lease gets that
/// id; a repeat (also with another TTL, filter or selector) returns that
/// lease as stored (same proxy, same expiry: not renewed) and leases
/// nothing more: `current_leases` stays 1 and pool_stats shows one lease.
/// After a release the repeat returns the lease released and still leases
/// nothing; after expiry it returns the lease unrenewed and leases nothing.
pub async fn acquire_with_a_lease_id_is_idempotent(fx: &ContractFixture) {
    let pool = new_pool(fx, "idempotent").await;
    let consumer = new_consumer(fx, "idempotent").await;
    let p = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(2)).await;
    let id = LeaseId::new();
    let req = request(&pool, consumer, LONG).with_lease_id(id);
    let first = acquire(fx, &req)
        .await
        .expect("the first acquire with a lease id leases");
    assert_eq!(first.id, id, "the lease gets the caller's id");
    assert_eq!(lease_now(fx, id).await.proxy_id, first.proxy_id);
    let other_proxy = if first.proxy_id == p[0].id {
        &p[1]
    } else {
        &p[0]
    };
    let repeats = [
        ("the same request", req.clone()),
        (
            "another ttl, filter and selector",
            request(&pool, consumer, SHORT)
                .with_lease_id(id)
                .with_filter(only(other_proxy.id))
                .with_selector(Selector::LeastUsed),
        ),
    ];
    for (what, repeat) in &repeats {
        let again = acquire(fx, repeat)
            .await
            .unwrap_or_else(|| panic!("a repeat with {what} must return the lease"));
        assert_eq!(again.id, id, "{what}");
        assert_eq!(again.proxy_id, first.proxy_id, "{what}: the same proxy");
        assert_eq!(again.status, LeaseStatus::Active, "{what}");
        assert_eq!(again.acquired_at, first.acquired_at, "{what}: as stored");
        assert_eq!(
            again.expires_at, first.expires_at,
            "{what}: as stored, not renewed"
        );
    }
    assert_eq!(
        proxy_now(fx, first.proxy_id).await.current_leases,
        1,
        "a repeat must lease nothing"
    );
    assert_eq!(proxy_now(fx, other_proxy.id).await.current_leases, 0);
    assert_eq!(
        occupancy(fx, &pool).await,
        (1, 1, 2),
        "pool_stats (leases, leased, available) after repeats"
    );

    let ReleaseOutcome::Released(released) = release(fx, id).await else {
        panic!("the lease was active");
    };
    for (what, repeat) in &repeats {
        let after = acquire(fx, repeat)
            .await
            .unwrap_or_else(|| panic!("a repeat with {what} after release must return the lease"));
        assert_eq!(after.id, id, "{what}");
        assert_eq!(after.status, LeaseStatus::Released, "{what}: as stored");
        assert_eq!(after.released_at, Some(released.released_at), "{what}");
    }
    assert_eq!(
        occupancy(fx, &pool).await,
        (0, 0, 2),
        "a repeat after release must lease nothing"
    );

    let short_id = LeaseId::new();
    let short = request(&pool, consumer, SHORT).with_lease_id(short_id);
    let lease = acquire(fx, &short).await.expect("a short lease");
    assert_eq!(lease.id, short_id);
    fx.time.advance(PAST_SHORT).await;
    let later = acquire(fx, &short)
        .await
        .expect("a repeat after expiry must return the lease");
    assert_eq!(later.id, short_id);
    assert_eq!(later.proxy_id, lease.proxy_id);
    assert_eq!(
        later.expires_at - later.acquired_at,
        lease.expires_at - lease.acquired_at,
        "a repeat after expiry must not renew the lease"
    );
    assert_eq!(
        occupancy(fx, &pool).await,
        (0, 0, 2),
        "a repeat after expiry must lease nothing"
    );
}

/// Repeats of one lease id that race (a retry sent while the call it
/// retries is still running) lease once: every call returns the same
/// lease, and the pool holds one lease.
pub async fn racing_repeats_of_a_lease_id_lease_once(fx: &ContractFixture) {
    const CALLERS: usize = 16;
    let pool = new_pool(fx, "idempotent-race").await;
    let consumer = new_consumer(fx, "idempotent-race").await;
    save_many(fx, 4, |i| proxy(&pool, i).max_concurrency(4)).await;
    let id = LeaseId::new();
    let req = Arc::new(request(&pool, consumer, LONG).with_lease_id(id));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
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
    let mut proxies: BTreeSet<ProxyId> = BTreeSet::new();
    for task in tasks {
        let lease = task
            .await
            .expect("acquire task panicked")
            .unwrap_or_else(|e| panic!("a racing repeat failed: {e}"))
            .expect("a racing repeat must return the lease");
        assert_eq!(lease.id, id, "a racing repeat returned another lease");
        proxies.insert(lease.proxy_id);
    }
    assert_eq!(proxies.len(), 1, "repeats returned leases on {proxies:?}");
    let s = stats(fx, &pool).await;
    assert_eq!(
        (s.total_leases, s.leased_proxies),
        (1, 1),
        "racing repeats must lease once"
    );
    let counted: u32 = store(fx)
        .list_proxies(pool.id)
        .await
        .expect("list_proxies")
        .iter()
        .map(|p| p.current_leases)
        .sum();
    assert_eq!(counted, 1, "current_leases over the pool");
}

/// A lease id already used by another consumer, or in another pool, is a
/// conflict (also once that lease is released), and the conflicting call
/// leases nothing; the first lease is unchanged.
pub async fn a_lease_id_of_another_consumer_or_pool_conflicts(fx: &ContractFixture) {
    let pool = new_pool(fx, "lease-id-conflict").await;
    let elsewhere = new_pool(fx, "lease-id-conflict-other").await;
    let alice = new_consumer(fx, "alice").await;
    let bob = new_consumer(fx, "bob").await;
    save(fx, proxy(&pool, 1)).await;
    save(fx, proxy(&elsewhere, 1)).await;
    let id = LeaseId::new();
    let first = acquire(fx, &request(&pool, alice, LONG).with_lease_id(id))
        .await
        .expect("the first lease");
    let clashes = [
        ("another consumer", request(&pool, bob, LONG)),
        ("another pool", request(&elsewhere, alice, LONG)),
        ("another consumer and pool", request(&elsewhere, bob, LONG)),
    ];
    for round in ["while active", "once released"] {
        for (what, req) in &clashes {
            expect_conflict(
                store(fx).acquire(&req.clone().with_lease_id(id)).await,
                &format!("a lease id used by {what}, {round}"),
            );
        }
        let want = if round == "while active" { 1 } else { 0 };
        assert_eq!(
            stats(fx, &pool).await.total_leases,
            want,
            "a conflicting acquire leased ({round})"
        );
        assert_eq!(
            stats(fx, &elsewhere).await.total_leases,
            0,
            "a conflicting acquire leased in the other pool ({round})"
        );
        let stored = lease_now(fx, id).await;
        assert_eq!(
            (stored.consumer_id, stored.pool_id, stored.proxy_id),
            (alice, pool.id, first.proxy_id),
            "the first lease is unchanged ({round})"
        );
        if round == "while active" {
            assert!(release(fx, id).await.was_released());
        }
    }
}
