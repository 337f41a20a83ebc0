//! Migrations against a real PostgreSQL, each test in a schema of its own.
//!
//! Server: `PHAROX_TEST_DATABASE_URL`, else `PHAROX_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`. Never skipped: without a
//! server the tests fail and say how to get one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pharox_migration::sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement,
};
use pharox_migration::{MigrationCommand, run, schema_is_current};

fn url() -> String {
    ["PHAROX_TEST_DATABASE_URL", "PHAROX_DATABASE_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn connect(schema: Option<&str>, max: u32) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url());
    options.max_connections(max).sqlx_logging(false);
    if let Some(schema) = schema {
        options.set_schema_search_path(schema.to_owned());
    }
    Database::connect(options).await.unwrap_or_else(|e| {
        panic!(
            "these tests need PostgreSQL and could not connect ({e}); start one, e.g. \
             `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`, \
             or set PHAROX_TEST_DATABASE_URL"
        )
    })
}

/// A fresh schema and a connection pinned to it.
async fn fresh_schema() -> (String, DatabaseConnection) {
    let name = format!("pharox_m_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(None, 1).await;
    admin
        .execute_unprepared(&format!("CREATE SCHEMA \"{name}\""))
        .await
        .unwrap();
    let db = connect(Some(&name), 4).await;
    (name, db)
}

async fn drop_schema(name: &str) {
    let admin = connect(None, 1).await;
    admin
        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .await
        .unwrap();
}

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT table_name::text AS t FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name <> 'seaql_migrations' \
         ORDER BY 1",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "t").unwrap())
    .collect()
}

async fn indexes(db: &DatabaseConnection, table: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT indexname::text AS i FROM pg_indexes \
             WHERE schemaname = current_schema() AND tablename = '{table}' ORDER BY 1"
        ),
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "i").unwrap())
    .collect()
}

async fn foreign_keys(db: &DatabaseConnection, table: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT conname::text AS c FROM pg_constraint \
             WHERE conrelid = '{table}'::regclass AND contype = 'f' ORDER BY 1"
        ),
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "c").unwrap())
    .collect()
}

async fn proxy_checks(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT conname::text AS c FROM pg_constraint \
         WHERE conrelid = 'proxy'::regclass AND contype = 'c' ORDER BY 1",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "c").unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_up_both_succeed() {
    let (name, _) = fresh_schema().await;
    // Two separate pools, as two processes would have.
    let a = connect(Some(&name), 2).await;
    let b = connect(Some(&name), 2).await;
    assert!(
        !schema_is_current(&a).await.unwrap(),
        "fresh schema is not current"
    );
    let (ra, rb) = tokio::join!(run(&a, MigrationCommand::Up), run(&b, MigrationCommand::Up));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_current() && rb.is_current());
    // Exactly one of them applied the migrations.
    let applied = ra.changed.len() + rb.changed.len();
    assert_eq!(applied, all_migrations(), "{ra:?} {rb:?}");
    assert!(schema_is_current(&a).await.unwrap());
    assert_eq!(
        tables(&a).await,
        [
            "api_key",
            "consumer",
            "lease",
            "pool_selector_state",
            "proxy",
            "proxy_health_record",
            "proxy_pool",
            "proxy_session",
            "proxy_target_ban"
        ]
    );
    drop_schema(&name).await;
}

/// How many migrations pharox has.
fn all_migrations() -> usize {
    use pharox_migration::sea_orm_migration::MigratorTrait;
    pharox_migration::Migrator::migrations().len()
}

/// The column default of `proxy.max_concurrency`, as PostgreSQL prints it.
async fn max_concurrency_default(db: &DatabaseConnection) -> Option<String> {
    proxy_column_default(db, "max_concurrency").await
}

/// The default of a column of `proxy`, as PostgreSQL prints it.
async fn proxy_column_default(db: &DatabaseConnection, column: &str) -> Option<String> {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT column_default::text AS d FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'proxy' \
               AND column_name = '{column}'"
        ),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<Option<String>>("", "d")
    .unwrap()
}

/// How many columns of `proxy` are named `column` (0 or 1).
async fn proxy_column_count(db: &DatabaseConnection, column: &str) -> i64 {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT count(*) AS n FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'proxy' \
               AND column_name = '{column}'"
        ),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap()
}

