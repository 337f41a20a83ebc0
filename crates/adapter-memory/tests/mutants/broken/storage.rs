//! [`Broken`]'s `ProxyStorage`: every method delegates to the real
//! storage except where a mutant breaks its rule (the health and stats
//! methods' bodies are in `health`).

use super::*;

#[async_trait]
impl ProxyStorage for Broken {
    async fn save_pool(&self, pool: &ProxyPool) -> StorageResult<ProxyPool> {
        match self.mutant {
            Mutant::DuplicatePoolNameReplacesTheOther => match self.inner.save_pool(pool).await {
                Err(StorageError::Conflict(_)) => {
                    let other = self.inner.get_pool_by_name(&pool.name).await?;
                    self.inner.delete_pool(other.id).await?;
                    self.inner.save_pool(pool).await
                }
                other => other,
            },
            Mutant::PoolUpdateOverwritesCreatedAt => {
                let saved = self.inner.save_pool(pool).await?;
                self.side
                    .lock()
                    .pool_created
                    .insert(pool.id, pool.created_at);
                Ok(self.report_pool(saved))
            }
            Mutant::PoolNamesIgnoreCase => {
                pool.validate()?;
                let pools = self.inner.list_pools().await?;
                if let Some(other) = pools
                    .iter()
                    .find(|p| p.id != pool.id && p.name.eq_ignore_ascii_case(&pool.name))
                {
                    return Err(StorageError::Conflict(format!(
                        "pool name {:?} is taken by {:?}",
                        pool.name, other.name
                    )));
                }
                self.inner.save_pool(pool).await
            }
            _ => self.inner.save_pool(pool).await,
        }
    }

    async fn get_pool(&self, id: PoolId) -> StorageResult<ProxyPool> {
        self.inner.get_pool(id).await.map(|p| self.report_pool(p))
    }

    async fn get_pool_by_name(&self, name: &str) -> StorageResult<ProxyPool> {
        let name = self.resolve(name).await;
        self.inner
            .get_pool_by_name(&name)
            .await
            .map(|p| self.report_pool(p))
    }

    async fn list_pools(&self) -> StorageResult<Vec<ProxyPool>> {
        let mut pools: Vec<ProxyPool> = self
            .inner
            .list_pools()
            .await?
            .into_iter()
            .map(|p| self.report_pool(p))
            .collect();
        if self.is(Mutant::ListPoolsUnordered) {
            pools.reverse();
        }
        Ok(pools)
    }

    async fn delete_pool(&self, id: PoolId) -> StorageResult<()> {
        match self.mutant {
            Mutant::DeleteOfUnknownIdSucceeds => match self.inner.delete_pool(id).await {
                Err(e) if is_not_found(&e, "pool") => Ok(()),
                other => other,
            },
            Mutant::DeletePoolLeavesItsProxies => {
                let proxies = self.inner.list_proxies(id).await.unwrap_or_default();
                self.inner.delete_pool(id).await?;
                let mut side = self.side.lock();
                for p in proxies {
                    side.ghost_proxies.insert(p.id, p);
                }
                Ok(())
            }
            Mutant::DeletePoolLeavesItsLeases => {
                self.keep_lease_ghosts(|l| l.pool_id == id).await;
                self.inner.delete_pool(id).await
            }
            Mutant::DeletePoolLeavesHealthHistory => {
                for p in self.inner.list_proxies(id).await.unwrap_or_default() {
                    self.keep_health_ghosts(p.id).await;
                }
                self.inner.delete_pool(id).await
            }
            _ => self.inner.delete_pool(id).await,
        }
    }

