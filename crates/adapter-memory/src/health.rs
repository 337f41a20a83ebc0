//! Proxy health (applying a check's result, the last result, the records)
//! and the pool stats of [`MemoryStorage`], for the `ProxyStorage` methods
//! that delegate here.

use super::*;

impl MemoryStorage {
    /// [`ProxyStorage::apply_health_result`](pharox_ports::ProxyStorage::apply_health_result).
    pub(crate) fn apply_health(
        &self,
        result: &HealthCheckResult,
        policy: &HealthPolicy,
    ) -> StorageResult<Option<Proxy>> {
        result.validate()?;
        // A policy can only be built valid, but serde can bypass `new`.
        HealthPolicy::new(policy.failures_before_inactive())?;
        let catalog = self.catalog.read();
        let Some(cell) = catalog.proxies.get(&result.proxy_id) else {
            return Ok(None);
        };
        let mut state = cell.lock();
        let Some(idx) = state.slot_of(result.proxy_id) else {
            return Ok(None);
        };
        let Some(slot) = state.slot(idx) else {
            return Ok(None);
        };
        let before = slot.proxy.status;
        let outcome = policy.apply(before, &slot.proxy.health, result);
        let after = outcome.status;
        let checked_at = truncate_to_micros(result.checked_at);
        state.update_slot(idx, |slot| {
            let proxy = Arc::make_mut(&mut slot.proxy);
            proxy.status = outcome.status;
            proxy.health = outcome.health;
            proxy.checked_at = Some(checked_at);
            if outcome.ends_cooldown {
                proxy.usage = ProxyUsage::default();
            }
        });
        let record = HealthRecord {
            id: HealthRecordId::new(),
            proxy_id: result.proxy_id,
            checked_at,
            reachable: result.reachable,
            latency_ms: result.latency_ms,
            protocol: result.protocol,
            status_before: before,
            status_after: after,
            http_status: result.http_status,
            error: result.error.clone(),
        };
        state.push_health(idx, record, self.health_history);
        Ok(state.slot(idx).map(Slot::copy))
    }

    /// [`ProxyStorage::last_health_result`](pharox_ports::ProxyStorage::last_health_result).
    pub(crate) fn last_health(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        let catalog = self.catalog.read();
        let Some(cell) = catalog.proxies.get(&proxy_id) else {
            return Ok(None);
        };
        let state = cell.lock();
        Ok(state
            .proxy(proxy_id)
            .and_then(|slot| slot.health.back().cloned()))
    }

    /// [`ProxyStorage::list_health_records`](pharox_ports::ProxyStorage::list_health_records).
    pub(crate) fn health_records(
        &self,
        proxy_id: ProxyId,
        limit: usize,
    ) -> StorageResult<Vec<HealthRecord>> {
        let catalog = self.catalog.read();
        let Some(cell) = catalog.proxies.get(&proxy_id) else {
            return Ok(Vec::new());
        };
        let state = cell.lock();
        Ok(state.proxy(proxy_id).map_or_else(Vec::new, |slot| {
            slot.health.iter().rev().take(limit).cloned().collect()
        }))
    }

    /// [`ProxyStorage::pool_stats`](pharox_ports::ProxyStorage::pool_stats).
    pub(crate) fn stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
        let now = self.clock.now();
        let catalog = self.catalog.read();
        let cell = catalog
            .by_name
            .get(pool_name)
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let mut state = cell.lock();
        self.reclaim(&mut state, cell, now, micros(now));
        let mut stats = PoolStats {
            pool_id: cell.id,
            pool_name: state.pool.name.clone(),
            total_proxies: state.proxy_count() as u64,
            active_proxies: 0,
            available_proxies: 0,
            cooling_down_proxies: 0,
            leased_proxies: 0,
            total_leases: state.leases.len() as u64,
        };
        for slot in state.slots() {
            if slot.proxy.status == ProxyStatus::Active {
                stats.active_proxies += 1;
                if slot.proxy.usage.is_cooling_down_at(now) {
                    stats.cooling_down_proxies += 1;
                } else if slot
                    .proxy
                    .max_concurrency
                    .is_none_or(|max| slot.leases < max)
                {
                    stats.available_proxies += 1;
                }
            }
            if slot.leases > 0 {
                stats.leased_proxies += 1;
            }
        }
        Ok(stats)
    }
}
