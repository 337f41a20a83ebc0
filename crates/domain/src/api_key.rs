//! API keys of the HTTP service as stored: [`ApiKeyScope`], [`ApiKeyHash`]
//! (the only form a key is kept in), [`NewApiKey`] and [`ApiKeyRecord`].
//! Generating and hashing keys is the application's (`pharox::api_keys`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ApiKeyId, ValidationError};

/// The longest API key name accepted, in characters.
pub const MAX_API_KEY_NAME_CHARS: usize = 64;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyScope {
    /// The lease endpoints only (`/v1/pools/{pool}/leases`, `/v1/leases/...`).
    Lease,
    /// Everything.
    Admin,
}

impl ApiKeyScope {
    /// Its name in key lists, flags and the database (`lease`, `admin`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for ApiKeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiKeyScope {
    type Err = ValidationError;

    /// `lease` or `admin`, in any case, surrounding blanks ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lease" => Ok(Self::Lease),
            "admin" => Ok(Self::Admin),
            _ => Err(ValidationError::new(
                "scope",
                "the scope must be lease or admin",
            )),
        }
    }
}

/// The SHA-256 of a key: what is stored and looked up instead of the key.
/// `Debug` shows only that it is a hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(pub [u8; 32]);

impl ApiKeyHash {
    /// The 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From stored bytes; `None` unless there are exactly 32.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHash(..)")
    }
}

/// A key to store: made by the application, which hands the key itself to
/// the operator once and keeps only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// Its id (time-ordered).
    pub id: ApiKeyId,
    /// An optional name for operators, unique among keys not revoked.
    pub name: Option<String>,
    /// What it may do.
    pub scope: ApiKeyScope,
    /// The hash of the key.
    pub key_hash: ApiKeyHash,
}

impl NewApiKey {
    /// Checks the name (see [`validate_api_key_name`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.name {
            Some(name) => validate_api_key_name(name),
            None => Ok(()),
        }
    }
}

/// A stored key. `Debug` never shows the hash's bytes; serialising leaves
/// the hash out, so a listing cannot carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    /// Its id.
    pub id: ApiKeyId,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// What it may do.
    pub scope: ApiKeyScope,
    /// The hash of the key (never serialised).
    #[serde(skip)]
    pub key_hash: ApiKeyHash,
    /// When the storage stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was revoked; a revoked key authenticates nothing.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKeyRecord {
    /// Whether the key still authenticates.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// Which stored key an operator means: by id, or by the name of a key not
/// revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySelector {
    /// The key with this id (revoked or not).
    Id(ApiKeyId),
    /// The key not revoked with this name.
    Name(String),
}

impl FromStr for ApiKeySelector {
    type Err = ValidationError;

    /// A UUID is an id; anything else must be a valid name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<ApiKeyId>() {
            return Ok(Self::Id(id));
        }
        validate_api_key_name(s)?;
        Ok(Self::Name(s.to_owned()))
    }
}

impl fmt::Display for ApiKeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => fmt::Display::fmt(id, f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Checks a key's name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, and not
/// a UUID (a UUID names a key by its id).
pub fn validate_api_key_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.chars().count() > MAX_API_KEY_NAME_CHARS {
        return Err(ValidationError::new("name", "must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ValidationError::new(
            "name",
            "may contain only A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    if name.parse::<ApiKeyId>().is_ok() {
        return Err(ValidationError::new(
            "name",
            "must not be a UUID (UUIDs name keys by id)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!(
            " Admin ".parse::<ApiKeyScope>().unwrap(),
            ApiKeyScope::Admin
        );
        assert_eq!("lease".parse::<ApiKeyScope>().unwrap().to_string(), "lease");
        assert_eq!("root".parse::<ApiKeyScope>().unwrap_err().field, "scope");
    }

    #[test]
    fn names_are_checked_and_uuids_are_ids() {
        assert!(validate_api_key_name("ci-worker_1.eu").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert_eq!(
                validate_api_key_name(bad).unwrap_err().field,
                "name",
                "{bad}"
            );
        }
        let id = ApiKeyId::new();
        assert_eq!(
            id.to_string().parse::<ApiKeySelector>().unwrap(),
            ApiKeySelector::Id(id)
        );
        assert!(validate_api_key_name(&id.to_string()).is_err());
        assert_eq!(
            "ci".parse::<ApiKeySelector>().unwrap(),
            ApiKeySelector::Name("ci".into())
        );
    }

    #[test]
    fn neither_debug_nor_json_shows_the_hash() {
        let record = ApiKeyRecord {
            id: ApiKeyId::new(),
            name: Some("ci".into()),
            scope: ApiKeyScope::Lease,
            key_hash: ApiKeyHash([0xab; 32]),
            created_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
        };
        let debug = format!("{record:?}");
        assert!(
            !debug.contains("171") && !debug.to_lowercase().contains("abab"),
            "{debug}"
        );
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("hash"), "{json}");
        assert!(json.contains("\"scope\":\"lease\""), "{json}");
    }
}
