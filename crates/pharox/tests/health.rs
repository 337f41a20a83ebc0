//! HealthOrchestrator: streak policy over sweeps, per-protocol routing,
//! cancellation and deadlines. Probes here are simulated (no network); the
//! real-proxy sweeps live in `health_sweep.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pharox::{
    HealthCheckOptions, HealthCheckResult, HealthOrchestrator, HealthPolicy, HealthProbe,
    MemoryStorage, PoolId, Proxy, ProxyPool, ProxyProtocol, ProxyStatus, ProxyStorage,
    SimulatedProbe,
};

async fn seeded(protocols: &[ProxyProtocol]) -> (Arc<MemoryStorage>, PoolId) {
    let storage = Arc::new(MemoryStorage::new());
    let pool = storage
        .save_pool(&ProxyPool::new("health").unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = protocols
        .iter()
        .enumerate()
        .map(|(i, protocol)| {
            Proxy::builder(
                pool.id,
                format!("10.1.{}.{}", i / 250, i % 250 + 1),
                1080,
                *protocol,
            )
            .build()
            .unwrap()
        })
        .collect();
    storage.add_proxies(&proxies).await.unwrap();
    (storage, pool.id)
}

fn local_options() -> HealthCheckOptions {
    HealthCheckOptions {
        target_url: "http://127.0.0.1:9/health".into(),
        ..HealthCheckOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn failures_make_a_proxy_inactive_only_after_the_streak() {
    let (storage, pool) = seeded(&[ProxyProtocol::Http]).await;
    let failing = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::ZERO).with_verdict(ProxyStatus::Inactive)),
    )
    .options(local_options())
    .policy(HealthPolicy::new(3).unwrap())
    .build()
    .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let summary = failing
            .sweep_pool("health")
            .await
            .unwrap()
            .summarize()
            .await;
        assert_eq!(summary.checked, 1);
        statuses.push(storage.list_proxies(pool).await.unwrap()[0].status);
    }
    assert_eq!(
        statuses,
        [
            ProxyStatus::Active,
            ProxyStatus::Active,
            ProxyStatus::Inactive
        ]
    );
    let proxy = storage.list_proxies(pool).await.unwrap().remove(0);
    assert_eq!(proxy.health.consecutive_failures, 3);
    assert_eq!(
        proxy.health.last_error.as_deref(),
        Some("simulated failure")
    );

    // One success brings it back and resets the streak.
    let healthy = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::from_millis(3))),
    )
    .options(local_options())
    .build()
    .unwrap();
    let check = healthy.check(&proxy).await.unwrap();
    assert_eq!(check.status_before, ProxyStatus::Inactive);
    assert_eq!(check.status_after, Some(ProxyStatus::Active));
    let proxy = storage.get_proxy(proxy.id).await.unwrap();
    assert_eq!(proxy.health.consecutive_failures, 0);
    assert_eq!(proxy.health.last_latency_ms, Some(3.0));
    assert_eq!(
        storage
            .list_health_records(proxy.id, 10)
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn banned_proxies_stay_banned() {
    let (storage, pool) = seeded(&[ProxyProtocol::Http]).await;
    let mut proxy = storage.list_proxies(pool).await.unwrap().remove(0);
    proxy.status = ProxyStatus::Banned;
    storage.save_proxy(&proxy).await.unwrap();
    let orchestrator = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::ZERO)),
    )
    .options(local_options())
    .build()
    .unwrap();
    let summary = orchestrator
        .sweep_pool("health")
        .await
        .unwrap()
        .summarize()
        .await;
    assert_eq!(summary.banned, 1);
    assert_eq!(
        storage.get_proxy(proxy.id).await.unwrap().status,
        ProxyStatus::Banned
    );
}

/// Records which options reached it and answers with a fixed verdict.
struct Recording {
    verdict: ProxyStatus,
    targets: parking_lot::Mutex<Vec<String>>,
}

#[async_trait]
impl HealthProbe for Recording {
    async fn probe(&self, proxy: &Proxy, options: &HealthCheckOptions) -> HealthCheckResult {
        self.targets.lock().push(options.target_url.clone());
        SimulatedProbe::new(Duration::ZERO)
            .with_verdict(self.verdict)
            .probe(proxy, options)
            .await
    }
}