    async fn save_proxy(&self, proxy: &Proxy) -> StorageResult<Proxy> {
        let saved = match self.mutant {
            _ if self.strips_max_concurrency() => {
                let mut unlimited = proxy.clone();
                unlimited.max_concurrency = None;
                let saved = self.inner.save_proxy(&unlimited).await?;
                self.side
                    .lock()
                    .declared
                    .insert(proxy.id, proxy.max_concurrency);
                saved
            }
            Mutant::SaveProxyWritesBeforeValidating => {
                if let Err(e) = proxy.validate() {
                    let mut fixed = proxy.clone();
                    fixed.port = fixed.port.max(1);
                    let _ = self.inner.save_proxy(&fixed).await;
                    return Err(e.into());
                }
                self.inner.save_proxy(proxy).await?
            }
            Mutant::SaveProxyKeepsCallersCurrentLeases => {
                let saved = self.inner.save_proxy(proxy).await?;
                self.side
                    .lock()
                    .overrides
                    .entry(proxy.id)
                    .or_default()
                    .current_leases = Some(proxy.current_leases);
                saved
            }
            Mutant::SaveProxyUpdateOverwritesHealth
            | Mutant::SaveProxyUpdateOverwritesCreatedAt => {
                let existed = self.inner.get_proxy(proxy.id).await.is_ok();
                let saved = self.inner.save_proxy(proxy).await?;
                if existed {
                    let mut side = self.side.lock();
                    let o = side.overrides.entry(proxy.id).or_default();
                    if self.is(Mutant::SaveProxyUpdateOverwritesHealth) {
                        o.checked_at = Some(proxy.checked_at);
                        o.health = Some(proxy.health.clone());
                    } else {
                        o.created_at = Some(proxy.created_at);
                    }
                }
                saved
            }
            Mutant::SaveProxyCreatesMissingPool => match self.inner.save_proxy(proxy).await {
                Err(e) if is_not_found(&e, "pool") => {
                    let mut pool = ProxyPool::new(format!("auto-{}", proxy.pool_id))?;
                    pool.id = proxy.pool_id;
                    self.inner.save_pool(&pool).await?;
                    self.inner.save_proxy(proxy).await?
                }
                other => other?,
            },
            Mutant::MovingAProxyIsAllowed => match self.inner.save_proxy(proxy).await {
                Err(StorageError::Conflict(_)) => {
                    self.inner.delete_proxy(proxy.id).await?;
                    self.inner.save_proxy(proxy).await?
                }
                other => other?,
            },
            _ => self.inner.save_proxy(proxy).await?,
        };
        Ok(self.report(saved))
    }

    async fn add_proxies(&self, proxies: &[Proxy]) -> StorageResult<Vec<Proxy>> {
        let saved = match self.mutant {
            _ if self.strips_max_concurrency() => {
                let unlimited: Vec<Proxy> = proxies
                    .iter()
                    .map(|p| Proxy {
                        max_concurrency: None,
                        ..p.clone()
                    })
                    .collect();
                let saved = self.inner.add_proxies(&unlimited).await?;
                let mut side = self.side.lock();
                for p in proxies {
                    side.declared.insert(p.id, p.max_concurrency);
                }
                saved
            }
            Mutant::AddProxiesWritesAPrefix => {
                let mut saved = Vec::with_capacity(proxies.len());
                for p in proxies {
                    saved.push(self.inner.save_proxy(p).await?);
                }
                saved
            }
            Mutant::AddProxiesKeepsCallersCurrentLeases => {
                let saved = self.inner.add_proxies(proxies).await?;
                let mut side = self.side.lock();
                for p in proxies {
                    side.overrides.entry(p.id).or_default().current_leases = Some(p.current_leases);
                }
                saved
            }
            _ => self.inner.add_proxies(proxies).await?,
        };
        Ok(saved.into_iter().map(|p| self.report(p)).collect())
    }

    async fn get_proxy(&self, id: ProxyId) -> StorageResult<Proxy> {
        match self.inner.get_proxy(id).await {
            Err(e) if is_not_found(&e, "proxy") => {
                let ghost = self.side.lock().ghost_proxies.get(&id).cloned();
                ghost.ok_or(e)
            }
            other => other.map(|p| self.report(p)),
        }
    }

    async fn list_proxies(&self, pool_id: PoolId) -> StorageResult<Vec<Proxy>> {
        let mut proxies = match self.inner.list_proxies(pool_id).await {
            Err(e)
                if is_not_found(&e, "pool") && self.is(Mutant::ListProxiesOfUnknownPoolIsEmpty) =>
            {
                Vec::new()
            }
            other => other?,
        };
        if self.is(Mutant::ListProxiesUnordered) {
            proxies.reverse();
        }
        Ok(proxies.into_iter().map(|p| self.report(p)).collect())
    }

