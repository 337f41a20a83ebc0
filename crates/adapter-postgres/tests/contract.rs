//! The storage contract suite against a real PostgreSQL, one fresh schema per
//! scenario (see `pharox_adapter_postgres::testing`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

pharox_contract_tests::storage_contract_tests!(|| async { common::fixture().await });

pharox_contract_tests::api_key_store_contract_tests!(|| async {
    std::sync::Arc::new(common::schema().await.storage().clone())
        as pharox_contract_tests::api_keys::ApiKeyFixture
});
