//! ProxyManager with outcomes, sessions and targets: argument checks and
//! error paths against mocked storage, behaviour against the in-memory
//! adapter. Backoff runs on tokio's paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pharox::ports::MockProxyStorage;
use pharox::{
    ConsumerId, LeaseId, LeaseObserver, LeaseRequest, ManagerConfig, MemoryStorage, Outcome,
    OutcomeEvent, PharoxError, Proxy, ProxyFailureKind, ProxyManager, ProxyPool, ProxyProtocol,
    ProxyStorage, ReleaseEvent, ReleaseOutcome, SessionKey, SessionRequest, StorageError,
    TargetHost, UsagePolicy, WithLeaseError,
};

fn unavailable() -> StorageError {
    StorageError::Unavailable {
        message: "connection refused".into(),
        source: None,
    }
}

fn invalid_field(err: &PharoxError) -> &str {
    match err {
        PharoxError::Invalid(e) => &e.field,
        other => panic!("expected an invalid-input error, got {other}"),
    }
}

async fn one_proxy_pool(max_concurrency: u32) -> (Arc<MemoryStorage>, Proxy) {
    let storage = MemoryStorage::new();
    let pool = storage
        .save_pool(&ProxyPool::new("eu").unwrap())
        .await
        .unwrap();
    let proxy = Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http)
        .max_concurrency(max_concurrency)
        .build()
        .unwrap();
    let proxy = storage.save_proxy(&proxy).await.unwrap();
    (Arc::new(storage), proxy)
}

#[derive(Default)]
struct OutcomeRecorder {
    outcomes: Mutex<Vec<(String, bool, Option<f64>)>>,
    releases: Mutex<Vec<Option<String>>>,
}

impl LeaseObserver for OutcomeRecorder {
    fn on_outcome(&self, event: &OutcomeEvent<'_>) {
        self.outcomes.lock().push((
            event.outcome.kind().to_owned(),
            event.on_release,
            event.proxy.map(|p| p.usage.error_score),
        ));
    }

    fn on_release(&self, event: &ReleaseEvent<'_>) {
        self.releases
            .lock()
            .push(event.outcome.map(|o| o.kind().to_owned()));
    }
}

#[tokio::test]
async fn sessions_and_targets_are_checked_before_anything_is_created() {
    // No expectations: any storage call would panic (the consumer included).
    let manager = ProxyManager::new(MockProxyStorage::waiting());
    let cases = [
        (LeaseRequest::new("eu").session("two words"), "session"),
        (LeaseRequest::new("eu").session(""), "session"),
        (
            LeaseRequest::new("eu")
                .session("k")
                .session_ttl(Duration::ZERO),
            "session.ttl",
        ),
        (
            LeaseRequest::new("eu").target("https://shop.example/"),
            "target",
        ),
        (LeaseRequest::new("eu").target(" "), "target"),
    ];
    for (request, field) in cases {
        let err = manager.acquire(request).await.unwrap_err();
        assert_eq!(invalid_field(&err), field, "{err}");
    }
}

#[tokio::test]
async fn a_session_gets_the_policys_ttl_unless_it_sets_one_and_targets_are_normalised() {
    let policy = UsagePolicy {
        session_ttl: Duration::from_secs(42),
        ..UsagePolicy::default()
    };
    let mut storage = MockProxyStorage::waiting();
    let consumer = ConsumerId::new();
    storage
        .expect_ensure_consumer()
        .returning(move |_| Ok(consumer));
    let key = SessionKey::new("checkout-1").unwrap();
    let default_ttl = Some(SessionRequest::new(key.clone(), Duration::from_secs(42)));
    let own_ttl = Some(SessionRequest::new(key, Duration::from_secs(7)));
    let target = Some(TargetHost::new("shop.example").unwrap());
    storage
        .expect_acquire()
        .withf(move |r| r.session == default_ttl && r.target == target)
        .times(1)
        .returning(|_| Ok(None));
    storage
        .expect_acquire()
        .withf(move |r| r.session == own_ttl && r.target.is_none())
        .times(1)
        .returning(|_| Ok(None));
    let manager = ProxyManager::new(storage)
        .with_config(ManagerConfig::default().with_usage_policy(policy))
        .unwrap();
    let first = LeaseRequest::new("eu")
        .session("checkout-1")
        .target("Shop.EXAMPLE");
    assert!(manager.acquire(first).await.unwrap().is_none());
    let second = LeaseRequest::new("eu")
        .session("checkout-1")
        .session_ttl(Duration::from_secs(7));
    assert!(manager.acquire(second).await.unwrap().is_none());
}

#[tokio::test]
async fn an_invalid_usage_policy_is_refused_by_the_config() {
    let bad = UsagePolicy {
        score_threshold: -1.0,
        ..UsagePolicy::default()
    };
    let err = ProxyManager::new(MockProxyStorage::waiting())
        .with_config(ManagerConfig::default().with_usage_policy(bad))
        .unwrap_err();
    assert_eq!(invalid_field(&err), "usage.score_threshold");
}

