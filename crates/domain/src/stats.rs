use serde::{Deserialize, Serialize};

use crate::PoolId;

/// A snapshot of a pool's occupancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The pool.
    pub pool_id: PoolId,
    /// Its name.
    pub pool_name: String,
    /// Every proxy in the pool, whatever its status.
    pub total_proxies: u64,
    /// Proxies whose status is active.
    pub active_proxies: u64,
    /// Active proxies that can take one more lease now (not cooling down).
    pub available_proxies: u64,
    /// Active proxies cooling down now (see [`crate::UsagePolicy`]), whether
    /// or not they carry leases.
    #[serde(default)]
    pub cooling_down_proxies: u64,
    /// Proxies that carry at least one active lease.
    pub leased_proxies: u64,
    /// Active leases in the pool.
    pub total_leases: u64,
}
