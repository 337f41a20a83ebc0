//! Unit tests of the storage on a real server: the release commit mode,
//! the kept connections' checks, config errors, and the hot path's plans.

use std::time::Duration;

use pharox_domain::{Proxy, ProxyPool, ProxyProtocol};
use pharox_ports::{AcquireRequest, ProxyStorage};
use sea_orm::sqlx::{self, AssertSqlSafe};

use crate::testing::TestSchema;

/// A new pool `name` holding one single-slot proxy.
async fn pool_of_one_proxy(storage: &super::PostgresStorage, name: &str) -> ProxyPool {
    let pool = storage
        .save_pool(&ProxyPool::new(name).unwrap())
        .await
        .unwrap();
    let proxy = Proxy::builder(pool.id, "10.2.0.1", 9000, ProxyProtocol::Http)
        .build()
        .unwrap();
    storage.add_proxies(&[proxy]).await.unwrap();
    pool
}

/// What `synchronous_commit` is when the release statement of a storage
/// has run, read inside that statement's transaction (the setting is
/// transaction-local, so the commit that follows uses it).
async fn commit_mode_of_release(storage: &super::PostgresStorage) -> String {
    let pool = pool_of_one_proxy(storage, "commit-mode").await;
    let consumer = storage.ensure_consumer("c").await.unwrap();
    let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    let lease = storage.acquire(&request).await.unwrap().unwrap();
    let mut tx = storage.pg_pool().begin().await.unwrap();
    let released = sqlx::query(AssertSqlSafe(storage.release_sql))
        .bind(lease.id.0)
        .bind(crate::sql::ACTIVE)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(released.len(), 1, "the statement released the lease");
    let mode: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    storage.delete_pool(pool.id).await.unwrap();
    mode
}

#[tokio::test]
async fn release_commits_asynchronously_unless_durable() {
    let schema = TestSchema::create().await.unwrap();
    let storage = schema.storage().clone();
    assert_eq!(commit_mode_of_release(&storage).await, "off");
    let server_default: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(storage.pg_pool())
        .await
        .unwrap();
    let durable = storage.with_durable_release(true);
    assert_eq!(
        commit_mode_of_release(&durable).await,
        server_default,
        "a durable release leaves the server's setting alone"
    );
    schema.drop_schema().await.unwrap();
}

/// One acquire and release on `storage`'s pool `pool`.
async fn one_cycle(storage: &super::PostgresStorage, pool: &ProxyPool) {
    let consumer = storage.ensure_consumer("stash").await.unwrap();
    let request = AcquireRequest::new(pool.name.clone(), consumer, Duration::from_secs(60));
    let lease = storage.acquire(&request).await.unwrap().unwrap();
    storage.release(lease.id).await.unwrap();
}

