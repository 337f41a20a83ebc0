//! PostgreSQL-specific behaviour beyond the contract suite: contention
//! across many connections, integrity after bad input, error mapping.
//! Each test has its own schema; never skipped (see `testing`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pharox_adapter_postgres::testing::TestSchema;
use pharox_adapter_postgres::{PostgresConfig, PostgresStorage};
use pharox_domain::{Proxy, ProxyPool, ProxyProtocol, Selector};
use pharox_ports::{AcquireRequest, ProxyStorage, StorageError};
use sea_orm::sqlx;

async fn seed(
    storage: &PostgresStorage,
    name: &str,
    n: u16,
    max_concurrency: Option<u32>,
) -> (ProxyPool, Vec<Proxy>) {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            let mut b = Proxy::builder(pool.id, "10.1.0.1", 10_000 + i, ProxyProtocol::Http);
            if let Some(m) = max_concurrency {
                b = b.max_concurrency(m);
            }
            b.build().unwrap()
        })
        .collect();
    let saved = storage.add_proxies(&proxies).await.unwrap();
    (pool, saved)
}

/// current_leases equals the number of active leases for every proxy.
async fn assert_counters_exact(storage: &PostgresStorage) {
    let drift: Vec<(uuid::Uuid, i32, i64)> = sqlx::query_as(
        "SELECT p.id, p.current_leases, \
           (SELECT count(*) FROM lease l WHERE l.proxy_id = p.id AND l.status = 'active') \
         FROM proxy p \
         WHERE p.current_leases <> \
           (SELECT count(*) FROM lease l WHERE l.proxy_id = p.id AND l.status = 'active')",
    )
    .fetch_all(storage.pg_pool())
    .await
    .unwrap();
    assert!(drift.is_empty(), "current_leases drifted: {drift:?}");
    let over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM proxy WHERE max_concurrency IS NOT NULL \
         AND current_leases > max_concurrency",
    )
    .fetch_one(storage.pg_pool())
    .await
    .unwrap();
    assert_eq!(over, 0, "a proxy is over-leased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_acquirers_on_eight_single_slot_proxies() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let (pool, _) = seed(&storage, "contended", 8, Some(1)).await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let storage = storage.clone();
            let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
            tokio::spawn(async move { storage.acquire(&req).await })
        })
        .collect();
    let mut leased = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.unwrap().expect("no errors under contention") {
            leased.push(lease.proxy_id);
        }
    }
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 8, "exactly one lease per proxy");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM lease WHERE status = 'active'")
        .fetch_one(storage.pg_pool())
        .await
        .unwrap();
    assert_eq!(active, 8);
    assert_counters_exact(&storage).await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_loop_without_errors_or_misses() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let (pool, _) = seed(&storage, "loop", 32, Some(1)).await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let misses = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let storage = storage.clone();
            let misses = misses.clone();
            let selector = Selector::ALL[w % Selector::ALL.len()];
            let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60))
                .with_selector(selector);
            tokio::spawn(async move {
                for _ in 0..150 {
                    match storage.acquire(&req).await.expect("acquire") {
                        Some(lease) => {
                            assert!(
                                storage
                                    .release(lease.id)
                                    .await
                                    .expect("release")
                                    .was_released()
                            );
                        }
                        None => {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "32 slots, 8 workers: never a miss"
    );
    assert_counters_exact(&storage).await;
    let stats = storage.pool_stats(&pool.name).await.unwrap();
    assert_eq!((stats.total_leases, stats.available_proxies), (0, 32));
    schema.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_is_even_across_workers() {
    let schema = common::schema().await;
    let storage = schema.storage().clone();
    let (pool, proxies) = seed(&storage, "rr", 8, None).await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let rounds = 20;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let storage = storage.clone();
            let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60))
                .with_selector(Selector::RoundRobin);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..rounds * 2 {
                    let lease = storage
                        .acquire(&req)
                        .await
                        .unwrap()
                        .expect("unlimited proxies");
                    got.push(lease.proxy_id);
                    storage.release(lease.id).await.unwrap();
                }
                got
            })
        })
        .collect();
    let mut counts: HashMap<_, u32> = HashMap::new();
    for task in tasks {
        for id in task.await.unwrap() {
            *counts.entry(id).or_default() += 1;
        }
    }
    // 160 leases over 8 proxies: 20 each when the shared cursor is exact.
    // Concurrent workers may read the cursor at the same instant, so allow a
    // little slack, but every proxy must be used and none starved.
    assert_eq!(counts.len(), proxies.len(), "{counts:?}");
    for (id, n) in &counts {
        assert!(
            (15..=25).contains(n),
            "proxy {id} got {n} of 160: {counts:?}"
        );
    }
    assert_counters_exact(&storage).await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn bad_input_leaves_no_partial_state() {
    let schema = common::schema().await;
    let storage = schema.storage();
    let (pool, _) = seed(storage, "atomic", 2, Some(1)).await;
    let other = storage
        .save_pool(&ProxyPool::new("other").unwrap())
        .await
        .unwrap();

    // One invalid row: nothing added.
    let good = Proxy::builder(pool.id, "10.2.0.1", 1, ProxyProtocol::Socks5)
        .build()
        .unwrap();
    let mut bad = good.clone();
    bad.id = pharox_domain::ProxyId::new();
    bad.port = 0;
    let err = storage.add_proxies(&[good.clone(), bad]).await.unwrap_err();
    assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
    // One row in a missing pool: nothing added, not found names the pool.
    let mut orphan = good.clone();
    orphan.id = pharox_domain::ProxyId::new();
    orphan.pool_id = pharox_domain::PoolId::new();
    let err = storage
        .add_proxies(&[good.clone(), orphan.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { entity: "pool", key } if *key == orphan.pool_id.to_string()),
        "{err:?}"
    );
    // One row moving pools: conflict, nothing added.
    let existing = storage.list_proxies(pool.id).await.unwrap()[0].clone();
    let mut moved = existing.clone();
    moved.pool_id = other.id;
    let err = storage
        .add_proxies(&[good.clone(), moved])
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict(_)), "{err:?}");
    assert!(matches!(
        storage.get_proxy(good.id).await.unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert_eq!(storage.list_proxies(pool.id).await.unwrap().len(), 2);

    // A lease on a deleted proxy: the lease goes with it, release is clean.
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let lease = storage
        .acquire(&AcquireRequest::new(
            "atomic",
            consumer,
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .unwrap();
    storage.delete_proxy(lease.proxy_id).await.unwrap();
    assert!(matches!(
        storage.release(lease.id).await.unwrap_err(),
        StorageError::NotFound {
            entity: "lease",
            ..
        }
    ));
    assert!(matches!(
        storage
            .renew(lease.id, Duration::from_secs(5))
            .await
            .unwrap_err(),
        StorageError::NotFound {
            entity: "lease",
            ..
        }
    ));
    // Duplicate pool names are conflicts.
    let err = storage
        .save_pool(&ProxyPool::new("atomic").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict(_)), "{err:?}");
    assert_counters_exact(storage).await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_retryable() {
    // A port nobody listens on; the password must not leak into the error.
    let mut config = PostgresConfig::from_dsn(
        "postgres://pharox:very-secret-pw@127.0.0.1:1/pharox?connect_timeout=3",
    )
    .unwrap();
    config.acquire_timeout = Duration::from_secs(3);
    let err = PostgresStorage::connect(&config).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("very-secret-pw"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
}

#[tokio::test]
async fn wrong_password_is_an_error_without_the_password() {
    let schema = common::schema().await;
    let mut config = schema.config().clone();
    config.password = Some("not-the-password-xyz".into());
    config.user = "pharox_no_such_role".into();
    // The role does not exist, so the connection fails under any auth method.
    let err = PostgresStorage::connect(&config)
        .await
        .expect_err("no such role");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-password-xyz"), "{shown}");
    schema.drop_schema().await.unwrap();
}

/// acquire and release keep their connections checked out between calls
/// (sqlx would test each with a round trip on its way back to the pool).
/// Those kept connections must never starve other calls, and closing the
/// storage must hand them back rather than wait for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_connections_never_starve_other_calls_nor_block_close() {
    let schema = TestSchema::create_with(4).await.unwrap();
    let storage = schema.storage().clone();
    let (pool, _) = seed(&storage, "kept", 8, Some(1)).await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let req = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    // Four concurrent loops: all four pool connections pass through the
    // hot paths and at most two may stay kept.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (storage, req) = (storage.clone(), req.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let lease = storage.acquire(&req).await.unwrap().expect("a free proxy");
                    storage.release(lease.id).await.unwrap();
                }
            })
        })
        .collect();
    for task in loops {
        task.await.unwrap();
    }
    // A transaction and plain queries still get connections at once.
    let listed = tokio::time::timeout(Duration::from_secs(5), async {
        let proxies = storage
            .add_proxies(&[
                Proxy::builder(pool.id, "10.9.0.1", 9000, ProxyProtocol::Http)
                    .build()
                    .unwrap(),
            ])
            .await
            .unwrap();
        assert_eq!(proxies.len(), 1);
        storage.list_proxies(pool.id).await.unwrap()
    })
    .await
    .expect("other calls must not wait for kept connections");
    assert_eq!(listed.len(), 9);
    assert_counters_exact(&storage).await;
    let schema_name = schema.name().to_owned();
    tokio::time::timeout(Duration::from_secs(10), storage.close())
        .await
        .expect("close hands kept connections back instead of waiting for them");
    // Clean up with a fresh connection: the storage is closed.
    let admin = TestSchema::create_with(1).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema_name}\" CASCADE"
    )))
    .execute(admin.storage().pg_pool())
    .await
    .unwrap();
    admin.drop_schema().await.unwrap();
}

