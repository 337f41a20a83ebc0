//! [`ApiKeyStore`]: API keys of the HTTP service kept in storage (hashes
//! only), so that every replica on one database accepts the same keys and a
//! revocation reaches all of them.

use async_trait::async_trait;
use pharox_domain::{ApiKeyHash, ApiKeyRecord, ApiKeySelector, NewApiKey};

use crate::StorageResult;

/// Stored API keys. Separate from [`ProxyStorage`](crate::ProxyStorage):
/// a storage that serves no HTTP API need not implement it.
///
/// The contract (proved by `pharox-contract-tests`' `api_key_store_contract_tests!`):
/// - keys are kept as their hash only; a hash is stored at most once
///   ([`StorageError::Conflict`](crate::StorageError::Conflict) otherwise);
/// - a name is unique among keys not revoked (`Conflict` otherwise) and
///   may be reused once its key is revoked;
/// - the storage sets `created_at` (and `revoked_at`) from its own clock;
/// - revoking is for good and idempotent: revoking a revoked key by id
///   returns it unchanged (its first `revoked_at`);
/// - [`find_active_api_key`](Self::find_active_api_key) never returns a
///   revoked key.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a new key (validated first: a bad name is
    /// [`StorageError::Invalid`](crate::StorageError::Invalid)) and returns
    /// it as stored.
    async fn create_api_key(&self, key: &NewApiKey) -> StorageResult<ApiKeyRecord>;

    /// Every key, revoked ones included, oldest first.
    async fn list_api_keys(&self) -> StorageResult<Vec<ApiKeyRecord>>;

    /// Revokes the key `which` names and returns it; `NotFound` (entity
    /// `"api key"`) when there is none (by name: no key not revoked has it).
    async fn revoke_api_key(&self, which: &ApiKeySelector) -> StorageResult<ApiKeyRecord>;

    /// The key not revoked with this hash, if any.
    async fn find_active_api_key(&self, hash: &ApiKeyHash) -> StorageResult<Option<ApiKeyRecord>>;
}
