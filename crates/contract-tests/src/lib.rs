//! The behaviour suite every pharox storage adapter must pass.
//!
//! An adapter author adds this crate and `tokio` (features `macros`,
//! `rt-multi-thread`) as dev-dependencies and writes one macro call, in a
//! test file, with an async factory that returns a fresh [`ContractFixture`]:
//!
//! ```ignore
//! // tests/contract.rs
//! pharox_contract_tests::storage_contract_tests!(|| async {
//!     let clock = std::sync::Arc::new(pharox_ports::ManualClock::starting_now());
//!     let storage = MyStorage::new(clock.clone());
//!     pharox_contract_tests::ContractFixture::new(storage, clock)
//! });
//! ```
//!
//! That expands to one named
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` per
//! behaviour (see [`scenarios`] and [`SCENARIOS`]), so one failure never
//! hides the others, plus a test checking the expansion covers every name in
//! [`SCENARIOS`]. Each scenario is also a documented `pub async fn` taking
//! the fixture, for adapters that want to call them by hand (or pass
//! backend-specific setup around them).
//!
//! No scenario sleeps: expiry is reached through [`ContractFixture::time`].
//!
//! Scenarios create their own uniquely named pools and consumers, but some
//! (expiry, `cleanup_expired` counts) act on the whole storage: the factory
//! must hand every test a storage that no other test writes to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pharox_ports::{ManualClock, ProxyStorage};

pub mod scenarios;

/// Moves the storage's notion of "now" forward, so expiry can be tested
/// without sleeping. The in-memory adapter moves its [`ManualClock`]; a SQL
/// adapter that uses the database's clock moves the stored timestamps back
/// instead.
#[async_trait]
pub trait TimeTravel: Send + Sync {
    /// Makes `by` pass for everything the storage holds.
    async fn advance(&self, by: Duration);
}

#[async_trait]
impl TimeTravel for ManualClock {
    async fn advance(&self, by: Duration) {
        ManualClock::advance(self, by);
    }
}

/// What each scenario gets: a fresh storage and a way to move its time.
#[derive(Clone)]
pub struct ContractFixture {
    /// The storage under test, used by no other test.
    pub storage: Arc<dyn ProxyStorage>,
    /// Moves the storage's time.
    pub time: Arc<dyn TimeTravel>,
}

impl ContractFixture {
    /// A fixture from a storage and its time control.
    pub fn new(storage: impl ProxyStorage + 'static, time: Arc<dyn TimeTravel>) -> Self {
        Self {
            storage: Arc::new(storage),
            time,
        }
    }
}

/// The name of every scenario in [`scenarios`], in the order the macro
/// emits them; a runner can report how many ran.
pub const SCENARIOS: &[&str] = &[
    "consumer_round_trip_is_idempotent",
    "acquire_returns_an_active_lease",
    "acquire_on_unknown_pool_returns_none",
    "acquire_with_unknown_consumer_is_not_found",
    "invalid_acquire_request_changes_nothing",
    "scalar_filters_select_exactly_the_matches",
    "composite_filters_with_predicates",
    "geo_filters_exact_and_radius",
    "only_active_proxies_are_leased",
    "max_concurrency_is_enforced",
    "least_used_prefers_the_lowest_load",
    "round_robin_cycles_in_id_order",
    "random_selector_leases_a_matching_proxy",
    "lowest_latency_prefers_the_fastest",
    "release_restores_availability",
    "release_twice_is_already_released",
    "unknown_lease_is_not_found",
    "renew_extends_an_active_lease",
    "renew_of_an_ended_lease_is_not_active",
    "find_available_peeks_without_leasing",
    "expired_leases_stop_blocking_capacity",
    "cleanup_expired_counts_only_expired_leases",
    "health_result_updates_proxy_and_history",
    "health_policy_streak_and_ban",
    "health_result_for_unknown_proxy_is_none",
    "pool_stats_count_occupancy",
    "pool_crud_round_trip",
    "proxy_crud_round_trip",
    "save_proxy_keeps_storage_owned_fields",
    "add_proxies_is_all_or_nothing",
    "deleting_a_leased_proxy_ends_its_lease",
    "returned_values_are_copies",
    "contention_leases_each_slot_once",
    "contention_with_spare_capacity_all_succeed",
    "acquire_release_loops_never_over_lease",
];

/// Expands to one `#[tokio::test]` per scenario, each calling the factory
/// for a fresh [`ContractFixture`].
///
/// The argument is an expression that can be called with no arguments and
/// returns a future of a `ContractFixture`, typically `|| async { ... }`.
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[macro_export]
macro_rules! storage_contract_tests {
    (@emit $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let fixture: $crate::ContractFixture = ($factory)().await;
                $crate::scenarios::$name(&fixture).await;
            }
        )*

        #[test]
        fn contract_suite_covers_every_scenario() {
            let expanded: &[&str] = &[$(stringify!($name)),*];
            assert_eq!(expanded, $crate::SCENARIOS, "the macro and SCENARIOS disagree");
        }
    };
    ($factory:expr $(,)?) => {
        $crate::storage_contract_tests!(@emit $factory;
            consumer_round_trip_is_idempotent,
            acquire_returns_an_active_lease,
            acquire_on_unknown_pool_returns_none,
            acquire_with_unknown_consumer_is_not_found,
            invalid_acquire_request_changes_nothing,
            scalar_filters_select_exactly_the_matches,
            composite_filters_with_predicates,
            geo_filters_exact_and_radius,
            only_active_proxies_are_leased,
            max_concurrency_is_enforced,
            least_used_prefers_the_lowest_load,
            round_robin_cycles_in_id_order,
            random_selector_leases_a_matching_proxy,
            lowest_latency_prefers_the_fastest,
            release_restores_availability,
            release_twice_is_already_released,
            unknown_lease_is_not_found,
            renew_extends_an_active_lease,
            renew_of_an_ended_lease_is_not_active,
            find_available_peeks_without_leasing,
            expired_leases_stop_blocking_capacity,
            cleanup_expired_counts_only_expired_leases,
            health_result_updates_proxy_and_history,
            health_policy_streak_and_ban,
            health_result_for_unknown_proxy_is_none,
            pool_stats_count_occupancy,
            pool_crud_round_trip,
            proxy_crud_round_trip,
            save_proxy_keeps_storage_owned_fields,
            add_proxies_is_all_or_nothing,
            deleting_a_leased_proxy_ends_its_lease,
            returned_values_are_copies,
            contention_leases_each_slot_once,
            contention_with_spare_capacity_all_succeed,
            acquire_release_loops_never_over_lease
        );
    };
}
