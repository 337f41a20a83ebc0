//! [`Broken`], the storage every mutant is: what it remembers beside the
//! real storage, and the helpers its `ProxyStorage` methods break rules with.

use super::*;

mod health;
mod storage;

/// Fields a mutant reports for a proxy instead of what the storage holds.
#[derive(Debug, Default, Clone)]
struct Override {
    current_leases: Option<u32>,
    checked_at: Option<Option<OffsetDateTime>>,
    health: Option<ProxyHealth>,
    created_at: Option<OffsetDateTime>,
}

/// What the mutants remember beside the real storage.
#[derive(Default)]
struct Side {
    /// The max_concurrency callers saved (the storage holds `None`).
    declared: HashMap<ProxyId, Option<u32>>,
    overrides: HashMap<ProxyId, Override>,
    pool_created: HashMap<PoolId, OffsetDateTime>,
    /// Every lease handed out, as handed out.
    issued: HashMap<LeaseId, Lease>,
    /// The expiry reported for each lease (the storage holds a later one).
    shadow_expiry: HashMap<LeaseId, OffsetDateTime>,
    /// Things a deletion should have removed and the mutant still shows.
    ghost_proxies: HashMap<ProxyId, Proxy>,
    ghost_leases: HashMap<LeaseId, Lease>,
    ghost_health: HashMap<ProxyId, Vec<HealthRecord>>,
    /// Consumer names seen, for the racy ensure_consumer.
    consumers: HashMap<String, ConsumerId>,
}

/// A storage that breaks the one rule its [`Mutant`] names and delegates
/// everything else to a real `MemoryStorage`.
pub(crate) struct Broken {
    inner: MemoryStorage,
    clock: Arc<ManualClock>,
    mutant: Mutant,
    side: Mutex<Side>,
    gate: tokio::sync::Mutex<()>,
    counter: AtomicU64,
}

impl Broken {
    pub(crate) fn new(inner: MemoryStorage, clock: Arc<ManualClock>, mutant: Mutant) -> Self {
        Self {
            inner,
            clock,
            mutant,
            side: Mutex::new(Side::default()),
            gate: tokio::sync::Mutex::new(()),
            counter: AtomicU64::new(0),
        }
    }

    fn is(&self, mutant: Mutant) -> bool {
        self.mutant == mutant
    }

