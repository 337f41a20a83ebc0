//! The CLI's errors and their exit codes.

use pharox::{PharoxError, StorageError, ValidationError};

/// Why a command failed. Messages never contain passwords.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value was rejected (exit code 2, like clap's own errors).
    #[error("invalid --{flag}: {reason}")]
    Usage {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The pharox layer failed.
    #[error(transparent)]
    Pharox(#[from] PharoxError),
    /// The database has no (or an outdated) pharox schema.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    #[error("the database has no current pharox schema")]
    SchemaMissing,
    /// The benchmark saw more simultaneous leases than capacity allows.
    #[error("over-lease detected: {0}")]
    OverLease(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<StorageError> for CliError {
    fn from(e: StorageError) -> Self {
        Self::Pharox(e.into())
    }
}

impl From<ValidationError> for CliError {
    fn from(e: ValidationError) -> Self {
        Self::Pharox(e.into())
    }
}

impl CliError {
    /// The process exit code: 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. } | Self::Pharox(PharoxError::Invalid(_)) => 2,
            _ => 1,
        }
    }

    /// A line telling the user what to do next, where there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::SchemaMissing => Some(
                "apply it with `pharox migrate up --database-url URL`, or pass --migrate to `pharox bench`",
            ),
            Self::Pharox(PharoxError::Storage(StorageError::Unavailable { .. })) => Some(
                "is PostgreSQL running and is the URL right? (postgres://user:pass@host:5432/db)",
            ),
            _ => None,
        }
    }
}
