//! Test support: a throw-away schema per test on a real PostgreSQL.
//!
//! The contract suite's expiry and `cleanup_expired` scenarios act on the
//! whole storage, so every test gets its own schema
//! (`pharox_t_<unix seconds>_<uuid>`), migrated on creation, with the
//! storage's connections pinned to it through `search_path`. Schemas left
//! behind by earlier runs (older than an hour) are dropped when a new one is
//! created; [`TestSchema::drop_schema`] drops one at once.
//!
//! The server comes from `PHAROX_TEST_DATABASE_URL` (the xtask test runner
//! creates a fresh database per run and sets it), else `PHAROX_DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/postgres`.

pub mod cluster;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pharox_ports::{StorageError, StorageResult};
use sea_orm::sqlx::{self, AssertSqlSafe, postgres::PgPool};

use crate::{PostgresConfig, PostgresStorage};

/// The variable naming the test server.
pub const ENV_TEST_DATABASE_URL: &str = "PHAROX_TEST_DATABASE_URL";

/// The server used when no variable is set.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of the schemas tests create.
pub const TEST_SCHEMA_PREFIX: &str = "pharox_t_";

/// The DSN tests use (see the module docs).
#[must_use]
pub fn test_database_url() -> String {
    [ENV_TEST_DATABASE_URL, crate::ENV_DATABASE_URL]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// A migrated schema of its own and a storage connected to it.
#[derive(Debug, Clone)]
pub struct TestSchema {
    name: String,
    storage: PostgresStorage,
    config: PostgresConfig,
}

impl TestSchema {
    /// Creates and migrates a fresh schema on the test server, with a pool of
    /// up to 16 connections.
    pub async fn create() -> StorageResult<Self> {
        Self::create_with(16).await
    }

    /// As [`create`](Self::create), with a pool of `max_connections`.
    ///
    /// When the server cannot be reached the error says how to get one.
    pub async fn create_with(max_connections: u32) -> StorageResult<Self> {
        let url = test_database_url();
        let base = PostgresConfig::from_dsn(&url).map_err(|e| {
            StorageError::Invalid(pharox_domain::ValidationError::new(
                ENV_TEST_DATABASE_URL,
                e.to_string(),
            ))
        })?;
        let mut admin_config = base.clone().with_max_connections(1);
        admin_config.connect_timeout = Duration::from_secs(5);
        let admin = PostgresStorage::connect(&admin_config).await.map_err(|e| {
            StorageError::Unavailable {
                message: format!(
                    "the pharox PostgreSQL tests need a server and could not reach {base}: {e}. \
                     Start one (for example `docker run -d -p 5432:5432 \
                     -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`, or your distribution's \
                     postgresql package) or point {ENV_TEST_DATABASE_URL} at one \
                     (postgres://user:pass@host:5432/db)"
                ),
                source: Some(Box::new(e)),
            }
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        drop_stale_schemas(admin.pg_pool(), now).await;
        let name = format!(
            "{TEST_SCHEMA_PREFIX}{now}_{}",
            uuid::Uuid::new_v4().simple()
        );
        // The name is ours (digits, hex): safe to put in the statement.
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(admin.pg_pool())
            .await
            .map_err(|e| crate::error::map_sqlx("creating the test schema", e))?;
        admin.close().await;

        let mut config = base
            .with_schema(name.clone())
            .with_max_connections(max_connections);
        config.acquire_timeout = Duration::from_secs(30);
        let storage = PostgresStorage::connect(&config).await?;
        pharox_migration::run(storage.connection(), pharox_migration::MigrationCommand::Up)
            .await
            .map_err(|e| StorageError::backend("migrating the test schema", e))?;
        Ok(Self {
            name,
            storage,
            config,
        })
    }

    /// The storage, connected to this schema only.
    #[must_use]
    pub fn storage(&self) -> &PostgresStorage {
        &self.storage
    }

    /// The schema's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A configuration that connects to this schema (for more pools).
    #[must_use]
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// A handle that moves this schema's time (see [`TimeShift`]).
    #[must_use]
    pub fn time_shift(&self) -> TimeShift {
        TimeShift {
            pool: self.storage.pg_pool().clone(),
        }
    }

    /// Drops the schema and everything in it, and closes the pool.
    pub async fn drop_schema(self) -> StorageResult<()> {
        self.storage.close().await;
        let base = PostgresConfig::from_dsn(&test_database_url())
            .map_err(|e| StorageError::backend("test database url", e))?
            .with_max_connections(1);
        let admin = PostgresStorage::connect(&base).await?;
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        )))
        .execute(admin.pg_pool())
        .await
        .map_err(|e| crate::error::map_sqlx("dropping the test schema", e))?;
        admin.close().await;
        Ok(())
    }
}

