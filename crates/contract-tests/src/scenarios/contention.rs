//! Contention: concurrent acquirers never share a slot, are never refused
//! while capacity is left, and churn never over-leases.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use pharox_domain::{ConsumerId, Lease, ProxyId, ProxyPool, Selector};
use pharox_ports::StorageError;
use tokio::sync::Barrier;

use super::support::*;
use crate::ContractFixture;

async fn contend(
    fx: &ContractFixture,
    pool: &ProxyPool,
    consumer: ConsumerId,
    workers: usize,
) -> (Vec<Lease>, usize, Vec<StorageError>) {
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
