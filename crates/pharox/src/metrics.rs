//! [`MetricsObserver`]: lease and health metrics through the `metrics`
//! facade (feature `metrics`), named and labelled for Prometheus.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `pharox_acquire_total` | counter | `pool`, `result` = `hit` \| `miss` \| `error` |
//! | `pharox_acquire_duration_seconds` | histogram | `pool` |
//! | `pharox_release_total` | counter | `pool` |
//! | `pharox_lease_duration_seconds` | histogram | `pool` |
//! | `pharox_outcomes_total` | counter | `pool`, `kind` = `success` \| `proxy_failure` \| `blocked` \| `target_error` |
//! | `pharox_health_checks_total` | counter | `pool`, `result` = the probe's verdict (`active` \| `slow` \| `inactive`), or `error` when it could not be persisted |
//!
//! Every series of a pool is registered (at zero) the first time the pool
//! shows up in an event, so rates exist before the first miss or error.
//! Pool names are client input on the acquire path (a miss on an unknown
//! pool names it), so at most [`DEFAULT_MAX_POOLS`] names get their own
//! series; events of further pools, and events whose pool name could not be
//! read, count under `pool=""` ([`OTHER_POOLS`]; no pool name is blank).
//!
//! ```
//! use std::sync::Arc;
//! use pharox::{HealthOrchestrator, MemoryStorage, MetricsObserver, ProxyManager, SimulatedProbe};
//!
//! # fn main() -> Result<(), pharox::PharoxError> {
//! // Records to the global recorder (install one, e.g. a Prometheus
//! // exporter, before the first event), or `with_recorder` for your own.
//! let observer = Arc::new(MetricsObserver::new());
//! let storage = Arc::new(MemoryStorage::new());
//! let manager = ProxyManager::from_arc(storage.clone()).with_observer(observer.clone());
//! let health = HealthOrchestrator::builder(storage, Arc::new(SimulatedProbe::new(Default::default())))
//!     .observer(observer)
//!     .build()?;
//! # let _ = (manager, health);
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock};

use metrics::{Counter, Histogram, Recorder, Unit, counter, histogram};
use parking_lot::RwLock;
use pharox_domain::{Outcome, ProxyStatus};

use crate::observe::{
    AcquireErrorEvent, AcquireEvent, HealthCheckEvent, HealthObserver, LeaseObserver, OutcomeEvent,
    ReleaseEvent,
};

/// Acquires by pool and result (`hit`, `miss`, `error`); with
/// `acquire_with_retry`, every attempt.
pub const ACQUIRE_TOTAL: &str = "pharox_acquire_total";
/// Time of one acquire (the storage call), by pool.
pub const ACQUIRE_DURATION_SECONDS: &str = "pharox_acquire_duration_seconds";
/// Releases that ended a lease, by pool.
pub const RELEASE_TOTAL: &str = "pharox_release_total";
/// How long leases were held when released, by pool.
pub const LEASE_DURATION_SECONDS: &str = "pharox_lease_duration_seconds";
/// Outcomes applied, by pool and kind.
pub const OUTCOMES_TOTAL: &str = "pharox_outcomes_total";
/// Health checks, by pool and result.
pub const HEALTH_CHECKS_TOTAL: &str = "pharox_health_checks_total";

/// Buckets (seconds) for [`ACQUIRE_DURATION_SECONDS`]: 50 µs (an
/// in-memory acquire) to 5 s (a database under strain).
pub const ACQUIRE_DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Buckets (seconds) for [`LEASE_DURATION_SECONDS`]: 1 s to 12 h (a lease's
/// TTL may be hours; most are released within minutes).
pub const LEASE_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0, 7_200.0, 14_400.0, 43_200.0,
];

/// The histograms this observer records and their buckets, for configuring
/// an exporter (e.g. `PrometheusBuilder::set_buckets_for_metric`).
pub const HISTOGRAM_BUCKETS: [(&str, &[f64]); 4] = [
    (ACQUIRE_DURATION_SECONDS, ACQUIRE_DURATION_BUCKETS),
    (LEASE_DURATION_SECONDS, LEASE_DURATION_BUCKETS),
    (GATEWAY_ATTEMPTS, GATEWAY_ATTEMPTS_BUCKETS),
    (GATEWAY_CONNECT_SECONDS, GATEWAY_CONNECT_BUCKETS),
];

