//! ProxyManager: error paths against mocked storage, behaviour against the
//! in-memory adapter. Backoff runs on tokio's paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pharox::ports::{MockProxyStorage, ReleasedLease};
use pharox::{
    AcquireEvent, ConsumerId, Lease, LeaseId, LeaseObserver, LeaseRequest, LeaseStatus,
    ManagerConfig, MemoryStorage, PharoxError, PoolId, PoolStats, Proxy, ProxyManager, ProxyPool,
    ProxyProtocol, ProxyStorage, ReleaseEvent, ReleaseOutcome, RetryPolicy, StorageError,
    WithLeaseError,
};

fn lease() -> Lease {
    let pool_id = PoolId::new();
    let proxy = Proxy::builder(pool_id, "10.0.0.1", 8080, ProxyProtocol::Http)
        .build()
        .unwrap();
    let now = pharox::domain::now_micros();
    Lease {
        id: LeaseId::new(),
        proxy_id: proxy.id,
        pool_id,
        pool_name: "eu".into(),
        consumer_id: ConsumerId::new(),
        status: LeaseStatus::Active,
        acquired_at: now,
        expires_at: now + Duration::from_secs(300),
        released_at: None,
        proxy: Arc::new(proxy),
        session: None,
    }
}

fn released(lease: &Lease) -> ReleaseOutcome {
    ReleaseOutcome::Released(ReleasedLease {
        lease_id: lease.id,
        proxy_id: lease.proxy_id,
        pool_id: lease.pool_id,
        consumer_id: lease.consumer_id,
        acquired_at: lease.acquired_at,
        released_at: lease.acquired_at + Duration::from_secs(7),
    })
}

fn unavailable() -> StorageError {
    StorageError::Unavailable {
        message: "connection refused".into(),
        source: None,
    }
}

fn mock_with_consumer() -> MockProxyStorage {
    let mut storage = MockProxyStorage::waiting();
    let id = ConsumerId::new();
    storage
        .expect_ensure_consumer()
        .times(1)
        .returning(move |_| Ok(id));
    storage
}

async fn memory_pool(proxies: usize, max_concurrency: u32) -> MemoryStorage {
    let storage = MemoryStorage::new();
    let pool = storage
        .save_pool(&ProxyPool::new("eu").unwrap())
        .await
        .unwrap();
    for i in 0..proxies {
        let proxy = Proxy::builder(
            pool.id,
            format!("10.0.0.{}", i + 1),
            8080,
            ProxyProtocol::Http,
        )
        .max_concurrency(max_concurrency)
        .build()
        .unwrap();
        storage.save_proxy(&proxy).await.unwrap();
    }
    storage
}

