//! The whole storage contract suite against `MemoryStorage`, one fresh
//! storage and `ManualClock` per test.

use std::sync::Arc;

use pharox_adapter_memory::MemoryStorage;
use pharox_contract_tests::ContractFixture;
use pharox_ports::ManualClock;

pharox_contract_tests::storage_contract_tests!(|| async {
    let clock = Arc::new(ManualClock::starting_now());
    ContractFixture::new(MemoryStorage::with_clock(clock.clone()), clock)
});

pharox_contract_tests::api_key_store_contract_tests!(|| async {
    let clock = Arc::new(ManualClock::starting_now());
    Arc::new(pharox_adapter_memory::MemoryApiKeys::with_clock(clock))
        as pharox_contract_tests::api_keys::ApiKeyFixture
});
