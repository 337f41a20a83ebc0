//! SweepSummary's counts of one sweep (failures, transitions, skipped) and
//! stopping a sweep part-way, with simulated probes under paused time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pharox::{
    AcquireRequest, HealthCheckOptions, HealthCheckResult, HealthOrchestrator, HealthPolicy,
    HealthProbe, MemoryStorage, PoolId, Proxy, ProxyPool, ProxyProtocol, ProxyStatus, ProxyStorage,
    SimulatedProbe,
};

async fn seeded(n: usize, max_concurrency: u32) -> (Arc<MemoryStorage>, PoolId, Vec<Proxy>) {
    let storage = Arc::new(MemoryStorage::new());
    let pool = storage
        .save_pool(&ProxyPool::new("health").unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            Proxy::builder(
                pool.id,
                format!("10.2.0.{}", i + 1),
                8080,
                ProxyProtocol::Http,
            )
            .max_concurrency(max_concurrency)
            .build()
            .unwrap()
        })
        .collect();
    let proxies = storage.add_proxies(&proxies).await.unwrap();
    (storage, pool.id, proxies)
}

fn local_options() -> HealthCheckOptions {
    HealthCheckOptions {
        target_url: "http://127.0.0.1:9/health".into(),
        ..HealthCheckOptions::default()
    }
}

/// Fails the proxies whose address ends in an odd number, after `latency`;
/// passes the others at once.
struct OddFails {
    latency: Duration,
}

#[async_trait]
impl HealthProbe for OddFails {
    async fn probe(&self, proxy: &Proxy, options: &HealthCheckOptions) -> HealthCheckResult {
        let last: u32 = proxy.host.rsplit('.').next().unwrap().parse().unwrap();
        if last % 2 == 1 {
            tokio::time::sleep(self.latency).await;
            SimulatedProbe::new(Duration::ZERO)
                .with_verdict(ProxyStatus::Inactive)
                .probe(proxy, options)
                .await
        } else {
            SimulatedProbe::new(Duration::ZERO)
                .probe(proxy, options)
                .await
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_summary_counts_this_sweeps_failures_and_transitions() {
    let (storage, pool, _) = seeded(4, 10).await;
    let orchestrator = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(OddFails {
            latency: Duration::ZERO,
        }),
    )
    .options(local_options())
    .policy(HealthPolicy::new(2).unwrap())
    .build()
    .unwrap();
    let proxies = storage.list_proxies(pool).await.unwrap();
    let first = orchestrator.sweep(proxies.clone()).summarize().await;
    // Two failures, but one is not a streak: nobody became inactive yet.
    assert_eq!((first.total, first.checked, first.failed), (4, 4, 2));
    assert_eq!(
        (first.became_inactive, first.inactive, first.active),
        (0, 0, 4)
    );
    let second = orchestrator
        .sweep(storage.list_proxies(pool).await.unwrap())
        .summarize()
        .await;
    assert_eq!((second.failed, second.became_inactive), (2, 2));
    assert_eq!((second.active, second.inactive), (2, 2));
    assert_eq!(second.unchecked(), 0);
    // Back: the inactive ones pass and become active.
    let passing = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::ZERO)),
    )
    .options(local_options())
    .build()
    .unwrap();
    let third = passing
        .sweep(storage.list_proxies(pool).await.unwrap())
        .summarize()
        .await;
    assert_eq!((third.failed, third.became_active, third.active), (0, 2, 4));
}

#[tokio::test(start_paused = true)]
async fn stop_abandons_probes_in_flight_and_ends_the_stream() {
    let (storage, pool, _) = seeded(4, 10).await;
    let orchestrator = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(OddFails {
            latency: Duration::from_secs(3600),
        }),
    )
    .options(local_options())
    .concurrency(4)
    .build()
    .unwrap();
    let mut sweep = orchestrator.sweep(storage.list_proxies(pool).await.unwrap());
    let mut summary = sweep.summary();
    // The two even ones answer at once; the odd ones hang.
    for _ in 0..2 {
        summary.record(&sweep.next().await.unwrap());
    }
    sweep.stop();
    assert!(sweep.is_stopped());
    while let Some(item) = sweep.next().await {
        summary.record(&item);
    }
    assert_eq!(
        (summary.total, summary.checked, summary.unchecked()),
        (4, 2, 2)
    );
    for proxy in storage.list_proxies(pool).await.unwrap() {
        let records = storage.list_health_records(proxy.id, 5).await.unwrap();
        let checked = !proxy.host.ends_with(['1', '3']);
        assert_eq!(records.len(), usize::from(checked), "{}", proxy.host);
    }
}

#[tokio::test]
async fn skip_leased_leaves_exclusively_leased_proxies_alone() {
    let (storage, pool, proxies) = seeded(1, 1).await;
    let worker = storage.ensure_consumer("w").await.unwrap();
    storage
        .acquire(&AcquireRequest::new(
            "health",
            worker,
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .unwrap();
    // A shared proxy with a lease is not exclusive: it is checked.
    let shared = Proxy::builder(pool, "10.2.1.1", 8080, ProxyProtocol::Http)
        .max_concurrency(5)
        .build()
        .unwrap();
    storage.save_proxy(&shared).await.unwrap();
    storage
        .acquire(&AcquireRequest::new(
            "health",
            worker,
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .unwrap();
    let skipping = HealthOrchestrator::builder(
        storage.clone(),
        Arc::new(SimulatedProbe::new(Duration::ZERO)),
    )
    .options(local_options())
    .skip_leased(true)
    .build()
    .unwrap();
    let sweep = skipping.sweep(storage.list_proxies(pool).await.unwrap());
    assert_eq!((sweep.total(), sweep.skipped()), (1, 1));
    let summary = sweep.summarize().await;
    assert_eq!((summary.skipped, summary.checked), (1, 1));
    assert!(
        storage
            .list_health_records(proxies[0].id, 5)
            .await
            .unwrap()
            .is_empty()
    );
}