#[tokio::test]
async fn stash_honours_test_before_acquire_idle_timeout_and_max_lifetime() {
    let schema = TestSchema::create().await.unwrap();
    let pool = pool_of_one_proxy(schema.storage(), "stash").await;

    let mut config = schema.config().clone();
    config.idle_timeout = Some(Duration::from_secs(30));
    config.max_lifetime = Some(Duration::from_secs(60));
    let storage = super::PostgresStorage::connect(&config).await.unwrap();
    one_cycle(&storage, &pool).await;
    assert_eq!(
        storage.stash.lock().len(),
        1,
        "the hot path keeps its connection"
    );
    // Time is moved by rewriting the stash's own timestamps, not slept.
    let ago = |secs| {
        std::time::Instant::now()
            .checked_sub(Duration::from_secs(secs))
            .expect("the monotonic clock reaches back a minute")
    };
    storage.stash.lock()[0].used = ago(31);
    assert!(storage.stash.take().is_none(), "idle past idle_timeout");
    one_cycle(&storage, &pool).await;
    storage.stash.lock()[0].first_kept = ago(61);
    assert!(storage.stash.take().is_none(), "kept past max_lifetime");
    one_cycle(&storage, &pool).await;
    let kept = storage.stash.take().expect("a fresh connection is kept");
    assert!(kept.first_kept.elapsed() < Duration::from_secs(30));
    storage.stash.put(kept);
    storage.close().await;

    config.test_before_acquire = true;
    let tested = super::PostgresStorage::connect(&config).await.unwrap();
    one_cycle(&tested, &pool).await;
    assert!(
        tested.stash.lock().is_empty(),
        "with test_before_acquire every call gets a connection sqlx pinged"
    );
    tested.close().await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_bad_setting_is_invalid_and_names_its_field() {
    let mut config = crate::PostgresConfig::new("127.0.0.1", "db", "u").with_password("pw-x1");
    config.max_connections = 0;
    let e = super::PostgresStorage::connect(&config).await.unwrap_err();
    match e {
        pharox_ports::StorageError::Invalid(v) => {
            assert_eq!(v.field, "database.max_connections");
            assert!(!v.reason.contains("pw-x1"));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The generic plan of `statement` (prepared as `name` with `types`),
/// executed with `args`, on a connection set up like the storage's.
async fn generic_plan(
    conn: &mut sea_orm::sqlx::PgConnection,
    name: &str,
    types: &str,
    statement: &str,
    args: &str,
) -> String {
    let setup = format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE {name} ({types}) AS {statement}"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *conn)
        .await
        .unwrap();
    let lines: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE {name} ({args})")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    lines.join("\n")
}

/// The generic plan of first_available's common-path acquire for the
/// pool named `pool` (prepared afresh under `name`).
async fn acquire_plan(conn: &mut sea_orm::sqlx::PgConnection, name: &str, pool: &str) -> String {
    use crate::sql::{self, Lock};
    let statement = sql::acquire_statement(
        pharox_domain::Selector::FirstAvailable,
        "TRUE",
        Lock::SkipLocked,
    );
    let nil = "'00000000-0000-0000-0000-000000000000'";
    generic_plan(
        conn,
        name,
        "text, uuid, float8, uuid",
        &statement,
        &format!("'{pool}', {nil}, 1.0, {nil}"),
    )
    .await
}

/// A lease table that was empty at its last VACUUM ANALYZE (a new
/// database, a deleted pool) makes every plan look equally cheap; the
/// prepared plans must still read the indexes they were written for,
/// since a connection keeps them while the table grows.
#[tokio::test]
async fn hot_path_plans_survive_empty_statistics() {
    use crate::sql;
    let schema = TestSchema::create().await.unwrap();
    let storage = schema.storage().clone();
    let mut conn = storage.pg_pool().acquire().await.unwrap();
    for table in ["lease", "proxy"] {
        // One statement per call: VACUUM refuses to run in the implicit
        // transaction of a multi-statement query.
        sqlx::raw_sql(AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let nil = "'00000000-0000-0000-0000-000000000000'";

    let release = generic_plan(
        &mut conn,
        "release_plan",
        "uuid, text",
        sql::RELEASE,
        &format!("{nil}, 'active'"),
    )
    .await;
    assert!(release.contains("lease_pkey"), "{release}");
    for other in ["lease_consumer_id_idx", "lease_active_pool_expiry_idx"] {
        assert!(!release.contains(other), "{release}");
    }

    let acquire = acquire_plan(&mut conn, "acquire_empty", "pool").await;
    // The expired-lease probe: a per-row probe of the pool's active
    // leases, never a hashed scan of some other index.
    assert!(
        acquire.contains("lease_active_pool_expiry_idx"),
        "{acquire}"
    );
    for other in [
        "hashed SubPlan",
        "lease_consumer_id_idx",
        "lease_proxy_id_idx",
    ] {
        assert!(!acquire.contains(other), "{other} in {acquire}");
    }

    // Statistics of one big pool: pool_id looks unselective, and the
    // primary key walks proxies in id order too. first_available must
    // still scan its own pool's index, not the whole table by id.
    let big = storage
        .save_pool(&ProxyPool::new("big").unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..300)
        .map(|i| {
            Proxy::builder(big.id, "10.3.0.1", 10_000 + i, ProxyProtocol::Http)
                .build()
                .unwrap()
        })
        .collect();
    storage.add_proxies(&proxies).await.unwrap();
    sqlx::raw_sql("VACUUM ANALYZE proxy")
        .execute(&mut *conn)
        .await
        .unwrap();
    let acquire = acquire_plan(&mut conn, "acquire_big_pool", "small").await;
    assert!(acquire.contains("proxy_available_idx"), "{acquire}");
    assert_eq!(
        acquire.matches("proxy_pkey").count(),
        1,
        "only the update of the picked proxy goes by primary key: {acquire}"
    );
    drop(conn);
    schema.drop_schema().await.unwrap();
}
