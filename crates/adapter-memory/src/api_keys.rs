//! [`MemoryApiKeys`]: the [`ApiKeyStore`] port in process memory.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pharox_domain::{ApiKeyHash, ApiKeyRecord, ApiKeySelector, NewApiKey};
use pharox_ports::{ApiKeyStore, Clock, StorageError, StorageResult, SystemClock};

/// API keys (hashes only) in process memory, timestamped by a [`Clock`];
/// clones share their keys. For tests and single-process deployments.
#[derive(Debug, Clone)]
pub struct MemoryApiKeys {
    clock: Arc<dyn Clock>,
    /// Oldest first.
    keys: Arc<Mutex<Vec<ApiKeyRecord>>>,
}

impl Default for MemoryApiKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryApiKeys {
    /// No keys, on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// No keys, timestamped by `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            keys: Arc::default(),
        }
    }
}

#[async_trait]
impl ApiKeyStore for MemoryApiKeys {
    async fn create_api_key(&self, key: &NewApiKey) -> StorageResult<ApiKeyRecord> {
        key.validate()?;
        let mut keys = self.keys.lock();
        if keys.iter().any(|k| k.key_hash == key.key_hash) {
            return Err(StorageError::Conflict(
                "storing an API key: duplicate value (api_key_hash_key)".into(),
            ));
        }
        if keys.iter().any(|k| k.id == key.id) {
            return Err(StorageError::Conflict(
                "storing an API key: duplicate value (api_key_pkey)".into(),
            ));
        }
        if let Some(name) = &key.name
            && keys
                .iter()
                .any(|k| k.is_active() && k.name.as_ref() == Some(name))
        {
            return Err(StorageError::Conflict(format!(
                "an API key named {name} exists already"
            )));
        }
        let record = ApiKeyRecord {
            id: key.id,
            name: key.name.clone(),
            scope: key.scope,
            key_hash: key.key_hash,
            created_at: self.clock.now(),
            revoked_at: None,
        };
        keys.push(record.clone());
        Ok(record)
    }

    async fn list_api_keys(&self) -> StorageResult<Vec<ApiKeyRecord>> {
        Ok(self.keys.lock().clone())
    }

    async fn revoke_api_key(&self, which: &ApiKeySelector) -> StorageResult<ApiKeyRecord> {
        let mut keys = self.keys.lock();
        let found = keys.iter_mut().find(|k| match which {
            ApiKeySelector::Id(id) => k.id == *id,
            ApiKeySelector::Name(name) => k.is_active() && k.name.as_ref() == Some(name),
        });
        let Some(key) = found else {
            return Err(StorageError::not_found("api key", which));
        };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(self.clock.now());
        }
        Ok(key.clone())
    }

    async fn find_active_api_key(&self, hash: &ApiKeyHash) -> StorageResult<Option<ApiKeyRecord>> {
        Ok(self
            .keys
            .lock()
            .iter()
            .find(|k| k.is_active() && k.key_hash == *hash)
            .cloned())
    }
}
