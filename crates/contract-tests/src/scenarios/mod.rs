//! One `pub async fn` per behaviour of [`ProxyStorage`](pharox_ports::ProxyStorage),
//! grouped in modules by concern. Each panics with a message saying what
//! went wrong when the storage misbehaves.
//!
//! Every scenario creates its own pools and consumers under fresh unique
//! names, never sleeps (expiry is reached with [`ContractFixture::time`](crate::ContractFixture)),
//! and asserts exact outcomes. [`storage_contract_tests!`](crate::storage_contract_tests)
//! runs them all, [`SUITE`](crate::SUITE) lists them for a runner of its
//! own; call one by hand to debug it.
//!
//! A new scenario is a documented `pub async fn` in one of these modules
//! plus its `module::name` in the crate's one list of scenarios
//! (`__pharox_scenario_list!` in `lib.rs`); a test of this crate fails when
//! a function is missing from the list.

pub mod admin;
pub mod admin_views;
pub mod contention;
pub mod deletion;
pub mod expiry;
pub mod filters;
pub mod health;
pub mod idempotency;
pub mod leasing;
pub mod outcomes;
pub mod selectors;
pub mod sessions;
mod support;