/// `proxy.checked_at` of one proxy, as text in UTC (NULL as `None`).
async fn checked_at(db: &DatabaseConnection, id: &str) -> Option<String> {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "SELECT to_char(checked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS t \
             FROM proxy WHERE id = '{id}'"
        ),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<Option<String>>("", "t")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_then_up_and_fresh() {
    let (name, db) = fresh_schema().await;
    run(&db, MigrationCommand::Up).await.unwrap();
    assert_eq!(
        indexes(&db, "lease").await,
        [
            "lease_active_pool_expiry_idx",
            "lease_consumer_id_idx",
            "lease_pkey",
            "lease_proxy_id_idx"
        ]
    );
    assert_eq!(foreign_keys(&db, "lease").await, ["lease_proxy_id_fkey"]);
    assert_eq!(proxy_checks(&db).await, ["proxy_capacity_check"]);
    assert_eq!(
        max_concurrency_default(&db).await.as_deref(),
        Some("1"),
        "m0006"
    );
    assert_eq!(
        proxy_column_default(&db, "checked_at").await.as_deref(),
        Some("now()"),
        "m0007"
    );
    // m0012: usage columns with Python-safe defaults, the ban and session
    // tables, cascading from proxy.
    assert_eq!(
        proxy_column_default(&db, "error_score").await.as_deref(),
        Some("0"),
        "m0012"
    );
    assert_eq!(
        proxy_column_default(&db, "consecutive_cooldowns")
            .await
            .as_deref(),
        Some("0"),
        "m0012"
    );
    let all_tables = tables(&db).await;
    for table in ["proxy_target_ban", "proxy_session"] {
        assert!(all_tables.contains(&table.to_owned()), "m0012: {table}");
    }
    assert_eq!(
        foreign_keys(&db, "proxy_session").await,
        ["proxy_session_proxy_id_fkey"],
        "m0012: sessions cascade from proxy only"
    );
    assert_eq!(
        foreign_keys(&db, "proxy_target_ban").await,
        ["proxy_target_ban_proxy_id_fkey"],
        "m0012"
    );
    assert_eq!(
        indexes(&db, "proxy_session").await,
        ["proxy_session_pkey", "proxy_session_proxy_idx"],
        "m0012"
    );
    // m0013: API keys, hashes only, unique hash, a name unique among keys
    // not revoked.
    assert!(tables(&db).await.contains(&"api_key".to_owned()), "m0013");
    assert_eq!(
        indexes(&db, "api_key").await,
        [
            "api_key_active_name_idx",
            "api_key_key_hash_key",
            "api_key_pkey"
        ],
        "m0013"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0013_api_keys"], "{down:?}");
    assert!(
        !tables(&db).await.contains(&"api_key".to_owned()),
        "down drops api_key"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0012_usage_bans_sessions"], "{down:?}");
    let all_tables = tables(&db).await;
    for table in ["proxy_target_ban", "proxy_session"] {
        assert!(
            !all_tables.contains(&table.to_owned()),
            "down drops {table}"
        );
    }
    for column in ["error_score", "cooldown_until", "consecutive_cooldowns"] {
        assert!(
            proxy_column_count(&db, column).await == 0,
            "down drops proxy.{column}"
        );
    }
    let scalar_indexes = |all: &[String]| {
        all.iter()
            .filter(|name| {
                ["source", "country", "city", "isp", "asn"]
                    .iter()
                    .any(|column| name.starts_with(&format!("proxy_{column}_")))
            })
            .count()
    };
    assert_eq!(scalar_indexes(&indexes(&db, "proxy").await), 20, "m0011");
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(
        down.changed,
        ["m0011_proxy_scalar_filter_indexes"],
        "{down:?}"
    );
    assert_eq!(
        scalar_indexes(&indexes(&db, "proxy").await),
        0,
        "down drops them"
    );
    assert!(
        indexes(&db, "proxy")
            .await
            .contains(&"proxy_pick_idx".to_owned()),
        "m0010"
    );
    assert_eq!(
        proxy_column_default(&db, "pick_key").await.as_deref(),
        Some("random()"),
        "m0010"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0010_proxy_pick_key"], "{down:?}");
    assert!(
        !indexes(&db, "proxy")
            .await
            .contains(&"proxy_pick_idx".to_owned()),
        "down drops it"
    );
    assert_eq!(
        proxy_column_count(&db, "pick_key").await,
        0,
        "down drops the column"
    );
    assert!(
        indexes(&db, "proxy")
            .await
            .contains(&"proxy_checked_idx".to_owned()),
        "m0009"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0009_proxy_checked_index"], "{down:?}");
    assert!(
        !indexes(&db, "proxy")
            .await
            .contains(&"proxy_checked_idx".to_owned()),
        "down drops it"
    );
    assert!(
        indexes(&db, "proxy")
            .await
            .contains(&"proxy_latency_idx".to_owned()),
        "m0008"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0008_proxy_latency_index"], "{down:?}");
    assert!(
        !indexes(&db, "proxy")
            .await
            .contains(&"proxy_latency_idx".to_owned()),
        "down drops it"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(
        down.changed,
        ["m0007_proxy_checked_at_for_python"],
        "{down:?}"
    );
    assert_eq!(proxy_column_default(&db, "checked_at").await, None);
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0006_max_concurrency_default"], "{down:?}");
    assert_eq!(max_concurrency_default(&db).await, None, "down drops it");
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0005_proxy_checks_as_domains"], "{down:?}");
    assert_eq!(
        proxy_checks(&db).await.len(),
        8,
        "down restores the table CHECKs"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(
        down.changed,
        ["m0004_lease_consumer_without_fk"],
        "{down:?}"
    );
    assert_eq!(
        foreign_keys(&db, "lease").await,
        ["lease_consumer_id_fkey", "lease_proxy_id_fkey"],
        "down restores the consumer foreign key"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0003_lean_lease_indexes"], "{down:?}");
    assert_eq!(
        indexes(&db, "lease").await,
        [
            "lease_active_expiry_idx",
            "lease_active_pool_expiry_idx",
            "lease_consumer_id_idx",
            "lease_pkey",
            "lease_proxy_id_idx"
        ],
        "down restores the m0002 indexes"
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed.len(), 1, "{down:?}");
    assert!(
        !tables(&db)
            .await
            .contains(&"pool_selector_state".to_owned())
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.applied, Vec::<String>::new(), "{down:?}");
    assert!(tables(&db).await.is_empty(), "down removes every table");
    assert!(!schema_is_current(&db).await.unwrap());
    let up = run(&db, MigrationCommand::Up).await.unwrap();
    assert_eq!(up.changed.len(), all_migrations());
    assert!(schema_is_current(&db).await.unwrap());
    let status = run(&db, MigrationCommand::Status).await.unwrap();
    assert!(status.changed.is_empty() && status.is_current());
    // Data goes with fresh.
    db.execute_unprepared(
        "INSERT INTO proxy_pool (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'x')",
    )
    .await
    .unwrap();
    let fresh = run(&db, MigrationCommand::Fresh).await.unwrap();
    assert!(fresh.is_current());
    let n = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*)::bigint AS n FROM proxy_pool",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 0);
    drop_schema(&name).await;
}

#[tokio::test]
async fn python_style_inserts_still_work() {
    // The inserts of the Python reference adapter name only its own columns:
    // everything the Rust side added must be nullable or defaulted.
    let (name, db) = fresh_schema().await;
    run(&db, MigrationCommand::Up).await.unwrap();
    db.execute_unprepared(
        "INSERT INTO proxy_pool (id, name, description) VALUES \
           ('00000000-0000-0000-0000-000000000001', 'py', NULL); \
         INSERT INTO proxy (id, pool_id, host, port, protocol, status, max_concurrency, \
           current_leases, country, source, city) VALUES \
           ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-000000000001', \
            '10.0.0.1', 8080, 'http', 'active', 1, 0, 'AR', 'feed', 'Rosario'); \
         INSERT INTO proxy_health_record (id, proxy_id, checked_at, reachable, latency_ms, \
           protocol, status_before, status_after, error) VALUES \
           ('00000000-0000-0000-0000-0000000000b1', '00000000-0000-0000-0000-0000000000a1', \
            now(), true, 12.5, 'http', 'active', 'active', NULL); \
         INSERT INTO proxy (id, pool_id, host, port, protocol, status) VALUES \
           ('00000000-0000-0000-0000-0000000000a3', '00000000-0000-0000-0000-000000000001', \
            '10.0.0.3', 8080, 'socks5', 'active'); \
         INSERT INTO consumer (id, name) VALUES \
           ('00000000-0000-0000-0000-0000000000c1', 'py-worker'); \
         INSERT INTO lease (id, proxy_id, pool_id, consumer_id, pool_name, status, \
           acquired_at, expires_at) VALUES \
           ('00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-0000000000a1', \
            '00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-0000000000c1', \
            'py', 'active', now(), now() + interval '5 minutes'); \
         UPDATE proxy SET current_leases = current_leases + 1 \
           WHERE id = '00000000-0000-0000-0000-0000000000a1'; \
         INSERT INTO pool_selector_state (pool_id, strategy, last_proxy_id) VALUES \
           ('00000000-0000-0000-0000-000000000001', 'round_robin', \
            '00000000-0000-0000-0000-0000000000a1');",
    )
    .await
    .unwrap();
    // A proxy inserted without max_concurrency gets the Python default of
    // one slot, and the Python-style lease counts against the capacity.
    let defaults = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT (SELECT max_concurrency::int FROM proxy \
                       WHERE id = '00000000-0000-0000-0000-0000000000a3') AS max_concurrency, \
                    (SELECT current_leases::int FROM proxy \
                       WHERE id = '00000000-0000-0000-0000-0000000000a1') AS current_leases",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(defaults.try_get::<i32>("", "max_concurrency").unwrap(), 1);
    assert_eq!(defaults.try_get::<i32>("", "current_leases").unwrap(), 1);
    // The usage columns of m0012 default to a clean standing.
    let usage = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT error_score, consecutive_cooldowns, cooldown_until IS NULL AS no_cooldown \
             FROM proxy WHERE id = '00000000-0000-0000-0000-0000000000a3'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(usage.try_get::<f64>("", "error_score").unwrap(), 0.0);
    assert_eq!(
        usage.try_get::<i32>("", "consecutive_cooldowns").unwrap(),
        0
    );
    assert!(usage.try_get::<bool>("", "no_cooldown").unwrap());
    // And a checked_at, as Python's own schema gives it (its model requires
    // one), without naming the column.
    assert!(
        checked_at(&db, "00000000-0000-0000-0000-0000000000a3")
            .await
            .is_some_and(|t| !t.starts_with("1970")),
        "checked_at defaults to now()"
    );
    // And a random pick key each (m0010), without naming the column.
    let keys = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(DISTINCT pick_key) AS distinct_keys, \
                    bool_and(pick_key >= 0 AND pick_key < 1) AS in_range FROM proxy",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys.try_get::<i64>("", "distinct_keys").unwrap(), 2);
    assert!(keys.try_get::<bool>("", "in_range").unwrap());
    // The CHECKs (table CHECKs and the column domains of m0005) hold the
    // line on bad values, under the same constraint names.
    for (bad, check) in [
        ("UPDATE proxy SET port = 0", "proxy_port_check"),
        (
            "UPDATE proxy SET current_leases = 2",
            "proxy_capacity_check",
        ),
        (
            "UPDATE proxy SET current_leases = -1",
            "proxy_current_leases_check",
        ),
        (
            "UPDATE proxy SET max_concurrency = 0",
            "proxy_max_concurrency_check",
        ),
        ("UPDATE proxy SET latitude = 91", "proxy_latitude_check"),
        ("UPDATE proxy SET longitude = -181", "proxy_longitude_check"),
        ("UPDATE proxy SET asn = -1", "proxy_asn_check"),
        (
            "UPDATE proxy SET consecutive_failures = -1",
            "proxy_consecutive_failures_check",
        ),
        (
            "INSERT INTO proxy (id, pool_id, host, port, protocol, status) VALUES \
               ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-000000000001', \
                '10.0.0.2', 70000, 'http', 'active')",
            "proxy_port_check",
        ),
    ] {
        let err = db.execute_unprepared(bad).await.expect_err(bad);
        assert!(err.to_string().contains(check), "{bad}: {err}");
    }
    drop_schema(&name).await;
}

#[tokio::test]
async fn m0007_gives_never_checked_proxies_the_epoch_and_down_takes_it_back() {
    use pharox_migration::Migrator;
    use pharox_migration::sea_orm_migration::MigratorTrait;

    let (name, db) = fresh_schema().await;
    Migrator::up(&db, Some(6)).await.unwrap();
    // Rows as the Rust adapter wrote them before m0007: NULL = never checked.
    db.execute_unprepared(
        "INSERT INTO proxy_pool (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'p'); \
         INSERT INTO proxy (id, pool_id, host, port, protocol, status, checked_at) VALUES \
           ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-000000000001', \
            '10.0.0.1', 8080, 'http', 'active', NULL), \
           ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-000000000001', \
            '10.0.0.2', 8080, 'http', 'active', '2026-01-02 03:04:05+00');",
    )
    .await
    .unwrap();
    Migrator::up(&db, Some(1)).await.unwrap();
    let never = "00000000-0000-0000-0000-0000000000a1";
    let checked = "00000000-0000-0000-0000-0000000000a2";
    assert_eq!(
        checked_at(&db, never).await.as_deref(),
        Some("1970-01-01 00:00:00")
    );
    assert_eq!(
        checked_at(&db, checked).await.as_deref(),
        Some("2026-01-02 03:04:05")
    );
    let down = run(&db, MigrationCommand::Down).await.unwrap();
    assert_eq!(down.changed, ["m0007_proxy_checked_at_for_python"]);
    assert_eq!(
        checked_at(&db, never).await,
        None,
        "NULL again for older code"
    );
    assert_eq!(
        checked_at(&db, checked).await.as_deref(),
        Some("2026-01-02 03:04:05")
    );
    drop_schema(&name).await;
}
