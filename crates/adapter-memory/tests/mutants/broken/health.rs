//! The health and stats methods of [`Broken`]'s `ProxyStorage`: the
//! results applied, the last one, the records and the pool stats, each as
//! its mutant breaks it.

use super::*;

impl Broken {
    /// `ProxyStorage::apply_health_result`, broken as the mutant says.
    pub(super) async fn apply_health(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        let applied = match self.mutant {
            Mutant::HealthResultRecordedBeforeValidating => {
                if let Err(e) = result.validate() {
                    let mut fixed = result.clone();
                    fixed.attempts = fixed.attempts.max(1);
                    if fixed
                        .latency_ms
                        .is_some_and(|l| !(l.is_finite() && l >= 0.0))
                    {
                        fixed.latency_ms = None;
                    }
                    let _ = self.inner.apply_health_result(&fixed, policy).await;
                    return Err(e.into());
                }
                self.inner.apply_health_result(result, policy).await?
            }
            Mutant::HealthPolicyIgnored => {
                self.inner
                    .apply_health_result(result, &HealthPolicy::immediate())
                    .await?
            }
            Mutant::BanLiftedBySuccess => {
                if result.reachable
                    && let Ok(p) = self.inner.get_proxy(result.proxy_id).await
                    && p.status == ProxyStatus::Banned
                {
                    self.inner
                        .save_proxy(&Proxy {
                            status: ProxyStatus::Active,
                            ..p
                        })
                        .await?;
                }
                self.inner.apply_health_result(result, policy).await?
            }
            Mutant::HealthResultForUnknownProxyIsNotFound => {
                match self.inner.apply_health_result(result, policy).await? {
                    None => return Err(StorageError::not_found("proxy", result.proxy_id)),
                    some => some,
                }
            }
            Mutant::HealthResultLeavesCheckedAt => {
                if let Ok(before) = self.inner.get_proxy(result.proxy_id).await {
                    self.side
                        .lock()
                        .overrides
                        .entry(result.proxy_id)
                        .or_default()
                        .checked_at
                        .get_or_insert(before.checked_at);
                }
                self.inner.apply_health_result(result, policy).await?
            }
            _ => self.inner.apply_health_result(result, policy).await?,
        };
        Ok(applied.map(|p| self.report(p)))
    }

    /// `ProxyStorage::last_health_result`, broken as the mutant says.
    pub(super) async fn last_health(
        &self,
        proxy_id: ProxyId,
    ) -> StorageResult<Option<HealthRecord>> {
        Ok(self
            .list_health_records(proxy_id, 1)
            .await?
            .into_iter()
            .next())
    }

    /// `ProxyStorage::list_health_records`, broken as the mutant says.
    pub(super) async fn health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        if self.is(Mutant::HealthHistoryOfUnknownProxyIsNotFound)
            && self.inner.get_proxy(proxy_id).await.is_err()
        {
            return Err(StorageError::not_found("proxy", proxy_id));
        }
        let mut records = match self.mutant {
            Mutant::HealthResultNotRecorded => Vec::new(),
            Mutant::HealthRecordsOldestFirst => {
                let mut all = self.inner.list_health_records(proxy_id, usize::MAX).await?;
                all.reverse();
                all.truncate(limit);
                all
            }
            Mutant::HealthRecordsIgnoreLimit => {
                self.inner.list_health_records(proxy_id, usize::MAX).await?
            }
            _ => self.inner.list_health_records(proxy_id, limit).await?,
        };
        if records.is_empty()
            && let Some(ghost) = self.side.lock().ghost_health.get(&proxy_id)
        {
            records = ghost.iter().take(limit).cloned().collect();
        }
        Ok(records)
    }

    /// `ProxyStorage::pool_stats`, broken as the mutant says.
    pub(super) async fn stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        let pool_name = self.resolve(pool_name).await;
        match self.mutant {
            Mutant::PoolStatsOfUnknownPoolIsEmpty => {
                match self.inner.pool_stats(&pool_name).await {
                    Err(e) if is_not_found(&e, "pool") => Ok(PoolStats {
                        pool_id: PoolId::new(),
                        pool_name,
                        total_proxies: 0,
                        active_proxies: 0,
                        available_proxies: 0,
                        cooling_down_proxies: 0,
                        leased_proxies: 0,
                        total_leases: 0,
                    }),
                    other => other,
                }
            }
            Mutant::PoolStatsCountsFullProxiesAsAvailable => {
                let mut s = self.inner.pool_stats(&pool_name).await?;
                s.available_proxies = s.active_proxies;
                Ok(s)
            }
            Mutant::PoolStatsCountsExpiredLeases => {
                let pool = self.inner.get_pool_by_name(&pool_name).await?;
                let before = self.inner.list_proxies(pool.id).await?;
                let mut s = self.inner.pool_stats(&pool_name).await?;
                s.total_leases = before.iter().map(|p| u64::from(p.current_leases)).sum();
                s.leased_proxies = before.iter().filter(|p| p.current_leases > 0).count() as u64;
                s.available_proxies = before
                    .iter()
                    .filter(|p| {
                        p.status == ProxyStatus::Active
                            && p.max_concurrency.is_none_or(|max| p.current_leases < max)
                    })
                    .count() as u64;
                Ok(s)
            }
            Mutant::AcquireChecksCapacityThenLeases => {
                let mut s = self.inner.pool_stats(&pool_name).await?;
                let full = self.full_proxies(&pool_name).await?.unwrap_or_default();
                let pool = self.inner.get_pool_by_name(&pool_name).await?;
                let proxies = self.inner.list_proxies(pool.id).await?;
                s.available_proxies = proxies
                    .iter()
                    .filter(|p| p.status == ProxyStatus::Active && !full.contains(&p.id))
                    .count() as u64;
                Ok(s)
            }
            _ => self.inner.pool_stats(&pool_name).await,
        }
    }
}
