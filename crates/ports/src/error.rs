use pharox_domain::{LeaseId, ValidationError};

/// A boxed error from a backend, kept as the source of a [`StorageError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a storage call returns.
pub type StorageResult<T> = Result<T, StorageError>;

/// Why a storage call failed.
///
/// [`is_retryable`](Self::is_retryable) tells passing failures (the backend
/// is unreachable, a transaction lost a race after internal retries) from
/// ones that will fail again the same way. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The input was rejected; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The named thing does not exist.
    #[error("{entity} {key} not found")]
    NotFound {
        /// What kind of thing: "pool", "proxy", "lease", "consumer".
        entity: &'static str,
        /// The id or name looked for.
        key: String,
    },
    /// The write clashes with what is stored (a duplicate unique name, a
    /// proxy moved between pools).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The lease was released or has expired, so it cannot be renewed.
    #[error("lease {0} is no longer active")]
    LeaseNotActive(LeaseId),
    /// The backend cannot be reached; try again later.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What happened, without secrets.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// A transaction kept losing to concurrent ones (serialization failure,
    /// deadlock) after internal retries; try again.
    #[error("transient storage failure: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Anything else the backend reported.
    #[error("storage backend error: {message}")]
    Backend {
        /// What happened, without secrets.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl StorageError {
    /// A not-found error for `entity` identified by `key`.
    pub fn not_found(entity: &'static str, key: impl ToString) -> Self {
        Self::NotFound {
            entity,
            key: key.to_string(),
        }
    }

    /// A backend error with a message and a source.
    pub fn backend(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether trying the same call again may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Transient { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let unavailable = StorageError::Unavailable {
            message: "connection refused".into(),
            source: None,
        };
        assert!(unavailable.is_retryable());
        assert!(!StorageError::not_found("pool", "eu").is_retryable());
        assert_eq!(
            StorageError::not_found("pool", "eu").to_string(),
            "pool eu not found"
        );
        let invalid: StorageError =
            ValidationError::new("port", "must be between 1 and 65535").into();
        assert_eq!(
            invalid.to_string(),
            "invalid port: must be between 1 and 65535"
        );
        assert!(!invalid.is_retryable());
    }
}