    async fn delete_proxy(&self, id: ProxyId) -> StorageResult<()> {
        match self.mutant {
            Mutant::DeleteOfUnknownIdSucceeds => match self.inner.delete_proxy(id).await {
                Err(e) if is_not_found(&e, "proxy") => Ok(()),
                other => other,
            },
            Mutant::DeleteProxyLeavesItsLeases => {
                self.keep_lease_ghosts(|l| l.proxy_id == id).await;
                self.inner.delete_proxy(id).await
            }
            Mutant::DeleteProxyLeavesHealthHistory => {
                self.keep_health_ghosts(id).await;
                self.inner.delete_proxy(id).await
            }
            _ => self.inner.delete_proxy(id).await,
        }
    }

    async fn ensure_consumer(&self, name: &str) -> StorageResult<ConsumerId> {
        match self.mutant {
            Mutant::ConsumerNamesIgnoreCase => {
                self.inner.ensure_consumer(&name.to_lowercase()).await
            }
            Mutant::EnsureConsumerNotIdempotent => {
                validate_name("consumer.name", name)?;
                let n = self.next();
                self.inner.ensure_consumer(&format!("{name}#{n}")).await
            }
            Mutant::EnsureConsumerRaces => {
                validate_name("consumer.name", name)?;
                if let Some(id) = self.side.lock().consumers.get(name) {
                    return Ok(*id);
                }
                // The window between looking and creating.
                window().await;
                let n = self.next();
                let id = self.inner.ensure_consumer(&format!("{name}#{n}")).await?;
                self.side.lock().consumers.insert(name.to_owned(), id);
                Ok(id)
            }
            _ => self.inner.ensure_consumer(name).await,
        }
    }

    async fn acquire(&self, request: &AcquireRequest) -> StorageResult<Option<Lease>> {
        let mut req = self.broken_request(request);
        req.pool_name = self.resolve(&req.pool_name).await;
        let Some(mut lease) = self.acquire_inner(&req).await? else {
            return Ok(None);
        };
        if self.is(Mutant::SessionsIgnored) {
            // Claims a session it never kept.
            lease.session = request.session.as_ref().map(|s| LeaseSession {
                key: s.key.clone(),
                moved: false,
            });
        }
        let lease = self.report_lease(lease);
        self.side
            .lock()
            .issued
            .entry(lease.id)
            .or_insert_with(|| lease.clone());
        Ok(Some(lease))
    }

    async fn release(&self, lease_id: LeaseId) -> StorageResult<ReleaseOutcome> {
        let outcome = match self.inner.release(lease_id).await {
            Err(e) if is_not_found(&e, "lease") => {
                let ghost = self.side.lock().ghost_leases.get(&lease_id).cloned();
                return match ghost {
                    Some(ghost) => Ok(ReleaseOutcome::AlreadyReleased {
                        lease_id,
                        released_at: ghost.released_at,
                    }),
                    None if self.is(Mutant::ReleaseOfUnknownLeaseIsAlreadyReleased) => {
                        Ok(ReleaseOutcome::AlreadyReleased {
                            lease_id,
                            released_at: None,
                        })
                    }
                    None => Err(e),
                };
            }
            other => other?,
        };
        match (&outcome, self.mutant) {
            (ReleaseOutcome::AlreadyReleased { .. }, Mutant::ReleaseNotIdempotent) => {
                let lease = self.inner.get_lease(lease_id).await?;
                Ok(ReleaseOutcome::Released(ReleasedLease {
                    lease_id,
                    proxy_id: lease.proxy_id,
                    pool_id: lease.pool_id,
                    consumer_id: lease.consumer_id,
                    acquired_at: lease.acquired_at,
                    released_at: lease.released_at.unwrap_or_else(|| self.now()),
                }))
            }
            (ReleaseOutcome::Released(r), Mutant::ReleaseOfExpiredLeaseIsAlreadyReleased)
                if self.inner.get_lease(lease_id).await?.expires_at <= self.now() =>
            {
                Ok(ReleaseOutcome::AlreadyReleased {
                    lease_id,
                    released_at: Some(r.released_at),
                })
            }
            (ReleaseOutcome::Released(r), Mutant::ReleaseKeepsTheSlot) => {
                let pool = self.inner.get_pool(r.pool_id).await?;
                let squatter = self.stand_in("squatter").await?;
                let req = AcquireRequest::new(pool.name, squatter, Duration::from_secs(3600))
                    .with_filter(pinned(&ProxyFilter::new(), r.proxy_id));
                self.inner.acquire(&req).await?;
                Ok(outcome)
            }
            _ => Ok(outcome),
        }
    }

