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

mod broken;
mod runner;

use broken::Broken;
use runner::{first_line, fixture, report, run_suite, runtime};

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