/// Acquire returns the lease's columns without reading the insert back
/// (they are computed from the same expressions in the same transaction):
/// on every acquire path they must equal what is stored.
#[tokio::test]
async fn acquired_leases_equal_the_stored_rows_on_every_path() {
    let schema = TestSchema::create().await.unwrap();
    let storage = schema.storage().clone();
    let (pool, _) = seed(&storage, "stored", 2, Some(1)).await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let ttl = Duration::from_millis(90_123);
    let plain = AcquireRequest::new(pool.name.clone(), consumer, ttl);
    let assert_stored = |lease: pharox_domain::Lease| {
        let storage = storage.clone();
        async move {
            let stored = storage.get_lease(lease.id).await.unwrap();
            assert_eq!(
                (
                    stored.id,
                    stored.proxy_id,
                    stored.pool_id,
                    stored.consumer_id,
                    stored.status,
                    stored.acquired_at,
                    stored.expires_at,
                    stored.released_at
                ),
                (
                    lease.id,
                    lease.proxy_id,
                    lease.pool_id,
                    lease.consumer_id,
                    lease.status,
                    lease.acquired_at,
                    lease.expires_at,
                    lease.released_at
                )
            );
            assert_eq!(stored.pool_name, lease.pool_name);
            assert_eq!(
                lease.expires_at - lease.acquired_at,
                time::Duration::milliseconds(90_123)
            );
            lease
        }
    };
    // The common path, twice: both proxies are now held.
    let first = assert_stored(storage.acquire(&plain).await.unwrap().unwrap()).await;
    assert_stored(storage.acquire(&plain).await.unwrap().unwrap()).await;
    // Both leases expire; the next acquire picks a proxy held only by an
    // expired lease: the reclaiming statement.
    schema
        .time_shift()
        .advance(Duration::from_secs(91))
        .await
        .unwrap();
    let reclaimed = assert_stored(storage.acquire(&plain).await.unwrap().unwrap()).await;
    assert_eq!(reclaimed.proxy_id, first.proxy_id, "first_available order");
    // The predicate path (lock candidates, test in Rust, claim).
    let picky = plain
        .clone()
        .with_filter(pharox_domain::ProxyFilter::new().predicate(|p| p.port % 2 == 1));
    let claimed = assert_stored(storage.acquire(&picky).await.unwrap().unwrap()).await;
    assert_eq!(claimed.proxy.port % 2, 1);
    assert_counters_exact(&storage).await;
    schema.drop_schema().await.unwrap();
}

