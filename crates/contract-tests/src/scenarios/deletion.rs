//! Deletion: deleting a proxy or a pool deletes everything under it
//! (proxies, leases active or ended, health history), and the ids and names
//! come back clean when reused.

use pharox_domain::{HealthPolicy, ProxyFilter, ProxyPool, ProxyStatus, Selector};

use super::support::*;
use crate::ContractFixture;

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

/// Deleting a proxy deletes its leases, active and ended (get_lease,
/// release and renew give not-found), and its health history; the other
/// proxies keep theirs. Saving a proxy with the same id again makes a new,
/// clean proxy: no leases counted, no history.
pub async fn delete_proxy_removes_its_leases_and_history(fx: &ContractFixture) {
    let pool = new_pool(fx, "delete-proxy").await;
    let consumer = new_consumer(fx, "delete-proxy").await;
    let doomed = save(fx, proxy(&pool, 1).max_concurrency(2)).await;
    let kept = save(fx, proxy(&pool, 2).max_concurrency(1)).await;
    let t = base_time();
    for p in [&doomed, &kept] {
        apply(
            fx,
            &health(p, ProxyStatus::Active, Some(30.0), t),
            HealthPolicy::default(),
        )
        .await;
    }
    let on_doomed = request(&pool, consumer, LONG).with_filter(only(doomed.id));
    let active = acquire(fx, &on_doomed).await.expect("active lease");
    let ended = acquire(fx, &on_doomed).await.expect("second lease");
    assert!(release(fx, ended.id).await.was_released());
    let theirs = acquire(
        fx,
        &request(&pool, consumer, LONG).with_filter(only(kept.id)),
    )
    .await
    .expect("a lease on the other proxy");

    store(fx)
        .delete_proxy(doomed.id)
        .await
        .expect("delete_proxy");
    for (lease, what) in [(active.id, "an active"), (ended.id, "a released")] {
        let what = format!("{what} lease of a deleted proxy");
        expect_not_found(store(fx).get_lease(lease).await, "lease", &what);
        expect_not_found(store(fx).release(lease).await, "lease", &what);
        expect_not_found(store(fx).renew(lease, LONG).await, "lease", &what);
    }
    let last = store(fx)
        .last_health_result(doomed.id)
        .await
        .expect("last_health_result");
    assert!(
        last.is_none(),
        "health history of a deleted proxy: {last:?}"
    );
    let records = store(fx)
        .list_health_records(doomed.id, 10)
        .await
        .expect("list_health_records");
    assert!(records.is_empty(), "health records of a deleted proxy");
    assert_eq!(lease_now(fx, theirs.id).await.proxy_id, kept.id);
    let kept_records = store(fx)
        .list_health_records(kept.id, 10)
        .await
        .expect("list_health_records");
    assert_eq!(kept_records.len(), 1, "the other proxy keeps its history");
    assert_eq!(occupancy(fx, &pool).await, (1, 1, 0));

    let reborn = store(fx)
        .save_proxy(&doomed)
        .await
        .expect("saving a deleted proxy's id again");
    assert_eq!(reborn.current_leases, 0, "the old leases do not count");
    for lease in [active.id, ended.id] {
        expect_not_found(
            store(fx).get_lease(lease).await,
            "lease",
            "a lease of a deleted proxy, after its id was saved again",
        );
    }
    let last = store(fx)
        .last_health_result(doomed.id)
        .await
        .expect("last_health_result");
    assert!(last.is_none(), "a re-saved proxy has no history: {last:?}");
    assert_eq!(occupancy(fx, &pool).await, (1, 1, 1));
    let lease = acquire(fx, &on_doomed).await.expect("the re-saved proxy");
    assert_eq!(lease.proxy.current_leases, 1);
}