#[tokio::test]
async fn default_consumer_is_created_once_and_cached() {
    let mut storage = MockProxyStorage::waiting();
    let id = ConsumerId::new();
    storage
        .expect_ensure_consumer()
        .withf(|name| name == "default")
        .times(1)
        .returning(move |_| Ok(id));
    storage
        .expect_acquire()
        .withf(move |r| {
            r.consumer_id == id && r.ttl == Duration::from_secs(300) && r.pool_name == "eu"
        })
        .times(2)
        .returning(|_| Ok(None));
    let manager = ProxyManager::new(storage);
    assert!(manager.acquire("eu").await.unwrap().is_none());
    assert!(manager.acquire("eu").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_input_is_rejected_before_storage_is_touched() {
    // No expectations: any storage call would panic.
    let manager = ProxyManager::new(MockProxyStorage::waiting());
    let err = manager
        .acquire(LeaseRequest::new("eu").ttl(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PharoxError::Invalid(e) if e.field == "ttl"),
        "{err}"
    );
    let err = manager.acquire(LeaseRequest::new(" ")).await.unwrap_err();
    assert!(
        matches!(&err, PharoxError::Invalid(e) if e.field == "pool"),
        "{err}"
    );
    let err = manager
        .acquire(LeaseRequest::new("eu").consumer(""))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PharoxError::Invalid(e) if e.field == "consumer"),
        "{err}"
    );
    let bad_filter = pharox::ProxyFilter::new().near(0.0, 0.0, -5.0);
    let err = manager
        .acquire(LeaseRequest::new("eu").filter(bad_filter))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PharoxError::Invalid(e) if e.field == "filter.radius_km"),
        "{err}"
    );
    assert!(
        ProxyManager::new(MockProxyStorage::waiting())
            .with_config(ManagerConfig::default().with_default_ttl(Duration::ZERO))
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_exponentially_on_misses_and_retryable_errors() {
    let mut storage = mock_with_consumer();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let granted = lease();
    storage.expect_acquire().times(3).returning(move |_| {
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(None),
            1 => Err(unavailable()),
            _ => Ok(Some(granted.clone())),
        }
    });
    let manager = ProxyManager::new(storage);
    let policy = RetryPolicy::new(5, Duration::from_millis(100), 2.0, None).unwrap();
    let start = tokio::time::Instant::now();
    let lease = manager.acquire_with_retry("eu", &policy).await.unwrap();
    assert!(lease.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Waited 100 ms after attempt 1 and 200 ms after attempt 2, on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts_and_never_retries_permanent_errors() {
    let mut storage = mock_with_consumer();
    storage.expect_acquire().times(3).returning(|_| Ok(None));
    let manager = ProxyManager::new(storage);
    let policy = RetryPolicy::new(3, Duration::from_secs(1), 3.0, None).unwrap();
    let start = tokio::time::Instant::now();
    assert!(
        manager
            .acquire_with_retry("eu", &policy)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(start.elapsed(), Duration::from_secs(4));

    let mut storage = mock_with_consumer();
    storage.expect_acquire().times(1).returning(|_| {
        Err(StorageError::backend(
            "broken",
            std::io::Error::other("disk"),
        ))
    });
    let manager = ProxyManager::new(storage);
    let err = manager.acquire_with_retry("eu", &policy).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(matches!(
        err,
        PharoxError::Storage(StorageError::Backend { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn release_retries_retryable_failures_with_backoff() {
    let mut storage = MockProxyStorage::waiting();
    let granted = lease();
    let outcome = released(&granted);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    storage.expect_release().times(3).returning(move |_| {
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Err(unavailable()),
            1 => Err(StorageError::Transient {
                message: "deadlock".into(),
                source: None,
            }),
            _ => Ok(outcome.clone()),
        }
    });
    let policy = RetryPolicy::new(4, Duration::from_millis(10), 3.0, None).unwrap();
    let manager = ProxyManager::new(storage)
        .with_config(ManagerConfig::default().with_release_retry(policy))
        .unwrap();
    let start = tokio::time::Instant::now();
    assert!(manager.release(&granted).await.unwrap().was_released());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(10 + 30));
}

#[tokio::test(start_paused = true)]
async fn release_gives_up_within_its_policy_and_never_retries_permanent_errors() {
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_release()
        .times(3)
        .returning(|_| Err(unavailable()));
    let policy = RetryPolicy::new(3, Duration::from_millis(100), 2.0, None).unwrap();
    let manager = ProxyManager::new(storage)
        .with_config(ManagerConfig::default().with_release_retry(policy))
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = manager.release(&lease()).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_release()
        .times(1)
        .returning(|id| Err(StorageError::not_found("lease", id)));
    let manager = ProxyManager::new(storage);
    let err = manager.release(&lease()).await.unwrap_err();
    assert!(matches!(
        err,
        PharoxError::Storage(StorageError::NotFound {
            entity: "lease",
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_default_release_retry_waits_a_bounded_time() {
    let policy = pharox::default_release_retry();
    let waited: Duration = (1..policy.max_attempts())
        .map(|n| policy.delay_after(n))
        .sum();
    assert_eq!(waited, Duration::from_millis(4260));
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_release()
        .times(policy.max_attempts() as usize)
        .returning(|_| Err(unavailable()));
    let manager = ProxyManager::new(storage);
    let start = tokio::time::Instant::now();
    manager.release(&lease()).await.unwrap_err();
    assert_eq!(start.elapsed(), waited);
}

#[tokio::test(start_paused = true)]
async fn renew_retries_retryable_failures() {
    let mut storage = MockProxyStorage::waiting();
    let granted = lease();
    let renewed = granted.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    storage.expect_renew().times(2).returning(move |_, _| {
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Err(unavailable()),
            _ => Ok(renewed.clone()),
        }
    });
    let manager = ProxyManager::new(storage);
    let lease = manager
        .renew(&granted, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(lease.id, granted.id);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn acquire_with_retry_repeats_one_lease_id_so_a_lost_reply_cannot_lease_twice() {
    let mut storage = mock_with_consumer();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ids);
    let granted = lease();
    storage.expect_acquire().times(3).returning(move |request| {
        let mut ids = seen.lock();
        ids.push(request.lease_id);
        match ids.len() {
            1 => Err(unavailable()),
            2 => Ok(None),
            _ => Ok(Some(granted.clone())),
        }
    });
    let manager = ProxyManager::new(storage);
    let policy = RetryPolicy::new(3, Duration::from_millis(1), 1.0, None).unwrap();
    assert!(
        manager
            .acquire_with_retry("eu", &policy)
            .await
            .unwrap()
            .is_some()
    );
    let ids = ids.lock();
    assert!(ids[0].is_some());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}

#[tokio::test]
async fn with_lease_releases_when_the_task_fails() {
    let mut storage = mock_with_consumer();
    let granted = lease();
    let outcome = released(&granted);
    let id = granted.id;
    storage
        .expect_acquire()
        .times(1)
        .returning(move |_| Ok(Some(granted.clone())));
    storage
        .expect_release()
        .withf(move |lease_id| *lease_id == id)
        .times(1)
        .returning(move |_| Ok(outcome.clone()));
    let manager = ProxyManager::new(storage);
    let err = manager
        .with_lease("eu", |_lease| async { Err::<(), _>("scrape failed") })
        .await
        .unwrap_err();
    assert!(matches!(err, WithLeaseError::Task("scrape failed")));
}

#[tokio::test(start_paused = true)]
async fn with_lease_reports_a_failed_release_and_a_miss() {
    let mut storage = mock_with_consumer();
    let granted = lease();
    storage
        .expect_acquire()
        .times(1)
        .returning(move |_| Ok(Some(granted.clone())));
    // Every attempt of the default release retry fails: the last error is returned.
    storage
        .expect_release()
        .times(pharox::default_release_retry().max_attempts() as usize)
        .returning(|_| Err(unavailable()));
    let manager = ProxyManager::new(storage);
    let err = manager
        .with_lease("eu", |_| async { Ok::<_, ()>(1) })
        .await
        .unwrap_err();
    assert!(matches!(&err, WithLeaseError::Pharox(e) if e.is_retryable()));

    let mut storage = mock_with_consumer();
    storage.expect_acquire().times(1).returning(|_| Ok(None));
    let manager = ProxyManager::new(storage);
    let err = manager
        .with_lease("eu", |_| async { Ok::<_, ()>(1) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, WithLeaseError::Pharox(PharoxError::NoProxyAvailable { pool }) if pool == "eu")
    );
}

#[tokio::test]
async fn with_lease_releases_when_the_task_is_cancelled() {
    let storage = Arc::new(memory_pool(1, 1).await);
    let manager = Arc::new(ProxyManager::from_arc(storage.clone()));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            manager
                .with_lease("eu", |_lease| async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<(), ()>>().await
                })
                .await
        })
    };
    started_rx.await.unwrap();
    assert_eq!(storage.pool_stats("eu").await.unwrap().total_leases, 1);
    task.abort();
    let _ = task.await;
    // The guard released in a spawned task; let it run.
    for _ in 0..100 {
        if storage.pool_stats("eu").await.unwrap().total_leases == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(storage.pool_stats("eu").await.unwrap().total_leases, 0);
    assert!(manager.acquire("eu").await.unwrap().is_some());
}

#[derive(Default)]
struct Recorder {
    acquires: Mutex<Vec<(bool, String, Option<PoolStats>)>>,
    releases: Mutex<Vec<(Duration, Option<PoolStats>)>>,
}

impl LeaseObserver for Recorder {
    fn on_acquire(&self, event: &AcquireEvent<'_>) {
        assert!(event.completed_at >= event.started_at);
        self.acquires.lock().push((
            event.lease.is_some(),
            event.consumer.to_owned(),
            event.pool_stats.cloned(),
        ));
    }

    fn on_release(&self, event: &ReleaseEvent<'_>) {
        self.releases
            .lock()
            .push((event.lease_duration, event.pool_stats.cloned()));
    }
}

#[tokio::test]
async fn observers_see_hits_misses_and_releases_with_opt_in_stats() {
    let recorder = Arc::new(Recorder::default());
    let manager = ProxyManager::new(memory_pool(1, 1).await)
        .with_config(ManagerConfig::default().with_pool_stats(true))
        .unwrap()
        .with_observer(recorder.clone());
    let lease = manager
        .acquire(LeaseRequest::new("eu").consumer("w1"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        manager
            .acquire(LeaseRequest::new("eu").consumer("w1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(manager.release(&lease).await.unwrap().was_released());
    assert!(
        !manager.release(&lease).await.unwrap().was_released(),
        "second release is a no-op"
    );

    let acquires = recorder.acquires.lock();
    assert_eq!(acquires.len(), 2);
    assert!(acquires[0].0 && !acquires[1].0);
    assert_eq!(acquires[0].1, "w1");
    assert_eq!(acquires[0].2.as_ref().unwrap().leased_proxies, 1);
    let releases = recorder.releases.lock();
    assert_eq!(
        releases.len(),
        1,
        "only the release that ended the lease is observed"
    );
    assert_eq!(releases[0].1.as_ref().unwrap().total_leases, 0);
}

#[tokio::test]
async fn pool_stats_are_not_queried_unless_enabled() {
    let mut storage = mock_with_consumer();
    storage.expect_acquire().times(1).returning(|_| Ok(None));
    storage.expect_pool_stats().times(0);
    let manager = ProxyManager::new(storage).with_observer(Arc::new(Recorder::default()));
    assert!(manager.acquire("eu").await.unwrap().is_none());
}

#[tokio::test]
async fn release_event_carries_the_lease_duration() {
    let mut storage = MockProxyStorage::waiting();
    let granted = lease();
    let outcome = released(&granted);
    storage
        .expect_release()
        .times(1)
        .returning(move |_| Ok(outcome.clone()));
    let recorder = Arc::new(Recorder::default());
    let manager = ProxyManager::new(storage).with_observer(recorder.clone());
    manager.release(&granted).await.unwrap();
    assert_eq!(recorder.releases.lock()[0].0, Duration::from_secs(7));
}

#[tokio::test]
async fn renew_and_release_round_trip_on_memory() {
    let manager = ProxyManager::new(memory_pool(2, 1).await);
    let a = manager.acquire("eu").await.unwrap().unwrap();
    let b = manager.acquire("eu").await.unwrap().unwrap();
    assert_ne!(a.proxy_id, b.proxy_id);
    assert!(manager.acquire("eu").await.unwrap().is_none());
    let renewed = manager.renew(&a, Duration::from_secs(900)).await.unwrap();
    assert!(renewed.expires_at > a.expires_at);
    assert!(matches!(
        manager.renew(&a, Duration::ZERO).await,
        Err(PharoxError::Invalid(_))
    ));
    manager.release(&a).await.unwrap();
    let c = manager.acquire("eu").await.unwrap().unwrap();
    assert_eq!(c.proxy_id, a.proxy_id);
    let stats = manager.pool_stats("eu").await.unwrap();
    assert_eq!((stats.total_proxies, stats.total_leases), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn retry_covers_a_consumer_that_cannot_be_created_yet() {
    let mut storage = MockProxyStorage::waiting();
    let id = ConsumerId::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    storage
        .expect_ensure_consumer()
        .times(2)
        .returning(move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(unavailable())
            } else {
                Ok(id)
            }
        });
    let granted = lease();
    storage
        .expect_acquire()
        .times(1)
        .returning(move |_| Ok(Some(granted.clone())));
    let manager = ProxyManager::new(storage);
    let policy = RetryPolicy::new(2, Duration::from_millis(50), 2.0, None).unwrap();
    assert!(
        manager
            .acquire_with_retry("eu", &policy)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_prepared_request_resolves_its_consumer_once() {
    let mut storage = mock_with_consumer();
    storage
        .expect_acquire()
        .withf(|r| r.pool_name == "eu" && r.selector == pharox::Selector::Random)
        .times(3)
        .returning(|_| Ok(None));
    let manager = ProxyManager::new(storage);
    let prepared = manager
        .prepare(
            LeaseRequest::new("eu")
                .consumer("w9")
                .selector(pharox::Selector::Random),
        )
        .await
        .unwrap();
    assert_eq!(prepared.consumer(), "w9");
    for _ in 0..3 {
        assert!(manager.acquire_prepared(&prepared).await.unwrap().is_none());
    }
}

/// A storage that answers at once: the manager takes its answer and never
/// awaits the futures.
#[tokio::test(start_paused = true)]
async fn an_immediate_answer_is_taken_without_awaiting() {
    let mut storage = MockProxyStorage::new();
    let granted = lease();
    let outcome = released(&granted);
    storage
        .expect_release_now()
        .times(1)
        .returning(move |_| Some(Ok(outcome.clone())));
    storage.expect_release().never();
    let manager = ProxyManager::new(storage);
    assert!(manager.release(&granted).await.unwrap().was_released());
}

/// An immediate answer worth retrying goes through the release retries all
/// the same (the same policy, awaited through `release`).
#[tokio::test(start_paused = true)]
async fn an_immediate_retryable_failure_is_retried() {
    let mut storage = MockProxyStorage::new();
    let granted = lease();
    let outcome = released(&granted);
    storage
        .expect_release_now()
        .returning(|_| Some(Err(unavailable())));
    storage
        .expect_release()
        .times(1)
        .returning(move |_| Ok(outcome.clone()));
    let policy = RetryPolicy::new(3, Duration::from_millis(10), 2.0, None).unwrap();
    let manager = ProxyManager::new(storage)
        .with_config(ManagerConfig::default().with_release_retry(policy))
        .unwrap();
    assert!(manager.release(&granted).await.unwrap().was_released());
}

/// A permanent immediate failure is the answer: no retry, no `release`.
#[tokio::test(start_paused = true)]
async fn an_immediate_permanent_failure_is_returned() {
    let mut storage = MockProxyStorage::new();
    let granted = lease();
    storage
        .expect_release_now()
        .times(1)
        .returning(|id| Some(Err(StorageError::not_found("lease", id))));
    storage.expect_release().never();
    let manager = ProxyManager::new(storage);
    let err = manager.release(&granted).await.unwrap_err();
    assert!(!err.is_retryable());
}