    async fn renew(&self, lease_id: LeaseId, ttl: Duration) -> StorageResult<Lease> {
        let renewed = match self.mutant {
            Mutant::RenewWritesBeforeValidating => {
                if let Err(e) = validate_ttl(ttl) {
                    let fixed = ttl.clamp(Duration::from_secs(1), MAX_LEASE_TTL);
                    let _ = self.inner.renew(lease_id, fixed).await;
                    return Err(e.into());
                }
                self.inner.renew(lease_id, ttl).await
            }
            Mutant::RenewRevivesExpiredLeases | Mutant::RenewRevivesReleasedLeases => {
                match self.inner.renew(lease_id, ttl).await {
                    Err(StorageError::LeaseNotActive(id)) => {
                        let lease = self.inner.get_lease(id).await?;
                        let revive = if self.is(Mutant::RenewRevivesExpiredLeases) {
                            lease.status == LeaseStatus::Active
                        } else {
                            lease.status == LeaseStatus::Released
                        };
                        if !revive {
                            return Err(StorageError::LeaseNotActive(id));
                        }
                        Ok(Lease {
                            status: LeaseStatus::Active,
                            released_at: None,
                            expires_at: self.now() + ttl,
                            ..lease
                        })
                    }
                    other => other,
                }
            }
            Mutant::RenewExtendsFromTheOldExpiry => {
                validate_ttl(ttl)?;
                let lease = self.inner.get_lease(lease_id).await?;
                let left = Duration::try_from(lease.expires_at - self.now()).unwrap_or_default();
                self.inner
                    .renew(lease_id, (ttl + left).min(MAX_LEASE_TTL))
                    .await
            }
            Mutant::ExpiredLeasesBlockUntilCleanup => {
                validate_ttl(ttl)?;
                let shadow = self.side.lock().shadow_expiry.get(&lease_id).copied();
                if shadow.is_some_and(|at| at <= self.now()) {
                    return match self.inner.get_lease(lease_id).await {
                        Ok(_) => Err(StorageError::LeaseNotActive(lease_id)),
                        Err(e) => Err(e),
                    };
                }
                let lease = self.inner.renew(lease_id, MAX_LEASE_TTL).await?;
                self.side
                    .lock()
                    .shadow_expiry
                    .insert(lease_id, self.now() + ttl);
                Ok(lease)
            }
            Mutant::LeaseStillHoldsAtExpiresAt => {
                validate_ttl(ttl)?;
                let later = (ttl + Duration::from_micros(1)).min(MAX_LEASE_TTL);
                self.inner.renew(lease_id, later).await
            }
            _ => self.inner.renew(lease_id, ttl).await,
        };
        match renewed {
            Err(e)
                if is_not_found(&e, "lease")
                    && self.side.lock().ghost_leases.contains_key(&lease_id) =>
            {
                Err(StorageError::LeaseNotActive(lease_id))
            }
            other => other.map(|l| self.report_lease(l)),
        }
    }

    async fn get_lease(&self, lease_id: LeaseId) -> StorageResult<Lease> {
        let mut lease = match self.inner.get_lease(lease_id).await {
            Err(e) if is_not_found(&e, "lease") => {
                let ghost = self.side.lock().ghost_leases.get(&lease_id).cloned();
                return ghost.ok_or(e);
            }
            other => self.report_lease(other?),
        };
        match self.mutant {
            Mutant::GetLeaseShowsTheProxyAsLeased => {
                if let Some(issued) = self.side.lock().issued.get(&lease_id) {
                    lease.proxy = Arc::clone(&issued.proxy);
                }
            }
            Mutant::ReleasedLeaseReadsActive => {
                lease.status = LeaseStatus::Active;
                lease.released_at = None;
            }
            _ => {}
        }
        Ok(lease)
    }

