//! API keys kept in storage: [`ApiKeyAdmin`] creates (a random key shown
//! once, its hash stored), lists, revokes and authenticates them, with a
//! short per-process cache of keys found, so a server does not ask the
//! storage on every request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), pharox::PharoxError> {
//! use std::sync::Arc;
//! use pharox::api_keys::ApiKeyAdmin;
//! use pharox::domain::ApiKeyScope;
//! use pharox_adapter_memory::MemoryApiKeys;
//!
//! let admin = ApiKeyAdmin::new(Arc::new(MemoryApiKeys::new()));
//! let created = admin.create(ApiKeyScope::Lease, Some("worker")).await?;
//! // created.key is shown to the operator once; only its hash is stored.
//! let found = admin.authenticate(created.key.expose()).await?;
//! assert_eq!(found.map(|k| k.id), Some(created.record.id));
//! admin.revoke("worker").await?;
//! assert!(admin.authenticate(created.key.expose()).await?.is_none());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pharox_domain::{ApiKeyHash, ApiKeyId, ApiKeyRecord, ApiKeyScope, ApiKeySelector, NewApiKey};
use pharox_ports::ApiKeyStore;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::PharoxError;

mod listed;

pub use listed::{ApiKeys, Caller, KeyListError, KeyRing, MAX_KEY_CHARS, MIN_KEY_CHARS};

/// How every generated key starts, so a leaked one is recognisable (secret
/// scanners, logs) as a pharox key.
pub const API_KEY_PREFIX: &str = "phx_";
/// Random bytes in a generated key (256 bits), written as hex after the prefix.
pub const API_KEY_RANDOM_BYTES: usize = 32;
/// The longest key looked up; longer ones are refused without hashing.
pub const MAX_PRESENTED_KEY_CHARS: usize = 256;
/// How long a key found in storage is trusted without asking again, by
/// default.
pub const DEFAULT_API_KEY_CACHE: Duration = Duration::from_secs(5);
/// Keys remembered at most; the cache is emptied rather than grown past it.
pub const MAX_CACHED_API_KEYS: usize = 4096;

/// The SHA-256 of a key: what is stored and compared instead of the key.
#[must_use]
pub fn hash_api_key(key: &str) -> ApiKeyHash {
    ApiKeyHash(Sha256::digest(key.as_bytes()).into())
}

