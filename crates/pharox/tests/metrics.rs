//! `MetricsObserver` (feature `metrics`): the series it records for
//! acquires (hit, miss, storage error), releases, lease durations, outcomes
//! and health checks, read back from a real Prometheus registry of the
//! test's own. Health checks probe real servers on 127.0.0.1.
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pharox::metrics::HISTOGRAM_BUCKETS;
use pharox::ports::MockProxyStorage;
use pharox::{
    Clock, ConsumerId, HealthCheckOptions, HealthOrchestrator, HealthPolicy, LeaseObserver,
    ManualClock, MemoryStorage, MetricsObserver, Outcome, PharoxError, Proxy, ProxyFailureKind,
    ProxyManager, ProxyPool, ProxyProtocol, ProxyStatus, ProxyStorage, SimulatedProbe,
    StorageError,
};
use pharox_adapter_http_probe::HttpProbe;
use pharox_test_proxies::{HttpProxy, TargetServer, closed_port};

/// An observer recording into a registry of its own, and that registry.
fn observer() -> (Arc<MetricsObserver>, PrometheusHandle) {
    observer_with(|o| o)
}

fn observer_with(
    configure: impl FnOnce(MetricsObserver) -> MetricsObserver,
) -> (Arc<MetricsObserver>, PrometheusHandle) {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .unwrap();
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let observer = configure(MetricsObserver::with_recorder(Arc::new(recorder)));
    (Arc::new(observer), handle)
}

/// The value of `name{labels}` (exactly these labels) in the rendered text.
fn sample(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = handle.render();
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (found, rest) = series.split_once('{').unwrap_or((series, "}"));
            if found != name {
                return None;
            }
            let got: BTreeMap<&str, &str> = rest
                .trim_end_matches('}')
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once("=\""))
                .map(|(k, v)| (k, v.trim_end_matches('"')))
                .collect();
            (got == wanted).then(|| value.parse().unwrap())
        })
}