/// Gateway: absolute-form requests by pool and result.
pub const GATEWAY_REQUESTS_TOTAL: &str = "pharox_gateway_requests_total";
/// Gateway: tunnels (HTTP `CONNECT`, SOCKS5) by pool and result.
pub const GATEWAY_TUNNELS_TOTAL: &str = "pharox_gateway_tunnels_total";
/// Gateway: upstream proxies tried per request or tunnel.
pub const GATEWAY_ATTEMPTS: &str = "pharox_gateway_attempts";
/// Gateway: time to a ready upstream connection (TCP connect and the
/// proxy's handshake), successful dials only.
pub const GATEWAY_CONNECT_SECONDS: &str = "pharox_gateway_upstream_connect_seconds";
/// Gateway: bytes relayed, by direction (`in`: from upstream to clients,
/// `out`: from clients to upstream).
pub const GATEWAY_BYTES_TOTAL: &str = "pharox_gateway_bytes_total";
/// Gateway: tunnels open now.
pub const GATEWAY_ACTIVE_TUNNELS: &str = "pharox_gateway_active_tunnels";
/// Gateway: client connections open now.
pub const GATEWAY_ACTIVE_CONNECTIONS: &str = "pharox_gateway_active_connections";
/// Buckets for [`GATEWAY_ATTEMPTS`].
pub const GATEWAY_ATTEMPTS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0];
/// Buckets (seconds) for [`GATEWAY_CONNECT_SECONDS`]: 100 µs to 10 s.
pub const GATEWAY_CONNECT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Pool names that get series of their own, by default.
pub const DEFAULT_MAX_POOLS: usize = 1000;
/// The `pool` label of events past the pool limit, or whose pool name
/// could not be read: empty (no pool name is blank).
pub const OTHER_POOLS: &str = "";

/// Pools whose series each thread keeps at hand, over every observer.
const PER_THREAD: usize = 16;

/// The outcome kinds, as labelled.
const OUTCOME_KINDS: [&str; 4] = ["success", "proxy_failure", "blocked", "target_error"];

/// Records [`LeaseObserver`] and [`HealthObserver`] events as metrics (see
/// the module docs for the series). Add one to a
/// [`ProxyManager`](crate::ProxyManager) with `with_observer` and to a
/// [`HealthOrchestrator`](crate::HealthOrchestrator) with `observer`.
///
/// Handles of a pool's series are registered once and kept; each thread
/// keeps the handles of the pools it used last, so recording costs a scan
/// of a short per-thread list (no lock) and the recorder's atomic adds.
pub struct MetricsObserver {
    /// Tells this observer's entries apart in the per-thread lists.
    id: u64,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    max_pools: usize,
    pools: RwLock<HashMap<Arc<str>, Arc<PoolSeries>>>,
    other: OnceLock<Arc<PoolSeries>>,
    described: Once,
}

/// A per-thread entry: (observer, pool name, its series).
type Recent = (u64, Arc<str>, Arc<PoolSeries>);

thread_local! {
    /// The series this thread used last, newest last.
    static RECENT: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsObserver")
            .field("own_recorder", &self.recorder.is_some())
            .field("max_pools", &self.max_pools)
            .field("pools", &self.pools.read().len())
            .finish_non_exhaustive()
    }
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsObserver {
    /// Records to the `metrics` global recorder. Install it before the
    /// first event: series are bound to the recorder in place when a pool
    /// first shows up.
    #[must_use]
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            recorder: None,
            max_pools: DEFAULT_MAX_POOLS,
            pools: RwLock::new(HashMap::new()),
            other: OnceLock::new(),
            described: Once::new(),
        }
    }

    /// Records to `recorder` instead of the global one (several servers in
    /// one process, each with its own registry).
    #[must_use]
    pub fn with_recorder(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        Self {
            recorder: Some(recorder),
            ..Self::new()
        }
    }

    /// At most this many pool names get series of their own (default
    /// [`DEFAULT_MAX_POOLS`]); the rest count under [`OTHER_POOLS`].
    #[must_use]
    pub fn max_pools(mut self, max_pools: usize) -> Self {
        self.max_pools = max_pools;
        self
    }

    /// Runs `record` with the series of `pool` (registered on first use).
    fn with_series(&self, pool: Option<&str>, record: impl FnOnce(&PoolSeries)) {
        let Some(pool) = pool else {
            return record(self.other());
        };
        let mut record = Some(record);
        RECENT.with_borrow(|recent| {
            let found = recent
                .iter()
                .rev()
                .find(|(observer, name, _)| *observer == self.id && **name == *pool);
            if let Some((_, _, series)) = found
                && let Some(record) = record.take()
            {
                record(series);
            }
        });
        let Some(record) = record else {
            return;
        };
        let series = self.shared_series(pool);
        record(&series);
        RECENT.with_borrow_mut(|recent| {
            if recent.len() >= PER_THREAD {
                recent.remove(0);
            }
            recent.push((self.id, pool.into(), series));
        });
    }

    /// The series of `pool` from the shared map, registered if new (or the
    /// [`OTHER_POOLS`] series past the limit).
    fn shared_series(&self, pool: &str) -> Arc<PoolSeries> {
        if let Some(series) = self.pools.read().get(pool) {
            return Arc::clone(series);
        }
        let mut pools = self.pools.write();
        if let Some(series) = pools.get(pool) {
            return Arc::clone(series);
        }
        if pools.len() >= self.max_pools {
            drop(pools);
            return Arc::clone(self.other());
        }
        let series = Arc::new(self.register(pool));
        pools.insert(pool.into(), Arc::clone(&series));
        series
    }

    fn other(&self) -> &Arc<PoolSeries> {
        self.other
            .get_or_init(|| Arc::new(self.register(OTHER_POOLS)))
    }

    /// Registers every series of `pool` with this observer's recorder.
    fn register(&self, pool: &str) -> PoolSeries {
        self.in_recorder(|| {
            self.described.call_once(describe);
            let p = pool.to_owned();
            PoolSeries {
                hit: counter!(ACQUIRE_TOTAL, "pool" => p.clone(), "result" => "hit"),
                miss: counter!(ACQUIRE_TOTAL, "pool" => p.clone(), "result" => "miss"),
                error: counter!(ACQUIRE_TOTAL, "pool" => p.clone(), "result" => "error"),
                acquire_seconds: histogram!(ACQUIRE_DURATION_SECONDS, "pool" => p.clone()),
                release: counter!(RELEASE_TOTAL, "pool" => p.clone()),
                lease_seconds: histogram!(LEASE_DURATION_SECONDS, "pool" => p.clone()),
                outcomes: OUTCOME_KINDS
                    .map(|kind| counter!(OUTCOMES_TOTAL, "pool" => p.clone(), "kind" => kind)),
                health: ProxyStatus::ALL.map(|status| {
                    counter!(HEALTH_CHECKS_TOTAL, "pool" => p.clone(), "result" => status.as_str())
                }),
                health_error: counter!(HEALTH_CHECKS_TOTAL, "pool" => p, "result" => "error"),
            }
        })
    }

    fn in_recorder<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.recorder {
            Some(recorder) => metrics::with_local_recorder(recorder.as_ref(), f),
            None => f(),
        }
    }
}

