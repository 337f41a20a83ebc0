//! [`PoolOverview`]: what an operator sees of one pool at a glance, and the
//! percentile rule every adapter computes its latencies by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{PoolId, ProxyStatus};

/// One pool's state now: proxies by status, occupancy, capacity, the leases
/// that expired but were not reclaimed yet, and what the latest health
/// checks found. Serialises with the keys `pharox pool show --json` prints.
///
/// Expired leases (at or past their `expires_at`) count in
/// `expired_unreclaimed` only, never in `leased_proxies` or
/// `active_leases` (as in [`PoolStats`](crate::PoolStats)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolOverview {
    /// The pool's name.
    pub pool: String,
    /// The pool's id.
    pub pool_id: PoolId,
    /// Every proxy in the pool, whatever its status.
    pub proxies: u64,
    /// How many proxies have each status; every status is present (0 when
    /// none has it).
    pub by_status: BTreeMap<ProxyStatus, u64>,
    /// Proxies that carry at least one lease that has not expired.
    pub leased_proxies: u64,
    /// Leases that are active and not expired.
    pub active_leases: u64,
    /// Active proxies whose error score put them in a cooldown that has not
    /// ended (never leased until it does; see `UsagePolicy`).
    pub cooling_down: u64,
    /// How many leases the pool's active proxies can carry at once (the sum
    /// of their `max_concurrency`); `None` when one of them is unlimited.
    pub capacity: Option<u64>,
    /// Leases past their expiry that no release or cleanup has reclaimed
    /// yet (they hold no capacity).
    pub expired_unreclaimed: u64,
    /// Percentiles of the proxies' latest latency (`last_latency_ms`).
    pub latency_ms: LatencySummary,
    /// The range of the proxies' `checked_at`.
    pub checked_at: CheckedRange,
}

impl PoolOverview {
    /// `by_status` with every status at zero, for adapters to fill in.
    #[must_use]
    pub fn empty_by_status() -> BTreeMap<ProxyStatus, u64> {
        ProxyStatus::ALL.into_iter().map(|s| (s, 0)).collect()
    }
}

/// The median and 95th percentile of a set of latencies, in milliseconds,
/// interpolated as [`percentile_cont`] does; `None` when no proxy has a
/// latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// The median.
    pub p50: Option<f64>,
    /// The 95th percentile.
    pub p95: Option<f64>,
}

impl LatencySummary {
    /// The summary of `latencies` (any order; non-finite values are ignored).
    #[must_use]
    pub fn of(latencies: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = latencies.into_iter().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: percentile_cont(&sorted, 0.5),
            p95: percentile_cont(&sorted, 0.95),
        }
    }
}

/// The oldest and newest `checked_at` among a pool's proxies; `None` when
/// no proxy has been checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedRange {
    /// The least recently checked proxy's `checked_at`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest: Option<OffsetDateTime>,
    /// The most recently checked proxy's `checked_at`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub newest: Option<OffsetDateTime>,
}

/// The continuous percentile of sorted values, as PostgreSQL's
/// `percentile_cont(fraction)` computes it: linear interpolation between
/// the two values around position `fraction * (n - 1)`. `None` for no
/// values; `fraction` is clamped to `0..=1`.
#[must_use]
pub fn percentile_cont(sorted: &[f64], fraction: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let position = fraction.clamp(0.0, 1.0) * last as f64;
    // Truncation is the point: the index below the position.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let below = position.floor() as usize;
    let above = (below + 1).min(last);
    let weight = position - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_postgres() {
        assert_eq!(percentile_cont(&[], 0.5), None);
        assert_eq!(percentile_cont(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile_cont(&[10.0, 20.0], 0.5), Some(15.0));
        // 0.95 * 3 = 2.85: 30 + 0.85 * 10.
        let p95 = percentile_cont(&[10.0, 20.0, 30.0, 40.0], 0.95).unwrap();
        assert!((p95 - 38.5).abs() < 1e-9, "{p95}");
        let summary = LatencySummary::of([40.0, 10.0, f64::NAN, 30.0, 20.0]);
        assert_eq!(summary.p50, Some(25.0));
    }

    #[test]
    fn json_has_the_documented_keys() {
        let overview = PoolOverview {
            pool: "eu".into(),
            pool_id: PoolId::new(),
            proxies: 0,
            by_status: PoolOverview::empty_by_status(),
            leased_proxies: 0,
            active_leases: 0,
            cooling_down: 0,
            capacity: None,
            expired_unreclaimed: 0,
            latency_ms: LatencySummary::default(),
            checked_at: CheckedRange::default(),
        };
        let json = serde_json::to_value(&overview).unwrap();
        assert_eq!(json["by_status"]["banned"], 0);
        assert!(json["capacity"].is_null());
        assert!(json["latency_ms"]["p95"].is_null());
        assert!(json["checked_at"]["oldest"].is_null());
    }
}
