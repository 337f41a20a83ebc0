//! The operator's reads on PostgreSQL: the pool overview (one aggregate
//! statement) and the listing of active leases. They reclaim nothing.

use std::fmt::Write as _;

use pharox_domain::{
    CheckedRange, LatencySummary, Lease, PoolOverview, ProxyStatus, validate_name,
};
use pharox_ports::{StorageError, StorageResult};
use sea_orm::sqlx::{self, AssertSqlSafe, Row};
use uuid::Uuid;

use crate::PostgresStorage;
use crate::error::map_sqlx;
use crate::rows;
use crate::sql;

/// The overview of the pool named `$1`: no row when there is no such pool.
/// Leases are counted from the lease table (active, before or at/after
/// their expiry), proxies in one pass with `percentile_cont` over their
/// latest latency. `checked_at` leaves out the epoch, which marks a proxy
/// never checked (see `rows::NEVER_CHECKED`).
const POOL_OVERVIEW: &str = "WITH pool AS (SELECT id, name FROM proxy_pool WHERE name = $1), \
     l AS (SELECT count(*) FILTER (WHERE expires_at > now())::bigint AS live, \
                  count(DISTINCT proxy_id) FILTER (WHERE expires_at > now())::bigint AS leased, \
                  count(*) FILTER (WHERE expires_at <= now())::bigint AS expired \
           FROM lease WHERE pool_id = (SELECT id FROM pool) AND status = 'active'), \
     p AS (SELECT count(*)::bigint AS total, \
                  count(*) FILTER (WHERE status = 'active')::bigint AS n_active, \
                  count(*) FILTER (WHERE status = 'inactive')::bigint AS n_inactive, \
                  count(*) FILTER (WHERE status = 'slow')::bigint AS n_slow, \
                  count(*) FILTER (WHERE status = 'banned')::bigint AS n_banned, \
                  count(*) FILTER (WHERE status = 'active' AND cooldown_until > now())::bigint \
                      AS n_cooling, \
                  COALESCE(bool_or(status = 'active' AND max_concurrency IS NULL), FALSE) \
                      AS unlimited, \
                  COALESCE(sum(max_concurrency) FILTER (WHERE status = 'active'), 0)::bigint \
                      AS capacity, \
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY last_latency_ms) AS p50, \
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY last_latency_ms) AS p95, \
                  min(checked_at) FILTER (WHERE checked_at > 'epoch') AS oldest, \
                  max(checked_at) FILTER (WHERE checked_at > 'epoch') AS newest \
           FROM proxy WHERE pool_id = (SELECT id FROM pool)) \
     SELECT pool.id, pool.name, p.*, l.* FROM pool, p, l";

impl PostgresStorage {
    /// [`ProxyStorage::pool_overview`](pharox_ports::ProxyStorage::pool_overview).
    pub(crate) async fn overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        validate_name("pool_name", pool_name)?;
        let row = sqlx::query(POOL_OVERVIEW)
            .bind(pool_name)
            .fetch_optional(self.pg_pool())
            .await
            .map_err(|e| map_sqlx("pool_overview", e))?
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let count = |name: &str| -> StorageResult<u64> {
            let v: i64 = row
                .try_get(name)
                .map_err(|e| map_sqlx("pool_overview", e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let mut by_status = PoolOverview::empty_by_status();
        for (status, column) in [
            (ProxyStatus::Active, "n_active"),
            (ProxyStatus::Inactive, "n_inactive"),
            (ProxyStatus::Slow, "n_slow"),
            (ProxyStatus::Banned, "n_banned"),
        ] {
            by_status.insert(status, count(column)?);
        }
        let unlimited: bool = row
            .try_get("unlimited")
            .map_err(|e| map_sqlx("pool_overview", e))?;
        let get = |name: &str| map_sqlx_get(&row, name);
        Ok(PoolOverview {
            pool_id: row
                .try_get::<Uuid, _>("id")
                .map_err(|e| map_sqlx("pool_overview", e))?
                .into(),
            pool: row
                .try_get("name")
                .map_err(|e| map_sqlx("pool_overview", e))?,
            proxies: count("total")?,
            by_status,
            leased_proxies: count("leased")?,
            active_leases: count("live")?,
            cooling_down: count("n_cooling")?,
            capacity: if unlimited {
                None
            } else {
                Some(count("capacity")?)
            },
            expired_unreclaimed: count("expired")?,
            latency_ms: LatencySummary {
                p50: get("p50")?,
                p95: get("p95")?,
            },
            checked_at: CheckedRange {
                oldest: row
                    .try_get("oldest")
                    .map_err(|e| map_sqlx("pool_overview", e))?,
                newest: row
                    .try_get("newest")
                    .map_err(|e| map_sqlx("pool_overview", e))?,
            },
        })
    }

    /// [`ProxyStorage::list_leases`](pharox_ports::ProxyStorage::list_leases).
    pub(crate) async fn active_leases(
        &self,
        pool_name: &str,
        consumer: Option<&str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        validate_name("pool_name", pool_name)?;
        let pool_id: Uuid = sqlx::query_scalar("SELECT id FROM proxy_pool WHERE name = $1")
            .bind(pool_name)
            .fetch_optional(self.pg_pool())
            .await
            .map_err(|e| map_sqlx("list_leases", e))?
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let consumer_id: Option<Uuid> = match consumer {
            None => None,
            Some(name) => {
                let found: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM consumer WHERE name = $1")
                        .bind(name)
                        .fetch_optional(self.pg_pool())
                        .await
                        .map_err(|e| map_sqlx("list_leases", e))?;
                match found {
                    Some(id) => Some(id),
                    None => return Ok(Vec::new()),
                }
            }
        };
        let mut statement = format!(
            "SELECT {}, {} FROM lease l JOIN proxy p ON p.id = l.proxy_id \
             WHERE l.pool_id = $1 AND l.status = 'active' AND l.expires_at > now() \
             AND ($2::uuid IS NULL OR l.consumer_id = $2) ",
            sql::lease_columns("l"),
            sql::PROXY_COLUMNS
        );
        let _ = write!(statement, "ORDER BY l.acquired_at, l.id LIMIT $3");
        let found = sqlx::query(AssertSqlSafe(statement))
            .bind(pool_id)
            .bind(consumer_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pg_pool())
            .await
            .map_err(|e| map_sqlx("list_leases", e))?;
        found.iter().map(rows::lease).collect()
    }
}

/// A nullable float column of the overview row.
fn map_sqlx_get(row: &sqlx::postgres::PgRow, name: &str) -> StorageResult<Option<f64>> {
    row.try_get(name).map_err(|e| map_sqlx("pool_overview", e))
}
