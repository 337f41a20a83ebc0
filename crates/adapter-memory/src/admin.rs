//! The operator's reads of [`MemoryStorage`]: the pool overview and the
//! listing of active leases (see the port's `pool_overview` and
//! `list_leases`). Both read under the pool's lock and reclaim nothing.

use std::collections::HashSet;

use pharox_domain::{
    CheckedRange, LatencySummary, Lease, PoolOverview, ProxyStatus, validate_name,
};
use pharox_ports::{StorageError, StorageResult};

use crate::{MemoryStorage, active_lease, internal, micros};

impl MemoryStorage {
    /// [`ProxyStorage::pool_overview`](pharox_ports::ProxyStorage::pool_overview).
    pub(crate) fn overview(&self, pool_name: &str) -> StorageResult<PoolOverview> {
        validate_name("pool_name", pool_name)?;
        let now = self.clock.now();
        let now_us = micros(now);
        let catalog = self.catalog.read();
        let cell = catalog
            .by_name
            .get(pool_name)
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let state = cell.lock();
        let mut by_status = PoolOverview::empty_by_status();
        let mut capacity = Some(0_u64);
        let mut latencies = Vec::new();
        let mut checked = CheckedRange::default();
        let mut proxies = 0_u64;
        let mut cooling_down = 0_u64;
        for slot in state.slots() {
            let proxy = &slot.proxy;
            proxies += 1;
            *by_status.entry(proxy.status).or_insert(0) += 1;
            if proxy.status == ProxyStatus::Active {
                if proxy.usage.is_cooling_down_at(now) {
                    cooling_down += 1;
                }
                capacity = match (capacity, proxy.max_concurrency) {
                    (Some(sum), Some(max)) => Some(sum + u64::from(max)),
                    _ => None,
                };
            }
            latencies.extend(proxy.health.last_latency_ms);
            if let Some(at) = proxy.checked_at {
                checked.oldest = Some(checked.oldest.map_or(at, |o| o.min(at)));
                checked.newest = Some(checked.newest.map_or(at, |n| n.max(at)));
            }
        }
        let mut leased = HashSet::new();
        let mut active_leases = 0_u64;
        let mut expired_unreclaimed = 0_u64;
        for lease in state.leases.values() {
            if lease.expires_us <= now_us {
                expired_unreclaimed += 1;
            } else {
                active_leases += 1;
                leased.insert(lease.slot);
            }
        }
        Ok(PoolOverview {
            pool: state.pool.name.clone(),
            pool_id: cell.id,
            proxies,
            by_status,
            leased_proxies: leased.len() as u64,
            active_leases,
            cooling_down,
            capacity,
            expired_unreclaimed,
            latency_ms: LatencySummary::of(latencies),
            checked_at: checked,
        })
    }

    /// [`ProxyStorage::list_leases`](pharox_ports::ProxyStorage::list_leases).
    pub(crate) fn active_leases(
        &self,
        pool_name: &str,
        consumer: Option<&str>,
        limit: usize,
    ) -> StorageResult<Vec<Lease>> {
        validate_name("pool_name", pool_name)?;
        let now_us = micros(self.clock.now());
        let catalog = self.catalog.read();
        let cell = catalog
            .by_name
            .get(pool_name)
            .ok_or_else(|| StorageError::not_found("pool", pool_name))?;
        let consumer_id = match consumer {
            None => None,
            Some(name) => match catalog.consumers.get(name) {
                Some(c) => Some(c.id),
                None => return Ok(Vec::new()),
            },
        };
        let mut state = cell.lock();
        let mut picked: Vec<_> = state
            .leases
            .iter()
            .filter(|(_, l)| l.expires_us > now_us)
            .filter(|(_, l)| consumer_id.is_none_or(|c| l.consumer_id == c))
            .map(|(id, l)| (*id, *l))
            .collect();
        picked.sort_by_key(|(id, l)| (l.acquired_at, *id));
        picked.truncate(limit);
        picked
            .into_iter()
            .map(|(id, lease)| {
                let proxy = state
                    .snapshot(lease.slot)
                    .ok_or_else(|| internal("leased slot is empty"))?;
                Ok(active_lease(id, &lease, &state, proxy))
            })
            .collect()
    }
}
