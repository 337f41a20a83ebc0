//! Shared helpers of the PostgreSQL integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pharox_adapter_postgres::testing::{TestSchema, TimeShift};
use pharox_contract_tests::{ContractFixture, TimeTravel};

/// Moves lease timestamps back in the fixture's schema.
pub struct SqlTimeTravel(pub TimeShift);

#[async_trait::async_trait]
impl TimeTravel for SqlTimeTravel {
    async fn advance(&self, by: Duration) {
        self.0
            .advance(by)
            .await
            .expect("time travel (moving lease timestamps back) failed");
    }
}

/// A fresh migrated schema; panics with instructions when there is no server.
pub async fn schema() -> TestSchema {
    match TestSchema::create().await {
        Ok(schema) => schema,
        Err(e) => panic!("{e}"),
    }
}

/// A contract fixture on a fresh schema.
pub async fn fixture() -> ContractFixture {
    let schema = schema().await;
    let time = Arc::new(SqlTimeTravel(schema.time_shift()));
    ContractFixture::new(schema.storage().clone(), time)
}
