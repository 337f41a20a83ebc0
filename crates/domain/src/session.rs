//! Sticky sessions: a key under which every acquire of a pool gets the same
//! proxy for as long as it stays leasable.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ValidationError, validate_ttl};

/// The longest session key accepted, in characters.
pub const MAX_SESSION_KEY_CHARS: usize = 128;

/// A sticky session's key, chosen by the workers that share it (a login, a
/// checkout flow). Exact: compared case-sensitively, never trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionKey(String);

impl SessionKey {
    /// Checks a key: 1 to [`MAX_SESSION_KEY_CHARS`] characters, none of them
    /// whitespace or control characters.
    pub fn new(key: impl Into<String>) -> Result<Self, ValidationError> {
        let key = key.into();
        if key.is_empty() {
            return Err(ValidationError::new("session", "must not be empty"));
        }
        if key.chars().count() > MAX_SESSION_KEY_CHARS {
            return Err(ValidationError::new(
                "session",
                format!("must be at most {MAX_SESSION_KEY_CHARS} characters"),
            ));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new(
                "session",
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Self(key))
    }

    /// The key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SessionKey {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SessionKey> for String {
    fn from(value: SessionKey) -> Self {
        value.0
    }
}

/// A session an acquire asks for: its key, and how long the storage keeps
/// it after this use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The key.
    pub key: SessionKey,
    /// How long the session is remembered after this acquire (each use
    /// renews it); at most [`MAX_LEASE_TTL`](crate::MAX_LEASE_TTL).
    pub ttl: Duration,
}

impl SessionRequest {
    /// A session `key`, remembered for `ttl` after each use.
    #[must_use]
    pub const fn new(key: SessionKey, ttl: Duration) -> Self {
        Self { key, ttl }
    }

    /// Checks the TTL (the key is checked when it is made).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_ttl(self.ttl).map_err(|e| e.within("session"))
    }
}

/// What an acquire with a session did with it, as the lease it returns says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSession {
    /// The session's key.
    pub key: SessionKey,
    /// Whether the session was bound to another proxy that could not be
    /// leased for this request (cooling down, full, banned for the target,
    /// no longer matching or active) and now points at this lease's proxy.
    /// A new session, or one that kept its proxy, did not move.
    pub moved: bool,
}
