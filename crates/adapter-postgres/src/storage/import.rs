//! Writing many proxies at once (`add_proxies`): one upsert per batch.

use super::*;

impl PostgresStorage {
    pub(super) async fn upsert_proxies(
        &self,
        proxies: &[Proxy],
        context: &'static str,
    ) -> StorageResult<Vec<Proxy>> {
        let mut ids = Vec::with_capacity(proxies.len());
        let mut pool_ids = Vec::with_capacity(proxies.len());
        let mut hosts = Vec::with_capacity(proxies.len());
        let mut ports = Vec::with_capacity(proxies.len());
        let mut protocols = Vec::with_capacity(proxies.len());
        let mut statuses = Vec::with_capacity(proxies.len());
        let mut credentials = Vec::with_capacity(proxies.len());
        let mut sources = Vec::with_capacity(proxies.len());
        let mut countries = Vec::with_capacity(proxies.len());
        let mut cities = Vec::with_capacity(proxies.len());
        let mut latitudes = Vec::with_capacity(proxies.len());
        let mut longitudes = Vec::with_capacity(proxies.len());
        let mut isps = Vec::with_capacity(proxies.len());
        let mut asns = Vec::with_capacity(proxies.len());
        let mut limits = Vec::with_capacity(proxies.len());
        let mut created = Vec::with_capacity(proxies.len());
        for (i, p) in proxies.iter().enumerate() {
            // Python pharox 0.11 workers reading the row refuse a password
            // that is only whitespace (the domain refuses only an empty
            // one): such a proxy would fail every Python acquire that
            // reaches it, so it is not written.
            if p.credentials
                .as_ref()
                .is_some_and(|c| c.password.chars().all(char::is_whitespace))
            {
                let error = ValidationError::new(
                    "credentials.password",
                    "must not be only whitespace (Python pharox workers sharing the \
                     database cannot read such a proxy)",
                );
                return Err(StorageError::Invalid(if context == "add_proxies" {
                    error.within(&format!("proxies[{i}]"))
                } else {
                    error
                }));
            }
            ids.push(p.id.0);
            pool_ids.push(p.pool_id.0);
            hosts.push(p.host.clone());
            ports.push(i32::from(p.port));
            protocols.push(p.protocol.as_str().to_owned());
            statuses.push(p.status.as_str().to_owned());
            credentials.push(
                p.credentials
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|_| {
                        StorageError::Invalid(ValidationError::new(
                            "credentials",
                            "cannot be encoded",
                        ))
                    })?,
            );
            sources.push(p.source.clone());
            countries.push(p.country.clone());
            cities.push(p.city.clone());
            latitudes.push(p.latitude);
            longitudes.push(p.longitude);
            isps.push(p.isp.clone());
            asns.push(p.asn.map(i64::from));
            limits.push(
                p.max_concurrency
                    .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            );
            created.push(truncate_to_micros(p.created_at));
        }
        let statement = format!(
            "INSERT INTO proxy AS p (id, pool_id, host, port, protocol, status, credentials, source, \
               country, city, latitude, longitude, isp, asn, max_concurrency, current_leases, created_at, \
               checked_at) \
             SELECT t.id, t.pool_id, t.host, t.port, t.protocol, t.status, t.credentials::json, \
               t.source, t.country, t.city, t.latitude, t.longitude, t.isp, t.asn, t.max_concurrency, \
               0, t.created_at, $17::timestamptz \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::float8[], $12::float8[], \
               $13::text[], $14::int8[], $15::int4[], $16::timestamptz[]) \
               AS t(id, pool_id, host, port, protocol, status, credentials, source, country, city, \
                    latitude, longitude, isp, asn, max_concurrency, created_at) \
             ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, \
               protocol = EXCLUDED.protocol, status = EXCLUDED.status, \
               credentials = EXCLUDED.credentials, source = EXCLUDED.source, \
               country = EXCLUDED.country, city = EXCLUDED.city, latitude = EXCLUDED.latitude, \
               longitude = EXCLUDED.longitude, isp = EXCLUDED.isp, asn = EXCLUDED.asn, \
               max_concurrency = EXCLUDED.max_concurrency \
             WHERE p.pool_id = EXCLUDED.pool_id \
             RETURNING {}",
            sql::PROXY_COLUMNS
        );
        let expected = proxies.len();
        let saved = with_retry!(async {
            let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(context, e))?;
            let result = sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(&ids)
                .bind(&pool_ids)
                .bind(&hosts)
                .bind(&ports)
                .bind(&protocols)
                .bind(&statuses)
                .bind(&credentials)
                .bind(&sources)
                .bind(&countries)
                .bind(&cities)
                .bind(&latitudes)
                .bind(&longitudes)
                .bind(&isps)
                .bind(&asns)
                .bind(&limits)
                .bind(&created)
                // A new proxy is never checked: the stored marker for that,
                // which Python can read (see `rows::NEVER_CHECKED`). An
                // update keeps the stored `checked_at`.
                .bind(rows::NEVER_CHECKED)
                .fetch_all(&mut *tx)
                .await;
            let found = match result {
                Ok(found) => found,
                Err(e) => {
                    return Err(match map_sqlx(context, e) {
                        StorageError::NotFound { entity: "pool", .. } => {
                            let known = self.missing_pool(&pool_ids).await;
                            StorageError::not_found("pool", known)
                        }
                        other => other,
                    });
                }
            };
            if found.len() != expected {
                // Some id exists in another pool; the transaction is rolled
                // back when `tx` drops, so nothing is written.
                return Err(StorageError::Conflict(
                    "a proxy cannot move to another pool".to_owned(),
                ));
            }
            let saved = found
                .iter()
                .map(rows::proxy)
                .collect::<StorageResult<Vec<_>>>()?;
            tx.commit().await.map_err(|e| map_sqlx(context, e))?;
            Ok(saved)
        })?;
        // RETURNING order is not guaranteed: give them back in input order.
        let mut by_id: std::collections::HashMap<ProxyId, Proxy> =
            saved.into_iter().map(|p| (p.id, p)).collect();
        Ok(proxies.iter().filter_map(|p| by_id.remove(&p.id)).collect())
    }

    /// The first of `pool_ids` that does not exist (for a not-found message).
    pub(super) async fn missing_pool(&self, pool_ids: &[Uuid]) -> String {
        let found: Result<Option<Uuid>, _> = sqlx::query_scalar(
            "SELECT x FROM UNNEST($1::uuid[]) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM proxy_pool WHERE id = x) LIMIT 1",
        )
        .bind(pool_ids)
        .fetch_optional(&self.pool)
        .await;
        match found {
            Ok(Some(id)) => id.to_string(),
            _ => "of the proxy".to_owned(),
        }
    }
}