#[tokio::test]
async fn protocols_get_their_own_probe_and_options() {
    let (storage, _) = seeded(&[
        ProxyProtocol::Http,
        ProxyProtocol::Socks5,
        ProxyProtocol::Socks4,
    ])
    .await;
    let default = Arc::new(Recording {
        verdict: ProxyStatus::Active,
        targets: Default::default(),
    });
    let socks4 = Arc::new(Recording {
        verdict: ProxyStatus::Slow,
        targets: Default::default(),
    });
    let socks5_options = HealthCheckOptions {
        target_url: "http://127.0.0.1:9/socks5".into(),
        ..HealthCheckOptions::default()
    };
    let orchestrator = HealthOrchestrator::builder(storage.clone(), default.clone())
        .options(local_options())
        .protocol_options(ProxyProtocol::Socks5, socks5_options)
        .protocol_probe(ProxyProtocol::Socks4, socks4.clone())
        .build()
        .unwrap();
    let summary = orchestrator
        .sweep_pool("health")
        .await
        .unwrap()
        .summarize()
        .await;
    assert_eq!((summary.active, summary.slow), (2, 1));
    let mut targets = default.targets.lock().clone();
    targets.sort();
    assert_eq!(
        targets,
        ["http://127.0.0.1:9/health", "http://127.0.0.1:9/socks5"]
    );
    assert_eq!(socks4.targets.lock().len(), 1);
}

#[tokio::test]
async fn invalid_options_are_rejected() {
    let storage = Arc::new(MemoryStorage::new());
    let probe = Arc::new(SimulatedProbe::new(Duration::ZERO));
    let bad = HealthCheckOptions {
        attempts: 6,
        ..local_options()
    };
    let err = HealthOrchestrator::builder(storage.clone(), probe.clone())
        .protocol_options(ProxyProtocol::Http, bad)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("protocol_options.http.health.attempts"),
        "{err}"
    );
    assert!(
        HealthOrchestrator::builder(storage, probe)
            .concurrency(0)
            .build()
            .is_err()
    );
}

/// Never answers; counts how many probes started and how many were dropped.
#[derive(Default)]
struct Hanging {
    started: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl HealthProbe for Hanging {
    async fn probe(&self, _proxy: &Proxy, _options: &HealthCheckOptions) -> HealthCheckResult {
        let _guard = DropCounter(Arc::clone(&self.dropped));
        self.started.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test]
async fn dropping_a_sweep_stops_outstanding_probes() {
    let (storage, _) = seeded(&[ProxyProtocol::Http; 100]).await;
    let probe = Arc::new(Hanging::default());
    let orchestrator = HealthOrchestrator::builder(storage, probe.clone())
        .options(local_options())
        .concurrency(16)
        .build()
        .unwrap();
    let sweep = orchestrator.sweep_pool("health").await.unwrap();
    while probe.started.load(Ordering::SeqCst) < 16 {
        tokio::task::yield_now().await;
    }
    drop(sweep);
    for _ in 0..1000 {
        if probe.dropped.load(Ordering::SeqCst) == 16 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        probe.dropped.load(Ordering::SeqCst),
        16,
        "every probe in flight is aborted"
    );
    assert_eq!(
        probe.started.load(Ordering::SeqCst),
        16,
        "no new probe starts after the drop"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_sweep() {
    let (storage, _) = seeded(&[ProxyProtocol::Http; 10]).await;
    let orchestrator = HealthOrchestrator::builder(
        storage,
        Arc::new(SimulatedProbe::new(Duration::from_secs(1))),
    )
    .options(local_options())
    .concurrency(5)
    .deadline(Duration::from_millis(1500))
    .build()
    .unwrap();
    let mut sweep = orchestrator.sweep_pool("health").await.unwrap();
    let mut checked = 0;
    while let Some(item) = sweep.next().await {
        item.unwrap();
        checked += 1;
    }
    assert_eq!(
        checked, 5,
        "the first wave finishes at 1 s, the second is cut at 1.5 s"
    );
    assert!(sweep.deadline_exceeded());
    assert_eq!(sweep.total(), 10);
}

#[tokio::test]
async fn a_sweep_of_1000_proxies_persists_every_result() {
    let (storage, pool) = seeded(&[ProxyProtocol::Socks5; 1000]).await;
    let orchestrator = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::from_millis(1))),
    )
    .options(local_options())
    .concurrency(64)
    .build()
    .unwrap();
    let summary = orchestrator
        .sweep_pool("health")
        .await
        .unwrap()
        .summarize()
        .await;
    assert_eq!(
        (summary.checked, summary.active, summary.not_persisted),
        (1000, 1000, 0)
    );
    for proxy in storage.list_proxies(pool).await.unwrap() {
        assert!(proxy.checked_at.is_some());
        assert_eq!(
            storage
                .list_health_records(proxy.id, 5)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert!(summary.latency_percentile(0.5).is_some());
}