impl LeaseObserver for MetricsObserver {
    fn on_acquire(&self, event: &AcquireEvent<'_>) {
        self.with_series(Some(event.pool_name), |series| {
            match event.lease {
                Some(_) => series.hit.increment(1),
                None => series.miss.increment(1),
            }
            series.acquire_seconds.record(event.duration.as_secs_f64());
        });
    }

    fn on_acquire_error(&self, event: &AcquireErrorEvent<'_>) {
        self.with_series(Some(event.pool_name), |series| {
            series.error.increment(1);
            series.acquire_seconds.record(event.duration.as_secs_f64());
        });
    }

    fn on_release(&self, event: &ReleaseEvent<'_>) {
        self.with_series(event.pool_name, |series| {
            series.release.increment(1);
            series
                .lease_seconds
                .record(event.lease_duration.as_secs_f64());
        });
    }

    fn on_outcome(&self, event: &OutcomeEvent<'_>) {
        let kind = outcome_index(event.outcome);
        self.with_series(event.pool_name, |series| {
            series.outcomes[kind].increment(1);
        });
    }

    fn wants_pool_names(&self) -> bool {
        true
    }
}

impl HealthObserver for MetricsObserver {
    fn on_health_check(&self, event: &HealthCheckEvent<'_>) {
        self.with_series(event.pool_name, |series| {
            let counter = match event.error {
                Some(_) => &series.health_error,
                None => ProxyStatus::ALL
                    .iter()
                    .position(|s| *s == event.result.status)
                    .and_then(|i| series.health.get(i))
                    .unwrap_or(&series.health_error),
            };
            counter.increment(1);
        });
    }
}

/// The handles of one pool's series.
struct PoolSeries {
    hit: Counter,
    miss: Counter,
    error: Counter,
    acquire_seconds: Histogram,
    release: Counter,
    lease_seconds: Histogram,
    /// In the order of [`OUTCOME_KINDS`].
    outcomes: [Counter; 4],
    /// In the order of [`ProxyStatus::ALL`].
    health: [Counter; ProxyStatus::ALL.len()],
    health_error: Counter,
}

fn outcome_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Success { .. } => 0,
        Outcome::ProxyFailure { .. } => 1,
        Outcome::Blocked { .. } => 2,
        Outcome::TargetError { .. } => 3,
    }
}

/// Describes the series to the recorder in place (HELP lines and units).
fn describe() {
    metrics::describe_counter!(
        ACQUIRE_TOTAL,
        Unit::Count,
        "Acquires by pool and result (hit, miss, error)."
    );
    metrics::describe_histogram!(
        ACQUIRE_DURATION_SECONDS,
        Unit::Seconds,
        "Time of one acquire, by pool."
    );
    metrics::describe_counter!(
        RELEASE_TOTAL,
        Unit::Count,
        "Releases that ended a lease, by pool."
    );
    metrics::describe_histogram!(
        LEASE_DURATION_SECONDS,
        Unit::Seconds,
        "How long leases were held, by pool."
    );
    metrics::describe_counter!(
        OUTCOMES_TOTAL,
        Unit::Count,
        "Outcomes applied to proxies, by pool and kind."
    );
    metrics::describe_counter!(
        HEALTH_CHECKS_TOTAL,
        Unit::Count,
        "Health checks by pool and result (the verdict, or error)."
    );
}
