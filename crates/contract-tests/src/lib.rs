//! The behaviour suite every pharox storage adapter must pass.
//!
//! An adapter author adds this crate as a dev-dependency and writes one
//! macro call with an async factory that returns a fresh [`ContractFixture`]:
//!
//! ```ignore
//! pharox_contract_tests::storage_contract_tests!(|| async {
//!     let clock = std::sync::Arc::new(pharox_ports::ManualClock::starting_now());
//!     let storage = MyStorage::new(clock.clone());
//!     pharox_contract_tests::ContractFixture::new(storage, clock)
//! });
//! ```
//!
//! That expands to one named `#[tokio::test]` per behaviour (see
//! [`scenarios`]), so one failure never hides the others. Each scenario is
//! also a documented `pub async fn` taking the fixture, for adapters that
//! want to call them by hand.
//!
//! Scenarios create their own uniquely named pools and consumers, but some
//! (expiry, `cleanup_expired` counts) act on the whole storage: the factory
//! must hand every test a storage that no other test writes to.

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