/// Makes the next `times` writes to `lease` fail with SQLSTATE `code`, the
/// way a lost race does (a trigger raises it; the attempts are counted by a
/// sequence, which a rollback does not undo).
async fn inject_lease_failures(storage: &PostgresStorage, code: &str, times: u32) {
    let script = format!(
        "CREATE SEQUENCE IF NOT EXISTS injected_attempts; \
         SELECT setval('injected_attempts', 1, false); \
         CREATE OR REPLACE FUNCTION inject_lost_race() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF nextval('injected_attempts') <= {times} THEN \
             RAISE EXCEPTION 'injected lost race' USING ERRCODE = '{code}'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         DROP TRIGGER IF EXISTS inject_lost_race ON lease; \
         CREATE TRIGGER inject_lost_race BEFORE INSERT OR UPDATE ON lease \
           FOR EACH ROW EXECUTE FUNCTION inject_lost_race();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(storage.pg_pool())
        .await
        .unwrap();
}

/// How many writes to `lease` were attempted since [`inject_lease_failures`].
async fn lease_write_attempts(storage: &PostgresStorage) -> i64 {
    sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM injected_attempts",
    )
    .fetch_one(storage.pg_pool())
    .await
    .unwrap()
}

/// Serialization failures and deadlocks are retried inside the call (a
/// bounded number of times), and only then surface as a retryable error
/// that leaves nothing behind.
#[tokio::test]
async fn lost_races_are_retried_then_reported_as_retryable() {
    use pharox_adapter_postgres::MAX_ATTEMPTS;
    let schema = common::schema().await;
    let storage = schema.storage();
    let (pool, _) = seed(storage, "races", 2, Some(1)).await;
    let consumer = storage.ensure_consumer("racer").await.unwrap();
    let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    for code in ["40001", "40P01"] {
        // Two lost races, then success: acquire and release both recover.
        inject_lease_failures(storage, code, 2).await;
        let lease = storage.acquire(&request).await.unwrap().expect("a lease");
        assert_eq!(lease_write_attempts(storage).await, 3, "{code}: acquire");
        assert_counters_exact(storage).await;
        inject_lease_failures(storage, code, 2).await;
        storage.release(lease.id).await.unwrap();
        assert_eq!(lease_write_attempts(storage).await, 3, "{code}: release");
        assert_counters_exact(storage).await;

        // Always losing: the caller gets a retryable error after
        // MAX_ATTEMPTS tries, and no lease or counter was written.
        inject_lease_failures(storage, code, 1_000).await;
        let err = storage.acquire(&request).await.unwrap_err();
        assert!(
            matches!(err, StorageError::Transient { .. }) && err.is_retryable(),
            "{code}: {err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("gave up after {MAX_ATTEMPTS} attempts")),
            "{err}"
        );
        assert_eq!(
            lease_write_attempts(storage).await,
            i64::from(MAX_ATTEMPTS),
            "{code}"
        );
        let active: i64 = sqlx::query_scalar("SELECT count(*) FROM lease WHERE status = 'active'")
            .fetch_one(storage.pg_pool())
            .await
            .unwrap();
        assert_eq!(active, 0, "{code}: no lease left behind");
        assert_counters_exact(storage).await;
        sqlx::query("DROP TRIGGER inject_lost_race ON lease")
            .execute(storage.pg_pool())
            .await
            .unwrap();
    }
    schema.drop_schema().await.unwrap();
}