/// Makes time pass for a schema whose storage uses the database clock: it
/// moves every lease timestamp back instead.
#[derive(Debug, Clone)]
pub struct TimeShift {
    pool: PgPool,
}

impl TimeShift {
    /// Moves time for the database (and `search_path`) that `pool` is on.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Makes `by` pass for every lease, cooldown, ban per target and sticky
    /// session of the schema.
    pub async fn advance(&self, by: Duration) -> StorageResult<()> {
        let micros = by.as_micros() as f64;
        sqlx::query(
            "UPDATE lease SET acquired_at = acquired_at - $1::float8 * interval '1 microsecond', \
               expires_at = expires_at - $1::float8 * interval '1 microsecond', \
               released_at = released_at - $1::float8 * interval '1 microsecond'",
        )
        .bind(micros)
        .execute(&self.pool)
        .await
        .map_err(|e| crate::error::map_sqlx("time travel", e))?;
        // Cooldowns, bans per target and sessions end by the database clock
        // too (issue 13).
        for statement in [
            "UPDATE proxy SET cooldown_until = cooldown_until - $1::float8 * interval '1 microsecond' \
             WHERE cooldown_until IS NOT NULL",
            "UPDATE proxy_target_ban SET until = until - $1::float8 * interval '1 microsecond'",
            "UPDATE proxy_session SET expires_at = expires_at - $1::float8 * interval '1 microsecond', \
               updated_at = updated_at - $1::float8 * interval '1 microsecond'",
        ] {
            sqlx::query(statement)
                .bind(micros)
                .execute(&self.pool)
                .await
                .map_err(|e| crate::error::map_sqlx("time travel", e))?;
        }
        Ok(())
    }
}

/// Drops test schemas created more than an hour before `now` (left behind
/// by runs that ended without cleaning up). Best effort.
async fn drop_stale_schemas(pool: &PgPool, now: u64) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pharox\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix(TEST_SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|t| t + 3600 < now)
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(pool)
            .await;
        }
    }
}

/// `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of the acquire statement that
/// [`PostgresStorage`] runs first for `selector` and `filter` (the
/// one-statement acquire with `SKIP LOCKED`), in a transaction that is
/// rolled back, so nothing is leased. For the guard against statements that
/// read the whole pool (`tests/selectors_at_scale.rs`). The plan is the one
/// PostgreSQL makes for these parameter values (a custom plan).
///
/// `filter` must hold no predicate (a predicate takes the other path).
pub async fn explain_acquire(
    storage: &PostgresStorage,
    pool_name: &str,
    consumer_id: uuid::Uuid,
    selector: pharox_domain::Selector,
    filter: &pharox_domain::ProxyFilter,
) -> StorageResult<serde_json::Value> {
    explain(
        storage,
        pool_name,
        consumer_id,
        selector,
        filter,
        None,
        None,
        Plan::Custom,
    )
    .await
}

/// [`explain_acquire`] of the statement an acquire with `target` and/or
/// `session` runs first (the ban anti-join; the sticky-session statement).
pub async fn explain_acquire_with(
    storage: &PostgresStorage,
    pool_name: &str,
    consumer_id: uuid::Uuid,
    selector: pharox_domain::Selector,
    filter: &pharox_domain::ProxyFilter,
    target: Option<&pharox_domain::TargetHost>,
    session: Option<&pharox_domain::SessionRequest>,
) -> StorageResult<serde_json::Value> {
    explain(
        storage,
        pool_name,
        consumer_id,
        selector,
        filter,
        target,
        session,
        Plan::Custom,
    )
    .await
}

