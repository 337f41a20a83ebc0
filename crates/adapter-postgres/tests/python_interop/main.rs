//! Python pharox 0.11 and this adapter on one database: Python workers read
//! and lease every row the Rust adapter writes, while Rust workers lease
//! from the same pool, and SQL sampled during the run never sees a proxy
//! over its `max_concurrency` or a `current_leases` that differs from its
//! active leases.
//!
//! The Python side is `tests/python/worker.py`, run with the interpreter
//! named by `PHAROX_TEST_PYTHON` (`cargo xtask test` makes a virtualenv
//! with `pip install 'pharox[postgres]==0.11.0' greenlet` and sets it).
//! Without it the test fails and says how to get it; it is never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod mixed;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pharox_adapter_postgres::PostgresStorage;
use pharox_adapter_postgres::testing::TestSchema;
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, LeaseStatus, PoolId, Proxy, ProxyPool,
    ProxyProtocol, ProxyStatus, Selector,
};
use pharox_ports::{AcquireRequest, ProxyStorage, StorageError};
use sea_orm::sqlx;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use uuid::Uuid;

use mixed::mixed_run;

/// The variable naming the Python interpreter (with pharox 0.11 installed).
const ENV_PYTHON: &str = "PHAROX_TEST_PYTHON";

/// Python asyncio workers and Rust tasks: together more than the pool's 11
/// slots, so both sides meet full proxies.
const PYTHON_WORKERS: usize = 6;
const RUST_WORKERS: usize = 6;

/// How long the Python workers loop (the Rust workers run as long as they do).
const PYTHON_SECONDS: &str = "3";

/// An upper bound for each step of the Python run: a guard against a hung
/// child, not a wait (nothing waits for it to pass).
const PYTHON_DEADLINE: Duration = Duration::from_secs(90);

/// Leases live longer than the run: every lease is released by its worker.
/// (Leases left to expire are not part of this test: see the README's
/// notes on the wait path of acquire.)
const LEASE_SECONDS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_workers_lease_a_rust_seeded_pool_beside_rust_workers() {
    mixed_run().await;
}

/// A proxy the Rust adapter writes has a `checked_at` Python can read (the
/// epoch when it was never checked), which Rust reads back as never
/// checked; a check stores its real time; so do older rows with NULL.
#[tokio::test]
async fn never_checked_is_stored_as_a_time_that_reads_back_as_none() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let pool = storage
        .save_pool(&ProxyPool::new("checked-at").unwrap())
        .await
        .unwrap();
    let proxy = storage
        .save_proxy(
            &Proxy::builder(pool.id, "10.30.0.1", 8080, ProxyProtocol::Http)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(proxy.checked_at, None);
    assert_eq!(
        stored_checked_at(&storage, proxy.id.0).await,
        Some(OffsetDateTime::UNIX_EPOCH),
        "a never-checked proxy is stored with the epoch, not NULL"
    );

    let t = pharox_domain::now_micros() - time::Duration::minutes(3);
    let checked = storage
        .apply_health_result(
            &health(&proxy, ProxyStatus::Active, Some(12.0), t),
            &HealthPolicy::default(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checked.checked_at, Some(t));
    assert_eq!(stored_checked_at(&storage, proxy.id.0).await, Some(t));
    let mut update = checked.clone();
    update.city = Some("Lima".into());
    let updated = storage.save_proxy(&update).await.unwrap();
    assert_eq!(updated.checked_at, Some(t), "an update keeps checked_at");

    // A row from before m0007 (NULL) and the epoch both read as never checked.
    sqlx::query("UPDATE proxy SET checked_at = NULL WHERE id = $1")
        .bind(proxy.id.0)
        .execute(storage.pg_pool())
        .await
        .unwrap();
    assert_eq!(storage.get_proxy(proxy.id).await.unwrap().checked_at, None);
    // An insert that leaves the column out (Python's save_proxy) gets
    // Python's default, now(), and reads as checked then.
    let python_style = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO proxy (id, pool_id, host, port, protocol, status, max_concurrency) \
         VALUES ($1, $2, '10.30.0.2', 8080, 'http', 'active', 1)",
    )
    .bind(python_style)
    .bind(pool.id.0)
    .execute(storage.pg_pool())
    .await
    .unwrap();
    let read = storage.get_proxy(python_style.into()).await.unwrap();
    assert!(
        read.checked_at
            .is_some_and(|t| t > OffsetDateTime::UNIX_EPOCH)
    );
    schema.drop_schema().await.unwrap();
}