    fn strips_max_concurrency(&self) -> bool {
        matches!(
            self.mutant,
            Mutant::AcquireIgnoresMaxConcurrency | Mutant::AcquireChecksCapacityThenLeases
        )
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A proxy as the mutant reports it.
    fn report(&self, mut p: Proxy) -> Proxy {
        let side = self.side.lock();
        if let Some(max) = side.declared.get(&p.id) {
            p.max_concurrency = *max;
        }
        if let Some(o) = side.overrides.get(&p.id) {
            if let Some(n) = o.current_leases {
                p.current_leases = n;
            }
            if let Some(at) = o.checked_at {
                p.checked_at = at;
            }
            if let Some(h) = &o.health {
                p.health = h.clone();
            }
            if let Some(at) = o.created_at {
                p.created_at = at;
            }
        }
        p
    }

    /// A lease as the mutant reports it.
    fn report_lease(&self, mut lease: Lease) -> Lease {
        let touched = {
            let side = self.side.lock();
            side.declared.contains_key(&lease.proxy_id)
                || side.overrides.contains_key(&lease.proxy_id)
        };
        if touched {
            lease.proxy = Arc::new(self.report(Proxy::clone(&lease.proxy)));
        }
        match self.mutant {
            Mutant::LeaseStillHoldsAtExpiresAt => lease.expires_at -= MICRO,
            Mutant::ExpiredLeasesBlockUntilCleanup => {
                if let Some(at) = self.side.lock().shadow_expiry.get(&lease.id) {
                    lease.expires_at = *at;
                }
            }
            _ => {}
        }
        lease
    }

    fn report_pool(&self, mut pool: ProxyPool) -> ProxyPool {
        if let Some(at) = self.side.lock().pool_created.get(&pool.id) {
            pool.created_at = *at;
        }
        pool
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The stored name of the pool `name` refers to: itself, or for the
    /// case-folding mutant a pool whose name differs only in case.
    async fn resolve(&self, name: &str) -> String {
        if self.is(Mutant::PoolNamesIgnoreCase)
            && self.inner.get_pool_by_name(name).await.is_err()
            && let Ok(pools) = self.inner.list_pools().await
            && let Some(p) = pools.iter().find(|p| p.name.eq_ignore_ascii_case(name))
        {
            return p.name.clone();
        }
        name.to_owned()
    }

    /// The proxies of `pool_name` at their declared max_concurrency, after
    /// the storage reclaimed expired leases; `None` for an unknown pool.
    async fn full_proxies(&self, pool_name: &str) -> StorageResult<Option<HashSet<ProxyId>>> {
        let Ok(pool) = self.inner.get_pool_by_name(pool_name).await else {
            return Ok(None);
        };
        // MemoryStorage reclaims a pool's expired leases in pool_stats.
        self.inner.pool_stats(pool_name).await?;
        let proxies = self.inner.list_proxies(pool.id).await?;
        let side = self.side.lock();
        Ok(Some(
            proxies
                .iter()
                .filter(|p| {
                    side.declared
                        .get(&p.id)
                        .copied()
                        .flatten()
                        .is_some_and(|max| p.current_leases >= max)
                })
                .map(|p| p.id)
                .collect(),
        ))
    }

    async fn stand_in(&self, name: &str) -> StorageResult<ConsumerId> {
        self.inner.ensure_consumer(name).await
    }

    /// The request the mutant passes on, with its selector or filter broken.
    fn broken_request(&self, request: &AcquireRequest) -> AcquireRequest {
        let mut req = request.clone();
        req.selector = self.broken_selector(req.selector);
        req.filter = self.broken_filter(&req.filter);
        if self.is(Mutant::TargetsIgnored) {
            req.target = None;
        }
        if self.is(Mutant::SessionsIgnored) {
            req.session = None;
        }
        req
    }

    fn broken_selector(&self, selector: Selector) -> Selector {
        let replaced = match self.mutant {
            Mutant::LeastUsedIsFirstAvailable => Selector::LeastUsed,
            Mutant::RoundRobinIsFirstAvailable => Selector::RoundRobin,
            Mutant::LowestLatencyIsFirstAvailable => Selector::LowestLatency,
            Mutant::RandomIsFirstAvailable => Selector::Random,
            _ => return selector,
        };
        if selector == replaced {
            Selector::FirstAvailable
        } else {
            selector
        }
    }

    fn broken_filter(&self, filter: &ProxyFilter) -> ProxyFilter {
        match self.mutant {
            Mutant::FiltersIgnored => ProxyFilter::new(),
            Mutant::NoneOfIgnored => strip(filter, &|f| f.none_of.clear()),
            Mutant::PredicatesIgnored => strip(filter, &|f| f.predicate = None),
            _ => filter.clone(),
        }
    }

    async fn acquire_inner(&self, req: &AcquireRequest) -> StorageResult<Option<Lease>> {
        let m = self.mutant;
        match m {
            Mutant::AcquireLeasesBeforeValidating => {
                if let Err(e) = req.validate() {
                    let mut fixed = req.clone();
                    fixed.ttl = fixed.ttl.clamp(Duration::from_secs(1), MAX_LEASE_TTL);
                    if fixed.filter.validate().is_err() {
                        fixed.filter = ProxyFilter::new();
                    }
                    let _ = self.inner.acquire(&fixed).await;
                    return Err(e.into());
                }
                self.inner.acquire(req).await
            }
            Mutant::AcquireChecksCapacityThenLeases => {
                req.validate()?;
                let Some(full) = self.full_proxies(&req.pool_name).await? else {
                    return self.inner.acquire(req).await;
                };
                // The window between the check and the lease.
                window().await;
                let req = req.clone().with_filter(excluding(&req.filter, full));
                self.inner.acquire(&req).await
            }
            Mutant::AcquireRefusesWhenContended => {
                let Ok(_held) = self.gate.try_lock() else {
                    return Ok(None);
                };
                window().await;
                self.inner.acquire(req).await
            }
            Mutant::AcquireLeasesInactiveProxies => {
                if let Some(lease) = self.inner.acquire(req).await? {
                    return Ok(Some(lease));
                }
                let Ok(pool) = self.inner.get_pool_by_name(&req.pool_name).await else {
                    return Ok(None);
                };
                for p in self.inner.list_proxies(pool.id).await? {
                    if p.status == ProxyStatus::Active || !req.filter.matches(&p) {
                        continue;
                    }
                    let mut revived = p.clone();
                    revived.status = ProxyStatus::Active;
                    self.inner.save_proxy(&revived).await?;
                    let pinned = req.clone().with_filter(pinned(&req.filter, p.id));
                    let lease = self.inner.acquire(&pinned).await;
                    self.inner.save_proxy(&p).await?;
                    if let Some(lease) = lease? {
                        return Ok(Some(lease));
                    }
                }
                Ok(None)
            }
            Mutant::UnknownConsumerLeasesAnyway => match self.inner.acquire(req).await {
                Err(e) if is_not_found(&e, "consumer") => {
                    let mut other = req.clone();
                    other.consumer_id = self.stand_in("stand-in").await?;
                    let _ = self.inner.acquire(&other).await;
                    Err(e)
                }
                other => other,
            },
            Mutant::AcquireWithUnknownConsumerReturnsNone => match self.inner.acquire(req).await {
                Err(e) if is_not_found(&e, "consumer") => Ok(None),
                other => other,
            },
            Mutant::AcquireOnUnknownPoolIsNotFound => match self.inner.acquire(req).await? {
                None if self.inner.get_pool_by_name(&req.pool_name).await.is_err() => {
                    Err(StorageError::not_found("pool", &req.pool_name))
                }
                other => Ok(other),
            },
            Mutant::LeaseIdConflictLeasesAnyway => match self.inner.acquire(req).await {
                Err(e @ StorageError::Conflict(_)) => {
                    let _ = self.inner.acquire(&without_id(req)).await;
                    Err(e)
                }
                other => other,
            },
            Mutant::LeaseIdConflictReturnsTheOtherLease => match self.inner.acquire(req).await {
                Err(StorageError::Conflict(_)) if req.lease_id.is_some() => {
                    let id = req.lease_id.expect("checked");
                    self.inner.get_lease(id).await.map(Some)
                }
                other => other,
            },
            Mutant::LeaseIdIgnored => self.inner.acquire(&without_id(req)).await,
            Mutant::RepeatedLeaseIdLeasesAgain | Mutant::ReleasedLeaseIdLeasesAgain => {
                if let Some(id) = req.lease_id
                    && let Ok(existing) = self.inner.get_lease(id).await
                    && (m == Mutant::RepeatedLeaseIdLeasesAgain
                        || existing.status == LeaseStatus::Released)
                {
                    return self.inner.acquire(&without_id(req)).await;
                }
                self.inner.acquire(req).await
            }
            Mutant::RacingRepeatsLeaseTwice => {
                if let Some(id) = req.lease_id
                    && self.inner.get_lease(id).await.is_err()
                {
                    window().await;
                    if self.inner.get_lease(id).await.is_ok() {
                        // "The id clashed: retry with a fresh one."
                        return self.inner.acquire(&without_id(req)).await;
                    }
                }
                self.inner.acquire(req).await
            }
            Mutant::ExpiredLeasesBlockUntilCleanup => {
                req.validate()?;
                let mut long = req.clone();
                long.ttl = MAX_LEASE_TTL;
                let lease = self.inner.acquire(&long).await?;
                if let Some(lease) = &lease {
                    let at = lease.acquired_at + req.ttl;
                    self.side.lock().shadow_expiry.entry(lease.id).or_insert(at);
                }
                Ok(lease)
            }
            Mutant::LeaseStillHoldsAtExpiresAt => {
                req.validate()?;
                let mut later = req.clone();
                later.ttl = (req.ttl + Duration::from_micros(1)).min(MAX_LEASE_TTL);
                self.inner.acquire(&later).await
            }
            _ => self.inner.acquire(req).await,
        }
    }

    async fn find_inner(
        &self,
        pool_name: &str,
        filter: &ProxyFilter,
        selector: Selector,
    ) -> StorageResult<Option<Proxy>> {
        match self.mutant {
            Mutant::FindAvailableLeases | Mutant::FindAvailableAdvancesRoundRobin => {
                if self.is(Mutant::FindAvailableAdvancesRoundRobin)
                    && selector != Selector::RoundRobin
                {
                    return self.inner.find_available(pool_name, filter, selector).await;
                }
                let peeker = self.stand_in("peeker").await?;
                let req = AcquireRequest::new(pool_name, peeker, Duration::from_secs(1))
                    .with_filter(filter.clone())
                    .with_selector(selector);
                let Some(lease) = self.inner.acquire(&req).await? else {
                    return Ok(None);
                };
                if self.is(Mutant::FindAvailableAdvancesRoundRobin) {
                    self.inner.release(lease.id).await?;
                }
                self.inner.get_proxy(lease.proxy_id).await.map(Some)
            }
            Mutant::FindAvailableOffersFullProxies => {
                if let Some(p) = self
                    .inner
                    .find_available(pool_name, filter, selector)
                    .await?
                {
                    return Ok(Some(p));
                }
                let Ok(pool) = self.inner.get_pool_by_name(pool_name).await else {
                    return Ok(None);
                };
                Ok(self
                    .inner
                    .list_proxies(pool.id)
                    .await?
                    .into_iter()
                    .find(|p| p.status == ProxyStatus::Active && filter.matches(p)))
            }
            Mutant::FindAvailableCountsExpiredLeases => {
                let before: HashMap<ProxyId, u32> =
                    match self.inner.get_pool_by_name(pool_name).await {
                        Ok(pool) => self
                            .inner
                            .list_proxies(pool.id)
                            .await?
                            .iter()
                            .map(|p| (p.id, p.current_leases))
                            .collect(),
                        Err(_) => HashMap::new(),
                    };
                let Some(mut p) = self
                    .inner
                    .find_available(pool_name, filter, selector)
                    .await?
                else {
                    return Ok(None);
                };
                let counted = before.get(&p.id).copied().unwrap_or(p.current_leases);
                if p.max_concurrency.is_some_and(|max| counted >= max) {
                    return Ok(None);
                }
                p.current_leases = counted;
                Ok(Some(p))
            }
            Mutant::FindAvailableIgnoresSelector => {
                self.inner
                    .find_available(pool_name, filter, Selector::FirstAvailable)
                    .await
            }
            Mutant::AcquireChecksCapacityThenLeases => {
                filter.validate()?;
                validate_name("pool_name", pool_name)?;
                let Some(full) = self.full_proxies(pool_name).await? else {
                    return Ok(None);
                };
                self.inner
                    .find_available(pool_name, &excluding(filter, full), selector)
                    .await
            }
            _ => self.inner.find_available(pool_name, filter, selector).await,
        }
    }

    /// Remembers the leases of `proxies` as ghosts (for the mutants whose
    /// deletions leave leases behind).
    async fn keep_lease_ghosts(&self, belongs: impl Fn(&Lease) -> bool) {
        let ids: Vec<LeaseId> = self
            .side
            .lock()
            .issued
            .values()
            .filter(|l| belongs(l))
            .map(|l| l.id)
            .collect();
        for id in ids {
            if let Ok(lease) = self.inner.get_lease(id).await {
                self.side.lock().ghost_leases.insert(id, lease);
            }
        }
    }

    async fn keep_health_ghosts(&self, proxy: ProxyId) {
        if let Ok(records) = self.inner.list_health_records(proxy, usize::MAX).await {
            self.side.lock().ghost_health.insert(proxy, records);
        }
    }
}

/// The gap a racy mutant leaves between looking and acting: a few yields,
/// so the other callers of a contention scenario (all woken together by
/// its barrier) run their look before this one acts.
async fn window() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fn is_not_found(e: &StorageError, what: &str) -> bool {
    matches!(e, StorageError::NotFound { entity, .. } if *entity == what)
}

fn without_id(request: &AcquireRequest) -> AcquireRequest {
    AcquireRequest {
        lease_id: None,
        ..request.clone()
    }
}

/// `filter`, and only the proxy `id`.
fn pinned(filter: &ProxyFilter, id: ProxyId) -> ProxyFilter {
    ProxyFilter::new()
        .all_of([filter.clone()])
        .predicate(move |p| p.id == id)
}

/// `filter`, but none of `ids`.
fn excluding(filter: &ProxyFilter, ids: HashSet<ProxyId>) -> ProxyFilter {
    if ids.is_empty() {
        return filter.clone();
    }
    ProxyFilter::new()
        .all_of([filter.clone()])
        .none_of([ProxyFilter::new().predicate(move |p| ids.contains(&p.id))])
}

/// `filter` with `change` applied to every node of the tree.
fn strip(filter: &ProxyFilter, change: &dyn Fn(&mut ProxyFilter)) -> ProxyFilter {
    let mut f = filter.clone();
    change(&mut f);
    f.all_of = f.all_of.iter().map(|c| strip(c, change)).collect();
    f.any_of = f.any_of.iter().map(|c| strip(c, change)).collect();
    f.none_of = f.none_of.iter().map(|c| strip(c, change)).collect();
    f
}