    async fn find_available(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>> {
        let pool_name = self.resolve(pool_name).await;
        let filter = self.broken_filter(filter);
        let selector = self.broken_selector(selector);
        Ok(self
            .find_inner(&pool_name, &filter, selector)
            .await?
            .map(|p| self.report(p)))
    }

    async fn cleanup_expired(&self) -> StorageResult<u64> {
        let reclaimed = self.inner.cleanup_expired().await?;
        match self.mutant {
            Mutant::CleanupReportsNothing => Ok(0),
            Mutant::CleanupReleasesUnexpiredLeases => {
                let ids: Vec<LeaseId> = self.side.lock().issued.keys().copied().collect();
                for id in ids {
                    if self
                        .inner
                        .get_lease(id)
                        .await
                        .is_ok_and(|l| l.status == LeaseStatus::Active)
                    {
                        self.inner.release(id).await?;
                    }
                }
                Ok(reclaimed)
            }
            Mutant::ExpiredLeasesBlockUntilCleanup => {
                let now = self.now();
                let due: Vec<LeaseId> = self
                    .side
                    .lock()
                    .shadow_expiry
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| *id)
                    .collect();
                let mut n = reclaimed;
                for id in due {
                    if matches!(
                        self.inner.release(id).await,
                        Ok(ReleaseOutcome::Released(_))
                    ) {
                        n += 1;
                    }
                }
                Ok(n)
            }
            _ => Ok(reclaimed),
        }
    }

    async fn apply_health_result(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        self.apply_health(result, policy).await
    }

    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        self.last_health(proxy_id).await
    }

    async fn list_health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        self.health_records(proxy_id, limit).await
    }

    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        self.stats(pool_name).await
    }

    async fn pool_overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        self.inner.pool_overview(pool_name).await
    }

    async fn list_leases<'a>(
        &self,
        pool_name: &str,
        consumer: Option<&'a str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        self.inner.list_leases(pool_name, consumer, limit).await
    }

    async fn release_with_outcome<'a>(
        &self,
        lease_id: LeaseId,
        outcome: Option<&'a Outcome>,
        policy: &UsagePolicy,
    ) -> StorageResult<ReleaseOutcome> {
        match self.mutant {
            Mutant::ReleaseDropsTheOutcome => {
                return self
                    .inner
                    .release_with_outcome(lease_id, None, policy)
                    .await;
            }
            Mutant::ReleaseOutcomeCountsTwice => {
                if let Some(outcome) = outcome {
                    let _ = self.inner.report_outcome(lease_id, outcome, policy).await;
                }
            }
            Mutant::InvalidOutcomeReleasesAnyway => {
                let checked = outcome
                    .map_or(Ok(()), Outcome::validate)
                    .and_then(|()| policy.validate());
                if let Err(e) = checked {
                    let _ = self.inner.release(lease_id).await;
                    return Err(e.into());
                }
            }
            _ => {}
        }
        self.inner
            .release_with_outcome(lease_id, outcome, policy)
            .await
    }

    async fn report_outcome(
        &self,
        lease_id: LeaseId,
        outcome: &Outcome,
        policy: &UsagePolicy,
    ) -> StorageResult<Proxy> {
        match self.inner.report_outcome(lease_id, outcome, policy).await {
            Err(StorageError::LeaseNotActive(_))
                if self.is(Mutant::ReportOnReleasedLeaseSucceeds) =>
            {
                let lease = self.inner.get_lease(lease_id).await?;
                self.inner.get_proxy(lease.proxy_id).await
            }
            other => other,
        }
    }

    async fn list_target_bans(&self, proxy_id: ProxyId) -> StorageResult<Vec<TargetBan>> {
        self.inner.list_target_bans(proxy_id).await
    }
}
