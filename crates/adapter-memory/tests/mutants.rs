//! The mutation harness of the storage contract suite: deliberately broken
//! storages, each breaking one rule that `ProxyStorage`'s docs state, must
//! each fail at least one scenario.
//!
//! Every mutant is [`Broken`], a `ProxyStorage` that wraps a real
//! `MemoryStorage` and delegates to it, except for the one rule its
//! [`Mutant`] names. The harness runs every scenario of
//! `pharox_contract_tests::SUITE` against every mutant (each run on a fresh
//! storage, in a tokio task whose panic is the failure) and checks:
//!
//! - the unbroken `MemoryStorage`, and `Broken` with no mutation, pass every
//!   scenario (so a mutant's failures come from its mutation);
//! - every mutant fails at least one scenario, and the one this file (and
//!   README's table) says catches it is among them;
//! - README's "Writing a storage adapter" table lists exactly these mutants.
//!
//! Run `cargo test -p pharox-adapter-memory --test mutants -- --nocapture`
//! to see which scenarios catch each mutant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::any::Any;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pharox_adapter_memory::MemoryStorage;
use pharox_contract_tests::{ContractFixture, SUITE, Scenario};
use pharox_domain::{
    ConsumerId, HealthCheckResult, HealthPolicy, HealthRecord, Lease, LeaseId, LeaseSession,
    LeaseStatus, MAX_LEASE_TTL, Outcome, PoolId, PoolOverview, PoolStats, Proxy, ProxyFilter,
    ProxyHealth, ProxyId, ProxyPool, ProxyStatus, Selector, TargetBan, UsagePolicy, validate_name,
    validate_ttl,
};
use pharox_ports::{
    AcquireRequest, Clock, ManualClock, ProxyStorage, ReleaseOutcome, ReleasedLease, StorageError,
    StorageResult,
};
use time::OffsetDateTime;

/// Declares the mutants once: the enum, and the table of name, rule and
/// designated catching scenario that README mirrors.
macro_rules! mutants {
    ($($variant:ident => $name:literal, $rule:literal, $caught_by:literal;)+) => {
        /// Which rule a [`Broken`] storage breaks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Mutant {
            /// None: `Broken` delegates everything (the harness's control).
            Unbroken,
            $($variant,)+
        }

        /// Every mutant with its README name, the rule it breaks and the
        /// scenario written to catch it.
        const MUTANTS: &[MutantInfo] = &[
            $(MutantInfo {
                mutant: Mutant::$variant,
                name: $name,
                rule: $rule,
                caught_by: $caught_by,
            },)+
        ];
    };
}

