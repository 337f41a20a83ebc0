//! Acquire+release throughput of the PostgreSQL adapter, straight on the
//! storage port (no application layer), for comparison with pgbench running
//! the equivalent SQL (`bench/pgbench.sh`).
//!
//! ```text
//! PHAROX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p pharox-adapter-postgres --example acquire_release -- 8 10
//! ```
//! Arguments: workers (default 8), seconds (default 10), proxies (default
//! 1000, max_concurrency 1). It creates a schema `pharox_bench_<uuid>`,
//! migrates it, runs, prints one line, and drops the schema. With
//! `KEEP_SCHEMA=1` the schema is kept (and named) for pgbench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
use pharox_domain::{Proxy, ProxyPool, ProxyProtocol};
use pharox_ports::{AcquireRequest, ProxyStorage};
use sea_orm::sqlx::{self, AssertSqlSafe};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (workers, secs, proxies) = (arg(0, 8), arg(1, 10), arg(2, 1000));
    let url = std::env::var("PHAROX_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let base = PostgresConfig::from_dsn(&url).unwrap();
    let schema = format!("pharox_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = PostgresStorage::connect(&base.clone().with_max_connections(1))
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin.pg_pool())
        .await
        .unwrap();
    let config = base
        .with_schema(schema.clone())
        .with_max_connections(u32::try_from(workers).unwrap());
    let storage = PostgresStorage::connect(&config).await.unwrap();
    pharox_migration::run(storage.connection(), pharox_migration::MigrationCommand::Up)
        .await
        .unwrap();
    let pool = storage
        .save_pool(&ProxyPool::new("bench").unwrap())
        .await
        .unwrap();
    let seed: Vec<Proxy> = (0..proxies)
        .map(|i| {
            Proxy::builder(
                pool.id,
                "10.9.0.1",
                u16::try_from(1 + i % 60_000).unwrap(),
                ProxyProtocol::Http,
            )
            .max_concurrency(1)
            .build()
            .unwrap()
        })
        .collect();
    storage.add_proxies(&seed).await.unwrap();
    let consumer = storage.ensure_consumer("bench").await.unwrap();

    if std::env::var("TIMING").is_ok() {
        let req = AcquireRequest::new("bench", consumer, Duration::from_secs(300));
        let (mut a, mut r) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..500 {
            let t = Instant::now();
            let lease = storage.acquire(&req).await.unwrap().unwrap();
            a += t.elapsed();
            let t = Instant::now();
            storage.release(lease.id).await.unwrap();
            r += t.elapsed();
        }
        println!("acquire {:?}/op, release {:?}/op", a / 500, r / 500);
    }
    // Warm up every connection (prepared statements, caches).
    let run = |secs: u64| {
        let storage = storage.clone();
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let (cycles, misses, errors) = (
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicU64::new(0)),
            );
            let started = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let (storage, stop) = (storage.clone(), stop.clone());
                    let (cycles, misses, errors) = (cycles.clone(), misses.clone(), errors.clone());
                    tokio::spawn(async move {
                        let req = AcquireRequest::new("bench", consumer, Duration::from_secs(300));
                        while !stop.load(Ordering::Relaxed) {
                            match storage.acquire(&req).await {
                                Ok(Some(lease)) => match storage.release(lease.id).await {
                                    Ok(_) => {
                                        cycles.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                },
                                Ok(None) => {
                                    misses.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(_) => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await.unwrap();
            }
            let elapsed = started.elapsed().as_secs_f64();
            (
                cycles.load(Ordering::Relaxed),
                misses.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
                elapsed,
            )
        }
    };
    run(1).await;
    let (cycles, misses, errors, elapsed) = run(secs).await;
    #[allow(clippy::cast_precision_loss)]
    let rate = cycles as f64 / elapsed;
    println!(
        "workers={workers} proxies={proxies} cycles={cycles} cycles/s={rate:.0} misses={misses} errors={errors} ({elapsed:.1}s)"
    );
    storage.close().await;
    if std::env::var("KEEP_SCHEMA").is_ok() {
        println!("kept schema {schema}");
    } else {
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(admin.pg_pool())
            .await
            .unwrap();
    }
}
