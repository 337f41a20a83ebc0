//! The API keys an operator lists (a key file, `PHAROX_API_KEYS`):
//! [`ApiKeys`] parses `SCOPE:KEY` lists and checks a presented key against
//! them in constant time; [`KeyRing`] checks the listed keys, then the
//! stored ones. The HTTP service and the gateway authenticate through it.

use std::fmt;
use std::sync::Arc;

use pharox_domain::{ApiKeyHash, ApiKeyScope as Scope};
use subtle::ConstantTimeEq;

use super::{ApiKeyAdmin, api_key_public_id, hash_api_key};
use crate::PharoxError;

/// Keys shorter than this are refused when the list is read.
pub const MIN_KEY_CHARS: usize = 16;
/// Keys longer than this are refused (in the list and in requests).
pub const MAX_KEY_CHARS: usize = 256;

/// A rejected entry of an API key list; never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API key list: entry {entry}: {reason}")]
pub struct KeyListError {
    /// 1-based position of the entry.
    pub entry: usize,
    /// Why.
    pub reason: &'static str,
}

/// One known key: its SHA-256, its scope and its public id.
#[derive(Clone)]
struct KnownKey {
    hash: ApiKeyHash,
    scope: Scope,
    id: String,
}

/// The keys the server accepts. Holds hashes only; `Debug` shows the
/// count and scopes, never a key or hash.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<KnownKey>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admins = self.keys.iter().filter(|k| k.scope == Scope::Admin).count();
        f.debug_struct("ApiKeys")
            .field("lease", &(self.keys.len() - admins))
            .field("admin", &admins)
            .finish()
    }
}

impl ApiKeys {
    /// Parses `SCOPE:KEY` entries separated by commas or newlines (blank
    /// entries and lines starting with `#` are skipped), e.g.
    /// `lease:k1...,admin:k2...`. Keys must be 16 to 256 printable ASCII
    /// characters without spaces or commas, and unique.
    pub fn parse(list: &str) -> Result<Self, KeyListError> {
        let mut keys = ApiKeys::default();
        let entries = list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let entry_no = i + 1;
            let bad = |reason| KeyListError {
                entry: entry_no,
                reason,
            };
            let (scope, key) = entry
                .split_once(':')
                .ok_or_else(|| bad("must be SCOPE:KEY"))?;
            let scope = scope
                .parse::<Scope>()
                .map_err(|_| bad("the scope must be lease or admin"))?;
            let key = key.trim();
            if key.len() < MIN_KEY_CHARS {
                return Err(bad("the key must be at least 16 characters"));
            }
            if key.len() > MAX_KEY_CHARS {
                return Err(bad("the key must be at most 256 characters"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the key must be printable ASCII without spaces"));
            }
            let hash = hash_api_key(key);
            if keys.keys.iter().any(|k| k.hash == hash) {
                return Err(bad("the key is listed twice"));
            }
            keys.keys.push(KnownKey {
                hash,
                scope,
                id: api_key_public_id(&hash),
            });
        }
        Ok(keys)
    }

    /// How many keys there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (then only stored keys, if any, are accepted).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a presented key stands for. Every known key is compared,
    /// each in constant time, so the time taken tells nothing about which
    /// (or whether any) matched.
    #[must_use]
    pub fn check(&self, presented: &str) -> Option<Caller> {
        if presented.len() > MAX_KEY_CHARS {
            return None;
        }
        let hash = hash_api_key(presented);
        let mut found: Option<&KnownKey> = None;
        for key in &self.keys {
            if bool::from(key.hash.as_bytes().ct_eq(hash.as_bytes())) {
                found = Some(key);
            }
        }
        found.map(|k| Caller {
            key_id: k.id.clone(),
            scope: k.scope,
        })
    }
}

/// Who is calling: the id of their key (public: derived from the key's
/// hash, the same on every replica) and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// 12 hex digits of a hash of the key; names the key in consumer names
    /// and logs without revealing it.
    pub key_id: String,
    /// What the key may do.
    pub scope: Scope,
}

impl Caller {
    /// Whether this caller may act on leases acquired by any key.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.scope == Scope::Admin
    }
}

/// The keys a service accepts: the listed ones, then (when it has a
/// storage for them) the stored ones, through [`ApiKeyAdmin`]'s cache.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    listed: ApiKeys,
    stored: Option<Arc<ApiKeyAdmin>>,
}

impl KeyRing {
    /// Accepts `listed` and, when given, the keys `stored` finds.
    #[must_use]
    pub fn new(listed: ApiKeys, stored: Option<Arc<ApiKeyAdmin>>) -> Self {
        Self { listed, stored }
    }

    /// The listed keys.
    #[must_use]
    pub fn listed(&self) -> &ApiKeys {
        &self.listed
    }

    /// The stored keys' use cases, when there are any.
    #[must_use]
    pub fn stored(&self) -> Option<&ApiKeyAdmin> {
        self.stored.as_deref()
    }

    /// The caller a presented key stands for: a listed key (compared in
    /// constant time), else a stored key not revoked; `None` for neither.
    /// Fails only when the storage does.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Caller>, PharoxError> {
        if let Some(caller) = self.listed.check(presented) {
            return Ok(Some(caller));
        }
        let Some(stored) = &self.stored else {
            return Ok(None);
        };
        Ok(stored.authenticate(presented).await?.map(|record| Caller {
            key_id: api_key_public_id(&record.key_hash),
            scope: record.scope,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LEASE: &str = "lease-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789";

    #[test]
    fn a_list_gives_each_key_its_scope() {
        let keys = ApiKeys::parse(&format!("lease:{LEASE}, admin:{ADMIN}\n# note\n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check(LEASE).unwrap().scope, Scope::Lease);
        assert_eq!(keys.check(ADMIN).unwrap().scope, Scope::Admin);
        assert!(keys.check("lease-key-012345678").is_none());
        assert!(keys.check("").is_none());
        // The id is stable and is not the key.
        let id = keys.check(LEASE).unwrap().key_id;
        assert_eq!(id.len(), 12);
        assert_eq!(
            id,
            ApiKeys::parse(&format!("lease:{LEASE}"))
                .unwrap()
                .check(LEASE)
                .unwrap()
                .key_id
        );
        assert!(!LEASE.contains(&id));
    }

    #[test]
    fn bad_entries_are_refused_without_quoting_the_key() {
        for (list, entry) in [
            ("lease", 1),
            (&format!("root:{LEASE}") as &str, 1),
            (&format!("lease:{LEASE},admin:short"), 2),
            (&format!("lease:{LEASE},admin:{LEASE}"), 2),
            (&format!("lease:{} x", "k".repeat(20)), 1),
        ] {
            let e = ApiKeys::parse(list).unwrap_err();
            assert_eq!(e.entry, entry, "{list}");
            assert!(!e.to_string().contains(LEASE), "{e}");
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let keys = ApiKeys::parse(&format!("lease:{LEASE}")).unwrap();
        let debug = format!("{keys:?}");
        assert!(!debug.contains(LEASE), "{debug}");
        assert!(debug.contains("lease: 1"), "{debug}");
    }
}
