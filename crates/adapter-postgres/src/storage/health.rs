//! Health results on PostgreSQL: applying one and reading the history.

use super::*;

impl PostgresStorage {
    /// [`ProxyStorage::apply_health_result`]: the proxy row locked, the
    /// policy applied, the row and a history record written in one
    /// transaction.
    pub(super) async fn apply_health(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        result.validate()?;
        let select = format!(
            "SELECT {} FROM proxy p WHERE p.id = $1 FOR UPDATE",
            sql::PROXY_COLUMNS
        );
        let update = format!(
            "UPDATE proxy p SET status = $2, checked_at = $3, consecutive_failures = $4, \
               last_latency_ms = $5, last_error = $6, last_http_status = $7, \
               error_score = CASE WHEN $8 THEN 0 ELSE p.error_score END, \
               cooldown_until = CASE WHEN $8 THEN NULL ELSE p.cooldown_until END, \
               consecutive_cooldowns = CASE WHEN $8 THEN 0 ELSE p.consecutive_cooldowns END \
             WHERE p.id = $1 RETURNING {}",
            sql::PROXY_COLUMNS
        );
        let checked_at = truncate_to_micros(result.checked_at);
        with_retry!(async {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let row = sqlx::query(AssertSqlSafe(select.as_str()))
                .bind(result.proxy_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let before = rows::proxy(&row)?;
            let outcome = policy.apply(before.status, &before.health, result);
            let row = sqlx::query(AssertSqlSafe(update.as_str()))
                .bind(result.proxy_id.0)
                .bind(outcome.status.as_str())
                .bind(checked_at)
                .bind(i32::try_from(outcome.health.consecutive_failures).unwrap_or(i32::MAX))
                .bind(outcome.health.last_latency_ms)
                .bind(outcome.health.last_error.as_deref())
                .bind(outcome.health.last_http_status.map(i32::from))
                // The policy's outcome ends the cooldown: the usage is reset
                // (bans per target stay).
                .bind(outcome.ends_cooldown)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            let after = rows::proxy(&row)?;
            sqlx::query(
                "INSERT INTO proxy_health_record (id, proxy_id, checked_at, reachable, latency_ms, \
                   protocol, status_before, status_after, error, http_status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(HealthRecordId::new().0)
            .bind(result.proxy_id.0)
            .bind(checked_at)
            .bind(result.reachable)
            // Whole milliseconds: Python pharox 0.11 reads this column as an
            // integer and rejects a fraction (the proxy row keeps the exact
            // figure in last_latency_ms).
            .bind(result.latency_ms.map(f64::round))
            .bind(result.protocol.as_str())
            .bind(before.status.as_str())
            .bind(after.status.as_str())
            .bind(result.error.as_deref())
            .bind(result.http_status.map(i32::from))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx("apply_health_result", e))?;
            tx.commit()
                .await
                .map_err(|e| map_sqlx("apply_health_result", e))?;
            Ok(Some(after))
        })
    }

    /// [`ProxyStorage::list_health_records`]: newest first.
    pub(super) async fn health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let statement = format!(
            "SELECT {} FROM proxy_health_record WHERE proxy_id = $1 \
             ORDER BY checked_at DESC, id DESC LIMIT $2",
            sql::HEALTH_COLUMNS
        );
        let found = sqlx::query(AssertSqlSafe(statement))
            .bind(proxy_id.0)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("list_health_records", e))?;
        found.iter().map(rows::health_record).collect()
    }
}
