//! Acquire + release pairs through `MemoryStorage`, per pool size, selector
//! and with or without a filter.
//!
//! `cargo bench -p pharox-adapter-memory -- --quick` (add a name to pick,
//! e.g. `pair/first_available/1000`). The filter matches one proxy in ten.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pharox_adapter_memory::MemoryStorage;
use pharox_domain::{Proxy, ProxyFilter, ProxyPool, ProxyProtocol, Selector};
use pharox_ports::{AcquireRequest, ProxyStorage};
use tokio::runtime::Runtime;

const SIZES: [u32; 3] = [100, 1_000, 100_000];

/// A pool of `n` proxies with max_concurrency 1; one in ten is in "DE"
/// (what the filtered benchmarks ask for), the rest in "AR".
fn setup(rt: &Runtime, n: u32) -> (Arc<MemoryStorage>, AcquireRequest) {
    rt.block_on(async {
        let storage = Arc::new(MemoryStorage::new());
        let pool = storage
            .save_pool(&ProxyPool::new("bench").unwrap())
            .await
            .unwrap();
        let proxies: Vec<Proxy> = (0..n)
            .map(|i| {
                let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
                Proxy::builder(pool.id, host, 8080, ProxyProtocol::Http)
                    .country(if i % 10 == 9 { "DE" } else { "AR" })
                    .max_concurrency(1)
                    .build()
                    .unwrap()
            })
            .collect();
        storage.add_proxies(&proxies).await.unwrap();
        let consumer = storage.ensure_consumer("bench").await.unwrap();
        let request = AcquireRequest::new("bench", consumer, Duration::from_secs(60));
        (storage, request)
    })
}

fn pairs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pair");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in SIZES {
        for selector in Selector::ALL {
            for filtered in [false, true] {
                // A fresh pool per case: every selector used in a pool keeps
                // its index up to date, so sharing one would charge each
                // case for the selectors benchmarked before it.
                let (storage, base) = setup(&rt, n);
                let mut request = base.clone().with_selector(selector);
                let name = if filtered {
                    request = request.with_filter(ProxyFilter::new().country("DE"));
                    format!("{selector}+filter")
                } else {
                    selector.to_string()
                };
                group.bench_with_input(BenchmarkId::new(name, n), &request, |b, request| {
                    b.to_async(&rt).iter(|| async {
                        let lease = storage.acquire(request).await.unwrap().unwrap();
                        black_box(storage.release(lease.id).await.unwrap());
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
