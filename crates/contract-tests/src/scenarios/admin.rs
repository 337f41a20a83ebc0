//! Administration: consumers, pools and proxies (save, get, list, delete),
//! exact names, storage-owned fields, pool statistics and copies.

use std::collections::BTreeSet;
use std::sync::Arc;

use pharox_domain::{
    ConsumerId, HealthPolicy, PoolId, Proxy, ProxyFilter, ProxyId, ProxyPool, ProxyProtocol,
    ProxyStatus, Selector,
};
use pharox_ports::{AcquireRequest, StorageError};
use tokio::sync::Barrier;

use super::support::*;
use crate::ContractFixture;

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

/// Pool and consumer names are compared exactly: case matters, and so do
/// leading and trailing spaces. Names that differ only in case are two
/// pools (no conflict) and two consumers, and no lookup by name (get, acquire,
/// find_available, pool_stats) folds case or trims.
pub async fn names_are_exact_and_case_sensitive(fx: &ContractFixture) {
    let name = unique("Case");
    let upper = ProxyPool::new(name.clone()).expect("valid");
    let lower = ProxyPool::new(name.to_lowercase()).expect("valid");
    let padded = ProxyPool::new(format!("{name} ")).expect("valid");
    for pool in [&upper, &lower, &padded] {
        store(fx).save_pool(pool).await.unwrap_or_else(|e| {
            panic!(
                "save_pool({:?}): names differing in case or spaces are distinct: {e}",
                pool.name
            )
        });
    }
    for pool in [&upper, &lower, &padded] {
        let got = store(fx)
            .get_pool_by_name(&pool.name)
            .await
            .expect("get_pool_by_name");
        assert_eq!(got.id, pool.id, "get_pool_by_name({:?})", pool.name);
    }
    let shouted = name.to_uppercase();
    expect_not_found(
        store(fx).get_pool_by_name(&shouted).await,
        "pool",
        "get_pool_by_name in another case",
    );
    expect_not_found(
        store(fx).pool_stats(&shouted).await,
        "pool",
        "pool_stats in another case",
    );
    let listed: BTreeSet<PoolId> = store(fx)
        .list_pools()
        .await
        .expect("list_pools")
        .iter()
        .map(|p| p.id)
        .collect();
    assert!(
        [upper.id, lower.id, padded.id]
            .iter()
            .all(|id| listed.contains(id))
    );

    let consumer = new_consumer(fx, "names").await;
    let p = save(fx, proxy(&upper, 1)).await;
    for other in [&lower.name, &padded.name, &shouted] {
        let req = AcquireRequest::new(other.clone(), consumer, LONG);
        assert!(
            acquire(fx, &req).await.is_none(),
            "acquire on {other:?} leased a proxy of pool {:?}",
            upper.name
        );
        let offered = store(fx)
            .find_available(other, &ProxyFilter::new(), Selector::FirstAvailable)
            .await
            .expect("find_available");
        assert!(
            offered.is_none(),
            "find_available on {other:?} offered {offered:?}"
        );
    }
    assert_eq!(stats(fx, &lower).await.total_proxies, 0);
    let lease = acquire(fx, &request(&upper, consumer, LONG))
        .await
        .expect("acquire by the exact name");
    assert_eq!(lease.proxy_id, p.id);

    let worker = unique("Worker");
    let ids: Vec<ConsumerId> = {
        let mut ids = Vec::new();
        for n in [worker.clone(), worker.to_lowercase(), format!(" {worker}")] {
            ids.push(
                store(fx)
                    .ensure_consumer(&n)
                    .await
                    .expect("ensure_consumer"),
            );
        }
        ids
    };
    let distinct: BTreeSet<ConsumerId> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "consumer names differing in case or spaces must be distinct consumers"
    );
    let again = store(fx)
        .ensure_consumer(&worker)
        .await
        .expect("ensure_consumer");
    assert_eq!(again, ids[0]);
}

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
    renamed.created_at = pool.created_at - time::Duration::days(1);
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

/// save_proxy and add_proxies: the pool must exist; `current_leases` is the
/// storage's (the caller's value is ignored); an update keeps `created_at`,
/// `checked_at` and health; moving a proxy to another pool is a conflict
/// (and a batch with such a move writes nothing); invalid proxies are
/// rejected and change nothing.
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

    let created_at = saved.created_at;
    let mut update = p.clone();
    update.current_leases = 0;
    update.checked_at = None;
    update.health = Default::default();
    update.city = Some("Lima".into());
    update.created_at = created_at - time::Duration::days(1);
    let saved = store(fx).save_proxy(&update).await.expect("update");
    assert_eq!(saved.current_leases, 1, "the active lease still counts");
    assert_eq!(saved.created_at, created_at, "created_at kept on update");
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

    // add_proxies treats each proxy as save_proxy does.
    let mut again = got.clone();
    again.current_leases = 9;
    again.checked_at = None;
    again.health = Default::default();
    again.created_at = created_at - time::Duration::days(2);
    again.isp = Some("NetZ".into());
    let mut fresh = proxy(&pool, 2).build().expect("valid");
    fresh.current_leases = 5;
    let out = store(fx)
        .add_proxies(&[again, fresh.clone()])
        .await
        .expect("add_proxies");
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].id, out[0].current_leases, out[0].checked_at),
        (p.id, 1, Some(t)),
        "add_proxies update: current_leases and checked_at are the storage's"
    );
    assert_eq!(out[0].health.last_latency_ms, Some(42.0), "health kept");
    assert_eq!(out[0].created_at, created_at, "created_at kept");
    assert_eq!(out[0].isp.as_deref(), Some("NetZ"));
    assert_eq!(
        (out[1].id, out[1].current_leases),
        (fresh.id, 0),
        "add_proxies insert: the caller's current_leases is ignored"
    );
    assert_eq!(proxy_now(fx, p.id).await, out[0]);
    assert_eq!(proxy_now(fx, fresh.id).await, out[1]);
    let newcomer = proxy(&pool, 3).build().expect("valid");
    let mut moved = got.clone();
    moved.pool_id = elsewhere.id;
    match store(fx).add_proxies(&[newcomer.clone(), moved]).await {
        Err(StorageError::Conflict(_)) => {}
        other => panic!("a batch moving a proxy between pools: expected Conflict, got {other:?}"),
    }
    expect_not_found(
        store(fx).get_proxy(newcomer.id).await,
        "proxy",
        "a batch with a conflict writes nothing",
    );
    assert_eq!(proxy_now(fx, p.id).await.pool_id, pool.id);
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