/// As [`explain_acquire`], with the generic plan: the statement is
/// prepared and executed under `plan_cache_mode = force_generic_plan`, so
/// the plan does not know the parameter values. It is the plan a hot
/// connection runs once it has executed the same statement five times and
/// PostgreSQL judged the generic plan no costlier than the custom ones
/// (PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`).
pub async fn explain_acquire_generic(
    storage: &PostgresStorage,
    pool_name: &str,
    consumer_id: uuid::Uuid,
    selector: pharox_domain::Selector,
    filter: &pharox_domain::ProxyFilter,
) -> StorageResult<serde_json::Value> {
    explain(
        storage,
        pool_name,
        consumer_id,
        selector,
        filter,
        None,
        None,
        Plan::Generic,
    )
    .await
}

/// Which plan [`explain`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Custom,
    Generic,
}

/// The prepared statement [`explain_acquire_generic`] executes (dropped
/// before its transaction ends: a prepared statement outlives a rollback).
const EXPLAINED: &str = "pharox_explained_acquire";

#[allow(clippy::too_many_arguments)]
async fn explain(
    storage: &PostgresStorage,
    pool_name: &str,
    consumer_id: uuid::Uuid,
    selector: pharox_domain::Selector,
    filter: &pharox_domain::ProxyFilter,
    target: Option<&pharox_domain::TargetHost>,
    session: Option<&pharox_domain::SessionRequest>,
    plan: Plan,
) -> StorageResult<serde_json::Value> {
    use crate::sql::{self, Arg, Binds, Lock};
    let fail = |context: &'static str| move |e| crate::error::map_sqlx(context, e);
    let mut binds = Binds::after(4);
    let filter_sql = crate::usage_sql::leasable(
        &sql::compile_acquire_filter(filter, &mut binds),
        target,
        &mut binds,
    );
    let acquire = match session {
        Some(session) => {
            let key = binds.push(Arg::Text(session.key.as_str().to_owned()));
            let ttl = binds.push(Arg::Float(session.ttl.as_micros() as f64));
            crate::usage_sql::session_acquire_statement(
                selector,
                &filter_sql,
                Lock::SkipLocked,
                &key,
                &ttl,
            )
        }
        None => sql::acquire_statement(selector, &filter_sql, Lock::SkipLocked),
    };
    let mut tx = storage
        .pg_pool()
        .begin()
        .await
        .map_err(fail("explain: begin"))?;
    let query = match plan {
        Plan::Custom => {
            let query = sqlx::query(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {acquire}"
            )))
            .bind(pool_name)
            .bind(consumer_id)
            .bind(60_000_000.0_f64)
            .bind(uuid::Uuid::now_v7());
            binds.bind_to(query)
        }
        Plan::Generic => {
            // EXECUTE takes no bind parameters of its own statement, so the
            // values go in as quoted literals (test values, quotes doubled).
            let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
            let mut types = vec!["text", "uuid", "float8", "uuid"];
            let mut values = vec![
                quote(pool_name),
                quote(&consumer_id.to_string()),
                "60000000".to_owned(),
                quote(&uuid::Uuid::now_v7().to_string()),
            ];
            for arg in &binds.args {
                let (kind, value) = match arg {
                    Arg::Text(text) => ("text", quote(text)),
                    Arg::Int(int) => ("int8", int.to_string()),
                    Arg::Float(float) => ("float8", quote(&float.to_string())),
                };
                types.push(kind);
                values.push(value);
            }
            sqlx::raw_sql(AssertSqlSafe(format!(
                "SET LOCAL plan_cache_mode = force_generic_plan; \
                 PREPARE {EXPLAINED} ({}) AS {acquire}",
                types.join(", ")
            )))
            .execute(&mut *tx)
            .await
            .map_err(fail("explain: prepare"))?;
            sqlx::query(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {EXPLAINED} ({})",
                values.join(", ")
            )))
        }
    };
    let row = query
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(fail("explain acquire"))?;
    let explained: serde_json::Value =
        sqlx::Row::try_get(&row, 0).map_err(fail("explain acquire: the plan"))?;
    if plan == Plan::Generic {
        sqlx::raw_sql(AssertSqlSafe(format!("DEALLOCATE {EXPLAINED}")))
            .execute(&mut *tx)
            .await
            .map_err(fail("explain: deallocate"))?;
    }
    tx.rollback().await.map_err(fail("explain: rollback"))?;
    Ok(explained)
}
