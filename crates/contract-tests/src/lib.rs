//! The behaviour suite every pharox storage adapter must pass.
//!
//! An adapter author adds this crate and `tokio` (features `macros`,
//! `rt-multi-thread`) as dev-dependencies and writes one macro call, in a
//! test file, with an async factory that returns a fresh [`ContractFixture`]:
//!
//! ```no_run
//! // tests/contract.rs
//! # use pharox_ports::MockProxyStorage as MyStorage; // stands in for your adapter
//! pharox_contract_tests::storage_contract_tests!(|| async {
//!     let clock = std::sync::Arc::new(pharox_ports::ManualClock::starting_now());
//!     let storage = MyStorage::new(); // your storage, on `clock`
//!     pharox_contract_tests::ContractFixture::new(storage, clock)
//! });
//! ```
//!
//! That expands to one named
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` per
//! behaviour (see [`scenarios`] and [`SCENARIOS`]), so one failure never
//! hides the others. Each scenario is also a documented `pub async fn`
//! taking the fixture, for adapters that want to call them by hand (or pass
//! backend-specific setup around them), and [`SUITE`] lists them all with a
//! function pointer each, for a runner of one's own (the memory adapter's
//! mutation harness runs the suite against deliberately broken storages).
//!
//! The trait is declared with `#[async_trait]`, so an implementation needs
//! `async-trait` too, and `impl ProxyStorage for MyStorage` carries
//! `#[async_trait::async_trait]`.
//!
//! Storages that keep the HTTP service's API keys also run
//! [`api_key_store_contract_tests!`] (scenarios in [`api_keys`]) with a
//! factory of fresh `Arc<dyn ApiKeyStore>`.
//!
//! No scenario sleeps: expiry is reached through [`ContractFixture::time`].
//!
//! Scenarios create their own uniquely named pools and consumers, but some
//! (expiry, `cleanup_expired` counts) act on the whole storage: the factory
//! must hand every test a storage that no other test writes to.
//!
//! This crate has no cargo features.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pharox_ports::{ManualClock, ProxyStorage};

pub mod api_keys;
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

/// The future of one scenario run (see [`Scenario`]).
pub type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One scenario of the suite, for runners of their own (a harness that
/// runs the whole suite against many storages, say).
#[derive(Clone, Copy)]
pub struct Scenario {
    /// The module of [`scenarios`] it lives in (its concern).
    pub module: &'static str,
    /// Its function's name, also the name of its test.
    pub name: &'static str,
    /// Runs it on a fixture; the future panics when the storage breaks the
    /// behaviour.
    pub run: for<'a> fn(&'a ContractFixture) -> ScenarioFuture<'a>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", self.module, self.name)
    }
}

/// Every scenario in [`scenarios`], in the order the macro emits them.
pub const SUITE: &[Scenario] = __pharox_scenario_list!(suite);

/// The name of every scenario in [`scenarios`], in the order the macro
/// emits them; a runner can report how many ran.
pub const SCENARIOS: &[&str] = __pharox_scenario_list!(names);

/// Expands to one `#[tokio::test]` per scenario, each calling the factory
/// for a fresh [`ContractFixture`].
///
/// The argument is an expression that can be called with no arguments and
/// returns a future of a `ContractFixture`, typically `|| async { ... }`.
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[macro_export]
macro_rules! storage_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__pharox_scenario_list!(tests $factory);
    };
}