mutants! {
    AcquireLeasesBeforeValidating => "acquire_leases_before_validating",
        "validation first: a rejected acquire changes nothing",
        "invalid_acquire_request_changes_nothing";
    SaveProxyWritesBeforeValidating => "save_proxy_writes_before_validating",
        "validation first: a rejected save_proxy changes nothing",
        "save_proxy_keeps_storage_owned_fields";
    RenewWritesBeforeValidating => "renew_writes_before_validating",
        "validation first: a rejected renew changes nothing",
        "renew_extends_an_active_lease";
    HealthResultRecordedBeforeValidating => "health_result_recorded_before_validating",
        "validation first: a rejected health result is not recorded",
        "health_result_updates_proxy_and_history";
    AcquireIgnoresMaxConcurrency => "acquire_ignores_max_concurrency",
        "atomic acquire: max_concurrency is honoured",
        "max_concurrency_is_enforced";
    AcquireChecksCapacityThenLeases => "acquire_checks_capacity_then_leases",
        "atomic acquire: two callers never both take the last slot",
        "contention_leases_each_slot_once";
    AcquireRefusesWhenContended => "acquire_refuses_when_contended",
        "atomic acquire: never refused while a matching proxy has capacity",
        "contention_with_spare_capacity_all_succeed";
    AcquireLeasesInactiveProxies => "acquire_leases_inactive_proxies",
        "atomic acquire: only active proxies are leased",
        "only_active_proxies_are_leased";
    UnknownConsumerLeasesAnyway => "unknown_consumer_leases_anyway",
        "no lease behind an error: not-found for the consumer leases nothing",
        "acquire_with_unknown_consumer_is_not_found";
    LeaseIdConflictLeasesAnyway => "lease_id_conflict_leases_anyway",
        "no lease behind an error: a lease-id conflict leases nothing",
        "a_lease_id_of_another_consumer_or_pool_conflicts";
    LeaseIdIgnored => "lease_id_ignored",
        "idempotent acquire: the new lease gets the caller's id",
        "acquire_with_a_lease_id_is_idempotent";
    RepeatedLeaseIdLeasesAgain => "repeated_lease_id_leases_again",
        "idempotent acquire: a repeat returns the first lease and leases nothing",
        "acquire_with_a_lease_id_is_idempotent";
    ReleasedLeaseIdLeasesAgain => "released_lease_id_leases_again",
        "idempotent acquire: a repeat after release returns the released lease",
        "acquire_with_a_lease_id_is_idempotent";
    RacingRepeatsLeaseTwice => "racing_repeats_lease_twice",
        "idempotent acquire: racing repeats lease once",
        "racing_repeats_of_a_lease_id_lease_once";
    LeaseIdConflictReturnsTheOtherLease => "lease_id_conflict_returns_the_other_lease",
        "idempotent acquire: an id of another consumer or pool is a conflict",
        "a_lease_id_of_another_consumer_or_pool_conflicts";
    ExpiredLeasesBlockUntilCleanup => "expired_leases_block_until_cleanup",
        "expiry never blocks: acquire reclaims expired leases itself",
        "expired_leases_stop_blocking_capacity";
    LeaseStillHoldsAtExpiresAt => "lease_still_holds_at_expires_at",
        "expiry is exclusive: at exactly expires_at the lease no longer holds",
        "a_lease_ends_at_exactly_expires_at";
    PoolStatsCountsExpiredLeases => "pool_stats_counts_expired_leases",
        "expiry never blocks: pool_stats does not count expired leases",
        "expired_leases_stop_blocking_capacity";
    FindAvailableCountsExpiredLeases => "find_available_counts_expired_leases",
        "find_available: a proxy freed only by expiry is available",
        "find_available_counts_capacity_freed_by_expiry";
    SaveProxyKeepsCallersCurrentLeases => "save_proxy_keeps_callers_current_leases",
        "storage-owned fields: save_proxy ignores the caller's current_leases",
        "save_proxy_keeps_storage_owned_fields";
    AddProxiesKeepsCallersCurrentLeases => "add_proxies_keeps_callers_current_leases",
        "storage-owned fields: add_proxies ignores the caller's current_leases",
        "save_proxy_keeps_storage_owned_fields";
    SaveProxyUpdateOverwritesHealth => "save_proxy_update_overwrites_health",
        "storage-owned fields: an update keeps checked_at and health",
        "save_proxy_keeps_storage_owned_fields";
    SaveProxyUpdateOverwritesCreatedAt => "save_proxy_update_overwrites_created_at",
        "save_proxy: an update keeps created_at",
        "save_proxy_keeps_storage_owned_fields";
    HealthResultLeavesCheckedAt => "health_result_leaves_checked_at",
        "apply_health_result updates checked_at",
        "health_result_updates_proxy_and_history";
    DeleteOfUnknownIdSucceeds => "delete_of_unknown_id_succeeds",
        "not found: deleting an unknown pool or proxy is not-found",
        "pool_crud_round_trip";
    ReleaseOfUnknownLeaseIsAlreadyReleased => "release_of_unknown_lease_is_already_released",
        "not found: releasing an unknown lease is not-found",
        "unknown_lease_is_not_found";
    AcquireOnUnknownPoolIsNotFound => "acquire_on_unknown_pool_is_not_found",
        "not found: acquire on an unknown pool is Ok(None)",
        "acquire_on_unknown_pool_returns_none";
    AcquireWithUnknownConsumerReturnsNone => "acquire_with_unknown_consumer_returns_none",
        "acquire: an unknown consumer is not-found",
        "acquire_with_unknown_consumer_is_not_found";
    ListProxiesOfUnknownPoolIsEmpty => "list_proxies_of_unknown_pool_is_empty",
        "not found: list_proxies of an unknown pool is not-found",
        "proxy_crud_round_trip";
    PoolStatsOfUnknownPoolIsEmpty => "pool_stats_of_unknown_pool_is_empty",
        "not found: pool_stats of an unknown pool is not-found",
        "pool_stats_count_occupancy";
    SaveProxyCreatesMissingPool => "save_proxy_creates_missing_pool",
        "save_proxy: the pool must exist",
        "save_proxy_keeps_storage_owned_fields";
    HealthResultForUnknownProxyIsNotFound => "health_result_for_unknown_proxy_is_not_found",
        "apply_health_result on an unknown proxy is Ok(None)",
        "health_result_for_unknown_proxy_is_none";
    HealthHistoryOfUnknownProxyIsNotFound => "health_history_of_unknown_proxy_is_not_found",
        "an unknown proxy's health history is empty, not not-found",
        "health_result_for_unknown_proxy_is_none";
    GetLeaseShowsTheProxyAsLeased => "get_lease_shows_the_proxy_as_leased",
        "get_lease shows the proxy as it is now",
        "returned_values_are_copies";
    DuplicatePoolNameReplacesTheOther => "duplicate_pool_name_replaces_the_other",
        "save_pool: a name used by another pool is a conflict",
        "pool_crud_round_trip";
    PoolUpdateOverwritesCreatedAt => "pool_update_overwrites_created_at",
        "save_pool: an update keeps created_at",
        "pool_crud_round_trip";
    ListPoolsUnordered => "list_pools_unordered",
        "list_pools is ordered by name",
        "pool_crud_round_trip";
    ListProxiesUnordered => "list_proxies_unordered",
        "list_proxies is ordered by id",
        "proxy_crud_round_trip";
    MovingAProxyIsAllowed => "moving_a_proxy_is_allowed",
        "save_proxy: moving a proxy to another pool is a conflict",
        "save_proxy_keeps_storage_owned_fields";
    AddProxiesWritesAPrefix => "add_proxies_writes_a_prefix",
        "add_proxies is all or nothing",
        "add_proxies_is_all_or_nothing";
    DeletePoolLeavesItsProxies => "delete_pool_leaves_its_proxies",
        "delete_pool deletes its proxies",
        "delete_pool_removes_everything_under_it";
    DeletePoolLeavesItsLeases => "delete_pool_leaves_its_leases",
        "delete_pool deletes its proxies' leases",
        "delete_pool_removes_everything_under_it";
    DeletePoolLeavesHealthHistory => "delete_pool_leaves_health_history",
        "delete_pool deletes its proxies' health history",
        "delete_pool_removes_everything_under_it";
    DeleteProxyLeavesItsLeases => "delete_proxy_leaves_its_leases",
        "delete_proxy deletes its leases",
        "deleting_a_leased_proxy_ends_its_lease";
    DeleteProxyLeavesHealthHistory => "delete_proxy_leaves_health_history",
        "delete_proxy deletes its health history",
        "delete_proxy_removes_its_leases_and_history";
    PoolNamesIgnoreCase => "pool_names_ignore_case",
        "pool names are exact and case-sensitive",
        "names_are_exact_and_case_sensitive";
    ConsumerNamesIgnoreCase => "consumer_names_ignore_case",
        "consumer names are exact and case-sensitive",
        "names_are_exact_and_case_sensitive";
    EnsureConsumerNotIdempotent => "ensure_consumer_not_idempotent",
        "ensure_consumer: one name, one id",
        "consumer_round_trip_is_idempotent";
    EnsureConsumerRaces => "ensure_consumer_races",
        "ensure_consumer is safe to race",
        "consumer_round_trip_is_idempotent";
    ReleaseNotIdempotent => "release_not_idempotent",
        "release is idempotent: a second release says already-released",
        "release_twice_is_already_released";
    ReleaseKeepsTheSlot => "release_keeps_the_slot",
        "release gives the proxy's capacity back",
        "release_restores_availability";
    ReleaseOfExpiredLeaseIsAlreadyReleased => "release_of_expired_lease_is_already_released",
        "release ends a lease past its expiry that nothing reclaimed yet",
        "renew_of_an_ended_lease_is_not_active";
    ReleasedLeaseReadsActive => "released_lease_reads_active",
        "a released lease reads as released",
        "release_restores_availability";
    RenewRevivesExpiredLeases => "renew_revives_expired_leases",
        "renew of an expired lease is LeaseNotActive",
        "renew_of_an_ended_lease_is_not_active";
    RenewRevivesReleasedLeases => "renew_revives_released_leases",
        "renew of a released lease is LeaseNotActive",
        "renew_of_an_ended_lease_is_not_active";
    RenewExtendsFromTheOldExpiry => "renew_extends_from_the_old_expiry",
        "renew sets expires_at to now + ttl",
        "renew_extends_an_active_lease";
    FindAvailableLeases => "find_available_leases",
        "find_available leases nothing",
        "find_available_peeks_without_leasing";
    FindAvailableAdvancesRoundRobin => "find_available_advances_round_robin",
        "find_available does not advance the round-robin cursor",
        "find_available_peeks_without_leasing";
    FindAvailableOffersFullProxies => "find_available_offers_full_proxies",
        "find_available offers only what acquire could lease (not a full proxy)",
        "find_available_skips_full_proxies";
    FindAvailableIgnoresSelector => "find_available_ignores_selector",
        "find_available chooses as acquire would, by the selector",
        "lowest_latency_prefers_the_fastest";
    CleanupReportsNothing => "cleanup_reports_nothing",
        "cleanup_expired returns how many it released",
        "cleanup_expired_counts_only_expired_leases";
    CleanupReleasesUnexpiredLeases => "cleanup_releases_unexpired_leases",
        "cleanup_expired releases only expired leases",
        "cleanup_expired_counts_only_expired_leases";
    HealthPolicyIgnored => "health_policy_ignored",
        "apply_health_result applies the given policy",
        "health_policy_streak_and_ban";
    BanLiftedBySuccess => "ban_lifted_by_success",
        "a health result never lifts a ban",
        "health_policy_streak_and_ban";
    HealthResultNotRecorded => "health_result_not_recorded",
        "apply_health_result appends a health record",
        "health_result_updates_proxy_and_history";
    HealthRecordsOldestFirst => "health_records_oldest_first",
        "list_health_records is newest first",
        "health_result_updates_proxy_and_history";
    HealthRecordsIgnoreLimit => "health_records_ignore_limit",
        "list_health_records returns at most limit records",
        "health_result_updates_proxy_and_history";
    PoolStatsCountsFullProxiesAsAvailable => "pool_stats_counts_full_proxies_as_available",
        "pool_stats: available proxies can take one more lease",
        "pool_stats_count_occupancy";
    FiltersIgnored => "filters_ignored",
        "acquire leases only proxies the filter matches",
        "scalar_filters_select_exactly_the_matches";
    NoneOfIgnored => "none_of_ignored",
        "filters: none_of excludes",
        "composite_filters_with_predicates";
    PredicatesIgnored => "predicates_ignored",
        "filters: Rust predicates apply",
        "composite_filters_with_predicates";
    LeastUsedIsFirstAvailable => "least_used_is_first_available",
        "least_used prefers the fewest leases",
        "least_used_prefers_the_lowest_load";
    RoundRobinIsFirstAvailable => "round_robin_is_first_available",
        "round_robin cycles in id order",
        "round_robin_cycles_in_id_order";
    LowestLatencyIsFirstAvailable => "lowest_latency_is_first_available",
        "lowest_latency prefers the fastest",
        "lowest_latency_prefers_the_fastest";
    RandomIsFirstAvailable => "random_is_first_available",
        "random chooses uniformly among the matches",
        "random_selector_leases_a_matching_proxy";
    TargetsIgnored => "targets_ignored",
        "cooldowns and bans: an acquire for a target skips proxies banned for it",
        "ban_is_isolated_to_its_site";
    ReleaseDropsTheOutcome => "release_drops_the_outcome",
        "usage: release_with_outcome applies its outcome",
        "release_with_outcome_applies_once";
    ReleaseOutcomeCountsTwice => "release_outcome_counts_twice",
        "usage: the outcome of a release counts exactly once",
        "release_with_outcome_applies_once";
    InvalidOutcomeReleasesAnyway => "invalid_outcome_releases_anyway",
        "validation first: a rejected release_with_outcome releases nothing",
        "invalid_outcome_or_policy_changes_nothing";
    ReportOnReleasedLeaseSucceeds => "report_on_released_lease_succeeds",
        "report_outcome needs an active lease",
        "report_needs_an_active_lease";
    SessionsIgnored => "sessions_ignored",
        "sticky sessions: a session's proxy is leased again",
        "session_is_reused";
}