/// Deleting a pool deletes its proxies, their leases (active and ended) and
/// their health history: every read of them is not-found or empty, the
/// name leases nothing and has no stats. Other pools are untouched. The
/// name and the proxy ids can be used again and start clean.
pub async fn delete_pool_removes_everything_under_it(fx: &ContractFixture) {
    let pool = new_pool(fx, "delete-pool").await;
    let bystander = new_pool(fx, "delete-pool-bystander").await;
    let consumer = new_consumer(fx, "delete-pool").await;
    let doomed = save_many(fx, 2, |i| proxy(&pool, i).max_concurrency(1)).await;
    let safe = save(fx, proxy(&bystander, 1)).await;
    let t = base_time();
    for p in doomed.iter().chain([&safe]) {
        apply(
            fx,
            &health(p, ProxyStatus::Active, Some(25.0), t),
            HealthPolicy::default(),
        )
        .await;
    }
    let req = request(&pool, consumer, LONG);
    let active = acquire(fx, &req).await.expect("active lease");
    let ended = acquire(fx, &req).await.expect("second lease");
    assert!(release(fx, ended.id).await.was_released());
    let theirs = acquire(fx, &request(&bystander, consumer, LONG))
        .await
        .expect("a lease in the other pool");

    store(fx).delete_pool(pool.id).await.expect("delete_pool");
    expect_not_found(store(fx).get_pool(pool.id).await, "pool", "get_pool");
    expect_not_found(
        store(fx).get_pool_by_name(&pool.name).await,
        "pool",
        "get_pool_by_name",
    );
    expect_not_found(
        store(fx).list_proxies(pool.id).await,
        "pool",
        "list_proxies",
    );
    expect_not_found(store(fx).pool_stats(&pool.name).await, "pool", "pool_stats");
    let pools = store(fx).list_pools().await.expect("list_pools");
    assert!(
        pools.iter().all(|p| p.id != pool.id),
        "list_pools still has it"
    );
    assert!(pools.iter().any(|p| p.id == bystander.id));
    for p in &doomed {
        expect_not_found(
            store(fx).get_proxy(p.id).await,
            "proxy",
            "a proxy of a deleted pool",
        );
        expect_not_found(
            store(fx).delete_proxy(p.id).await,
            "proxy",
            "delete_proxy after delete_pool",
        );
        let last = store(fx)
            .last_health_result(p.id)
            .await
            .expect("last_health_result");
        assert!(
            last.is_none(),
            "health history of a deleted pool's proxy: {last:?}"
        );
        let records = store(fx)
            .list_health_records(p.id, 10)
            .await
            .expect("list_health_records");
        assert!(
            records.is_empty(),
            "health records of a deleted pool's proxy"
        );
    }
    for (lease, what) in [(active.id, "an active"), (ended.id, "a released")] {
        let what = format!("{what} lease of a deleted pool");
        expect_not_found(store(fx).get_lease(lease).await, "lease", &what);
        expect_not_found(store(fx).release(lease).await, "lease", &what);
        expect_not_found(store(fx).renew(lease, LONG).await, "lease", &what);
    }
    assert!(
        acquire(fx, &req).await.is_none(),
        "acquire on a deleted pool's name"
    );
    assert!(
        peek(fx, &pool, &ProxyFilter::new(), Selector::FirstAvailable)
            .await
            .is_none()
    );

    assert_eq!(lease_now(fx, theirs.id).await.pool_id, bystander.id);
    assert_eq!(proxy_now(fx, safe.id).await.current_leases, 1);
    let records = store(fx)
        .list_health_records(safe.id, 10)
        .await
        .expect("list");
    assert_eq!(records.len(), 1, "the other pool's proxy keeps its history");
    assert_eq!(occupancy(fx, &bystander).await, (1, 1, 1));

    let reborn = ProxyPool::new(pool.name.clone()).expect("valid");
    store(fx)
        .save_pool(&reborn)
        .await
        .expect("a deleted pool's name is free again");
    assert!(
        store(fx)
            .list_proxies(reborn.id)
            .await
            .expect("list")
            .is_empty()
    );
    let mut again = doomed[0].clone();
    again.pool_id = reborn.id;
    let again = store(fx)
        .save_proxy(&again)
        .await
        .expect("a deleted pool's proxy id can be saved in another pool");
    assert_eq!(again.current_leases, 0, "the old leases do not count");
    let last = store(fx)
        .last_health_result(again.id)
        .await
        .expect("last_health_result");
    assert!(last.is_none(), "a re-saved proxy has no history: {last:?}");
    assert_eq!(occupancy(fx, &reborn).await, (0, 0, 1));
    let lease = acquire(fx, &req)
        .await
        .expect("the new pool of the old name");
    assert_eq!((lease.pool_id, lease.proxy_id), (reborn.id, again.id));
    assert_eq!(lease.proxy.current_leases, 1);
}