/// The one list of scenarios, as `module::name`: [`SUITE`], [`SCENARIOS`]
/// and [`storage_contract_tests!`] are all expanded from it, so a scenario
/// is named once. Not API.
#[doc(hidden)]
#[macro_export]
macro_rules! __pharox_scenario_list {
    ($($mode:tt)+) => {
        $crate::__pharox_scenario_expand! { [$($mode)+]
            leasing::acquire_returns_an_active_lease,
            leasing::acquire_on_unknown_pool_returns_none,
            leasing::acquire_with_unknown_consumer_is_not_found,
            leasing::invalid_acquire_request_changes_nothing,
            leasing::only_active_proxies_are_leased,
            leasing::max_concurrency_is_enforced,
            leasing::release_restores_availability,
            leasing::release_twice_is_already_released,
            leasing::unknown_lease_is_not_found,
            leasing::renew_extends_an_active_lease,
            leasing::renew_of_an_ended_lease_is_not_active,
            leasing::find_available_peeks_without_leasing,
            leasing::find_available_skips_full_proxies,
            filters::scalar_filters_select_exactly_the_matches,
            filters::composite_filters_with_predicates,
            filters::geo_filters_exact_and_radius,
            selectors::least_used_prefers_the_lowest_load,
            selectors::round_robin_cycles_in_id_order,
            selectors::random_selector_leases_a_matching_proxy,
            selectors::lowest_latency_prefers_the_fastest,
            expiry::expired_leases_stop_blocking_capacity,
            expiry::a_lease_ends_at_exactly_expires_at,
            expiry::find_available_counts_capacity_freed_by_expiry,
            expiry::cleanup_expired_counts_only_expired_leases,
            idempotency::acquire_with_a_lease_id_is_idempotent,
            idempotency::racing_repeats_of_a_lease_id_lease_once,
            idempotency::a_lease_id_of_another_consumer_or_pool_conflicts,
            health::health_result_updates_proxy_and_history,
            health::health_policy_streak_and_ban,
            health::health_result_for_unknown_proxy_is_none,
            admin::consumer_round_trip_is_idempotent,
            admin::names_are_exact_and_case_sensitive,
            admin::pool_stats_count_occupancy,
            admin::pool_crud_round_trip,
            admin::proxy_crud_round_trip,
            admin::save_proxy_keeps_storage_owned_fields,
            admin::add_proxies_is_all_or_nothing,
            admin::returned_values_are_copies,
            admin_views::pool_overview_counts_statuses_leases_and_capacity,
            admin_views::pool_overview_latency_and_checked_at,
            admin_views::list_leases_lists_live_leases_oldest_first,
            deletion::deleting_a_leased_proxy_ends_its_lease,
            deletion::delete_proxy_removes_its_leases_and_history,
            deletion::delete_pool_removes_everything_under_it,
            contention::contention_leases_each_slot_once,
            contention::contention_with_spare_capacity_all_succeed,
            contention::acquire_release_loops_never_over_lease,
            outcomes::score_rises_with_failures_and_decays_with_successes,
            outcomes::cooldown_starts_at_the_threshold,
            outcomes::cooldown_ends_after_its_base,
            outcomes::failure_after_a_cooldown_doubles_it,
            outcomes::cooldown_doubling_stops_at_the_cap,
            outcomes::success_after_a_cooldown_resets_the_doubling,
            outcomes::outcomes_never_change_status,
            outcomes::save_proxy_ignores_the_callers_usage,
            outcomes::health_success_ends_a_cooldown_only_when_told,
            outcomes::ban_is_isolated_to_its_site,
            outcomes::ban_ends_and_doubles,
            outcomes::list_target_bans_lists_bans_that_hold,
            outcomes::release_with_outcome_applies_once,
            outcomes::report_needs_an_active_lease,
            outcomes::invalid_outcome_or_policy_changes_nothing,
            outcomes::racing_release_and_report_never_double_count,
            sessions::session_is_reused,
            sessions::session_moves_when_its_proxy_cools_down,
            sessions::session_moves_when_its_proxy_is_full,
            sessions::session_moves_when_its_proxy_no_longer_qualifies,
            sessions::session_is_shared_by_consumers,
            sessions::session_expires_after_its_ttl,
            sessions::session_renews_on_each_use,
            sessions::same_key_in_another_pool_is_independent,
            sessions::session_is_kept_when_nothing_qualifies,
            sessions::contention_on_one_session_leases_once,
        }
    };
}

/// What [`__pharox_scenario_list!`] expands to, by mode. Not API.
#[doc(hidden)]
#[macro_export]
macro_rules! __pharox_scenario_expand {
    ([names] $($module:ident::$name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
    ([suite] $($module:ident::$name:ident),* $(,)?) => {
        &[$(
            $crate::Scenario {
                module: stringify!($module),
                name: stringify!($name),
                run: {
                    fn run(fixture: &$crate::ContractFixture) -> $crate::ScenarioFuture<'_> {
                        ::std::boxed::Box::pin($crate::scenarios::$module::$name(fixture))
                    }
                    run
                },
            }
        ),*]
    };
    ([tests $factory:expr] $($module:ident::$name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let fixture: $crate::ContractFixture = ($factory)().await;
                $crate::scenarios::$module::$name(&fixture).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{SCENARIOS, SUITE};

    /// The source of every scenario module, to find the functions the list
    /// must name.
    const MODULES: &[(&str, &str)] = &[
        ("admin", include_str!("scenarios/admin.rs")),
        ("admin_views", include_str!("scenarios/admin_views.rs")),
        ("contention", include_str!("scenarios/contention.rs")),
        ("deletion", include_str!("scenarios/deletion.rs")),
        ("expiry", include_str!("scenarios/expiry.rs")),
        ("filters", include_str!("scenarios/filters.rs")),
        ("health", include_str!("scenarios/health.rs")),
        ("idempotency", include_str!("scenarios/idempotency.rs")),
        ("leasing", include_str!("scenarios/leasing.rs")),
        ("outcomes", include_str!("scenarios/outcomes.rs")),
        ("selectors", include_str!("scenarios/selectors.rs")),
        ("sessions", include_str!("scenarios/sessions.rs")),
    ];

    /// Every `pub async fn` of a scenario module is in the list, under its
    /// own module, once; and the list names nothing else. (A function
    /// missing from the list would compile and silently never run.)
    #[test]
    fn the_list_names_every_scenario_function_once() {
        let mut defined = BTreeSet::new();
        for (module, source) in MODULES {
            for line in source.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name = rest.split('(').next().unwrap_or_default();
                    assert!(
                        defined.insert(format!("{module}::{name}")),
                        "{module}::{name} defined twice"
                    );
                }
            }
        }
        let mut listed = BTreeSet::new();
        for s in SUITE {
            assert!(
                listed.insert(format!("{}::{}", s.module, s.name)),
                "{s:?} listed twice"
            );
        }
        let unlisted: Vec<&String> = defined.difference(&listed).collect();
        let undefined: Vec<&String> = listed.difference(&defined).collect();
        assert!(
            unlisted.is_empty() && undefined.is_empty(),
            "__pharox_scenario_list! lacks {unlisted:?} and names {undefined:?}, \
             which no module defines"
        );
        let names: Vec<&str> = SUITE.iter().map(|s| s.name).collect();
        assert_eq!(names, SCENARIOS, "SUITE and SCENARIOS disagree");
        let unique: BTreeSet<&str> = SCENARIOS.iter().copied().collect();
        assert_eq!(
            unique.len(),
            SCENARIOS.len(),
            "two modules define a scenario of the same name (test names would clash)"
        );
    }
}
