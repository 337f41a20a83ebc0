//! Concurrent calls on the same lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pharox_adapter_memory::MemoryStorage;
use pharox_domain::{Proxy, ProxyPool, ProxyProtocol};
use pharox_ports::{AcquireRequest, ProxyStorage, ReleaseOutcome};

/// Releasing one lease from many tasks at once ends it exactly once; every
/// other call says it was already released (never "not found", even in the
/// moment between the pool giving the capacity back and the lease history
/// recording the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_releases_of_one_lease_end_it_exactly_once() {
    let storage = Arc::new(MemoryStorage::new());
    let pool = storage
        .save_pool(&ProxyPool::new("race").unwrap())
        .await
        .unwrap();
    let proxy = Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http)
        .max_concurrency(1)
        .build()
        .unwrap();
    storage.save_proxy(&proxy).await.unwrap();
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let request = AcquireRequest::new("race", consumer, Duration::from_secs(60));
    for _ in 0..200 {
        let lease = storage.acquire(&request).await.unwrap().expect("free");
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (storage, barrier) = (Arc::clone(&storage), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    storage.release(lease.id).await
                })
            })
            .collect();
        let mut released = 0;
        for task in tasks {
            match task.await.unwrap().expect("never an error") {
                ReleaseOutcome::Released(_) => released += 1,
                ReleaseOutcome::AlreadyReleased { .. } => {}
            }
        }
        assert_eq!(released, 1);
        assert_eq!(storage.pool_stats("race").await.unwrap().total_leases, 0);
    }
}