#[tokio::test]
async fn an_invalid_outcome_never_reaches_the_storage() {
    let manager = ProxyManager::new(MockProxyStorage::waiting());
    let nan = Outcome::Success {
        target: None,
        latency_ms: Some(f64::NAN),
    };
    let err = manager.report(LeaseId::new(), &nan).await.unwrap_err();
    assert_eq!(invalid_field(&err), "outcome.latency_ms");
    let err = manager
        .release_with_outcome(LeaseId::new(), Some(nan))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "outcome.latency_ms");
}

#[tokio::test(start_paused = true)]
async fn a_report_is_tried_once_because_a_lost_reply_may_have_counted() {
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_report_outcome()
        .times(1)
        .returning(|_, _, _| Err(unavailable()));
    let manager = ProxyManager::new(storage);
    let err = manager
        .report(LeaseId::new(), &Outcome::success())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_release_with_an_outcome_is_retried_and_a_retry_that_finds_it_released_applies_nothing() {
    let mut storage = MockProxyStorage::waiting();
    let lease_id = LeaseId::new();
    let mut calls = 0;
    storage
        .expect_release_with_outcome()
        .withf(move |id, outcome, _| *id == lease_id && outcome.is_some())
        .times(2)
        .returning(move |id, _, _| {
            calls += 1;
            match calls {
                1 => Err(unavailable()),
                _ => Ok(ReleaseOutcome::AlreadyReleased {
                    lease_id: id,
                    released_at: None,
                }),
            }
        });
    storage.expect_release().times(0);
    let recorder = Arc::new(OutcomeRecorder::default());
    let manager = ProxyManager::new(storage).with_observer(recorder.clone());
    let outcome = manager
        .release_with_outcome(
            lease_id,
            Some(Outcome::proxy_failure(ProxyFailureKind::Timeout)),
        )
        .await
        .unwrap();
    assert!(!outcome.was_released());
    assert!(recorder.outcomes.lock().is_empty(), "nothing was applied");
    assert!(recorder.releases.lock().is_empty());
}

#[tokio::test]
async fn with_lease_reporting_applies_the_mapped_outcome_with_the_release() {
    let (storage, proxy) = one_proxy_pool(1).await;
    let recorder = Arc::new(OutcomeRecorder::default());
    let manager = ProxyManager::from_arc(storage.clone()).with_observer(recorder.clone());
    let err = manager
        .with_lease_reporting(
            "eu",
            |_lease| async { Err::<(), _>("connection reset by proxy") },
            |result| {
                result
                    .is_err()
                    .then(|| Outcome::proxy_failure(ProxyFailureKind::Protocol))
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        WithLeaseError::Task("connection reset by proxy")
    ));
    let stored = storage.get_proxy(proxy.id).await.unwrap();
    assert_eq!(stored.usage.error_score, 1.0);
    assert_eq!(stored.current_leases, 0, "released");
    assert_eq!(
        *recorder.outcomes.lock(),
        vec![("proxy_failure".to_owned(), true, None)]
    );
    assert_eq!(
        *recorder.releases.lock(),
        vec![Some("proxy_failure".to_owned())]
    );

    // A success maps to nothing here: a plain release, no outcome event.
    manager
        .with_lease_reporting("eu", |_lease| async { Ok::<_, ()>(()) }, |_| None)
        .await
        .unwrap();
    assert_eq!(recorder.outcomes.lock().len(), 1);
    assert_eq!(
        storage.get_proxy(proxy.id).await.unwrap().usage.error_score,
        1.0
    );
}

#[tokio::test]
async fn reports_cool_a_proxy_down_and_the_manager_stops_leasing_it() {
    let (storage, proxy) = one_proxy_pool(4).await;
    let recorder = Arc::new(OutcomeRecorder::default());
    let manager = ProxyManager::from_arc(storage.clone()).with_observer(recorder.clone());
    let lease = manager.acquire("eu").await.unwrap().unwrap();
    let failure = Outcome::proxy_failure(ProxyFailureKind::ConnectRefused);
    for expected in [1.0, 2.0] {
        let after = manager.report(lease.id, &failure).await.unwrap();
        assert_eq!(after.usage.error_score, expected);
        assert!(after.usage.cooldown_until.is_none());
    }
    let after = manager.report(lease.id, &failure).await.unwrap();
    assert!(after.usage.cooldown_until.is_some(), "threshold 3 reached");
    assert!(manager.acquire("eu").await.unwrap().is_none());
    let stats = manager.pool_stats("eu").await.unwrap();
    assert_eq!(
        (stats.available_proxies, stats.cooling_down_proxies),
        (0, 1)
    );
    assert_eq!(after.id, proxy.id);
    assert_eq!(
        recorder
            .outcomes
            .lock()
            .iter()
            .map(|(_, on_release, score)| (*on_release, *score))
            .collect::<Vec<_>>(),
        vec![(false, Some(1.0)), (false, Some(2.0)), (false, Some(3.0))]
    );
    // The lease is still held and is released normally.
    assert!(manager.release(&lease).await.unwrap().was_released());
    let err = manager.report(lease.id, &failure).await.unwrap_err();
    assert!(
        matches!(err, PharoxError::Storage(StorageError::LeaseNotActive(id)) if id == lease.id),
        "{err}"
    );
}