/// The SeaORM entity of `proxy` never shows the credentials in `Debug`,
/// neither as a model nor as an active model.
#[tokio::test]
async fn proxy_entity_debug_hides_credentials() {
    use pharox_adapter_postgres::entities::proxy;
    use sea_orm::{EntityTrait, IntoActiveModel};
    let schema = common::schema().await;
    let storage = schema.storage();
    let pool = storage
        .save_pool(&ProxyPool::new("creds").unwrap())
        .await
        .unwrap();
    let with_password = Proxy::builder(pool.id, "10.9.0.1", 8080, ProxyProtocol::Http)
        .credentials("scraper", "pr0xy-s3cret")
        .build()
        .unwrap();
    let saved = storage.add_proxies(&[with_password]).await.unwrap();
    let model = proxy::Entity::find_by_id(saved[0].id.0)
        .one(storage.connection())
        .await
        .unwrap()
        .expect("the proxy row");
    let stored = model.credentials.clone().expect("credentials stored");
    assert_eq!(stored.0["password"], "pr0xy-s3cret", "the value is there");
    for shown in [
        format!("{model:?}"),
        format!("{:?}", model.into_active_model()),
    ] {
        assert!(!shown.contains("pr0xy-s3cret"), "{shown}");
        assert!(shown.contains("10.9.0.1"), "the rest is shown: {shown}");
    }
    schema.drop_schema().await.unwrap();
}
