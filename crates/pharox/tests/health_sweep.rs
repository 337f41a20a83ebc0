//! Real sweeps: 1,000 proxy records behind real HTTP, SOCKS5 and SOCKS4
//! servers on 127.0.0.1, probed with the HTTP probe at concurrency 64, every
//! result persisted, in both storage adapters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pharox::{
    HealthCheckOptions, HealthOrchestrator, HealthPolicy, MemoryStorage, Proxy, ProxyPool,
    ProxyProtocol, ProxyStatus, ProxyStorage,
};
use pharox_adapter_http_probe::HttpProbe;
use pharox_adapter_postgres::testing::TestSchema;
use pharox_test_proxies::{HttpProxy, Socks4Server, Socks5Server, TargetServer, closed_port};

const PROXIES: usize = 1000;

/// Seeds 1,000 proxies over three live servers plus one dead address, sweeps
/// them and checks that every result was persisted with the right status.
async fn sweep_persists_everything(storage: Arc<dyn ProxyStorage>) {
    let target = TargetServer::start().await.unwrap();
    let http = HttpProxy::start().await.unwrap();
    let socks5 = Socks5Server::start_with_auth("user", "p@ss").await.unwrap();
    let socks4 = Socks4Server::start().await.unwrap();
    let dead = closed_port().unwrap();

    let pool = storage
        .save_pool(&ProxyPool::new(format!("sweep-{}", pharox::PoolId::new())).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..PROXIES)
        .map(|i| {
            let (addr, protocol) = match i % 10 {
                0..=3 => (http.addr(), ProxyProtocol::Http),
                4..=6 => (socks5.addr(), ProxyProtocol::Socks5),
                7 | 8 => (socks4.addr(), ProxyProtocol::Socks4),
                _ => (dead, ProxyProtocol::Http),
            };
            let mut builder = Proxy::builder(pool.id, addr.ip().to_string(), addr.port(), protocol);
            if protocol == ProxyProtocol::Socks5 {
                builder = builder.credentials("user", "p@ss");
            }
            builder.build().unwrap()
        })
        .collect();
    for chunk in proxies.chunks(250) {
        storage.add_proxies(chunk).await.unwrap();
    }

    let orchestrator =
        HealthOrchestrator::builder(Arc::clone(&storage), Arc::new(HttpProbe::new().unwrap()))
            .options(HealthCheckOptions {
                target_url: target.url("/ok"),
                timeout: Duration::from_secs(5),
                slow_threshold: None,
                ..HealthCheckOptions::default()
            })
            .policy(HealthPolicy::immediate())
            .concurrency(64)
            .build()
            .unwrap();
    let summary = orchestrator
        .sweep_pool(&pool.name)
        .await
        .unwrap()
        .summarize()
        .await;
    assert_eq!(summary.checked, PROXIES);
    assert_eq!(summary.not_persisted, 0, "every result persisted");
    assert_eq!(summary.active, 900);
    assert_eq!(summary.inactive, 100, "the dead address fails");

    let stored = storage.list_proxies(pool.id).await.unwrap();
    assert_eq!(stored.len(), PROXIES);
    for proxy in &stored {
        assert!(proxy.checked_at.is_some(), "{proxy:?} not checked");
        let last = storage
            .last_health_result(proxy.id)
            .await
            .unwrap()
            .expect("a record per proxy");
        assert_eq!(last.status_after, proxy.status);
        if proxy.port == dead.port() {
            assert_eq!(proxy.status, ProxyStatus::Inactive);
            assert!(last.error.is_some());
        } else {
            assert_eq!(
                proxy.status,
                ProxyStatus::Active,
                "{proxy:?}: {:?}",
                last.error
            );
            assert!(proxy.health.last_latency_ms.is_some());
        }
    }
    storage.delete_pool(pool.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_sweep_of_1000_proxies_persists_in_memory() {
    sweep_persists_everything(Arc::new(MemoryStorage::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_sweep_of_1000_proxies_persists_in_postgres() {
    let schema = TestSchema::create_with(16).await.unwrap();
    sweep_persists_everything(Arc::new(schema.storage().clone())).await;
    schema.drop_schema().await.unwrap();
}