/// A mutant as README lists it.
struct MutantInfo {
    mutant: Mutant,
    name: &'static str,
    rule: &'static str,
    caught_by: &'static str,
}

/// How long one scenario may run before it counts as failed (hung).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);

/// A one-microsecond step (the resolution of every stored timestamp).
const MICRO: time::Duration = time::Duration::microseconds(1);

// ----------------------------------------------------------------- runner

thread_local! {
    /// Set on the harness runtime's threads: scenario panics are expected
    /// there, and reported by the harness instead of the panic hook.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// A runtime whose worker threads do not print the panics of failing
/// scenarios (the test threads still print theirs).
fn runtime() -> tokio::runtime::Runtime {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| QUIET.with(|q| q.set(true)))
        .build()
        .expect("tokio runtime")
}

/// Runs every scenario on a fresh fixture from `make`; returns the failed
/// ones with their panic messages.
async fn run_suite(make: impl Fn() -> ContractFixture) -> BTreeMap<&'static str, String> {
    let mut failures = BTreeMap::new();
    for scenario in SUITE {
        if let Err(why) = run_one(scenario, make()).await {
            failures.insert(scenario.name, why);
        }
    }
    failures
}

async fn run_one(scenario: &Scenario, fixture: ContractFixture) -> Result<(), String> {
    let run = scenario.run;
    let mut task = tokio::spawn(async move { run(&fixture).await });
    match tokio::time::timeout(SCENARIO_TIMEOUT, &mut task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_panic() => Err(panic_message(e.into_panic())),
        Ok(Err(e)) => Err(format!("task ended: {e}")),
        Err(_) => {
            task.abort();
            Err(format!("timed out after {SCENARIO_TIMEOUT:?}"))
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.chars().take(160).collect()
}

fn report(failures: &BTreeMap<&'static str, String>) -> String {
    failures
        .iter()
        .map(|(name, why)| format!("  {name}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn fixture(mutant: Mutant) -> ContractFixture {
    let clock = Arc::new(ManualClock::starting_now());
    let storage = Broken::new(
        MemoryStorage::with_clock(clock.clone()),
        clock.clone(),
        mutant,
    );
    ContractFixture::new(storage, clock)
}

// ---------------------------------------------------------------- mutants

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
struct Broken {
    inner: MemoryStorage,
    clock: Arc<ManualClock>,
    mutant: Mutant,
    side: Mutex<Side>,
    gate: tokio::sync::Mutex<()>,
    counter: AtomicU64,
}

impl Broken {
    fn new(inner: MemoryStorage, clock: Arc<ManualClock>, mutant: Mutant) -> Self {
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

    async fn last_health_result(&self, proxy_id: ProxyId) -> StorageResult<Option<HealthRecord>> {
        Ok(self
            .list_health_records(proxy_id, 1)
            .await?
            .into_iter()
            .next())
    }

    async fn list_health_records(
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

    async fn pool_stats(&self, pool_name: &str) -> StorageResult<PoolStats> {
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

// ------------------------------------------------------------------ tests

/// The harness is sound: the real storage, and the wrapper that does not
/// break anything, pass every scenario when run this way.
#[test]
fn unbroken_storages_pass_every_scenario() {
    let runtime = runtime();
    let plain = runtime.block_on(run_suite(|| {
        let clock = Arc::new(ManualClock::starting_now());
        ContractFixture::new(MemoryStorage::with_clock(clock.clone()), clock)
    }));
    let wrapped = runtime.block_on(run_suite(|| fixture(Mutant::Unbroken)));
    for (what, failures) in [("MemoryStorage", plain), ("Broken(Unbroken)", wrapped)] {
        assert!(
            failures.is_empty(),
            "{what} failed scenarios it must pass:\n{}",
            report(&failures)
        );
    }
}

/// Every mutant fails at least one scenario, among them the one it is
/// documented to be caught by.
#[test]
fn every_mutant_is_caught() {
    let runtime = runtime();
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, info) in MUTANTS.iter().enumerate() {
            let mutant = info.mutant;
            tasks.spawn(async move { (i, run_suite(move || fixture(mutant)).await) });
        }
        let mut results = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let (i, failures) = done.expect("a mutant's run panicked outside its scenarios");
            results.insert(i, failures);
        }
        results
    });
    let mut missed = Vec::new();
    for (i, failures) in &results {
        let info = &MUTANTS[*i];
        let catchers: Vec<&str> = failures.keys().copied().collect();
        println!(
            "{:<48} caught by {}: {}",
            info.name,
            catchers.len(),
            catchers.join(", ")
        );
        if let Some(why) = failures.get(info.caught_by) {
            println!("    {}: {}", info.caught_by, first_line(why));
        } else {
            missed.push(format!(
                "{} (breaks: {}) is not caught by {}; caught by: {catchers:?}",
                info.name, info.rule, info.caught_by
            ));
        }
    }
    println!(
        "{} mutants x {} scenarios in {:?}",
        MUTANTS.len(),
        SUITE.len(),
        started.elapsed()
    );
    assert!(
        missed.is_empty(),
        "mutants not caught:\n{}",
        missed.join("\n")
    );
}

/// The mutants' names are distinct, and each designated scenario exists.
#[test]
fn mutant_table_is_well_formed() {
    let mut names = HashSet::new();
    for info in MUTANTS {
        assert!(names.insert(info.name), "{} listed twice", info.name);
        assert!(
            SUITE.iter().any(|s| s.name == info.caught_by),
            "{}: no scenario named {}",
            info.name,
            info.caught_by
        );
        assert_ne!(info.mutant, Mutant::Unbroken);
    }
}

/// README's table of mutants ("Writing a storage adapter") is this file's,
/// row for row.
#[test]
fn readme_lists_every_mutant_with_its_catcher() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md at the workspace root");
    let start = readme
        .find("<!-- mutants:start -->")
        .expect("README has a <!-- mutants:start --> marker");
    let end = readme
        .find("<!-- mutants:end -->")
        .expect("README has a <!-- mutants:end --> marker");
    let rows: Vec<(String, String, String)> = readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect();
            assert_eq!(cells.len(), 3, "README row {l:?} has not 3 cells");
            (cells[0].clone(), cells[1].clone(), cells[2].clone())
        })
        .collect();
    let want: Vec<(String, String, String)> = MUTANTS
        .iter()
        .map(|m| (m.name.into(), m.rule.into(), m.caught_by.into()))
        .collect();
    if rows != want {
        let table: Vec<String> = MUTANTS
            .iter()
            .map(|m| format!("| `{}` | {} | `{}` |", m.name, m.rule, m.caught_by))
            .collect();
        panic!(
            "README's mutant table is out of date; it should read:\n\
             | mutant | the rule it breaks | caught by |\n|---|---|---|\n{}",
            table.join("\n")
        );
    }
}
