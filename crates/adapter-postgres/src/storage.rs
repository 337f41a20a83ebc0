//! [`PostgresStorage`]: the [`ProxyStorage`] port on PostgreSQL.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, HealthRecordId, Lease, LeaseId,
    Outcome, PoolId, PoolOverview, PoolStats, Proxy, ProxyFilter, ProxyId, ProxyPool, Selector,
    TargetBan, UsagePolicy, ValidationError, truncate_to_micros, validate_name, validate_ttl,
};
use pharox_ports::{
    AcquireRequest, ProxyStorage, ReleaseOutcome, ReleasedLease, StorageError, StorageResult,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sea_orm::sqlx::{self, AssertSqlSafe, ConnectOptions as _, Row};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseConnectionType, EntityTrait,
    QueryFilter, QueryOrder, SqlxPostgresConnector,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::PostgresConfig;
use crate::entities::proxy_pool;
use crate::error::{map_db, map_sqlx, with_retry};
use crate::hot::{Backend, HotConnection, Stash, Unresolved, is_lost_connection, timed};
use crate::rows;
use crate::sql::{self, Binds, Lock, Predicates};
use crate::usage_sql;

mod acquire;
mod connect;
mod health;
mod import;
#[cfg(test)]
mod tests;

/// How many candidates the predicate path locks and tests per round trip.
const PREDICATE_BATCH: usize = 32;

/// How many times a hot-path call runs its statement when the connection
/// keeps breaking under it. One retry is not enough where every connection
/// of an application is terminated at once, repeatedly: the retry's fresh
/// connection can be among the next batch.
pub(crate) const LOST_CONNECTION_TRIES: u32 = 3;

/// Proxy storage on PostgreSQL (see the crate docs for the design).
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStorage {
    db: DatabaseConnection,
    pub(crate) pool: PgPool,
    pub(crate) stash: Arc<Stash>,
    unresolved: Arc<Unresolved>,
    /// [`sql::RELEASE`], or [`sql::RELEASE_DURABLE`] with `durable_release`.
    pub(crate) release_sql: &'static str,
    /// [`PostgresConfig::query_timeout`].
    pub(crate) query_timeout: Duration,
    /// How long an acquire (or an outcome report) that lost its reply keeps
    /// trying to learn its outcome ([`PostgresConfig::acquire_timeout`]).
    pub(crate) resolve_timeout: Duration,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("pool_size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .finish_non_exhaustive()
    }
}

fn ttl_micros(ttl: Duration) -> f64 {
    // validate_ttl caps TTLs at 30 days: exact in an f64.
    ttl.as_micros() as f64
}

fn release_sql(durable: bool) -> &'static str {
    if durable {
        sql::RELEASE_DURABLE
    } else {
        sql::RELEASE
    }
}

impl PostgresStorage {
    /// Whether a release waits for its commit to reach disk; see
    /// [`PostgresConfig::durable_release`] (default false).
    #[must_use]
    pub fn with_durable_release(mut self, durable: bool) -> Self {
        self.release_sql = release_sql(durable);
        self
    }

    /// The SeaORM connection, for the entities in [`crate::entities`] and
    /// for migrations.
    #[must_use]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The sqlx pool under the SeaORM connection.
    #[must_use]
    pub fn pg_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every pooled connection (waits for checked-out ones).
    pub async fn close(&self) {
        self.settle_unresolved().await;
        self.stash.drain();
        self.pool.close().await;
    }

    /// A connection for a hot-path call (see [`Stash::checkout`]). Give it
    /// back with `self.stash.put` once the call has succeeded.
    pub(crate) async fn checkout(&self, context: &'static str) -> StorageResult<HotConnection> {
        self.stash
            .checkout(&self.pool, context, self.query_timeout)
            .await
    }

    /// How many connections the hot path keeps checked out between calls
    /// right now (see the crate README).
    #[must_use]
    pub fn kept_connections(&self) -> usize {
        self.stash.lock().len()
    }

    /// How many leases whose acquire lost its reply wait to be released
    /// (see the crate README's section on faults); 0 in normal operation.
    #[must_use]
    pub fn unresolved_leases(&self) -> usize {
        self.unresolved.len()
    }