fn value(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(handle, name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", handle.render()))
}

async fn pool_with_proxy(storage: &dyn ProxyStorage, name: &str) -> (ProxyPool, Proxy) {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxy = storage
        .save_proxy(
            &Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http)
                .max_concurrency(1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    (pool, proxy)
}

fn unavailable() -> StorageError {
    StorageError::Unavailable {
        message: "connection refused".into(),
        source: None,
    }
}

#[tokio::test]
async fn hits_and_misses_are_counted_by_pool() {
    let (observer, handle) = observer();
    let storage = MemoryStorage::new();
    pool_with_proxy(&storage, "eu").await;
    let manager = ProxyManager::new(storage).with_observer(observer);

    let lease = manager.acquire("eu").await.unwrap();
    assert!(lease.is_some());
    assert!(manager.acquire("eu").await.unwrap().is_none());
    assert!(manager.acquire("eu").await.unwrap().is_none());

    let acquire = |result| {
        value(
            &handle,
            "pharox_acquire_total",
            &[("pool", "eu"), ("result", result)],
        )
    };
    assert_eq!(acquire("hit"), 1.0);
    assert_eq!(acquire("miss"), 2.0);
    assert_eq!(acquire("error"), 0.0, "registered at zero");
    assert_eq!(
        value(
            &handle,
            "pharox_acquire_duration_seconds_count",
            &[("pool", "eu")]
        ),
        3.0
    );
}

#[tokio::test]
async fn a_storage_error_on_acquire_counts_as_error() {
    let (observer, handle) = observer();
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_ensure_consumer()
        .returning(|_| Ok(ConsumerId::new()));
    storage.expect_acquire().returning(|_| Err(unavailable()));
    let manager = ProxyManager::new(storage).with_observer(observer);

    let err = manager.acquire("eu").await.unwrap_err();
    assert!(
        matches!(err, PharoxError::Storage(StorageError::Unavailable { .. })),
        "{err}"
    );
    assert_eq!(
        value(
            &handle,
            "pharox_acquire_total",
            &[("pool", "eu"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &handle,
            "pharox_acquire_total",
            &[("pool", "eu"), ("result", "miss")]
        ),
        0.0
    );
}

#[tokio::test]
async fn observers_without_the_error_hook_still_work() {
    struct Counting(parking_lot::Mutex<usize>);
    impl LeaseObserver for Counting {
        fn on_acquire(&self, _: &pharox::AcquireEvent<'_>) {
            *self.0.lock() += 1;
        }
    }
    let counting = Arc::new(Counting(parking_lot::Mutex::new(0)));
    let mut storage = MockProxyStorage::waiting();
    storage
        .expect_ensure_consumer()
        .returning(|_| Ok(ConsumerId::new()));
    storage.expect_acquire().returning(|_| Err(unavailable()));
    let manager = ProxyManager::new(storage).with_observer(counting.clone());
    assert!(manager.acquire("eu").await.is_err());
    assert_eq!(*counting.0.lock(), 0, "on_acquire is not called for errors");
}

#[tokio::test]
async fn releases_record_the_lease_duration_and_name_the_pool() {
    let (observer, handle) = observer();
    let clock = Arc::new(ManualClock::starting_now());
    let storage = Arc::new(MemoryStorage::with_clock(clock.clone()));
    pool_with_proxy(storage.as_ref(), "eu").await;
    let manager = ProxyManager::from_arc(storage.clone())
        .with_clock(clock.clone() as Arc<dyn Clock>)
        .with_observer(observer.clone());

    let lease = manager.acquire("eu").await.unwrap().unwrap();
    clock.advance(Duration::from_secs(90));
    manager.release(&lease).await.unwrap();
    // A second release ends nothing: not counted.
    manager.release(&lease).await.unwrap();

    // A manager that never leased from the pool (another worker's lease)
    // names it too: one read of the pool, then cached.
    let lease = manager.acquire("eu").await.unwrap().unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let other = ProxyManager::from_arc(storage)
        .with_clock(clock as Arc<dyn Clock>)
        .with_observer(observer);
    other.release(&lease).await.unwrap();

    let pool = [("pool", "eu")];
    assert_eq!(value(&handle, "pharox_release_total", &pool), 2.0);
    let bucket = |le| {
        value(
            &handle,
            "pharox_lease_duration_seconds_bucket",
            &[("pool", "eu"), ("le", le)],
        )
    };
    assert_eq!(bucket("60"), 0.0);
    assert_eq!(bucket("120"), 1.0, "the 90 s lease");
    assert_eq!(bucket("3600"), 1.0);
    assert_eq!(bucket("7200"), 2.0, "the 2 h lease");
    assert_eq!(
        value(&handle, "pharox_lease_duration_seconds_sum", &pool),
        90.0 + 7200.0
    );
}

#[tokio::test]
async fn outcomes_are_counted_by_kind_reported_or_with_the_release() {
    let (observer, handle) = observer();
    let storage = MemoryStorage::new();
    pool_with_proxy(&storage, "eu").await;
    let manager = ProxyManager::new(storage).with_observer(observer);

    let lease = manager.acquire("eu").await.unwrap().unwrap();
    manager
        .report(lease.id, &Outcome::proxy_failure(ProxyFailureKind::Timeout))
        .await
        .unwrap();
    manager
        .release_with_outcome(lease.id, Some(Outcome::success()))
        .await
        .unwrap();

    let kind = |kind| {
        value(
            &handle,
            "pharox_outcomes_total",
            &[("pool", "eu"), ("kind", kind)],
        )
    };
    assert_eq!(kind("proxy_failure"), 1.0);
    assert_eq!(kind("success"), 1.0);
    assert_eq!(kind("blocked"), 0.0);
    assert_eq!(kind("target_error"), 0.0);
}

#[tokio::test]
async fn pool_names_past_the_limit_share_the_empty_label() {
    let (observer, handle) = observer_with(|o| o.max_pools(1));
    let storage = MemoryStorage::new();
    pool_with_proxy(&storage, "eu").await;
    let manager = ProxyManager::new(storage).with_observer(observer);

    manager.acquire("eu").await.unwrap().unwrap();
    for name in ["typo-1", "typo-2", "typo-3"] {
        assert!(manager.acquire(name).await.unwrap().is_none());
    }
    assert_eq!(
        value(
            &handle,
            "pharox_acquire_total",
            &[("pool", "eu"), ("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &handle,
            "pharox_acquire_total",
            &[("pool", ""), ("result", "miss")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &handle,
            "pharox_acquire_total",
            &[("pool", "typo-1"), ("result", "miss")]
        ),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_real_probes_are_counted_by_verdict() {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start().await.unwrap();
    let dead = closed_port().unwrap();
    let storage: Arc<dyn ProxyStorage> = Arc::new(MemoryStorage::new());
    let pool = storage
        .save_pool(&ProxyPool::new("probed").unwrap())
        .await
        .unwrap();
    let live = Proxy::builder(
        pool.id,
        http.addr().ip().to_string(),
        http.addr().port(),
        ProxyProtocol::Http,
    )
    .build()
    .unwrap();
    let gone = Proxy::builder(
        pool.id,
        dead.ip().to_string(),
        dead.port(),
        ProxyProtocol::Http,
    )
    .build()
    .unwrap();
    storage.add_proxies(&[live, gone]).await.unwrap();

    let (observer, handle) = observer();
    let orchestrator =
        HealthOrchestrator::builder(Arc::clone(&storage), Arc::new(HttpProbe::new().unwrap()))
            .options(HealthCheckOptions {
                target_url: target.url("/ok"),
                timeout: Duration::from_secs(5),
                slow_threshold: None,
                ..HealthCheckOptions::default()
            })
            .policy(HealthPolicy::immediate())
            .observer(observer.clone())
            .build()
            .unwrap();
    let summary = orchestrator
        .sweep_pool("probed")
        .await
        .unwrap()
        .summarize()
        .await;
    assert_eq!((summary.active, summary.inactive), (1, 1));

    let checks = |result| {
        value(
            &handle,
            "pharox_health_checks_total",
            &[("pool", "probed"), ("result", result)],
        )
    };
    assert_eq!(checks("active"), 1.0);
    assert_eq!(checks("inactive"), 1.0);
    assert_eq!(checks("error"), 0.0);

    // One proxy checked on its own, by an orchestrator that has not seen the
    // pool: its name is read from the storage.
    let alone =
        HealthOrchestrator::builder(Arc::clone(&storage), Arc::new(HttpProbe::new().unwrap()))
            .options(HealthCheckOptions {
                target_url: target.url("/ok"),
                timeout: Duration::from_secs(5),
                slow_threshold: None,
                ..HealthCheckOptions::default()
            })
            .observer(observer)
            .build()
            .unwrap();
    let proxies = storage.list_proxies(pool.id).await.unwrap();
    let live = proxies
        .iter()
        .find(|p| p.port == http.addr().port())
        .unwrap();
    let check = alone.check(live).await.unwrap();
    assert_eq!(check.status_after, Some(ProxyStatus::Active));
    assert_eq!(checks("active"), 2.0);
}

#[tokio::test]
async fn a_health_result_that_cannot_be_persisted_counts_as_error() {
    let pool = ProxyPool::new("eu").unwrap();
    let proxy = Proxy::builder(pool.id, "10.0.0.1", 8080, ProxyProtocol::Http)
        .build()
        .unwrap();
    let mut storage = MockProxyStorage::waiting();
    let known = pool.clone();
    storage
        .expect_get_pool()
        .returning(move |_| Ok(known.clone()));
    storage
        .expect_apply_health_result()
        .returning(|_, _| Err(unavailable()));
    let (observer, handle) = observer();
    let orchestrator = HealthOrchestrator::builder(
        Arc::new(storage),
        Arc::new(SimulatedProbe::new(Duration::ZERO)),
    )
    .observer(observer)
    .build()
    .unwrap();
    assert!(orchestrator.check(&proxy).await.is_err());
    assert_eq!(
        value(
            &handle,
            "pharox_health_checks_total",
            &[("pool", "eu"), ("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &handle,
            "pharox_health_checks_total",
            &[("pool", "eu"), ("result", "active")]
        ),
        0.0
    );
}