/// A key's public id: 12 hex digits of SHA-256("pharox-key-id" ++ hash).
/// It names the key in consumer names and logs without revealing it, and
/// is the same on every replica (and for a key listed in a file or stored).
#[must_use]
pub fn api_key_public_id(hash: &ApiKeyHash) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"pharox-key-id");
    hasher.update(hash.as_bytes());
    hasher.finalize()[..6]
        .iter()
        .fold(String::with_capacity(12), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A key just generated: shown once, never stored. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// The key itself, to hand to the operator once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

/// What [`ApiKeyAdmin::create`] returns: the stored record and the key.
#[derive(Debug, Clone)]
pub struct CreatedApiKey {
    /// The key as stored (its hash, not the key).
    pub record: ApiKeyRecord,
    /// The key: print it once, then forget it.
    pub key: ApiKeySecret,
}

/// The API key use cases over an [`ApiKeyStore`].
///
/// [`authenticate`](Self::authenticate) remembers keys it found for the
/// cache time ([`with_cache_ttl`](Self::with_cache_ttl), default
/// [`DEFAULT_API_KEY_CACHE`]; zero: ask the storage every time). A key
/// revoked through this value stops working at once; one revoked elsewhere
/// (another replica, `pharox apikey revoke`) within the cache time. Keys
/// not found are not remembered, so a new key works at once.
pub struct ApiKeyAdmin {
    store: Arc<dyn ApiKeyStore>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<ApiKeyHash, (ApiKeyRecord, Instant)>>,
}

impl fmt::Debug for ApiKeyAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAdmin")
            .field("cache_ttl", &self.cache_ttl)
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl ApiKeyAdmin {
    /// The use cases over `store`, caching found keys for
    /// [`DEFAULT_API_KEY_CACHE`].
    #[must_use]
    pub fn new(store: Arc<dyn ApiKeyStore>) -> Self {
        Self {
            store,
            cache_ttl: DEFAULT_API_KEY_CACHE,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Trusts a found key for `ttl` before asking the storage again
    /// (zero: no cache).
    #[must_use]
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long found keys are trusted.
    #[must_use]
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// Generates a key (`phx_` and 64 hex digits: 256 random bits), stores
    /// its hash under `scope` and `name`, and returns it with the record.
    pub async fn create(
        &self,
        scope: ApiKeyScope,
        name: Option<&str>,
    ) -> Result<CreatedApiKey, PharoxError> {
        let mut bytes = [0u8; API_KEY_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let mut key = String::with_capacity(API_KEY_PREFIX.len() + 2 * API_KEY_RANDOM_BYTES);
        key.push_str(API_KEY_PREFIX);
        for b in bytes {
            let _ = write!(key, "{b:02x}");
        }
        let new = NewApiKey {
            id: ApiKeyId::new(),
            name: name.map(str::to_owned),
            scope,
            key_hash: hash_api_key(&key),
        };
        new.validate()?;
        let record = self.store.create_api_key(&new).await?;
        Ok(CreatedApiKey {
            record,
            key: ApiKeySecret(key),
        })
    }

    /// Every stored key, revoked ones too, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, PharoxError> {
        Ok(self.store.list_api_keys().await?)
    }

    /// Revokes the key `id_or_name` names (a UUID is an id, anything else
    /// the name of a key not revoked); it stops working here at once.
    pub async fn revoke(&self, id_or_name: &str) -> Result<ApiKeyRecord, PharoxError> {
        let which: ApiKeySelector = id_or_name.parse()?;
        let record = self.store.revoke_api_key(&which).await?;
        self.cache.lock().remove(&record.key_hash);
        Ok(record)
    }

    /// The stored key (not revoked) a presented key is, if any.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ApiKeyRecord>, PharoxError> {
        if presented.is_empty() || presented.len() > MAX_PRESENTED_KEY_CHARS {
            return Ok(None);
        }
        let hash = hash_api_key(presented);
        let now = Instant::now();
        if !self.cache_ttl.is_zero()
            && let Some((record, until)) = self.cache.lock().get(&hash)
            && now < *until
        {
            return Ok(Some(record.clone()));
        }
        let found = self.store.find_active_api_key(&hash).await?;
        let mut cache = self.cache.lock();
        match &found {
            Some(record) if !self.cache_ttl.is_zero() => {
                if cache.len() >= MAX_CACHED_API_KEYS {
                    cache.retain(|_, (_, until)| now < *until);
                    if cache.len() >= MAX_CACHED_API_KEYS {
                        cache.clear();
                    }
                }
                cache.insert(hash, (record.clone(), now + self.cache_ttl));
            }
            _ => {
                cache.remove(&hash);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use pharox_adapter_memory::MemoryApiKeys;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_found_key_is_trusted_for_the_cache_time_only() {
        let store = Arc::new(MemoryApiKeys::new());
        let here = ApiKeyAdmin::new(store.clone()).with_cache_ttl(Duration::from_secs(5));
        let elsewhere = ApiKeyAdmin::new(store).with_cache_ttl(Duration::ZERO);
        let created = here.create(ApiKeyScope::Admin, Some("ops")).await.unwrap();
        let key = created.key.expose().to_owned();
        assert!(
            key.starts_with(API_KEY_PREFIX) && key.len() == 4 + 64,
            "{key}"
        );
        assert!(here.authenticate(&key).await.unwrap().is_some());
        // Revoked by another process: still trusted here until the cache time ends.
        elsewhere.revoke("ops").await.unwrap();
        assert!(elsewhere.authenticate(&key).await.unwrap().is_none());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(here.authenticate(&key).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(here.authenticate(&key).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn revoking_here_takes_effect_at_once() {
        let admin = ApiKeyAdmin::new(Arc::new(MemoryApiKeys::new()));
        let created = admin.create(ApiKeyScope::Lease, None).await.unwrap();
        let key = created.key.expose();
        assert!(admin.authenticate(key).await.unwrap().is_some());
        admin.revoke(&created.record.id.to_string()).await.unwrap();
        assert!(admin.authenticate(key).await.unwrap().is_none());
        assert!(admin.authenticate("").await.unwrap().is_none());
        assert!(
            admin
                .authenticate(&"k".repeat(257))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn keys_differ_and_only_hashes_are_stored() {
        let admin = ApiKeyAdmin::new(Arc::new(MemoryApiKeys::new()));
        let a = admin.create(ApiKeyScope::Lease, None).await.unwrap();
        let b = admin.create(ApiKeyScope::Lease, None).await.unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(a.record.key_hash, hash_api_key(a.key.expose()));
        let debug = format!("{a:?} {admin:?} {:?}", admin.list().await.unwrap());
        assert!(!debug.contains(a.key.expose()), "{debug}");
        assert_eq!(api_key_public_id(&a.record.key_hash).len(), 12);
        let bad = admin
            .create(ApiKeyScope::Lease, Some("a b"))
            .await
            .unwrap_err();
        assert!(matches!(bad, PharoxError::Invalid(v) if v.field == "name"));
    }
}
