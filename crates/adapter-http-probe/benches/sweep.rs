//! A real health sweep: 1,000 proxy records on loopback (spread over a few
//! local HTTP, SOCKS4 and SOCKS5 servers, some with credentials), probed
//! with concurrency 64. The requirement is under 5 s per sweep; a timed
//! sweep asserts it before criterion measures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use pharox_adapter_http_probe::HttpProbe;
use pharox_domain::{HealthCheckOptions, PoolId, Proxy, ProxyProtocol, ProxyStatus};
use pharox_ports::HealthProbe;
use pharox_test_proxies::{HttpProxy, Socks4Server, Socks5Server, TargetServer};

const PROXIES: usize = 1_000;
const CONCURRENCY: usize = 64;

/// The servers, kept alive for the whole bench.
struct Lab {
    _target: TargetServer,
    _http: Vec<HttpProxy>,
    _socks5: Vec<Socks5Server>,
    _socks4: Vec<Socks4Server>,
    proxies: Vec<Proxy>,
    options: HealthCheckOptions,
}

async fn lab() -> Lab {
    let target = TargetServer::start().await.unwrap();
    let http = vec![
        HttpProxy::start().await.unwrap(),
        HttpProxy::start().await.unwrap(),
        HttpProxy::start_with_auth("bench", "bench-pw")
            .await
            .unwrap(),
    ];
    let socks5 = vec![
        Socks5Server::start().await.unwrap(),
        Socks5Server::start_with_auth("bench", "bench-pw")
            .await
            .unwrap(),
    ];
    let socks4 = vec![Socks4Server::start().await.unwrap()];
    let mut endpoints: Vec<(ProxyProtocol, SocketAddr, bool)> = vec![
        (ProxyProtocol::Http, http[0].addr(), false),
        (ProxyProtocol::Https, http[1].addr(), false),
        (ProxyProtocol::Http, http[2].addr(), true),
        (ProxyProtocol::Socks5, socks5[0].addr(), false),
        (ProxyProtocol::Socks5, socks5[1].addr(), true),
    ];
    endpoints.push((ProxyProtocol::Socks4, socks4[0].addr(), false));
    let pool = PoolId::new();
    let proxies = (0..PROXIES)
        .map(|i| {
            let (protocol, addr, auth) = endpoints[i % endpoints.len()];
            let mut b = Proxy::builder(pool, addr.ip().to_string(), addr.port(), protocol);
            if auth {
                b = b.credentials("bench", "bench-pw");
            }
            b.build().unwrap()
        })
        .collect();
    let options = HealthCheckOptions {
        target_url: target.url("/ok"),
        timeout: Duration::from_secs(5),
        attempts: 1,
        expected_status: Vec::new(),
        slow_threshold: Some(Duration::from_secs(2)),
        follow_redirects: false,
        headers: Vec::new(),
        remote_dns: false,
    };
    Lab {
        _target: target,
        _http: http,
        _socks5: socks5,
        _socks4: socks4,
        proxies,
        options,
    }
}

/// Probes every proxy, 64 at a time; returns how many came back active.
async fn sweep(probe: &HttpProbe, lab: &Lab) -> usize {
    futures::stream::iter(&lab.proxies)
        .map(|proxy| probe.probe(proxy, &lab.options))
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(r.status == ProxyStatus::Active))
        .count()
        .await
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let lab = rt.block_on(lab());
    let probe = HttpProbe::new().unwrap();

    // One timed sweep, asserted against the requirement.
    let start = Instant::now();
    let active = rt.block_on(sweep(&probe, &lab));
    let elapsed = start.elapsed();
    println!(
        "sweep of {PROXIES} loopback proxies, concurrency {CONCURRENCY}: {elapsed:?}, {active} active"
    );
    assert_eq!(active, PROXIES, "every proxy should be active");
    assert!(elapsed < Duration::from_secs(5), "sweep took {elapsed:?}");

    let mut group = c.benchmark_group("health_sweep");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("1000_proxies_concurrency_64", |b| {
        b.to_async(&rt).iter(|| async {
            let active = sweep(&probe, &lab).await;
            assert_eq!(active, PROXIES);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