    /// Every proxy of `pool_id` that `filter` selects in SQL, by id, with
    /// predicates counting as true and whatever the proxy's status or load:
    /// the set `ProxyFilter::matches_without_predicates` defines. For
    /// checking the filter compiler (and for admin listings).
    pub async fn list_matching(
        &self,
        pool_id: PoolId,
        filter: &ProxyFilter,
    ) -> StorageResult<Vec<Proxy>> {
        filter.validate()?;
        let mut binds = Binds::after(1);
        let filter_sql = sql::compile_filter(filter, Predicates::AsTrue, &mut binds);
        let statement = sql::matching_statement(&filter_sql);
        let query = binds.bind_to(sqlx::query(AssertSqlSafe(statement)).bind(pool_id.0));
        let found = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_matching", e))?;
        found.iter().map(rows::proxy).collect()
    }

    /// The release statement on a hot connection: the released lease's row,
    /// or none when it was not active.
    async fn release_on(
        &self,
        conn: &mut HotConnection,
        lease_id: LeaseId,
    ) -> StorageResult<Option<PgRow>> {
        with_retry!(timed("release", self.query_timeout, async {
            sqlx::query(AssertSqlSafe(self.release_sql))
                .bind(lease_id.0)
                .bind(sql::ACTIVE)
                .fetch_optional(&mut **conn)
                .await
                .map_err(|e| map_sqlx("release", e))
        }))
    }

    /// What a release that released nothing says: the lease was released
    /// before (by a caller or a reclaim), or it is unknown.
    pub(crate) async fn not_released(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        let released_at: Option<Option<OffsetDateTime>> =
            timed("release", self.query_timeout, async {
                sqlx::query_scalar("SELECT released_at FROM lease WHERE id = $1")
                    .bind(lease_id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx("release", e))
            })
            .await?;
        match released_at {
            Some(released_at) => Ok(ReleaseOutcome::AlreadyReleased {
                lease_id,
                released_at,
            }),
            None => Err(StorageError::not_found("lease", lease_id)),
        }
    }