/// A password of only whitespace passes the domain's check but not Python
/// 0.11's: the adapter refuses it, naming the field, and writes nothing.
#[tokio::test]
async fn a_password_python_cannot_read_is_refused() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let pool = storage
        .save_pool(&ProxyPool::new("blank-password").unwrap())
        .await
        .unwrap();
    let good = Proxy::builder(pool.id, "10.31.0.1", 8080, ProxyProtocol::Http)
        .credentials("user", " pass ")
        .build()
        .unwrap();
    let blank = Proxy::builder(pool.id, "10.31.0.2", 8080, ProxyProtocol::Http)
        .credentials("user", " \u{3000} ")
        .build()
        .expect("the domain accepts a whitespace password");
    match storage.save_proxy(&blank).await {
        Err(StorageError::Invalid(e)) => assert_eq!(e.field, "credentials.password"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match storage.add_proxies(&[good.clone(), blank]).await {
        Err(StorageError::Invalid(e)) => assert_eq!(e.field, "proxies[1].credentials.password"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(storage.list_proxies(pool.id).await.unwrap().is_empty());
    let saved = storage.save_proxy(&good).await.unwrap();
    assert_eq!(
        saved.credentials, good.credentials,
        "surrounding spaces are fine"
    );
    schema.drop_schema().await.unwrap();
}

// ------------------------------------------------------------- set-up

/// What the Rust side wrote before Python starts.
struct Seeded {
    pool: ProxyPool,
    /// The eight leasable proxies, then a banned one.
    proxies: Vec<Proxy>,
    /// The proxy with a health check (latency 24.6 ms as the probe measured
    /// it, stored as 25 for Python) and its time.
    checked: usize,
    checked_at: OffsetDateTime,
}

impl Seeded {
    fn by_id(&self, id: Uuid) -> &Proxy {
        self.proxies.iter().find(|p| p.id.0 == id).unwrap()
    }
}

fn python_interpreter() -> PathBuf {
    match std::env::var_os(ENV_PYTHON).filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{ENV_PYTHON} is not set. This test runs Python pharox 0.11 against the Rust \
             adapter and is never skipped. `cargo xtask test` makes a virtualenv \
             (target/python-interop-venv) from the package registry and sets {ENV_PYTHON}; \
             to run it alone: `python3 -m venv /tmp/pharox-py && /tmp/pharox-py/bin/pip \
             install 'pharox[postgres]==0.11.0' greenlet && {ENV_PYTHON}=/tmp/pharox-py/bin/python \
             cargo test -p pharox-adapter-postgres --test python_interop` (Debian/Ubuntu need \
             `apt-get install python3-venv` for the venv module)"
        ),
    }
}

/// Eight active proxies of one and two slots (11 in all) with every column
/// Python reads filled in somewhere, a banned one, and two health records.
async fn seed(storage: &PostgresStorage) -> Seeded {
    let mut pool = ProxyPool::new("interop").unwrap();
    pool.description = Some("seeded by the Rust adapter".to_owned());
    let pool = storage.save_pool(&pool).await.unwrap();
    let hosts = [
        "10.20.0.1",
        "10.20.0.2",
        "10.20.0.3",
        "2001:db8::4",
        "10.20.0.5",
        "proxy-6.example.test",
        "10.20.0.7",
        "10.20.0.8",
        "10.20.0.9",
    ];
    let protocols = ProxyProtocol::ALL;
    let proxies: Vec<Proxy> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = 8000 + u16::try_from(i).unwrap();
            let mut b = Proxy::builder(pool.id, *host, port, protocols[i % protocols.len()])
                .max_concurrency(if i % 3 == 1 { 2 } else { 1 });
            match i {
                0 => {
                    b = b
                        .credentials("user-0", "pw 0")
                        .country("AR")
                        .city("Rosario")
                        .source("feed-a")
                        .isp("ISP A")
                        .asn(64_512)
                        .location(-32.95, -60.65);
                }
                3 => b = b.credentials("us:er@x", "p@ss/w:rd%").country("US"),
                5 => b = b.source("feed-b").asn(4_294_967_295).location(0.0, 180.0),
                8 => b = b.status(ProxyStatus::Banned).country("AR"),
                _ => {}
            }
            b.build().unwrap()
        })
        .collect();
    let mut proxies = storage.add_proxies(&proxies).await.unwrap();
    assert_eq!(
        proxies
            .iter()
            .filter_map(|p| p.max_concurrency)
            .sum::<u32>()
            - 1,
        11,
        "eleven slots among the leasable eight"
    );

    let checked = 1;
    let checked_at = pharox_domain::now_micros() - time::Duration::minutes(5);
    proxies[checked] = storage
        .apply_health_result(
            &health(
                &proxies[checked],
                ProxyStatus::Active,
                Some(24.6),
                checked_at,
            ),
            &HealthPolicy::default(),
        )
        .await
        .unwrap()
        .unwrap();
    // A failed check of the banned proxy: no latency, an error, still banned.
    proxies[8] = storage
        .apply_health_result(
            &health(&proxies[8], ProxyStatus::Inactive, None, checked_at),
            &HealthPolicy::default(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxies[8].status, ProxyStatus::Banned);
    Seeded {
        pool,
        proxies,
        checked,
        checked_at,
    }
}

fn health(
    proxy: &Proxy,
    status: ProxyStatus,
    latency_ms: Option<f64>,
    checked_at: OffsetDateTime,
) -> HealthCheckResult {
    let failed = status == ProxyStatus::Inactive;
    HealthCheckResult {
        proxy_id: proxy.id,
        protocol: proxy.protocol,
        status,
        reachable: !failed,
        latency_ms,
        attempts: 1,
        http_status: (!failed).then_some(204),
        checked_at,
        error: failed.then(|| "connection refused".to_owned()),
    }
}

async fn stored_checked_at(storage: &PostgresStorage, id: Uuid) -> Option<OffsetDateTime> {
    sqlx::query_scalar("SELECT checked_at FROM proxy WHERE id = $1")
        .bind(id)
        .fetch_one(storage.pg_pool())
        .await
        .unwrap()
}