    async fn fetch_lease(&self, lease_id: LeaseId) -> StorageResult<Option<Lease>> {
        let statement = format!(
            "SELECT {}, {} FROM lease l JOIN proxy p ON p.id = l.proxy_id WHERE l.id = $1",
            sql::lease_columns("l"),
            sql::PROXY_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(lease_id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("get_lease", e))?;
        row.as_ref().map(rows::lease).transpose()
    }
}

fn pool_from_model(m: proxy_pool::Model) -> ProxyPool {
    ProxyPool {
        id: m.id.into(),
        name: m.name,
        description: m.description,
        created_at: m.created_at,
    }
}

pub(crate) fn released_from_row(row: &PgRow, lease_id: LeaseId) -> StorageResult<ReleasedLease> {
    let get = |e| map_sqlx("release", e);
    Ok(ReleasedLease {
        lease_id,
        proxy_id: row.try_get::<Uuid, _>("proxy_id").map_err(get)?.into(),
        pool_id: row.try_get::<Uuid, _>("pool_id").map_err(get)?.into(),
        consumer_id: row.try_get::<Uuid, _>("consumer_id").map_err(get)?.into(),
        acquired_at: row.try_get("acquired_at").map_err(get)?,
        released_at: row.try_get("released_at").map_err(get)?,
    })
}

#[async_trait]
impl ProxyStorage for PostgresStorage {
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool> {
        pool.validate()?;
        let model = proxy_pool::ActiveModel {
            id: Set(pool.id.0),
            name: Set(pool.name.clone()),
            description: Set(pool.description.clone()),
            created_at: Set(truncate_to_micros(pool.created_at)),
        };
        let saved = proxy_pool::Entity::insert(model)
            .on_conflict(
                OnConflict::column(proxy_pool::Column::Id)
                    .update_columns([proxy_pool::Column::Name, proxy_pool::Column::Description])
                    .to_owned(),
            )
            .exec_with_returning(&self.db)
            .await
            .map_err(|e| match map_db("save_pool", e) {
                StorageError::Conflict(_) => {
                    StorageError::Conflict(format!("pool name {:?} is taken", pool.name))
                }
                other => other,
            })?;
        Ok(pool_from_model(saved))
    }

    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool> {
        proxy_pool::Entity::find_by_id(id.0)
            .one(&self.db)
            .await
            .map_err(|e| map_db("get_pool", e))?
            .map(pool_from_model)
            .ok_or_else(|| StorageError::not_found("pool", id))
    }

    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool> {
        proxy_pool::Entity::find()
            .filter(proxy_pool::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(|e| map_db("get_pool_by_name", e))?
            .map(pool_from_model)
            .ok_or_else(|| StorageError::not_found("pool", name))
    }

    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>> {
        Ok(proxy_pool::Entity::find()
            .order_by_asc(proxy_pool::Column::Name)
            .all(&self.db)
            .await
            .map_err(|e| map_db("list_pools", e))?
            .into_iter()
            .map(pool_from_model)
            .collect())
    }

    async fn delete_pool(&self, id: PoolId) -> StorageResult<()> {
        // Proxies, their leases and health records, and the selector state
        // go by ON DELETE CASCADE.
        let result = with_retry!(async {
            proxy_pool::Entity::delete_by_id(id.0)
                .exec(&self.db)
                .await
                .map_err(|e| map_db("delete_pool", e))
        })?;
        if result.rows_affected == 0 {
            return Err(StorageError::not_found("pool", id));
        }
        Ok(())
    }

    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy> {
        proxy.validate()?;
        let mut saved = self
            .upsert_proxies(std::slice::from_ref(proxy), "save_proxy")
            .await?;
        saved.pop().ok_or_else(|| StorageError::Backend {
            message: "save_proxy: the database returned no row".to_owned(),
            source: None,
        })
    }

    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>> {
        let mut ids = HashSet::with_capacity(proxies.len());
        for (i, proxy) in proxies.iter().enumerate() {
            proxy
                .validate()
                .map_err(|e| e.within(&format!("proxies[{i}]")))?;
            if !ids.insert(proxy.id) {
                return Err(ValidationError::new(
                    format!("proxies[{i}].id"),
                    "appears twice in one batch",
                )
                .into());
            }
        }
        if proxies.is_empty() {
            return Ok(Vec::new());
        }
        self.upsert_proxies(proxies, "add_proxies").await
    }

    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy> {
        let statement = format!("SELECT {} FROM proxy p WHERE p.id = $1", sql::PROXY_COLUMNS);
        let row = sqlx::query(AssertSqlSafe(statement))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("get_proxy", e))?;
        match row {
            Some(row) => rows::proxy(&row),
            None => Err(StorageError::not_found("proxy", id)),
        }
    }

    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>> {
        let statement = format!(
            "SELECT {} FROM proxy p WHERE p.pool_id = $1 ORDER BY p.id",
            sql::PROXY_COLUMNS
        );
        let found = sqlx::query(AssertSqlSafe(statement))
            .bind(pool_id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_proxies", e))?;
        if found.is_empty() {
            self.get_pool(pool_id).await?;
        }
        found.iter().map(rows::proxy).collect()
    }

    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()> {
        let result = with_retry!(async {
            sqlx::query("DELETE FROM proxy WHERE id = $1")
                .bind(id.0)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx("delete_proxy", e))
        })?;
        if result.rows_affected() == 0 {
            return Err(StorageError::not_found("proxy", id));
        }
        Ok(())
    }

    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId> {
        validate_name("consumer.name", name)?;
        // The statement's snapshot may miss a row a racing insert committed
        // while ON CONFLICT waited for it; the next attempt sees it.
        for _ in 0..3 {
            let id: Option<Uuid> = sqlx::query_scalar(
                "WITH ins AS (INSERT INTO consumer (id, name, created_at) VALUES ($1, $2, now()) \
                   ON CONFLICT (name) DO NOTHING RETURNING id) \
                 SELECT id FROM ins UNION ALL SELECT id FROM consumer WHERE name = $2 LIMIT 1",
            )
            .bind(ConsumerId::new().0)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("ensure_consumer", e))?;
            if let Some(id) = id {
                return Ok(id.into());
            }
        }
        Err(StorageError::Transient {
            message: format!("ensure_consumer: consumer {name:?} kept racing"),
            source: None,
        })
    }

    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>> {
        request.validate()?;
        self.settle_unresolved().await;
        let lease_id = request.lease_id.unwrap_or_default();
        // A lost connection costs another try on a fresh one, after the
        // lost try's outcome is known (it may have leased).
        let mut tries = 1;
        loop {
            let mut conn = self.checkout("acquire").await?;
            let backend = conn.backend;
            let result = if request.filter.has_predicate() {
                self.acquire_with_predicates(&mut conn, request, lease_id)
                    .await
            } else {
                self.acquire_unfiltered_or_compiled(&mut conn, request, lease_id)
                    .await
            };
            match result {
                Ok(Some(lease)) => {
                    self.stash.put(conn);
                    return Ok(Some(lease));
                }
                Ok(None) => {
                    self.stash.put(conn);
                    // A caller-chosen id may name a lease an earlier call
                    // made (whose reply it never got).
                    if request.lease_id.is_some()
                        && let Some(lease) = self.repeated_lease(lease_id, request).await?
                    {
                        return Ok(Some(lease));
                    }
                    self.check_consumer(request.consumer_id).await?;
                    return Ok(None);
                }
                Err(e) if crate::error::is_duplicate_lease(&e) => {
                    self.stash.put(conn);
                    return match self.repeated_lease(lease_id, request).await? {
                        Some(lease) => Ok(Some(lease)),
                        None => Err(e),
                    };
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    match self.resolve_acquire(lease_id, backend, request).await {
                        Ok(Some(lease)) => return Ok(Some(lease)),
                        Ok(None) if tries < LOST_CONNECTION_TRIES => {
                            tracing::debug!(lease = %lease_id, tries, error = %e, "acquire lost its connection; trying again");
                            tries += 1;
                        }
                        Ok(None) => return Err(e),
                        Err(unknown) => {
                            tracing::warn!(
                                lease = %lease_id,
                                error = %unknown,
                                "acquire lost its reply and its outcome stays unknown; \
                                 the lease, if any, is released when the database answers"
                            );
                            self.unresolved.push(lease_id, backend);
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        self.settle_unresolved().await;
        // Idempotent: a lost connection costs another try on a fresh one.
        let mut tries = 1;
        let row = loop {
            let mut conn = self.checkout("release").await?;
            match self.release_on(&mut conn, lease_id).await {
                Ok(row) => {
                    self.stash.put(conn);
                    break row;
                }
                Err(e) if is_lost_connection(&e) => {
                    conn.discard();
                    self.stash.drain();
                    if tries >= LOST_CONNECTION_TRIES {
                        return Err(e);
                    }
                    tracing::debug!(lease = %lease_id, tries, error = %e, "release lost its connection; trying again");
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(row) = row {
            return released_from_row(&row, lease_id).map(ReleaseOutcome::Released);
        }
        self.not_released(lease_id).await
    }

    async fn release_with_outcome<'a>(
        &self,
        lease_id: LeaseId,
        outcome: Option<&'a Outcome>,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome> {
        match outcome {
            Some(outcome) => {
                self.release_with_outcome_now(lease_id, outcome, policy)
                    .await
            }
            None => {
                policy.validate()?;
                self.release(lease_id).await
            }
        }
    }

    async fn report_outcome(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy> {
        self.report_outcome_now(lease_id, outcome, policy).await
    }

    async fn list_target_bans(&self, proxy_id: ProxyId) -> StorageResult<Vec<TargetBan>> {
        self.list_target_bans_now(proxy_id).await
    }

    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease> {
        validate_ttl(ttl)?;
        let statement = format!(
            "WITH u AS (UPDATE lease SET expires_at = now() + $2::float8 * interval '1 microsecond' \
               WHERE id = $1 AND status = $3 AND expires_at > now() RETURNING *) \
             SELECT {}, {} FROM u JOIN proxy p ON p.id = (SELECT proxy_id FROM u)",
            sql::lease_columns("u"),
            sql::PROXY_COLUMNS
        );
        // Renewing twice is harmless, so a lost connection costs one more
        // try (sqlx hands out another connection).
        let renew_once = || async {
            with_retry!(timed("renew", self.query_timeout, async {
                sqlx::query(AssertSqlSafe(statement.as_str()))
                    .bind(lease_id.0)
                    .bind(ttl_micros(ttl))
                    .bind(sql::ACTIVE) // a parameter: see sql::ACTIVE
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx("renew", e))
            }))
        };
        let row = match renew_once().await {
            Err(e) if is_lost_connection(&e) => renew_once().await?,
            other => other?,
        };
        if let Some(row) = row {
            return rows::lease(&row);
        }
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM lease WHERE id = $1)")
            .bind(lease_id.0)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx("renew", e))?;
        if exists {
            Err(StorageError::LeaseNotActive(lease_id))
        } else {
            Err(StorageError::not_found("lease", lease_id))
        }
    }

    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease> {
        self.fetch_lease(lease_id)
            .await?
            .ok_or_else(|| StorageError::not_found("lease", lease_id))
    }

    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>> {
        validate_name("pool_name", pool_name)?;
        filter.validate()?;
        let with_predicates = filter.has_predicate();
        let mode = if with_predicates {
            Predicates::Superset
        } else {
            Predicates::AsTrue
        };
        let mut binds = Binds::after(sql::CANDIDATES_FIXED_PARAMS);
        let filter_sql = usage_sql::leasable(
            &sql::compile_filter(filter, mode, &mut binds),
            None,
            &mut binds,
        );
        let statement = sql::candidates_statement(selector, &filter_sql, Lock::None);
        // random's start key, one for every batch of this call.
        let start_key: f64 = rand::random();
        let batch = if with_predicates { PREDICATE_BATCH } else { 1 };
        let mut seen: Vec<Uuid> = Vec::new();
        loop {
            let query = sqlx::query(AssertSqlSafe(statement.as_str()))
                .bind(pool_name)
                .bind(seen.clone())
                .bind(i64::try_from(batch).unwrap_or(1))
                .bind(start_key);
            let found = binds
                .bind_to(query)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx("find_available", e))?;
            for row in &found {
                let mut proxy = rows::proxy(row)?;
                let expired: i32 = row
                    .try_get("expired")
                    .map_err(|e| map_sqlx("find_available", e))?;
                proxy.current_leases = proxy
                    .current_leases
                    .saturating_sub(u32::try_from(expired).unwrap_or(0));
                seen.push(proxy.id.0);
                if !with_predicates || sql::matches(filter, &proxy) {
                    return Ok(Some(proxy));
                }
            }
            if found.len() < batch {
                return Ok(None);
            }
        }
    }

    async fn cleanup_expired(&self) -> StorageResult<u64> {
        let n: i64 = with_retry!(async {
            sqlx::query_scalar(sql::CLEANUP_EXPIRED)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map_sqlx("cleanup_expired", e))
        })?;
        // Sessions past their TTL are never read again.
        with_retry!(async {
            sqlx::query(crate::usage_sql::DELETE_EXPIRED_SESSIONS)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx("cleanup_expired", e))
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        self.apply_health(result, policy).await
    }

    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        Ok(self
            .list_health_records(proxy_id, 1)
            .await?
            .into_iter()
            .next())
    }

    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        self.health_records(proxy_id, limit).await
    }

    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        validate_name("pool_name", pool_name)?;
        let row = sqlx::query(sql::POOL_STATS)
            .bind(pool_name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx("pool_stats", e))?
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let get = |name: &str| -> StorageResult<u64> {
            let v: i64 = row.try_get(name).map_err(|e| map_sqlx("pool_stats", e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(PoolStats {
            pool_id: row
                .try_get::<Uuid, _>("id")
                .map_err(|e| map_sqlx("pool_stats", e))?
                .into(),
            pool_name: row.try_get("name").map_err(|e| map_sqlx("pool_stats", e))?,
            total_proxies: get("total")?,
            active_proxies: get("active")?,
            available_proxies: get("available")?,
            cooling_down_proxies: get("cooling")?,
            leased_proxies: get("leased")?,
            total_leases: get("leases")?,
        })
    }

    async fn pool_overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        self.overview(pool_name).await
    }

    async fn list_leases<'a>(
        &self,
        pool_name: &str,
        consumer: Option<&'a str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        self.active_leases(pool_name, consumer, limit).await
    }
}
